"""CLI commands of this stage: ``breastscreen heatmaps``, ``breastscreen predict`` and ``predict-lesions``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from breastscreen.errors import BreastscreenError

if TYPE_CHECKING:
    from breastscreen.inference.ray_runner import RayOptions

# Shared by `heatmaps` and `predict`: one definition keeps the two commands' help identical.
# (The backslash keeps rich's markup from eating "[ray]".)
_ALLOW_OUTSIDE = typer.Option(
    False, "--allow-outside-paths", help="Accept image paths outside the manifest's folder (and its roots file)."
)
_RAY = typer.Option(
    False, "--ray",
    help="Run the images/exams as Ray tasks: on a new local Ray instance, or on the cluster named by --ray-address. "
    "Same output files as without --ray. Needs pip install 'breastscreen\\[ray]'.",
)
_RAY_ADDRESS = typer.Option(
    None, "--ray-address", metavar="ADDRESS",
    help="Existing Ray cluster to run on (implies --ray): auto (RAY_ADDRESS, else the one `ray start` made "
    "on this machine), HOST:6379, or ray://HOST:10001.",
)
_RAY_CPUS = typer.Option(None, "--ray-cpus", help="CPUs of the local Ray instance started by --ray (default: all).")
_RAY_GPUS = typer.Option(0.0, "--ray-gpus", help="GPUs each Ray task reserves (default 0: CPU workers).")


def ray_options(ray: bool, address: Optional[str], cpus: Optional[int], gpus: float) -> "RayOptions | None":
    """The :class:`RayOptions` of ``--ray``/``--ray-address``/``--ray-cpus``/``--ray-gpus`` (None without Ray).

    Checks that Ray is installed now, so a missing Ray is one line before any work starts.
    """
    from breastscreen.inference.ray_runner import RayOptions, import_ray

    if not ray and not address:
        if cpus is not None or gpus:
            raise BreastscreenError("--ray-cpus and --ray-gpus need --ray (or --ray-address)")
        return None
    import_ray()
    return RayOptions(address=address or None, num_cpus=cpus, gpus_per_task=gpus)


def heatmaps_command(
    manifest: Path = typer.Argument(..., help="Exam manifest (raw or preprocessed, JSON Lines)."),
    model: str = typer.Option(..., "--model", "-m", help="Patch classifier: checkpoint file or bundled model name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for <exam>_<VIEW>_<k>.npz, heatmaps.jsonl, errors.csv."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Patches per model call (default: 16 on CPU, where it measured fastest; 256 on GPU)."),
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue a run in --out: keep heatmaps made with the same checkpoint (hash checked) from the same images.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute and replace heatmaps already in --out."),
    skip_background: bool = typer.Option(
        True, "--skip-background/--all-windows",
        help="Skip windows without breast tissue (default; values inside the breast are the same, background is 0) "
        "or evaluate every window.",
    ),
    backend: str = typer.Option("torch", "--backend", help="torch, onnxruntime or openvino (the last two: pip install "
                                "'breastscreen\\[fast]'; each checked against torch fp32 in the tests)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (exact), bf16 (about 1e-3 from fp32 with trained "
                                  "weights; only where the CPU has native bf16, else fp32 with a note) or int8 "
                                  "(--backend openvino|onnxruntime; post-training quantised, calibrated on a fixed "
                                  "synthetic phantom; EXPERIMENTAL: far from fp32 on a real mammogram in the "
                                  "benchmark, see docs/inference.md)."),
    mode: str = typer.Option("exact", "--mode", help="exact (every window on its own pixels) or fullconv (a fast "
                             "preview: the trunk once over the image, on --backend torch or openvino; see "
                             "docs/inference.md)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="fullconv: run the trunk in bands of this many rows "
                                       "(less memory)."),
    refine: float = typer.Option(0.0, "--refine", help="fullconv: then evaluate exactly this fraction of the windows "
                                 "(those with the highest preview probability; 1 = all, i.e. the exact heatmap)."),
    images_per_chunk: int = typer.Option(4, "--images-per-chunk", help="Images whose patches are batched together."),
    allow_outside_paths: bool = _ALLOW_OUTSIDE,
    ray: bool = _RAY,
    ray_address: Optional[str] = _RAY_ADDRESS,
    ray_cpus: Optional[int] = _RAY_CPUS,
    ray_gpus: float = _RAY_GPUS,
) -> None:
    """Make benign and malignant patch heatmaps for every mammogram (Wu et al. 2019).

    A 256x256 patch classifier (scaled with the preprocessing scale) slides over each
    preprocessed image with strides of about 70 px (the paper's stride-setting algorithm);
    each pixel gets the mean probability of the patches covering it. A raw manifest is first
    preprocessed at the model's scale into OUT/preprocessed (reused on later runs while the
    source files are unchanged). Files are written atomically, so an interrupted run can be
    continued with --resume. An OUT that already holds heatmaps is refused unless --resume or
    --overwrite is given, and so is an OUT made by another command. The images must be
    preprocessed at the patch model's scale. Exit status 1 when some images failed (listed in
    OUT/errors.csv), 2 on unusable input or when no heatmap could be made. With --ray each chunk
    of --images-per-chunk images is a Ray task (see docs/inference.md, "Scale-out on Ray").
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from breastscreen.inference.engines import EngineOptions, check_engine_options, tune_allocator
    from breastscreen.inference.heatmap_runner import run_heatmaps

    ray_opts = ray_options(ray, ray_address, ray_cpus, ray_gpus)
    check_engine_options(backend, precision, mode)
    tune_allocator()
    if not 0.0 <= refine <= 1.0 or (refine and mode != "fullconv"):
        raise BreastscreenError(f"--refine must be a fraction in [0, 1] and needs --mode fullconv (got {refine})")
    engine = EngineOptions(backend=backend, precision=precision, channels_last=True, mode=mode, tile=tile,
                           refine=refine)

    with Progress(TextColumn("heatmaps"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("images", total=None, rate="")

        def progress(done: int, total: int, rate: float) -> None:
            bar.update(task, completed=done, total=total, rate=f"{rate:.2f} images/s")

        run = run_heatmaps(manifest, model, out, device=device, batch_size=batch_size, resume=resume,
                           overwrite=overwrite, skip_background=skip_background, images_per_chunk=images_per_chunk,
                           progress=progress, allow_outside_paths=allow_outside_paths, ray=ray_opts, engine=engine)
    typer.echo(
        f"heatmaps: {len(run.computed)} computed, {len(run.reused)} reused, {len(run.errors)} failed "
        f"in {run.seconds:.1f} s -> {out}"
    )
    for exam_id, view, path, reason in run.errors:
        typer.secho(f"  failed {exam_id or path} {view}: {reason}", err=True, fg=typer.colors.YELLOW)
    if not run.computed and not run.reused:
        why = f"{len(run.errors)} failed, see {out / 'errors.csv'}" if run.errors else "the manifest has no mammogram"
        raise BreastscreenError(f"0 heatmaps made: {why}")
    if run.errors:
        raise typer.Exit(1)


def predict_command(
    source: Path = typer.Argument(..., help="Exam manifest (JSON Lines) or a folder of DICOM/PNG files."),
    model: List[str] = typer.Option(
        ..., "--model", "-m",
        help="Checkpoint file, bundled model name, or ensemble .json; repeat to average several models.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: predictions.csv/.jsonl, errors.csv, index.html."),
    heatmaps: Optional[Path] = typer.Option(None, "--heatmaps", help="Folder from `breastscreen heatmaps` (image+heatmaps models)."),
    patch_model: Optional[str] = typer.Option(None, "--patch-model", help="Patch classifier to make the heatmaps on the fly."),
    tta: int = typer.Option(1, "--tta", help="Test-time augmentations per view (1 = none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test-time augmentations."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Input rows per model call (default: 1 for four-view models on CPU, where it measured fastest; 8 otherwise)."),
    heatmap_backend: str = typer.Option("torch", "--heatmap-backend", help="With --patch-model: torch, onnxruntime or "
                                        "openvino for the heatmaps (as `breastscreen heatmaps --backend`)."),
    heatmap_precision: str = typer.Option("fp32", "--heatmap-precision", help="With --patch-model: fp32, bf16 or "
                                          "int8 for the heatmaps (as `breastscreen heatmaps --precision`)."),
    model_precision: str = typer.Option("fp32", "--model-precision", help="fp32 or bf16 for the breast-level "
                                        "model(s): bf16 only where the CPU has native bf16 (else fp32, noted in "
                                        "predictions.jsonl's provenance); see docs/inference.md."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Write overlay PNGs and index.html."),
    max_pictures: Optional[int] = typer.Option(None, "--max-pictures", help="Draw pictures only for the N highest-scoring exams."),
    workers: int = typer.Option(1, "--workers", "-j", help="Parallel preprocessing processes."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an earlier (e.g. killed) run in --out: keep each exam's result while its "
        "models, options and images are unchanged; predict the rest."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the predictions of an earlier run in --out."),
    allow_outside_paths: bool = _ALLOW_OUTSIDE,
    ray: bool = _RAY,
    ray_address: Optional[str] = _RAY_ADDRESS,
    ray_cpus: Optional[int] = _RAY_CPUS,
    ray_gpus: float = _RAY_GPUS,
) -> None:
    """Predict per-breast benign and malignant probabilities for every exam.

    Preprocesses at the model's scale, makes or reads heatmaps when the model needs them, runs
    every model with --tta augmentations and averages them. Writes OUT/predictions.csv
    (exam_id, left_benign, left_malignant, right_benign, right_malignant; BI-RADS models add
    birads_0..2 and entropy), OUT/predictions.jsonl (per-view/branch outputs and provenance),
    OUT/errors.csv (exams that failed, with the reason), OUT/pictures/ and OUT/index.html.
    An OUT that already holds predictions.csv is refused unless --resume or --overwrite is given
    (and an OUT made by another command always); its preprocessed/ and heatmaps/ subfolders and,
    with --resume, its per-exam results (OUT/exam_results/) are reused only where their inputs
    are unchanged. Exit status 1 when any exam failed (the others are still predicted), 2 on
    unusable input or when no exam could be predicted (the message says why). With --ray each
    exam is a Ray task (see docs/inference.md, "Scale-out on Ray").
    Research software: not for clinical use.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from breastscreen.inference.engines import tune_allocator
    from breastscreen.inference.predict import PredictOptions, predict

    ray_opts = ray_options(ray, ray_address, ray_cpus, ray_gpus)
    tune_allocator()  # process-wide, so here in the entry point: on-the-fly heatmaps and big models churn memory

    opts = PredictOptions(tta=tta, seed=seed, device=device, batch_size=batch_size,
                          heatmap_backend=heatmap_backend, heatmap_precision=heatmap_precision,
                          model_precision=model_precision,
                          heatmaps_dir=str(heatmaps) if heatmaps else None, patch_model=patch_model,
                          pictures=pictures, max_pictures=max_pictures, workers=workers,
                          allow_outside_paths=allow_outside_paths)
    # The bar goes to stderr: stdout carries only the result line, for scripts that read it.
    with Progress(TextColumn("{task.fields[stage]}"), BarColumn(), TextColumn("{task.completed} exams"),
                  TimeElapsedColumn(), transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("predict", total=None, stage="loading")

        def progress(stage: str, exam_id: str) -> None:
            bar.update(task, stage=stage, advance=1 if stage == "predict" else 0)

        run = predict(source, model, out, opts, progress, overwrite=overwrite, resume=resume, ray=ray_opts)
    typer.echo(
        f"predicted {len(run.predictions)} exam(s), {len(run.errors)} failed in {run.seconds:.1f} s -> "
        f"{out / 'predictions.csv'}" + (f"; report {out / 'index.html'}" if pictures else "")
    )
    for exam_id, reason in run.errors:
        typer.secho(f"  failed {exam_id}: {reason}", err=True, fg=typer.colors.YELLOW)
    if run.skipped_files:
        typer.secho(f"  {len(run.skipped_files)} file(s) not used (see {out / 'skipped_files.csv'})", err=True)
    if not run.predictions:
        parts = []
        if run.errors:
            parts.append(f"{len(run.errors)} exam(s) failed, see {out / 'errors.csv'}")
        if run.skipped_files:
            parts.append(f"{len(run.skipped_files)} file(s) skipped, see {out / 'skipped_files.csv'}")
        raise BreastscreenError(f"0 exams predicted: {'; '.join(parts) or f'no exam found in {source}'}")
    if run.errors:
        raise typer.Exit(1)


def predict_lesions_command(
    manifest: Path = typer.Argument(..., help="PREPROCESSED manifest whose images carry lesion records (masks, boxes "
                                    "or circles; see docs/data.md)."),
    patch_model: str = typer.Option(..., "--patch-model", help="Local module f_loc: a patch classifier with an "
                                    "embedding (train patch model=densenet161-patch-embed)."),
    context_model: Optional[str] = typer.Option(None, "--context-model", help="Global context network (train context); "
                                                "needed when the lesion model uses saliency maps."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Lesion model f_agg (train lesion). Without it the "
                                        "prediction is local only (f_loc alone), for comparison."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for lesions.csv, errors.csv, run.json, lesions/."),
    windows: Optional[int] = typer.Option(None, "--windows", help="Windows per lesion (default: the model's, 100)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the window draw (default: the model's)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="One PNG per lesion in OUT/lesions/."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run in --out, reusing its cached features."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace lesions.csv of an earlier run in --out."),
    allow_outside_paths: bool = _ALLOW_OUTSIDE,
) -> None:
    """Classify every outlined lesion as malignant or benign (Wu et al. 2020).

    For each lesion, windows of 128-384 px (scaled) overlapping its region go through f_loc; with
    --model their embeddings, the window's location and the image's global saliency maps go
    through f_agg. Per-window malignant/benign scores are normalised to sum to one and averaged.
    Writes OUT/lesions.csv (input of `breastscreen evaluate --level lesion`), OUT/errors.csv (lesions
    that could not be scored, e.g. a region outside the image or an empty mask; the others go on),
    OUT/run.json and one picture per lesion. Exit status 1 when any lesion failed.
    Research software: not for clinical use.
    """
    from breastscreen.inference.lesion_runner import predict_lesions

    run = predict_lesions(manifest, out, patch_model, context_model, model, device=device, windows=windows, seed=seed,
                          pictures=pictures, overwrite=overwrite, resume=resume,
                          allow_outside_paths=allow_outside_paths)
    typer.echo(f"scored {len(run.rows)} lesion(s), {len(run.errors)} failed -> {out / 'lesions.csv'}")
    for exam_id, view, k, lesion_id, reason in run.errors[:20]:
        typer.secho(f"  failed {exam_id} {view} {k} {lesion_id}: {reason}", err=True, fg=typer.colors.YELLOW)
    if not run.rows:
        raise BreastscreenError(f"0 lesions scored: no usable lesion record in {manifest}"
                                + (f" ({len(run.errors)} failed, see {out / 'errors.csv'})" if run.errors else ""))
    if run.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command("heatmaps")(heatmaps_command)
    app.command("predict")(predict_command)
    app.command("predict-lesions")(predict_lesions_command)
