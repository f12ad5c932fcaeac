"""A tiny breast-model task on random tensors for the fit-loop tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import Dataset

from breastscreen.data.types import MG_VIEWS
from breastscreen.models.registry import create_model
from breastscreen.training.config import resolve_config
from breastscreen.training.loop import TrainTask
from breastscreen.training.losses import breast_label_loss
from breastscreen.training.samplers import BiopsyBalancedSampler
from breastscreen.utils import seed_everything


class RandomExams(Dataset):
    """``n`` fake exams: four 1x96x64 views and 4 labels; positives get a brighter right half."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.target = rng.integers(0, 2, size=(n, 4))
        self.target[: n // 2] = 0
        self.x = rng.standard_normal((n, 4, 1, 96, 64)).astype(np.float32)
        self.x[self.target[:, 1] == 1, :, :, :, 32:] += 1.0

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict:
        return {
            "views": {v: torch.from_numpy(self.x[i, k]) for k, v in enumerate(MG_VIEWS)},
            "target": torch.from_numpy(self.target[i]),
        }


def _loss(model, batch, device):
    views = {k: v.to(device) for k, v in batch["views"].items()}
    return breast_label_loss(model(views), batch["target"].to(device))


def _forward(model, batch, device):
    views = {k: v.to(device) for k, v in batch["views"].items()}
    return list(model(views)["probs"].float().cpu().numpy())


def make_task(cfg, val_n: int = 8) -> TrainTask:
    """Build the tiny task deterministically from ``cfg.seed``."""
    seed_everything(cfg.seed)
    model = create_model("nyu-viewwise", num_filters=4)
    train = RandomExams(12, seed=1)
    val = RandomExams(val_n, seed=2)

    def evaluate(m, ctx):
        probs = np.stack(ctx.predict(m, val, _forward))
        aucs = [roc_auc_score(val.target[:, j], probs[:, j]) for j in range(4) if len(set(val.target[:, j])) == 2]
        return {"val_auc": float(np.mean(aucs))}

    sampler = BiopsyBalancedSampler(train.target.any(axis=1), seed=cfg.seed)
    return TrainTask(model=model, train_set=train, compute_loss=_loss, evaluate=evaluate, sampler=sampler,
                     metadata={"views": list(MG_VIEWS)})


def make_cfg(out: Path, **changes):
    values = {"kind": "breast", "out": str(out), "epochs": 2, "batch_size": 4, "lr": 1e-3, "device": "cpu",
              "progress": False, "monitor": "val_auc", "patience": 0, "seed": 7}
    values.update(changes)
    return resolve_config(values, None)
