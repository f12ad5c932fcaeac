"""mini-MIAS patient-disjoint 5-fold cross-validation of the heatmap patch classifier.

Usage (the command behind benchmarks/results/minimias_patch_cv.json):

    python benchmarks/minimias_patch_cv.py --data ../shared/data/mini-mias \
        --work scratch/minimias --out benchmarks/results/minimias_patch_cv.json

Steps, all with the project's own pieces:

1. ``adapt_mini_mias``: one exam per woman (image pair), circular lesion masks from Info.txt's
   centre and radius (its y origin is the bottom-left corner), then ``preprocess_manifest`` at
   ``--scale`` (0.25: 0.4 mm pixels, images about 500 x 290 px).
2. Women are split into ``--folds`` patient-disjoint folds, stratified by (any malignant, any
   benign finding), deterministically from ``--seed``.
3. Per fold: the KIND ``patch`` training recipe (``breastscreen.training``) on the other folds'
   women with a fixed number of epochs and no checkpoint selection (the held-out fold is never
   used to choose anything); the last checkpoint is evaluated.
4. Held-out patch-level AUCs (malignant-vs-rest, benign-vs-rest) on patches drawn by the same
   ``PatchSampler`` from the held-out women plus one axis-aligned patch centred on every
   held-out lesion; held-out image-level AUCs from the maximum of each image's sliding-window
   heatmap (``SlidingWindowHeatmapper``, the paper's stride algorithm) inside the breast mask.
5. Held-out predictions are pooled over folds; 95 % percentile-bootstrap CIs resample women.

Resumable: a fold whose ``fold_K/predictions.npz`` exists in ``--work`` is not recomputed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from breastscreen.data.types import Exam, view_side
from breastscreen.labels import PATCH_CLASSES
from breastscreen.preprocess.patches import PatchSampler, PatchSource, PatchSpec
from breastscreen.utils import atomic_path

MALIGNANT = PATCH_CLASSES.index("malignant")
# DenseNet-121's layout shrunk to fit a CPU budget: 3 dense blocks of 3/6/6 layers, growth 12,
# 24 stem features, a 1-channel stem (grey patches; no ImageNet weights to match here).
REDUCED_DENSENET = '{"block_config": [3, 6, 6], "growth_rate": 12, "num_init_features": 24, "stem_channels": 1}'
BENIGN = PATCH_CLASSES.index("benign")


# --------------------------------------------------------------------------- folds


def woman_strata(exam: Exam) -> tuple[int, int]:
    """(any malignant, any benign) over both breasts of a woman; unknown labels count as 0."""
    labs = [exam.label(s) for s in ("L", "R")]
    return int(any(lab.malignant == 1 for lab in labs)), int(any(lab.benign == 1 for lab in labs))


def patient_folds(exams: Sequence[Exam], n_folds: int, seed: int) -> dict[str, int]:
    """Assign every woman (exam) to one of ``n_folds`` folds, stratified by :func:`woman_strata`.

    Within each stratum the women are shuffled with a generator seeded ``seed`` and dealt to the
    folds in turn, continuing the rotation across strata so fold sizes differ by at most one.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(exams) < n_folds:
        raise ValueError(f"need at least n_folds={n_folds} women, got {len(exams)}")
    rng = np.random.default_rng(seed)
    strata: dict[tuple[int, int], list[str]] = {}
    for exam in sorted(exams, key=lambda e: e.exam_id):
        strata.setdefault(woman_strata(exam), []).append(exam.exam_id)
    folds: dict[str, int] = {}
    turn = 0
    for key in sorted(strata, reverse=True):  # rarest (malignant) strata first
        ids = strata[key]
        for i in rng.permutation(len(ids)):
            folds[ids[i]] = turn % n_folds
            turn += 1
    return folds


# --------------------------------------------------------------------------- held-out patches


