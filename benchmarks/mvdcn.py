"""MV-DCN (Geras et al. 2017) on synthetic BI-RADS phantoms: macAUC and high-confidence macAUC.

Usage (the command behind benchmarks/results/mvdcn.json; resumable, rerun after an interruption):

    python benchmarks/mvdcn.py --work scratch/mvdcn --out benchmarks/results/mvdcn.json

Protocol, fixed before any held-out number was seen (CPU-sized reductions of the paper):

* synthetic four-view phantoms at scale 0.125 (0.8 mm pixels; the MV-DCN window 2600 x 2000 becomes
  325 x 250 and the layers whose input would be smaller than their kernel are skipped, as the paper
  does at lower resolution): 240 training, 60 validation, 200 test exams (seeds 301-303, cancer
  prevalence 0.2, benign prevalence 0.4); exams whose BI-RADS is not 0, 1 or 2 are left out by the
  recipe, as in the paper;
* ``breastscreen train birads model=mvdcn``: the recipe's batch 4, Gaussian input noise, dropout,
  Glorot initialisation and one-sided horizontal crop noise; Adam at 1e-4 (the recipe's default is
  1e-5, too slow for 30 CPU epochs from scratch), at most 30 epochs, early stopping on the validation
  macAUC with patience 10; seed 0; one model;
* prediction: ``breastscreen predict --tta 10`` (10 noisy crops, the paper's test-time averaging);
* ``breastscreen evaluate``: macAUC with a 1,000-resample bootstrap CI, and the high-confidence
  macAUC (the lowest-entropy fraction; cut-off from the validation predictions' entropies).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import elapsed_logger, environment, synthetic_cohorts  # noqa: E402

from breastscreen.utils import atomic_path  # noqa: E402

SCALE = 0.125


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="scratch folder (not committed)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from breastscreen.training.runner import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0, log = time.time(), elapsed_logger()
    manifests = synthetic_cohorts(work, (("train", 240, 301), ("val", 60, 302), ("test", 200, 303)), SCALE, 0.2, 0.4,
                                  raw="raw-{}", pre="pre-{}")
    log("cohorts ready")
    run = work / "run"
    if not (run / "done").exists():
        if (run / "state.pt").exists():
            train("birads", resume=run, overrides=["progress=false"])
        else:
            train("birads", str(manifests["train"]), str(manifests["val"]), str(run), overwrite=run.exists(),
                  overrides=["model=mvdcn", "batch_size=4", "lr=1e-4", "epochs=30", "patience=10", "seed=0",
                             "device=cpu", "progress=false", "amp=false"])
        (run / "done").write_text("")
    log("trained")
    bs = [str(Path(sys.executable).with_name("breastscreen"))]
    pred, ev = work / "pred", work / "eval"
    if not (pred / "predictions.csv").exists():
        subprocess.run([*bs, "predict", str(manifests["test"]), "--model", str(run / "best.safetensors"), "--tta", "10",
                        "--out", str(pred), "--no-pictures", "--overwrite"], check=True)
    subprocess.run([*bs, "evaluate", "-p", str(pred / "predictions.csv"), "-l", str(manifests["test"]),
                    "--val-predictions", str(run / "val_predictions.csv"), "-o", str(ev), "--overwrite"], check=True)
    metrics = json.loads((ev / "metrics.json").read_text())
    summary: dict[str, Any] = {
        "protocol": __doc__.split("Protocol, ")[1].strip(),
        "birads": metrics.get("birads"),
        "n_test_exams": metrics.get("birads", {}).get("n"),
        "environment": environment(t0),
        "command": "python benchmarks/mvdcn.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    log(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
