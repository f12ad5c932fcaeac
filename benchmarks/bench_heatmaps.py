"""Heatmap speed, side by side with a re-creation of the reference loop, on the same CPU in one run.

Usage (the command behind benchmarks/results/heatmaps_speed.json; rerun on a quiet machine):

    python benchmarks/bench_heatmaps.py --work scratch/bench-heatmaps \
        --out benchmarks/results/heatmaps_speed.json [--rounds 3] [--threads 2]

What runs, each measurement in a fresh Python process (so that peak RSS and the allocator are
per variant) and the variants interleaved round by round (so that a busy spell of the machine
hits them all alike):

* ``reference``: the 2019 heatmap stage as published (Wu et al., nyukat/breast_cancer_classifier),
  re-created from its description: DenseNet-121 whose stem uses TensorFlow-style SAME padding,
  every window (stride-setting algorithm, 256 px, stride 70) copied out by a Python loop into
  a NumPy batch of 100, repeated to 3 channels, run eagerly in fp32 (NCHW, ``torch.no_grad``,
  glibc's default malloc), and the window probabilities added onto the heatmap by a Python loop;
* ``breastscreen`` variants: ``breastscreen heatmaps`` defaults (torch fp32, channels_last,
  batch 16, background windows skipped, glibc mmap off via ``tune_allocator``) and the options
  ``--precision bf16``, ``--backend onnxruntime|openvino``, ``--mode fullconv``;
* agreement of every variant with the exact fp32 heatmap (the ``exact`` variant with
  channels_last off) inside the breast, with *trained* weights: a full-size ``densenet121-patch``
  trained by ``breastscreen train patch`` on synthetic full-resolution phantoms (a short,
  fixed budget; the checkpoint is cached in the work folder), because random weights flatter
  low-precision agreement.

Images: the real NYU sample exam's L-CC view from ``../shared/data/nyu-sample-exam``
(preprocessed at scale 1.0 by ``breastscreen``'s pipeline; the reference runs on the same pixels)
and one synthetic full-resolution view. Also recorded: the CPU model and flags, the measured
fp32/bf16 matmul peaks, the multiply-accumulates per window and the resulting compute floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

PATCH, STRIDE = 256, 70
# name -> options; "exact" is the agreement reference, the others are what users can run.
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {"reference": True},
    "exact": {"channels_last": False, "skip": True, "batch": 16, "allocator": True},
    "default": {"channels_last": True, "skip": True, "batch": 16, "allocator": True},
    "default-batch64": {"channels_last": True, "skip": True, "batch": 64, "allocator": True},
    "default-no-allocator-tuning": {"channels_last": True, "skip": True, "batch": 16, "allocator": False},
    "torch-bf16": {"channels_last": True, "skip": True, "batch": 16, "allocator": True, "precision": "bf16"},
    "onnxruntime-fp32": {"backend": "onnxruntime", "skip": True, "batch": 16, "allocator": True},
    "openvino-fp32": {"backend": "openvino", "skip": True, "batch": 16, "allocator": True},
    "openvino-bf16": {"backend": "openvino", "skip": True, "batch": 16, "allocator": True, "precision": "bf16"},
    "openvino-int8": {"backend": "openvino", "skip": True, "batch": 16, "allocator": True, "precision": "int8"},
    "onnxruntime-int8": {"backend": "onnxruntime", "skip": True, "batch": 16, "allocator": True, "precision": "int8"},
    "fullconv-fp32": {"mode": "fullconv", "channels_last": True, "skip": True, "allocator": True},
    "fullconv-bf16": {"mode": "fullconv", "channels_last": True, "skip": True, "allocator": True, "precision": "bf16"},
    "fullconv-bf16-refine10": {"mode": "fullconv", "channels_last": True, "skip": True, "allocator": True,
                               "precision": "bf16", "refine": 0.1, "batch": 16},
    "fullconv-openvino-bf16": {"mode": "fullconv", "backend": "openvino", "skip": True, "allocator": True,
                               "precision": "bf16"},
    "fullconv-openvino-int8": {"mode": "fullconv", "backend": "openvino", "skip": True, "allocator": True,
                               "precision": "int8"},
    "fullconv-openvino-bf16-refine10": {"mode": "fullconv", "backend": "openvino", "skip": True, "allocator": True,
                                        "precision": "bf16", "refine": 0.1, "batch": 16},
    "fullconv-openvino-int8-refine10": {"mode": "fullconv", "backend": "openvino", "skip": True, "allocator": True,
                                        "precision": "int8", "refine": 0.1, "batch": 16},
}
# Whole exam (4 views, 10 TTA) through the Predictor: full-size NYU view-wise image+heatmaps model
# (random weights: time does not depend on them) with on-the-fly heatmaps of the trained patch model.
EXAM_VARIANTS: dict[str, dict[str, Any]] = {
    "exam-default": {},
    "exam-openvino-bf16": {"backend": "openvino", "precision": "bf16"},
    "exam-openvino-int8": {"backend": "openvino", "precision": "int8"},
    # the breast model in bf16 too (Predictor precision="bf16", `predict --model-precision bf16`)
    "exam-openvino-int8-model-bf16": {"backend": "openvino", "precision": "int8", "model_precision": "bf16"},
}
TRAIN = ["model=densenet121-patch", "recipe.composition={malignant: 48, benign: 48, outside: 48, negative: 48}",
         "epochs=3", "batch_size=16", "lr=1e-3", "monitor=train_loss", "monitor_mode=min", "seed=0",
         "progress=false"]


# ----------------------------------------------------------------------------- the reference loop


def reference_model(state: dict[str, Any]) -> Any:
    """DenseNet-121 with the trained weights and a TensorFlow-style SAME-padded stem (as the 2019 model)."""
    import torch
    import torch.nn.functional as F

    from breastscreen.models import create_model

    model = create_model("densenet121-patch", in_channels=3)  # the reference feeds 3 repeated channels
    model.load_state_dict(state)
    stem = model.stem

    def same_stem(x: torch.Tensor) -> torch.Tensor:
        # SAME for a 7x7/2 conv on an even size pads 2 before and 3 after; the 3x3/2 max-pool 0 and 1.
        x = F.conv2d(F.pad(x, (2, 3, 2, 3)), stem.conv.weight, None, 2)
        x = F.relu(stem.norm(x))
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)

    stem.forward = same_stem
    return model.eval()


def reference_heatmaps(model: Any, img: np.ndarray, batch: int = 100, device: str = "cpu") -> np.ndarray:
    """The reference loop: Python-loop patch copies, batch 100, 3 channels, eager fp32, loop accumulation."""
    import torch

    from breastscreen.inference.strides import window_offsets
    from breastscreen.labels import HEATMAP_CHANNELS, PATCH_CLASSES

    idx = [PATCH_CLASSES.index(c) for c in HEATMAP_CHANNELS]
    coords = [(r, c) for r in window_offsets(img.shape[0], PATCH, STRIDE) for c in window_offsets(img.shape[1], PATCH, STRIDE)]
    probs = []
    for start in range(0, len(coords), batch):
        patches = np.array([img[r:r + PATCH, c:c + PATCH] for r, c in coords[start:start + batch]])
        x = torch.FloatTensor(patches)[:, None].repeat(1, 3, 1, 1).to(device)
        with torch.no_grad():
            probs.append(torch.softmax(model(x)["logits"], dim=1).cpu().numpy())
    p = np.concatenate(probs)
    heat = np.zeros((2, *img.shape), dtype=np.float64)
    count = np.zeros(img.shape, dtype=np.float64)
    for (r, c), pr in zip(coords, p):
        heat[:, r:r + PATCH, c:c + PATCH] += pr[idx][:, None, None]
        count[r:r + PATCH, c:c + PATCH] += 1
    return (heat / count).astype(np.float32)


# ----------------------------------------------------------------------------- one measurement


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> int:
    """Run one variant on one image in this process; print a JSON line with timings and memory."""
    import torch

    torch.set_num_threads(args.threads)
    from breastscreen.inference.engines import build_engine, tune_allocator
    from breastscreen.inference.heatmaps import SlidingWindowHeatmapper, prepare_image
    from breastscreen.models import load_checkpoint

    if args.variant in EXAM_VARIANTS:
        return exam_worker(args)
    opts = VARIANTS[args.variant]
    data = np.load(args.image)
    pixels, mask = data["pixels"], data["mask"]
    out: dict[str, Any] = {"variant": args.variant}
    if opts.get("reference"):
        model = reference_model(load_checkpoint(args.weights).model.state_dict()).to(args.device)
        img = prepare_image(pixels, PATCH)  # standardised like the reference (mean 0, sd 1 over the image)
        t0 = time.perf_counter()
        maps = reference_heatmaps(model, img, device=args.device)[:, : pixels.shape[0], : pixels.shape[1]]
        _sync(args.device)
        out["seconds"] = time.perf_counter() - t0
    else:
        if opts.get("allocator"):
            out["allocator_tuned"] = tune_allocator()
        model = load_checkpoint(args.weights).model.eval().to(args.device)
        on_gpu = args.device.startswith("cuda")
        t0 = time.perf_counter()
        inferer = SlidingWindowHeatmapper(
            model, PATCH, STRIDE, device=args.device, batch_size=256 if on_gpu else opts.get("batch", 16), skip_background=opts.get("skip", True),
            backend=opts.get("backend", "torch"), precision=opts.get("precision", "fp32"),
            channels_last=opts.get("channels_last", False), mode=opts.get("mode", "exact"),
            refine=opts.get("refine", 0.0))
        out["setup_seconds"] = time.perf_counter() - t0  # export/compile of the compiled backends
        # one warm-up batch: kernel selection and first-touch allocation happen once per process
        with torch.inference_mode():
            inferer.engine(torch.zeros(opts.get("batch", 16), 1, PATCH, PATCH))
        _sync(args.device)
        t0 = time.perf_counter()
        res = inferer.heatmaps([pixels], [mask])[0]
        _sync(args.device)
        out["seconds"] = time.perf_counter() - t0
        out["windows"], out["evaluated"] = res.n_windows, res.n_evaluated
        out["engine"] = inferer.describe()
        maps = res.maps
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if args.maps:
        np.save(args.maps, maps.astype(np.float32))
    print(json.dumps(out))
    return 0


def exam_worker(args: argparse.Namespace) -> int:
    """One exam through ``Predictor.predict_exam`` (preprocessing, heatmaps, 10 TTA); print a JSON line."""
    import torch

    from breastscreen import Predictor
    from breastscreen.data.manifest import read_manifest
    from breastscreen.inference.engines import EngineOptions, tune_allocator

    tune_allocator()
    opts = dict(EXAM_VARIANTS[args.variant])
    model_precision = opts.pop("model_precision", "fp32")
    engine = EngineOptions(channels_last=True, **opts)
    exam = read_manifest(args.image)[0]
    t0 = time.perf_counter()
    predictor = Predictor.load(str(Path(args.weights).parent.parent / "breast-random.safetensors"), args.device, tta=10,
                               patch_model=args.weights, patch_batch_size=16, patch_engine=engine,
                               precision=model_precision)
    setup = time.perf_counter() - t0
    spent = {"heatmaps": 0.0}
    inner = predictor.compute_heatmaps

    def timed(prepared: Any) -> np.ndarray:
        t = time.perf_counter()
        try:
            return inner(prepared)
        finally:
            spent["heatmaps"] += time.perf_counter() - t

    predictor.compute_heatmaps = timed  # type: ignore[method-assign]
    t0 = time.perf_counter()
    values = predictor.predict_exam(exam).values
    seconds = time.perf_counter() - t0
    print(json.dumps({"variant": args.variant, "seconds": seconds, "heatmap_seconds": spent["heatmaps"],
                      "setup_seconds": setup, "values": values, "threads": torch.get_num_threads(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
    return 0


# ----------------------------------------------------------------------------- preparation


def prepare_images(work: Path, shared: Path) -> dict[str, Path]:
    """Preprocessed (scale 1.0) real and synthetic views as NPZ files of pixels + breast mask."""
    from breastscreen.data.build import build_manifest
    from breastscreen.data.readers import load_image
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    out: dict[str, Path] = {}
    real = shared / "data" / "nyu-sample-exam"
    for name in ("nyu_sample_L-CC", "synthetic_L-CC"):
        target = work / f"{name}.npz"
        if target.exists():
            out[name] = target
            continue
        if name.startswith("nyu"):
            if not real.is_dir():
                continue
            exams = list(build_manifest(real).exams)
        else:
            exams = generate_mammo_cohort(work / "synth-one", 1, seed=7, scale=1.0, overwrite=True)
        pre, issues = preprocess_manifest(exams, work / f"pre-{name}", 1.0, overwrite=True)
        if not pre:
            raise SystemExit(f"preprocessing {name} failed: {issues}")
        image = pre[0].views["L-CC"][0]
        pixels = load_image(image.path).pixels.astype(np.float32)
        mask = load_image(image.preprocessing["breast_mask_path"]).pixels > 0
        np.savez(target, pixels=pixels, mask=mask)
        out[name] = target
    return out


def trained_weights(work: Path) -> Path:
    """A full-size DenseNet-121 patch model trained briefly on full-resolution synthetic phantoms (cached)."""
    from bench_common import synthetic_cohorts

    from breastscreen.training.runner import train

    run = work / "patch-run"
    if (run / "done").exists():
        return run / "best.safetensors"
    manifests = synthetic_cohorts(work, (("train", 6, 301),), 1.0, 0.5, 0.6)
    if (run / "state.pt").exists():
        train("patch", resume=run, overrides=["progress=false"])
    else:
        train("patch", manifest=str(manifests["train"]), out=str(run), overrides=TRAIN, overwrite=run.exists())
    (run / "done").write_text("")
    return run / "best.safetensors"


def matmul_peaks(threads: int) -> dict[str, float]:
    """Measured dense matmul throughput (TFLOP/s) in fp32 and bf16 on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        torch.mm(a, b)
        t0, reps = time.perf_counter(), 6
        for _ in range(reps):
            torch.mm(a, b)
        out[f"{name}_tflops"] = round(2 * 2048 ** 3 * reps / (time.perf_counter() - t0) / 1e12, 3)
    return out