def standardised_sources(exams: Sequence[Exam]) -> list[PatchSource]:
    """Patch sources of preprocessed exams, each image standardised over the whole image.

    This is the normalisation of the patch recipe and of the heatmap inferer, so evaluation
    patches look exactly like training patches and heatmap windows.
    """
    from breastscreen.preprocess.mammo import standardize
    from breastscreen.preprocess.patches import sources_from_exams

    sources = sources_from_exams(exams)
    for src in sources:
        src.image = standardize(src.image)
    return sources


def roi_centred_specs(sources: Sequence[PatchSource], size: int) -> list[PatchSpec]:
    """One axis-aligned ``size`` px patch centred on each lesion's bounding box (kept inside the image)."""
    specs = []
    half = size / 2.0
    for si, src in enumerate(sources):
        h, w = src.image.shape
        for mask, label, _ in src.lesions:
            ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
            if ys.size == 0:
                continue
            cy = (ys.min() + ys.max() + 1) / 2.0
            cx = (xs.min() + xs.max() + 1) / 2.0
            cy = float(np.clip(cy, half, max(half, h - half)))
            cx = float(np.clip(cx, half, max(half, w - half)))
            specs.append(PatchSpec(si, cy, cx, float(size), 0.0, PATCH_CLASSES.index(label)))
    return specs


