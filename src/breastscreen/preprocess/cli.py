"""CLI commands of this stage (registered on the main app by ``breastscreen.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer


def preprocess_command(
    manifest: Path = typer.Argument(..., help="Exam manifest (JSON Lines) from `breastscreen manifest build`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: images/, manifest.jsonl, errors.csv."),
    scale: float = typer.Option(
        1.0, "--scale", help="Resolution: 1.0 = full resolution (0.1 mm pixels); 0.25 = 0.4 mm pixels."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue a previous run in --out, reusing images already done."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous run in --out."),
    workers: int = typer.Option(1, "--workers", "-j", help="Parallel worker processes."),
    keep_background: bool = typer.Option(
        False, "--keep-background", help="Keep pixels outside the breast mask inside the crop box (labels, film edges)."
    ),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Accept image paths outside the manifest's folder (and its roots file)."
    ),
    us_preparation: str = typer.Option(
        "safe", "--us-preparation",
        help="Ultrasound: 'safe' = burned-in annotations removed, then a field-of-view crop that never cuts tissue "
             "(models trained by this version, e.g. us-busbra-mil); 'legacy' = the v1 crop, annotations kept.",
    ),
) -> None:
    """Crop, orient and resample mammograms (and crop ultrasound images) for the models.

    Crops each mammogram to the breast, flips it so the chest wall is on the left, resamples it
    to 0.1/SCALE mm pixels and places the NYU / MV-DCN model windows; crops ultrasound images to
    their field of view (dropping nearly empty images and exact duplicates).

    Writes 16-bit PNGs, breast masks, moved lesion masks, a new manifest recording the crop box,
    flip, resample factor and windows of every image (so results map back to the original
    pixels), and errors.csv. A model whose preparation differs from the stored one (e.g. a legacy
    ultrasound model given --us-preparation safe output) prepares the original image again. Exit status: 0 when every exam succeeded, 1 when some exams failed
    (the others are still written), 2 on unusable input or when no exam succeeded. With --resume,
    an image is preprocessed again when its source file's size or modification time changed.

    Manifest lines that break the format or name files outside the manifest's folder are listed
    in errors.csv and skipped (see --allow-outside-paths). Images without a usable pixel spacing
    are resampled as if their pixels were 0.1 mm and listed as warnings. Output files are named
    after exam ids made safe for file names, so nothing is written outside OUT; OUT must not be
    another command's output folder.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from breastscreen.data.manifest import read_manifest
    from breastscreen.errors import PreprocessError
    from breastscreen.preprocess.pipeline import ERRORS_NAME, MANIFEST_NAME, preprocess_manifest

    refused: list[tuple[str, str]] = []
    exams = read_manifest(manifest, allow_outside_paths=allow_outside_paths, problems=refused)
    if not exams:
        why = f"{len(refused)} line(s) refused, first {refused[0][0]}: {refused[0][1]}" if refused else "it is empty"
        raise PreprocessError(f"{manifest}: no usable exam ({why})")
    with Progress(
        TextColumn("preprocess"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("exams", total=len(exams))
        exams_out, issues = preprocess_manifest(
            exams,
            out,
            scale,
            resume=resume,
            overwrite=overwrite,
            workers=workers,
            suppress_background=not keep_background,
            progress=lambda _o: bar.advance(task),
            input_problems=refused,
            us_preparation=us_preparation,
        )
    failed = sorted({row["exam_id"] or row["path"] for row in issues if row["status"] == "failed"})
    excluded = sum(1 for row in issues if row["status"] == "excluded")
    warned = sum(1 for row in issues if row["status"] == "warning")
    n_images = sum(len(imgs) for e in exams_out for imgs in e.views.values())
    typer.echo(
        f"preprocessed {len(exams_out)}/{len(exams) + len(refused)} exams ({n_images} images) -> {out / MANIFEST_NAME}; "
        f"{len(failed)} failed, {excluded} images excluded, {warned} warnings (see {out / ERRORS_NAME})"
    )
    for row in issues:
        if row["status"] == "failed":
            who = row["exam_id"] or row["path"]
            typer.secho(f"  failed {who} {row['view']}: {row['reason']}", err=True, fg=typer.colors.YELLOW)
    if not exams_out:
        raise PreprocessError(f"no exam could be preprocessed (0 of {len(exams) + len(refused)}: "
                              f"{len(failed)} failed); see {out / ERRORS_NAME}")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command("preprocess")(preprocess_command)
