"""The breast-level part of a whole exam with TTA: input building, layout and batch size, side by side.

One synthetic full-resolution exam (4 raw views, scale 1.0) through ``Predictor.predict_exam`` with
the full-size NYU ResNet-22 image+heatmaps model (random weights, seed 0), 10 TTA copies and fixed
random heatmaps (the patch stage is timed by ``bench_heatmaps.py``). Variants, each in its own
process (peak RSS is per variant), interleaved over the rounds:

* ``materialised-nchw-b8``: the path before lazy rows: every TTA row of the exam built at once
  (``MultiViewSpec.exam_rows``), then NCHW model calls of 8 rows;
* ``lazy-nchw-b8``: rows built a batch at a time (``MultiViewSpec.exam_plan``), NCHW;
* ``lazy-nhwc-bN``: the Predictor's path, channels-last, N rows per call.

Every variant's four probabilities are compared with the first variant's (same inputs, weights).
Writes ``benchmarks/results/exam_model_cpu.json``.

Usage::

    python benchmarks/bench_exam_model.py [--threads 2] [--rounds 2] [--tta 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "materialised-nchw-b8": {"lazy": False, "channels_last": False, "batch_size": 8},
    "lazy-nchw-b8": {"lazy": True, "channels_last": False, "batch_size": 8},
    "lazy-nhwc-b8": {"lazy": True, "channels_last": True, "batch_size": 8},
    "lazy-nhwc-b2": {"lazy": True, "channels_last": True, "batch_size": 2},
    "lazy-nhwc-b1": {"lazy": True, "channels_last": True, "batch_size": 1},
}


def heatmaps(exam_id: str, view: str, k: int, prepared: Any) -> np.ndarray:
    """Fixed random heatmaps of one image (seeded by view and index), float16-rounded like the files."""
    import zlib

    rng = np.random.default_rng(zlib.crc32(f"{view}/{k}".encode()))
    return rng.random((2, *prepared.pixels.shape), dtype=np.float32).astype(np.float16).astype(np.float32)


def worker(args: argparse.Namespace) -> int:
    """One variant on the exam; prints a JSON line (seconds, probabilities, peak RSS)."""
    import torch

    from breastscreen import Predictor
    from breastscreen.data.manifest import read_manifest
    from breastscreen.inference.predictor import run_model

    torch.set_num_threads(args.threads)
    opts = VARIANTS[args.variant]
    exam = read_manifest(args.manifest)[0]
    predictor = Predictor.load(args.weights, "cpu", tta=args.tta, seed=0, batch_size=opts["batch_size"],
                               channels_last=opts["channels_last"])
    t0 = time.perf_counter()
    if opts["lazy"]:
        values = predictor.predict_exam(exam, heatmaps=heatmaps).values
        probs = [values[c] for c in predictor.spec.value_columns]
    else:
        spec, model = predictor.spec, predictor.members[0].model
        prepared, maps = predictor._mammo_views(exam.exam_id, dict(exam.views), heatmaps)
        inputs, present = spec.exam_rows(exam.exam_id, prepared, maps, n_tta=args.tta, seed=0)
        rows, bs = next(iter(inputs.values())).shape[0], opts["batch_size"]
        chunks = [run_model(model, predictor.device, {v: torch.from_numpy(x[s:s + bs]) for v, x in inputs.items()},
                            {v: torch.from_numpy(p[s:s + bs]) for v, p in present.items()})
                  for s in range(0, rows, bs)]
        probs = spec.postprocess(np.concatenate([c["probs"] for c in chunks]).mean(axis=0))
        probs = [probs[c] for c in spec.value_columns]
    seconds = time.perf_counter() - t0
    print(json.dumps({"variant": args.variant, "seconds": seconds, "probs": probs,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
    return 0


def prepare(work: Path, scale: float = 1.0, num_filters: int = 16) -> tuple[Path, Path]:
    """The synthetic raw exam and the random-weight model (both cached in ``work``; tests shrink them)."""
    import torch

    from breastscreen.models import create_model, save_checkpoint
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    manifest = work / "exam" / "manifest.jsonl"
    if not manifest.exists():
        generate_mammo_cohort(work / "exam", 1, seed=7, scale=scale, overwrite=True)
    weights = work / "nyu-viewwise-heatmaps-random.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        save_checkpoint(create_model("nyu-viewwise-heatmaps", num_filters=num_filters), weights, {"scale": scale})
    return manifest, weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", default=None, choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--manifest", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tta", type=int, default=10)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    ap.add_argument("--scale", type=float, default=1.0, help="image scale (1.0 = full resolution; tests use less)")
    ap.add_argument("--num-filters", type=int, default=16, help="ResNet-22 base width (16 = full size)")
    ap.add_argument("--work", default="scratch/bench-exam-model")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "exam_model_cpu.json"))
    args = ap.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        return worker(args)
    from bench_common import environment, write_result

    from breastscreen.utils import cpu_field

    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest, weights = prepare(work, args.scale, args.num_filters)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    raw: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = variants[rnd % len(variants):] + variants[: rnd % len(variants)]  # no variant always first
        for v in order:
            cmd = [sys.executable, __file__, "--worker", v, "--manifest", str(manifest), "--weights", str(weights),
                   "--threads", str(args.threads), "--tta", str(args.tta)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"variant {v} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["round"] = rnd
            print(json.dumps({k: row[k] for k in ("round", "variant", "seconds", "peak_rss_mib")}), flush=True)
            raw.append(row)
    base = next(r for r in raw if r["variant"] == variants[0])
    result: dict[str, Any] = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "variants": {}}
    for v in variants:
        rows = [r for r in raw if r["variant"] == v]
        result["variants"][v] = {
            **VARIANTS[v], "median_seconds": round(float(np.median([r["seconds"] for r in rows])), 2),
            "seconds": [round(r["seconds"], 2) for r in rows],
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rows), 1),
            "max_abs_diff_vs_first": float(max(abs(a - b) for r in rows for a, b in zip(r["probs"], base["probs"])))}
    first = result["variants"][variants[0]]["median_seconds"]
    for v in variants:
        result["variants"][v]["speedup_vs_first"] = round(first / result["variants"][v]["median_seconds"], 2)
    fastest = min(variants, key=lambda v: result["variants"][v]["median_seconds"])
    # the first variant's probabilities: agreement is only meaningful if the model is not constant
    result["probs"] = base["probs"]
    result.update({"fastest": fastest, "tta": args.tta, "worker_threads": args.threads, "scale": args.scale,
                   "num_filters": args.num_filters, "rounds": args.rounds, "cpu_model": cpu_field("model name"),
                   "environment": environment(t_start),
                   "command": "python benchmarks/bench_exam_model.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv)})
    out = write_result(args.out, result)
    print(f"-> {out}: fastest {fastest} {result['variants'][fastest]['median_seconds']} s "
          f"({result['variants'][fastest]['speedup_vs_first']}x {variants[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
