"""Batch prediction: manifest (or folder) + checkpoint(s) -> per-breast probabilities, pictures, report.

This is the outer layer around the in-memory :class:`~breastscreen.inference.predictor.Predictor`
(which owns preprocessing of model inputs, TTA, ensembles and the model families):

read or build the manifest -> load the Predictor -> preprocess mammograms at the model's scale
into ``OUT/preprocessed`` (reused by ``--resume``) -> make or read patch heatmaps when the model
takes them -> ``Predictor.predict_exam`` per exam -> write ``predictions.csv``,
``predictions.jsonl``, ``errors.csv``, ``run.json`` (:mod:`~breastscreen.inference.writers`),
pictures and ``index.html``.

Missing views and several images per view are handled by the model family's spec (see
:mod:`breastscreen.specs.mammo`): four-view models take missing views as absent (zero input,
``present`` False) and average over the images of a view; per-view models average a breast's
images; ultrasound models make one bag per breast, and images of unknown laterality (``U-US``)
form their own bag reported as breast ``U`` in ``predictions.jsonl`` and, when any exam has
one, in the extra CSV columns ``unknown_benign, unknown_malignant``.

A folder in the BUSI layout (``benign/``, ``malignant/``, ``normal/`` holding ``<class> (N).png``)
is read with the BUSI adapter (one ``U-US`` exam per image, masks attached, not predicted) and
the manifest used is saved as ``OUT/manifest.jsonl`` (labels included, for ``evaluate --labels``).

One failed exam (unreadable image, no breast found, missing heatmap, NaN or infinite model
output) goes to ``errors.csv`` and the rest of the batch completes. Each exam's result is kept in
``OUT/exam_results/<exam>.json`` (exam id made safe for a file name) as soon as it is made, with
a fingerprint of the models, options, exam and image files; ``--resume`` reuses those that still
match, so a killed run continues where it stopped and ends with the same files as an
uninterrupted one. OUT carries a marker of ``predict`` and is never another command's folder. Numbers are deterministic on CPU for the same inputs,
checkpoints, seed and TTA count: every random draw comes from a seed derived from
``(seed, exam_id, view, image index)``.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from breastscreen import __version__
from breastscreen.data.types import Exam, Modality
from breastscreen.errors import BreastscreenError
from breastscreen.inference.options import PredictOptions
from breastscreen.inference.predictor import ExamPrediction, Predictor
from breastscreen.inference.writers import UNKNOWN_COLUMNS, write_outputs
from breastscreen.outdir import check_output_owner, claim_output_dir
from breastscreen.safety import assign_names, is_within
from breastscreen.specs import PreparedImage

if TYPE_CHECKING:
    from breastscreen.inference.ray_runner import RayOptions

__all__ = ["ExamPrediction", "PredictOptions", "PredictRun", "UNKNOWN_COLUMNS", "load_inputs", "predict"]

# Manifest written into the output folder when predict built it from a dataset folder (BUSI).
INPUT_MANIFEST = "manifest.jsonl"
# Files whose presence marks an earlier prediction run in the output folder.
RUN_OUTPUTS: tuple[str, ...] = ("predictions.csv", "predictions.jsonl", "run.json")
# Errors that belong to one exam's data (never to the run as a whole).
EXAM_ERRORS: tuple[type[BaseException], ...] = (BreastscreenError, ValueError, OSError, KeyError)
COMMAND = "predict"
# Per-exam results kept as they are made (what --resume reuses).
RESULTS_DIR = "exam_results"
logger = logging.getLogger("breastscreen")


@dataclass
class PredictRun:
    """Outcome of :func:`predict`."""

    out_dir: Path
    predictions: list[ExamPrediction]
    errors: list[tuple[str, str]]
    skipped_files: list[tuple[str, str]]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every exam got a prediction."""
        return not self.errors


# --------------------------------------------------------------------------- inputs


