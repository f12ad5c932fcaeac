"""Manifest-level preprocessing: load every image, preprocess it, save the outputs and a new manifest.

Output folder layout (``out_dir``)::

    manifest.jsonl                      exams that succeeded, pointing at the files below
    errors.csv                          exam_id, view, path, status (failed|excluded|warning), reason
    images/<exam>_<VIEW>[_k].png             preprocessed image (16-bit PNG; 8-bit for 8-bit US)
    images/<exam>_<VIEW>[_k]_breastmask.png  breast (MG) or field-of-view (US) mask, 0/255
    images/<exam>_<VIEW>[_k]_mask_<label>_<i>.png  lesion masks moved into the same geometry (label "unknown" when unknown)
    .breastscreen-output.json            marker: this folder belongs to ``preprocess``

``<exam>`` is the exam id made safe for a file name (:func:`breastscreen.safety.safe_name`:
``../../x`` becomes ``~2E~2E~2F~2E~2E~2Fx``); two ids whose names would collide (differing only in
letter case) fail the second exam with an error naming both.

Intensities are stored unchanged (rounded) when the loaded pixels lie in [0, 65535] — which
is the case for 8-, 12- and 16-bit PNG and most DICOM — and ``preprocessing["intensity"]``
is ``{"mode": "original"}``. Otherwise they are mapped linearly onto 0..65535 and the record
holds ``{"mode": "linear", "offset": a, "scale": b}`` with ``original = stored * b + a``.

One bad image makes its whole exam an error (listed in errors.csv, left out of the manifest);
the batch always goes on. A mammogram without a usable pixel spacing is resampled as if its
pixels were :data:`~breastscreen.preprocess.mammo.DEFAULT_SPACING_MM` mm; its record holds
``spacing_assumed_mm`` and errors.csv a ``warning`` row.
"""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image

from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.data.types import ROI, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import BreastscreenError, PreprocessError
from breastscreen.outdir import check_output_owner, claim_output_dir
from breastscreen.preprocess import mammo, ultrasound
from breastscreen.preprocess.intensity import quantise
from breastscreen.safety import assign_names, safe_name
from breastscreen.utils import atomic_path

logger = logging.getLogger("breastscreen")
MANIFEST_NAME = "manifest.jsonl"
ERRORS_NAME = "errors.csv"
IMAGES_DIR = "images"
ERROR_COLUMNS = ("exam_id", "view", "path", "status", "reason")


@dataclass
class ExamOutcome:
    """Result of preprocessing one exam: the new exam (``None`` if it failed) and report rows."""

    exam_id: str
    exam: Exam | None
    issues: list[dict[str, str]] = field(default_factory=list)
    hashes: list[tuple[str, int, str]] = field(default_factory=list)  # (view, index, pixel hash) of US images


def save_png(arr: np.ndarray, path: str | os.PathLike[str], bits: int = 16) -> dict[str, Any]:
    """Save an intensity image as a 8- or 16-bit PNG atomically; return the intensity record."""
    stored, info = quantise(arr, bits)
    with atomic_path(path) as tmp:
        Image.fromarray(stored).save(tmp, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
    return info


def save_mask(mask: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Save a boolean mask as an 8-bit PNG (0 / 255) atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask, dtype=bool) * 255).astype(np.uint8)).save(tmp, format="PNG")
        os.chmod(tmp, 0o644)


def load_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """Load a lesion mask as boolean (non-zero = lesion) and check it matches the image shape."""
    from breastscreen.data.readers import load_image

    m = load_image(path).pixels > 0
    if m.shape != tuple(shape):
        raise PreprocessError(f"{path}: lesion mask shape {m.shape} does not match its image shape {tuple(shape)}")
    return m


