"""One job, start to finish: the uploaded files -> per-breast probabilities, pictures, heatmap arrays.

The steps are those of ``breastscreen predict`` on the same folder, with the same library
functions, so a job's numbers equal the CLI's: exams found by
:func:`~breastscreen.inference.predict.load_inputs`; mammograms preprocessed at the model's
scale by :func:`~breastscreen.preprocess.pipeline.preprocess_manifest`; patch heatmaps made by
:func:`~breastscreen.inference.heatmap_runner.generate_heatmaps` when the model takes them (or a
``--patch-model`` is given); then the loaded, shared
:class:`~breastscreen.inference.predictor.Predictor` per exam. Progress is reported per stage
(``preprocess`` / ``heatmaps`` / ``predict`` / ``pictures``) with the fraction of the stage and
of the whole job; the callback may raise to stop the job (deleted, lease lost, shutting down).

Everything is written under the attempt folder; the worker publishes it only on success.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from breastscreen import __version__
from breastscreen.data.types import MG_VIEWS, Exam, Modality
from breastscreen.errors import BreastscreenError
from breastscreen.serve.config import NOT_FOR_CLINICAL_USE, ServeConfig
from breastscreen.serve.pictures import exam_figure, mammo_view_pictures, us_image_pictures
from breastscreen.serve.uploads import MAPPING_CSV, UPLOAD_DIR, client_message, find_exams

RESULT_DIR = "result"
RESULT_JSON = "result.json"
# Relative cost of each stage, for the overall fraction (measured at scale 0.125 on a CPU).
STAGE_WEIGHTS: dict[str, float] = {"preprocess": 0.2, "heatmaps": 0.4, "predict": 0.25, "pictures": 0.15}

ProgressFn = Callable[[str, float, float], None]


class JobCancelled(Exception):
    """Raised by a progress callback to stop a job (deleted, lease lost or the service stopping)."""


@dataclass
class LoadedModels:
    """The models a service holds for its whole life: the Predictor and the optional patch classifier."""

    predictor: Any
    refs: list[str]
    patch: Any | None = None
    patch_ref: str | None = None
    patch_classes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A short display name: the model references joined with '+'."""
        return " + ".join(self.refs)

    def describe(self) -> list[dict[str, Any]]:
        """Name, reference, hash and metadata of every loaded model (for /v1/models and results)."""
        out = []
        for m in self.predictor.members:
            out.append({"ref": m.ref.ref, "name": m.name, "sha256": m.sha256, "role": "breast model",
                        "family": m.spec.family, "metadata": m.metadata})
        if self.patch is not None:
            out.append({"ref": self.patch_ref, "name": self.patch.name, "sha256": self.patch.sha256,
                        "role": "patch classifier (heatmaps)", "family": "patch", "metadata": self.patch.metadata})
        return out


def load_models(config: ServeConfig) -> LoadedModels:
    """Load the service's models once, resolving the patch classifier as ``breastscreen predict`` does."""
    from breastscreen import Predictor
    from breastscreen.inference.heatmap_runner import patch_classes
    from breastscreen.models import load_checkpoint

    predictor = Predictor.load(list(config.models), config.device, tta=config.tta, seed=config.seed,
                               batch_size=config.batch_size)
    m0 = predictor.members[0]
    if predictor.modality is Modality.MG:
        patch_ref = config.patch_model or (m0.metadata.get("patch_model") if predictor.needs_heatmaps else None)
    else:
        patch_ref = None
    if predictor.needs_heatmaps and not patch_ref:
        raise BreastscreenError(f"model {m0.name} takes image + heatmaps: pass --patch-model (e.g. demo-patch)")
    loaded = LoadedModels(predictor, list(config.models))
    if patch_ref:
        ckpt = load_checkpoint(patch_ref)
        loaded.patch_classes = patch_classes(ckpt, str(patch_ref))
        ckpt.model.to(predictor.device).eval()
        loaded.patch, loaded.patch_ref = ckpt, str(patch_ref)
    # Import the drawing code now, while the service is not ready yet, so that the first job does
    # not pay matplotlib's import time (about a second on a small CPU).
    importlib.import_module("breastscreen.viz.overlay")
    return loaded


class _Progress:
    """Turns per-stage counts into (stage, stage fraction, overall fraction) calls."""

    def __init__(self, stages: list[str], report: ProgressFn) -> None:
        total = sum(STAGE_WEIGHTS[s] for s in stages)
        self.weights = {s: STAGE_WEIGHTS[s] / total for s in stages}
        self.stages = stages
        self.report = report

    def __call__(self, stage: str, done: float, total: float) -> None:
        frac = 1.0 if total <= 0 else min(1.0, done / total)
        before = sum(self.weights[s] for s in self.stages[: self.stages.index(stage)])
        self.report(stage, frac, before + self.weights[stage] * frac)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if not np.isfinite(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value


def _scrub(value: Any, roots: tuple[Path, ...]) -> Any:
    """``value`` with the server's folders removed from every string (paths name files as sent)."""
    if isinstance(value, str):
        for root in roots:
            value = client_message(value, root)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, roots) for v in value]
    return value