def macs_per_window(weights: Path) -> int:
    """Multiply-accumulates of one 256 x 256 window through the patch network (conv and linear layers)."""
    import torch

    from breastscreen.models import load_checkpoint

    model = load_checkpoint(weights).model.eval()
    total = [0]

    def hook(mod: Any, inp: Any, out: Any) -> None:
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total[0] += out.numel() * k
        else:
            total[0] += out.numel() * mod.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, 1, PATCH, PATCH))
    for h in hooks:
        h.remove()
    return total[0]


def cpu_info() -> dict[str, Any]:
    """CPU model name and the SIMD flags that decide the fast paths."""
    from breastscreen.utils import cpu_field

    name = platform.processor() or platform.machine()
    if name in ("", platform.machine(), "x86_64"):
        name = cpu_field("model name") or name
    flags = set((cpu_field("flags") or "").split())
    keep = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return {"model": name, "flags": [f for f in keep if f in flags], "cores": os.cpu_count()}


def agreement(maps: np.ndarray, exact: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """max |dp| and Pearson r against the exact heatmap, over the breast pixels of both channels."""
    a, b = maps[:, mask], exact[:, mask]
    return {"max_abs_diff": float(np.abs(a - b).max()), "pearson_r": float(np.corrcoef(a.ravel(), b.ravel())[0, 1])}


def measure(work: Path, variant: str, image: Path, weights: Path, threads: int, maps: Path | None,
            device: str = "cpu") -> dict[str, Any]:
    """One variant on one image in a fresh process (its JSON line)."""
    cmd = [sys.executable, __file__, "worker", "--variant", variant, "--image", str(image), "--weights", str(weights),
           "--threads", str(threads), "--device", device] + (["--maps", str(maps)] if maps else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} on {image.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(raw: list[dict[str, Any]], images: dict[str, Path], work: Path, peaks: dict[str, float],
              macs: int, variants: list[str]) -> dict[str, Any]:
    """Per image and variant medians, ratios and agreement; the top-level figures of the issue."""
    per_image: dict[str, Any] = {}
    for name, path in images.items():
        mask = np.load(path)["mask"]
        exact = np.load(work / "maps" / f"{name}__exact.npy")
        ref = float(np.median([r["seconds"] for r in raw if r["image"] == name and r["variant"] == "reference"]))
        table = {}
        for v in variants:
            rows = [r for r in raw if r["image"] == name and r["variant"] == v]
            if not rows:
                continue
            sec = float(np.median([r["seconds"] for r in rows]))
            row = {"median_seconds": round(sec, 3), "seconds": [round(r["seconds"], 3) for r in rows],
                   "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rows), 1),
                   "ratio_vs_reference": round(ref / sec, 2),
                   **{k: rows[0][k] for k in ("windows", "evaluated", "engine", "setup_seconds") if k in rows[0]}}
            n = rows[0].get("evaluated")
            if n:
                row["patches_per_second"] = round(n / sec, 1)
            row.update(agreement(np.load(work / "maps" / f"{name}__{v}.npy"), exact, mask))
            table[v] = row
        shape = np.load(path)["pixels"].shape
        per_image[name] = {"shape": list(shape), "variants": table, "reference_seconds": round(ref, 2)}
    main = "nyu_sample_L-CC" if "nyu_sample_L-CC" in per_image else next(iter(per_image))
    table = per_image[main]["variants"]
    exact_ok = {v: r for v, r in table.items() if v != "reference" and not v.startswith("fullconv")
                and r["max_abs_diff"] <= 0.01}
    best = max(exact_ok, key=lambda v: exact_ok[v]["ratio_vs_reference"])
    # the preview reported at the top: the fastest fullconv variant with r >= 0.99 inside the breast,
    # else the fastest one (rule fixed before the committed run; every variant is in the table)
    full = {v: r for v, r in table.items() if v.startswith("fullconv")}
    close = {v: r for v, r in full.items() if r["pearson_r"] >= 0.99} or full
    best_full = max(close, key=lambda v: close[v]["ratio_vs_reference"]) if close else None
    evaluated = table["default"]["evaluated"]
    return {
        "image": main,
        "fastest_variant_within_0.01": best,
        "ratio_vs_reference": table[best]["ratio_vs_reference"],
        "max_abs_diff": table[best]["max_abs_diff"],
        "seconds_per_image": table[best]["median_seconds"],
        "reference_seconds_per_image": per_image[main]["reference_seconds"],
        "peak_rss_mib": table[best]["peak_rss_mib"],
        "fully_conv": ({"variant": best_full, "ratio_vs_reference": full[best_full]["ratio_vs_reference"],
                        "pearson_r": full[best_full]["pearson_r"], "max_abs_diff": full[best_full]["max_abs_diff"],
                        "seconds_per_image": full[best_full]["median_seconds"]} if best_full else None),
        "compute_floor": {
            "macs_per_window": macs, "tissue_windows": evaluated,
            "bf16_floor_seconds": round(2 * macs * evaluated / (peaks["bf16_tflops"] * 1e12), 2),
            "fp32_floor_seconds": round(2 * macs * evaluated / (peaks["fp32_tflops"] * 1e12), 2),
            "bf16_floor_ratio_vs_reference": round(per_image[main]["reference_seconds"]
                                                   / (2 * macs * evaluated / (peaks["bf16_tflops"] * 1e12)), 1),
        },
        "images": per_image,
    }


def exam_diff(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """Largest |difference| of an exam variant's probabilities from ``exam-default``'s."""
    ref = next((r for r in rows if r["variant"] == "exam-default"), None)
    if ref is None or "values" not in row:
        return None
    keys = [k for k, v in ref["values"].items() if v is not None]
    return round(max(abs(float(row["values"][k]) - float(ref["values"][k])) for k in keys), 6)


def exam_limit(exam: dict[str, Any]) -> str:
    """Where the fastest whole-exam variant spends its time (heatmaps, including the engine build, vs the rest)."""
    if not exam:
        return "not measured"
    v = min(exam, key=lambda k: exam[k]["median_seconds"])
    t, h = exam[v]["median_seconds"], exam[v]["median_heatmap_seconds"]
    return (f"{v}: {h} s of {t} s in the heatmaps of 4 full-resolution views (engine build included), the rest "
            "in preprocessing and the full-size breast model's 40 full-resolution passes (4 views x 10 TTA)")


def int8_goal(r: dict[str, Any]) -> dict[str, Any]:
    """The int8 row of the goal table: the fastest exact-mode int8 variant, met only within max |dp| <= 0.01."""
    table = r["images"][r["image"]]["variants"]
    int8 = {v: t for v, t in table.items() if "int8" in v and not v.startswith("fullconv")}
    shared = ("exact sharing of early layers between overlapping windows gains at most 1.006x (zero padding at "
              "window borders, and window origins on several phases of the stride-4/8 grids; "
              "benchmarks/results/shared_layers_bound.json); the fully-convolutional preview shares it approximately")
    if not int8:
        return {"goal": 20, "measured": None, "met": False, "limit": f"no int8 variant was run; {shared}"}
    best = max(int8, key=lambda v: int8[v]["ratio_vs_reference"])
    t = int8[best]
    floor = r["compute_floor"]
    return {"goal": 20, "variant": best, "measured": t["ratio_vs_reference"], "max_abs_diff": t["max_abs_diff"],
            "met": t["ratio_vs_reference"] >= 20 and t["max_abs_diff"] <= 0.01,
            "limit": f"int8 halves the bf16 time at best (VNNI: twice the bf16 multiply rate), so about "
                     f"{2 * floor['bf16_floor_ratio_vs_reference']:.0f}x at the floor; batch-norm layers before "
                     f"each ReLU stay in float and quantisation moves probabilities by the max_abs_diff above; {shared}"}


def goals(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal table against what this run measured, with what limits each missed goal."""
    floor = r["compute_floor"]
    full = r.get("fully_conv") or {}
    exam = {k: v for k, v in (r.get("whole_exam") or {}).items() if isinstance(v, dict)}
    best_exam = min((v["median_seconds"] for v in exam.values()), default=None)
    out = {
        "heatmaps_ratio_within_0.01": {
            "goal": 10, "measured": r["ratio_vs_reference"], "met": r["ratio_vs_reference"] >= 10,
            "limit": f"bf16 matmul peak {r['matmul_peak']['bf16_tflops']} TFLOP/s on {r['threads']} threads: "
                     f"{floor['tissue_windows']} tissue windows x {floor['macs_per_window'] / 1e9:.2f} GMAC need "
                     f">= {floor['bf16_floor_seconds']} s, i.e. at most {floor['bf16_floor_ratio_vs_reference']}x"},
        "int8_or_shared_computation_ratio": int8_goal(r),
        "fully_conv_ratio": {"goal": 50, "measured": full.get("ratio_vs_reference"),
                             "met": bool(full) and full["ratio_vs_reference"] >= 50},
        "fully_conv_pearson_r_inside_breast": {
            "goal": 0.99, "measured": full.get("pearson_r"), "met": bool(full) and full["pearson_r"] >= 0.99,
            "limit": "context beyond each window enters the trunk's features (see inference/fullconv.py); "
                     "--refine trades speed for exact values on the most probable windows"},
        "peak_rss_mib_one_image": {"goal": 1536, "measured": r["peak_rss_mib"], "met": r["peak_rss_mib"] <= 1536},
        "whole_exam_seconds_10_tta": {
            "goal": 15, "measured": best_exam, "met": best_exam is not None and best_exam <= 15,
            "limit": exam_limit(exam)},
        "gpu_seconds_per_image": {"goal": 0.05, "measured": None, "met": False,
                                  "limit": "no GPU was lent to this session; not measured"},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--variant", required=True, choices=[*VARIANTS, *EXAM_VARIANTS])
    w.add_argument("--image", required=True)
    w.add_argument("--weights", required=True)
    w.add_argument("--threads", type=int, default=2)
    w.add_argument("--maps", default=None)
    w.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="scratch/bench-heatmaps")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "heatmaps_speed.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the CPU-only backends are then left out)")
    ap.add_argument("--exam", action=argparse.BooleanOptionalAction, default=True,
                    help="also time one whole exam (4 views, 10 TTA) through the Predictor")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (reference and exact always run)")
    ap.add_argument("--images", default=None, help="comma-separated subset of nyu_sample_L-CC,synthetic_L-CC")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        return worker(args)
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    work = Path(args.work)
    (work / "maps").mkdir(parents=True, exist_ok=True)
    variants = ["reference", "exact"] + [v for v in args.variants.split(",") if v not in ("reference", "exact")]
    if args.device != "cpu":
        variants = [v for v in variants if VARIANTS[v].get("backend", "torch") == "torch"]
    images = prepare_images(work, Path(args.shared))
    if args.images:
        images = {k: v for k, v in images.items() if k in args.images.split(",")}
    weights = trained_weights(work)
    breast = work / "breast-random.safetensors"
    if not breast.exists():
        from breastscreen.models import create_model, save_checkpoint

        torch.manual_seed(0)
        save_checkpoint(create_model("nyu-viewwise-heatmaps"), breast, {"scale": 1.0})
    exam_manifest = work / "synth-one" / "manifest.jsonl"
    log_path = work / "raw.jsonl"
    raw = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    done = {(r["round"], r["image"], r["variant"]) for r in raw}
    n_before = len(raw)
    for rnd in range(args.rounds):
        for name, path in images.items():
            # rotate the order each round so that no variant always runs first or last
            order = variants[rnd % len(variants):] + variants[: rnd % len(variants)]
            for v in order:
                if (rnd, name, v) in done:
                    continue
                maps = work / "maps" / f"{name}__{v}.npy"
                r = measure(work, v, path, weights, args.threads, maps if not maps.exists() else None, args.device)
                r.update(round=rnd, image=name)
                print(json.dumps({k: r[k] for k in ("round", "image", "variant", "seconds", "peak_rss_mib")}), flush=True)
                with log_path.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                raw.append(r)
        for v in [v for v in EXAM_VARIANTS if args.device == "cpu" or "backend" not in EXAM_VARIANTS[v]] if args.exam else ():
            if (rnd, "exam", v) in done:
                continue
            r = measure(work, v, exam_manifest, weights, args.threads, None, args.device)
            r.update(round=rnd, image="exam")
            print(json.dumps({k: r[k] for k in ("round", "image", "variant", "seconds", "heatmap_seconds")}), flush=True)
            with log_path.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            raw.append(r)
    peaks = matmul_peaks(args.threads)
    result = summarise([r for r in raw if r["image"] != "exam"], images, work, peaks, macs_per_window(weights), variants)
    exam_rows = [r for r in raw if r["image"] == "exam"]
    if exam_rows:
        result["whole_exam"] = {
            v: {"median_seconds": round(float(np.median([r["seconds"] for r in rows])), 2),
                "median_heatmap_seconds": round(float(np.median([r["heatmap_seconds"] for r in rows])), 2),
                "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rows), 1), "rounds": len(rows),
                # the exam's four probabilities against the exact default run (same inputs and weights)
                "max_abs_diff_vs_default": exam_diff(rows[0], exam_rows)}
            for v in EXAM_VARIANTS if (rows := [r for r in exam_rows if r["variant"] == v])}
        result["whole_exam"]["what"] = ("Predictor.predict_exam on one synthetic full-resolution exam (4 views, raw "
                                        "files: preprocessing included), 10 TTA, full-size nyu-viewwise-heatmaps "
                                        "(random weights) + the trained densenet121-patch heatmaps on the fly")
    from bench_common import environment, write_result

    result.update({
        "cpu": cpu_info(), "threads": args.threads, "matmul_peak": peaks, "rounds": args.rounds,
        "weights": "densenet121-patch trained by `breastscreen train patch` " + " ".join(TRAIN)
                   + " on 6 synthetic full-resolution exams (seed 301)",
        "variants_options": {v: VARIANTS[v] for v in variants},
        "device": args.device if args.device != "cpu" else "cpu",
        "gpu": (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else
                "no GPU was available to this run; the GPU path (torch backend, --device cuda) is untimed"),
        # a rerun that only re-summarises keeps the environment of the run that measured
        "environment": (environment(t_start) if len(raw) > n_before or not Path(args.out).exists()
                        else json.loads(Path(args.out).read_text()).get("environment")),
        "command": "python benchmarks/bench_heatmaps.py " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    result["goals"] = goals(result)
    out = write_result(args.out, result)
    print(f"-> {out}: {result['fastest_variant_within_0.01']} {result['ratio_vs_reference']}x the reference, "
          f"max |dp| {result['max_abs_diff']:.2e}; fullconv {result['fully_conv']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