def load_mask_in_original(path: str, image: ImageRef, shape: tuple[int, int]) -> np.ndarray:
    """A lesion mask of ``image`` as boolean in the geometry of the original image (``shape``).

    Masks listed by a manifest that ``breastscreen preprocess`` wrote are already cut to the
    field-of-view crop recorded in ``image.preprocessing`` (``crop_box``, no resampling, as for
    ultrasound); they are put back at that box. Any other mask must have the original's shape.
    """
    from breastscreen.data.readers import load_image

    m = load_image(path).pixels > 0
    shape = (int(shape[0]), int(shape[1]))
    if m.shape == shape:
        return m
    pre = image.preprocessing or {}
    box = pre.get("crop_box")
    if box is not None and float(pre.get("resample", 1.0)) == 1.0 and \
            [int(v) for v in pre.get("original_shape", ())] == list(shape):
        x0, y0, x1, y1 = (int(v) for v in box)
        if m.shape == (y1 - y0, x1 - x0):
            full = np.zeros(shape, bool)
            full[y0:y1, x0:x1] = m
            return full
    raise PreprocessError(f"{path}: lesion mask shape {m.shape} matches neither its image's original shape "
                          f"{shape} nor the preprocessing crop of {image.path}")


def _stem(name: str, view: str, k: int) -> str:
    """File stem of image ``k`` of ``view``; ``name`` is the exam's safe file name (never the raw id)."""
    return f"{name}_{safe_name(view)}" + (f"_{k}" if k else "")


def _outputs_exist(image: ImageRef) -> bool:
    rec = image.preprocessing or {}
    paths = [image.path, rec.get("breast_mask_path")] + [m.path for m in image.masks]
    return all(p and os.path.isfile(p) for p in paths)


def _source_key(image: ImageRef) -> tuple[str, int | None]:
    return (os.path.abspath(image.path), image.frame)


def source_stat(path: str | os.PathLike[str]) -> dict[str, int]:
    """``{"source_size", "source_mtime_ns"}`` of a source image file (``{}`` when it cannot be read).

    Recorded in every preprocessing record so that a later ``resume`` reuses an output only
    while its source file is unchanged (a replaced image at the same path is preprocessed again).
    """
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def _reusable(prior: ImageRef, image: ImageRef, scale: float, us_prep: str | None = None) -> bool:
    """Is the earlier output ``prior`` still valid for source ``image`` at ``scale`` (and ultrasound preparation)?"""
    rec = prior.preprocessing or {}
    if rec.get("scale", scale) != scale or not _outputs_exist(prior):
        return False
    if us_prep is not None:
        if rec.get("us_preparation", "legacy") != us_prep:
            return False
        # the same name made with other annotation-removal defaults (an older version) is redone
        params = ultrasound.us_preparation(us_prep)[1]
        if (None if params is None else params.model_dump(mode="json")) != rec.get("annotation_params"):
            return False
    # Records written before the source size/mtime were stored cannot be checked: redo them.
    now = source_stat(image.path)
    return bool(now) and all(rec.get(k) == v for k, v in now.items())


def roi_to_preprocessed(roi: ROI, record: dict[str, Any]) -> ROI | None:
    """An ROI moved into the preprocessed geometry of ``record``; ``None`` when it falls outside the crop.

    A box goes through :func:`~breastscreen.preprocess.mammo.box_to_preprocessed`; a circle's
    centre and radius through :func:`~breastscreen.preprocess.mammo.circle_to_preprocessed`, its
    box then being the moved circle's bounding box clipped to the output image.
    """
    box = mammo.box_to_preprocessed(roi.box, record)
    if box is None:
        return None
    if roi.circle is None:
        return ROI(box, roi.label, roi.kind, roi.lesion_id)
    cx, cy, r = mammo.circle_to_preprocessed(roi.circle, record)
    oh, ow = (int(v) for v in record["output_shape"])
    try:
        return ROI.from_circle(cx, cy, r, roi.label, roi.kind, roi.lesion_id, shape=(oh, ow))
    except ValueError:  # the disc's box left the output image after rounding: dropped like a box outside
        return None


