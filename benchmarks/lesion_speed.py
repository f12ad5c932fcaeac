"""Time per lesion of the lesion classifier on this machine: full-size vs reduced f_loc (Wu et al. 2020).

Usage:

    python benchmarks/lesion_speed.py --out benchmarks/results/lesion_speed.json [--threads 2] [--rounds 3]

One synthetic full-resolution image (a 3,000 x 2,400 standardised random texture) with one lesion;
``breastscreen.inference.lesions.score_lesion`` with 100 windows (128-384 px resized to 256 px) through:

* ``densenet161-patch-embed`` (the paper's f_loc, 26.5 M parameters, random weights) at full scale;
* the reduced f_loc of benchmarks/lesion.py at scale 0.25 (64-px windows);

both with f_agg on all maps (46 x 30 grid at full scale, 12 x 8 at 0.25). Random weights do not change
the arithmetic. Rounds are interleaved; the median seconds per lesion is reported with every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import environment  # noqa: E402

from breastscreen.utils import atomic_path  # noqa: E402

CONFIGS = {
    "full_densenet161": {"scale": 1.0, "model_args": {}, "grid": (46, 30)},
    "reduced_scale0.25": {"scale": 0.25, "model_args": {"block_config": (3, 6, 12, 8), "growth_rate": 16,
                                                          "num_init_features": 32}, "grid": (12, 8)},
}


def _setup(name: str, cfg: dict[str, Any], folder: Path) -> tuple[Any, Any, Any, np.ndarray, np.ndarray]:
    from breastscreen.inference.lesion_features import LesionFeatures
    from breastscreen.models.checkpoint import save_checkpoint
    from breastscreen.models.registry import create_model
    from breastscreen.specs import PatchSpec
    from breastscreen.specs.lesion import LesionSpec

    scale = cfg["scale"]
    patch = max(8, int(round(256 * scale)))
    torch.manual_seed(0)
    floc = create_model("densenet161-patch-embed", **cfg["model_args"]).eval()
    path = folder / f"{name}.safetensors"
    save_checkpoint(floc, path, {"task": "patch"}, spec=PatchSpec(scale=scale, patch_size=patch))
    features = LesionFeatures(str(path))
    spec = LesionSpec(scale=scale, patch_size=patch, grid_size=cfg["grid"], windows=100)
    agg = create_model("lesion-agg", grid_size=cfg["grid"]).eval()
    rng = np.random.default_rng(0)
    h, w = int(3000 * scale), int(2400 * scale)
    image = rng.standard_normal((h, w)).astype(np.float32)
    region = np.zeros((h, w), bool)
    cy, cx, r = h // 2, w // 2, int(60 * scale) + 1
    yy, xx = np.ogrid[:h, :w]
    region[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = True
    return features, spec, agg, image, region


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from breastscreen.inference.lesions import score_lesion

    t0 = time.time()
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        setups = {k: _setup(k, c, Path(tmp)) for k, c in CONFIGS.items()}
        sal = {k: np.full((2, *c["grid"]), 0.5, np.float32) for k, c in CONFIGS.items()}
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for name, (features, spec, agg, image, region) in setups.items():
                t0 = time.perf_counter()
                score_lesion(features, spec, agg, image, region, f"lesion-{rnd}", sal[name], torch.device("cpu"))
                if rnd:
                    times[name].append(time.perf_counter() - t0)
    result = {
        "seconds_per_lesion": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "windows_per_lesion": 100,
        "configs": {k: {"scale": c["scale"], "f_loc": "densenet161-patch-embed", "model_args": c["model_args"],
                        "grid": c["grid"]} for k, c in CONFIGS.items()},
        "environment": environment(t0),
        "command": "python benchmarks/lesion_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    with atomic_path(args.out) as t:
        Path(t).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds_per_lesion"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