def predict_patches(model: torch.nn.Module, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities [N, n_classes] of patches [N, s, s]."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(patches), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(patches[start:start + batch_size]))[:, None]
            out.append(torch.softmax(model(x)["logits"].float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(PATCH_CLASSES)), np.float32)


@dataclass
class PatchPredictions:
    """Held-out patches of one fold: class labels, probabilities, woman and whether ROI-centred."""

    labels: np.ndarray
    probs: np.ndarray
    women: np.ndarray
    roi_centred: np.ndarray


def heldout_patches(model: torch.nn.Module, exams: Sequence[Exam], scale: float, composition: dict[str, int],
                    seed: int) -> PatchPredictions:
    """Draw held-out patches (random ones as in training, plus ROI-centred ones) and predict them.

    Classes with no eligible held-out image (e.g. no malignant lesion mask in a fold) are left
    out of the random draw rather than failing the fold.
    """
    from breastscreen.preprocess.patches import extract_patch

    sources = standardised_sources(exams)
    sampler = PatchSampler(sources, scale=scale)
    has = {
        "malignant": any(lab == "malignant" and np.any(m) for s in sources for m, lab, _ in s.lesions),
        "benign": any(lab == "benign" and np.any(m) for s in sources for m, lab, _ in s.lesions),
        "outside": any(s.lesions for s in sources),
        "negative": any(s.negative for s in sources),
    }
    usable = {c: n for c, n in composition.items() if n > 0 and has[c]}
    specs = sampler.sample_specs(usable, seed=seed)
    roi = roi_centred_specs(sources, sampler.out_size)
    patches = [sampler.extract(s) for s in specs]
    patches += [extract_patch(sources[s.source].image, s.cy, s.cx, s.size, 0.0, sampler.out_size) for s in roi]
    all_specs = list(specs) + roi
    probs = predict_patches(model, np.stack(patches).astype(np.float32))
    women = np.array([sources[s.source].key.split("/")[0] for s in all_specs])
    return PatchPredictions(np.array([s.label for s in all_specs], dtype=np.int64), probs, women,
                            np.r_[np.zeros(len(specs), bool), np.ones(len(roi), bool)])


# --------------------------------------------------------------------------- held-out images


@dataclass
class ImagePredictions:
    """Per held-out image: woman, view, MIAS reference, labels and heatmap maxima inside the breast."""

    women: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    malignant: list[int] = field(default_factory=list)
    benign: list[int] = field(default_factory=list)
    max_malignant: list[float] = field(default_factory=list)
    max_benign: list[float] = field(default_factory=list)


def heatmap_maxima(model: torch.nn.Module, exams: Sequence[Exam], patch: int, stride: int,
                   batch_size: int = 256, chunk: int = 8) -> ImagePredictions:
    """Benign/malignant heatmaps of every image (windows without breast skipped) and their maxima in the breast."""
    from breastscreen.inference.heatmap_runner import SlidingWindowHeatmapper, heatmap_items, load_preprocessed
    from breastscreen.labels import HEATMAP_CHANNELS

    inferer = SlidingWindowHeatmapper(model, patch, stride, batch_size=batch_size, device="cpu", amp=False,
                                      skip_background=True)
    ib, im = HEATMAP_CHANNELS.index("benign"), HEATMAP_CHANNELS.index("malignant")
    labels = {e.exam_id: e for e in exams}
    items = heatmap_items(exams)
    out = ImagePredictions()
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        loaded = [load_preprocessed(it.image, need_mask=True) for it in part]
        results = inferer.heatmaps([p for p, _ in loaded], [m for _, m in loaded])
        for it, (_, mask), res in zip(part, loaded, results):
            lab = labels[it.exam_id].label(view_side(it.view))
            out.women.append(it.exam_id)
            out.views.append(it.view)
            out.refs.append(str(it.image.meta.get("mias_ref", "")))
            out.malignant.append(int(lab.malignant == 1))
            out.benign.append(int(lab.benign == 1))
            out.max_malignant.append(float(res.maps[im][mask].max()))
            out.max_benign.append(float(res.maps[ib][mask].max()))
    return out


# --------------------------------------------------------------------------- statistics


def auc_with_ci(y: np.ndarray, s: np.ndarray, women: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """AUROC with a 95 % percentile bootstrap CI resampling women (clusters); counts of both classes."""
    from breastscreen.evaluation.stats import AUC_METRIC, bootstrap_metric

    y = np.asarray(y, dtype=np.int64)
    res = bootstrap_metric(AUC_METRIC, y, np.asarray(s, dtype=np.float64), groups=list(women),
                           n_resamples=n_resamples, seed=seed)
    return {"auc": round(res.value, 4), "ci95": [round(res.ci_low, 4), round(res.ci_high, 4)],
            "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()), "n_women": int(len(set(women))),
            "bootstrap": {"n_resamples": res.n_resamples, "n_failed": res.n_failed, "unit": "woman"}}


def plain_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """AUROC, or None when only one class is present."""
    from breastscreen.evaluation.metrics import roc_auc

    v = roc_auc(np.asarray(y), np.asarray(s))
    return None if not np.isfinite(v) else round(float(v), 4)


def patch_metrics(p: PatchPredictions, n_resamples: int, seed: int) -> dict[str, Any]:
    """Patch-level one-vs-rest AUCs (all held-out patches) and lesion-only malignant-vs-benign AUC."""
    out = {
        "malignant_vs_rest": auc_with_ci(p.labels == MALIGNANT, p.probs[:, MALIGNANT], p.women, n_resamples, seed),
        "benign_vs_rest": auc_with_ci(p.labels == BENIGN, p.probs[:, BENIGN], p.women, n_resamples, seed),
        "lesion_vs_nonlesion": auc_with_ci(np.isin(p.labels, [MALIGNANT, BENIGN]),
                                           p.probs[:, MALIGNANT] + p.probs[:, BENIGN], p.women, n_resamples, seed),
    }
    roi = p.roi_centred & np.isin(p.labels, [MALIGNANT, BENIGN])
    if roi.any():
        out["roi_centred_malignant_vs_benign"] = auc_with_ci(p.labels[roi] == MALIGNANT, p.probs[roi, MALIGNANT],
                                                             p.women[roi], n_resamples, seed)
    out["n_patches"] = {c: int((p.labels == i).sum()) for i, c in enumerate(PATCH_CLASSES)}
    out["n_roi_centred"] = int(p.roi_centred.sum())
    return out


def image_metrics(im: ImagePredictions, n_resamples: int, seed: int) -> dict[str, Any]:
    """Image-level AUCs from the heatmap maxima (malignant-vs-rest is the headline figure)."""
    w = np.array(im.women)
    mal, ben = np.array(im.malignant), np.array(im.benign)
    smal, sben = np.array(im.max_malignant), np.array(im.max_benign)
    return {
        "malignant_vs_rest": auc_with_ci(mal, smal, w, n_resamples, seed),
        "benign_vs_rest": auc_with_ci(ben, sben, w, n_resamples, seed),
        "any_finding_vs_normal": auc_with_ci(np.maximum(mal, ben), np.maximum(smal, sben), w, n_resamples, seed),
    }


# --------------------------------------------------------------------------- the experiment


def prepare_data(data_root: str, work: Path, scale: float) -> list[Exam]:
    """Adapt mini-MIAS (circle masks into ``work``) and preprocess it at ``scale`` (reused when present)."""
    from breastscreen.data.adapters import adapt_mini_mias
    from breastscreen.data.manifest import read_manifest
    from breastscreen.preprocess.pipeline import MANIFEST_NAME, preprocess_manifest

    pre = work / f"preprocessed_s{scale:g}"
    if (pre / MANIFEST_NAME).is_file():
        exams = read_manifest(pre / MANIFEST_NAME)
        if exams and all(im.preprocessing and im.preprocessing.get("scale") == scale
                         for e in exams for _, im in e.iter_images()):
            return exams
    raw = adapt_mini_mias(data_root, masks_dir=work / "circle_masks")
    exams, issues = preprocess_manifest(raw, pre, scale, overwrite=True)
    failed = [i for i in issues if i["status"] == "failed"]
    if failed:
        raise RuntimeError(f"preprocessing failed for {len(failed)} exams, first: {failed[0]}")
    return exams


def train_fold(train_exams: Sequence[Exam], run_dir: Path, args: argparse.Namespace) -> Path:
    """Train the patch classifier of one fold with the KIND ``patch`` recipe; return the last checkpoint."""
    from breastscreen.data.manifest import write_manifest
    from breastscreen.training.runner import train

    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = run_dir / "train_manifest.jsonl"
    write_manifest(list(train_exams), manifest)
    overrides = {
        "model": args.model,
        "model_args": json.loads(args.model_args),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        # No validation set: a fixed number of epochs and the last checkpoint, so nothing is tuned
        # on the held-out fold.
        "monitor": "train_loss",
        "monitor_mode": "min",
        "patience": 0,
        "seed": args.seed,
        "device": "cpu",
        "amp": False,
        "progress": False,
        "recipe": {
            "composition": dict(zip(PATCH_CLASSES, args.composition)),
            "checkpoint_every": args.epochs,
            "data_description": "mini-MIAS training folds (patient-disjoint CV)",
        },
    }
    outcome = train("patch", manifest=str(manifest), out=str(run_dir / "run"), overrides=overrides, overwrite=True)
    return outcome.results[0].run_dir / "last.safetensors"


def run_fold(k: int, exams: Sequence[Exam], folds: dict[str, int], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train on the other folds and predict fold ``k``'s patches and images; cached in ``fold_k/predictions.npz``."""
    from breastscreen.specs.mammo import patch_geometry
    from breastscreen.models import load_checkpoint

    fold_dir = work / f"fold_{k}"
    cache = fold_dir / "predictions.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return {"patches": PatchPredictions(z["p_labels"], z["p_probs"], z["p_women"], z["p_roi"]),
                "images": ImagePredictions(**{f: z[f"i_{f}"].tolist() for f in ImagePredictions.__dataclass_fields__}),
                "meta": meta}
    train_exams = [e for e in exams if folds[e.exam_id] != k]
    test_exams = [e for e in exams if folds[e.exam_id] == k]
    t0 = time.perf_counter()
    ckpt_path = train_fold(train_exams, fold_dir, args)
    t_train = time.perf_counter() - t0
    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.model.eval()
    patch, stride = patch_geometry(args.scale, ckpt.metadata)
    if args.heatmap_stride:
        stride = args.heatmap_stride
    t1 = time.perf_counter()
    pp = heldout_patches(model, test_exams, args.scale, dict(zip(PATCH_CLASSES, args.test_composition)),
                         seed=args.seed + 1000 + k)
    t_patch = time.perf_counter() - t1
    t2 = time.perf_counter()
    ip = heatmap_maxima(model, test_exams, patch, stride)
    t_maps = time.perf_counter() - t2
    meta = {"fold": k, "n_train_women": len(train_exams), "n_test_women": len(test_exams),
            "patch_size": patch, "stride": stride, "checkpoint_sha256": ckpt.sha256,
            "final_train_loss": _last_train_loss(ckpt_path.parent),
            "seconds": {"train": round(t_train, 1), "patch_eval": round(t_patch, 1), "heatmaps": round(t_maps, 1)}}
    arrays = {f"i_{f}": np.asarray(getattr(ip, f)) for f in ImagePredictions.__dataclass_fields__}
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, p_labels=pp.labels, p_probs=pp.probs, p_women=pp.women, p_roi=pp.roi_centred,
                                meta=np.asarray(json.dumps(meta)), **arrays)
    return {"patches": pp, "images": ip, "meta": meta}


def _last_train_loss(run_dir: Path) -> float | None:
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return round(float(rows[-1]["train_loss"]), 4) if rows else None


def pool_patches(parts: Sequence[PatchPredictions]) -> PatchPredictions:
    """Concatenate held-out patch predictions of several folds."""
    return PatchPredictions(*(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("labels", "probs", "women", "roi_centred")))


def pool_images(parts: Sequence[ImagePredictions]) -> ImagePredictions:
    """Concatenate held-out image predictions of several folds."""
    out = ImagePredictions()
    for p in parts:
        for f in ImagePredictions.__dataclass_fields__:
            getattr(out, f).extend(getattr(p, f))
    return out


def summarise(exams: Sequence[Exam], folds: dict[str, int], fold_results: Sequence[dict[str, Any]],
              args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """The results document: configuration, data, per-fold and pooled metrics, per-image predictions."""
    per_fold = []
    for r in fold_results:
        im, pp = r["images"], r["patches"]
        per_fold.append({
            **r["meta"],
            "image_auc_malignant_vs_rest": plain_auc(im.malignant, im.max_malignant),
            "image_auc_benign_vs_rest": plain_auc(im.benign, im.max_benign),
            "patch_auc_malignant_vs_rest": plain_auc(pp.labels == MALIGNANT, pp.probs[:, MALIGNANT]),
            "patch_auc_benign_vs_rest": plain_auc(pp.labels == BENIGN, pp.probs[:, BENIGN]),
            "n_images": len(im.women), "n_malignant_images": int(np.sum(im.malignant)),
        })
    pooled_p = pool_patches([r["patches"] for r in fold_results])
    pooled_i = pool_images([r["images"] for r in fold_results])
    fold_mean = {key: round(float(np.mean([f[key] for f in per_fold if f[key] is not None])), 4)
                 for key in ("image_auc_malignant_vs_rest", "image_auc_benign_vs_rest",
                             "patch_auc_malignant_vs_rest", "patch_auc_benign_vs_rest")}
    n_img_mal = int(np.sum(pooled_i.malignant))
    return {
        "experiment": "mini-MIAS patch classifier, patient-disjoint cross-validation",
        "command": " ".join(["python", "benchmarks/minimias_patch_cv.py", *getattr(args, "argv", [])]),
        "device": {"type": "cpu", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                   "machine": platform.machine(), "note": "2 shared CPU cores, no GPU"},
        "wall_seconds": round(seconds, 1),
        "config": {
            "scale": args.scale, "pixel_mm": round(0.1 / args.scale, 4), "folds": args.folds, "seed": args.seed,
            "model": args.model, "model_args": json.loads(args.model_args), "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "optimizer": "Adam",
            "train_composition_per_epoch": dict(zip(PATCH_CLASSES, args.composition)),
            "test_composition_per_fold": dict(zip(PATCH_CLASSES, args.test_composition)),
            "loss": "weighted cross-entropy, w_c = prod_{k!=c} N_k / sum_j prod_{k!=j} N_k",
            "checkpoint": "last epoch (no selection on held-out data)",
            "heatmap": "sliding window (paper's stride algorithm), windows without breast skipped, max inside breast mask",
            "bootstrap_resamples": args.bootstrap,
        },
        "data": {
            "women": len(exams), "images": sum(1 for e in exams for _ in e.iter_images()),
            "malignant_images": n_img_mal, "benign_images": int(np.sum(pooled_i.benign)),
            "lesion_masks": sum(len(im.masks) for e in exams for _, im in e.iter_images()),
            "fold_sizes": [sum(1 for v in folds.values() if v == k) for k in range(args.folds)],
        },
        "pooled": {"image_level": image_metrics(pooled_i, args.bootstrap, args.seed),
                   "patch_level": patch_metrics(pooled_p, args.bootstrap, args.seed)},
        "mean_over_folds": fold_mean,
        "per_fold": per_fold,
        "images": [
            {"woman": w, "view": v, "ref": r, "fold": folds[w], "malignant": m, "benign": b,
             "max_malignant": round(sm, 5), "max_benign": round(sb, 5)}
            for w, v, r, m, b, sm, sb in zip(pooled_i.women, pooled_i.views, pooled_i.refs, pooled_i.malignant,
                                              pooled_i.benign, pooled_i.max_malignant, pooled_i.max_benign)
        ],
    }


def run_cv(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns the results document (also written to ``args.out``)."""
    from breastscreen.utils import seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exams = prepare_data(args.data, work, args.scale)
    folds = patient_folds(exams, args.folds, args.seed)
    print(f"{len(exams)} women, folds {[sum(1 for v in folds.values() if v == k) for k in range(args.folds)]}",
          flush=True)
    results = []
    for k in range(args.folds):
        r = run_fold(k, exams, folds, args, work)
        print(f"fold {k}: {json.dumps(r['meta'])}", flush=True)
        results.append(r)
    doc = summarise(exams, folds, results, args, time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (defaults = the committed run)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="mini-MIAS folder (Info.txt, images/mdbNNN.png)")
    ap.add_argument("--work", required=True, help="scratch folder for preprocessed images and fold runs (not committed)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--scale", type=float, default=0.25, help="preprocessing scale (0.25 = 0.4 mm pixels, 64 px patches)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-5 over far longer training)")
    ap.add_argument("--model", default="densenet121-patch")
    ap.add_argument("--model-args", default=REDUCED_DENSENET,
                    help="JSON config overrides of the model (default: a reduced DenseNet-121, ~130k parameters)")
    ap.add_argument("--composition", type=int, nargs=4, default=[300, 300, 700, 700],
                    metavar=("MAL", "BEN", "OUT", "NEG"), help="training patches per epoch and class")
    ap.add_argument("--test-composition", type=int, nargs=4, default=[100, 100, 200, 200],
                    metavar=("MAL", "BEN", "OUT", "NEG"), help="random held-out patches per fold and class")
    ap.add_argument("--heatmap-stride", type=int, default=0, help="target heatmap stride in px (0 = 70/256 of the patch)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, busy 2-core machine two OpenMP threads ran ~100x slower)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    doc = run_cv(args)
    img = doc["pooled"]["image_level"]["malignant_vs_rest"]
    pat = doc["pooled"]["patch_level"]["malignant_vs_rest"]
    print(f"image-level malignant AUC {img['auc']} {img['ci95']}; patch-level malignant AUC {pat['auc']} {pat['ci95']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
