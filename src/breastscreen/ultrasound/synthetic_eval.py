"""Synthetic validation of the ultrasound system, where each lesion's image and position are known.

Trains KIND ``us`` with the generic training loop (``breastscreen train us``) on a synthetic
ultrasound cohort and measures, on a separate synthetic test cohort:

* breast-level malignant AUROC/AUPRC with bootstrap CIs;
* the attention check of the issue: in positive (malignant) breasts with more than one image,
  the fraction where the image with the highest malignant attention weight is a lesion image
  (``ImageRef.meta["has_lesion"]``), next to the rate expected by picking an image at random;
* localisation of the malignant saliency map on malignant lesion images (pointing game, IoU).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from breastscreen.evaluation.localisation import summarise_localisation


def top_attention_hit_rate(
    attention: Sequence[np.ndarray], has_lesion: Sequence[Sequence[bool]]
) -> dict[str, float | int]:
    """Fraction of bags whose highest-attention image is a lesion image, and the chance rate.

    ``attention``: per bag, weights [K] (one class); ``has_lesion``: per bag, K flags. Bags with
    one image or without any lesion image are skipped (the check is uninformative there).
    The chance rate is the mean over the kept bags of (#lesion images / K).
    """
    if len(attention) != len(has_lesion):
        raise ValueError(f"need one flag list per bag, got {len(attention)} bags and {len(has_lesion)} flag lists")
    hits, chance = [], []
    for att, flags in zip(attention, has_lesion):
        att = np.asarray(att, dtype=float).reshape(-1)
        flags = np.asarray(flags, dtype=bool).reshape(-1)
        if att.shape != flags.shape:
            raise ValueError(f"attention has {att.size} images but flags have {flags.size}")
        if att.size < 2 or not flags.any():
            continue
        hits.append(bool(flags[int(np.argmax(att))]))
        chance.append(float(flags.mean()))
    return {
        "n_bags": len(hits),
        "rate": float(np.mean(hits)) if hits else float("nan"),
        "chance_rate": float(np.mean(chance)) if chance else float("nan"),
    }


def run_synthetic_experiment(
    work_dir: str | Path,
    n_train: int = 160,
    n_val: int = 40,
    n_test: int = 120,
    max_images: int = 6,
    seed: int = 0,
    overrides: Sequence[str] = (),
    n_boot: int = 1000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate train/val/test cohorts in ``work_dir``, train KIND us, evaluate on the test cohort."""
    from breastscreen import Predictor
    from breastscreen.data.manifest import read_manifest
    from breastscreen.evaluation.stats import AP_METRIC, AUC_METRIC, bootstrap_metric
    from breastscreen.synthetic.ultrasound import generate_us_cohort
    from breastscreen.training.runner import train
    from breastscreen.ultrasound.busbra import localisation_pairs

    work = Path(work_dir)
    t0 = time.time()
    cohorts = {}
    for name, n, s in (("train", n_train, seed), ("val", n_val, seed + 1), ("test", n_test, seed + 2)):
        folder = work / name
        if not (folder / "manifest.jsonl").is_file():
            generate_us_cohort(folder, n, seed=s, max_images=max_images, prevalence=0.35, benign_prevalence=0.3,
                               id_prefix=f"{name}{s}-", overwrite=True)
        cohorts[name] = folder / "manifest.jsonl"
        if log is not None:
            log(f"cohort {name}: {n} patients ({time.time() - t0:.0f}s)")
    run_dir = work / "run"
    outcome = train("us", manifest=str(cohorts["train"]), val_manifest=str(cohorts["val"]), out=str(run_dir),
                    overrides=["progress=false", *overrides], overwrite=True)
    fit = outcome.results[0]
    predictor = Predictor.load(str(run_dir / "best.safetensors"))
    exams = read_manifest(cohorts["test"])
    preds = [predictor.predict_exam(e) for e in exams]
    y, p, groups, attention, flags = [], [], [], [], []
    for exam, pred in zip(exams, preds):
        by_path = {im.path: im for _, im in exam.iter_images()}
        for side, bag in pred.us_bags.items():
            label = exam.label(side).malignant
            if label is None:
                continue
            y.append(int(label))
            p.append(float(bag["probs"][1]))
            groups.append(exam.exam_id)
            if label == 1:
                attention.append(np.asarray(bag["attention"]))
                flags.append([bool(by_path[src].meta.get("has_lesion")) for src in bag["sources"]])
    y_arr, p_arr = np.array(y), np.array(p)
    auc = bootstrap_metric(AUC_METRIC, y_arr, p_arr, groups=groups, n_resamples=n_boot, seed=seed)
    ap = bootstrap_metric(AP_METRIC, y_arr, p_arr, groups=groups, n_resamples=n_boot, seed=seed)
    loc = summarise_localisation(localisation_pairs(exams, preds))
    excluded: dict[str, int] = {}
    for pred in preds:
        for bag in (pred.details.get("breasts") or {}).values():
            for ex in bag.get("excluded", []):
                key = ex["reason"].split(":")[0]
                excluded[key] = excluded.get(key, 0) + 1
    return {
        "test": {
            "malignant": {"auroc": auc.value, "auroc_ci95": [auc.ci_low, auc.ci_high],
                          "auprc": ap.value, "auprc_ci95": [ap.ci_low, ap.ci_high],
                          "n_breasts": int(y_arr.size), "n_malignant": int(y_arr.sum())},
            "top_attention_is_lesion_image": top_attention_hit_rate(attention, flags),
            "localisation_malignant_images": loc.as_dict(),
            "excluded_images": excluded,
        },
        "training": {"best_epoch": fit.best_epoch, "best_val_auroc_malignant": fit.best_value,
                     "epochs_run": fit.epochs_run, "run_dir": str(run_dir)},
        "cohorts": {"n_train_patients": n_train, "n_val_patients": n_val, "n_test_patients": n_test,
                    "max_images_per_breast": max_images, "seed": seed},
        "overrides": list(overrides),
        "wall_seconds": time.time() - t0,
    }
