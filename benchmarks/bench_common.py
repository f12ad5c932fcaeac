"""Pieces the benchmark scripts share: a timestamped logger, the environment record, synthetic cohorts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def elapsed_logger() -> Callable[[str], None]:
    """``log(msg)`` printing ``[seconds since creation] msg`` (flushed, for logs of long runs)."""
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    return log


def environment(t0: float) -> dict[str, Any]:
    """CPU, torch version, threads and wall seconds since ``t0`` (for the results JSON)."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "wall_seconds": round(time.time() - t0, 1),
            # other jobs on the machine slow everything down: the 1/5/15-minute load averages say how busy it was
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}


def write_result(out: str | Path, result: dict[str, Any]) -> Path:
    """Write a benchmark's results JSON (indented, trailing newline), creating its folder."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def synthetic_cohorts(work: Path, parts: Sequence[tuple[str, int, int]], scale: float, prevalence: float,
                      benign_prevalence: float, raw: str = "synth-raw-{}", pre: str = "synth-{}") -> dict[str, Path]:
    """Preprocessed synthetic mammography cohorts ``(name, n_exams, seed)`` -> their manifests (reused when present)."""
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    manifests = {}
    for name, n, seed in parts:
        folder = work / pre.format(name)
        if not (folder / "manifest.jsonl").exists():
            exams = generate_mammo_cohort(work / raw.format(name), n, seed=seed, scale=scale, prevalence=prevalence,
                                          benign_prevalence=benign_prevalence, overwrite=True)
            preprocess_manifest(exams, folder, scale, overwrite=True)
        manifests[name] = folder / "manifest.jsonl"
    return manifests


def cv_parser(doc: str) -> argparse.ArgumentParser:
    """The options of the synthetic + mini-MIAS benchmark scripts (data, work, out, bootstrap, seed, threads)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="mini-MIAS folder (images/, Info.txt)")
    ap.add_argument("--work", required=True, help="scratch folder (not committed)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-minimias", action="store_true", help="only the synthetic part")
    return ap


def fold_split(exams: Sequence[Any], folds: dict[str, int], k: int, seed: int,
               val_fraction: float = 0.15) -> tuple[list[Any], list[Any], list[Any]]:
    """(train, val, test) of fold ``k``: test = the fold's women; ``val_fraction`` of the rest (seeded) validate."""
    import numpy as np

    rest = [e for e in exams if folds[e.exam_id] != k]
    test = [e for e in exams if folds[e.exam_id] == k]
    order = np.random.default_rng(seed + k).permutation(len(rest))
    n_val = int(round(val_fraction * len(rest)))
    return [rest[i] for i in sorted(order[n_val:])], [rest[i] for i in sorted(order[:n_val])], test
