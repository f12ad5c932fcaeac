"""Training loop of the ultrasound classifier: plain PyTorch, seeded, resumable.

``fit_us`` trains one model with a :class:`~breastscreen.ultrasound.recipe.USRecipe` on
breast bags, evaluates breast-level validation AUROC every epoch, and writes into ``out``:

* ``config.json`` - the recipe and the data description;
* ``metrics.csv`` - one row per epoch (losses, validation AUROCs, seconds);
* ``best.safetensors`` / ``last.safetensors`` - checkpoints through the model zoo's
  ``save_checkpoint`` (the best is chosen by validation malignant AUROC, the paper's
  per-trial selection; ties keep the earlier epoch);
* ``state.pt`` - optimiser, epoch counter and RNG states, so ``resume=True`` continues a
  killed run and ends with the same weights as an uninterrupted one (same seed, CPU).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from breastscreen.errors import BreastscreenError, CheckpointError
from breastscreen.ultrasound.bags import BagDataset, collate_bags
from breastscreen.ultrasound.recipe import BENIGN, MALIGNANT, USRecipe, make_optimizer, us_mil_loss
from breastscreen.utils import atomic_path, resolve_device, seed_everything

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_bce_benign",
    "train_bce_malignant",
    "train_saliency_l1",
    "val_loss",
    "val_auroc_malignant",
    "val_auroc_benign",
    "seconds",
)


@dataclass
class FitResult:
    """Where a run ended: best epoch, its validation AUROC, checkpoint paths, history."""

    out_dir: Path
    best_epoch: int
    best_auroc: float
    best_path: Path
    last_path: Path
    history: list[dict[str, float]] = field(default_factory=list)


def build_model(recipe: USRecipe) -> torch.nn.Module:
    """The recipe's model from the zoo, with its top-t pooling fraction and overrides applied."""
    from breastscreen.models.registry import create_model

    overrides = dict(recipe.model_overrides)
    overrides.setdefault("top_t", recipe.top_t)
    return create_model(recipe.model, **overrides)


def model_channels(model: torch.nn.Module) -> int:
    """Input channels the model expects (1 when its config does not say)."""
    return int(getattr(getattr(model, "config", None), "in_channels", 1))


