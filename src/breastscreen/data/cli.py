"""CLI commands of the data stage: ``breastscreen manifest build|check|select|import-nyu|adapt``."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from breastscreen.data.bags import breast_bags
from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.data.types import ALL_VIEWS, MG_VIEWS, Exam, Modality
from breastscreen.errors import ManifestError
from breastscreen.labels import REF_SPACING_MM

manifest_app = typer.Typer(
    help="Exam manifests (JSON Lines): build one from a folder, check one, select a subset, import datasets.",
    no_args_is_help=True,
)

_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ManifestError(f"{path}: exists; refusing to overwrite (pass --overwrite to replace it)")


def _display(path: str, root: Path) -> str:
    try:
        return os.path.relpath(path, root) if Path(path).is_absolute() else path
    except ValueError:
        return path


@manifest_app.command("build")
def build_cmd(
    folder: Path = typer.Argument(..., help="Folder scanned recursively for DICOM, PNG, TIFF and JPEG files."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest to write (JSON Lines, one exam per line)."),
    mapping: Optional[Path] = typer.Option(
        None, help="CSV assigning files to exams: path, exam_id, view [, patient_id, study_date, age, frame, "
        "pixel_spacing]. Paths relative to FOLDER."
    ),
    labels: Optional[Path] = typer.Option(
        None, help="CSV of per-breast labels: exam_id, left_benign, left_malignant, right_benign, right_malignant "
        "(0, 1 or empty), optional density, birads."
    ),
    report: Optional[Path] = typer.Option(
        None, help="Problem report CSV (path, reason). Default: <out stem>.problems.csv next to the manifest."
    ),
    include_for_processing: bool = typer.Option(
        False, "--include-for-processing", help="Keep raw FOR PROCESSING mammograms (skipped and reported by default)."
    ),
    group_by: str = typer.Option(
        "auto", "--group-by", help="DICOM exams: 'study' (StudyInstanceUID), 'patient-date' (PatientID without "
        "view words + StudyDate) or 'auto' (patient-date when every image is its own study, as in CBIS-DDSM)."
    ),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Let --mapping name files outside FOLDER."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing manifest / report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not list each problem file on stderr."),
) -> None:
    """Group the images under FOLDER into exams and write a manifest.

    DICOM files are grouped by StudyInstanceUID (or by patient and date, see --group-by) with
    laterality and view from their headers (ViewCodeSequence, ViewPosition, ImageLaterality,
    Laterality, PatientOrientation, descriptions, ProtocolName), else from words such as LEFT_CC,
    R-MLO or RCC in PatientID or the file name; PNG files need names like 0_L-CC.png,
    0_L_CC.png or 0_LEFT_CC.png (or a --mapping CSV). Every file that cannot be used (including
    FIFOs, devices and links leaving FOLDER) is listed with its reason in the problem report and
    on stderr. Exits with status 1 only when no usable image was found.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from breastscreen.data.build import build_manifest, write_problems_csv

    report = report or out.with_name(f"{out.stem}.problems.csv")
    _refuse_existing(out, overwrite)
    _refuse_existing(report, overwrite)
    with Progress(
        TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), console=_err, transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task("scan", total=None)

        def _tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = build_manifest(
            folder, mapping_csv=mapping, labels_csv=labels, include_for_processing=include_for_processing,
            ignore=[out, report], progress=_tick, group_by=group_by, allow_outside_paths=allow_outside_paths,
        )
    root = folder.resolve()
    write_problems_csv([(_display(p, root), r) for p, r in result.problems], report)
    if not quiet:
        for path, reason in result.problems:
            _err.print(f"[yellow]skipped[/yellow] {_display(path, root)}: {reason}", highlight=False, markup=True)
    mods = Counter(e.modality.value for e in result.exams)
    incomplete = sum(1 for e in result.exams if e.missing_views())
    no_spacing = sum(1 for e in result.exams for _, img in e.iter_images() if img.pixel_spacing is None)
    summary = (
        f"{result.n_files} files: {len(result.exams)} exams "
        f"({', '.join(f'{n} {m}' for m, n in sorted(mods.items())) or 'none'}), {result.n_images} images; "
        f"{incomplete} mammography exams with missing views; {len(result.problems)} problems (report: {report})"
    )
    if no_spacing:
        summary += (f"; {no_spacing} images without a usable pixel spacing (preprocess assumes "
                    f"{REF_SPACING_MM} mm and lists them as warnings)")
    if not result.exams:
        _err.print(f"[red]no usable image found[/red] in {folder}. {summary}", highlight=False)
        raise typer.Exit(1)
    write_manifest(result.exams, out, overwrite=True, roots=[folder])
    _out.print(f"wrote {out}: {summary}", highlight=False)


