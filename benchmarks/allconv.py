"""All-convolutional whole-image classifier (Shen et al. 2019): synthetic claim and mini-MIAS CV.

Usage (the command behind benchmarks/results/allconv.json; resumable, rerun after an interruption):

    python benchmarks/allconv.py --data ../shared/data/mini-mias --work scratch/allconv \
        --out benchmarks/results/allconv.json

Protocol, fixed before any held-out number was seen (CPU-sized reductions of the paper):

* images resized to 288 x 224 (the paper: 1152 x 896), patches 56 px (224 scaled);
  ResNet-50 layout with 2 bottleneck units per stage and width 16 (the paper: 3/4/6/3, 64);
  top blocks two [128-128-512]x1 with a stride-2 first convolution (the paper: 512-512-2048);
* roi-patch: S10 set, 10 epochs at a constant 1e-3 from scratch (no ImageNet weights exist here),
  batch 32, class weights balanced within each batch; the epoch with the best validation patch
  accuracy is kept;
* whole-image from the roi-patch trunk: top layers 8 epochs at 1e-3 (weight decay 1e-3), then all
  layers 8 epochs at 1e-4 (weight decay 1e-2) (the paper: 30 at 1e-4 and 20 at 1e-5 from an
  ImageNet trunk), batch 4; from scratch: the same 16 epochs at a constant 1e-3; the epoch with
  the best validation per-image AUC is kept;
* synthetic phantoms (scale 0.125): 80 training, 20 validation, 60 test exams; test per-image
  malignant AUC with (4 exact flips) and without flip averaging; roi-patch patch accuracy on the
  test images' S1 and S10 patches;
* mini-MIAS (scale 0.25): 5 patient-disjoint folds (benchmarks/minimias_patch_cv.py's split);
  per fold 15 % of the training women (stratified) validate; (a) roi-patch + whole-image trained
  on mini-MIAS, (b) the synthetic whole-image model fine-tuned on mini-MIAS image labels only
  (init_from, constant 1e-4, 16 epochs); held-out per-image malignant AUC pooled over folds,
  95 % bootstrap CI resampling women.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cv_parser, elapsed_logger, environment, fold_split, synthetic_cohorts  # noqa: E402
from minimias_patch_cv import auc_with_ci, patient_folds, prepare_data  # noqa: E402

from breastscreen.utils import atomic_path  # noqa: E402

IMAGE_SIZE = "[288,224]"
TRUNK = ["model_args.layers=[2,2,2,2]", "model_args.width=16"]
TOP = ["model_args.top_blocks=[[128,512,1],[128,512,1]]"]
COMMON = ["device=cpu", "progress=false", "amp=false"]


def _train(kind: str, train_m: Path, val_m: Path, out: Path, overrides: list[str]) -> Path:
    """Train one run (resuming an interrupted one); return its best checkpoint."""
    from breastscreen.training.runner import train

    if (out / "state.pt").exists():
        train(kind, resume=out, overrides=["progress=false"])
    else:
        train(kind, manifest=str(train_m), val_manifest=str(val_m), out=str(out), overrides=[*COMMON, *overrides],
              overwrite=out.exists())
    return out / "best.safetensors"


def roi_patch(train_m: Path, val_m: Path, out: Path, seed: int) -> Path:
    """The protocol's roi-patch run."""
    return _train("roi-patch", train_m, val_m, out, ["model=resnet50-patch", *TRUNK, f"recipe.image_size={IMAGE_SIZE}",
                                                     "recipe.patch_set=S10", "epochs=10", "lr=1e-3", "batch_size=32",
                                                     f"seed={seed}"])


def whole_image(train_m: Path, val_m: Path, out: Path, seed: int, init: Path | None, finetune: bool = False) -> Path:
    """The protocol's whole-image run: from a roi-patch trunk, from scratch, or fine-tuned (``finetune``)."""
    args = [f"seed={seed}", "epochs=16", "batch_size=4"]
    if init is None:
        args += ["model=allconv-resnet50", *[a.replace("model_args.", "model_args.trunk_overrides.") for a in TRUNK],
                 *TOP, f"recipe.image_size={IMAGE_SIZE}", "lr=1e-3"]
    elif finetune:
        args += [f"init_from={init}", "lr=1e-4"]
    else:
        args += [f"init_from={init}", *TOP, "lr=1e-3", "recipe.stage_epochs=[8,8]", "recipe.stage_lrs=[1e-3,1e-4]"]
    return _train("whole-image", train_m, val_m, out, args)