def _preprocess(exams: list[Exam], out: Path, scale: float, tick: Callable[[], None]) -> tuple[list[Exam], list[tuple[str, str]]]:
    """Mammograms preprocessed into ``out`` (as ``predict`` does); failed exams with their reasons."""
    from breastscreen.preprocess.pipeline import preprocess_manifest

    done, issues = preprocess_manifest(exams, out, scale, progress=lambda _o: tick())
    reasons: dict[str, list[str]] = {}
    for row in issues:
        if row.get("status") == "failed":
            reasons.setdefault(row["exam_id"], []).append(
                f"{Path(row['path']).name}: {row['reason']}" if row.get("path") else row["reason"])
    ok = {e.exam_id for e in done}
    errors = [(e.exam_id, "; ".join(reasons.get(e.exam_id, ["preprocessing failed"])))
              for e in exams if e.exam_id not in ok]
    return done, errors


def _heatmaps(models: LoadedModels, exams: list[Exam], out: Path, config: ServeConfig,
              tick: Callable[[], None]) -> tuple[list[Exam], list[tuple[str, str]]]:
    from breastscreen.inference.heatmap_runner import generate_heatmaps

    patch = models.patch
    run = generate_heatmaps(
        exams, patch.model, out, checkpoint_sha256=patch.sha256, checkpoint_name=patch.name,
        model_metadata=patch.metadata, class_names=models.patch_classes, batch_size=config.patch_batch_size,
        device=models.predictor.device, resume=False, progress=lambda _item, _status: tick(),
    )
    failed: dict[str, list[str]] = {}
    for exam_id, view, _path, reason in run.errors:
        failed.setdefault(exam_id, []).append(f"heatmaps {view}: {reason}")
    return [e for e in exams if e.exam_id not in failed], [(k, "; ".join(v)) for k, v in failed.items()]


def _predictions_row(pred: Any, columns: list[str]) -> dict[str, float | None]:
    """The exam's ``predictions.csv`` row (unknown-side columns added when it has a ``U-US`` bag)."""
    from breastscreen.data.predictions import table_columns, table_values

    values = table_values(pred)
    return _jsonable({c: values.get(c) for c in table_columns(columns, [pred])})


def _mammo_exam_files(pred: Any, result: Path, config: ServeConfig, heatmap_dir: Path | None,
                      upload: Path, stem: str) -> dict[str, Any]:
    """Viewer pictures and heatmap arrays of one mammography exam."""
    from breastscreen.data.heatmaps import heatmap_filename, write_heatmap_file

    views: dict[str, Any] = {}
    for view in MG_VIEWS:
        if view not in pred.panels:
            continue
        prepared, maps = pred.panels[view]
        entry = mammo_view_pictures(prepared, maps, view, result / "views", f"{stem}_{view}", config.viewer_max_side)
        entry["source"] = client_message(str((prepared.record or {}).get("source_path", prepared.source)), upload)
        source = heatmap_filename(pred.exam_id, view, 0)
        name = f"{stem}_{view}.npz"
        if heatmap_dir is not None and (heatmap_dir / source).is_file():
            (result / "heatmaps").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(heatmap_dir / source, result / "heatmaps" / name)
            entry["heatmaps"] = f"heatmaps/{name}"
            entry["heatmaps_source"] = "patch classifier"
        elif maps:
            # Saliency maps of whole-image models, in the heatmap file format (preprocessed grid).
            arr = np.stack([maps["benign"], maps["malignant"]]).astype(np.float32)
            write_heatmap_file(result / "heatmaps" / name, arr, {"kind": "saliency", "exam_view": view})
            entry["heatmaps"] = f"heatmaps/{name}"
            entry["heatmaps_source"] = "model saliency"
        views[view] = entry
    return {"views": views}


def _us_exam_files(pred: Any, result: Path, config: ServeConfig, upload: Path, stem: str) -> dict[str, Any]:
    """Viewer pictures (images ordered by attention) and saliency arrays of one ultrasound exam."""
    breasts: dict[str, Any] = {}
    for side, bag in pred.us_bags.items():
        order = list(np.argsort(-np.asarray(bag["attention"], dtype=np.float64), kind="stable"))
        images = []
        for rank, k in enumerate(order):
            entry = us_image_pictures(bag["pixels"][k], bag["saliency"][k], result / "views",
                                      f"{stem}_{side}_{k}", config.viewer_max_side)
            record = bag["records"][k] or {}
            entry.update({"index": int(k), "rank": rank + 1, "attention": float(bag["attention"][k]),
                          "source": client_message(str(record.get("source_path", bag["sources"][k])), upload)})
            images.append(entry)
        arrays = result / "heatmaps" / f"{stem}_{side}_saliency.npz"
        arrays.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(arrays, saliency=np.stack([np.asarray(s, np.float32) for s in bag["saliency"]]),
                            attention=np.asarray(bag["attention"], np.float32))
        b, m = (float(v) for v in bag["probs"])
        breasts[side] = {"benign": b, "malignant": m, "images": images, "saliency": f"heatmaps/{arrays.name}"}
    return {"breasts": breasts}


