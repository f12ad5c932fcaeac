"""Patch-classifier heatmaps by sliding-window inference (Wu et al. 2019 SI).

The inferer is built from small functional pieces that can be tested one by one:

* :func:`~breastscreen.inference.strides.window_grid` — where the windows go (Algorithm 1);
* :func:`prepare_image` — standardise and pad an image too small for one patch;
* :func:`extract_patches` — copy a batch of windows out of an image tensor by indexing a
  stride-1 ``unfold`` view (no Python loop over patches);
* :func:`windows_with_tissue` — which windows hold any breast tissue (summed-area table);
* :func:`merge_window_probs` — write each window's probabilities onto its whole area and
  divide by the number of windows covering each pixel, as two matrix products;
* :class:`SlidingWindowHeatmapper` — batches the windows of several images together, runs the
  model under ``torch.inference_mode()`` (autocast on CUDA) and merges.

File-level functions (:func:`generate_heatmaps`, :func:`run_heatmaps`) write one compressed
NPZ per image, atomically, and support resuming.

Batching and reproducibility: images are processed in fixed *chunks* of consecutive images
(``images_per_chunk``, counted over the whole image list, done or not). All windows of a chunk
are evaluated together in batches of ``batch_size``. On ``resume`` a chunk whose images all
exist is skipped without a model call; a chunk that was interrupted part-way is recomputed in
full with exactly the same batches, so a resumed run gives bit-identical files. (CPU kernels
can differ in the last float bit between batch shapes, which is why batch composition is kept
fixed rather than re-packed after a resume.)

Background skipping (``skip_background=True``): windows that contain no breast-mask pixel are
not evaluated and are *excluded* from the average (they add neither probability nor count);
pixels covered only by skipped windows get 0. Every pixel inside the breast is covered only by
windows that contain it, so heatmap values inside the breast are the same with and without the
option; only the background differs. The flag is stored in each file's metadata.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from breastscreen import __version__
from breastscreen.errors import BreastscreenError
from breastscreen.inference.strides import padded_size, stride_list, window_offsets
from breastscreen.labels import HEATMAP_CHANNELS, PATCH_CLASSES, PATCH_SIZE, PATCH_STRIDE

HEATMAP_SUFFIX = ".npz"
INDEX_NAME = "heatmaps.jsonl"
ERRORS_NAME = "errors.csv"


# --------------------------------------------------------------------------- geometry


def patch_geometry(scale: float, metadata: dict[str, Any] | None = None) -> tuple[int, int]:
    """Patch size and target stride for images preprocessed at ``scale``.

    ``round(256 * scale)`` and ``round(70 * scale)`` (at least 1 pixel each), unless the patch
    model's checkpoint metadata names its ``patch_size`` (then the stride is the metadata's
    ``patch_stride`` or the paper's 70/256 ratio of that size).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    metadata = metadata or {}
    if metadata.get("patch_size"):
        patch = int(metadata["patch_size"])
        stride = int(metadata.get("patch_stride") or max(1, round(patch * PATCH_STRIDE / PATCH_SIZE)))
    else:
        patch = max(1, round(PATCH_SIZE * scale))
        stride = max(1, round(PATCH_STRIDE * scale))
    if patch < 1 or not 1 <= stride <= patch:
        raise ValueError(f"patch geometry must satisfy 1 <= stride <= patch, got patch={patch}, stride={stride}")
    return patch, stride


def prepare_image(pixels: np.ndarray, patch: int, standardize: bool = True) -> np.ndarray:
    """Standardise a 2-D image (zero mean, unit variance) and pad it up to ``patch`` pixels.

    Dimensions shorter than one patch are padded at the bottom/right with the image's minimum
    (background) value; :meth:`SlidingWindowHeatmapper.heatmaps` crops the maps back.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    x = np.asarray(pixels, dtype=np.float32)
    if standardize:
        x = _standardize(x)
    h, w = x.shape
    ph, pw = padded_size(h, patch), padded_size(w, patch)
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, ph - h), (0, pw - w)), mode="constant", constant_values=float(x.min()))
    return np.ascontiguousarray(x)


def _standardize(x: np.ndarray) -> np.ndarray:
    from breastscreen.preprocess.mammo import standardize

    return np.asarray(standardize(x), dtype=np.float32)


def extract_patches(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patch: int) -> torch.Tensor:
    """Copy the windows with top-left corners ``(rows[i], cols[i])`` out of ``image`` [C, H, W].

    Returns [B, C, patch, patch]. Indexes a stride-1 ``unfold`` view, which is free to build,
    so the only copy made is of the requested windows.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    view = image.unfold(1, patch, 1).unfold(2, patch, 1)  # [C, H-p+1, W-p+1, p, p]
    return view[:, rows, cols].permute(1, 0, 2, 3)


