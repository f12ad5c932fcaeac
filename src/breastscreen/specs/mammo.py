"""Specs of the mammography families: four-view models, per-view whole-image models, patch classifiers.

Preparation (shared by every mammography family): an image that ``breastscreen preprocess``
wrote is read back in original intensity units; any other image (path, array, Dataset) is
preprocessed in memory with the same function at the spec's scale and quantised exactly as the
PNG would store it, so both routes give the same array.

Four-view input builder (:meth:`MultiViewSpec.exam_rows`, used by the training datasets;
:meth:`MultiViewSpec.exam_plan` builds the same rows a batch at a time for the Predictor):

* per view, the model window (``record[spec.window]``: the NYU window of the view's angle, or
  the MV-DCN window) is cut out, in training with the family's random augmentation (NYU window
  jitter / MV-DCN crop noise, ``jitter_px`` full-resolution pixels scaled), with TTA copy 0
  un-augmented and copies 1.. drawn from a seed of (run seed, exam, view, image index);
* the image channel is standardised over the window; heatmap channels (benign, malignant) are
  cut with the same draw and clipped to [0, 1];
* a missing view is an all-zero input flagged ``present = False``;
* a view with several images: row ``c`` uses image ``c mod n`` of every view, for ``c`` up to the
  largest image count, each with every TTA copy; the rows are averaged after the model
  (training draws one random image per view instead).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from breastscreen.data.types import MG_VIEWS, view_angle
from breastscreen.errors import BreastscreenError
from breastscreen.labels import BIRADS_CLASSES, BREAST_LABELS, HEATMAP_CHANNELS, PATCH_CLASSES, PATCH_SIZE, PATCH_STRIDE
from breastscreen.specs.base import ModelSpec, PreparedImage, register_spec
from breastscreen.specs.sources import ImageLike, is_preprocessed, preprocessed_mask, preprocessed_pixels, read_source

BIRADS_COLUMNS: tuple[str, ...] = tuple(f"birads_{c}" for c in BIRADS_CLASSES)
JITTER_FULL_RES = 100.0  # pixels at full resolution (Wu et al. 2019 SI; Geras et al. 2017)

#: heatmaps of one image: (exam_id, view, index, prepared image) -> [2, H, W]
HeatmapSource = Callable[[str, str, int, PreparedImage], np.ndarray]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and identifying parts (exam id, view, index), stable across runs."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return (int(seed) * 1_000_003 + zlib.crc32(text)) % (2**63)


def prepare_mammogram(image: ImageLike, view: str, scale: float, suppress_background: bool = True,
                      need_mask: bool = True) -> PreparedImage:
    """One mammogram ready for an input builder (see the module docstring)."""
    from breastscreen.preprocess.intensity import dequantise, quantise
    from breastscreen.preprocess.mammo import preprocess_view

    if is_preprocessed(image):
        record = dict(image.preprocessing)
        stored_scale = record.get("scale")
        if stored_scale is None or not np.isclose(float(stored_scale), scale):
            raise BreastscreenError(
                f"{image.path}: preprocessed at scale {stored_scale}, the model needs {scale}; give the raw images"
            )
        pixels = preprocessed_pixels(image)
        # The mask is only needed to place a window preprocessing did not store.
        stored_windows = all(k in record for k in ("window", "mvdcn_window"))
        mask = preprocessed_mask(image, pixels.shape) if need_mask and not stored_windows else None
        return PreparedImage(pixels, record, mask, image.path)
    data = read_source(image)
    res = preprocess_view(data.pixels, data.pixel_spacing, view, scale, suppress_background=suppress_background,
                          name=data.source)
    stored, info = quantise(res.image, bits=16)
    record = {**res.record, "intensity": info}
    return PreparedImage(dequantise(stored, info), record, res.mask, data.source)


class _MammoSpec(ModelSpec):
    """Fields every mammography spec has."""

    scale: float = Field(1.0, gt=0, le=2, description="image scale: 1 = 0.1 mm pixels (full resolution)")
    suppress_background: bool = True
    channels: tuple[str, ...] = ("image",)

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = (("image",), ("image", *HEATMAP_CHANNELS))
        if tuple(value) not in allowed:
            raise ValueError(f"must be one of {[list(a) for a in allowed]}")
        return tuple(value)

    @property
    def in_channels(self) -> int:
        """Input channels per view."""
        return len(self.channels)

    @property
    def needs_heatmaps(self) -> bool:
        """True when the model takes the patch classifier's heatmaps as extra channels."""
        return len(self.channels) > 1

    def prepare(self, image: ImageLike, view: str) -> PreparedImage:
        """One image of ``view`` ready for this spec's input builder."""
        return prepare_mammogram(image, view, self.scale, self.suppress_background)


