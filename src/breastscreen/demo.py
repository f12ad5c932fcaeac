"""``breastscreen demo``: the built-in end-to-end run on a fresh synthetic cohort.

Steps: synthesise a screening cohort → build its manifest from the image folder → preprocess →
contact sheet of the preprocessed views with lesion masks outlined. Every step calls the same
library function as its CLI command, so the demo is also a smoke test of the pipeline.
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
    n_exams: int = 12,
    seed: int = 2026,
    scale: float = 0.25,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out`` and return a summary (paths and counts)."""
    from breastscreen.data.build import build_manifest, write_problems_csv
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort
    from breastscreen.viz.contact import contact_sheet

    prepare_out_dir(out)
    summary: dict[str, Any] = {"out": str(out), "seed": seed, "scale": scale, "steps": {}}
    t0 = time.perf_counter()

    def step(name: str, t: float) -> None:
        summary["steps"][name] = round(time.perf_counter() - t, 2)
        log(f"  {name:<12} {summary['steps'][name]:6.1f} s")

    t = time.perf_counter()
    cohort = out / "cohort"
    generate_mammo_cohort(cohort, n_exams=n_exams, seed=seed, scale=scale, fmt="png")
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

    summary.update(
        exams=len(pre_exams),
        failed=failed,
        manifest=str(manifest),
        labels=str(cohort / "manifest.jsonl"),
        preprocessed_manifest=str(pre_dir / "manifest.jsonl"),
        contact_sheet=str(sheet),
        seconds=round(time.perf_counter() - t0, 1),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def demo_command(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Output folder (replaced if an earlier demo made it)."),
    n_exams: int = typer.Option(12, "--n-exams", help="Number of synthetic four-view exams."),
    seed: int = typer.Option(2026, "--seed", help="Seed of the synthetic cohort."),
    scale: float = typer.Option(0.25, "--scale", help="Resolution: 0.25 = 0.4 mm pixels (CPU friendly)."),
) -> None:
    """Run the built-in demo on a fresh synthetic cohort and print where its output is.

    Synthetic images only; the output illustrates the pipeline and is not for clinical use.
    """
    typer.echo(f"breastscreen demo: {n_exams} synthetic exams, seed {seed}, scale {scale}")
    summary = run_demo(out, n_exams=n_exams, seed=seed, scale=scale, log=typer.echo)
    typer.echo(f"done in {summary['seconds']} s: {summary['exams']} exams preprocessed")
    typer.echo(f"contact sheet: {summary['contact_sheet']}")
    typer.echo(f"all output:    {Path(summary['out']).resolve()}")
    if summary["failed"]:
        typer.echo(f"failed exams: {', '.join(summary['failed'])}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    app.command("demo")(demo_command)
