"""Image readers behind one interface: DICOM (pydicom + pylibjpeg codecs), PNG, TIFF and JPEG.

:func:`load_image` returns an :class:`ImageData` whose ``pixels`` are a 2-D ``float32`` array in
the file's own intensity units (after the DICOM Modality LUT / rescale and the VOI LUT or
window the header asks for), with MONOCHROME1 inverted so that brighter always means denser.
Nothing is quantised to 8 bits.

Guards, all raising :class:`~breastscreen.errors.ImageReadError` naming the file:

* DICOM without pixel data (structured reports, presentation states ...) is refused;
* multi-frame DICOM (tomosynthesis, ultrasound cine) is refused unless a ``frame`` is chosen;
* images larger than ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) are refused from the
  header, before any pixel is decoded (decompression bombs).

:func:`read_dicom_header` is the cheap header-only read used by the manifest builder.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from breastscreen.errors import ImageReadError

DEFAULT_MAX_PIXELS: int = 100_000_000
DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom", ".dic", ".ima"})
RASTER_SUFFIXES: frozenset[str] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})
# A believable detector/film pixel size in mm; resolution tags outside it are file-format
# defaults (72 or 96 dpi) rather than a measured spacing.
_PLAUSIBLE_SPACING_MM = (0.005, 1.0)


@dataclass
class ImageData:
    """One decoded 2-D image.

    ``pixels``: float32 array (rows, columns), brighter = denser; ``pixel_spacing``: (row, col)
    in mm or ``None`` when unknown; ``bits_stored``: bit depth of the stored values;
    ``source``: the file path; ``meta``: header facts (photometric interpretation, window ...).
    """

    pixels: np.ndarray
    pixel_spacing: tuple[float, float] | None
    bits_stored: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has a DICOM suffix or the ``DICM`` marker after the 128-byte preamble."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with p.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_pixels(path: str, rows: int, cols: int, frames: int, max_pixels: int | None) -> None:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    n = int(rows) * int(cols)
    if n > limit:
        raise ImageReadError(
            f"{path}: image is {rows}x{cols} = {n:,} pixels per frame, above the limit of {limit:,} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)"
        )
    if rows <= 0 or cols <= 0:
        raise ImageReadError(f"{path}: image has an empty size {rows}x{cols}")


def read_dicom_header(path: str | os.PathLike[str]) -> "pydicom.Dataset":  # noqa: F821
    """Read a DICOM file's header only (no pixel data): fast enough for scanning thousands of files.

    Files with a DICOM suffix but no preamble are read with ``force=True``; a result with no
    recognisable DICOM attribute is refused. Raises :class:`ImageReadError` naming the file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = str(path)
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if Path(path).suffix.lower() not in DICOM_SUFFIXES:
                raise
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{path}: not a valid DICOM file ({exc})") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise ImageReadError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    try:
        known = any(k in ds for k in ("SOPClassUID", "Modality", "StudyInstanceUID", "Rows"))
    except Exception as exc:  # noqa: BLE001 - a garbage header can fail on any element access
        raise ImageReadError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    if not known:
        raise ImageReadError(f"{path}: not a valid DICOM file (no SOP class, modality, study or image attributes)")
    return ds


def _stored_range(ds: Any) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _grey_from_rgb(arr: np.ndarray) -> np.ndarray:
    rgb = arr[..., :3].astype(np.float32)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]  # grey stored as RGB: keep the exact values
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.float32)


def _load_dicom(path: str, frame: int | None, max_pixels: int | None, voi: bool) -> ImageData:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            # defer_size keeps the (possibly huge) pixel bytes on disk until we have checked the size
            ds = pydicom.dcmread(path, defer_size="4 KB")
        except InvalidDicomError:
            if Path(path).suffix.lower() not in DICOM_SUFFIXES:
                raise
            ds = pydicom.dcmread(path, defer_size="4 KB", force=True)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{path}: not a valid DICOM file ({exc})") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise ImageReadError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    return dataset_image(ds, path, frame, max_pixels, voi)