def _preprocess_mg(image: ImageRef, view: str, stem: str, img_dir: Path, scale: float, suppress: bool) -> ImageRef:
    from breastscreen.data.readers import load_image

    # Taken before reading, so a file replaced while it is read never looks unchanged later.
    stat = source_stat(image.path)
    data = load_image(image.path, frame=image.frame)
    spacing = image.pixel_spacing or data.pixel_spacing
    res = mammo.preprocess_view(data.pixels, spacing, view, scale, suppress_background=suppress, name=image.path)
    rec = dict(res.record)
    if spacing is None:
        rec["spacing_assumed_mm"] = mammo.DEFAULT_SPACING_MM
        if data.meta.get("spacing_rejected"):
            rec["spacing_rejected"] = data.meta["spacing_rejected"]
    out_path = img_dir / f"{stem}.png"
    mask_path = img_dir / f"{stem}_breastmask.png"
    rec["intensity"] = save_png(res.image, out_path, bits=16)
    save_mask(res.mask, mask_path)
    masks = []
    for i, lm in enumerate(image.masks):
        moved = mammo.to_preprocessed(load_mask(lm.path, data.pixels.shape), rec, kind="mask")
        mp = img_dir / f"{stem}_mask_{lm.label or 'unknown'}_{i}.png"
        save_mask(moved, mp)
        masks.append(LesionMask(str(mp.resolve()), lm.label, lm.kind, lm.lesion_id))
    rois = [r for r in (roi_to_preprocessed(roi, rec) for roi in image.rois) if r is not None]
    rec["rois_dropped"] = len(image.rois) - len(rois)
    rec["source_path"] = str(Path(image.path).resolve())
    rec.update(stat)
    if image.frame is not None:
        rec["source_frame"] = image.frame
    rec["breast_mask_path"] = str(mask_path.resolve())
    sp = rec["spacing_mm"]
    return ImageRef(str(out_path.resolve()), None, (sp, sp), masks, rois, rec, dict(image.meta))


def _preprocess_us(image: ImageRef, stem: str, img_dir: Path,
                   preparation: str = "safe") -> tuple[ImageRef | None, str | None, str]:
    """Returns (new image or None when excluded, exclusion reason, pixel hash)."""
    from breastscreen.data.readers import load_image

    stat = source_stat(image.path)
    data = load_image(image.path, frame=image.frame)
    digest = ultrasound.pixel_hash(data.pixels)
    crop_mode, annotations = ultrasound.us_preparation(preparation)
    try:
        # The model's preparation step (breastscreen.specs.us): annotation removal and the
        # 8-bit field-of-view crop, as the named preparation does them.
        crop, rec = ultrasound.fov_crop_uint8(data.pixels, name=image.path, crop=crop_mode, annotations=annotations,
                                              rgb=data.colour)
    except ultrasound.ExcludedImage as exc:
        return None, str(exc), digest
    out_path = img_dir / f"{stem}.png"
    mask_path = img_dir / f"{stem}_breastmask.png"
    rec["intensity"] = save_png(crop, out_path, bits=8)
    x0, y0, x1, y1 = rec["crop_box"]
    save_mask(crop > 0, mask_path)
    masks = []
    for i, lm in enumerate(image.masks):
        moved = load_mask(lm.path, data.pixels.shape)[y0:y1, x0:x1]
        mp = img_dir / f"{stem}_mask_{lm.label or 'unknown'}_{i}.png"
        save_mask(moved, mp)
        masks.append(LesionMask(str(mp.resolve()), lm.label, lm.kind, lm.lesion_id))
    geometry = {**rec, "output_shape": [y1 - y0, x1 - x0]}
    rois = [r for r in (roi_to_preprocessed(roi, geometry) for roi in image.rois) if r is not None]
    rec.update(
        source_path=str(Path(image.path).resolve()),
        breast_mask_path=str(mask_path.resolve()),
        resample=1.0,
        rois_dropped=len(image.rois) - len(rois),
        us_preparation=preparation,
        **stat,
    )
    if image.frame is not None:
        rec["source_frame"] = image.frame
    return ImageRef(str(out_path.resolve()), None, image.pixel_spacing, masks, rois, rec, dict(image.meta)), None, digest


def _spacing_warning(exam_id: str, view: str, image: ImageRef, new: ImageRef) -> dict[str, str] | None:
    rec = new.preprocessing or {}
    if "spacing_assumed_mm" not in rec:
        return None
    why = f" ({rec['spacing_rejected']} rejected as implausible)" if rec.get("spacing_rejected") else ""
    return dict(exam_id=exam_id, view=view, path=image.path, status="warning",
                reason=f"pixel spacing unknown{why}; assumed {rec['spacing_assumed_mm']} mm (documented default)")


