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

File-level functions (:mod:`breastscreen.inference.heatmap_runner`) write one compressed
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

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from breastscreen.inference.engines import build_engine
from breastscreen.inference.strides import padded_size, stride_list, window_offsets
from breastscreen.labels import HEATMAP_CHANNELS, PATCH_CLASSES
from breastscreen.specs.mammo import patch_geometry  # noqa: F401 - re-exported: geometry belongs to the patch spec


# --------------------------------------------------------------------------- geometry


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

MODES: tuple[str, ...] = ("exact", "fullconv")


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
        backend: str = "torch",
        precision: str = "fp32",
        channels_last: bool = False,
        mode: str = "exact",
        tile: int | None = None,
        refine: float = 0.0,
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
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.tile = tile
        if not 0.0 <= refine <= 1.0:
            raise ValueError(f"refine must be a fraction in [0, 1], got {refine}")
        self.refine = float(refine)
        if mode == "fullconv":
            from breastscreen.inference.fullconv import needs_trunk

            needs_trunk(model)
            if backend not in ("torch", "openvino"):
                raise ValueError(f"mode fullconv runs the torch or openvino backend (got backend {backend!r})")
        # the window engine: every window in exact mode, the refined windows in fullconv mode (int8:
        # both this and the trunk below calibrate on the same fixed phantom windows)
        self.engine = build_engine(model, in_channels=self.in_channels, patch=self.patch, backend=backend,
                                   precision=precision, device=self.device, channels_last=channels_last,
                                   cuda_fp16=self.amp)
        self.trunk = None
        if mode == "fullconv" and backend != "torch":
            from breastscreen.inference.engines import build_trunk

            self.trunk = build_trunk(model, in_channels=self.in_channels, patch=self.patch, backend=backend,
                                     precision=self.engine.precision)

    def _run(self, patches: torch.Tensor) -> np.ndarray:
        self.batches_run += 1
        logits = self.engine(patches)
        probs = torch.softmax(logits.float(), dim=1)[:, self.class_index]
        return probs.detach().cpu().numpy()

    def describe(self) -> dict[str, object]:
        """What computes the windows (mode, backend, precision, fallback note): for provenance."""
        return {"mode": self.mode, **self.engine.describe()}

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
        if self.mode == "fullconv":
            yield from self._fullconv(pending, tensors)
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

    def _fullconv(self, pending: dict[int, _Pending],
                  tensors: dict[int, torch.Tensor]) -> Iterator[tuple[int, HeatmapResult]]:
        from breastscreen.inference.fullconv import fullconv_logits

        module = self.engine.module if self.engine.module is not None else self.model
        module.eval()
        for i in sorted(tensors):
            p = pending.pop(i)
            image = tensors.pop(i)
            logits = fullconv_logits(module, image, p.row_off, p.col_off, self.patch, self.in_channels,
                                     self.tile, self.engine.precision, self.engine.channels_last, trunk=self.trunk)
            self.batches_run += 1
            p.probs[:] = torch.softmax(logits, dim=-1)[..., self.class_index].cpu().numpy()
            if self.refine > 0:
                self._refine(p, image)
            yield i, self._finish(p)

    def _refine(self, p: _Pending, image: torch.Tensor) -> None:
        """Re-evaluate exactly the ``refine`` fraction of valid windows with the highest preview probability."""
        ri, ci = np.nonzero(p.valid)
        n = int(np.ceil(self.refine * len(ri)))
        if n == 0:
            return
        score = p.probs[ri, ci].max(axis=1)
        # stable sort of the negated score: ties keep grid order, so the choice is deterministic
        pick = np.argsort(-score, kind="stable")[:n]
        ri, ci = ri[pick], ci[pick]
        for start in range(0, n, self.batch_size):
            rr, cc = ri[start:start + self.batch_size], ci[start:start + self.batch_size]
            patches = extract_patches(image, torch.as_tensor(p.row_off[rr]), torch.as_tensor(p.col_off[cc]), self.patch)
            p.probs[rr, cc] = self._run(patches)

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
