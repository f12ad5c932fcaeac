"""Checks of a DICOM file's image attributes and compressed pixel stream, made before any pixel is decoded.

A hostile or damaged file must fail with a message naming the file and the attribute, never
with a traceback, a hang or gigabytes of memory. Done here, in this order:

1. Integer attributes (Rows, Columns, NumberOfFrames, BitsAllocated ...) are parsed with
   :func:`header_int`: ``NumberOfFrames 'abc'`` is an error naming the tag, not a ``ValueError``.
2. The image module is checked for consistency (:func:`pixel_module`): sizes within the
   pixel limit, BitsStored <= BitsAllocated, known photometric interpretation, sample count
   matching it.
3. The transfer syntax must be one (a UID that is not a transfer syntax is refused).
4. Deflated files are inflated with a cap before pydicom reads them (:func:`check_deflated`);
   a body that is not deflated is an error.
5. Native pixel data must hold at least the bytes the header promises (YBR_FULL_422 counts
   two samples per pixel).
6. Encapsulated pixel data (:func:`check_encapsulated`): every fragment length must fit in the
   data that follows; the codec's own frame header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ,
   RLE header) must declare the same size and sample count as the DICOM header, and the codec
   must match the transfer syntax (JPEG 2000 data under a JPEG transfer syntax is refused); a
   single-frame stream must end with its end marker (a stream cut short or zero-filled at the
   end is refused instead of being decoded to a partly empty image).

A bit flipped inside entropy-coded data cannot be detected from the stream: JPEG 2000, JPEG-LS
and RLE carry no checksum, and such an image decodes to slightly wrong pixels in every viewer.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

from breastscreen.errors import ImageReadError

JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
})
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})
RLE_SYNTAX = "1.2.840.10008.1.2.5"
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED_SYNTAX})
# Inflated size allowed for a deflated data set (a 100-megapixel 16-bit image is 200 MB).
MAX_INFLATED_BYTES = 512 * 1024 * 1024
MAX_FRAMES = 10_000
PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
    "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3, "HSV": 3, "ARGB": 4, "CMYK": 4,
}
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0"


@dataclass(frozen=True)
class PixelModule:
    """The checked image attributes of one DICOM data set."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str


