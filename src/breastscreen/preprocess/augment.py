"""Augmentation that moves an image, its masks and its heatmap channels together.

Two layers, in the style of MONAI's ``array`` / ``dictionary`` transforms:

* Array functions take explicit parameters and never draw random numbers:
  :func:`crop_resize`, :func:`warp_affine`, :func:`flip`, :func:`intensity_shift`.
* Dictionary transforms (:class:`NYUWindowJitter`, :class:`MVDCNCropNoise`,
  :class:`AllConvAugment`) draw their parameters ONCE per call from an explicit
  ``numpy.random.Generator`` and apply them to every listed key of a sample dict, with the
  interpolation each kind of array needs:

  ==============  =====================================  ==================
  key group       typical content                         interpolation
  ==============  =====================================  ==================
  ``image_keys``  image [H, W] or [C, H, W]                bicubic
  ``mask_keys``   lesion / breast masks (labels)          nearest neighbour
  ``map_keys``    heatmap channels [C, H, W]              bilinear
  ==============  =====================================  ==================

Images are padded with their own minimum (the background), masks and maps with 0.
Same sample + same seed gives the same output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence

import cv2
import numpy as np

from breastscreen.preprocess.mammo import extract_window

Kind = Literal["image", "mask", "map"]
_INTERP = {"image": cv2.INTER_CUBIC, "mask": cv2.INTER_NEAREST, "map": cv2.INTER_LINEAR}


def _planes(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    a = np.asarray(arr)
    if a.ndim == 2:
        return a[None], True
    if a.ndim == 3:
        return a, False
    raise ValueError(f"expected an array of shape [H, W] or [C, H, W], got {a.shape}")


def _fill(arr: np.ndarray, kind: Kind) -> float:
    return float(np.min(arr)) if kind == "image" and np.size(arr) else 0.0


def _resize_plane(p: np.ndarray, size: tuple[int, int], kind: Kind) -> np.ndarray:
    h, w = size
    if p.shape == (h, w):
        return p.copy()
    src = p.astype(np.float32)  # exact for label values; cv2 lacks bool/int64 support
    out = cv2.resize(src, (w, h), interpolation=_INTERP[kind])
    if kind == "image":  # bicubic overshoots; stay inside the input range
        out = np.clip(out, float(p.min()), float(p.max()))
    return out if kind != "mask" else out.astype(p.dtype)


def crop_resize(arr: np.ndarray, box: Sequence[int], size: tuple[int, int], kind: Kind = "image",
                fill: float | None = None) -> np.ndarray:
    """Cut ``box`` (x0, y0, x1, y1; may leave the image, then padded) and resize it to ``size`` (h, w)."""
    planes, squeeze = _planes(arr)
    f = _fill(planes, kind) if fill is None else fill
    cut = extract_window(planes, box, fill=f)
    out = np.stack([_resize_plane(p, size, kind) for p in cut])
    return out[0] if squeeze else out


def warp_affine(arr: np.ndarray, matrix: np.ndarray, kind: Kind = "image", fill: float | None = None) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` (input pixel -> output pixel, same output size) to every plane."""
    planes, squeeze = _planes(arr)
    f = _fill(planes, kind) if fill is None else fill
    h, w = planes.shape[-2:]
    mat = np.asarray(matrix, dtype=np.float64)
    if mat.shape != (2, 3):
        raise ValueError(f"affine matrix must have shape (2, 3), got {mat.shape}")
    out = []
    for p in planes:
        src = p.astype(np.float32)
        o = cv2.warpAffine(src, mat, (w, h), flags=_INTERP[kind], borderMode=cv2.BORDER_CONSTANT, borderValue=f)
        if kind == "image":
            o = np.clip(o, min(float(p.min()), f), max(float(p.max()), f))
        out.append(o.astype(p.dtype) if kind == "mask" else o)
    res = np.stack(out)
    return res[0] if squeeze else res


def flip(arr: np.ndarray, horizontal: bool, vertical: bool) -> np.ndarray:
    """Flip the last two axes (left-right and/or up-down)."""
    a = np.asarray(arr)
    if horizontal:
        a = a[..., ::-1]
    if vertical:
        a = a[..., ::-1, :]
    return np.ascontiguousarray(a)