@register_spec
class MultiViewSpec(_MammoSpec):
    """NYU four-view models (cancer or BI-RADS) and the MV-DCN (BI-RADS)."""

    family: Literal["multiview"] = "multiview"
    kind: Literal["nyu", "mvdcn"] = "nyu"
    task: Literal["cancer", "birads"] = "cancer"
    window: Literal["window", "mvdcn_window"] = "window"
    jitter_px: float = Field(JITTER_FULL_RES, ge=0, le=1000)
    # MV-DCN crop noise: horizontal moves only away from the chest wall (Geras et al. 2017)
    one_sided_horizontal: bool = True

    @property
    def value_columns(self) -> tuple[str, ...]:
        """CSV value columns of the predictions."""
        if self.task == "birads":
            return (*BREAST_LABELS, *BIRADS_COLUMNS, "entropy")
        return tuple(BREAST_LABELS)

    def window_shape(self, view: str) -> tuple[int, int]:
        """(h, w) of the model window of ``view`` at this scale."""
        from breastscreen.preprocess.mammo import window_size

        return window_size("MVDCN" if self.window == "mvdcn_window" else view_angle(view), self.scale)

    def base_window(self, prepared: PreparedImage, view: str) -> tuple[int, int, int, int]:
        """The un-augmented window (x0, y0, x1, y1): the stored one, else placed on the breast mask."""
        from breastscreen.preprocess.mammo import place_window

        size = self.window_shape(view)
        box = prepared.record.get(self.window)
        if box is not None and (box[3] - box[1], box[2] - box[0]) == size:
            return tuple(int(v) for v in box)  # type: ignore[return-value]
        if prepared.mask is None:
            raise BreastscreenError(f"{prepared.source}: no stored {self.window} and no breast mask to place one")
        return place_window(prepared.mask, size)

    def _transform(self, box: tuple[int, int, int, int], with_maps: bool) -> Any:
        from breastscreen.preprocess import augment

        jitter = max(0, int(round(self.jitter_px * self.scale)))
        keys = ("maps",) if with_maps else ()
        if self.kind == "mvdcn":
            return augment.MVDCNCropNoise(image_keys=("image",), map_keys=keys, window=box, max_noise=jitter,
                                          one_sided=self.one_sided_horizontal)
        return augment.NYUWindowJitter(image_keys=("image",), map_keys=keys, window=box, max_jitter=jitter)

    def _view_sample(self, prepared: PreparedImage, view: str, maps: np.ndarray | None) -> tuple[dict[str, Any], Any]:
        """The sample dict (image, optional maps) of one image and its window transform."""
        if (maps is not None) != self.needs_heatmaps:
            raise BreastscreenError(f"{prepared.source}: the model takes {list(self.channels)}, "
                                    f"{'got' if maps is not None else 'no'} heatmaps")
        sample: dict[str, Any] = {"image": prepared.pixels}
        if maps is not None:
            if maps.shape[-2:] != prepared.pixels.shape:
                raise BreastscreenError(f"{prepared.source}: heatmaps {maps.shape[-2:]} do not match the image "
                                        f"{prepared.pixels.shape}; were they made at another scale?")
            sample["maps"] = np.asarray(maps, dtype=np.float32)
        return sample, self._transform(self.base_window(prepared, view), maps is not None)

    @staticmethod
    def _copy_params(t: Any, shape: tuple[int, int], rng: np.random.Generator | None, n: int) -> list[dict[str, Any]]:
        """Window parameters of ``n`` copies: copy 0 un-augmented unless ``rng`` drives every copy (n = 1).

        Drawn in copy order before any copy is built, so building copies lazily (a few TTA rows at
        a time) gives exactly the arrays that building them all at once gives.
        """
        return [t.identity(shape) if rng is None or (i == 0 and n > 1) else t.draw(rng, shape) for i in range(n)]

    def _build_row(self, sample: dict[str, Any], t: Any, params: dict[str, Any], out: np.ndarray) -> None:
        """Write one input [C, h, w] for window ``params`` into ``out``."""
        from breastscreen.preprocess.mammo import standardize

        copy = t.apply_params(sample, params)
        out[0] = standardize(copy["image"])
        if "maps" in copy:
            np.clip(copy["maps"], 0.0, 1.0, out=out[1:])

    def view_inputs(self, prepared: PreparedImage, view: str, maps: np.ndarray | None, *,
                    rng: np.random.Generator | None = None, n: int = 1) -> np.ndarray:
        """Inputs [n, C, h, w] of one image: copy 0 un-augmented unless ``rng`` is given for every copy.

        Training passes its epoch generator and ``n=1`` (one augmented copy); TTA passes ``n``
        copies and a generator for copies 1..n-1 (:meth:`exam_rows`).
        """
        sample, t = self._view_sample(prepared, view, maps)
        params = self._copy_params(t, prepared.pixels.shape, rng, n)
        out = np.empty((n, self.in_channels, *self.window_shape(view)), np.float32)
        for i, p in enumerate(params):
            self._build_row(sample, t, p, out[i])
        return out

    def exam_plan(
        self,
        exam_id: str,
        views: dict[str, Sequence[PreparedImage]],
        maps: dict[str, Sequence[np.ndarray | None]] | None = None,
        *,
        n_tta: int = 1,
        seed: int = 0,
    ) -> "ExamRows":
        """The TTA rows of one exam as an :class:`ExamRows` that builds them a batch at a time.

        ``plan.take(slice(0, plan.rows))`` equals :meth:`exam_rows` without ``rng``; a full-resolution
        exam with 10 TTA copies holds 2.5 GB of inputs, a batch of one row 0.25 GB.
        """
        if n_tta < 1:
            raise BreastscreenError(f"tta must be >= 1, got {n_tta}")
        present_views = [v for v in MG_VIEWS if views.get(v)]
        if not present_views:
            raise BreastscreenError(f"exam {exam_id}: no mammography image")
        maps = maps or {}
        n_combo = max(len(views[v]) for v in present_views)
        sources: dict[str, list[tuple[dict[str, Any], Any, list[dict[str, Any]]]]] = {}
        for view in present_views:
            images = list(views[view])
            view_maps = list(maps.get(view) or [None] * len(images))
            sources[view] = []
            for k, image in enumerate(images):
                sample, t = self._view_sample(image, view, view_maps[k])
                tta_rng = np.random.default_rng(derive_seed(seed, exam_id, view, k)) if n_tta > 1 else None
                sources[view].append((sample, t, self._copy_params(t, image.pixels.shape, tta_rng, n_tta)))
        return ExamRows(self, n_combo * n_tta, n_tta, sources)

    def exam_rows(
        self,
        exam_id: str,
        views: dict[str, Sequence[PreparedImage]],
        maps: dict[str, Sequence[np.ndarray | None]] | None = None,
        *,
        rng: np.random.Generator | None = None,
        n_tta: int = 1,
        seed: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Model inputs of one exam: ``{view: [R, C, h, w]}`` and ``{view: [R] bool}`` (see module doc).

        With ``rng`` (training) each view gives one augmented row from one random image; without
        it, ``R`` = largest image count x ``n_tta`` rows whose model outputs are averaged.
        """
        if rng is None:
            plan = self.exam_plan(exam_id, views, maps, n_tta=n_tta, seed=seed)
            return plan.take(slice(0, plan.rows))
        present_views = [v for v in MG_VIEWS if views.get(v)]
        if not present_views:
            raise BreastscreenError(f"exam {exam_id}: no mammography image")
        maps = maps or {}
        inputs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for view in MG_VIEWS:
            images = list(views.get(view) or [])
            if not images:
                inputs[view] = np.zeros((1, self.in_channels, *self.window_shape(view)), np.float32)
                present[view] = np.zeros(1, bool)
                continue
            view_maps = list(maps.get(view) or [None] * len(images))
            k = int(rng.integers(len(images))) if len(images) > 1 else 0
            inputs[view] = self.view_inputs(images[k], view, view_maps[k], rng=rng, n=1)
            present[view] = np.ones(1, bool)
        return inputs, present

    def postprocess(self, probs: np.ndarray) -> dict[str, float | None]:
        """CSV values from the averaged model probabilities ([4] cancer or [3] BI-RADS)."""
        values: dict[str, float | None] = {c: None for c in self.value_columns}
        if self.task == "birads":
            q = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
            values.update({c: float(p) for c, p in zip(BIRADS_COLUMNS, probs)})
            values["entropy"] = float(-(q * np.log(q)).sum())
        else:
            values.update({c: float(p) for c, p in zip(BREAST_LABELS, probs)})
        return values


class ExamRows:
    """Lazily built TTA rows of one exam (:meth:`MultiViewSpec.exam_plan`).

    Row ``r`` is TTA copy ``r % n_tta`` of combination ``r // n_tta``, which uses image
    ``combination % n`` of a view with ``n`` images; missing views are zero and flagged absent.
    """

    def __init__(self, spec: MultiViewSpec, rows: int, n_tta: int,
                 sources: dict[str, list[tuple[dict[str, Any], Any, list[dict[str, Any]]]]]) -> None:
        """``sources``: per present view, per image its sample, window transform and copy parameters."""
        self.spec, self.rows, self.n_tta, self._sources = spec, int(rows), int(n_tta), sources

    def take(self, sl: slice) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Inputs ``{view: [r, C, h, w]}`` and presence ``{view: [r] bool}`` of the rows in ``sl``."""
        idx = range(self.rows)[sl]
        inputs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for view in MG_VIEWS:
            shape = (len(idx), self.spec.in_channels, *self.spec.window_shape(view))
            images = self._sources.get(view)
            if not images:
                inputs[view], present[view] = np.zeros(shape, np.float32), np.zeros(len(idx), bool)
                continue
            out = np.empty(shape, np.float32)
            for j, r in enumerate(idx):
                sample, t, params = images[(r // self.n_tta) % len(images)]
                self.spec._build_row(sample, t, params[r % self.n_tta], out[j])
            inputs[view], present[view] = out, np.ones(len(idx), bool)
        return inputs, present


@register_spec
class PatchSpec(ModelSpec):
    """Patch classifiers run as a sliding window: patch size and stride at the image scale, classes."""

    family: Literal["patch"] = "patch"
    scale: float = Field(1.0, gt=0, le=2)
    patch_size: int = Field(256, ge=8, le=2048)
    stride: int | None = Field(None, ge=1, le=2048)
    classes: tuple[str, ...] = tuple(PATCH_CLASSES)

    value_columns: ClassVar[tuple[str, ...]] = tuple(HEATMAP_CHANNELS)

    @property
    def target_stride(self) -> int:
        """The stride asked of the window placement: stored, or the paper's 70/256 of the patch size."""
        return self.stride or max(1, round(self.patch_size * PATCH_STRIDE / PATCH_SIZE))


def patch_geometry(scale: float, metadata: dict[str, Any] | None = None) -> tuple[int, int]:
    """Patch size and target stride for images preprocessed at ``scale``.

    ``round(256 * scale)`` and ``round(70 * scale)`` (at least 1 pixel each), unless the patch
    model's metadata names its ``patch_size`` (then the stride is the metadata's ``patch_stride``
    or the paper's 70/256 ratio of that size).
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
