"""``breastscreen heatmaps``: patch heatmaps for every image of a manifest, written as files, resumable.

The batch layer around :class:`~breastscreen.inference.heatmaps.SlidingWindowHeatmapper`: one
compressed NPZ per image (:mod:`breastscreen.data.heatmaps`), ``heatmaps.jsonl``,
``manifest.jsonl`` and ``errors.csv``; see :func:`generate_heatmaps` for chunking and resume.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from breastscreen import __version__
from breastscreen.data.heatmaps import HEATMAP_SUFFIX, heatmap_filename, read_heatmap_meta, write_heatmap_file
from breastscreen.errors import BreastscreenError
from breastscreen.inference.engines import EngineOptions, default_patch_batch_size
from breastscreen.inference.heatmaps import SlidingWindowHeatmapper
from breastscreen.outdir import check_output_owner, claim_output_dir
from breastscreen.safety import assign_names
from breastscreen.labels import HEATMAP_CHANNELS, PATCH_CLASSES
from breastscreen.specs.mammo import patch_geometry

if TYPE_CHECKING:
    from breastscreen.inference.ray_runner import RayOptions

INDEX_NAME = "heatmaps.jsonl"
ERRORS_NAME = "errors.csv"
COMMAND = "heatmaps"
logger = logging.getLogger("breastscreen")


# --------------------------------------------------------------------------- files


def image_stat(path: str | os.PathLike[str]) -> dict[str, int]:
    """``{"image_size", "image_mtime_ns"}`` of a preprocessed image file (``{}`` when it cannot be read).

    Stored in every heatmap file; ``resume`` keeps a heatmap only while its image file is the
    same, so heatmaps of a re-preprocessed (replaced) image are made again.
    """
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"image_size": int(st.st_size), "image_mtime_ns": int(st.st_mtime_ns)}


def existing_heatmap_outputs(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Heatmap outputs already in ``out_dir``: ``heatmaps.jsonl`` and ``*.npz`` files (top level)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [out / INDEX_NAME] if (out / INDEX_NAME).is_file() else []
    return found + sorted(p for p in out.glob("*" + HEATMAP_SUFFIX) if p.is_file())


def check_heatmap_out_dir(out_dir: str | os.PathLike[str], resume: bool, overwrite: bool) -> None:
    """Refuse to replace the heatmaps of an earlier run unless ``resume`` or ``overwrite`` is set."""
    if resume and overwrite:
        raise BreastscreenError("choose either --resume or --overwrite, not both")
    if resume or overwrite:
        return
    found = existing_heatmap_outputs(out_dir)
    if found:
        raise BreastscreenError(
            f"{out_dir} already holds heatmaps ({found[0].name}{' and more' if len(found) > 1 else ''}); "
            "pass --resume to keep those made with the same checkpoint and images, --overwrite to replace them, "
            "or choose another --out"
        )


@dataclass
class HeatmapItem:
    """One image to process: its exam, view, position within the view, and the image reference."""

    exam_id: str
    view: str
    index: int
    image: Any  # breastscreen.data.types.ImageRef


@dataclass
class HeatmapRun:
    """Outcome of :func:`generate_heatmaps`."""

    out_dir: Path
    computed: list[str] = field(default_factory=list)  # file names written in this run
    reused: list[str] = field(default_factory=list)  # file names kept by --resume
    errors: list[tuple[str, str, str, str]] = field(default_factory=list)  # exam_id, view, path, reason
    model_batches: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no image failed."""
        return not self.errors


def heatmap_items(exams: Iterable[Any]) -> list[HeatmapItem]:
    """Mammography images of ``exams`` in manifest order (ultrasound exams have no patch heatmaps)."""
    from breastscreen.data.types import MG_VIEWS, Modality

    items = []
    for exam in exams:
        if exam.modality is not Modality.MG:
            continue
        for view in MG_VIEWS:
            for k, image in enumerate(exam.views.get(view, [])):
                items.append(HeatmapItem(exam.exam_id, view, k, image))
    return items


