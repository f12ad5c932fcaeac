"""Pieces the recipes share: model construction / initialisation and checkpoint metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from breastscreen.errors import BreastscreenError
from breastscreen.training.config import TrainConfig
from breastscreen.training.ensemble import member_seed


def build_model(cfg: TrainConfig, default_name: str, member: int | None, **forced: Any) -> nn.Module:
    """Create ``cfg.model`` (or ``default_name``) with ``cfg.model_args`` and ``forced`` overrides.

    ``cfg.init_from`` (a checkpoint path or bundled name) initialises the model: a BI-RADS
    model initialises a cancer model's columns (Wu et al. 2019 SI); a checkpoint of the same
    architecture initialises every weight (fine-tuning). Ensemble members then re-draw their
    fully connected layers from their own seed.
    """
    from breastscreen.models.registry import create_model
    from breastscreen.training.recipes import reinit_fc_layers

    name = cfg.model or default_name
    args = {**cfg.model_args, **forced}
    clash = {k for k in forced if k in cfg.model_args and cfg.model_args[k] != forced[k]}
    if clash:
        raise BreastscreenError(f"model_args {sorted(clash)} are set by the recipe ({forced}); remove them")
    try:
        model = create_model(name, **args)
    except (KeyError, TypeError, ValueError) as exc:
        raise BreastscreenError(f"cannot create model {name!r} with {args}: {exc}") from None
    if cfg.init_from:
        initialise_from(model, cfg.init_from)
    if member is not None:
        reinit_fc_layers(model, member_seed(cfg.seed, member))
    return model


def check_input_fits(model: nn.Module, shape: tuple[int, ...], what: str) -> None:
    """Raise :class:`BreastscreenError` when ``model`` cannot take an input of ``shape``.

    Runs a shape-only pass on a copy on the meta device (no memory, no arithmetic), so an
    input too small for the model's pooling is refused before training starts, not mid-epoch.
    """
    import copy

    probe = copy.deepcopy(model).to("meta").eval()
    try:
        with torch.no_grad():
            probe(torch.empty(shape, device="meta"))
    except RuntimeError as exc:
        raise BreastscreenError(
            f"{what} of shape {list(shape)} is too small for model {type(model).__name__} ({exc}); "
            "preprocess at a larger --scale or choose a smaller model (model=densenet-tiny)"
        ) from None


def initialise_from(model: nn.Module, ref: str) -> list[str]:
    """Load weights from checkpoint ``ref`` into ``model`` (see :func:`build_model`); return their names.

    A weight file without a breastscreen header (e.g. ImageNet weights in torchvision's layout)
    initialises the backbone through :func:`breastscreen.models.pretrained.load_pretrained_backbone`
    (names mapped, the first convolution adapted to grey input, a head of another shape kept as
    initialised).
    """
    from pathlib import Path

    from breastscreen.models.checkpoint import load_checkpoint, read_header

    path = Path(ref)
    if path.is_file() and read_header(path) is None:
        from breastscreen.models.pretrained import load_pretrained_backbone

        return list(load_pretrained_backbone(model, path).loaded)
    ck = load_checkpoint(ref)
    src = ck.model
    src_task = getattr(src.config, "task", None)
    dst_task = getattr(getattr(model, "config", None), "task", None)
    if src_task == "birads" and dst_task == "cancer":
        from breastscreen.models.nyu_multiview import init_cancer_model_from_birads

        return init_cancer_model_from_birads(model, src)
    if ck.name != getattr(model, "model_name", None) or src.config != model.config:
        raise BreastscreenError(
            f"init_from {ref}: holds {ck.name!r} {src.config}, which cannot initialise {getattr(model, 'model_name', '?')!r} "
            f"{getattr(model, 'config', None)} (use a BI-RADS model for a cancer model, or the same architecture)"
        )
    model.load_state_dict(src.state_dict(), strict=True)
    return list(src.state_dict())


def move_batch(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_batch(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(v, device) for v in batch)
    return batch


def write_skipped_lesions(run_dir: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """``RUN_DIR/skipped_lesions.csv``: one row per lesion a recipe left out (lesion, reason); removed when none."""
    import csv

    from breastscreen.utils import atomic_path

    path = Path(run_dir) / "skipped_lesions.csv"
    if not skipped:
        path.unlink(missing_ok=True)
        return
    if not path.parent.is_dir():
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["lesion", "reason"])
            w.writerows(skipped)
