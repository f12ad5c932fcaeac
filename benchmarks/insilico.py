"""In-silico reproduction of the paper's main comparison: image-only vs image-and-heatmaps breast models.

Everything is trained with the project's own CLI on synthetic phantoms (``breastscreen synth``):

1. three disjoint cohorts (train / validation / held-out test, different seeds) at ``--scale``;
2. ``breastscreen preprocess`` of each cohort at that scale;
3. ``breastscreen train patch`` (tiny DenseNet, checkpoint selection by validation heatmap AUC);
4. ``breastscreen heatmaps`` of all three cohorts with the selected patch model;
5. ``breastscreen train breast`` twice: image-only and ``--heatmaps`` (same seed, same recipe);
6. held-out evaluation: each breast model's best checkpoint predicts the test cohort
   (``breastscreen predict``); breast-level malignant and benign AUCs with 95 % bootstrap CIs
   (breasts resampled by exam, ``breastscreen.evaluation.stats.bootstrap_metric``) and a paired
   DeLong test of the malignant AUCs of the two models.

Results go to ``--results`` (default ``benchmarks/results/insilico.json``); the trained runs stay
in ``--work`` (``scripts/train_demo_models.sh`` copies them into the zoo as the demo models). CPU-only and deterministic for the given seeds
(every command runs with one thread: OMP_NUM_THREADS=1). An interrupted run continues where it
stopped when started again with the same ``--work`` (training runs resume). Run: ``python benchmarks/insilico.py --work /tmp/insilico``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bs() -> list[str]:
    exe = Path(sys.executable).parent / "breastscreen"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "breastscreen.cli"]


def _env() -> dict[str, str]:
    # One thread per process: bit-reproducible results, and multi-threaded OpenMP regions stall
    # badly on an oversubscribed 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_cmd(kind: str, run_dir: Path, args: list[str], log: list[str]) -> None:
    """``breastscreen train``: a fresh run, or ``--resume`` when an earlier attempt was interrupted.

    A resumed run reproduces the uninterrupted one exactly (per-epoch reseeding), so the
    command recorded for reproduction is always the fresh one.
    """
    if (run_dir / "state.pt").exists():
        epochs = [a for a in args if a.startswith("epochs=")]
        print(f"\n(resuming {run_dir}; the reproducible command is the fresh run below)", flush=True)
        log.append("breastscreen " + " ".join(shlex.quote(a) for a in ["train", kind, *args]))
        run(["train", kind, "--resume", str(run_dir), *epochs], [])
    else:
        run(["train", kind, *args], log)


def run(args: list[str], log: list[str]) -> None:
    """Run one CLI command, echoing it; failures stop the benchmark."""
    cmd = _bs() + args
    shown = "breastscreen " + " ".join(shlex.quote(a) for a in args)
    log.append(shown)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr, env=_env())
    print(f"  ({time.perf_counter() - t0:.0f} s, exit {proc.returncode})", flush=True)
    if proc.returncode not in (0,):
        raise SystemExit(f"command failed with exit status {proc.returncode}: {shown}")


def read_predictions(path: Path) -> dict[str, dict[str, float]]:
    """exam_id -> {label: probability} from a predictions.csv."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["exam_id"]: {k: float(v) for k, v in r.items() if k != "exam_id" and v != ""} for r in csv.DictReader(fh)}


