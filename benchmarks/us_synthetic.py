"""Synthetic validation of the ultrasound classifier (issue 7 acceptance).

Usage (the command behind benchmarks/results/us_synthetic.json):

    python benchmarks/us_synthetic.py --work scratch/us-synth --out benchmarks/results/us_synthetic.json

Generates synthetic ultrasound train/validation/test cohorts (lesion image and position
known), trains `breastscreen train us` at reduced width/resolution and reports held-out
breast-level malignant AUROC (target >= 0.9), how often the highest-attention image of a
malignant breast is a lesion image, and saliency localisation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from breastscreen.ultrasound.synthetic_eval import run_synthetic_experiment
from breastscreen.utils import atomic_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="scratch folder for the cohorts and the run (not committed)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--n-train", type=int, default=160)
    ap.add_argument("--n-val", type=int, default=50)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--max-images", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", default=[
        "model_args.width=16", "recipe.input_size=128", "recipe.prepare_size=160", "epochs=30", "patience=10",
        "lr=1e-3", "recipe.beta=0.01", "weight_decay=1e-5", "recipe.top_t=0.2", "batch_size=8",
        "recipe.augment_strength=0.33",
    ], help="KEY=VALUE options of `breastscreen train us`")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    result = run_synthetic_experiment(args.work, args.n_train, args.n_val, args.n_test, args.max_images, args.seed,
                                      args.overrides, args.bootstrap, log)
    result["command"] = "python benchmarks/us_synthetic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["device"] = f"cpu, {torch.get_num_threads()} threads" if not torch.cuda.is_available() else "cuda"
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    t = result["test"]
    log(f"malignant AUROC {t['malignant']['auroc']:.3f}; top-attention lesion rate "
        f"{t['top_attention_is_lesion_image']['rate']:.2f} (chance {t['top_attention_is_lesion_image']['chance_rate']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
