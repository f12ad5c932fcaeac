"""Run directories of the fit loop: refusal to reuse, metrics CSV, seeds and RNG state for resume."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.utils import atomic_path

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
# Files that mark a directory as a run directory (single run, ensemble, search) for --overwrite.
RUN_MARKERS = (CONFIG_FILE, "ensemble_plan.json", "search.json")


class RunDirError(BreastscreenError):
    """The run directory cannot be used as asked (exists, or has nothing to resume)."""




def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and integers (epoch, stream ...), stable across runs."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(p) for p in parts]])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])




def prepare_run_dir(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Check the run directory: refuse to reuse one unless resuming or explicitly overwriting.

    ``overwrite`` deletes an earlier run's directory only when it is empty or looks like a run
    directory (has one of :data:`RUN_MARKERS`), so a mistyped path never wipes unrelated files.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if resume:
        if not (run_dir / STATE_FILE).is_file():
            raise RunDirError(f"cannot resume: {run_dir / STATE_FILE} does not exist (no completed epoch)")
        from breastscreen.outdir import remove_stale_temp_files

        remove_stale_temp_files(run_dir)  # .bstmp-* files a killed run left behind
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(f"run directory {run_dir} already exists and is not empty; use --resume or --overwrite")
        if not any((run_dir / marker).is_file() for marker in RUN_MARKERS):
            raise RunDirError(
                f"refusing to overwrite {run_dir}: it is not a training run directory (none of {', '.join(RUN_MARKERS)})"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    """Write the per-epoch history (union of keys as columns, in first-seen order)."""
    columns: list[str] = []
    for row in history:
        for k in row:
            if k not in columns:
                columns.append(k)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k, "") for k in columns})


def read_metrics_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a run's metrics.csv as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
