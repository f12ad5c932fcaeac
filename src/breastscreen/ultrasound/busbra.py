"""BUS-BRA cross-validation of the ultrasound classifier (real-data validation of issue 7).

Bags are the images of one patient's case (BUS-BRA shows the same lesion in one or two
images per patient). The dataset's own patient-disjoint 5-fold split (``5-fold-cv.csv``,
column ``kFold``, carried by the adapter as per-image ``meta["fold"]``) decides the test
fold; for each fold the model is trained on the other four, with a stratified part of them
held out for epoch selection, and predicts the held-out fold. The pooled held-out
predictions then get the paper's analyses through :mod:`breastscreen.evaluation`:
breast-level malignant AUROC/AUPRC with bootstrap CIs (per fold and pooled), the operating
point at the sensitivity of a BI-RADS >= 4 reading (the dataset's radiologist BI-RADS, max
over the bag), the reader-model hybrid with z-scored BI-RADS (lambda = 0.5) and the two triage
points; plus localisation of the malignant saliency map against the lesion masks.

Each fold's run directory keeps its predictions, so an interrupted experiment resumes at the
first unfinished fold.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.ultrasound.bags import (
    BagDataset,
    Breast,
    ImageCache,
    ScaledAugment,
    image_key,
    map_to_cache_geometry,
)
from breastscreen.ultrasound.localisation import summarise_localisation
from breastscreen.ultrasound.recipe import BENIGN, MALIGNANT, USRecipe
from breastscreen.ultrasound.train import BagPredictions, fit_us, model_channels, predict_bags
from breastscreen.utils import atomic_path

PREDICTION_COLUMNS = ("fold", "breast_id", "patient_id", "benign", "malignant", "p_benign", "p_malignant", "birads",
                      "n_images", "top_attention_image")


def stratified_split(breasts: Sequence[Breast], fraction: float, seed: int) -> tuple[list[Breast], list[Breast]]:
    """Split breasts into (train, validation) with ``fraction`` of each malignant/non-malignant stratum in validation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for positive in (0, 1):
        group = [b for b in breasts if b.targets[1] == positive]
        order = rng.permutation(len(group))
        n_val = int(round(fraction * len(group)))
        chosen = set(order[:n_val].tolist())
        for i, b in enumerate(group):
            (val if i in chosen else train).append(b)
    return train, val


def _read_mask(path: str) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise BreastscreenError(f"cannot read lesion mask {path}")
    return mask