def intensity_shift(arr: np.ndarray, shift: float, relative_to_std: bool = True) -> np.ndarray:
    """Add ``shift`` (times the image's std when ``relative_to_std``) to every pixel."""
    a = np.asarray(arr, dtype=np.float32)
    return a + np.float32(shift * (float(a.std()) if relative_to_std else 1.0))


def affine_matrix(shape: tuple[int, int], angle: float = 0.0, shear: float = 0.0, zoom: float = 1.0,
                  translate: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 matrix: rotation ``angle`` and shear ``shear`` (degrees), ``zoom`` about the centre, then a
    translation ``(dx, dy)`` in pixels."""
    h, w = shape
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    sh = np.array([[1.0, np.tan(np.deg2rad(shear))], [0.0, 1.0]])
    lin = zoom * rot @ sh
    t = c - lin @ c + np.asarray(translate, dtype=np.float64)
    return np.concatenate([lin, t[:, None]], axis=1)


@dataclass
class DictTransform:
    """Base of the dictionary transforms: which keys hold images, masks and maps."""

    image_keys: Sequence[str] = ("image",)
    mask_keys: Sequence[str] = ()
    map_keys: Sequence[str] = ()

    def _groups(self) -> Iterator[tuple[str, Kind]]:
        for k in self.image_keys:
            yield k, "image"
        for k in self.mask_keys:
            yield k, "mask"
        for k in self.map_keys:
            yield k, "map"

    def _shape(self, sample: Mapping[str, Any]) -> tuple[int, int]:
        shapes = {k: np.shape(sample[k])[-2:] for k, _ in self._groups() if k in sample}
        if not shapes:
            raise KeyError(f"sample has none of the keys {[k for k, _ in self._groups()]}")
        if len(set(shapes.values())) != 1:
            raise ValueError(f"all transformed arrays must share one height/width, got {shapes}")
        return tuple(next(iter(shapes.values())))  # type: ignore[return-value]

    def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
        """Draw this transform's parameters (one draw per sample)."""
        raise NotImplementedError

    def identity(self, shape: tuple[int, int]) -> dict[str, Any]:
        """Parameters that leave the geometry as the un-augmented (test-time) pipeline has it."""
        raise NotImplementedError

    def apply(self, arr: np.ndarray, params: dict[str, Any], kind: Kind) -> np.ndarray:
        """Apply drawn parameters to one array of the given kind."""
        raise NotImplementedError

    def apply_params(self, sample: Mapping[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Apply fixed parameters to every listed key; other keys are copied through."""
        out = dict(sample)
        for key, kind in self._groups():
            if key in sample:
                out[key] = self.apply(np.asarray(sample[key]), params, kind)
        return out

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw parameters once from ``rng`` and apply them to all keys."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return self.apply_params(sample, self.draw(rng, self._shape(sample)))


@dataclass
class NYUWindowJitter(DictTransform):
    """NYU classifier augmentation: jitter the window's size and position, resize back to model size.

    ``window`` is the base (x0, y0, x1, y1) box (``preprocessing["window"]``) and the output
    size is its size. Each side's position and the window's height and width move by a
    uniform integer in ``[-max_jitter, max_jitter]`` pixels (100 px at full resolution, so
    pass ``round(100 * scale)``); parts outside the image are padded.
    """

    window: tuple[int, int, int, int] = (0, 0, 1, 1)
    max_jitter: int = 100

    def _size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.window
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"window must have x1 > x0 and y1 > y0, got {self.window}")
        return (y1 - y0, x1 - x0)

    def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
        h, w = self._size()
        j = int(self.max_jitter)
        dx, dy, dw, dh = (int(v) for v in rng.integers(-j, j + 1, size=4))
        dw, dh = max(dw, 1 - w), max(dh, 1 - h)
        x0, y0 = self.window[0] + dx, self.window[1] + dy
        return {"box": (x0, y0, x0 + w + dw, y0 + h + dh)}

    def identity(self, shape: tuple[int, int]) -> dict[str, Any]:
        return {"box": tuple(self.window)}

    def apply(self, arr: np.ndarray, params: dict[str, Any], kind: Kind) -> np.ndarray:
        return crop_resize(arr, params["box"], self._size(), kind)


@dataclass
class MVDCNCropNoise(DictTransform):
    """MV-DCN augmentation (Geras et al. 2017): move the fixed crop window by random noise.

    The window keeps its size; its position moves by a uniform integer in ``[-max_noise, max_noise]``
    in each direction (pass ``round(100 * scale)`` for 100 px at full resolution). With
    ``one_sided`` the horizontal move is in ``[0, max_noise]`` only: the window is anchored at the
    chest wall (column 0 of an oriented image), so it never moves past the image edge there.
    """

    window: tuple[int, int, int, int] = (0, 0, 1, 1)
    max_noise: int = 100
    one_sided: bool = False

    def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
        j = int(self.max_noise)
        dx, dy = (int(v) for v in rng.integers(-j, j + 1, size=2))
        if self.one_sided:
            dx = abs(dx)
        x0, y0, x1, y1 = self.window
        return {"box": (x0 + dx, y0 + dy, x1 + dx, y1 + dy)}

    def identity(self, shape: tuple[int, int]) -> dict[str, Any]:
        return {"box": tuple(self.window)}

    def apply(self, arr: np.ndarray, params: dict[str, Any], kind: Kind) -> np.ndarray:
        return extract_window(arr, params["box"], fill=_fill(arr, kind))


@dataclass
class AllConvAugment(DictTransform):
    """All-convolutional classifier augmentation (Shen et al. 2019): flips, rotation, shear, zoom,
    intensity shift. Ranges: rotation ``+-max_rotation`` deg, shear ``+-max_shear`` deg, zoom in
    ``zoom_range``, intensity shift ``+-max_shift`` image standard deviations (images only)."""

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    max_rotation: float = 25.0
    max_shear: float = 12.0
    zoom_range: tuple[float, float] = (0.8, 1.2)
    max_shift: float = 0.2

    def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
        u = rng.random(6)
        return {
            "hflip": bool(u[0] < self.hflip_p),
            "vflip": bool(u[1] < self.vflip_p),
            "angle": float((2 * u[2] - 1) * self.max_rotation),
            "shear": float((2 * u[3] - 1) * self.max_shear),
            "zoom": float(self.zoom_range[0] + u[4] * (self.zoom_range[1] - self.zoom_range[0])),
            "shift": float((2 * u[5] - 1) * self.max_shift),
        }

    def identity(self, shape: tuple[int, int]) -> dict[str, Any]:
        return {"hflip": False, "vflip": False, "angle": 0.0, "shear": 0.0, "zoom": 1.0, "shift": 0.0}

    def apply(self, arr: np.ndarray, params: dict[str, Any], kind: Kind) -> np.ndarray:
        out = flip(arr, params["hflip"], params["vflip"])
        if params["angle"] or params["shear"] or params["zoom"] != 1.0:
            mat = affine_matrix(out.shape[-2:], params["angle"], params["shear"], params["zoom"])
            out = warp_affine(out, mat, kind)
        if kind == "image" and params["shift"]:
            out = intensity_shift(out, params["shift"])
        return out


@dataclass
class Compose:
    """Apply dictionary transforms in order; each draws its own parameters from the same ``rng``."""

    transforms: Sequence[DictTransform] = field(default_factory=list)

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Transform ``sample`` with one draw per transform."""
        out = dict(sample)
        for t in self.transforms:
            out = t(out, rng)
        return out

    def identity(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Apply every transform with its identity parameters (the test-time geometry)."""
        out = dict(sample)
        for t in self.transforms:
            out = t.apply_params(out, t.identity(t._shape(out)))
        return out


def tta_samples(
    sample: Mapping[str, Any], n: int, seed: int, transform: DictTransform | Compose | None = None,
    include_identity: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` augmented copies of ``sample`` deterministically from ``seed``.

    With ``include_identity`` the first copy is the un-augmented sample (each transform's
    identity parameters, e.g. the base window), so averaging over ``n = 1`` equals no TTA.
    The remaining copies come from one ``numpy.random.default_rng(seed)`` in order, so the
    same ``(sample, n, seed)`` always gives the same copies. The default transform is
    :class:`AllConvAugment` on the ``image`` key.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t = transform if transform is not None else AllConvAugment()
    rng = np.random.default_rng(seed)
    for i in range(n):
        if i == 0 and include_identity:
            if isinstance(t, Compose):
                yield t.identity(sample)
            else:
                yield t.apply_params(sample, t.identity(t._shape(sample)))
        else:
            yield t(sample, rng)
