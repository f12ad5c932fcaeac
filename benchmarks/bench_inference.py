"""Speed benchmark of full-resolution inference: patch heatmaps and exam prediction.

Times, on the available device (or ``--device``):

* heatmaps: a DenseNet-121 patch classifier (random weights) sliding over the four preprocessed
  views of a synthetic exam at scale 1.0 (256-px patches, ~70-px strides);
* exam prediction: the NYU ResNet-22 view-wise image+heatmaps model on the four NYU windows
  (2677x1942 CC, 2974x1748 MLO), TTA 1.

Writes JSON to ``benchmarks/results/inference_<device>.json`` with the device, seconds per image
for heatmaps, patches per second, seconds per exam and peak memory. On CPU a full-resolution
DenseNet-121 heatmap takes many minutes per image, so ``--max-patches N`` (default 256 on CPU,
all on GPU) times only the first N windows of each image and extrapolates; the JSON then says
``"heatmaps_extrapolated": true`` with the number of patches actually run.

Usage::

    python benchmarks/bench_inference.py [--device auto|cpu|cuda] [--max-patches N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from breastscreen import __version__
from breastscreen.data.readers import load_image
from breastscreen.inference.heatmaps import SlidingWindowHeatmapper, extract_patches, patch_geometry, prepare_image
from breastscreen.inference.strides import window_offsets
from breastscreen.specs import MultiViewSpec, PreparedImage
from breastscreen.models import create_model
from breastscreen.preprocess.pipeline import preprocess_manifest
from breastscreen.synthetic.mammo import generate_mammo_cohort
from breastscreen.utils import resolve_device, seed_everything


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-patches", type=int, default=None,
                        help="time only this many windows per image and extrapolate (default: 256 on CPU, all on GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per call (default 64 CPU, 256 GPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    max_patches = args.max_patches if args.max_patches is not None else (None if on_gpu else 256)
    batch = args.batch_size or (256 if on_gpu else 64)
    seed_everything(args.seed)
    scale = 1.0
    result: dict = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "package_version": __version__,
                    "scale": scale}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exams = generate_mammo_cohort(tmp / "raw", 1, seed=args.seed, scale=scale)
        t0 = time.perf_counter()
        pre, issues = preprocess_manifest(exams, tmp / "pre", scale)
        result["preprocess_seconds_per_exam"] = time.perf_counter() - t0
        if not pre:
            print(f"preprocessing failed: {issues}", file=sys.stderr)
            return 1
        exam = pre[0]
        views = {v: exam.views[v][0] for v in ("L-CC", "R-CC", "L-MLO", "R-MLO")}
        pixels = {v: load_image(img.path).pixels for v, img in views.items()}

        # ---------------- heatmaps
        patch_model = create_model("densenet121-patch").to(device).eval()
        patch, stride = patch_geometry(scale)
        inferer = SlidingWindowHeatmapper(patch_model, patch, stride, batch_size=batch, device=device)
        n_windows = {v: len(window_offsets(p.shape[0], patch, stride)) * len(window_offsets(p.shape[1], patch, stride))
                     for v, p in pixels.items()}
        result["image_shapes"] = {v: list(p.shape) for v, p in pixels.items()}
        result["windows_per_image"] = n_windows
        heatmaps: dict[str, np.ndarray] = {}
        if max_patches is None:
            _sync(device)
            t0 = time.perf_counter()
            results = inferer.heatmaps([pixels[v] for v in views])
            _sync(device)
            secs = time.perf_counter() - t0
            heatmaps = {v: r.maps for v, r in zip(views, results)}
            total = sum(n_windows.values())
            result.update(heatmaps_extrapolated=False, patches_timed=total,
                          heatmap_seconds_per_image=secs / len(views), patches_per_second=total / secs)
        else:
            # Warm-up batch (kernel selection, allocator), then time max_patches windows per image.
            timed, secs = 0, 0.0
            for k, v in enumerate(views):
                img = torch.from_numpy(prepare_image(pixels[v], patch))[None].to(device)
                rows = window_offsets(pixels[v].shape[0], patch, stride)
                cols = window_offsets(pixels[v].shape[1], patch, stride)
                rr, cc = np.meshgrid(rows, cols, indexing="ij")
                rr, cc = rr.ravel()[:max_patches], cc.ravel()[:max_patches]
                if k == 0:
                    inferer._run(extract_patches(img, torch.as_tensor(rr[:batch]), torch.as_tensor(cc[:batch]), patch))
                _sync(device)
                t0 = time.perf_counter()
                for s in range(0, len(rr), batch):
                    x = extract_patches(img, torch.as_tensor(rr[s:s + batch]), torch.as_tensor(cc[s:s + batch]), patch)
                    with torch.inference_mode():
                        inferer._run(x)
                _sync(device)
                secs += time.perf_counter() - t0
                timed += len(rr)
            pps = timed / secs
            result.update(heatmaps_extrapolated=True, patches_timed=timed, patches_per_second=pps,
                          heatmap_seconds_per_image=float(np.mean([n / pps for n in n_windows.values()])))
            # The breast model's timing does not depend on heatmap values: use random maps.
            rng = np.random.default_rng(args.seed)
            heatmaps = {v: rng.random((2, *p.shape), dtype=np.float32) for v, p in pixels.items()}
        result["heatmap_batch_size"] = batch

        # ---------------- exam prediction (NYU view-wise, image + heatmaps)
        model = create_model("nyu-viewwise-heatmaps").to(device).eval()
        t0 = time.perf_counter()
        inputs = {}
        spec = MultiViewSpec(scale=scale, channels=("image", "benign", "malignant"))
        for v, img in views.items():
            prepared = PreparedImage(pixels[v], dict(img.preprocessing), None, img.path)
            inputs[v] = torch.from_numpy(spec.view_inputs(prepared, v, heatmaps[v])).to(device)
        prep = time.perf_counter() - t0
        with torch.inference_mode():
            model(inputs)  # warm-up
            _sync(device)
            t1 = time.perf_counter()
            out = model(inputs)
            _sync(device)
        forward = time.perf_counter() - t1
        result.update(exam_input_seconds=prep, exam_forward_seconds=forward, seconds_per_exam=prep + forward,
                      exam_probs=[float(v) for v in out["probs"][0].cpu()])
        result["seconds_per_exam_including_heatmaps"] = result["seconds_per_exam"] + 4 * result["heatmap_seconds_per_image"]
    result.update(_peak_memory(device))
    # Other processes on a shared machine slow the CPU figures down; record how busy it was.
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"inference_{device.type}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