def localisation_pairs(
    breasts: Sequence[Breast], preds: BagPredictions, cache: ImageCache
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(malignant saliency map, lesion mask in cache geometry) for every malignant image with a mask."""
    if preds.saliency is None:
        raise ValueError("predictions were made without saliency maps (keep_maps=False)")
    by_key = {image_key(im): im for b in breasts for im in b.images}
    pairs = []
    for ids, sal in zip(preds.image_ids, preds.saliency):
        for k, key in enumerate(ids):
            image = by_key[key]
            for m in image.masks:
                if m.label != "malignant":
                    continue
                mask = map_to_cache_geometry(_read_mask(m.path), cache.get(image))
                if mask.any():
                    pairs.append((sal[k, MALIGNANT], mask))
    return pairs


def _write_predictions(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=PREDICTION_COLUMNS)
            w.writeheader()
            w.writerows(rows)


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("fold", "benign", "malignant", "n_images"):
            r[k] = int(r[k])
        for k in ("p_benign", "p_malignant"):
            r[k] = float(r[k])
        r["birads"] = float(r["birads"]) if r["birads"] not in ("", "nan") else float("nan")
    return rows


def run_fold(
    fold: int,
    breasts: Sequence[Breast],
    cache: ImageCache,
    recipe: USRecipe,
    run_dir: Path,
    val_fraction: float,
    channels: int,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on every fold but ``fold`` and predict ``fold``; returns rows, localisation and fit info."""
    from breastscreen.models.checkpoint import load_checkpoint

    test = [b for b in breasts if b.meta.get("fold") == fold]
    rest = [b for b in breasts if b.meta.get("fold") != fold]
    if not test or not rest:
        raise BreastscreenError(f"fold {fold} has {len(test)} test and {len(rest)} training breasts")
    train, val = stratified_split(rest, val_fraction, seed=recipe.seed + fold)
    done = run_dir / "fold_result.json"
    if done.exists():
        result = json.loads(done.read_text())
        result["rows"] = _read_predictions(run_dir / "predictions.csv")
        return result
    fold_recipe = replace(recipe, seed=recipe.seed + 1000 * fold)
    train_ds = BagDataset(train, cache, fold_recipe.input_size, channels, train=fold_recipe.augment,
                          seed=fold_recipe.seed, max_images=fold_recipe.max_images,
                          augment=ScaledAugment(fold_recipe.augment_strength))
    val_ds = BagDataset(val, cache, fold_recipe.input_size, channels, train=False)
    test_ds = BagDataset(test, cache, fold_recipe.input_size, channels, train=False)
    if log is not None:
        log(f"fold {fold}: train {len(train_ds)} val {len(val_ds)} test {len(test_ds)} breasts")
    resume = (run_dir / "state.pt").exists()
    fit = fit_us(train_ds, val_ds, fold_recipe, run_dir, resume=resume,
                 metadata={"training_data": f"BUS-BRA folds != {fold}", "fold": fold}, log=log)
    model = load_checkpoint(str(fit.best_path)).model
    t0 = time.time()
    rows, loc = predict_fold(fold, [model], test_ds, cache, fold_recipe.batch_size)
    seconds_predict = time.time() - t0
    _write_predictions(run_dir / "predictions.csv", rows)
    result = {
        "fold": fold, "n_train": len(train_ds), "n_val": len(val_ds), "n_test": len(test_ds),
        "best_epoch": fit.best_epoch, "val_auroc_malignant": fit.best_auroc,
        "epochs_run": len(fit.history), "train_seconds": float(sum(h["seconds"] for h in fit.history)),
        "predict_seconds": seconds_predict, "localisation": loc,
        "checkpoint": str(fit.best_path),
    }
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    result["rows"] = rows
    return result


def predict_fold(
    fold: int, models: Sequence[torch.nn.Module], test_ds: BagDataset, cache: ImageCache, batch_size: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Held-out rows and malignant-saliency localisation of one fold; several models are averaged.

    An ensemble averages the members' breast probabilities, attention weights and saliency
    maps (the members share the bags, so the arrays line up).
    """
    runs = [predict_bags(m, test_ds, batch_size=batch_size, keep_maps=True) for m in models]
    preds = runs[0]
    if len(runs) > 1:
        preds = BagPredictions(
            probs=np.mean([r.probs for r in runs], axis=0),
            labels=preds.labels,
            attention=[np.mean(a, axis=0) for a in zip(*(r.attention for r in runs))],
            saliency=[np.mean(a, axis=0) for a in zip(*(r.saliency for r in runs))],
            image_probs=None,
            image_ids=preds.image_ids,
        )
    rows = []
    for i, b in enumerate(test_ds.breasts):
        att = preds.attention[i][:, MALIGNANT]
        rows.append({
            "fold": fold, "breast_id": b.breast_id, "patient_id": b.patient_id or b.exam_id,
            "benign": b.targets[0], "malignant": b.targets[1],
            "p_benign": float(preds.probs[i, BENIGN]), "p_malignant": float(preds.probs[i, MALIGNANT]),
            "birads": b.meta.get("birads", float("nan")), "n_images": len(preds.image_ids[i]),
            "top_attention_image": Path(preds.image_ids[i][int(np.argmax(att))]).name,
        })
    loc = summarise_localisation(localisation_pairs(test_ds.breasts, preds, cache)).as_dict()
    return rows, loc


def _auc_block(y: np.ndarray, s: np.ndarray, groups: Sequence[Any], n_boot: int, seed: int) -> dict[str, Any]:
    from breastscreen.evaluation.stats import AP_METRIC, AUC_METRIC, bootstrap_metric

    auc = bootstrap_metric(AUC_METRIC, y, s, groups=groups, n_resamples=n_boot, seed=seed)
    ap = bootstrap_metric(AP_METRIC, y, s, groups=groups, n_resamples=n_boot, seed=seed)
    return {
        "auroc": auc.value, "auroc_ci95": [auc.ci_low, auc.ci_high],
        "auprc": ap.value, "auprc_ci95": [ap.ci_low, ap.ci_high],
        "n": int(y.size), "n_positive": int(y.sum()),
    }


def clinical_analyses(rows: Sequence[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Reader comparison, hybrid and triage points on pooled held-out predictions (malignant task)."""
    from breastscreen.evaluation import readers as ev_readers
    from breastscreen.evaluation.operating import confusion_at_threshold, operating_point, triage_points

    keep = [r for r in rows if not math.isnan(r["birads"])]
    y = np.array([r["malignant"] for r in keep])
    p = np.array([r["p_malignant"] for r in keep])
    b = np.array([r["birads"] for r in keep])
    reader = confusion_at_threshold(y, b, 4.0)
    model_at_reader = operating_point(y, p, sensitivity=reader["sensitivity"])
    hybrid = ev_readers.hybrid_scores(b, p, lam=0.5, standardize=True)
    groups = [r["patient_id"] for r in keep]
    return {
        "n_breasts": len(keep),
        "reader": {"name": "BUS-BRA radiologist BI-RADS (max over the case's images), positive at >= 4",
                   "operating_point": reader, **_auc_block(y, b, groups, n_boot, seed)},
        "model_at_reader_sensitivity": model_at_reader,
        "hybrid": {"lambda": 0.5, "standardize": "z-score of BI-RADS and of the model probability",
                   **_auc_block(y, hybrid, groups, n_boot, seed)},
        "triage": triage_points(y, p),
    }


def summarise_cv(
    fold_results: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-fold and pooled figures: AUROC/AUPRC with CIs, localisation, clinical analyses."""
    rows = [r for f in fold_results for r in f["rows"]]
    y = np.array([r["malignant"] for r in rows])
    p = np.array([r["p_malignant"] for r in rows])
    groups = [r["patient_id"] for r in rows]
    yb = np.array([r["benign"] for r in rows])
    pb = np.array([r["p_benign"] for r in rows])
    loc_n = sum(f["localisation"]["n_images"] for f in fold_results)
    pooled_loc = {
        "n_images": loc_n,
        "pointing_game": sum(f["localisation"]["pointing_game"] * f["localisation"]["n_images"] for f in fold_results) / loc_n,
        "mean_iou": sum(f["localisation"]["mean_iou"] * f["localisation"]["n_images"] for f in fold_results) / loc_n,
    }
    per_fold = {}
    for f in fold_results:
        fy = np.array([r["malignant"] for r in f["rows"]])
        fp = np.array([r["p_malignant"] for r in f["rows"]])
        per_fold[str(f["fold"])] = {
            "malignant": _auc_block(fy, fp, [r["patient_id"] for r in f["rows"]], n_boot, seed),
            "localisation": f["localisation"],
            **{k: f[k] for k in ("n_train", "n_val", "n_test", "best_epoch", "val_auroc_malignant", "epochs_run",
                                 "train_seconds")},
        }
    return {
        "pooled": {
            "malignant": _auc_block(y, p, groups, n_boot, seed),
            "benign": _auc_block(yb, pb, groups, n_boot, seed),
            "localisation_malignant_images": pooled_loc,
        },
        "per_fold": per_fold,
        "clinical": clinical_analyses(rows, n_boot, seed),
    }


def environment() -> dict[str, Any]:
    """Where the numbers were produced (device, threads, versions)."""
    return {
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_busbra_cv(
    root: str | Path,
    work_dir: str | Path,
    recipe: USRecipe,
    cache_size: int = 192,
    folds: Sequence[int] = (1, 2, 3, 4, 5),
    val_fraction: float = 0.15,
    n_boot: int = 1000,
    seeds: Sequence[int] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole experiment: adapter -> cache -> per-fold training/prediction -> summary dict.

    ``work_dir`` holds the image cache (``cache_<size>.npz``) and one run folder per fold
    (``fold-K`` for seed 0, ``seedS/fold-K`` for other seeds); nothing is written into the
    dataset folder. With several ``seeds`` each fold trains one model per seed and the headline
    figures are those of their average (an ensemble, as the paper ensembles its best trials);
    each single model's figures are kept under ``single_models``.
    """
    from breastscreen.data.adapters import adapt_bus_bra
    from breastscreen.models.registry import create_model
    from breastscreen.ultrasound.bags import breasts_from_exams, build_cache
    from breastscreen.ultrasound.train import build_model

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    problems: list[tuple[str, str]] = []
    exams = adapt_bus_bra(root, problems)
    breasts = breasts_from_exams(exams, require_labels=True)
    cache_path = work / f"cache_{cache_size}.npz"
    images = [im for b in breasts for im in b.images]
    if cache_path.exists():
        cache = ImageCache.load(cache_path)
    else:
        cache = ImageCache(cache_size)
    cache, report = build_cache(images, cache_size, existing=cache)
    cache.save(cache_path)
    channels = model_channels(build_model(recipe))
    if log is not None:
        log(f"{len(breasts)} breasts, {len(images)} images, {len(report.excluded)} excluded; cache {cache_path}")
    from breastscreen.evaluation.metrics import roc_auc
    from breastscreen.models.checkpoint import load_checkpoint

    seeds = list(seeds) if seeds else [recipe.seed]
    members: dict[int, list[dict[str, Any]]] = {}
    for seed in seeds:
        seed_dir = work if seed == 0 else work / f"seed{seed}"
        members[seed] = [run_fold(f, breasts, cache, replace(recipe, seed=seed), seed_dir / f"fold-{f}", val_fraction,
                                  channels, log) for f in folds]
    if len(seeds) == 1:
        results = members[seeds[0]]
    else:
        # Per fold, average the members trained with different seeds (and validation splits).
        results = []
        for i, fold in enumerate(folds):
            test = [b for b in breasts if b.meta.get("fold") == fold]
            test_ds = BagDataset(test, cache, recipe.input_size, channels, train=False)
            models = [load_checkpoint(members[s][i]["checkpoint"]).model for s in seeds]
            rows, loc = predict_fold(fold, models, test_ds, cache, recipe.batch_size)
            first = members[seeds[0]][i]
            results.append({
                **{k: first[k] for k in ("fold", "n_train", "n_val", "n_test")},
                "best_epoch": [members[s][i]["best_epoch"] for s in seeds],
                "val_auroc_malignant": [members[s][i]["val_auroc_malignant"] for s in seeds],
                "epochs_run": [members[s][i]["epochs_run"] for s in seeds],
                "train_seconds": sum(members[s][i]["train_seconds"] for s in seeds),
                "localisation": loc, "rows": rows,
            })
    summary = summarise_cv(results, n_boot=n_boot, seed=recipe.seed)
    if len(seeds) > 1:
        summary["single_models"] = {}
        for seed in seeds:
            rows = [r for f in members[seed] for r in f["rows"]]
            y = np.array([r["malignant"] for r in rows])
            p = np.array([r["p_malignant"] for r in rows])
            summary["single_models"][f"seed{seed}"] = {
                "pooled_malignant": _auc_block(y, p, [r["patient_id"] for r in rows], n_boot, recipe.seed),
                "per_fold_auroc_malignant": {str(f["fold"]): roc_auc(
                    np.array([r["malignant"] for r in f["rows"]]), np.array([r["p_malignant"] for r in f["rows"]]))
                    for f in members[seed]},
            }
    candidates = [(s, m) for s in seeds for m in members[s]]
    best_seed, best = max(candidates, key=lambda c: c[1]["val_auroc_malignant"])
    best_rows = best["rows"]
    best_test_auroc = roc_auc(np.array([r["malignant"] for r in best_rows]), np.array([r["p_malignant"] for r in best_rows]))
    params = sum(p.numel() for p in create_model(recipe.model, **{"top_t": recipe.top_t, **recipe.model_overrides}).parameters())
    summary["setup"] = {
        "dataset": "BUS-BRA (Gomez-Flores et al., Medical Physics 2023)",
        "bags": "all images of one patient case (U-US bag); label = biopsy-proven pathology",
        "split": "dataset's 5-fold-cv.csv kFold (patient-disjoint); per fold, "
                 f"{val_fraction:.0%} of the training folds (stratified) held out for epoch selection",
        "n_breasts": len(breasts), "n_images": len(images), "excluded_images": report.as_dict()["by_reason"],
        "adapter_problems": len(problems),
        "recipe": recipe.to_dict(), "n_parameters": params, "cache_size": cache_size,
        "saliency_threshold": "0.5 x map maximum (relative), pointing game without tolerance",
        "bootstrap": {"n_resamples": n_boot, "unit": "patient", "confidence": 0.95},
        "environment": environment(),
        "wall_seconds": time.time() - t_start,
        "seeds": seeds,
        "final_model": {"fold": best["fold"], "seed": best_seed,
                        "selected_by": "best validation AUROC among the single fold models",
                        "val_auroc_malignant": best["val_auroc_malignant"],
                        "held_out_fold_auroc_malignant": best_test_auroc, "checkpoint": best["checkpoint"]},
    }
    return summary


def export_bundled_model(src: str | Path, dst: str | Path, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Copy a fold checkpoint for the model zoo with float16 weights (half the file size).

    ``load_checkpoint`` rebuilds the float32 model and copies the float16 values into it, so
    users get the same architecture; outputs differ from the float32 checkpoint only by the
    rounding of the weights (checked by the caller).
    """
    from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(str(src))
    model = ck.model.half()
    meta = {**ck.metadata, **(extra_metadata or {}), "weights_dtype": "float16 (loaded into float32)"}
    return save_checkpoint(model, dst, meta)