def safe_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC, or NaN when only one class is present (cannot rank)."""
    y = np.asarray(y)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, score))


@dataclass
class BagPredictions:
    """Model outputs over a dataset, in dataset order."""

    probs: np.ndarray  # [N, 2] benign, malignant
    labels: np.ndarray | None  # [N, 2] or None
    attention: list[np.ndarray]  # per breast [K, 2]
    saliency: list[np.ndarray] | None  # per breast [K, 2, h, w]
    image_probs: list[np.ndarray] | None  # per breast [K, 2]
    image_ids: list[list[str]]
    loss: float = float("nan")


@torch.no_grad()
def predict_bags(
    model: torch.nn.Module,
    dataset: BagDataset,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    keep_maps: bool = True,
    beta: float | None = None,
) -> BagPredictions:
    """Run ``model`` over every bag of ``dataset`` (no augmentation unless the dataset says so).

    ``beta`` given and labels present: also the mean recipe loss over the dataset.
    """
    device = torch.device(device)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_bags)
    probs, labels, att, sal, iprobs, ids = [], [], [], [], [], []
    loss_sum, n = 0.0, 0
    for batch in loader:
        x = batch["images"].to(device)
        m = batch["mask"].to(device)
        out = model(x, m)
        probs.append(out["probs"].float().cpu().numpy())
        if "labels" in batch:
            labels.append(batch["labels"].numpy())
            if beta is not None:
                loss, _ = us_mil_loss(out, batch["labels"].to(device), m, beta)
                loss_sum += loss.item() * x.shape[0]
                n += x.shape[0]
        for i, k in enumerate(batch["mask"].sum(dim=1).tolist()):
            att.append(out["attention"][i, :k].float().cpu().numpy())
            if keep_maps:
                sal.append(out["saliency"][i, :k].float().cpu().numpy())
                if "image_probs" in out:
                    iprobs.append(out["image_probs"][i, :k].float().cpu().numpy())
        ids.extend(batch["image_ids"])
    return BagPredictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, 2), np.float32),
        labels=np.concatenate(labels) if labels else None,
        attention=att,
        saliency=sal if keep_maps else None,
        image_probs=iprobs if (keep_maps and iprobs) else None,
        image_ids=ids,
        loss=loss_sum / n if n else float("nan"),
    )


def _write_metrics(path: Path, rows: Sequence[dict[str, float]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})


def _save_state(path: Path, optimizer: torch.optim.Optimizer, epoch: int, best: dict[str, float], history) -> None:
    state = {
        "optimizer": optimizer.state_dict(),
        "epoch": torch.tensor(epoch),
        "best_epoch": torch.tensor(int(best["epoch"])),
        "best_auroc": torch.tensor(float(best["auroc"]), dtype=torch.float64),
        "torch_rng": torch.get_rng_state(),
        "history": json.dumps(history),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def fit_us(
    train_ds: BagDataset,
    val_ds: BagDataset,
    recipe: USRecipe,
    out_dir: str | Path,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train the ultrasound MIL classifier with ``recipe``; see the module docstring for outputs.

    ``train_ds`` must be built with ``train=True`` (augmentation) and ``val_ds`` without.
    ``resume=True`` continues from ``out/state.pt`` and ``out/last.safetensors``.
    """
    from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise BreastscreenError(f"need training and validation breasts, got {len(train_ds)} and {len(val_ds)}")
    if recipe.num_threads:
        torch.set_num_threads(recipe.num_threads)
    device = resolve_device(recipe.device)
    seed_everything(recipe.seed)
    model = build_model(recipe)
    channels = model_channels(model)
    for ds in (train_ds, val_ds):
        if ds.channels != channels or ds.input_size != recipe.input_size:
            raise BreastscreenError(
                f"dataset gives {ds.channels}-channel {ds.input_size}px images; the model expects "
                f"{channels} channels and the recipe {recipe.input_size}px"
            )
    config_path = out / "config.json"
    state_path, last_path, best_path = out / "state.pt", out / "last.safetensors", out / "best.safetensors"
    history: list[dict[str, float]] = []
    best = {"epoch": -1, "auroc": -math.inf}
    start_epoch = 0
    optimizer = None
    if resume:
        if not (state_path.exists() and last_path.exists()):
            raise CheckpointError(f"cannot resume: {state_path} or {last_path} is missing")
        saved = json.loads(config_path.read_text())
        if saved.get("recipe") != recipe.to_dict():
            raise CheckpointError(f"cannot resume {out}: its recipe differs from the one given")
        model = load_checkpoint(str(last_path)).model
        model.to(device)
        optimizer = make_optimizer(model, recipe)
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        best = {"epoch": int(state["best_epoch"]), "auroc": float(state["best_auroc"])}
        torch.set_rng_state(state["torch_rng"])
        history = json.loads(state["history"])
    else:
        model.to(device)
        optimizer = make_optimizer(model, recipe)
        with atomic_path(config_path) as tmp:
            tmp.write_text(json.dumps({"recipe": recipe.to_dict(), "metadata": metadata or {}}, indent=2))
    meta_base = {
        "task": "ultrasound-breast",
        "input_size": recipe.input_size,
        "channels": channels,
        "normalisation": "per-image z-score",
        "recipe": recipe.to_dict(),
        **(metadata or {}),
    }
    gen = torch.Generator().manual_seed(recipe.seed)
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.time()
        train_ds.set_epoch(epoch)
        # The shuffle order is a function of (seed, epoch) alone, so resuming reproduces it.
        gen.manual_seed(recipe.seed * 100003 + epoch)
        loader = DataLoader(
            train_ds, batch_size=recipe.batch_size, shuffle=True, generator=gen, collate_fn=collate_bags
        )
        model.train()
        sums = {"loss": 0.0, "bce_benign": 0.0, "bce_malignant": 0.0, "saliency_l1": 0.0}
        n = 0
        for batch in loader:
            x, m, y = batch["images"].to(device), batch["mask"].to(device), batch["labels"].to(device)
            outputs = model(x, m)
            loss, parts = us_mil_loss(outputs, y, m, recipe.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            b = x.shape[0]
            n += b
            sums["loss"] += loss.item() * b
            for k, v in parts.items():
                sums[k] += v * b
        val = predict_bags(model, val_ds, recipe.batch_size, device, keep_maps=False, beta=recipe.beta)
        auroc_m = safe_auroc(val.labels[:, MALIGNANT], val.probs[:, MALIGNANT])
        auroc_b = safe_auroc(val.labels[:, BENIGN], val.probs[:, BENIGN])
        row = {
            "epoch": epoch,
            "train_loss": sums["loss"] / n,
            "train_bce_benign": sums["bce_benign"] / n,
            "train_bce_malignant": sums["bce_malignant"] / n,
            "train_saliency_l1": sums["saliency_l1"] / n,
            "val_loss": val.loss,
            "val_auroc_malignant": auroc_m,
            "val_auroc_benign": auroc_b,
            "seconds": time.time() - t0,
        }
        history.append(row)
        score = auroc_m if not math.isnan(auroc_m) else -math.inf
        improved = score > best["auroc"] or best["epoch"] < 0
        if improved:
            best = {"epoch": epoch, "auroc": score}
            save_checkpoint(model, best_path, {**meta_base, "epoch": epoch, "val_auroc_malignant": auroc_m,
                                               "val_auroc_benign": auroc_b})
        save_checkpoint(model, last_path, {**meta_base, "epoch": epoch, "val_auroc_malignant": auroc_m,
                                           "val_auroc_benign": auroc_b})
        _save_state(state_path, optimizer, epoch, best, history)
        _write_metrics(out / "metrics.csv", history)
        if log is not None:
            log(
                f"epoch {epoch}: loss {row['train_loss']:.4f} val_loss {val.loss:.4f} "
                f"val AUROC malignant {auroc_m:.3f} benign {auroc_b:.3f} ({row['seconds']:.0f}s)"
            )
        if recipe.patience is not None and epoch - best["epoch"] >= recipe.patience:
            if log is not None:
                log(f"early stop: no improvement for {recipe.patience} epochs")
            break
    return FitResult(out, int(best["epoch"]), float(best["auroc"]), best_path, last_path, history)
