"""The lesion classifier's map ablation (Wu et al. 2020, Table 3) on any data: f_agg on each of the 7 map sets.

Usage (given a trained f_loc and context network, and preprocessed manifests with lesion records):

    python benchmarks/lesion_ablation.py --train pre-train/manifest.jsonl --val pre-val/manifest.jsonl \
        --test pre-test/manifest.jsonl --patch-model runs/floc/best.safetensors \
        --context-model runs/ctx/best.safetensors --work scratch/ablation --out ablation.json [KEY=VALUE ...]

For each non-empty subset of {saliency, location, embedding} one f_agg is trained (``breastscreen
train lesion``, the same seed and settings, features cached once in ``WORK/features``), selected on
the validation lesions, and the test lesions are scored; the JSON holds each subset's test lesion
AUC with its 95 % CI (bootstrap over patients) and the local-only (f_loc) figure on the same
windows. Extra ``KEY=VALUE`` arguments are passed to every f_agg run (e.g. ``lr=3e-4``).
Resumable: finished runs and predictions are kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from breastscreen.utils import atomic_path

MAPS = ("saliency", "location", "embedding")
COMBOS = [list(c) for r in (1, 2, 3) for c in itertools.combinations(MAPS, r)]
COMMON = ["device=cpu", "progress=false", "amp=false"]
AGG = ["recipe.windows_per_lesion=100", "recipe.windows=100", "epochs=60", "patience=10", "lr=1e-4",
       "batch_size=100"]


def train_run(kind: str, train_m: Path, val_m: Path, out: Path, overrides: list[str]) -> Path:
    """Train one run (resuming an interrupted one, reusing a finished one); return its best checkpoint."""
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


def train_agg(train_m: Path, val_m: Path, out: Path, floc: Path, ctx: Path, maps: Sequence[str], seed: int,
              cache: Path, extra: Sequence[str] = ()) -> Path:
    """One f_agg on ``maps`` with the protocol's settings."""
    return train_run("lesion", train_m, val_m, out,
                     [*AGG, f"seed={seed}", f"recipe.patch_model={Path(floc).resolve()}",
                      f"recipe.context_model={Path(ctx).resolve()}", f"recipe.maps=[{','.join(maps)}]",
                      f"recipe.cache_dir={Path(cache).resolve()}", *extra])


def predict(manifest: Path, out: Path, floc: Path, ctx: Path | None, agg: Path | None) -> Path:
    """lesions.csv of ``manifest``: local only (``agg`` None) or with that f_agg."""
    from breastscreen.inference.lesion_runner import predict_lesions

    if (out / "lesions.csv").exists() and (out / "done").exists():
        return out / "lesions.csv"
    predict_lesions(manifest, out, str(floc), str(ctx) if agg else None, str(agg) if agg else None, pictures=False,
                    overwrite=True)
    (out / "done").write_text("")
    return out / "lesions.csv"


def compare(local_csv: Sequence[Path], global_csv: Sequence[Path], n_boot: int, seed: int) -> dict[str, Any]:
    """AUCs with CIs of local only vs with f_agg (pooled over the files), and the DeLong difference."""
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


def ablation(train_m: Path, val_m: Path, test_m: Path, floc: Path, ctx: Path, runs: Path, preds: Path, seed: int,
             n_boot: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Every map subset's test AUC (the paper's Table 3), the local-only figure, and the full comparison."""
    local = predict(test_m, preds / "local", floc, None, None)
    table, full = {}, {}
    for maps in COMBOS:
        name = "+".join(maps)
        agg = train_agg(train_m, val_m, runs / f"agg-{name}", floc, ctx, maps, seed, runs / "features", extra)
        res = compare([local], [predict(test_m, preds / name, floc, ctx, agg)], n_boot, seed)
        table[name] = {"auc": res["local_global"]["auc"], "ci": res["local_global"]["ci"],
                       "difference_vs_local": res["difference"]}
        if name == "+".join(MAPS):
            full = res
    return {"ablation": table, "ablation_local_only": {"auc": full["local"]["auc"], "ci": full["local"]["ci"]},
            **full}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("train", "val", "test", "patch-model", "context-model", "work", "out"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every f_agg run")
    args = ap.parse_args(argv)
    work = Path(args.work)
    res = ablation(Path(args.train), Path(args.val), Path(args.test), Path(args.patch_model), Path(args.context_model),
                   work / "runs", work / "pred", args.seed, args.bootstrap, args.overrides)
    res["command"] = "python benchmarks/lesion_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v["auc"] for k, v in res["ablation"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