def run_job(models: LoadedModels, config: ServeConfig, job_dir: Path, attempt_dir: Path,
            report: ProgressFn) -> dict[str, Any]:
    """Run one job; return its result document (file links relative to ``attempt_dir / RESULT_DIR``).

    Raises :class:`BreastscreenError` when no exam could be predicted (the message names the
    files and problems) and whatever ``report`` raises to stop early.
    """
    from breastscreen.inference.predict import EXAM_ERRORS, heatmap_files

    start = time.perf_counter()
    predictor = models.predictor
    upload = job_dir / UPLOAD_DIR
    mapping = job_dir / MAPPING_CSV
    work = attempt_dir / "work"
    result = attempt_dir / RESULT_DIR
    result.mkdir(parents=True, exist_ok=True)
    exams = find_exams(upload, mapping if mapping.is_file() else None)
    errors: list[tuple[str, str]] = []
    for e in exams:
        if e.modality is not predictor.modality:
            errors.append((e.exam_id, f"modality {e.modality.value} cannot be read by this model"))
    exams = [e for e in exams if e.modality is predictor.modality]
    mammo = predictor.modality is Modality.MG
    stages = (["preprocess"] if mammo else []) + (["heatmaps"] if mammo and models.patch is not None else []) + [
        "predict", "pictures"]
    progress = _Progress(stages, report)

    heatmap_dir: Path | None = None
    if mammo:
        count = [0]

        def tick_pre() -> None:
            count[0] += 1
            progress("preprocess", count[0], len(exams))

        progress("preprocess", 0, len(exams))
        exams, pre_errors = _preprocess(exams, work / "preprocessed", float(predictor.spec.scale), tick_pre)
        errors += pre_errors
        if models.patch is not None:
            n_images = sum(1 for e in exams for _ in e.iter_images())
            hm_count = [0]

            def tick_hm() -> None:
                hm_count[0] += 1
                progress("heatmaps", hm_count[0], n_images)

            progress("heatmaps", 0, n_images)
            heatmap_dir = work / "heatmaps"
            exams, hm_errors = _heatmaps(models, exams, heatmap_dir, config, tick_hm)
            errors += hm_errors

    source_maps = heatmap_files(heatmap_dir) if heatmap_dir is not None else None
    predictions = []
    progress("predict", 0, len(exams))
    for i, exam in enumerate(exams):
        try:
            predictions.append(predictor.predict_exam(exam, heatmaps=source_maps))
        except EXAM_ERRORS as exc:
            errors.append((exam.exam_id, str(exc) or type(exc).__name__))
        progress("predict", i + 1, len(exams))

    exam_docs = []
    progress("pictures", 0, len(predictions))
    for i, pred in enumerate(predictions):
        doc: dict[str, Any] = {
            "exam_id": pred.exam_id,
            "modality": predictor.modality.value,
            "predictions": _predictions_row(pred, predictor.columns),
            "details": _scrub(_jsonable(pred.details), (upload, work)),
        }
        try:
            # Files are named by the exam's position, never by its id: ids come from file names or
            # accession numbers, and URLs end up in access logs.
            stem = f"exam{i}"
            doc.update(_us_exam_files(pred, result, config, upload, stem) if pred.us_bags else
                       _mammo_exam_files(pred, result, config, heatmap_dir, upload, stem))
            doc["figures"] = exam_figure(pred, result / "pictures", stem)
        except (BreastscreenError, ValueError, OSError) as exc:
            doc["picture_error"] = client_message(str(exc), upload)
        exam_docs.append(doc)
        progress("pictures", i + 1, len(predictions))

    clean = [{"exam_id": eid, "reason": client_message(client_message(why, work), upload)} for eid, why in
             sorted(errors)]
    if not exam_docs:
        raise BreastscreenError("; ".join(f"exam {e['exam_id']}: {e['reason']}" for e in clean) or "no exam")
    spec = predictor.spec
    return {
        "exams": exam_docs,
        "errors": clean,
        "columns": list(predictor.columns),
        "models": [{k: v for k, v in m.items() if k != "metadata"} for m in models.describe()],
        "provenance": {"package_version": __version__, "family": spec.family, "scale": getattr(spec, "scale", None),
                       "tta": predictor.tta, "seed": predictor.seed, "device": str(predictor.device)},
        "seconds": round(time.perf_counter() - start, 3),
        "notice": NOT_FOR_CLINICAL_USE,
    }