def dataset_image(ds: Any, path: str = "<dataset>", frame: int | None = None, max_pixels: int | None = None,
                  voi: bool = True) -> ImageData:
    """Pixels of an in-memory ``pydicom.Dataset`` with the same LUTs and guards as :func:`load_image`.

    ``path`` only names the image in error messages (the Predictor passes received datasets here).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = ds.get("Modality", "unknown modality")
        raise ImageReadError(f"{path}: DICOM has no pixel data (non-image object, modality {kind})")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: DICOM pixel data without Rows/Columns")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_pixels(path, int(ds.Rows), int(ds.Columns), n_frames, max_pixels)
    if n_frames > 1 and frame is None:
        raise ImageReadError(
            f"{path}: multi-frame DICOM with {n_frames} frames (e.g. tomosynthesis or cine); choose a frame index"
        )
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise ImageReadError(f"{path}: frame must be in [0, {n_frames - 1}], got {frame}")

    try:
        if n_frames > 1:
            arr = pixel_array(ds, index=int(frame))
        else:
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - codec plugins raise many exception types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts)
        raise ImageReadError(
            f"{path}: cannot decode pixel data (transfer syntax {ts_name}): {type(exc).__name__}: {exc}"
        ) from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict[str, Any] = {
        "format": "dicom",
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")) or None,
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None,
        "n_frames": n_frames,
        "voi_applied": False,
    }
    if arr.ndim == 3:  # colour (ultrasound screenshots): collapse to grey
        meta["collapsed_from_samples"] = int(arr.shape[-1])
        pixels = _grey_from_rgb(arr)
        bits = int(ds.get("BitsStored", 8))
    elif arr.ndim == 2:
        bits = int(ds.get("BitsStored", 16))
        lo_s, hi_s = _stored_range(ds)
        ext = np.array([[lo_s, hi_s]], dtype=np.int64)
        try:
            out = apply_modality_lut(arr, ds)
            ext_out = apply_modality_lut(ext, ds)
            if voi and photometric in ("MONOCHROME1", "MONOCHROME2") and (
                "WindowCenter" in ds or "VOILUTSequence" in ds
            ):
                out = apply_voi_lut(out, ds)
                ext_out = apply_voi_lut(ext_out, ds)
                meta["voi_applied"] = True
                if "WindowCenter" in ds:
                    meta["window"] = [float(np.ravel(ds.WindowCenter)[0]), float(np.ravel(ds.WindowWidth)[0])]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ImageReadError(f"{path}: invalid Modality/VOI LUT attributes ({exc})") from None
        pixels = np.asarray(out, dtype=np.float32)
        if photometric == "MONOCHROME1":
            # Invert within the nominal output range so the result does not depend on image content.
            lo = float(min(np.min(ext_out), pixels.min()))
            hi = float(max(np.max(ext_out), pixels.max()))
            pixels = (np.float32(lo + hi) - pixels).astype(np.float32)
            meta["inverted"] = True
    else:
        raise ImageReadError(f"{path}: unexpected pixel array shape {arr.shape}")

    spacing, tag = dicom_pixel_spacing(ds)
    if tag:
        meta["spacing_tag"] = tag
    return ImageData(np.ascontiguousarray(pixels, dtype=np.float32), spacing, bits, path, meta)


def dicom_pixel_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) pixel spacing in mm from a DICOM header and the attribute it came from, or (None, None).

    PixelSpacing, then ImagerPixelSpacing, then the first ultrasound region (cm -> mm); malformed or
    non-positive values count as absent.
    """
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(tag)
        if v is not None and len(v) == 2:
            try:
                r, c = float(v[0]), float(v[1])
            except (TypeError, ValueError):
                continue
            if r > 0 and c > 0:
                return (r, c), tag
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        reg = regions[0]
        # Physical units code 3 = cm (PS3.3 C.8.5.5.1.15)
        if reg.get("PhysicalUnitsXDirection") == 3 and reg.get("PhysicalUnitsYDirection") == 3:
            try:
                dx, dy = abs(float(reg.get("PhysicalDeltaX", 0))), abs(float(reg.get("PhysicalDeltaY", 0)))
            except (TypeError, ValueError):
                dx = dy = 0.0
            if dx > 0 and dy > 0:
                return (dy * 10.0, dx * 10.0), "SequenceOfUltrasoundRegions"
    return None, None


