"""Lesion-level classification with local and global context (Wu et al. 2020): synthetic and mini-MIAS.

Usage (the command behind benchmarks/results/lesion.json; resumable, rerun after an interruption):

    python benchmarks/lesion.py --data ../shared/data/mini-mias --work scratch/lesion \
        --out benchmarks/results/lesion.json

Protocol, fixed before any held-out number was seen (CPU-sized reductions of the paper):

* images preprocessed at scale 0.25 (0.4 mm pixels; the paper: full resolution); windows 128-384 px
  of full resolution (32-96 px here) resized to 64 px (the paper: 256);
* f_loc: DenseNet-161 layout reduced to blocks (3, 6, 12, 8), growth 16, 32 initial features, with the
  32-unit embedding (the paper: (6, 12, 36, 24), growth 48, 96, ImageNet-initialised); the paper's
  4-class composition scaled to 2,000 patches per epoch, rotations +-30 deg, weighted cross-entropy,
  Adam at a constant 1e-3 (from scratch; the paper searched [1e-6, 1e-4] from ImageNet weights),
  batch 50, 12 epochs, the epoch with the best validation lesion AUC (100 windows per lesion) kept;
* context network: gmic-global with 8 filters (the paper's global module has 16), input the
  preprocessed image resized to 736 x 480 (2944 x 1920 x 0.25; saliency grid 12 x 8), image-level
  labels, BCE, Adam 1e-3, batch 4, 12 epochs, best validation per-image AUC kept;
* f_agg: saliency + location + embedding maps, 100 training windows per lesion plus as many
  outside/negative windows, Adam 1e-4 (inside the paper's [1e-5, 1e-3]), batch 100, at most 60 epochs,
  early stopping after 10 epochs without a validation lesion-AUC gain; no random search (one trial);
* prediction: 100 windows per lesion, seed 0; local only = f_loc's own malignant/benign averaged
  over the same windows;
* synthetic phantoms: 80 training, 20 validation, 60 test exams (seeds 201-203); lesion-level
  malignant-vs-benign AUC on the test lesions, local only vs local + global, 95 % CIs by bootstrap
  resampling women (1,000), DeLong test of the difference; the ablation (the paper's Table 3): f_agg
  retrained on each of the 7 map combinations with the same f_loc and context network, same seed;
* mini-MIAS: 5 patient-disjoint folds (benchmarks/minimias_patch_cv.py's split, seed 0); per fold 15 %
  of the training women (stratified by the fold split's order) validate; all three networks trained
  per fold; test lesions pooled over folds; the same two figures and the DeLong test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from breastscreen.utils import atomic_path  # noqa: E402

SCALE = 0.25
COMMON = ["device=cpu", "progress=false", "amp=false"]
FLOC = ["model=densenet161-patch-embed", "model_args.block_config=[3,6,12,8]", "model_args.growth_rate=16",
        "model_args.num_init_features=32", "recipe.lesion_validation=true", "monitor=val_lesion_auc",
        "recipe.epoch_size=2000", "recipe.lesion_windows=100", "epochs=12", "batch_size=50", "lr=1e-3"]
CONTEXT = ["model_args.num_filters=8", "epochs=12", "lr=1e-3", "batch_size=4"]
AGG = ["recipe.windows_per_lesion=100", "recipe.windows=100", "epochs=60", "patience=10", "lr=1e-4",
       "batch_size=100"]
MAPS = ("saliency", "location", "embedding")
COMBOS = [list(c) for r in (1, 2, 3) for c in itertools.combinations(MAPS, r)]


def _train(kind: str, train_m: Path, val_m: Path, out: Path, overrides: list[str]) -> Path:
    """Train one run (resuming an interrupted one); return its best checkpoint."""
    from breastscreen.training.runner import train

    if (out / "best.safetensors").exists() and (out / "done").exists():
        return out / "best.safetensors"
    if (out / "state.pt").exists():
        train(kind, resume=out, overrides=["progress=false"])
    else:
        train(kind, manifest=str(train_m), val_manifest=str(val_m), out=str(out), overrides=[*COMMON, *overrides],
              overwrite=out.exists())
    (out / "done").write_text("")
    return out / "best.safetensors"


def networks(train_m: Path, val_m: Path, work: Path, seed: int, combos: Sequence[list[str]]) -> dict[str, Path]:
    """f_loc, the context network and one f_agg per map combination."""
    floc = _train("patch", train_m, val_m, work / "floc", [*FLOC, f"seed={seed}"])
    ctx = _train("context", train_m, val_m, work / "context", [*CONTEXT, f"seed={seed}"])
    out = {"floc": floc, "context": ctx}
    for maps in combos:
        name = "+".join(maps)
        out[name] = _train("lesion", train_m, val_m, work / f"agg-{name}",
                           [*AGG, f"seed={seed}", f"recipe.patch_model={floc.resolve()}",
                            f"recipe.context_model={ctx.resolve()}", f"recipe.maps=[{','.join(maps)}]",
                            f"recipe.cache_dir={(work / 'features').resolve()}"])
    return out


def predict(manifest: Path, out: Path, nets: dict[str, Path], maps: str | None) -> Path:
    """lesions.csv of ``manifest``: local only (``maps`` None) or with the f_agg of ``maps``."""
    from breastscreen.inference.lesion_runner import predict_lesions

    if (out / "lesions.csv").exists() and (out / "done").exists():
        return out / "lesions.csv"
    predict_lesions(manifest, out, str(nets["floc"]), str(nets["context"]) if maps else None,
                    str(nets[maps]) if maps else None, pictures=False, overwrite=True)
    (out / "done").write_text("")
    return out / "lesions.csv"


def compare(local_csv: Sequence[Path], global_csv: Sequence[Path], n_boot: int, seed: int) -> dict[str, Any]:
    """AUCs with CIs of local only vs local + global (pooled over the files), DeLong difference."""
    import pandas as pd

    from breastscreen.evaluation.lesion import evaluate_lesions, read_lesion_predictions

    local = pd.concat([read_lesion_predictions(p) for p in local_csv], ignore_index=True)
    glob = pd.concat([read_lesion_predictions(p) for p in global_csv], ignore_index=True)
    m_local = evaluate_lesions(local, n_boot, seed)["lesion"]
    m_glob = evaluate_lesions(glob, n_boot, seed, compare=local)["lesion"]

    def fig(m: dict[str, Any]) -> dict[str, Any]:
        a = m["auroc"]
        return {"auc": a["value"], "ci": [a.get("ci_low"), a.get("ci_high")], "n_lesions": m["n"],
                "n_malignant": m["n_malignant"], "n_benign": m["n_benign"], "n_women": m["n_clusters"],
                "tnr_at_fnr": {k: v["tnr"]["value"] for k, v in m["tnr_at_fnr"].items()}}

    d = m_glob["compare"]["delong"]
    return {"local": fig(m_local), "local_global": fig(m_glob),
            "difference": {"auc": d["difference"], "delong_ci": [d["ci_low"], d["ci_high"]], "p_value": d["p_value"]}}


def synthetic(work: Path, n_boot: int, seed: int, log: Any) -> dict[str, Any]:
    """The synthetic-phantom part of the protocol (with the ablation)."""
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    done = work / "synthetic.json"
    if done.exists():
        return json.loads(done.read_text())
    manifests = {}
    for name, n, s in (("train", 80, 201), ("val", 20, 202), ("test", 60, 203)):
        pre = work / f"synth-{name}"
        if not (pre / "manifest.jsonl").exists():
            exams = generate_mammo_cohort(work / f"synth-raw-{name}", n, seed=s, scale=SCALE, prevalence=0.5,
                                          benign_prevalence=0.6, overwrite=True)
            preprocess_manifest(exams, pre, SCALE, overwrite=True)
        manifests[name] = pre / "manifest.jsonl"
    log("synthetic cohorts ready")
    nets = networks(manifests["train"], manifests["val"], work / "synth-runs", seed, COMBOS)
    log("synthetic networks trained")
    local = predict(manifests["test"], work / "synth-pred" / "local", nets, None)
    out: dict[str, Any] = {"n_exams": {"train": 80, "val": 20, "test": 60}}
    table = {}
    for maps in COMBOS:
        name = "+".join(maps)
        csv = predict(manifests["test"], work / "synth-pred" / name, nets, name)
        res = compare([local], [csv], n_boot, seed)
        table[name] = {"auc": res["local_global"]["auc"], "ci": res["local_global"]["ci"]}
        if name == "+".join(MAPS):
            out.update(res)
    out["ablation"] = table
    out["ablation_local_only"] = {"auc": out["local"]["auc"], "ci": out["local"]["ci"]}
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    log("synthetic part done")
    return out


def mini_mias(data: str, work: Path, n_boot: int, seed: int, log: Any) -> dict[str, Any]:
    """The mini-MIAS part of the protocol (5-fold patient-disjoint CV, lesion-level AUC)."""
    from breastscreen.data.manifest import write_manifest
    from minimias_patch_cv import patient_folds, prepare_data

    exams = prepare_data(data, work / "minimias", SCALE)
    folds = patient_folds(exams, 5, seed)
    local, glob = [], []
    for k in range(5):
        fold = work / "minimias" / f"fold_{k}"
        fold.mkdir(parents=True, exist_ok=True)
        rest = [e for e in exams if folds[e.exam_id] != k]
        test = [e for e in exams if folds[e.exam_id] == k]
        rng = np.random.default_rng(seed + k)
        order = rng.permutation(len(rest))
        n_val = int(round(0.15 * len(rest)))
        for name, part in (("train", [rest[i] for i in sorted(order[n_val:])]),
                           ("val", [rest[i] for i in sorted(order[:n_val])]), ("test", test)):
            if not (fold / f"{name}.jsonl").exists():
                write_manifest(part, fold / f"{name}.jsonl")
        nets = networks(fold / "train.jsonl", fold / "val.jsonl", fold / "runs", seed + k, [list(MAPS)])
        local.append(predict(fold / "test.jsonl", fold / "pred-local", nets, None))
        glob.append(predict(fold / "test.jsonl", fold / "pred-global", nets, "+".join(MAPS)))
        log(f"mini-MIAS fold {k} done")
    return compare(local, glob, n_boot, seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="mini-MIAS folder (images/, Info.txt)")
    ap.add_argument("--work", required=True, help="scratch folder (not committed)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-minimias", action="store_true", help="only the synthetic part")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    out = Path(args.out)
    summary: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    summary.update({"protocol": __doc__.split("Protocol, ")[1].strip(), "seed": args.seed})
    summary["synthetic"] = synthetic(work, args.bootstrap, args.seed, log)
    summary["complete"] = False
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.skip_minimias:
        summary["mini_mias"] = mini_mias(args.data, work, args.bootstrap, args.seed, log)
        summary["complete"] = True
    summary["environment"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "wall_seconds": round(time.time() - t0, 1)}
    summary["command"] = "python benchmarks/lesion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
