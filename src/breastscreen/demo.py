"""``breastscreen demo``: the built-in end-to-end run on a fresh synthetic cohort.

Steps: synthesise a held-out screening cohort → build its manifest from the image folder →
preprocess at the bundled models' scale → contact sheet of the preprocessed views with lesion
masks outlined → patch heatmaps (``demo-patch``) → per-breast predictions
(``demo-breast-heatmaps``) with overlay pictures → evaluation against the synthetic ground truth
→ one ``index.html`` linking everything. Every step calls the same library function as its CLI
command, so the demo is also a smoke test of the pipeline.

The bundled demo models are trained on synthetic phantoms and are NOT for clinical use.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import typer

from breastscreen.errors import BreastscreenError

MARKER = ".breastscreen-demo"
PATCH_MODEL = "demo-patch"
BREAST_MODEL = "demo-breast-heatmaps"


def prepare_out_dir(out: Path) -> None:
    """Create ``out``; replace it only when an earlier demo made it (never delete user files)."""
    if out.exists():
        if not out.is_dir():
            raise BreastscreenError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise BreastscreenError(
                f"{out}: folder exists, is not empty and was not made by `breastscreen demo`; choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `breastscreen demo`; safe to delete\n")


def run_demo(
    out: Path,
    n_exams: int = 24,
    seed: int = 2026,
    synth_scale: float = 0.25,
    bootstrap: int = 200,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out`` and return a summary (paths, counts, main AUC)."""
    from breastscreen.data.build import build_manifest, write_problems_csv
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.evaluation.evaluate import EvalConfig, evaluate
    from breastscreen.evaluation.io import read_labels, read_predictions
    from breastscreen.evaluation.report import write_outputs
    from breastscreen.inference.heatmap_runner import run_heatmaps
    from breastscreen.inference.predict import PredictOptions, predict
    from breastscreen.models import load_checkpoint
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort
    from breastscreen.viz.contact import contact_sheet

    # Preprocess at the resolution the bundled models were trained at, so predict reuses the output.
    scale = float(load_checkpoint(BREAST_MODEL).metadata["scale"])
    prepare_out_dir(out)
    summary: dict[str, Any] = {"out": str(out), "seed": seed, "scale": scale, "steps": {}}
    t0 = time.perf_counter()

    def step(name: str, t: float) -> None:
        summary["steps"][name] = round(time.perf_counter() - t, 2)
        log(f"  {name:<12} {summary['steps'][name]:6.1f} s")

    t = time.perf_counter()
    cohort = out / "cohort"
    generate_mammo_cohort(cohort, n_exams=n_exams, seed=seed, scale=synth_scale, fmt="png")
    step("synthesise", t)

    t = time.perf_counter()
    result = build_manifest(cohort, ignore=[cohort / "manifest.jsonl"])
    # Files carry no labels: take them from the generator's ground truth, matched by exam id.
    truth = {e.exam_id: e for e in read_manifest(cohort / "manifest.jsonl")}
    for exam in result.exams:
        ref = truth[exam.exam_id]
        exam.labels, exam.birads, exam.density = ref.labels, ref.birads, ref.density
    manifest = write_manifest(result.exams, out / "manifest.jsonl")
    if result.problems:
        write_problems_csv(result.problems, out / "manifest.problems.csv")
    step("manifest", t)

    t = time.perf_counter()
    pre_dir = out / "preprocessed"
    pre_exams, issues = preprocess_manifest(read_manifest(manifest), pre_dir, scale)
    failed = sorted({row["exam_id"] for row in issues if row["status"] == "failed"})
    step("preprocess", t)

    t = time.perf_counter()
    # Lesion masks come from the synthetic ground truth; preprocessing moved them with the images.
    sheet = contact_sheet(pre_exams, out / "contact_sheet.png")
    step("contact sheet", t)

    t = time.perf_counter()
    hm = run_heatmaps(pre_dir / "manifest.jsonl", PATCH_MODEL, out / "heatmaps", device="cpu")
    step("heatmaps", t)

    t = time.perf_counter()
    run = predict(
        pre_dir / "manifest.jsonl",
        [BREAST_MODEL],
        out / "predictions",
        PredictOptions(device="cpu", heatmaps_dir=str(out / "heatmaps"), seed=seed),
    )
    step("predict", t)

    t = time.perf_counter()
    result = evaluate(
        read_predictions(out / "predictions" / "predictions.csv"),
        read_labels(manifest),
        None,
        EvalConfig(n_bootstrap=bootstrap, seed=seed, n_permutations=0),
    )
    files = write_outputs(result, out / "evaluation")
    step("evaluate", t)
    auc = result.metrics.get("breast", {}).get("malignant", {}).get("auroc", {})

    index = out / "index.html"
    index.write_text(_index_html(summary, auc, len(run.predictions), len(run.errors)), encoding="utf-8")
    summary.update(
        exams=len(pre_exams),
        failed=sorted(set(failed) | {e for e, _ in run.errors} | {e[0] for e in hm.errors}),
        manifest=str(manifest),
        labels=str(cohort / "manifest.jsonl"),
        preprocessed_manifest=str(pre_dir / "manifest.jsonl"),
        contact_sheet=str(sheet),
        predictions=str(out / "predictions" / "predictions.csv"),
        evaluation=str(files["report"]),
        malignant_auroc=auc.get("value"),
        index=str(index),
        seconds=round(time.perf_counter() - t0, 1),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _index_html(summary: dict[str, Any], auc: dict[str, Any], n_pred: int, n_err: int) -> str:
    """The demo's landing page linking the contact sheet, the prediction pages and the report."""
    value = f"{auc['value']:.3f}" if auc.get("value") is not None else "n/a"
    ci = f" (95% CI {auc['ci_low']:.3f}–{auc['ci_high']:.3f})" if auc.get("ci_low") is not None else ""
    steps = "".join(f"<li>{k}: {v} s</li>" for k, v in summary["steps"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>breastscreen demo</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}.warn{{background:#fee;padding:.5em}}</style>
</head><body><h1>breastscreen demo</h1>
<p class="warn"><b>Synthetic data and demo models trained on synthetic phantoms. Not for clinical use.</b></p>
<ul>
<li><a href="contact_sheet.png">Contact sheet</a>: preprocessed views with lesion masks outlined</li>
<li><a href="predictions/index.html">Predictions</a>: {n_pred} exams sorted by malignancy score,
heatmap overlays ({n_err} failed); <a href="predictions/predictions.csv">predictions.csv</a></li>
<li><a href="evaluation/report.html">Evaluation report</a>: breast-level malignant AUROC {value}{ci};
<a href="evaluation/metrics.json">metrics.json</a></li>
</ul><h2>Timings</h2><ul>{steps}</ul>
<p>Models: {PATCH_MODEL} (patch heatmaps) and {BREAST_MODEL} (breast level), seed {summary['seed']},
scale {summary['scale']}.</p></body></html>
"""


def demo_command(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Output folder (replaced if an earlier demo made it)."),
    n_exams: int = typer.Option(24, "--n-exams", help="Number of synthetic four-view exams."),
    seed: int = typer.Option(2026, "--seed", help="Seed of the synthetic cohort (different from the training seeds)."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for the evaluation CIs."),
) -> None:
    """Run the built-in demo on a fresh synthetic cohort and print where its output is.

    Synthetic images only; the output illustrates the pipeline and is not for clinical use.
    """
    typer.echo(f"breastscreen demo: {n_exams} synthetic exams, seed {seed} (synthetic data, not for clinical use)")
    summary = run_demo(out, n_exams=n_exams, seed=seed, bootstrap=bootstrap, log=typer.echo)
    auc = summary["malignant_auroc"]
    typer.echo(f"done in {summary['seconds']} s: {summary['exams']} exams; breast-level malignant AUROC "
               f"{auc:.3f}" if auc is not None else f"done in {summary['seconds']} s")
    typer.echo(f"open:        {Path(summary['index']).resolve()}")
    typer.echo(f"all output:  {Path(summary['out']).resolve()}")
    if summary["failed"]:
        typer.echo(f"failed exams: {', '.join(summary['failed'])}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    app.command("demo")(demo_command)