def summarize(exams: list[Exam]) -> dict[str, object]:
    """Counts shown by ``manifest check``: exams per modality, images per view, label counts."""
    per_view = Counter()
    missing = Counter()
    labels = Counter()
    for e in exams:
        for v in ALL_VIEWS:
            if e.views.get(v):
                per_view[v] += 1
        for v in e.missing_views():
            missing[v] += 1
        if e.modality is Modality.US:
            breast_labels = [lab for _, _, lab in breast_bags(e)]
        else:
            breast_labels = [e.label(side) for side in ("L", "R")]
        for lab in breast_labels:
            for name in ("benign", "malignant"):
                value = getattr(lab, name)
                labels[(name, "unknown" if value is None else str(value))] += 1
    return {
        "exams": len(exams),
        "modalities": Counter(e.modality.value for e in exams),
        "views_present": per_view,
        "views_missing": missing,
        "labels": labels,
        "incomplete": [e.exam_id for e in exams if e.missing_views()],
    }


@manifest_app.command("check")
def check_cmd(
    manifest: Path = typer.Argument(..., help="Manifest (JSON Lines) to validate."),
    files: bool = typer.Option(True, "--files/--no-files", help="Also check that every image and mask file exists."),
    show: int = typer.Option(10, help="How many exams with missing views to list."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Accept files outside the manifest's folder (and its roots file)."
    ),
) -> None:
    """Validate a manifest against the schema and print a summary (exams, views, labels, lesions).

    Exits with status 2 and a message naming the line and field when the manifest is invalid
    (including a path that leaves the manifest's folder), and status 1 when referenced files
    are missing or some lesion is invalid (mask and ROI of one lesion with conflicting
    outcomes; with the file checks also an unreadable, empty or misfit mask, or a box or circle
    outside its image).
    """
    from breastscreen.data.lesions import format_lesion_summary, lesion_problems, lesion_summary

    exams = read_manifest(manifest, allow_outside_paths=allow_outside_paths)
    s = summarize(exams)
    mods = ", ".join(f"{n} {m}" for m, n in sorted(s["modalities"].items())) or "none"
    _out.print(f"[bold]{manifest}[/bold]: {s['exams']} exams ({mods})", highlight=False)

    views = Table(title="Views (exams with at least one image)")
    views.add_column("view")
    views.add_column("present", justify="right")
    views.add_column("missing", justify="right")
    shown_views = [v for v in ALL_VIEWS if s["views_present"][v] or (v in MG_VIEWS and s["modalities"].get("MG"))]
    for v in shown_views:
        views.add_row(v, str(s["views_present"][v]), str(s["views_missing"][v]) if v in MG_VIEWS else "-")
    _out.print(views)

    labels = Table(title="Labels per breast (mammography: both breasts; ultrasound: each bag of images)")
    labels.add_column("label")
    for col in ("1", "0", "unknown"):
        labels.add_column(col, justify="right")
    for name in ("benign", "malignant"):
        labels.add_row(name, *(str(s["labels"][(name, c)]) for c in ("1", "0", "unknown")))
    _out.print(labels)
    lesions = lesion_summary(exams)
    _out.print(format_lesion_summary(lesions), highlight=False)

    incomplete = s["incomplete"]
    if incomplete:
        listed = ", ".join(incomplete[:show]) + (f" ... (+{len(incomplete) - show} more)" if len(incomplete) > show else "")
        _out.print(f"{len(incomplete)} mammography exams with missing views: {listed}", highlight=False)
    if files:
        missing_files = [
            p
            for e in exams
            for _, img in e.iter_images()
            for p in [img.path, *(m.path for m in img.masks)]
            if not os.path.exists(p)
        ]
        if missing_files:
            _err.print(
                f"[red]{len(missing_files)} referenced files do not exist[/red], e.g. {missing_files[0]}",
                highlight=False,
            )
            raise typer.Exit(1)
        _out.print("all referenced image and mask files exist")
    # Reading every mask is the costly part, so it comes with the file checks; without them only
    # the lesions' identity (conflicting outcomes) is checked.
    bad_lesions = lesion_problems(exams) if files else lesions["errors"]
    if bad_lesions:
        _err.print(f"[red]{len(bad_lesions)} invalid lesions[/red]:", highlight=False)
        for msg in bad_lesions[:show]:
            _err.print(f"  {msg}", highlight=False, markup=False)
        if len(bad_lesions) > show:
            _err.print(f"  ... (+{len(bad_lesions) - show} more)", highlight=False)
        raise typer.Exit(1)