def header_int(ds: Any, keyword: str, path: str, default: int | None = None, lo: int | None = None,
               hi: int | None = None) -> int:
    """An integer attribute of ``ds``; a missing one gives ``default`` (an error when ``None``).

    Values that are not integers (``'abc'``, ``1.5``, several values) or fall outside
    [``lo``, ``hi``] raise :class:`ImageReadError` naming the file, the tag and the value.
    """
    try:
        raw = ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily and may raise anything
        raise ImageReadError(f"{path}: unreadable {keyword} ({type(exc).__name__}: {exc})") from None
    if raw is None:
        if default is None:
            raise ImageReadError(f"{path}: {keyword} is missing")
        return default
    if isinstance(raw, (str, bytes)) and not str(raw).strip():
        raise ImageReadError(f"{path}: {keyword} is empty")
    try:
        if isinstance(raw, (list, tuple)) or hasattr(raw, "__len__") and not isinstance(raw, (str, bytes)):
            raise ValueError("several values")
        number = float(str(raw).strip())
        if not number.is_integer():
            raise ValueError("not an integer")
        value = int(number)
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(f"{path}: {keyword} must be an integer, got {str(raw)[:40]!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ImageReadError(f"{path}: {keyword} must be in [{lo}, {hi}], got {value}")
    return value


def header_text(ds: Any, keyword: str) -> str:
    """A text attribute as a stripped string ('' when missing or unreadable)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed optional text attribute counts as absent
        return ""
    if value is None:
        return ""
    if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def pixel_module(ds: Any, path: str, max_pixels: int) -> PixelModule:
    """Check the image attributes of ``ds`` against each other and the pixel limit (see module doc)."""
    rows = header_int(ds, "Rows", path, lo=1, hi=65535)
    cols = header_int(ds, "Columns", path, lo=1, hi=65535)
    frames = header_int(ds, "NumberOfFrames", path, default=1, lo=1, hi=MAX_FRAMES)
    bits_alloc = header_int(ds, "BitsAllocated", path, default=16)
    if bits_alloc not in (1, 8, 16, 32, 64):
        raise ImageReadError(f"{path}: BitsAllocated must be 1, 8, 16, 32 or 64, got {bits_alloc}")
    bits_stored = header_int(ds, "BitsStored", path, default=bits_alloc, lo=1, hi=bits_alloc)
    rep = header_int(ds, "PixelRepresentation", path, default=0, lo=0, hi=1)
    if "PhotometricInterpretation" not in ds:
        raise ImageReadError(f"{path}: PhotometricInterpretation is missing")
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    if not photometric:
        raise ImageReadError(f"{path}: PhotometricInterpretation is empty")
    if photometric not in PHOTOMETRIC_SAMPLES:
        raise ImageReadError(f"{path}: unknown PhotometricInterpretation {photometric[:40]!r}")
    samples = header_int(ds, "SamplesPerPixel", path, default=PHOTOMETRIC_SAMPLES[photometric], lo=1, hi=4)
    if samples != PHOTOMETRIC_SAMPLES[photometric]:
        raise ImageReadError(
            f"{path}: SamplesPerPixel {samples} does not fit PhotometricInterpretation {photometric} "
            f"(needs {PHOTOMETRIC_SAMPLES[photometric]})"
        )
    if rows * cols > max_pixels:
        raise ImageReadError(
            f"{path}: image is {rows}x{cols} = {rows * cols:,} pixels per frame, above the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)"
        )
    return PixelModule(rows, cols, frames, samples, bits_alloc, bits_stored, bool(rep), photometric)


def transfer_syntax(ds: Any, path: str) -> str:
    """The data set's transfer syntax UID (explicit VR little endian when there is no file meta).

    A UID that is not a transfer syntax (e.g. a SOP class UID put there) is an error.
    """
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    raw = header_text(meta, "TransferSyntaxUID") if meta is not None else ""
    if not raw:
        return "1.2.840.10008.1.2.1" if not getattr(ds, "is_implicit_VR", False) else "1.2.840.10008.1.2"
    uid = UID(raw)
    if not uid.is_transfer_syntax:
        raise ImageReadError(f"{path}: TransferSyntaxUID {raw[:64]!r} is not a transfer syntax")
    return str(uid)


def _meta_end(data: bytes) -> int:
    """Byte offset where the data set starts after a file meta group (explicit VR little endian)."""
    pos = 132
    while pos + 8 <= len(data):
        group = int.from_bytes(data[pos:pos + 2], "little")
        if group != 0x0002:
            return pos
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            length = int.from_bytes(data[pos + 8:pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(data[pos + 6:pos + 8], "little")
            pos += 8 + length
    return pos


def check_deflated(path: str) -> None:
    """For a Deflated Explicit VR file: inflate its body with a size cap (no-op for other files).

    Refuses a body that is not a deflate stream and one that inflates beyond
    :data:`MAX_INFLATED_BYTES` (a zip bomb), before pydicom inflates it without a limit.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return
        meta = fh.read(64 * 1024)
    if DEFLATED_SYNTAX.encode() not in meta:
        return
    with open(path, "rb") as fh:
        data = fh.read()
    start = _meta_end(data)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = memoryview(data)[start:]
    try:
        for i in range(0, len(view), 1 << 20):
            chunk = inflater.decompress(view[i:i + (1 << 20)], MAX_INFLATED_BYTES + 1 - total)
            total += len(chunk)
            while inflater.unconsumed_tail and total <= MAX_INFLATED_BYTES:
                chunk = inflater.decompress(inflater.unconsumed_tail, MAX_INFLATED_BYTES + 1 - total)
                total += len(chunk)
            if total > MAX_INFLATED_BYTES:
                raise ImageReadError(
                    f"{path}: deflated data set inflates to more than {MAX_INFLATED_BYTES:,} bytes (refused)"
                )
    except zlib.error as exc:
        raise ImageReadError(
            f"{path}: transfer syntax is Deflated Explicit VR Little Endian but the data set is not deflated ({exc})"
        ) from None


def native_bytes_needed(module: PixelModule) -> int:
    """Bytes of native (uncompressed) pixel data the header promises for all frames."""
    samples = 2 if module.photometric in ("YBR_FULL_422", "YBR_PARTIAL_422") else module.samples
    bits = module.rows * module.columns * samples * module.frames * module.bits_allocated
    return (bits + 7) // 8


def _pixel_data(ds: Any, path: str) -> Any:
    try:
        return ds.get("PixelData")
    except Exception as exc:  # noqa: BLE001 - deferred reads of damaged files fail in many ways
        raise ImageReadError(f"{path}: unreadable PixelData ({type(exc).__name__}: {exc})") from None


def check_native_length(ds: Any, path: str, module: PixelModule) -> None:
    """Native pixel data shorter than the header promises is an error (a truncated or cut copy)."""
    data = _pixel_data(ds, path)
    if data is None:
        return
    need = native_bytes_needed(module)
    if len(data) < need:
        raise ImageReadError(
            f"{path}: truncated pixel data ({len(data):,} bytes; the {module.rows}x{module.columns} "
            f"{module.bits_allocated}-bit header needs {need:,})"
        )


def _fragments(data: bytes, path: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(basic offset table, [(start, length)] of the fragments) of encapsulated pixel data."""
    pos, items = 0, []
    n = len(data)
    while pos + 8 <= n:
        tag = data[pos:pos + 4]
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == _SEQ_DELIMITER:
            break
        if tag != _ITEM:
            raise ImageReadError(f"{path}: encapsulated pixel data is damaged (no item tag at byte {pos:,})")
        if length == 0xFFFFFFFF or length > n - pos - 8:
            raise ImageReadError(
                f"{path}: encapsulated pixel data declares a fragment of {length:,} bytes at byte {pos:,}, "
                f"but only {n - pos - 8:,} bytes follow"
            )
        items.append((pos + 8, length))
        pos += 8 + length
    if not items:
        raise ImageReadError(f"{path}: encapsulated pixel data holds no items")
    bot_start, bot_len = items[0]
    if bot_len % 4:
        raise ImageReadError(f"{path}: basic offset table length {bot_len} is not a multiple of 4")
    bot = [int.from_bytes(data[bot_start + i:bot_start + i + 4], "little") for i in range(0, bot_len, 4)]
    frags = items[1:]
    if not frags:
        raise ImageReadError(f"{path}: encapsulated pixel data has no fragments (no image data)")
    return bot, frags


def _be(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _jpeg_frame_header(buf: bytes, path: str) -> tuple[str, int, int, int, int]:
    """(codec, rows, columns, components, precision) from a JPEG / JPEG-LS stream's SOF segment."""
    if buf[:2] != b"\xff\xd8":
        raise ImageReadError(f"{path}: {_codec_name(buf)} data where a JPEG stream (start-of-image marker) was expected")
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            raise ImageReadError(f"{path}: damaged JPEG stream (no marker at byte {i:,} of the first fragment)")
        marker = buf[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = _be(buf[i + 2:i + 4])
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if i + 10 > len(buf):
                break
            codec = "JPEG-LS" if marker == 0xF7 else "JPEG"
            return codec, _be(buf[i + 5:i + 7]), _be(buf[i + 7:i + 9]), buf[i + 9], buf[i + 4]
        if marker == 0xDA:
            raise ImageReadError(f"{path}: damaged JPEG stream (image data before any frame header)")
        if length < 2:
            raise ImageReadError(f"{path}: damaged JPEG stream (segment length {length} at byte {i:,})")
        i += 2 + length
    raise ImageReadError(f"{path}: damaged JPEG stream (no frame header in the first fragment)")


def _j2k_codestream(buf: bytes, path: str) -> bytes:
    if buf[4:8] == b"jP  ":  # JP2 file format: walk the boxes to the contiguous codestream
        pos = 0
        while pos + 8 <= len(buf):
            size, kind = _be(buf[pos:pos + 4]), buf[pos + 4:pos + 8]
            header = 8
            if size == 1:
                size, header = _be(buf[pos + 8:pos + 16]), 16
            if kind == b"jp2c":
                return buf[pos + header:]
            if size < header:
                break
            pos += size
        raise ImageReadError(f"{path}: JP2 file without a codestream box")
    return buf


def _j2k_frame_header(buf: bytes, path: str) -> tuple[str, int, int, int, int]:
    cs = _j2k_codestream(buf, path)
    if cs[:4] != b"\xff\x4f\xff\x51":
        raise ImageReadError(f"{path}: {_codec_name(buf)} data where a JPEG 2000 codestream (SOC + SIZ) was expected")
    if len(cs) < 43:
        raise ImageReadError(f"{path}: JPEG 2000 codestream too short for its SIZ header")
    x, y, xo, yo = _be(cs[8:12]), _be(cs[12:16]), _be(cs[16:20]), _be(cs[20:24])
    if xo > x or yo > y:
        raise ImageReadError(f"{path}: JPEG 2000 SIZ header has an image offset beyond the image size")
    components = _be(cs[40:42])
    precision = (cs[42] & 0x7F) + 1
    return "JPEG 2000", y - yo, x - xo, components, precision


def _codec_name(buf: bytes) -> str:
    if buf[:2] == b"\xff\xd8":
        return "JPEG"
    if buf[:4] == b"\xff\x4f\xff\x51" or buf[4:8] == b"jP  ":
        return "JPEG 2000"
    return "unrecognised"


def _check_rle(buf: bytes, path: str, module: PixelModule) -> None:
    if len(buf) < 64:
        raise ImageReadError(f"{path}: RLE frame shorter than its 64-byte header")
    n = int.from_bytes(buf[:4], "little")
    need = module.samples * ((module.bits_allocated + 7) // 8)
    if n != need:
        raise ImageReadError(f"{path}: RLE header lists {n} segments, the image attributes need {need}")
    offsets = [int.from_bytes(buf[4 + 4 * k:8 + 4 * k], "little") for k in range(n)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(buf):
        raise ImageReadError(f"{path}: RLE segment offsets {offsets} do not fit the {len(buf):,}-byte frame")


def check_encapsulated(ds: Any, path: str, module: PixelModule, syntax: str) -> None:
    """Check encapsulated pixel data against the header before decoding (see the module doc)."""
    data = _pixel_data(ds, path)
    if data is None:
        return
    data = bytes(data)
    bot, frags = _fragments(data, path)
    if module.frames == 1:
        first = data[frags[0][0]:frags[0][0] + frags[0][1]]
        frame = b"".join(data[s:s + n] for s, n in frags)
    else:
        if bot and (bot[0] != 0 or any(b < a for a, b in zip(bot, bot[1:]))):
            raise ImageReadError(f"{path}: basic offset table {bot[:4]}... is not ascending from 0")
        first = data[frags[0][0]:frags[0][0] + frags[0][1]]
        frame = b""
    if syntax == RLE_SYNTAX:
        _check_rle(frame or first, path, module)
        return
    if syntax in JPEG_SYNTAXES or syntax in JPEG_LS_SYNTAXES:
        codec, rows, cols, comps, prec = _jpeg_frame_header(first, path)
        expected = "JPEG-LS" if syntax in JPEG_LS_SYNTAXES else "JPEG"
        if codec != expected:
            raise ImageReadError(f"{path}: {codec} data under a {expected} transfer syntax")
    elif syntax in J2K_SYNTAXES:
        codec, rows, cols, comps, prec = _j2k_frame_header(first, path)
    else:
        raise ImageReadError(f"{path}: transfer syntax {syntax} (video or other) is not supported for images")
    if (rows, cols) != (module.rows, module.columns):
        raise ImageReadError(
            f"{path}: the {codec} stream declares {rows}x{cols} pixels but the DICOM header says "
            f"{module.rows}x{module.columns} (refused before decoding)"
        )
    if comps != module.samples:
        raise ImageReadError(f"{path}: the {codec} stream has {comps} components, the header {module.samples} samples")
    if prec > module.bits_allocated:
        raise ImageReadError(f"{path}: the {codec} stream has {prec}-bit samples, BitsAllocated is {module.bits_allocated}")
    if frame:
        end = frame.rstrip(b"\x00") if frame[-1:] == b"\x00" else frame
        # One zero byte pads odd lengths; more zeros at the end mean a zero-filled (cut) stream.
        if len(frame) - len(end) > 1 or end[-2:] != b"\xff\xd9":
            raise ImageReadError(f"{path}: the {codec} stream is truncated or damaged (no end-of-image marker)")


def check_file_size(path: str, limit: int) -> int:
    """Size of ``path`` in bytes; a file above ``limit`` bytes is refused."""
    size = os.path.getsize(path)
    if size > limit:
        raise ImageReadError(f"{path}: file of {size:,} bytes, above the limit of {limit:,}")
    return size
