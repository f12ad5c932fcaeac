"""BUS-BRA cross-validation of the ultrasound classifier, through ``breastscreen train us``.

Bags are the images of one patient's case (BUS-BRA shows the same lesion in one or two
images per patient). The dataset's own patient-disjoint 5-fold split (``5-fold-cv.csv``,
column ``kFold``, carried by the adapter as per-image ``meta["fold"]``) decides the test
fold; for each fold, manifests of the training, validation (a stratified part of the other
four folds, for epoch selection) and test exams are written, the model is trained exactly as
``breastscreen train us -m train.jsonl -v val.jsonl`` would (:func:`breastscreen.training.runner.train`)
and the test fold is predicted with the in-memory :class:`~breastscreen.Predictor`. The pooled
held-out predictions then get the paper's analyses through :mod:`breastscreen.evaluation`:
breast-level malignant AUROC/AUPRC with bootstrap CIs (per fold and pooled), the operating
point at the sensitivity of a BI-RADS >= 4 reading (the dataset's radiologist BI-RADS, max
over the bag), the reader-model hybrid with z-scored BI-RADS (lambda = 0.5) and the two triage
points; plus localisation of the malignant saliency map against the lesion masks (top-level
``pointing_game``, ``mean_iou``) and the crop guarantee of the run's spec
(``crop_min_lesion_fraction``, :mod:`breastscreen.ultrasound.crop_guarantee`). With derived
normals (:mod:`breastscreen.ultrasound.normals`) every fold's manifests also hold lesion-free bags,
each in the fold of its source image, and ``lesion_vs_normal_auroc`` is reported; the
benign/malignant figures stay over lesion bags only.

Resumable at every level: a finished fold keeps ``fold_result.json``; an interrupted fold's
training resumes from its last completed epoch (the run directory's ``state.pt``).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import cv2
import numpy as np
import torch

from breastscreen.data.bags import Breast
from breastscreen.data.types import Exam
from breastscreen.errors import BreastscreenError
from breastscreen.evaluation.localisation import mask_in_prepared_geometry, summarise_localisation
from breastscreen.ultrasound.fold_archive import (
    archive_finished, archive_fold, archive_identity, best_index, check_identity, restore_folds)
from breastscreen.utils import atomic_path, cpu_field

if TYPE_CHECKING:
    from breastscreen.ultrasound.normals import NormalCropRules

PREDICTION_COLUMNS = ("fold", "breast_id", "patient_id", "benign", "malignant", "p_benign", "p_malignant", "birads",
                      "n_images", "top_attention_image")
# Written only when a fold has derived-normal bags, so files of the earlier protocol stay as they were.
BAG_COLUMN = "bag"
MALIGNANT = 1


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


def localisation_pairs(exams: Sequence[Exam], predictions: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(malignant saliency map, lesion mask in prepared geometry) for every malignant image with a mask.

    ``predictions`` are the Predictor's results for ``exams`` (same order).
    """
    pairs = []
    for exam, pred in zip(exams, predictions):
        by_path = {im.path: im for _, im in exam.iter_images()}
        for side, bag in pred.us_bags.items():
            for k, (source, record) in enumerate(zip(bag["sources"], bag["records"])):
                image = by_path.get(source)
                if image is None:
                    continue
                for m in image.masks:
                    if m.label != "malignant":
                        continue
                    mask = mask_in_prepared_geometry(_read_mask(m.path), record, bag["pixels"][k].shape[0])
                    if mask.any():
                        pairs.append((bag["saliency"][k], mask))
    return pairs


