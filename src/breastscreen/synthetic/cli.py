"""``breastscreen synth mammo|us``: write a deterministic synthetic cohort and its manifest."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from breastscreen.data.types import Exam

synth_app = typer.Typer(
    help="Generate synthetic phantom cohorts (mammography or ultrasound) with lesion masks and a "
    "manifest.jsonl. The same --seed always gives the same files. Not patient data.",
    no_args_is_help=True,
)


def _run(label: str, total: int, fn) -> list[Exam]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=total)
        return fn(lambda done, _total: bar.update(task, completed=done))


def _summary(exams: list[Exam], out: Path) -> None:
    n_images = sum(len(imgs) for e in exams for imgs in e.views.values())
    n_masks = sum(len(i.masks) for e in exams for _, i in e.iter_images())
    breasts = Counter()
    for e in exams:
        for lab in e.labels.values():
            breasts["malignant" if lab.malignant else ("benign" if lab.benign else "normal")] += 1
    typer.echo(
        f"wrote {len(exams)} exams, {n_images} images, {n_masks} lesion masks to {out}\n"
        f"breasts: {breasts['malignant']} malignant, {breasts['benign']} benign only, {breasts['normal']} normal\n"
        f"manifest: {out / 'manifest.jsonl'}"
    )


@synth_app.command("mammo")
def mammo_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (created; must be empty unless --overwrite)."),
    n_exams: int = typer.Option(6, "--n-exams", min=1, help="Number of four-view screening exams."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives identical files."),
    scale: float = typer.Option(
        0.25,
        "--scale",
        help="Resolution: pixels of 0.1/SCALE mm. 1.0 = full resolution (3000x2000 px, 0.1 mm); "
        "the default 0.25 gives 750x500 px at 0.4 mm.",
    ),
    fmt: str = typer.Option("png", "--format", help="png (16-bit, 12-bit values) or dicom (MG, For Presentation)."),
    prevalence: float = typer.Option(0.25, "--prevalence", help="Fraction of exams with a malignant finding."),
    benign_prevalence: float = typer.Option(
        0.3, "--benign-prevalence", help="Fraction of exams with a benign finding (independent of --prevalence)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow a non-empty --out (replaces a previous cohort)."),
) -> None:
    """Synthetic four-view screening mammograms (L-CC, R-CC, L-MLO, R-MLO) with lesion masks."""
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    exams = _run(
        "mammo",
        n_exams,
        lambda cb: generate_mammo_cohort(
            out, n_exams, seed, scale=scale, fmt=fmt, prevalence=prevalence,
            benign_prevalence=benign_prevalence, overwrite=overwrite, progress=cb,
        ),
    )
    _summary(exams, out)


@synth_app.command("us")
def us_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (created; must be empty unless --overwrite)."),
    n_exams: int = typer.Option(6, "--n-exams", "--n-patients", min=1, help="Number of patients (one exam each)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives identical files."),
    min_images: int = typer.Option(1, "--min-images", help="Fewest images per imaged breast (>= 1)."),
    max_images: int = typer.Option(6, "--max-images", help="Most images per imaged breast (<= 20)."),
    fmt: str = typer.Option("png", "--format", help="png (8-bit) or dicom (Modality US with laterality)."),
    prevalence: float = typer.Option(0.3, "--prevalence", help="Fraction of imaged breasts with a malignant lesion."),
    benign_prevalence: float = typer.Option(
        0.35, "--benign-prevalence", help="Fraction of imaged breasts with a benign lesion or cyst."
    ),
    both_breasts: float = typer.Option(0.5, "--both-breasts", help="Probability that both breasts are imaged."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow a non-empty --out (replaces a previous cohort)."),
) -> None:
    """Synthetic breast-ultrasound exams: a bag of B-mode images per breast, lesions in some images."""
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    exams = _run(
        "ultrasound",
        n_exams,
        lambda cb: generate_us_cohort(
            out, n_exams, seed, min_images=min_images, max_images=max_images, prevalence=prevalence,
            benign_prevalence=benign_prevalence, both_breasts=both_breasts, fmt=fmt, overwrite=overwrite,
            progress=cb,
        ),
    )
    _summary(exams, out)


def register(app: typer.Typer) -> None:
    """Add ``breastscreen synth mammo|us`` to ``app``."""
    app.add_typer(synth_app, name="synth")