def preprocess_exam(
    exam: Exam,
    out_dir: str | os.PathLike[str],
    scale: float = 1.0,
    prior: dict[tuple[str, int | None], ImageRef] | None = None,
    suppress_background: bool = True,
    name: str | None = None,
    us_preparation: str = "safe",
) -> ExamOutcome:
    """Preprocess every image of one exam; any failing image makes the exam fail (never raises for data).

    Output files are named after ``name``, the exam's safe file name (default
    :func:`~breastscreen.safety.safe_name` of its id), so no exam id can place a file outside
    ``out_dir``.
    """
    img_dir = Path(out_dir) / IMAGES_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    outcome = ExamOutcome(exam.exam_id, None)
    views: dict[str, list[ImageRef]] = {}
    failed = False
    fname = name or safe_name(exam.exam_id)
    for view, images in exam.views.items():
        views[view] = []
        for k, image in enumerate(images):
            stem = _stem(fname, view, k)
            reused = (prior or {}).get(_source_key(image))
            us_prep = us_preparation if exam.modality is Modality.US else None
            if reused is not None and _reusable(reused, image, scale, us_prep):
                views[view].append(reused)
                warning = _spacing_warning(exam.exam_id, view, image, reused)
                if warning:
                    outcome.issues.append(warning)
                continue
            try:
                if exam.modality is Modality.US:
                    new, excluded, digest = _preprocess_us(image, stem, img_dir, us_preparation)
                    outcome.hashes.append((view, len(views[view]), digest))
                    if new is None:
                        outcome.issues.append(dict(exam_id=exam.exam_id, view=view, path=image.path,
                                                   status="excluded", reason=excluded or ""))
                        outcome.hashes.pop()
                        continue
                else:
                    new = _preprocess_mg(image, view, stem, img_dir, scale, suppress_background)
                    warning = _spacing_warning(exam.exam_id, view, image, new)
                    if warning:
                        outcome.issues.append(warning)
                views[view].append(new)
            except (BreastscreenError, OSError, ValueError) as exc:
                failed = True
                outcome.issues.append(dict(exam_id=exam.exam_id, view=view, path=image.path,
                                           status="failed", reason=str(exc)))
            except Exception as exc:  # noqa: BLE001 - one image's unexpected failure never stops the batch
                logger.error("unexpected error preprocessing %s (exam %s, %s)", image.path, exam.exam_id, view,
                             exc_info=exc)
                failed = True
                outcome.issues.append(dict(exam_id=exam.exam_id, view=view, path=image.path, status="failed",
                                           reason=f"unexpected {type(exc).__name__}: {exc} (traceback in the error log)"))
    if not failed and not any(views.values()):
        failed = True
        outcome.issues.append(dict(exam_id=exam.exam_id, view="", path="", status="failed",
                                   reason="no usable image left in the exam"))
    if not failed:
        outcome.exam = replace(exam, views=views, meta=dict(exam.meta), labels=dict(exam.labels))
    return outcome


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> list[Exam]:
    manifest = out_dir / MANIFEST_NAME
    if resume and overwrite:
        raise PreprocessError("choose either --resume or --overwrite, not both")
    if not manifest.exists():
        return []
    if resume:
        # Lines that cannot be read any more are simply preprocessed again.
        return read_manifest(manifest, problems=[])
    if not overwrite:
        raise PreprocessError(
            f"{manifest} already exists; pass --resume to continue that run or --overwrite to replace it"
        )
    return []