def windows_with_tissue(mask: np.ndarray, row_off: np.ndarray, col_off: np.ndarray, patch: int) -> np.ndarray:
    """Boolean [n_rows, n_cols]: does the window at ``(row_off[i], col_off[j])`` contain any mask pixel?"""
    m = np.asarray(mask) > 0
    h, w = m.shape
    ph, pw = padded_size(h, patch), padded_size(w, patch)
    if (ph, pw) != (h, w):
        m = np.pad(m, ((0, ph - h), (0, pw - w)))
    sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    r0, c0 = row_off[:, None], col_off[None, :]
    r1, c1 = r0 + patch, c0 + patch
    counts = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return counts > 0


def _indicator(offsets: np.ndarray, patch: int, length: int) -> np.ndarray:
    pos = np.arange(length)
    return ((pos[None, :] >= offsets[:, None]) & (pos[None, :] < offsets[:, None] + patch)).astype(np.float32)


def merge_window_probs(
    probs: np.ndarray,
    row_off: np.ndarray,
    col_off: np.ndarray,
    patch: int,
    shape: tuple[int, int],
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Average window probabilities over the pixels each window covers.

    ``probs`` is [n_rows, n_cols, K] (one row per window-grid row). Each window's values are
    written onto its whole ``patch`` × ``patch`` area; every pixel gets the mean over the windows
    covering it (only ``valid`` windows when given; 0 where none). Because the windows form a
    separable grid this is ``A.T @ P @ B`` with row/column coverage indicators ``A``, ``B``.
    Returns [K, H, W] float32 for ``shape`` = (H, W) (the padded size).
    """
    n_r, n_c, k = probs.shape
    a = _indicator(row_off, patch, shape[0])  # [n_r, H]
    b = _indicator(col_off, patch, shape[1])  # [n_c, W]
    weights = np.ones((n_r, n_c), dtype=np.float32) if valid is None else valid.astype(np.float32)
    count = a.T @ weights @ b
    out = np.empty((k, *shape), dtype=np.float32)
    p = np.asarray(probs, dtype=np.float32) * weights[..., None]
    for c in range(k):
        total = a.T @ p[..., c] @ b
        out[c] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return np.clip(out, 0.0, 1.0)


def _model_in_channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    value = getattr(config, "in_channels", None)
    if value:
        return int(value)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 1


# --------------------------------------------------------------------------- inferer


@dataclass
class HeatmapResult:
    """Heatmaps of one image: ``maps`` [2, H, W] float32 in :data:`HEATMAP_CHANNELS` order."""

    maps: np.ndarray
    row_strides: list[int]
    col_strides: list[int]
    n_windows: int
    n_evaluated: int


@dataclass
class _Pending:
    shape: tuple[int, int]
    padded: tuple[int, int]
    row_off: np.ndarray
    col_off: np.ndarray
    valid: np.ndarray
    probs: np.ndarray
    remaining: int


class SlidingWindowHeatmapper:
    """Sliding-window patch inference producing benign and malignant heatmaps.

    ``model`` maps [N, C, patch, patch] to ``{"logits": [N, n_classes]}`` (or a bare tensor);
    ``class_names`` gives the order of its classes (default :data:`PATCH_CLASSES`). Grayscale
    patches are repeated to the model's input channels.
    """

    def __init__(
        self,
        model: nn.Module,
        patch_size: int,
        stride: int,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        amp: bool | None = None,
        skip_background: bool = False,
        class_names: Sequence[str] = PATCH_CLASSES,
        standardize: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stride_list(patch_size, patch_size, stride)  # validates patch/stride
        missing = [c for c in HEATMAP_CHANNELS if c not in class_names]
        if missing:
            raise ValueError(f"patch model classes {list(class_names)} lack {missing}; heatmaps need {HEATMAP_CHANNELS}")
        self.model = model
        self.patch = int(patch_size)
        self.stride = int(stride)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        self.skip_background = bool(skip_background)
        self.class_index = [list(class_names).index(c) for c in HEATMAP_CHANNELS]
        self.standardize = standardize
        self.in_channels = _model_in_channels(model)
        self.batches_run = 0  # model batches evaluated so far (instrumentation for --resume)

    @torch.inference_mode()
    def _run(self, patches: torch.Tensor) -> np.ndarray:
        self.batches_run += 1
        x = patches.to(self.device, non_blocking=True)
        if self.in_channels != x.shape[1]:
            x = x.expand(-1, self.in_channels, -1, -1)
        x = x.contiguous()
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            out = self.model(x)
        logits = out["logits"] if isinstance(out, dict) else out
        probs = torch.softmax(logits.float(), dim=1)[:, self.class_index]
        return probs.detach().cpu().numpy()

    def iter_heatmaps(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None
    ) -> Iterator[tuple[int, HeatmapResult]]:
        """Yield ``(index, result)`` for each image as soon as all its windows are evaluated.

        All windows of all ``images`` are streamed through the model in batches of
        ``batch_size``; a batch may span several images.
        """
        if masks is None:
            masks = [None] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        pending: dict[int, _Pending] = {}
        tensors: dict[int, torch.Tensor] = {}
        img_idx, win_r, win_c = [], [], []
        for i, (pixels, mask) in enumerate(zip(images, masks)):
            h, w = pixels.shape
            row_off, col_off = window_offsets(h, self.patch, self.stride), window_offsets(w, self.patch, self.stride)
            valid = np.ones((len(row_off), len(col_off)), dtype=bool)
            if self.skip_background:
                if mask is None:
                    raise ValueError(f"skip_background needs a breast mask for image {i}")
                if mask.shape != pixels.shape:
                    raise ValueError(f"mask shape {mask.shape} differs from image shape {pixels.shape} (image {i})")
                valid = windows_with_tissue(mask, row_off, col_off, self.patch)
            ri, ci = np.nonzero(valid)
            pending[i] = _Pending(
                shape=(h, w),
                padded=(padded_size(h, self.patch), padded_size(w, self.patch)),
                row_off=row_off,
                col_off=col_off,
                valid=valid,
                probs=np.zeros((len(row_off), len(col_off), len(HEATMAP_CHANNELS)), dtype=np.float32),
                remaining=len(ri),
            )
            if len(ri):
                prepared = prepare_image(pixels, self.patch, self.standardize)
                tensors[i] = torch.from_numpy(prepared)[None].to(self.device)
                img_idx.append(np.full(len(ri), i))
                win_r.append(ri)
                win_c.append(ci)
        # Images with nothing to evaluate are finished at once.
        for i in [i for i, p in pending.items() if p.remaining == 0]:
            yield i, self._finish(pending.pop(i))
        if not img_idx:
            return
        all_i, all_r, all_c = np.concatenate(img_idx), np.concatenate(win_r), np.concatenate(win_c)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(all_i), self.batch_size):
                sl = slice(start, start + self.batch_size)
                bi, br, bc = all_i[sl], all_r[sl], all_c[sl]
                parts, order = [], []
                for i in np.unique(bi):
                    sel = bi == i
                    p = pending[i]
                    rows = torch.as_tensor(p.row_off[br[sel]], device=self.device)
                    cols = torch.as_tensor(p.col_off[bc[sel]], device=self.device)
                    parts.append(extract_patches(tensors[i], rows, cols, self.patch))
                    order.append((i, br[sel], bc[sel]))
                probs = self._run(torch.cat(parts) if len(parts) > 1 else parts[0])
                offset = 0
                for i, rr, cc in order:
                    p = pending[i]
                    p.probs[rr, cc] = probs[offset : offset + len(rr)]
                    offset += len(rr)
                    p.remaining -= len(rr)
                    if p.remaining == 0:
                        tensors.pop(i)
                        yield i, self._finish(pending.pop(i))

    def _finish(self, p: _Pending) -> HeatmapResult:
        maps = merge_window_probs(p.probs, p.row_off, p.col_off, self.patch, p.padded, p.valid)
        h, w = p.shape
        return HeatmapResult(
            maps=maps[:, :h, :w],
            row_strides=[int(v) for v in np.diff(p.row_off)],
            col_strides=[int(v) for v in np.diff(p.col_off)],
            n_windows=int(p.valid.size),
            n_evaluated=int(p.valid.sum()),
        )

    def heatmaps(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None
    ) -> list[HeatmapResult]:
        """Heatmaps of every image, in input order (see :meth:`iter_heatmaps`)."""
        results: dict[int, HeatmapResult] = dict(self.iter_heatmaps(images, masks))
        return [results[i] for i in range(len(images))]


# --------------------------------------------------------------------------- files


def heatmap_filename(exam_id: str, view: str, index: int = 0) -> str:
    """File name of one image's heatmaps: ``<exam_id>_<VIEW>_<k>.npz`` (unsafe characters replaced)."""
    safe = re.sub(r"[^A-Za-z0-9.\-]+", "-", str(exam_id)).strip(".") or "exam"
    return f"{safe}_{view}_{int(index)}{HEATMAP_SUFFIX}"


def write_heatmap_file(path: str | os.PathLike[str], maps: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write ``maps`` [2, H, W] as float16 plus JSON ``meta`` into a compressed NPZ, atomically."""
    from breastscreen.utils import atomic_path

    if maps.ndim != 3 or maps.shape[0] != len(HEATMAP_CHANNELS):
        raise ValueError(f"heatmaps must be [{len(HEATMAP_CHANNELS)}, H, W], got shape {maps.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, heatmaps=maps.astype(np.float16), meta=np.array(json.dumps(meta, sort_keys=True))
            )
    return path


def read_heatmap_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Metadata of a heatmap file, or ``None`` when the file is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError):
        return None


def read_heatmap_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Heatmaps [2, H, W] (float32; channels in :data:`HEATMAP_CHANNELS` order) and metadata."""
    try:
        with np.load(path, allow_pickle=False) as data:
            maps = data["heatmaps"].astype(np.float32)
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise BreastscreenError(f"{path}: not a readable heatmap file ({exc})") from None
    return maps, meta


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


def generate_heatmaps(
    exams: Sequence[Any],
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    checkpoint_sha256: str,
    checkpoint_name: str = "",
    model_metadata: dict[str, Any] | None = None,
    class_names: Sequence[str] = PATCH_CLASSES,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_background: bool = False,
    images_per_chunk: int = 4,
    progress: Callable[[HeatmapItem, str], None] | None = None,
) -> HeatmapRun:
    """Write one heatmap file per mammography image of ``exams`` (preprocessed) into ``out_dir``.

    Also writes ``heatmaps.jsonl`` (one line per image with its file), ``manifest.jsonl`` (the
    exams, each image's ``preprocessing`` record gaining ``heatmap_path``) and ``errors.csv``.
    Images whose file exists with the same checkpoint hash, geometry and preprocessed image
    (path, file size and modification time) are kept when ``resume`` is set. A folder that
    already holds heatmaps is refused (:class:`BreastscreenError`) unless ``resume`` or
    ``overwrite`` is set. ``progress(item, status)`` is called once per image with status
    ``computed``, ``reused`` or ``failed``. See the module docstring for chunking.
    """
    from breastscreen.data.manifest import write_manifest

    if images_per_chunk < 1:
        raise ValueError(f"images_per_chunk must be >= 1, got {images_per_chunk}")
    check_heatmap_out_dir(out_dir, resume, overwrite)
    start_time = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = HeatmapRun(out_dir=out)
    items = heatmap_items(exams)
    scales = set()
    for it in items:
        if it.image.preprocessing and "scale" in it.image.preprocessing:
            scales.add(float(it.image.preprocessing["scale"]))
    if len(scales) > 1:
        raise BreastscreenError(f"images are preprocessed at different scales {sorted(scales)}; heatmaps need one scale")
    scale = scales.pop() if scales else 1.0
    meta_model = dict(model_metadata or {})
    trained_scale = meta_model.get("scale")
    if trained_scale is not None and not meta_model.get("patch_size") and not math.isclose(float(trained_scale), scale):
        raise BreastscreenError(
            f"the patch model was trained at scale {trained_scale} but the images are preprocessed at scale {scale}; "
            "preprocess the manifest at the model's scale (or give the raw manifest and let heatmaps preprocess it)"
        )
    patch, stride = patch_geometry(scale, meta_model)
    inferer = SlidingWindowHeatmapper(
        model, patch, stride, batch_size=batch_size, device=device, amp=amp,
        skip_background=skip_background, class_names=class_names,
    )

    def target(it: HeatmapItem) -> Path:
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
            # The same preprocessed image: a re-preprocessed or replaced one gets new heatmaps.
            and meta.get("image_path") == it.image.path
            and stat
            and all(meta.get(k) == v for k, v in stat.items())
        )

    done_paths: dict[int, Path] = {}
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
        # Recompute the whole chunk (same batches as an uninterrupted run), write what is missing.
        loaded, keep = [], []
        stats: dict[int, dict[str, int]] = {}
        for j in chunk:
            it = items[j]
            # Taken before reading, so an image replaced while it is read never looks unchanged later.
            stats[j] = image_stat(it.image.path)
            try:
                pixels, mask = load_preprocessed(it.image, skip_background)
            except (BreastscreenError, ValueError, OSError) as exc:
                run.errors.append((it.exam_id, it.view, it.image.path, str(exc)))
                if progress:
                    progress(it, "failed")
                continue
            loaded.append((pixels, mask))
            keep.append(j)
        if not keep:
            continue
        results = inferer.iter_heatmaps([p for p, _ in loaded], [m for _, m in loaded])
        for pos, result in results:
            j = keep[pos]
            if j in done:
                continue
            it = items[j]
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
                "preprocessing": _jsonable(it.image.preprocessing),
                "package_version": __version__,
            }
            write_heatmap_file(target(it), result.maps, meta)
            done_paths[j] = target(it)
            run.computed.append(target(it).name)
            if progress:
                progress(it, "computed")
    run.model_batches = inferer.batches_run

    _write_index(out, items, done_paths, checkpoint_sha256)
    _write_errors(out / ERRORS_NAME, ["exam_id", "view", "path", "reason"], run.errors)
    # The written manifest gets heatmap paths; the caller's exams are left untouched.
    copies = copy.deepcopy(list(exams))
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
    batch_size: int = 256,
    resume: bool = False,
    overwrite: bool = False,
    skip_background: bool = False,
    images_per_chunk: int = 4,
    workers: int = 1,
    progress: Callable[[int, int, float], None] | None = None,
) -> HeatmapRun:
    """``breastscreen heatmaps``: load the patch checkpoint, preprocess if needed, write heatmaps.

    ``manifest`` is a manifest path or a list of exams. Images without a preprocessing record are
    preprocessed at the checkpoint's ``scale`` (metadata; default 1.0) into
    ``out_dir/preprocessed``; exams that fail there are reported in ``errors.csv`` too.
    An ``out_dir`` that already holds heatmaps (``heatmaps.jsonl`` or ``*.npz``) is refused
    with :class:`BreastscreenError` unless ``resume`` (keep heatmaps made with the same
    checkpoint from the same preprocessed images) or ``overwrite`` (recompute and replace them).
    ``progress(done, total, images_per_second)`` is called once per image.
    """
    from breastscreen.data.manifest import read_manifest
    from breastscreen.models import load_checkpoint
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.utils import resolve_device

    if batch_size < 1:
        raise BreastscreenError(f"--batch-size must be >= 1, got {batch_size}")
    if images_per_chunk < 1:
        raise BreastscreenError(f"--images-per-chunk must be >= 1, got {images_per_chunk}")
    # Checked before anything is preprocessed or written.
    check_heatmap_out_dir(out_dir, resume, overwrite)
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise BreastscreenError(str(exc)) from None
    exams = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    ckpt = load_checkpoint(model_ref)
    metadata = dict(ckpt.metadata or {})
    classes = patch_classes(ckpt, str(model_ref))
    out = Path(out_dir)
    pre_errors: list[tuple[str, str, str, str]] = []
    raw = [e for e in exams if any(img.preprocessing is None for _, img in e.iter_images())]
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
        model_metadata=metadata, class_names=classes, batch_size=batch_size, device=dev, resume=resume,
        overwrite=overwrite, skip_background=skip_background, images_per_chunk=images_per_chunk, progress=tick,
    )
    if pre_errors:
        run.errors = pre_errors + run.errors
        _write_errors(out / ERRORS_NAME, ["exam_id", "view", "path", "reason"], run.errors)
    return run
