"""Image readers behind one interface: DICOM (pydicom + pylibjpeg codecs), PNG, TIFF and JPEG.

:func:`load_image` returns an :class:`ImageData` whose ``pixels`` are a 2-D ``float32`` array in
the file's own intensity units (after the DICOM Modality LUT / rescale and the VOI LUT or
window the header asks for), with MONOCHROME1 inverted so that brighter always means denser.
Nothing is quantised to 8 bits.

Guards, all raising :class:`~breastscreen.errors.ImageReadError` naming the file:

* DICOM without pixel data (structured reports, presentation states ...) is refused;
* multi-frame DICOM (tomosynthesis, ultrasound cine) is refused unless a ``frame`` is chosen;
* images larger than ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) are refused from the
  header, before any pixel is decoded (decompression bombs);
* only regular files are opened (FIFOs, devices and folders are refused before any read);
* DICOM attributes, native pixel-data length and compressed streams (JPEG SOF, JPEG 2000 SIZ,
  fragment lengths, end markers, codec vs transfer syntax) are checked against each other
  before decoding (:mod:`breastscreen.data.dicom_checks`); decoded pixels must have the
  header's shape; PALETTE COLOR is rendered through its lookup table; 16-bit pixels that look
  byte-swapped or wrongly signed are refused; LUTs must give finite values;
* pixel spacing that is not finite or outside :data:`PLAUSIBLE_SPACING_MM` counts as unknown
  (``meta["spacing_rejected"]`` says what was dropped).

:func:`read_dicom_header` is the cheap header-only read used by the manifest builder.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from breastscreen.errors import ImageReadError
from breastscreen.safety import check_regular_file

DEFAULT_MAX_PIXELS: int = 100_000_000
DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom", ".dic", ".ima"})
RASTER_SUFFIXES: frozenset[str] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})
# Pixel spacing (mm) outside this range is a damaged or hostile value, never a real pixel size
# (detectors and digitisers: 0.025-0.2 mm; ultrasound up to about 1 mm; images reduced for CPU
# experiments a few mm), in DICOM tags and PNG/TIFF resolution alike.
PLAUSIBLE_SPACING_MM = (0.005, 5.0)


@dataclass
class ImageData:
    """One decoded 2-D image.

    ``pixels``: float32 array (rows, columns), brighter = denser; ``pixel_spacing``: (row, col)
    in mm or ``None`` when unknown; ``bits_stored``: bit depth of the stored values;
    ``source``: the file path; ``meta``: header facts (photometric interpretation, window ...);
    ``colour``: the (rows, columns, 3) samples of a colour image before it was collapsed to grey
    (ultrasound screen captures: coloured marks are a cue of annotation removal), else ``None``.
    """

    pixels: np.ndarray
    pixel_spacing: tuple[float, float] | None
    bits_stored: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    colour: np.ndarray | None = None


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


def _dcmread(path: str, **kwargs: Any) -> Any:
    """``pydicom.dcmread`` with every failure turned into :class:`ImageReadError` naming the file.

    Deflated files are inflated with a cap first (:func:`~breastscreen.data.dicom_checks.check_deflated`);
    files with a DICOM suffix but no preamble are read with ``force=True``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from breastscreen.data.dicom_checks import check_deflated

    check_deflated(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # malformed values are reported where they are used
            try:
                return pydicom.dcmread(path, **kwargs)
            except InvalidDicomError:
                if Path(path).suffix.lower() not in DICOM_SUFFIXES:
                    raise
                return pydicom.dcmread(path, force=True, **kwargs)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{path}: not a valid DICOM file ({exc})") from None
    except RecursionError:
        raise ImageReadError(f"{path}: DICOM nested too deeply (sequences within sequences)") from None
    except MemoryError:
        raise ImageReadError(f"{path}: DICOM declares more data than can be held in memory") from None
    except Exception as exc:  # noqa: BLE001 - pydicom and zlib raise many types for damaged files
        raise ImageReadError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None


def read_dicom_header(path: str | os.PathLike[str]) -> "pydicom.Dataset":  # noqa: F821
    """Read a DICOM file's header only (no pixel data): fast enough for scanning thousands of files.

    Files with a DICOM suffix but no preamble are read with ``force=True``; a result with no
    recognisable DICOM attribute is refused. Raises :class:`ImageReadError` naming the file.
    """
    path = str(path)
    check_regular_file(path, ImageReadError)
    ds = _dcmread(path, stop_before_pixels=True)
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
    # defer_size keeps the (possibly huge) pixel bytes on disk until the header has been checked
    ds = _dcmread(path, defer_size="4 KB")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # A data set without file meta (read with force=True): record the encoding it was read in,
        # which the pixel decoders need.
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = getattr(ds, "original_encoding", (True, True))
        uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = uid
    return dataset_image(ds, path, frame, max_pixels, voi)


def roughness(arr: np.ndarray) -> float:
    """Mean absolute difference of horizontally neighbouring pixels over the standard deviation (sampled rows).

    About 1.13 for independent noise, well below 0.5 for any radiograph or photograph.
    """
    step = max(1, arr.shape[0] // 256)
    a = arr[::step].astype(np.float64)
    sd = float(a.std())
    if sd == 0 or a.shape[1] < 2:
        return 0.0
    return float(np.abs(np.diff(a, axis=1)).mean() / sd)


def _big_jumps(arr: np.ndarray, limit: float) -> int:
    """Neighbouring-pixel steps larger than ``limit`` (sampled rows)."""
    step = max(1, arr.shape[0] // 256)
    return int((np.abs(np.diff(arr[::step].astype(np.int64), axis=1)) > limit).sum())


def _check_stored_values(arr: np.ndarray, module: Any, path: str) -> None:
    """Refuse 16-bit pixels that look byte-swapped or wrongly signed (see docs/data.md).

    Both tests compare the image with a reinterpretation of its bytes: real images are smooth,
    so when the byte-swapped reading is several times smoother than the stored one, the byte
    order is wrong; when the unsigned reading of signed pixels has far fewer jumps across half
    the value range (the wrap-around at the sign bit), PixelRepresentation is wrong.
    """
    if arr.ndim != 2 or arr.dtype.itemsize != 2 or min(arr.shape) < 8:
        return
    rough = roughness(arr)
    if rough >= 0.3:
        swapped = roughness(arr.byteswap())
        if swapped < rough / 4:
            raise ImageReadError(
                f"{path}: pixel values look byte-swapped (neighbouring pixels vary {rough / max(swapped, 1e-9):.0f}x "
                "less with the other byte order); the file's byte order or transfer syntax is wrong"
            )
    if module.signed and arr.dtype.kind == "i" and int(arr.min()) < 0:
        if int(arr.max()) <= 0 and module.photometric in ("MONOCHROME1", "MONOCHROME2"):
            # No radiograph stores every pixel at or below zero: the sign bit is a data bit here.
            raise ImageReadError(
                f"{path}: pixel values look wrongly signed (every stored value is <= 0 with PixelRepresentation 1); "
                "the file's PixelRepresentation is wrong"
            )
        half = float(1 << (module.bits_stored - 1))
        unsigned = arr.view(np.uint16) & np.uint16((1 << module.bits_stored) - 1)
        as_signed, as_unsigned = _big_jumps(arr, half), _big_jumps(unsigned, half)
        if as_signed > 4 * as_unsigned + 10:
            raise ImageReadError(
                f"{path}: pixel values look wrongly signed (PixelRepresentation 1 gives {as_signed} jumps across half "
                f"the value range, the unsigned reading {as_unsigned}); the file's PixelRepresentation is wrong"
            )


def dataset_image(ds: Any, path: str = "<dataset>", frame: int | None = None, max_pixels: int | None = None,
                  voi: bool = True) -> ImageData:
    """Pixels of an in-memory ``pydicom.Dataset`` with the same LUTs and guards as :func:`load_image`.

    ``path`` only names the image in error messages (the Predictor passes received datasets here).
    The header and any compressed stream are checked before decoding
    (:mod:`breastscreen.data.dicom_checks`).
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    from breastscreen.data.dicom_checks import (
        NATIVE_SYNTAXES,
        check_encapsulated,
        check_native_length,
        header_text,
        pixel_module,
        transfer_syntax,
    )

    try:
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception as exc:  # noqa: BLE001 - damaged data sets fail on element access
        raise ImageReadError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if not has_pixels:
        kind = header_text(ds, "Modality") or "unknown modality"
        raise ImageReadError(f"{path}: DICOM has no pixel data (non-image object, modality {kind})")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: DICOM pixel data without Rows/Columns")
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    module = pixel_module(ds, path, limit)
    n_frames = module.frames
    if n_frames > 1 and frame is None:
        raise ImageReadError(
            f"{path}: multi-frame DICOM with {n_frames} frames (e.g. tomosynthesis or cine); choose a frame index"
        )
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise ImageReadError(f"{path}: frame must be in [0, {n_frames - 1}], got {frame}")
    syntax = transfer_syntax(ds, path)
    if "PixelData" in ds:
        if syntax in NATIVE_SYNTAXES:
            check_native_length(ds, path, module)
        else:
            check_encapsulated(ds, path, module, syntax)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # codec chatter; the checks above and below decide
            arr = pixel_array(ds, index=int(frame)) if n_frames > 1 else ds.pixel_array
    except MemoryError:
        raise ImageReadError(f"{path}: pixel data too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - codec plugins raise many exception types
        raise ImageReadError(
            f"{path}: cannot decode pixel data (transfer syntax {syntax}): {type(exc).__name__}: {exc}"
        ) from None
    expected_shape = (module.rows, module.columns) + ((module.samples,) if module.samples > 1 else ())
    if tuple(arr.shape) != expected_shape:
        raise ImageReadError(f"{path}: decoded pixels have shape {arr.shape}, the header says {expected_shape}")

    photometric = module.photometric
    colour: np.ndarray | None = None
    meta: dict[str, Any] = {
        "format": "dicom",
        "photometric": photometric,
        "modality": header_text(ds, "Modality") or None,
        "sop_instance_uid": header_text(ds, "SOPInstanceUID") or None,
        "n_frames": n_frames,
        "voi_applied": False,
    }
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001 - malformed palette descriptors fail in many ways
            raise ImageReadError(f"{path}: invalid palette colour lookup table ({type(exc).__name__}: {exc})") from None
        meta["palette_applied"] = True
    if arr.ndim == 3:  # colour (ultrasound screenshots, palette images): collapse to grey
        meta["collapsed_from_samples"] = int(arr.shape[-1])
        pixels = _grey_from_rgb(arr)
        colour = arr[..., :3]
        bits = 8 if arr.dtype.itemsize == 1 else 16
    elif arr.ndim == 2:
        if arr.dtype.kind in "iu":
            _check_stored_values(arr, module, path)
        bits = module.bits_stored
        lo_s, hi_s = _stored_range(ds)
        ext = np.array([[lo_s, hi_s]], dtype=np.int64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a LUT that does not fit its data must not pass quietly
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
        except Exception as exc:  # noqa: BLE001 - pydicom's LUT code raises many types on malformed LUTs
            raise ImageReadError(f"{path}: invalid Modality/VOI LUT attributes ({type(exc).__name__}: {exc})") from None
        pixels = np.asarray(out, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise ImageReadError(f"{path}: Modality/VOI LUT gives NaN or infinite values (check RescaleSlope/Intercept)")
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
    rejected = rejected_spacing(ds)
    if rejected and spacing is None:
        meta["spacing_rejected"] = rejected
    return ImageData(np.ascontiguousarray(pixels, dtype=np.float32), spacing, bits, path, meta, colour)


def _spacing_candidates(ds: Any) -> list[tuple[str, Any]]:
    """(attribute, raw value) of every pixel-spacing source present, in order of preference."""
    found: list[tuple[str, Any]] = []
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            v = ds.get(tag)
        except Exception:  # noqa: BLE001 - a malformed value counts as absent (reported by rejected_spacing)
            found.append((tag, "unreadable"))
            continue
        if v is not None:
            found.append((tag, v))
    try:
        regions = ds.get("SequenceOfUltrasoundRegions")
        reg = regions[0] if regions else None
        # Physical units code 3 = cm (PS3.3 C.8.5.5.1.15)
        if reg is not None and reg.get("PhysicalUnitsXDirection") == 3 and reg.get("PhysicalUnitsYDirection") == 3:
            dx, dy = reg.get("PhysicalDeltaX", 0), reg.get("PhysicalDeltaY", 0)
            found.append(("SequenceOfUltrasoundRegions", (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)))
    except Exception:  # noqa: BLE001 - malformed ultrasound regions: no spacing from them
        found.append(("SequenceOfUltrasoundRegions", "unreadable"))
    return found


def _spacing_value(raw: Any) -> tuple[float, float] | None:
    """(row, col) mm from a raw value when it is two plausible numbers, else ``None``."""
    try:
        if isinstance(raw, (str, bytes)) or len(raw) != 2:
            return None
        r, c = float(raw[0]), float(raw[1])
    except (TypeError, ValueError, OverflowError):
        return None
    lo, hi = PLAUSIBLE_SPACING_MM
    if not (math.isfinite(r) and math.isfinite(c) and lo <= r <= hi and lo <= c <= hi):
        return None
    return (r, c)


def dicom_pixel_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) pixel spacing in mm from a DICOM header and the attribute it came from, or (None, None).

    PixelSpacing, then ImagerPixelSpacing, then the first ultrasound region (cm -> mm). Values
    that are malformed, not finite or outside :data:`PLAUSIBLE_SPACING_MM` (``inf``, ``1e308``,
    ``1e-9``, ``100`` mm ...) count as absent; :func:`rejected_spacing` says which were dropped.
    """
    for tag, raw in _spacing_candidates(ds):
        value = _spacing_value(raw)
        if value is not None:
            return value, tag
    return None, None


def rejected_spacing(ds: Any) -> str | None:
    """A description of the pixel-spacing values that :func:`dicom_pixel_spacing` dropped (``None`` if none)."""
    bad = [f"{tag} {str(list(raw) if hasattr(raw, '__len__') and not isinstance(raw, str) else raw)[:60]}"
           for tag, raw in _spacing_candidates(ds) if _spacing_value(raw) is None]
    return "; ".join(bad) if bad else None


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
    lo, hi = PLAUSIBLE_SPACING_MM
    if not (lo <= row <= hi and lo <= col <= hi):
        return None
    return (round(row, 6), round(col, 6))


def raster_header(path: str | os.PathLike[str]) -> tuple[int, int, tuple[float, float] | None]:
    """(rows, columns, pixel spacing or None) of a PNG/TIFF/JPEG from its header, without decoding pixels."""
    from PIL import Image

    check_regular_file(path, ImageReadError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                spacing = _png_spacing(dict(im.info))
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: refused by Pillow's decompression-bomb guard ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types for damaged headers
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
    except MemoryError:
        raise ImageReadError(f"{path}: image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types for damaged files
        raise ImageReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None

    meta: dict[str, Any] = {"format": Path(path).suffix.lower().lstrip("."), "mode": mode}
    colour: np.ndarray | None = None
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        if mode == "CMYK":
            raise ImageReadError(f"{path}: CMYK images are not supported")
        pixels = _grey_from_rgb(arr)
        meta["collapsed_from_samples"] = int(arr.shape[-1])
        colour = arr[..., :3] if mode != "YCbCr" else None
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
    return ImageData(np.ascontiguousarray(pixels, dtype=np.float32), _png_spacing(info), bits, path, meta, colour)


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
    check_regular_file(p, ImageReadError)
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