def write_errors(rows: Sequence[dict[str, str]], path: str | os.PathLike[str]) -> None:
    """Write the error/exclusion report as CSV (header always present)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(ERROR_COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in ERROR_COLUMNS})


def preprocess_manifest(
    exams: Sequence[Exam],
    out_dir: str | os.PathLike[str],
    scale: float = 1.0,
    *,
    on_error: Literal["skip", "raise"] = "skip",
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    suppress_background: bool = True,
    progress: Callable[[ExamOutcome], None] | None = None,
    input_problems: Sequence[tuple[str, str]] = (),
    us_preparation: str = "safe",
) -> tuple[list[Exam], list[dict[str, str]]]:
    """Preprocess every exam into ``out_dir``; write ``manifest.jsonl`` and ``errors.csv`` there.

    Returns ``(exams_out, issues)``. ``issues`` rows have exam_id, view, path, status
    (``failed``: the exam was left out; ``excluded``: one ultrasound image was dropped by
    the zero-pixel or duplicate rule) and reason. Ultrasound images are prepared as
    ``us_preparation`` names (:func:`~breastscreen.preprocess.ultrasound.us_preparation`; recorded
    per image, and a resume redoes images prepared another way). ``on_error="raise"`` raises
    :class:`PreprocessError` for the first failed exam instead. An existing manifest in
    ``out_dir`` is refused unless ``resume`` (images already done are reused while their
    source file keeps the size and modification time recorded as ``source_size`` and
    ``source_mtime_ns``; otherwise they are preprocessed again) or ``overwrite``. ``workers > 1``
    preprocesses exams in parallel processes. ``input_problems`` (``(where, reason)``, e.g. manifest
    lines that were refused) are listed in errors.csv as failed rows. ``out_dir`` must not belong
    to another command (:func:`breastscreen.outdir.claim_output_dir`); issues with status
    ``warning`` (assumed pixel spacing) do not fail their exam.
    """
    if not scale > 0:
        raise PreprocessError(f"--scale must be > 0, got {scale}")
    if workers < 1:
        raise PreprocessError(f"--workers must be >= 1, got {workers}")
    ultrasound.us_preparation(us_preparation)  # a bad name fails before anything is written
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    out = Path(out_dir)
    check_output_owner(out, "preprocess")
    previous = _check_out_dir(out, resume, overwrite)
    claim_output_dir(out, "preprocess")
    prior = {
        _source_key(ImageRef(img.preprocessing["source_path"], img.preprocessing.get("source_frame"))): img
        for ex in previous
        for _, img in ex.iter_images()
        if img.preprocessing and img.preprocessing.get("source_path")
    }
    outcomes: dict[str, ExamOutcome] = {}

    def _done(o: ExamOutcome) -> None:
        outcomes[o.exam_id] = o
        if on_error == "raise" and o.exam is None:
            raise PreprocessError("; ".join(i["reason"] for i in o.issues if i["status"] == "failed"))
        if progress is not None:
            progress(o)

    names, clashes = assign_names([e.exam_id for e in exams])
    for exam_id, reason in clashes.items():
        _done(ExamOutcome(exam_id, None, [dict(exam_id=exam_id, view="", path="", status="failed", reason=reason)]))
    todo = [e for e in exams if e.exam_id in names]

    if workers == 1:
        for exam in todo:
            _done(preprocess_exam(exam, out, scale, prior, suppress_background, names[exam.exam_id], us_preparation))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(preprocess_exam, e, out, scale, prior, suppress_background, names[e.exam_id],
                                   us_preparation): e
                       for e in todo}
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker fails its exam, not the batch
                    eid = futures[fut].exam_id
                    logger.error("worker failed on exam %s", eid, exc_info=exc)
                    outcome = ExamOutcome(eid, None, [dict(exam_id=eid, view="", path="", status="failed",
                                                           reason=f"worker process failed: {type(exc).__name__}: {exc}")])
                _done(outcome)

    exams_out: list[Exam] = []
    issues: list[dict[str, str]] = [dict(exam_id="", view="", path=where, status="failed", reason=reason)
                                    for where, reason in input_problems]
    seen: dict[str, tuple[str, str]] = {}
    for exam in exams:  # input order, so duplicates keep their first occurrence deterministically
        o = outcomes[exam.exam_id]
        issues.extend(o.issues)
        if o.exam is None:
            continue
        drop: dict[str, set[int]] = {}
        for view, idx, digest in o.hashes:
            img = o.exam.views[view][idx]
            if digest in seen:
                first = seen[digest]
                issues.append(dict(exam_id=exam.exam_id, view=view, path=img.preprocessing["source_path"],
                                   status="excluded", reason=f"exact duplicate of {first[1]} (exam {first[0]})"))
                drop.setdefault(view, set()).add(idx)
            else:
                seen[digest] = (exam.exam_id, img.preprocessing["source_path"])
        if drop:
            for view, idxs in drop.items():
                o.exam.views[view] = [im for i, im in enumerate(o.exam.views[view]) if i not in idxs]
            if not any(o.exam.views.values()):
                issues.append(dict(exam_id=exam.exam_id, view="", path="", status="failed",
                                   reason="no usable image left in the exam"))
                continue
        exams_out.append(o.exam)
    write_manifest(exams_out, out / MANIFEST_NAME)
    write_errors(issues, out / ERRORS_NAME)
    return exams_out, issues