def load_preprocessed(image: Any, need_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels of a preprocessed image (float32) and its breast mask (bool, when ``need_mask``)."""
    from breastscreen.data.readers import load_image

    record = image.preprocessing
    if not record:
        raise BreastscreenError(f"{image.path}: image has no preprocessing record; run `breastscreen preprocess` first")
    pixels = load_image(image.path, frame=image.frame).pixels.astype(np.float32)
    mask = None
    if need_mask:
        mask_path = record.get("breast_mask_path")
        if not mask_path:
            raise BreastscreenError(f"{image.path}: preprocessing record has no breast_mask_path (needed by skip_background)")
        mask = load_image(mask_path).pixels > 0
        if mask.shape != pixels.shape:
            raise BreastscreenError(f"{mask_path}: breast mask shape {mask.shape} differs from image shape {pixels.shape}")
    return pixels, mask


def chunk_events(inferer: SlidingWindowHeatmapper, items: Sequence[HeatmapItem],
                 skip_background: bool) -> Iterator[tuple[int, str, Any]]:
    """Heatmaps of one chunk of images, all their windows batched together.

    Yields ``(position, "failed", (reason, traceback or None))`` for each image that cannot be
    read, then ``(position, "result", HeatmapResult)`` as each heatmap is finished. Shared by the
    single-process run and the Ray workers, so both evaluate exactly the same batches.
    """
    loaded, keep = [], []
    for pos, it in enumerate(items):
        try:
            pixels, mask = load_preprocessed(it.image, skip_background)
        except (BreastscreenError, ValueError, OSError) as exc:
            yield pos, "failed", (str(exc), None)
            continue
        except Exception as exc:  # noqa: BLE001 - one unreadable image never stops the batch
            # The traceback travels as text: a Ray worker's log is not the driver's error log.
            yield pos, "failed", (f"unexpected {type(exc).__name__}: {exc} (traceback in the error log)",
                                  traceback.format_exc())
            continue
        loaded.append((pixels, mask))
        keep.append(pos)
    if not keep:
        return
    for k, result in inferer.iter_heatmaps([p for p, _ in loaded], [m for _, m in loaded]):
        yield keep[k], "result", result


def generate_heatmaps(
    exams: Sequence[Any],
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    checkpoint_sha256: str,
    checkpoint_name: str = "",
    model_metadata: dict[str, Any] | None = None,
    class_names: Sequence[str] = PATCH_CLASSES,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_background: bool = False,
    images_per_chunk: int = 4,
    progress: Callable[[HeatmapItem, str], None] | None = None,
    ray: "RayOptions | None" = None,
    model_ref: str | None = None,
    engine: EngineOptions = EngineOptions(),
) -> HeatmapRun:
    """Write one heatmap file per mammography image of ``exams`` (preprocessed) into ``out_dir``.

    Also writes ``heatmaps.jsonl`` (one line per image with its file), ``manifest.jsonl`` (the
    exams, each image's ``preprocessing`` record gaining ``heatmap_path``) and ``errors.csv``.
    Images whose file exists with the same checkpoint hash, geometry and preprocessed image
    (path, file size and modification time) are kept when ``resume`` is set. A folder that
    already holds heatmaps is refused (:class:`BreastscreenError`) unless ``resume`` or
    ``overwrite`` is set. ``progress(item, status)`` is called once per image with status
    ``computed``, ``reused`` or ``failed``. See the module docstring for chunking.

    With ``ray`` (:class:`~breastscreen.inference.ray_runner.RayOptions`, inside
    :func:`~breastscreen.inference.ray_runner.ray_session`) each chunk runs as a Ray task whose
    worker loads checkpoint ``model_ref`` (same hash required) on ``device`` as resolved there;
    this process still decides what to reuse and writes every file, so the files are the same.

    ``engine`` chooses how windows are computed (:class:`~breastscreen.inference.engines.EngineOptions`);
    its mode, backend and precision are stored in each file, and ``resume`` keeps only files made
    the same way.
    """
    from breastscreen.data.manifest import write_manifest

    if images_per_chunk < 1:
        raise ValueError(f"images_per_chunk must be >= 1, got {images_per_chunk}")
    if batch_size is None:
        batch_size = default_patch_batch_size(device)
    check_output_owner(out_dir, COMMAND)
    check_heatmap_out_dir(out_dir, resume, overwrite)
    start_time = time.perf_counter()
    out = claim_output_dir(out_dir, COMMAND)
    run = HeatmapRun(out_dir=out)
    names, clashes = assign_names([e.exam_id for e in exams])
    for exam in exams:
        if exam.exam_id in clashes:
            run.errors.append((exam.exam_id, "", "", clashes[exam.exam_id]))
    items = heatmap_items([e for e in exams if e.exam_id in names])
    scales = set()
    for it in items:
        if it.image.preprocessing and "scale" in it.image.preprocessing:
            scales.add(float(it.image.preprocessing["scale"]))
    if len(scales) > 1:
        raise BreastscreenError(f"images are preprocessed at different scales {sorted(scales)}; heatmaps need one scale")
    meta_model = dict(model_metadata or {})
    trained_scale = meta_model.get("scale")
    # Without preprocessed mammograms there is nothing to compare: the model's own scale applies.
    scale = scales.pop() if scales else float(trained_scale or 1.0)
    # A patch size fixed in pixels covers another area of breast at another scale, so the scales
    # must agree whether or not the metadata names the patch size.
    if trained_scale is not None and not math.isclose(float(trained_scale), scale, rel_tol=1e-6):
        raise BreastscreenError(
            f"the patch model was trained at scale {trained_scale} but the images are preprocessed at scale {scale}; "
            "preprocess the manifest at the model's scale (or give the raw manifest and let heatmaps preprocess it)"
        )
    patch, stride = patch_geometry(scale, meta_model)
    # With Ray the driver's heatmapper only checks the geometry and classes; workers run the model.
    driver_engine = EngineOptions(mode=engine.mode) if ray is not None else engine
    inferer = SlidingWindowHeatmapper(
        model, patch, stride, batch_size=batch_size, device="cpu" if ray is not None else device, amp=amp,
        skip_background=skip_background, class_names=class_names, **driver_engine.kwargs(),
    )
    how = {"mode": engine.mode, "backend": engine.backend, "precision": inferer.engine.precision
           if ray is None else engine.precision, "refine": engine.refine if engine.mode == "fullconv" else 0.0}

    def target(it: HeatmapItem) -> Path:
        # heatmap_filename makes the exam id safe; the result is one name inside ``out``.
        return out / heatmap_filename(it.exam_id, it.view, it.index)

    def is_done(it: HeatmapItem) -> bool:
        meta = read_heatmap_meta(target(it)) if resume else None
        stat = image_stat(it.image.path) if meta else {}
        return bool(
            meta
            and meta.get("checkpoint_sha256") == checkpoint_sha256
            and meta.get("patch_size") == patch
            and meta.get("stride") == stride
            and meta.get("skip_background") == bool(skip_background)
            # files from before these keys existed were exact fp32 torch heatmaps
            and all(meta.get(k, d) == how[k]
                    for k, d in (("mode", "exact"), ("backend", "torch"), ("precision", "fp32"), ("refine", 0.0)))
            # The same preprocessed image: a re-preprocessed or replaced one gets new heatmaps.
            and meta.get("image_path") == it.image.path
            and stat
            and all(meta.get(k) == v for k, v in stat.items())
        )

    done_paths: dict[int, Path] = {}

    def pending() -> Iterator[tuple[tuple[list[int], set[int], dict[int, dict[str, int]]], list[HeatmapItem]]]:
        # Lazy, so a single-process run still checks chunk k+1 only after writing chunk k.
        for c0 in range(0, len(items), images_per_chunk):
            chunk = list(range(c0, min(c0 + images_per_chunk, len(items))))
            done = {j for j in chunk if is_done(items[j])}
            for j in sorted(done):
                done_paths[j] = target(items[j])
                run.reused.append(target(items[j]).name)
                if progress:
                    progress(items[j], "reused")
            if len(done) == len(chunk):
                continue
            # Taken before reading, so an image replaced while it is read never looks unchanged later.
            stats = {j: image_stat(items[j].image.path) for j in chunk}
            # The whole chunk is recomputed (same batches as an uninterrupted run); only what is missing is written.
            yield (chunk, done, stats), [items[j] for j in chunk]

    if ray is None:
        computed: Iterable[tuple[Any, tuple[Iterable[tuple[int, str, Any]], int]]] = (
            (key, (chunk_events(inferer, chunk_items, skip_background), 0)) for key, chunk_items in pending())
    else:
        from breastscreen.inference.ray_runner import HeatmapJob, map_heatmap_chunks

        if not model_ref:
            raise ValueError("generate_heatmaps(ray=...) needs model_ref: each worker loads the checkpoint itself")
        job = HeatmapJob(model_ref=model_ref, sha256=checkpoint_sha256, patch=patch, stride=stride,
                         batch_size=batch_size, device=str(device), amp=amp, skip_background=bool(skip_background),
                         class_names=tuple(class_names), engine=engine)
        computed = map_heatmap_chunks(ray, job, pending())
    worker_batches = 0
    for (chunk, done, stats), (events, batches) in computed:
        worker_batches += batches
        for pos, kind, payload in events:
            j = chunk[pos]
            it = items[j]
            if kind == "failed":
                reason, trace = payload
                if trace:
                    logger.error("unexpected error reading %s\n%s", it.image.path, trace)
                run.errors.append((it.exam_id, it.view, it.image.path, reason))
                if progress:
                    progress(it, "failed")
                continue
            if j in done:
                continue
            result = payload
            if not np.isfinite(result.maps).all():
                run.errors.append((it.exam_id, it.view, it.image.path,
                                   "the patch model gives NaN or infinite probabilities for this image (no heatmap written)"))
                target(it).unlink(missing_ok=True)
                if progress:
                    progress(it, "failed")
                continue
            meta = {
                "exam_id": it.exam_id,
                "view": it.view,
                "index": it.index,
                "image_path": it.image.path,
                **stats[j],
                "channels": list(HEATMAP_CHANNELS),
                "shape": list(result.maps.shape[1:]),
                "checkpoint_sha256": checkpoint_sha256,
                "checkpoint": checkpoint_name,
                "patch_size": patch,
                "stride": stride,
                "row_strides": result.row_strides,
                "col_strides": result.col_strides,
                "n_windows": result.n_windows,
                "n_evaluated": result.n_evaluated,
                "skip_background": bool(skip_background),
                "skipped_windows_excluded": bool(skip_background),
                **how,
                "preprocessing": _jsonable(it.image.preprocessing),
                "package_version": __version__,
            }
            write_heatmap_file(target(it), result.maps, meta)
            done_paths[j] = target(it)
            run.computed.append(target(it).name)
            if progress:
                progress(it, "computed")
    run.model_batches = inferer.batches_run + worker_batches

    _write_index(out, items, done_paths, checkpoint_sha256)
    _write_errors(out / ERRORS_NAME, ["exam_id", "view", "path", "reason"], run.errors)
    # The written manifest gets heatmap paths; the caller's exams are left untouched.
    copies = copy.deepcopy([e for e in exams if e.exam_id in names])
    copy_items = heatmap_items(copies)
    for j, path in done_paths.items():
        record = dict(copy_items[j].image.preprocessing or {})
        record["heatmap_path"] = str(path.resolve())
        copy_items[j].image.preprocessing = record
    write_manifest(copies, out / "manifest.jsonl")
    run.seconds = time.perf_counter() - start_time
    return run


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def _write_index(out: Path, items: list[HeatmapItem], done: dict[int, Path], sha: str) -> None:
    from breastscreen.utils import atomic_path

    with atomic_path(out / INDEX_NAME) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for j, it in enumerate(items):
                if j in done:
                    line = {"exam_id": it.exam_id, "view": it.view, "index": it.index,
                            "path": done[j].name, "image_path": it.image.path, "checkpoint_sha256": sha}
                    fh.write(json.dumps(line) + "\n")


def _write_errors(path: Path, header: list[str], rows: list[tuple]) -> None:
    from breastscreen.utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


def patch_classes(ckpt: Any, ref: str) -> list[str]:
    """Check that checkpoint ``ckpt`` (loaded from ``ref``) is a patch classifier; return its class order.

    Raises :class:`BreastscreenError` when it is another kind of model, when its number of
    outputs differs from its class list, or when it lacks a benign or malignant class.
    """
    from breastscreen.models.registry import get_entry

    task = get_entry(ckpt.name).task
    if task != "patch":
        raise BreastscreenError(
            f"{ref}: model {ckpt.name} is a {task} model; heatmaps need a patch classifier (e.g. demo-patch)"
        )
    classes = list((ckpt.metadata or {}).get("classes") or PATCH_CLASSES)
    n_out = getattr(ckpt.config, "num_classes", None)
    if n_out is not None and int(n_out) != len(classes):
        raise BreastscreenError(
            f"{ref}: patch model has {n_out} outputs but its class list has {len(classes)} ({classes}); "
            "record the class order in the checkpoint metadata 'classes'"
        )
    missing = [c for c in HEATMAP_CHANNELS if c not in classes]
    if missing:
        raise BreastscreenError(f"{ref}: patch model classes {classes} lack {missing}; heatmaps need {list(HEATMAP_CHANNELS)}")
    return classes


def run_heatmaps(
    manifest: str | os.PathLike[str] | Sequence[Any],
    model_ref: str,
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    batch_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_background: bool = True,
    images_per_chunk: int = 4,
    workers: int = 1,
    progress: Callable[[int, int, float], None] | None = None,
    allow_outside_paths: bool = False,
    ray: "RayOptions | None" = None,
    engine: EngineOptions = EngineOptions(channels_last=True),
) -> HeatmapRun:
    """``breastscreen heatmaps``: load the patch checkpoint, preprocess if needed, write heatmaps.

    ``manifest`` is a manifest path or a list of exams. Images without a preprocessing record are
    preprocessed at the checkpoint's ``scale`` (metadata; default 1.0) into
    ``out_dir/preprocessed``; exams that fail there are reported in ``errors.csv`` too.
    An ``out_dir`` that already holds heatmaps (``heatmaps.jsonl`` or ``*.npz``) is refused
    with :class:`BreastscreenError` unless ``resume`` (keep heatmaps made with the same
    checkpoint from the same preprocessed images) or ``overwrite`` (recompute and replace them).
    ``progress(done, total, images_per_second)`` is called once per image. With ``ray`` the
    images run on Ray (:mod:`~breastscreen.inference.ray_runner`) with the same files as a result.
    """
    from breastscreen.data.manifest import read_manifest
    from breastscreen.data.types import Modality
    from breastscreen.models import load_checkpoint
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.utils import resolve_device

    from breastscreen.inference.options import HeatmapOptions
    from breastscreen.inference.ray_runner import ray_session, worker_ref

    HeatmapOptions(device=device, batch_size=batch_size, skip_background=skip_background,
                   images_per_chunk=images_per_chunk, workers=workers)
    # Checked before anything is preprocessed or written.
    check_output_owner(out_dir, COMMAND)
    check_heatmap_out_dir(out_dir, resume, overwrite)
    try:
        # With Ray the workers resolve --device (they may have GPUs this process lacks).
        dev = resolve_device("cpu" if ray is not None else device)
    except ValueError as exc:
        raise BreastscreenError(str(exc)) from None
    if batch_size is None:
        batch_size = default_patch_batch_size(device if ray is not None else dev)
    with ray_session(ray) if ray is not None else contextlib.nullcontext():
        refused: list[tuple[str, str]] = []
        if isinstance(manifest, (str, os.PathLike)):
            exams = read_manifest(manifest, allow_outside_paths=allow_outside_paths, problems=refused)
            if not exams:
                why = (f"{len(refused)} line(s) refused, first {refused[0][0]}: {refused[0][1]}" if refused
                       else "it is empty")
                raise BreastscreenError(f"{manifest}: no usable exam ({why})")
        else:
            exams = list(manifest)
        ckpt = load_checkpoint(model_ref)
        metadata = dict(ckpt.metadata or {})
        classes = patch_classes(ckpt, str(model_ref))
        out = Path(out_dir)
        pre_errors: list[tuple[str, str, str, str]] = []
        # Only mammograms get patch heatmaps, so only they are preprocessed here.
        raw = [e for e in exams
               if e.modality is Modality.MG and any(img.preprocessing is None for _, img in e.iter_images())]
        if raw:
            scale = float(metadata.get("scale") or 1.0)
            pre_dir = out / "preprocessed"
            done, issues = preprocess_manifest(raw, pre_dir, scale, resume=(pre_dir / "manifest.jsonl").exists(),
                                               workers=workers)
            by_id = {e.exam_id: e for e in done}
            pre_errors = [(r["exam_id"], r.get("view", ""), r.get("path", ""), r["reason"])
                          for r in issues if r.get("status") == "failed"]
            exams = [by_id.get(e.exam_id, e) for e in exams if e not in raw or e.exam_id in by_id]
        total = len(heatmap_items(exams))
        start = time.perf_counter()
        count = [0]

        def tick(_item: HeatmapItem, _status: str) -> None:
            count[0] += 1
            if progress:
                progress(count[0], total, count[0] / max(time.perf_counter() - start, 1e-9))

        run = generate_heatmaps(
            exams, ckpt.model.to(dev), out, checkpoint_sha256=ckpt.sha256, checkpoint_name=ckpt.name,
            model_metadata=metadata, class_names=classes, batch_size=batch_size,
            device=device if ray is not None else dev, resume=resume, overwrite=overwrite,
            skip_background=skip_background, images_per_chunk=images_per_chunk, progress=tick, ray=ray,
            model_ref=worker_ref(model_ref), engine=engine,
        )
    pre_errors = [("", "", where, reason) for where, reason in refused] + pre_errors
    if pre_errors:
        run.errors = pre_errors + run.errors
        _write_errors(out / ERRORS_NAME, ["exam_id", "view", "path", "reason"], run.errors)
    return run