def _attribute(problems: Sequence[tuple[str, str]], exam_ids: Iterable[str]) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Assign unusable files to exams by file-name prefix ``<exam_id>_``; return (per exam, unassigned)."""
    ids = sorted(exam_ids, key=len, reverse=True)
    per_exam: dict[str, list[str]] = {}
    rest = []
    for path, reason in problems:
        stem = Path(path).name
        owner = next((e for e in ids if stem.startswith(e + "_")), None)
        if owner is None:
            rest.append((path, reason))
        else:
            per_exam.setdefault(owner, []).append(f"{Path(path).name}: {reason}")
    return per_exam, rest


def is_busi_folder(folder: Path) -> bool:
    """True when ``folder`` has a BUSI layout (:func:`breastscreen.data.adapters.describe_busi_folder`:
    ``benign/``, ``malignant/``, ``normal/`` with images beside their masks or in ``images/`` +
    ``masks/`` subfolders); BUSI names have no ``<exam_id>_`` prefix, so the generic folder
    builder cannot place them."""
    from breastscreen.data.adapters import describe_busi_folder

    return describe_busi_folder(folder).kind is not None


def load_inputs(source: str | os.PathLike[str], allow_outside_paths: bool = False,
                ) -> tuple[list[Exam], list[tuple[str, str]], list[tuple[str, str]]]:
    """Exams from a manifest file or a folder; returns (exams, exam errors, unassigned file problems).

    For a folder the manifest is built on the fly; a file that cannot be used makes its exam
    (recognised by the ``<exam_id>_`` file-name prefix) fail, so an exam is never predicted from
    fewer views than it has because one of them is corrupt. Manifest lines that cannot be used
    (format, or paths outside the manifest's folder unless ``allow_outside_paths``) are exam
    errors named by their line.
    """
    from breastscreen.data.manifest import read_manifest

    p = Path(source)
    if p.is_dir() and is_busi_folder(p):
        from breastscreen.data.adapters import adapt_busi, describe_busi_folder

        logger.info("%s", describe_busi_folder(p).message)
        problems: list[tuple[str, str]] = []
        return adapt_busi(p, problems), [], problems
    if p.is_dir():
        from breastscreen.data.build import build_manifest

        result = build_manifest(p)
        per_exam, rest = _attribute(result.problems, (e.exam_id for e in result.exams))
        errors = [(eid, "; ".join(reasons)) for eid, reasons in sorted(per_exam.items())]
        exams = [e for e in result.exams if e.exam_id not in per_exam]
        return exams, errors, rest
    if p.is_file():
        refused: list[tuple[str, str]] = []
        exams = read_manifest(p, allow_outside_paths=allow_outside_paths, problems=refused)
        return exams, [(f"({where})", reason) for where, reason in refused], []
    raise BreastscreenError(f"{p}: no such manifest file or folder")


def _preprocess(exams: list[Exam], out_dir: Path, scale: float, workers: int,
                suppress_background: bool = True) -> tuple[list[Exam], list[tuple[str, str]]]:
    """Preprocess the mammography exams that need it at ``scale`` (already preprocessed ones must match it)."""
    from breastscreen.preprocess.pipeline import preprocess_manifest

    ready, todo, errors = [], [], []
    for exam in exams:
        records = [img.preprocessing for _, img in exam.iter_images()]
        if records and all(records):
            scales = {float(r.get("scale", 1.0)) for r in records}
            if scales != {scale}:
                errors.append((exam.exam_id, f"images are preprocessed at scale {sorted(scales)}, the model needs "
                                             f"{scale}; give the raw manifest instead"))
            else:
                ready.append(exam)
        else:
            todo.append(exam)
    done: dict[str, Exam] = {}
    if todo:
        out, issues = preprocess_manifest(todo, out_dir, scale, resume=(out_dir / "manifest.jsonl").exists(),
                                          workers=workers, suppress_background=suppress_background)
        done = {e.exam_id: e for e in out}
        reasons: dict[str, list[str]] = {}
        for row in issues:
            if row.get("status") == "failed":
                reasons.setdefault(row["exam_id"], []).append(
                    f"{Path(row['path']).name}: {row['reason']}" if row.get("path") else row["reason"])
        for exam in todo:
            if exam.exam_id not in done:
                errors.append((exam.exam_id, "; ".join(reasons.get(exam.exam_id, ["preprocessing failed"]))))
    by_id = {e.exam_id: e for e in ready} | done
    return [by_id[e.exam_id] for e in exams if e.exam_id in by_id], errors


def heatmap_files(folder: Path) -> Callable[[str, str, int, PreparedImage], np.ndarray]:
    """A heatmap source reading ``breastscreen heatmaps`` files from ``folder``."""
    from breastscreen.data.heatmaps import heatmap_filename, read_heatmap_file

    def source(exam_id: str, view: str, index: int, prepared: PreparedImage) -> np.ndarray:
        path = folder / heatmap_filename(exam_id, view, index)
        if not path.is_file():
            raise BreastscreenError(f"{path}: heatmap file missing for {exam_id} {view} image {index}")
        maps, _ = read_heatmap_file(path)
        if maps.shape[1:] != prepared.pixels.shape:
            raise BreastscreenError(
                f"{path}: heatmap shape {maps.shape[1:]} does not match the preprocessed image {prepared.pixels.shape}; "
                "were the heatmaps made at another scale?"
            )
        return maps

    return source


def _make_heatmaps(exams: list[Exam], patch_ref: str, out: Path, opts: PredictOptions, device: Any,
                   progress: Callable[[str, str], None] | None, ray: "RayOptions | None" = None,
                   ) -> tuple[list[Exam], list[tuple[str, str]], dict[str, Any]]:
    from breastscreen.inference.heatmap_runner import generate_heatmaps, patch_classes
    from breastscreen.inference.ray_runner import worker_ref
    from breastscreen.models import load_checkpoint

    ckpt = load_checkpoint(patch_ref)
    classes = patch_classes(ckpt, str(patch_ref))
    if progress:
        progress("heatmaps", "")
    # With Ray the workers load the patch model themselves; this copy only checks geometry and classes.
    model = ckpt.model.to("cpu" if ray is not None else device)
    from breastscreen.inference.engines import EngineOptions

    # background windows skipped as `breastscreen heatmaps` and the in-memory Predictor do, so the
    # three give the same maps (and breast models see what they were trained on)
    engine = EngineOptions(backend=opts.heatmap_backend, precision=opts.heatmap_precision, channels_last=True)
    hm = generate_heatmaps(
        exams, model, out / "heatmaps", checkpoint_sha256=ckpt.sha256, checkpoint_name=ckpt.name,
        model_metadata=ckpt.metadata, class_names=classes, batch_size=opts.patch_batch_size, device=device, resume=True,
        ray=ray, model_ref=worker_ref(str(patch_ref)), skip_background=True, engine=engine,
    )
    failed: dict[str, list[str]] = {}
    for exam_id, view, _path, reason in hm.errors:
        failed.setdefault(exam_id, []).append(f"heatmaps {view}: {reason}")
    errors = [(eid, "; ".join(r)) for eid, r in failed.items()]
    info = {"checkpoint": str(patch_ref), "sha256": ckpt.sha256, "dir": str(out / "heatmaps"),
            "backend": engine.backend, "precision": engine.precision}
    return [e for e in exams if e.exam_id not in failed], errors, info


def _finite_values(pred: ExamPrediction) -> None:
    """Refuse a prediction with NaN or infinite values (broken weights or inputs), naming them."""
    bad = [k for k, v in pred.values.items()
           if v is not None and not (isinstance(v, (int, float, np.floating)) and np.isfinite(v))]
    if bad:
        raise BreastscreenError(
            f"exam {pred.exam_id}: the model gives NaN or infinite values for {', '.join(bad)}; "
            "the checkpoint or the input images are broken (nothing written for this exam)"
        )


def _file_facts(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, int(st.st_size), int(st.st_mtime_ns)]


def _exam_fingerprint(exam: Exam, run_key: dict[str, Any], heatmaps_dir: Path | None) -> str:
    """Hash of everything one exam's prediction depends on: run settings, the exam and its files."""
    import hashlib
    import json

    from breastscreen.data.heatmaps import heatmap_filename
    from breastscreen.data.manifest import exam_to_dict

    files = []
    for view, images in exam.views.items():
        for k, img in enumerate(images):
            files.append(_file_facts(img.path))
            if heatmaps_dir is not None:
                files.append(_file_facts(str(heatmaps_dir / heatmap_filename(exam.exam_id, view, k))))
    payload = {"run": run_key, "exam": exam_to_dict(exam, Path("/")), "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def predict_one(predictor: Predictor, exam: Exam, heatmaps: Any = None,
                ) -> tuple[ExamPrediction | None, str | None, str | None]:
    """``(prediction, None, None)``, or ``(None, reason, traceback or None)`` when this exam fails.

    Problems of the exam's data give the reason alone; an unexpected exception also gives its
    traceback as text (a Ray worker's log is not the driver's error log). Shared by the
    single-process run and the Ray workers.
    """
    try:
        pred = predictor.predict_exam(exam, heatmaps=heatmaps)
        _finite_values(pred)
    except EXAM_ERRORS as exc:
        return None, str(exc) or type(exc).__name__, None
    except Exception as exc:  # noqa: BLE001 - one exam's unexpected failure never stops the batch
        return None, f"unexpected {type(exc).__name__}: {exc} (traceback in the error log)", traceback.format_exc()
    return pred, None, None


def _load_result(path: Path, fingerprint: str, out: Path) -> tuple[ExamPrediction, list[str]] | None:
    """A cached exam result made with the same fingerprint (and its pictures, if they still exist)."""
    import json

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    values, details, exam_id = record.get("values"), record.get("details"), record.get("exam_id")
    if not (isinstance(values, dict) and isinstance(details, dict) and isinstance(exam_id, str)):
        return None  # not a record this version wrote: predict the exam again
    pictures = [p for p in record.get("pictures") or [] if isinstance(p, str)]
    if not all((out / p).is_file() and is_within(out / p, out) for p in pictures):
        pictures = []
    return ExamPrediction(exam_id, dict(values), dict(details)), pictures


def _save_result(path: Path, fingerprint: str, pred: ExamPrediction, pictures: list[str]) -> None:
    import json

    from breastscreen.utils import atomic_path

    record = {"exam_id": pred.exam_id, "fingerprint": fingerprint, "values": pred.values, "details": pred.details,
              "pictures": pictures}
    with atomic_path(path) as tmp:
        # Floats round-trip exactly through JSON, so a resumed run writes the same bytes.
        tmp.write_text(json.dumps(record, default=float), encoding="utf-8")


def predict(
    source: str | os.PathLike[str],
    models: Sequence[str],
    out_dir: str | os.PathLike[str],
    options: PredictOptions | None = None,
    progress: Callable[[str, str], None] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    ray: "RayOptions | None" = None,
) -> PredictRun:
    """Predict every exam of ``source`` (manifest or folder) with ``models`` into ``out_dir``.

    ``progress(stage, exam_id)`` is called as work advances. User-input problems that concern
    the whole run (no model, unreadable checkpoint, unknown model family, an ``out_dir`` that
    already holds predictions while neither ``resume`` nor ``overwrite`` is set, or that belongs
    to another command) raise :class:`BreastscreenError`; problems of one exam (including NaN or
    infinite model outputs) go to ``errors.csv``. Each exam's result is also kept in
    ``out_dir/exam_results/<exam>.json`` as soon as it is made; ``resume`` reuses those whose
    models, options, exam and image files are unchanged, so a killed run continues where it
    stopped and ends with the same files as an uninterrupted one.

    With ``ray`` (:class:`~breastscreen.inference.ray_runner.RayOptions`) each exam (and each
    chunk of heatmaps made with ``patch_model``) is computed by a Ray worker; this process still
    preprocesses, decides what ``resume`` reuses and writes every file, so the files are the same.
    """
    opts = options or PredictOptions()
    if opts.heatmaps_dir and opts.patch_model:
        raise BreastscreenError("give either --heatmaps DIR or --patch-model CKPT, not both")
    if resume and overwrite:
        raise BreastscreenError("choose either --resume or --overwrite, not both")
    start = time.perf_counter()
    out = Path(out_dir)
    check_output_owner(out, COMMAND)
    earlier = [name for name in RUN_OUTPUTS if (out / name).is_file()]
    if earlier and not (overwrite or resume):
        raise BreastscreenError(
            f"{out} already holds predictions of an earlier run ({earlier[0]}); "
            "pass --resume to continue it, --overwrite to replace it, or choose another --out"
        )
    if ray is None:
        return _predict(source, models, out, opts, progress, overwrite, resume, None, start)
    from breastscreen.inference.ray_runner import ray_session

    with ray_session(ray):
        return _predict(source, models, out, opts, progress, overwrite, resume, ray, start)


def _predict(source: str | os.PathLike[str], models: Sequence[str], out: Path, opts: PredictOptions,
             progress: Callable[[str, str], None] | None, overwrite: bool, resume: bool,
             ray: "RayOptions | None", start: float) -> PredictRun:
    from breastscreen.inference.ray_runner import worker_device, worker_ref

    # With Ray this process's Predictor only describes the models (spec, hashes, columns) and
    # draws --max-pictures; the workers predict on --device as they resolve it.
    from breastscreen.inference.engines import check_engine_options

    check_engine_options(opts.heatmap_backend, opts.heatmap_precision)
    predictor = Predictor.load(list(models), "cpu" if ray is not None else opts.device, tta=opts.tta, seed=opts.seed,
                               batch_size=opts.batch_size, precision=opts.model_precision)
    run_device = worker_device(ray, opts.device) if ray is not None else str(predictor.device)
    spec, m0 = predictor.spec, predictor.members[0]

    exams, errors, skipped = load_inputs(source, allow_outside_paths=opts.allow_outside_paths)
    claim_output_dir(out, COMMAND, source=str(Path(source).resolve()))
    if Path(source).is_dir() and is_busi_folder(Path(source)):
        from breastscreen.data.manifest import write_manifest

        target = out / INPUT_MANIFEST
        if target.exists() and not (overwrite or resume):
            raise BreastscreenError(f"{target} already exists; pass --overwrite to replace it or choose another --out")
        write_manifest(exams, target)
    modality = predictor.modality
    errors += [(e.exam_id, f"modality {e.modality.value} cannot be read by a {spec.family} model ({m0.name})")
               for e in exams if e.modality is not modality]
    exams = [e for e in exams if e.modality is modality]
    names, clashes = assign_names([e.exam_id for e in exams])
    errors += sorted(clashes.items())
    exams = [e for e in exams if e.exam_id in names]
    if modality is Modality.MG:
        if progress:
            progress("preprocess", "")
        exams, pre_errors = _preprocess(exams, out / "preprocessed", float(spec.scale), opts.workers,
                                        bool(getattr(spec, "suppress_background", True)))
        errors += pre_errors

    heatmaps_dir = Path(opts.heatmaps_dir) if opts.heatmaps_dir else None
    patch_ref = opts.patch_model or (m0.metadata.get("patch_model") if predictor.needs_heatmaps and not heatmaps_dir
                                     else None)
    patch_info: dict[str, Any] | None = None
    if patch_ref and modality is Modality.MG:
        exams, hm_errors, patch_info = _make_heatmaps(exams, patch_ref, out, opts,
                                                      opts.device if ray is not None else predictor.device,
                                                      progress, ray)
        errors += hm_errors
        heatmaps_dir = Path(patch_info["dir"])
    if predictor.needs_heatmaps and heatmaps_dir is None:
        raise BreastscreenError(
            f"model {m0.name} takes image + heatmaps ({len(spec.channels)} channels): "
            "pass --heatmaps DIR or --patch-model CKPT"
        )
    source_maps = heatmap_files(heatmaps_dir) if heatmaps_dir is not None else None

    run_key = {"models": [m.sha256 for m in predictor.members], "spec": spec.to_dict(), "tta": opts.tta,
               "seed": opts.seed, "device": run_device, "package_version": __version__,
               "precision": opts.model_precision,
               "heatmaps": (patch_info or {}).get("sha256") or (str(heatmaps_dir) if heatmaps_dir else None)}
    results_dir = out / RESULTS_DIR
    draw_now = opts.pictures and opts.max_pictures is None
    predictions: list[ExamPrediction] = []
    pictures: dict[str, tuple[list[str], str]] = {}
    # Resume decisions are made here, for every exam, before any is predicted; only the rest is computed.
    plan = []
    for exam in exams:
        record = results_dir / f"{names[exam.exam_id]}.json"
        fingerprint = _exam_fingerprint(exam, run_key, heatmaps_dir)
        cached = _load_result(record, fingerprint, out) if resume else None
        plan.append((exam, record, fingerprint, cached if cached is not None and (cached[1] or not draw_now) else None))
    todo = [exam for exam, _, _, cached in plan if cached is None]
    if ray is None:
        computed: Iterator[tuple[str, tuple[ExamPrediction | None, str | None, str | None]]] = (
            (e.exam_id, predict_one(predictor, e, source_maps)) for e in todo)
    else:
        from breastscreen.inference.ray_runner import PredictJob, map_exams

        job = PredictJob(models=tuple(worker_ref(m) for m in models), sha256=tuple(m.sha256 for m in predictor.members),
                         device=run_device, tta=opts.tta, seed=opts.seed, batch_size=opts.batch_size,
                         precision=opts.model_precision,
                         heatmaps_dir=str(heatmaps_dir.resolve()) if heatmaps_dir else None,
                         keep_pictures=opts.pictures)
        computed = map_exams(ray, job, todo)
    for exam, record, fingerprint, cached in plan:
        if cached is not None:
            predictions.append(cached[0])
            if cached[1]:
                pictures[exam.exam_id] = (cached[1], "")
            continue
        _, (pred, reason, trace) = next(computed)
        if progress:
            progress("predict", exam.exam_id)
        if pred is None:
            if trace:
                logger.error("unexpected error predicting exam %s\n%s", exam.exam_id, trace)
            errors.append((exam.exam_id, reason or "failed"))
            record.unlink(missing_ok=True)
            continue
        if draw_now:
            from breastscreen.inference.report import draw_exam_pictures

            pictures[exam.exam_id] = draw_exam_pictures(pred, out)
        _save_result(record, fingerprint, pred, pictures.get(exam.exam_id, ([], ""))[0])
        predictions.append(pred)

    provenance = {
        "package_version": __version__,
        "models": [{"ref": m.ref.ref, "name": m.name, "sha256": m.sha256, "from": m.ref.source, **m.ref.info}
                   for m in predictor.members],
        "spec": spec.to_dict(), "family": spec.family, "scale": getattr(spec, "scale", None),
        "tta": opts.tta, "seed": opts.seed, "device": run_device,
        "precision": predictor.precision if ray is None else opts.model_precision,
        **({"precision_note": predictor.precision_note} if predictor.precision_note and ray is None else {}),
        "heatmaps": patch_info or ({"dir": str(heatmaps_dir)} if heatmaps_dir else None),
        "source": str(Path(source).resolve()),
    }
    errors.sort()
    write_outputs(out, predictor.columns, predictions, errors, skipped, provenance)
    if opts.pictures:
        if progress:
            progress("pictures", "")
        from breastscreen.inference.report import draw_exam_pictures, rank_by_malignancy, write_page

        if opts.max_pictures is not None:
            ranked = rank_by_malignancy(predictions)[: opts.max_pictures]
            by_id = {e.exam_id: e for e in exams}
            for pred in ranked:
                if not pred.panels and not pred.us_bags:
                    # A result reused by --resume keeps no images: predict again (same numbers) to draw it.
                    pred = predictor.predict_exam(by_id[pred.exam_id], heatmaps=source_maps)
                pictures[pred.exam_id] = draw_exam_pictures(pred, out)
        write_page(out, predictions, pictures, errors, predictor.columns, provenance)
    return PredictRun(out, predictions, errors, skipped, time.perf_counter() - start)
