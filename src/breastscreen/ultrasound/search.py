"""Random hyper-parameter search of the ultrasound recipe and its top-3 ensemble (Shen et al. 2021).

The paper samples, per trial, the learning rate from 10^[-5.5, -4], the saliency L1 weight
beta from 10^[-3, 0.5], the weight decay from 10^[-6, -3.5] (all uniform in the exponent) and
the top-t pooling fraction from [0.1, 0.5] (uniform), keeps each trial's epoch with the best
validation AUROC, and ensembles the three best trials.

The generic search of the training stage (:func:`breastscreen.training.search.run_search`)
already trains one run directory per trial with the KIND ``us`` recipe, keeps each trial's
best checkpoint by the monitored ``val_auroc_malignant`` and writes ``ensemble.json`` of the
top k (which ``breastscreen predict --model OUT/ensemble.json`` averages). This module adds
the paper's space, in that search's YAML format, and :func:`search_us`, which runs it without
a hand-written space file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from breastscreen.utils import atomic_path

from breastscreen.training.recipes.us import PAPER_SPACE, PAPER_TOP_K  # noqa: E402 - the recipe owns its space


def write_paper_space(path: str | Path) -> Path:
    """Write the paper's search space as a ``--space`` YAML file for ``breastscreen search us``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(
            "# Shen et al. 2021 ultrasound search space (breastscreen search us --space THIS_FILE)\n"
            + yaml.safe_dump(PAPER_SPACE, sort_keys=False),
            encoding="utf-8",
        )
    return path


def search_us(
    manifest: str,
    val_manifest: str,
    out: str | Path,
    trials: int,
    top_k: int = PAPER_TOP_K,
    seed: int = 0,
    overrides: Sequence[str] = (),
    config_file: str | Path | None = None,
    space_file: str | Path | None = None,
    resume: bool = False,
) -> Any:
    """Random search of KIND ``us`` over the paper's space (or ``space_file``); returns the SearchResult.

    The space actually used is written to ``OUT/space.yaml`` next to the trials.
    """
    from breastscreen.training.search import run_search

    out = Path(out)
    if space_file is None:
        # The search directory must not exist before run_search creates it, so the space
        # file goes beside it first and is copied in afterwards.
        space_file = write_paper_space(out.parent / f".{out.name}.space.yaml")
        cleanup = True
    else:
        cleanup = False
    try:
        result = run_search("us", space_file=space_file, trials=trials, out=out, manifest=manifest,
                            val_manifest=val_manifest, config_file=config_file, overrides=list(overrides),
                            top_k=top_k, seed=seed, resume=resume)
        (out / "space.yaml").write_text(Path(space_file).read_text(encoding="utf-8"), encoding="utf-8")
    finally:
        if cleanup:
            Path(space_file).unlink(missing_ok=True)
    return result