@manifest_app.command("select")
def select_cmd(
    manifest: Path = typer.Argument(..., help="Manifest (JSON Lines) to select from."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest to write (any folder: paths are rewritten)."),
    where: list[str] = typer.Option(
        [], "--where", "-w",
        help="FIELD=VALUE[,VALUE...] on the exam's line, dotted for nested fields (meta.fold=4, modality=US, "
             "labels.U.malignant=1); repeat: all must hold.",
    ),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Text file of exam ids to keep, one per line."),
    exclude: bool = typer.Option(False, "--exclude", help="Keep the exams that do NOT match instead."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Accept files outside the manifest's folder (and its roots file)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing manifest."),
) -> None:
    """Write the exams of MANIFEST that match --where / --ids to a new manifest.

    E.g. the held-out BUS-BRA fold of the bundled ultrasound model:
    `breastscreen manifest select busbra.jsonl --where meta.fold=4 --out fold4.jsonl`. Image paths
    are rewritten relative to the new file, and its `<stem>.roots.json` is written when the
    images lie outside its folder, so the subset reads like the original. Numbers match by
    value (meta.fold=4 matches "fold": 4), a list field when one item matches; commas separate
    alternatives. A field no exam has, or an empty selection, is an error and nothing is
    written (docs/data.md).
    """
    from breastscreen.data.manifest import roots_file
    from breastscreen.data.select import Condition, read_ids, select_exams

    if out.resolve() == manifest.resolve():
        raise ManifestError(f"{out}: is the input manifest; write the selection to another file")
    if out.is_dir():
        raise ManifestError(f"{out}: is a folder; --out names the manifest file to write")
    _refuse_existing(out, overwrite)
    _refuse_existing(roots_file(out), overwrite)  # write_manifest replaces or removes the sidecar
    conditions = [Condition.parse(w) for w in where]
    wanted = read_ids(ids) if ids is not None else None
    if not conditions and wanted is None:
        raise ManifestError("nothing to select by: give --where FIELD=VALUE and/or --ids FILE")
    exams = read_manifest(manifest, allow_outside_paths=allow_outside_paths)
    chosen = select_exams(exams, manifest.resolve().parent, conditions, wanted, exclude)
    if chosen.unknown_ids:
        first = ", ".join(chosen.unknown_ids[:5]) + (" ..." if len(chosen.unknown_ids) > 5 else "")
        _err.print(f"[yellow]{len(chosen.unknown_ids)} listed id(s) not in {manifest}[/yellow]: {first}",
                   highlight=False)
    # No extra roots: the sidecar lists only the folders the selected exams' files are in.
    write_manifest(chosen.exams, out, overwrite=True)
    n_images = sum(1 for e in chosen.exams for _ in e.iter_images())
    _out.print(f"wrote {out}: {len(chosen.exams)} of {len(exams)} exams, {n_images} images", highlight=False)
    if roots_file(out).is_file():
        _out.print(f"its files outside {out.resolve().parent} are allowed by {roots_file(out)}", highlight=False)


@manifest_app.command("import-nyu")
def import_nyu_cmd(
    pkl: Path = typer.Argument(..., help="Exam-list pickle of the NYU reference code (read with a restricted unpickler)."),
    images: Path = typer.Option(..., "--images", help="Folder holding the listed images (<name>.png)."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest to write."),
    suffix: str = typer.Option(".png", help="File suffix appended to the image names."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing manifest."),
) -> None:
    """Convert an NYU exam-list pickle into a manifest, without executing anything from the file.

    Only plain lists, dicts, strings and numbers (and numpy scalars, decoded to numbers) are
    accepted; any other object in the pickle is refused with an error.
    """
    from breastscreen.data.nyu import import_nyu_exam_list

    _refuse_existing(out, overwrite)
    exams = import_nyu_exam_list(pkl, images, suffix=suffix)
    write_manifest(exams, out, overwrite=True, roots=[images])
    _out.print(f"wrote {out}: {len(exams)} exams from {pkl}", highlight=False)


@manifest_app.command("adapt")
def adapt_cmd(
    dataset: str = typer.Argument(..., help="Dataset layout: mini-mias, bus-bra, busi, cbis-ddsm or vindr."),
    root: Path = typer.Argument(..., help="The dataset folder, as distributed."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest to write."),
    masks_dir: Optional[Path] = typer.Option(
        None, help="mini-MIAS only: write circular lesion masks (PNG) here and attach them."
    ),
    side_convention: str = typer.Option(
        "markers", help="mini-MIAS only: 'markers' (odd = left, from the film markers) or 'info' (Info.txt note)."
    ),
    report: Optional[Path] = typer.Option(None, help="Problem report CSV. Default: <out stem>.problems.csv."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing manifest / report."),
) -> None:
    """Turn a public dataset folder into a manifest (see docs/data.md for each dataset's rules)."""
    from breastscreen.data.adapters import ADAPTERS
    from breastscreen.data.build import write_problems_csv

    key = dataset.lower()
    if key not in ADAPTERS:
        raise ManifestError(f"unknown dataset {dataset!r}; expected one of {', '.join(ADAPTERS)}")
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    report = report or out.with_name(f"{out.stem}.problems.csv")
    _refuse_existing(out, overwrite)
    problems: list[tuple[str, str]] = []
    kwargs: dict[str, object] = {"problems": problems}
    if key == "mini-mias":
        kwargs.update(masks_dir=masks_dir, side_convention=side_convention)
    elif masks_dir is not None:
        raise ManifestError("--masks-dir applies to mini-mias only")
    if key == "busi":
        from breastscreen.data.adapters import describe_busi_folder

        layout = describe_busi_folder(root)
        if layout.kind is not None:  # a rejected folder is reported by the adapter's error
            _out.print(layout.message, highlight=False)
    exams = ADAPTERS[key](root, **kwargs)
    if problems:
        _refuse_existing(report, overwrite)
        write_problems_csv(problems, report)
        for path, reason in problems:
            _err.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False)
    if not exams:
        _err.print(f"[red]no exam found[/red] in {root} for {dataset}", highlight=False)
        raise typer.Exit(1)
    write_manifest(exams, out, overwrite=True, roots=[root])
    n_images = sum(1 for e in exams for _ in e.iter_images())
    extra = f"; {len(problems)} problems (report: {report})" if problems else ""
    _out.print(f"wrote {out}: {len(exams)} exams, {n_images} images from {dataset}{extra}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.add_typer(manifest_app, name="manifest")