def image_predictions(ckpt: Path, exams: Sequence[Any], tta: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(label, malignant score, woman id) per image with a known breast label."""
    from breastscreen import Predictor

    predictor = Predictor.load(str(ckpt), tta=tta)
    y, s, women = [], [], []
    for exam in exams:
        pred = predictor.predict_exam(exam)
        for view, images in pred.details["per_view"].items():
            label = exam.label(view[0]).malignant
            for im in images:
                if label is not None:
                    y.append(int(label))
                    s.append(im["malignant"])
                    women.append(exam.patient_id or exam.exam_id)
    return np.array(y), np.array(s), women


def patch_accuracy(ckpt: Path, exams: Sequence[Any], n_per_roi: int, seed: int) -> dict[str, Any]:
    """Accuracy of a roi-patch checkpoint on the S1 / S10 patches of ``exams``."""
    from breastscreen.models.checkpoint import load_checkpoint
    from breastscreen.preprocess.patches import roi_patch_set
    from breastscreen.training.image_datasets import roi_sources, three_class

    ck = load_checkpoint(str(ckpt))
    sources = roi_sources(exams, ck.spec)
    five = len(ck.spec.classes) == 5
    pset = roi_patch_set(sources, n_per_roi, seed, patch_size=ck.spec.patch_size, label_of=None if five else three_class)
    x = np.stack([pset.extract(sources, p) for p in pset.specs])[:, None].astype(np.float32)
    with torch.inference_mode():
        probs = torch.cat([ck.model(torch.from_numpy(x[i:i + 256]))["probs"] for i in range(0, len(x), 256)])
    y = np.array([p.label for p in pset.specs])
    return {"accuracy": round(float((probs.argmax(1).numpy() == y).mean()), 4), "n_patches": int(len(y))}


def synthetic(work: Path, n_boot: int, seed: int, log: Any) -> dict[str, Any]:
    """The synthetic-phantom part of the protocol."""
    from breastscreen.data.manifest import read_manifest, write_manifest

    done = work / "synthetic.json"
    if done.exists():
        return json.loads(done.read_text())
    manifests = synthetic_cohorts(work, (("train", 80, 100 + seed), ("val", 20, 101 + seed), ("test", 60, 102 + seed)),
                                  0.125, 0.4, 0.3)
    log("synthetic cohorts ready")
    roi = roi_patch(manifests["train"], manifests["val"], work / "synth-roi", seed)
    log("synthetic roi-patch trained")
    from_roi = whole_image(manifests["train"], manifests["val"], work / "synth-whole", seed, roi)
    log("synthetic whole-image (from roi-patch) trained")
    scratch = whole_image(manifests["train"], manifests["val"], work / "synth-scratch", seed, None)
    log("synthetic whole-image (from scratch) trained")
    test = read_manifest(manifests["test"])
    out: dict[str, Any] = {"n_exams": {"train": 80, "val": 20, "test": 60},
                           "roi_patch": {"S1": patch_accuracy(roi, test, 1, seed), "S10": patch_accuracy(roi, test, 10, seed)}}
    for name, ckpt in (("from_roi_patch", from_roi), ("from_scratch", scratch)):
        for tta, key in ((1, "image_auc"), (4, "image_auc_flips")):
            y, s, women = image_predictions(ckpt, test, tta)
            res = auc_with_ci(y, s, np.array(women), n_boot, seed)
            out.setdefault(name, {})[key] = res["auc"]
            out[name][key.replace("auc", "ci")] = res["ci95"]
            out[name]["n_images"] = int(len(y))
    out["image_auc"] = out["from_roi_patch"]["image_auc"]
    out["ci"] = out["from_roi_patch"]["image_ci"]
    out["checkpoint"] = str(from_roi)
    write_manifest(test, work / "synth-test-used.jsonl")
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    return out


def mini_mias(data: str, work: Path, synthetic_ckpt: Path, n_boot: int, seed: int, log: Any) -> dict[str, Any]:
    """The mini-MIAS part of the protocol (5-fold patient-disjoint CV, per-image AUC)."""
    from breastscreen.data.manifest import write_manifest

    exams = prepare_data(data, work / "minimias", 0.25)
    folds = patient_folds(exams, 5, seed)
    pooled: dict[str, list] = {"from_scratch": [], "transfer": []}
    per_fold: dict[str, dict[str, Any]] = {}
    for k in range(5):
        fold_dir = work / "minimias" / f"fold_{k}"
        result_file = fold_dir / "result.json"
        if result_file.exists():
            res = json.loads(result_file.read_text())
        else:
            fold_dir.mkdir(parents=True, exist_ok=True)
            train_ex, val, test = fold_split(exams, folds, k, seed)
            write_manifest(train_ex, fold_dir / "train.jsonl")
            write_manifest(val, fold_dir / "val.jsonl")
            roi = roi_patch(fold_dir / "train.jsonl", fold_dir / "val.jsonl", fold_dir / "roi", seed + k)
            a = whole_image(fold_dir / "train.jsonl", fold_dir / "val.jsonl", fold_dir / "whole", seed + k, roi)
            b = whole_image(fold_dir / "train.jsonl", fold_dir / "val.jsonl", fold_dir / "transfer", seed + k,
                            synthetic_ckpt, finetune=True)
            res = {}
            for name, ckpt in (("from_scratch", a), ("transfer", b)):
                y, s, women = image_predictions(ckpt, test, 1)
                res[name] = {"y": y.tolist(), "s": s.tolist(), "women": women}
            with atomic_path(result_file) as tmp:
                tmp.write_text(json.dumps(res))
            log(f"mini-MIAS fold {k} done")
        per_fold[str(k)] = {}
        for name in pooled:
            pooled[name].append(res[name])
            y = np.array(res[name]["y"])
            per_fold[str(k)][name] = {"n_images": int(len(y)), "n_malignant": int(y.sum())}
    out: dict[str, Any] = {"per_fold": per_fold}
    for name, parts in pooled.items():
        y = np.concatenate([p["y"] for p in parts]).astype(int)
        s = np.concatenate([p["s"] for p in parts])
        women = np.array([w for p in parts for w in p["women"]])
        res = auc_with_ci(y, s, women, n_boot, seed)
        out[name] = {"image_auc": res["auc"], "ci": res["ci95"], "n_images": int(len(y)), "n_malignant": int(y.sum()),
                     "n_women": res["n_women"]}
    return out


def main(argv: list[str] | None = None) -> int:
    args = cv_parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0, log = time.time(), elapsed_logger()

    summary: dict[str, Any] = {"protocol": __doc__.split("Protocol, ")[1].strip(), "seed": args.seed}
    summary["synthetic"] = synthetic(work, args.bootstrap, args.seed, log)
    if not args.skip_minimias:
        summary["mini_mias"] = mini_mias(args.data, work, Path(summary["synthetic"]["checkpoint"]), args.bootstrap,
                                         args.seed, log)
    summary["environment"] = environment(t0)
    summary["command"] = "python benchmarks/allconv.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
