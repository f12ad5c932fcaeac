"""Reproduce the bundled demo models (src/breastscreen/zoo/demo-*) and the in-silico results.

    python scripts/train_demo_models.py [--work scratch/insilico] [--zoo src/breastscreen/zoo]

1. runs ``benchmarks/insilico.py`` (synthetic cohorts -> preprocess -> ``breastscreen train patch``
   -> ``breastscreen heatmaps`` -> ``breastscreen train breast`` image-only and with heatmaps ->
   held-out evaluation; every step a CLI command, fixed seeds), which writes
   ``benchmarks/results/insilico.json``;
2. copies the three selected checkpoints into the zoo as ``demo-patch``, ``demo-breast-image``
   and ``demo-breast-heatmaps`` (metadata paths made relative to the work folder, so the files
   do not depend on where they were trained), writes a model card per model and updates
   ``index.json`` (the format of :mod:`breastscreen.models.hub`).

CPU results are bit-identical for the same seeds, library versions and number of threads
(``torch.set_num_threads``; the demo was made with 2). These models are trained on synthetic
phantoms and are NOT for clinical use.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "demo-patch": ("patch", "patch classifier (tiny DenseNet) for benign/malignant heatmaps"),
    "demo-breast-image": ("image_only", "breast-level cancer model, image only (NYU view-wise, reduced width)"),
    "demo-breast-heatmaps": ("image_and_heatmaps",
                             "breast-level cancer model, image + heatmaps of demo-patch (NYU view-wise, reduced width)"),
}


def _relative(obj: Any, work: Path) -> Any:
    """Replace absolute paths under ``work`` (or the repository) by relative ones in nested metadata."""
    if isinstance(obj, dict):
        return {k: _relative(v, work) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, work) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        for base, label in ((work.resolve(), "<work>"), (ROOT, "<repo>")):
            try:
                return f"{label}/{Path(obj).resolve().relative_to(base)}"
            except ValueError:
                continue
    return obj


def _metrics_row(run: Path, epoch: int) -> dict[str, str]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if int(row["epoch"]) == epoch:
                return row
    return {}


def export(work: Path, zoo: Path, results: dict[str, Any]) -> None:
    """Copy the trained runs into ``zoo`` with cards and index entries."""
    from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint

    zoo.mkdir(parents=True, exist_ok=True)
    index_path = zoo / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"models": {}}
    commands = "\n".join(results.get("commands", []))
    for name, (run_name, summary) in MODELS.items():
        run = work / "runs" / run_name
        ck = load_checkpoint(run / "best.safetensors")
        meta = _relative(ck.metadata, work)
        meta["bundled_name"] = name
        meta["not_for_clinical_use"] = True
        meta["training_data"]["description"] = "synthetic phantoms (breastscreen synth mammo), NOT patient data"
        if run_name != "patch":
            meta["test_metrics_insilico"] = {k: results[run_name][k] for k in ("malignant", "benign")}
        out = zoo / f"{name}.safetensors"
        save_checkpoint(ck.model, out, meta)
        size_mb = out.stat().st_size / 1e6
        if size_mb >= 10:
            raise SystemExit(f"{out} is {size_mb:.1f} MB; demo models must stay under 10 MB")
        row = _metrics_row(run, int(meta.get("epoch", 0)))
        val = {k: v for k, v in row.items() if k.startswith("val_")}
        setup = results["setup"]
        lines = [
            f"# {name}",
            "",
            f"Demo {summary}, trained on synthetic phantoms at scale {setup['scale']} "
            f"({0.1 / setup['scale']:.1f} mm pixels). NOT for clinical use.",
            "",
            "## Data",
            f"Synthetic four-view exams from `breastscreen synth mammo` (seed {setup['seed']} + 1/2/3 for the "
            f"train/validation/test cohorts): {setup['n_train']} training, {setup['n_val']} validation and "
            f"{setup['n_test']} held-out test exams; preprocessed with `breastscreen preprocess --scale {setup['scale']}`.",
            "",
            "## Architecture",
            f"`{ck.name}` with config `{json.dumps(_relative(meta['training']['config']['model_args'], work))}` "
            f"(input channels: {', '.join(meta.get('channels', []))}).",
            "",
            "## Validation metrics (selected checkpoint, epoch " + str(meta.get("epoch")) + ")",
            "",
            *[f"- {k}: {float(v):.4f}" for k, v in val.items() if v not in ("", None)],
        ]
        if run_name != "patch":
            r = results[run_name]
            lines += ["", "## Held-out synthetic test cohort (benchmarks/results/insilico.json)", "",
                      f"- malignant AUC {r['malignant']['auc']:.3f} (95% CI {r['malignant']['ci'][0]:.3f}-"
                      f"{r['malignant']['ci'][1]:.3f})",
                      f"- benign AUC {r['benign']['auc']:.3f} (95% CI {r['benign']['ci'][0]:.3f}-{r['benign']['ci'][1]:.3f})"]
        if run_name == "image_and_heatmaps":
            lines += ["", "`breastscreen predict` makes the heatmaps itself with the bundled `demo-patch` model "
                      "(named in this checkpoint's metadata) unless `--heatmaps DIR` is given."]
        lines += ["", "## How it was made", "", "`python scripts/train_demo_models.py` runs these commands:", "",
                  "```", commands, "```", ""]
        (zoo / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")
        index["models"][name] = {"file": out.name, "card": f"{name}.md",
                                 "summary": f"DEMO {summary}; synthetic data, not for clinical use",
                                 "architecture": ck.name}
        print(f"{name}: {out} ({size_mb:.2f} MB)")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "scratch" / "insilico")
    p.add_argument("--zoo", type=Path, default=ROOT / "src" / "breastscreen" / "zoo")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "insilico.json")
    p.add_argument("--skip-training", action="store_true", help="only export runs already in --work")
    a = p.parse_args()
    if not a.skip_training:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "insilico.py"), "--work", str(a.work),
                        "--results", str(a.results)], check=True)
    export(a.work, a.zoo, json.loads(a.results.read_text()))


if __name__ == "__main__":
    main()