def breast_arrays(manifest: Path, preds: dict[str, dict[str, float]], kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per breast: labels, scores and exam ids (for cluster resampling) for ``kind`` benign/malignant."""
    from breastscreen.data.manifest import read_manifest

    y, s, groups = [], [], []
    for exam in read_manifest(manifest):
        if exam.exam_id not in preds:
            raise SystemExit(f"no prediction for test exam {exam.exam_id}")
        for side, prefix in (("L", "left"), ("R", "right")):
            label = getattr(exam.label(side), kind)
            if label is None:
                continue
            y.append(int(label))
            s.append(preds[exam.exam_id][f"{prefix}_{kind}"])
            groups.append(exam.exam_id)
    return np.asarray(y), np.asarray(s, dtype=float), groups


def evaluate(manifest: Path, pred_csv: Path, seed: int) -> dict[str, dict[str, float]]:
    """Breast-level AUC with a 95 % bootstrap CI (exams resampled) for benign and malignant."""
    from breastscreen.evaluation.metrics import roc_auc
    from breastscreen.evaluation.stats import bootstrap_metric

    preds = read_predictions(pred_csv)
    out = {}
    for kind in ("malignant", "benign"):
        y, s, groups = breast_arrays(manifest, preds, kind)
        res = bootstrap_metric(roc_auc, y, s, groups=groups, n_resamples=2000, seed=seed)
        out[kind] = {"auc": round(res.value, 4), "ci": [round(res.ci_low, 4), round(res.ci_high, 4)],
                     "n_breasts": int(len(y)), "n_positive": int(y.sum())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="scratch folder (cohorts, runs); created")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "insilico.json")
    p.add_argument("--scale", type=float, default=0.125)
    p.add_argument("--n-train", type=int, default=120)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--n-test", type=int, default=120)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--patch-epochs", type=int, default=60)
    p.add_argument("--breast-epochs", type=int, default=40)
    p.add_argument("--breast-filters", type=int, default=8)
    p.add_argument("--parallel", action="store_true", help="train the two breast models at the same time")
    a = p.parse_args()

    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    t_start = time.perf_counter()
    scale, seed = str(a.scale), a.seed
    cohorts = {"train": (a.n_train, seed + 1, "0.4", "0.3"), "val": (a.n_val, seed + 2, "0.4", "0.3"),
               "test": (a.n_test, seed + 3, "0.25", "0.3")}
    for name, (n, s, prev, ben) in cohorts.items():
        steps = [["synth", "mammo", "--out", str(work / f"{name}-raw"), "--n-exams", str(n), "--seed", str(s),
                  "--scale", scale, "--prevalence", prev, "--benign-prevalence", ben],
                 ["preprocess", str(work / f"{name}-raw" / "manifest.jsonl"), "--out", str(work / f"{name}-pre"),
                  "--scale", scale]]
        if (work / f"{name}-pre" / "manifest.jsonl").exists():
            log.extend("breastscreen " + " ".join(shlex.quote(x) for x in step) for step in steps)
            continue
        shutil.rmtree(work / f"{name}-raw", ignore_errors=True)
        for step in steps:
            run(step, log)
    m = {name: str(work / f"{name}-pre" / "manifest.jsonl") for name in cohorts}

    patch_run = work / "runs" / "patch"
    if True:
        train_cmd("patch", patch_run, ["-m", m["train"], "-v", m["val"], "-o", str(patch_run),
             "model=densenet-tiny", "lr=1e-3", "batch_size=100", f"epochs={a.patch_epochs}", f"seed={seed}",
             "recipe.composition={malignant: 500, benign: 500, outside: 1000, negative: 1000}",
             "recipe.checkpoint_every=5", "progress=false",
             "recipe.data_description=synthetic phantoms (breastscreen synth mammo), NOT patient data"], log)
    patch_ckpt = patch_run / "best.safetensors"
    maps = {}
    for name in cohorts:
        maps[name] = work / f"maps-{name}"
        run(["heatmaps", m[name], "--model", str(patch_ckpt), "--out", str(maps[name]), "--resume"], log)

    common = ["lr=1e-3", "batch_size=4", f"epochs={a.breast_epochs}", "patience=10", f"seed={seed}",
              f"model_args.num_filters={a.breast_filters}", "progress=false",
              "recipe.data_description=synthetic phantoms (breastscreen synth mammo), NOT patient data"]
    jobs = {
        "image_only": ["-m", m["train"], "-v", m["val"], "-o", str(work / "runs" / "image_only"), *common],
        "image_and_heatmaps": ["-m", m["train"], "-v", m["val"], "-o", str(work / "runs" / "image_and_heatmaps"),
                               "--heatmaps", str(maps["train"]), f"recipe.val_heatmaps={maps['val']}",
                               "recipe.patch_model=demo-patch", *common],
    }
    if a.parallel:
        procs = {}
        for k, args in jobs.items():
            run_dir = work / "runs" / k
            log.append("breastscreen " + " ".join(shlex.quote(x) for x in ["train", "breast", *args]))
            full = ["train", "breast", "--resume", str(run_dir), f"epochs={a.breast_epochs}"] \
                if (run_dir / "state.pt").exists() else ["train", "breast", *args]
            fh = open(work / f"{k}.log", "a")
            print(f"\n$ breastscreen {' '.join(shlex.quote(x) for x in full)}  (log: {work / f'{k}.log'})", flush=True)
            procs[k] = (subprocess.Popen(_bs() + full, stdout=fh, stderr=subprocess.STDOUT, env=_env()), fh)
        for k, (proc, fh) in procs.items():
            code = proc.wait()
            fh.close()
            if code != 0:
                raise SystemExit(f"training {k} failed (exit {code}); see {work / f'{k}.log'}")
    else:
        for k, args in jobs.items():
            train_cmd("breast", work / "runs" / k, args, log)

    results: dict = {}
    for k in jobs:
        out = work / f"pred-{k}"
        shutil.rmtree(out, ignore_errors=True)
        args = ["predict", m["test"], "--model", str(work / "runs" / k / "best.safetensors"), "--out", str(out),
                "--no-pictures"]
        if k == "image_and_heatmaps":
            args += ["--heatmaps", str(maps["test"])]
        run(args, log)
        results[k] = evaluate(Path(m["test"]), out / "predictions.csv", seed)
        with open(work / "runs" / k / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        best = max(rows, key=lambda r: float(r["val_auc"]) if r.get("val_auc") else -1)
        results[k]["validation"] = {"best_epoch": int(best["epoch"]), "val_auc": float(best["val_auc"]),
                                    "epochs_run": len(rows)}

    from breastscreen.evaluation.stats import delong_test

    preds_i = read_predictions(work / "pred-image_only" / "predictions.csv")
    preds_h = read_predictions(work / "pred-image_and_heatmaps" / "predictions.csv")
    y, s_i, _ = breast_arrays(Path(m["test"]), preds_i, "malignant")
    _, s_h, _ = breast_arrays(Path(m["test"]), preds_h, "malignant")
    dl = delong_test(y, s_h, s_i)
    with open(patch_run / "metrics.csv", newline="") as fh:
        prow = [r for r in csv.DictReader(fh) if r.get("val_auc")]
    pbest = max(prow, key=lambda r: float(r["val_auc"]))
    # Reference point: the patch heatmaps alone (max of each heatmap over a breast's images).
    from breastscreen.data.manifest import read_manifest
    from breastscreen.data.heatmaps import heatmap_filename, read_heatmap_file
    from breastscreen.training.recipes.patch import breast_max_scores

    test_exams = read_manifest(m["test"])
    hm = {(e.exam_id, v, k): read_heatmap_file(maps["test"] / heatmap_filename(e.exam_id, v, k))[0]
          for e in test_exams for v, imgs in e.views.items() for k in range(len(imgs))}
    hm_scores, hm_labels = breast_max_scores(test_exams, hm)
    baseline = {}
    groups = [e.exam_id for e in test_exams for side in ("L", "R")
              if any(v.startswith(side) and imgs for v, imgs in e.views.items())]
    from breastscreen.evaluation.metrics import roc_auc
    from breastscreen.evaluation.stats import bootstrap_metric

    for j, kind in enumerate(("benign", "malignant")):
        known = hm_labels[:, j] >= 0
        res = bootstrap_metric(roc_auc, hm_labels[known, j], hm_scores[known, j],
                               groups=[g for g, k in zip(groups, known) if k], n_resamples=2000, seed=seed)
        baseline[kind] = {"auc": round(res.value, 4), "ci": [round(res.ci_low, 4), round(res.ci_high, 4)]}
    doc = {
        "description": "Held-out breast-level AUCs of NYU view-wise breast models trained on synthetic phantoms, "
                       "image-only vs image-and-heatmaps (Wu et al. 2019 main comparison), 95% bootstrap CIs "
                       "(2000 resamples of exams). Synthetic data, NOT patient data.",
        "image_only": results["image_only"],
        "image_and_heatmaps": results["image_and_heatmaps"],
        "patch_model_breast_max_score_only": baseline,
        "delong_malignant_image_plus_hm_vs_image_only": {k: (round(float(v), 4) if isinstance(v, (int, float, np.floating)) else v)
                                               for k, v in dl.items()},
        # Key names avoid the word "heatmap" so the breast model's AUC is the only
        # image_and_heatmaps malignant AUC in the file.
        "patch_model": {"selected_epoch": int(pbest["epoch"]),
                        "validation_breast_max_score_auc": {"mean": float(pbest["val_auc"]),
                                                            "benign": float(pbest["val_auc_benign"]),
                                                            "malignant": float(pbest["val_auc_malignant"])}},
        "setup": {"scale": a.scale, "n_train": a.n_train, "n_val": a.n_val, "n_test": a.n_test, "seed": seed,
                  "patch_epochs": a.patch_epochs, "breast_epochs": a.breast_epochs,
                  "breast_model": f"nyu-viewwise num_filters={a.breast_filters}", "patch_model": "densenet-tiny"},
        "commands": [c.replace(str(work.resolve()), "$WORK").replace(str(work), "$WORK") for c in log],
        "work_folder": "$WORK = --work (scratch; not committed)",
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores), torch "
                  + __import__("torch").__version__,
        "wall_seconds_this_invocation": round(time.perf_counter() - t_start),
    }
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: doc[k] for k in ("image_only", "image_and_heatmaps")}, indent=2))
    print(f"results -> {a.results}")


if __name__ == "__main__":
    main()