def _write_predictions(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns = PREDICTION_COLUMNS + ((BAG_COLUMN,) if any(r.get(BAG_COLUMN) == "normal" for r in rows) else ())
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
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
        r.setdefault(BAG_COLUMN, "lesion")
    return rows


def predict_fold(fold: int, checkpoints: Sequence[str], test: Sequence[Breast], exams: Sequence[Exam],
                 device: str = "cpu", normal_ids: frozenset[str] = frozenset()
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Held-out rows and malignant-saliency localisation of one fold; several checkpoints are averaged.

    Breasts of the exams in ``normal_ids`` (derived normals) get ``bag = "normal"``, the others ``"lesion"``.
    """
    from breastscreen import Predictor

    predictor = Predictor.load(list(checkpoints), device)
    by_id = {e.exam_id: e for e in exams}
    test_exams = [by_id[b.exam_id] for b in test]
    preds = [predictor.predict_exam(e) for e in test_exams]
    rows = []
    for b, pred in zip(test, preds):
        bag = pred.us_bags[b.side or "U"]
        rows.append({
            "fold": fold, "breast_id": b.breast_id, "patient_id": b.patient_id or b.exam_id,
            "benign": b.targets[0], "malignant": b.targets[1],
            "p_benign": float(bag["probs"][0]), "p_malignant": float(bag["probs"][MALIGNANT]),
            "birads": b.meta.get("birads", float("nan")), "n_images": len(bag["sources"]),
            "top_attention_image": Path(bag["sources"][int(np.argmax(bag["attention"]))]).name,
            BAG_COLUMN: "normal" if b.exam_id in normal_ids else "lesion",
        })
    loc = summarise_localisation(localisation_pairs(test_exams, preds)).as_dict()
    return rows, loc


def _fold_manifests(fold: int, breasts: Sequence[Breast], exams: Sequence[Exam], fold_dir: Path,
                    val_fraction: float, seed: int, normal_ids: frozenset[str] = frozenset()
                    ) -> tuple[dict[str, Path], list[Breast], int, int]:
    from breastscreen.data.manifest import write_manifest

    test = [b for b in breasts if b.meta.get("fold") == fold]
    rest = [b for b in breasts if b.meta.get("fold") != fold]
    if not test or not rest:
        raise BreastscreenError(f"fold {fold} has {len(test)} test and {len(rest)} training breasts")
    # The split draws lesion bags only (so it is the earlier protocol's split); a derived-normal
    # bag then joins its patient's part, which keeps training and validation patient-disjoint.
    train, val = stratified_split([b for b in rest if b.exam_id not in normal_ids], val_fraction, seed=seed + fold)
    val_patients = {b.patient_id or b.exam_id for b in val}
    for b in rest:
        if b.exam_id in normal_ids:
            (val if (b.patient_id or b.exam_id) in val_patients else train).append(b)
    by_id = {e.exam_id: e for e in exams}
    paths = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        paths[name] = fold_dir / f"{name}.jsonl"
        if not paths[name].is_file():
            write_manifest([by_id[eid] for eid in dict.fromkeys(b.exam_id for b in part)], paths[name])
    return paths, test, len(train), len(val)


def run_fold(fold: int, breasts: Sequence[Breast], exams: Sequence[Exam], fold_dir: Path, overrides: Sequence[str],
             val_fraction: float, seed: int, log: Callable[[str], None] | None = None,
             normal_ids: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Train on every fold but ``fold`` with ``breastscreen train us`` and predict ``fold`` (derived
    normals, the exams in ``normal_ids``, included in every part)."""
    from breastscreen.training.loop import read_metrics_csv
    from breastscreen.training.runner import train

    done = fold_dir / "fold_result.json"
    if done.exists():
        result = json.loads(done.read_text())
        result["rows"] = _read_predictions(fold_dir / "predictions.csv")
        return result
    fold_dir.mkdir(parents=True, exist_ok=True)
    paths, test, n_train, n_val = _fold_manifests(fold, breasts, exams, fold_dir, val_fraction, seed, normal_ids)
    run_dir = fold_dir / "run"
    if log is not None:
        log(f"fold {fold}: train {n_train} val {n_val} test {len(test)} breasts -> {run_dir}")
    opts = ["progress=false", *overrides, f"seed={seed + 1000 * fold}",
            f"recipe.data_description=BUS-BRA folds != {fold}"]
    if (run_dir / "state.pt").exists():
        train("us", resume=run_dir, overrides=opts)
    else:
        train("us", manifest=str(paths["train"]), val_manifest=str(paths["val"]), out=str(run_dir), overrides=opts,
              overwrite=run_dir.exists())
    history = read_metrics_csv(run_dir / "metrics.csv")
    best = max(history, key=lambda r: float(r["val_auroc_malignant"]))
    t0 = time.time()
    rows, loc = predict_fold(fold, [str(run_dir / "best.safetensors")], test, exams, normal_ids=normal_ids)
    _write_predictions(fold_dir / "predictions.csv", rows)
    result = {
        "fold": fold, "n_train": n_train, "n_val": n_val, "n_test": len(test),
        "best_epoch": int(best["epoch"]), "val_auroc_malignant": float(best["val_auroc_malignant"]),
        "epochs_run": len(history), "train_seconds": float(sum(float(h["seconds"]) for h in history)),
        "predict_seconds": time.time() - t0, "localisation": loc,
        "checkpoint": str(run_dir / "best.safetensors"), "environment": environment(),
    }
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    result["rows"] = rows
    return result


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


def lesion_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of lesion bags (derived-normal bags left out)."""
    return [r for r in rows if r.get(BAG_COLUMN, "lesion") != "normal"]


def lesion_vs_normal(rows: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUROC of held-out lesion bags (positive) against held-out derived-normal bags (negative).

    Score: max(P(benign), P(malignant)) of the bag. The model has two independent sigmoid outputs
    and no normal class, so "lesion-free" is both probabilities low; ``auroc`` is None (with the
    reason) when there is no normal bag.
    """
    from breastscreen.evaluation.metrics import roc_auc

    normal = [r for r in rows if r.get(BAG_COLUMN) == "normal"]
    lesion = lesion_rows(rows)
    if not normal or not lesion:
        return {"auroc": None, "reason": f"{len(lesion)} lesion and {len(normal)} derived-normal bags held out"}
    both = lesion + normal
    y = np.array([1] * len(lesion) + [0] * len(normal))
    s = np.array([max(r["p_benign"], r["p_malignant"]) for r in both])
    per_fold = {}
    for fold in sorted({r["fold"] for r in both}):
        idx = [i for i, r in enumerate(both) if r["fold"] == fold]
        if 0 < y[idx].sum() < len(idx):
            per_fold[str(fold)] = roc_auc(y[idx], s[idx])
    return {"score": "max(P(benign), P(malignant)) of the breast (independent sigmoid outputs, no normal class)",
            "n_lesion_bags": len(lesion), "n_normal_bags": len(normal),
            **_auc_block(y, s, [r["patient_id"] for r in both], n_boot, seed), "per_fold_auroc": per_fold}


def summarise_cv(
    fold_results: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-fold and pooled figures: AUROC/AUPRC with CIs, localisation, clinical analyses.

    Benign/malignant figures are over lesion bags only (the earlier protocol's population);
    derived-normal bags, when present, go into ``lesion_vs_normal``.
    """
    all_rows = [r for f in fold_results for r in f["rows"]]
    rows = lesion_rows(all_rows)
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
        f_rows = lesion_rows(f["rows"])
        fy = np.array([r["malignant"] for r in f_rows])
        fp = np.array([r["p_malignant"] for r in f_rows])
        per_fold[str(f["fold"])] = {
            "malignant": _auc_block(fy, fp, [r["patient_id"] for r in f_rows], n_boot, seed),
            "localisation": f["localisation"],
            **{k: f[k] for k in ("n_train", "n_val", "n_test", "best_epoch", "val_auroc_malignant", "epochs_run",
                                 "train_seconds")},
        }
    out = {
        "pooled": {
            "malignant": _auc_block(y, p, groups, n_boot, seed),
            "benign": _auc_block(yb, pb, groups, n_boot, seed),
            "localisation_malignant_images": pooled_loc,
        },
        "per_fold": per_fold,
        "clinical": clinical_analyses(rows, n_boot, seed),
        # Issue 14's headline keys, top level: localisation of the malignant saliency map.
        "pointing_game": pooled_loc["pointing_game"],
        "mean_iou": pooled_loc["mean_iou"],
    }
    lvn = lesion_vs_normal(all_rows, n_boot, seed)
    out["lesion_vs_normal_auroc"] = lvn["auroc"]
    out["lesion_vs_normal"] = lvn
    return out


def environment() -> dict[str, Any]:
    """Where the numbers were produced (device, threads, versions)."""
    return {
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({cpu_field('model name') or platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_busbra_cv(
    root: str | Path,
    work_dir: str | Path,
    overrides: Sequence[str] = (),
    folds: Sequence[int] = (1, 2, 3, 4, 5),
    val_fraction: float = 0.15,
    n_boot: int = 1000,
    seeds: Sequence[int] = (0,),
    log: Callable[[str], None] | None = None,
    normals: NormalCropRules | None = None,
    jobs: int = 1,
    threads: int = 1,
    archive: str | Path | None = None,
) -> dict[str, Any]:
    """The whole experiment: adapter -> per-fold manifests -> ``train us`` -> Predictor -> summary dict.

    ``work_dir`` holds one folder per fold (``fold-K`` for seed 0, ``seedS/fold-K`` for other
    seeds) and the shared prepared-image cache; nothing is written into the dataset folder.
    ``overrides`` are ``breastscreen train us`` options (``KEY=VALUE``). With several ``seeds``
    each fold trains one model per seed; single models are reported first (``single_models``,
    ``single_model``) and the headline figures are those of their average (an ensemble).

    ``normals`` (a :class:`~breastscreen.ultrasound.normals.NormalCropRules`, default None = the
    earlier protocol) adds derived-normal bags (``work_dir/normals``) to every fold's manifests,
    each in the fold of its source image. ``jobs`` > 1 trains folds in that many worker processes
    with ``threads`` threads each. The crop guarantee of the spec the overrides make is measured
    once (``work_dir/crop_guarantee.json``) and reported as ``crop_min_lesion_fraction``.

    ``archive`` (a folder meant to be committed; see :mod:`breastscreen.ultrasound.fold_archive`)
    keeps each finished fold as soon as it finishes, and folds found there are restored into
    ``work_dir`` instead of being trained again: a run can span sessions whose scratch folders
    are lost.
    """
    from breastscreen.data.adapters import adapt_bus_bra
    from breastscreen.data.bags import breasts_from_exams
    from breastscreen.evaluation.metrics import roc_auc
    from breastscreen.ultrasound.crop_guarantee import cached_crop_check
    from breastscreen.ultrasound.cv_jobs import prebuild_cache, run_folds, spec_from_overrides

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        if len(list(seeds)) > 1:
            # ensembles re-predict each fold with every seed's weights; the archive keeps one fold's weights
            raise BreastscreenError("a fold archive holds one model per fold; run several seeds without --archive")
        check_identity(archive, archive_identity(overrides, val_fraction,
                                                 None if normals is None else normals.as_dict()), work, log)
    t_start = time.time()
    problems: list[tuple[str, str]] = []
    exams = adapt_bus_bra(root, problems)
    n_lesion_breasts = len(breasts_from_exams(exams, require_labels=True))
    n_lesion_images = sum(len(images) for e in exams for images in e.views.values())
    overrides = [*overrides, f"recipe.cache_path={work / 'prepared_cache.npz'}"]
    spec = spec_from_overrides(overrides)
    crop_check = cached_crop_check(exams, spec, work / "crop_guarantee.json", log)
    if log is not None:
        log(f"crop guarantee ({spec.crop} crop): minimum lesion fraction kept {crop_check['crop_min_lesion_fraction']}")
    normals_summary: dict[str, Any] | None = None
    normal_ids: frozenset[str] = frozenset()
    if normals is not None:
        from breastscreen.ultrasound.normals import derive_normal_exams

        normal_exams, report = derive_normal_exams(exams, work / "normals", normals, log)
        normals_summary = report.summary()
        normal_ids = frozenset(e.exam_id for e in normal_exams)
        exams = [*exams, *normal_exams]
    breasts = breasts_from_exams(exams, require_labels=True)
    if log is not None:
        log(f"{len(breasts)} breasts ({len(normal_ids)} derived-normal), {sum(len(b.images) for b in breasts)} images")
    if jobs > 1:
        prebuild_cache(breasts, spec, work / "prepared_cache.npz", log)
    seeds = list(seeds) or [0]
    on_done = None
    restored: list[str] = []
    if archive is not None:
        env = environment()
        archive_finished(work, archive, env, log)  # finished before an interruption, not archived yet
        restored = restore_folds(archive, work, log)

        def on_done(fold_dir: Path) -> None:
            # archiving is a side effect: a failure is reported, and the next run's archive_finished catches up
            try:
                archive_fold(fold_dir, work, archive, env, log)
            except (BreastscreenError, OSError, ValueError) as exc:
                if log is not None:
                    log(f"archive: could not archive {fold_dir} ({exc}); the fold is kept in the scratch folder")
    tasks = [(f, (work if seed == 0 else work / f"seed{seed}") / f"fold-{f}", seed) for seed in seeds for f in folds]
    done = run_folds(tasks, breasts, exams, overrides, val_fraction, normal_ids, jobs, threads, log, on_done)
    members: dict[int, list[dict[str, Any]]] = {s: [r for (_, _, ts), r in zip(tasks, done) if ts == s] for s in seeds}
    if len(seeds) == 1:
        results = members[seeds[0]]
    else:
        results = []
        for i, fold in enumerate(folds):
            test = [b for b in breasts if b.meta.get("fold") == fold]
            rows, loc = predict_fold(fold, [members[s][i]["checkpoint"] for s in seeds], test, exams,
                                     normal_ids=normal_ids)
            first = members[seeds[0]][i]
            results.append({
                **{k: first[k] for k in ("fold", "n_train", "n_val", "n_test")},
                "best_epoch": [members[s][i]["best_epoch"] for s in seeds],
                "val_auroc_malignant": [members[s][i]["val_auroc_malignant"] for s in seeds],
                "epochs_run": [members[s][i]["epochs_run"] for s in seeds],
                "train_seconds": sum(members[s][i]["train_seconds"] for s in seeds),
                "localisation": loc, "rows": rows,
            })
    summary = summarise_cv(results, n_boot=n_boot, seed=0)
    summary["single_models"] = {}
    for seed in seeds:
        rows = lesion_rows([r for f in members[seed] for r in f["rows"]])
        y = np.array([r["malignant"] for r in rows])
        p = np.array([r["p_malignant"] for r in rows])
        summary["single_models"][f"seed{seed}"] = {
            "pooled_malignant": _auc_block(y, p, [r["patient_id"] for r in rows], n_boot, 0),
            "per_fold_auroc_malignant": {str(f["fold"]): roc_auc(
                np.array([r["malignant"] for r in lesion_rows(f["rows"])]),
                np.array([r["p_malignant"] for r in lesion_rows(f["rows"])])) for f in members[seed]},
        }
    first = summary["single_models"][f"seed{seeds[0]}"]["pooled_malignant"]
    summary["single_model"] = {"pooled_auroc": first["auroc"], "pooled_auroc_ci95": first["auroc_ci95"],
                               "seed": seeds[0], "what": "one model per fold (the first seed), pooled held-out folds"}
    summary["ensemble"] = ({"pooled_auroc": summary["pooled"]["malignant"]["auroc"], "members": seeds,
                            "what": "average of the seeds' fold models, pooled held-out folds"}
                           if len(seeds) > 1 else
                           {"pooled_auroc": None, "reason": "a single model per fold was pre-registered"})
    summary["crop_min_lesion_fraction"] = crop_check["crop_min_lesion_fraction"]
    summary["crop_guarantee"] = {k: v for k, v in crop_check.items() if k != "skipped"}
    if normals_summary is not None:
        summary["normals"] = normals_summary
    candidates = [(s, m) for s in seeds for m in members[s]]
    best_seed, best = candidates[best_index([m for _, m in candidates])]
    best_rows = lesion_rows(best["rows"])
    best_test_auroc = roc_auc(np.array([r["malignant"] for r in best_rows]), np.array([r["p_malignant"] for r in best_rows]))
    summary["setup"] = {
        "dataset": "BUS-BRA (Gomez-Flores et al., Medical Physics 2023)",
        "bags": "all images of one patient case (U-US bag); label = biopsy-proven pathology"
                + ("; plus one derived-normal bag per case with a lesion-free crop (benign 0, malignant 0)"
                   if normals is not None else ""),
        "split": "dataset's 5-fold-cv.csv kFold (patient-disjoint); per fold, "
                 f"{val_fraction:.0%} of the training folds (stratified) held out for epoch selection",
        "training": "breastscreen train us (the generic fit loop), one run directory per fold",
        "n_breasts": n_lesion_breasts, "n_images": n_lesion_images,
        "adapter_problems": len(problems), "overrides": list(overrides),
        "saliency_threshold": "0.5 x map maximum (relative), pointing game without tolerance",
        "bootstrap": {"n_resamples": n_boot, "unit": "patient", "confidence": 0.95},
        "environment": {**environment(), "jobs": jobs, "threads_per_job": threads},
        "wall_seconds": time.time() - t_start,
        "seeds": seeds,
        "final_model": {"fold": best["fold"], "seed": best_seed,
                        "selected_by": "best validation AUROC among the single fold models",
                        "val_auroc_malignant": best["val_auroc_malignant"],
                        "held_out_fold_auroc_malignant": best_test_auroc, "checkpoint": best["checkpoint"]},
    }
    if normals is not None:
        summary["setup"]["n_normal_bags"] = len(normal_ids)
    if archive is not None:
        summary["setup"]["fold_archive"] = {
            "folder": str(archive), "restored_folds": restored,
            "note": "restored folds were trained in an earlier session (their machine is in each archived "
                    "fold_result.json); wall_seconds counts this session only"}
    return summary


def export_bundled_model(src: str | Path, dst: str | Path, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Copy a fold checkpoint for the model zoo with float16 weights (half the file size), spec kept.

    ``load_checkpoint`` rebuilds the float32 model and copies the float16 values into it, so
    users get the same architecture; outputs differ from the float32 checkpoint only by the
    rounding of the weights (checked by the caller).
    """
    from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(str(src))
    model = ck.model.half()
    meta = {**ck.metadata, **(extra_metadata or {}), "weights_dtype": "float16 (loaded into float32)"}
    return save_checkpoint(model, dst, meta, spec=ck.spec)