def _png_spacing(info: dict[str, Any]) -> tuple[float, float] | None:
    dpi = info.get("dpi")
    if not dpi or len(dpi) != 2:
        return None
    try:
        dx, dy = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError):
        return None
    if dx <= 0 or dy <= 0:
        return None
    col, row = 25.4 / dx, 25.4 / dy
    lo, hi = _PLAUSIBLE_SPACING_MM
    if not (lo <= row <= hi and lo <= col <= hi):
        return None
    return (round(row, 6), round(col, 6))


def raster_header(path: str | os.PathLike[str]) -> tuple[int, int, tuple[float, float] | None]:
    """(rows, columns, pixel spacing or None) of a PNG/TIFF/JPEG from its header, without decoding pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                spacing = _png_spacing(dict(im.info))
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: refused by Pillow's decompression-bomb guard ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    return h, w, spacing


def _load_raster(path: str, frame: int | None, max_pixels: int | None) -> ImageData:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's warning; its hard error still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                _check_pixels(path, h, w, 1, max_pixels)
                n_frames = int(getattr(im, "n_frames", 1))
                if n_frames > 1:
                    if frame is None:
                        raise ImageReadError(f"{path}: multi-page image with {n_frames} pages; choose a frame index")
                    if not 0 <= int(frame) < n_frames:
                        raise ImageReadError(f"{path}: frame must be in [0, {n_frames - 1}], got {frame}")
                    im.seek(int(frame))
                elif frame not in (None, 0):
                    raise ImageReadError(f"{path}: single-frame image, frame must be 0 or None, got {frame}")
                im.load()
                mode = im.mode
                info = dict(im.info)
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in info else "RGB")
                    mode = im.mode
                arr = np.asarray(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: refused by Pillow's decompression-bomb guard ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None

    meta: dict[str, Any] = {"format": Path(path).suffix.lower().lstrip("."), "mode": mode}
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        if mode == "CMYK":
            raise ImageReadError(f"{path}: CMYK images are not supported")
        pixels = _grey_from_rgb(arr)
        meta["collapsed_from_samples"] = int(arr.shape[-1])
        bits = 8
    elif mode in ("LA", "La"):
        pixels = arr[..., 0].astype(np.float32)
        bits = 8
    elif mode == "1":
        pixels = arr.astype(np.float32)
        bits = 1
    elif mode == "L":
        pixels = arr.astype(np.float32)
        bits = 8
    elif mode.startswith("I;16"):
        pixels = arr.astype(np.float32)
        bits = 16
    elif mode == "I":
        pixels = arr.astype(np.float32)
        # 16-bit PNGs open as mode "I" in some Pillow versions.
        bits = 16 if meta["format"] == "png" or (arr.size and arr.min() >= 0 and arr.max() < 65536) else 32
    elif mode == "F":
        pixels = arr.astype(np.float32)
        bits = 32
    else:
        raise ImageReadError(f"{path}: unsupported image mode {mode!r}")
    if pixels.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D image, got shape {pixels.shape}")
    return ImageData(np.ascontiguousarray(pixels, dtype=np.float32), _png_spacing(info), bits, path, meta)


def load_image(
    path: str | os.PathLike[str],
    frame: int | None = None,
    max_pixels: int | None = None,
    voi: bool = True,
) -> ImageData:
    """Load one image (DICOM, PNG, TIFF or JPEG) as float32 with the guards listed in the module doc.

    ``frame`` selects one frame of a multi-frame file; ``max_pixels`` (per frame) defaults to
    :data:`DEFAULT_MAX_PIXELS`; ``voi=False`` skips the DICOM VOI LUT / window (Modality LUT
    is always applied). Raises :class:`ImageReadError` naming the file and the problem.
    """
    p = str(path)
    if not os.path.isfile(p):
        raise ImageReadError(f"{p}: file not found")
    if frame is not None and (isinstance(frame, bool) or int(frame) < 0):
        raise ImageReadError(f"{p}: frame must be a non-negative integer, got {frame!r}")
    suffix = Path(p).suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return _load_raster(p, frame, max_pixels)
    if is_dicom_file(p):
        return _load_dicom(p, frame, max_pixels, voi)
    raise ImageReadError(
        f"{p}: unsupported file type {suffix or '(no suffix)'}; expected DICOM, PNG, TIFF or JPEG"
    )
