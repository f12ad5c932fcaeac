"""Corpus family "dicom": one DICOM file per case through `manifest build` and `preprocess`.

Each case writes one file into ``box/in``; the expected outcome is either a problem reported by
``manifest build`` (exit 1, the file named with its reason), or an exam whose view is checked,
then ``preprocess`` succeeding (exit 0, optionally with a warning) or failing for that exam
with a named reason (exit 2: nothing could be preprocessed).
"""

from __future__ import annotations

import copy
import io
import re
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from breastscreen.data.manifest import read_manifest
from hardening_helpers import Case, bs, expect, mg_dataset, phantom, save, save_with_raw_element

CASES: list[Case] = []


def _run(box: Path, write: Callable[[Path], None], problem: str | None, view: str | None, pre: str | None,
         check: Callable[[Path], None] | None) -> None:
    folder = box / "in"
    folder.mkdir(parents=True)
    write(folder)
    res = bs("manifest", "build", folder, "--out", box / "m.jsonl")
    if problem is not None:
        expect(res, 1, problem)
        assert not (box / "m.jsonl").exists()
        return
    expect(res, 0)
    (exam,) = read_manifest(box / "m.jsonl")
    if view is not None:
        assert exam.present_views() == [view], exam.present_views()
    if pre is None:
        if check:
            check(box)
        return
    res = bs("preprocess", box / "m.jsonl", "--out", box / "pre", "--scale", "0.5")
    if pre == "ok":
        expect(res, 0)
        assert read_manifest(box / "pre" / "manifest.jsonl")
    elif pre == "warn":
        expect(res, 0, r"1 warnings")
        assert "pixel spacing unknown" in (box / "pre" / "errors.csv").read_text()
    else:
        expect(res, 2, pre)
        assert "no exam could be preprocessed (0 of 1" in res.out
    if check:
        check(box)


def case(name: str, write: Callable[[Path], None], *, problem: str | None = None, view: str | None = "L-CC",
         pre: str | None = "ok", check: Callable[[Path], None] | None = None, kind: str | None = None) -> None:
    """Register a case: ``problem`` regex for a build refusal, else ``view`` and the ``pre`` outcome
    (``"ok"``, ``"warn"`` or a regex the preprocessing failure must match)."""
    if kind is None:
        kind = "error" if problem is not None or pre not in (None, "ok", "warn") else "accepted"
    CASES.append(Case("dicom", name, kind, lambda box: _run(box, write, problem, view, pre, check)))


def file_of(name: str = "img.dcm", **attrs: Any) -> Callable[[Path], None]:
    """A writer of one mammogram with ``attrs`` set (``None`` removes an attribute)."""
    def write(folder: Path) -> None:
        save(mg_dataset(**attrs), folder / name, enforce_file_format=True)
    return write


def raw_attr(tag: int, raw: bytes, **attrs: Any) -> Callable[[Path], None]:
    """A mammogram whose element ``tag`` holds ``raw`` bytes (values pydicom would refuse to write)."""
    def write(folder: Path) -> None:
        save_with_raw_element(mg_dataset(**attrs), folder / "img.dcm", tag, raw)
    return write


def mutate_bytes(fn: Callable[[bytes], bytes], **attrs: Any) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        path = save(mg_dataset(**attrs), folder / "img.dcm", enforce_file_format=True)
        path.write_bytes(fn(path.read_bytes()))
    return write


def with_ds(fn: Callable[[Dataset], Dataset | None], name: str = "img.dcm", **attrs: Any) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        ds = mg_dataset(**attrs)
        ds = fn(ds) or ds
        save(ds, folder / name, enforce_file_format=True)
    return write


# --------------------------------------------------------------------------- integer attributes

NUMBER_OF_FRAMES = 0x00280008
for label, raw, msg in [("abc", b"abc ", "NumberOfFrames must be an integer"), ("minus1", b"-1", r"NumberOfFrames must be in"),
                        ("zero", b"0 ", r"NumberOfFrames must be in"), ("1.5", b"1.5 ", "NumberOfFrames must be an integer"),
                        ("huge", b"99999999", r"NumberOfFrames must be in"), ("two", b"2 ", "truncated DICOM"),
                        ("multi", b"1\\2 ", "NumberOfFrames must be an integer"),
                        ("spaces", b"    ", "NumberOfFrames is empty")]:
    case(f"frames-{label}", raw_attr(NUMBER_OF_FRAMES, raw), problem=msg)

for tag_name, tag in [("Rows", 0x00280010), ("Columns", 0x00280011)]:
    case(f"{tag_name}-zero", raw_attr(tag, b"\x00\x00"), problem=f"{tag_name} must be in")
    case(f"{tag_name}-max", raw_attr(tag, b"\xff\xff"), problem="truncated DICOM|above the limit")
    case(f"{tag_name}-3-bytes", raw_attr(tag, b"\x01\x02\x03"), problem=f"{tag_name}|unreadable")
    case(f"{tag_name}-missing", file_of(**{tag_name: None}), problem="non-image DICOM")

for value, msg in [(7, "BitsAllocated must be"), (0, "BitsAllocated must be"), (64, "truncated DICOM"),
                   (32, "truncated DICOM")]:
    case(f"BitsAllocated-{value}", file_of(BitsAllocated=value), problem=msg)
case("BitsStored-17", file_of(BitsStored=17), problem=r"BitsStored must be in \[1, 16\]")
case("BitsStored-0", file_of(BitsStored=0), problem="BitsStored must be in")
case("HighBit-odd", file_of(HighBit=20))  # unused by decoders here: accepted
case("PixelRepresentation-2", file_of(PixelRepresentation=2), problem="PixelRepresentation must be in")
case("SamplesPerPixel-3-mono", file_of(SamplesPerPixel=3), problem="does not fit PhotometricInterpretation")
case("SamplesPerPixel-0", file_of(SamplesPerPixel=0), problem="SamplesPerPixel must be in")
case("Photometric-unknown", file_of(PhotometricInterpretation="FOO"), problem="unknown PhotometricInterpretation")
case("Photometric-empty", raw_attr(0x00280004, b""), problem="PhotometricInterpretation is empty")
case("Photometric-missing", file_of(PhotometricInterpretation=None), problem="PhotometricInterpretation is missing")
case("image-4x4", file_of(pixels=phantom(4, 4)), pre="too small")
case("image-huge-header", raw_attr(0x00280010, b"\xff\xff", Columns=65535), problem="above the limit")

# --------------------------------------------------------------------------- pixel spacing


def _spacing_check(expected: tuple[float, float] | None) -> Callable[[Path], None]:
    def check(box: Path) -> None:
        (exam,) = read_manifest(box / "m.jsonl")
        img = exam.views["L-CC"][0]
        assert img.pixel_spacing == expected, img.pixel_spacing
        if expected is None:
            assert "spacing_rejected" in img.meta
    return check


for label, raw in [("inf", b"inf\\inf "), ("1e308", b"1e308\\1e308 "), ("1e-9", b"1e-9\\1e-9 "), ("100mm", b"100\\100 "),
                   ("negative", b"-0.1\\-0.1 "), ("abc", b"abc\\abc "), ("nan", b"nan\\nan "), ("one-value", b"0.1 "),
                   ("three-values", b"0.1\\0.1\\0.1 "), ("zero", b"0\\0 "), ("empty", b"")]:
    case(f"PixelSpacing-{label}", raw_attr(0x00280030, raw), pre="warn",
         check=_spacing_check(None) if raw else None)
case("PixelSpacing-bad-Imager-good", raw_attr(0x00280030, b"inf\\inf ", ImagerPixelSpacing=[0.07, 0.07]),
     check=_spacing_check((0.07, 0.07)))
case("PixelSpacing-none", file_of(PixelSpacing=None), pre="warn")

# --------------------------------------------------------------------------- transfer syntaxes


def _meta_then_body(meta_uid: str, body_of: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A file whose meta says ``meta_uid`` followed by the explicit-VR body transformed by ``body_of``."""
    def write(folder: Path) -> None:
        from breastscreen.data.dicom_checks import _meta_end

        ds = mg_dataset()
        path = save(ds, folder / "tmp.dcm", enforce_file_format=True)
        data = path.read_bytes()
        path.unlink()
        meta = copy.deepcopy(ds.file_meta)
        meta.TransferSyntaxUID = meta_uid
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, meta, enforce_standard=True)
        (folder / "img.dcm").write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + body_of(data[_meta_end(data):]))
    return write


def _deflate(body: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(body) + c.flush()


case("ts-not-a-uid-of-ts", _meta_then_body("1.2.3.4", lambda b: b), problem="is not a transfer syntax")
case("ts-is-sop-class", _meta_then_body("1.2.840.10008.5.1.4.1.1.1.2", lambda b: b), problem="is not a transfer syntax")
case("deflated-body-not-deflated", _meta_then_body(DeflatedExplicitVRLittleEndian, lambda b: b),
     problem="not deflated|unreadable")
case("deflated-valid", _meta_then_body(DeflatedExplicitVRLittleEndian, _deflate))
case("deflated-bomb", _meta_then_body(DeflatedExplicitVRLittleEndian, lambda b: _deflate(b + b"\0" * (600 << 20))),
     problem="inflates to more than")
case("deflated-cut", _meta_then_body(DeflatedExplicitVRLittleEndian, lambda b: _deflate(b)[: len(_deflate(b)) // 2]),
     problem="truncated|unreadable|not deflated")


def _encode_as(uid: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        from pydicom.filewriter import dcmwrite

        ds = mg_dataset()
        ds.file_meta.TransferSyntaxUID = uid
        big = uid == ExplicitVRBigEndian
        if big:  # pixel bytes in the file's byte order
            ds.PixelData = phantom().byteswap().tobytes()
        dcmwrite(folder / "img.dcm", ds, implicit_vr=uid == ImplicitVRLittleEndian, little_endian=not big,
                 force_encoding=True)
    return write


case("explicit-big-endian", _encode_as(ExplicitVRBigEndian))
case("implicit-little-endian", _encode_as(ImplicitVRLittleEndian))


def _no_meta(folder: Path) -> None:
    ds = mg_dataset()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    from pydicom.filewriter import write_dataset

    write_dataset(buf, ds)
    (folder / "img.dcm").write_bytes(buf.getvalue())


case("no-preamble-no-meta", _no_meta)

# --------------------------------------------------------------------------- native pixel data

case("pixels-truncated", mutate_bytes(lambda b: b[: len(b) - 5000]), problem="truncated DICOM")
case("pixels-missing", with_ds(lambda d: d.__delattr__("PixelData")), problem="truncated DICOM")
case("pixels-longer", mutate_bytes(lambda b: b), pre="ok")
case("pixels-8bit", file_of(pixels=(phantom(bits=8)).astype(np.uint8)))
case("monochrome1", file_of(PhotometricInterpretation="MONOCHROME1",
                            pixels=(4095 - phantom()).astype(np.uint16)))
case("byte-swapped", file_of(pixels=phantom(bits=16).byteswap(), BitsStored=16, HighBit=15), pre="byte-swapped")
case("wrongly-signed", file_of(pixels=phantom(bits=16).view(np.int16), BitsStored=16, HighBit=15), pre="wrongly signed")
case("wrongly-signed-partly", file_of(pixels=(phantom(bits=16) // 2 + 20000).astype(np.uint16).view(np.int16),
                                      BitsStored=16, HighBit=15), pre="wrongly signed")
case("signed-legit", file_of(pixels=(phantom(bits=11).astype(np.int32) - 1000).astype(np.int16)))
case("noise", file_of(pixels=np.random.default_rng(0).integers(0, 4096, (160, 120)).astype(np.uint16)), pre="noise")
case("constant", file_of(pixels=np.full((160, 120), 700, np.uint16)), pre="uniform")
case("all-zero", file_of(pixels=np.zeros((160, 120), np.uint16)), pre="uniform")
case("speck", file_of(pixels=np.pad(np.full((2, 2), 4000, np.uint16), ((79, 79), (59, 59)))), pre="no breast")
case("multi-frame", file_of(pixels=np.stack([phantom()] * 3), NumberOfFrames=3), problem="multi-frame")


def _palette(entries: int, data_len: int) -> Callable[[Dataset], None]:
    def fn(ds: Dataset) -> None:
        ds.PhotometricInterpretation = "PALETTE COLOR"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        idx = (phantom(bits=8)).astype(np.uint8)
        ds.PixelData = idx.tobytes()
        ramp = np.linspace(0, 65535, 256).astype(np.uint16)
        for colour, scale in (("Red", 1.0), ("Green", 1.0), ("Blue", 1.0)):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", (ramp[::-1][:data_len] * scale).astype(np.uint16).tobytes())
    return fn


def _palette_check(box: Path) -> None:
    from breastscreen.data.readers import load_image

    (exam,) = read_manifest(box / "m.jsonl")
    img = load_image(exam.views["L-CC"][0].path)
    idx = phantom(bits=8).astype(np.float64)
    expected = 65535 - idx * 257.0  # the inverted ramp, rendered through the LUT
    assert img.meta.get("palette_applied") and np.corrcoef(img.pixels.ravel(), expected.ravel())[0, 1] > 0.999


case("palette-valid", with_ds(_palette(256, 256)), check=_palette_check)
case("palette-descriptor-mismatch", with_ds(_palette(256, 10)), pre="palette colour lookup table|cannot decode")


def _voi_mismatch(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", np.arange(10, dtype=np.uint16).tobytes())  # LUTData: 10 entries, not 4096
    ds.VOILUTSequence = [item]


case("voi-lut-descriptor-mismatch", with_ds(_voi_mismatch), pre="Modality/VOI LUT")
case("window-center-text", raw_attr(0x00281050, b"abc ", WindowWidth=400), pre="Modality/VOI LUT")
case("window-width-zero", file_of(WindowCenter=500, WindowWidth=0), pre="Modality/VOI LUT")
case("rescale-slope-text", raw_attr(0x00281053, b"abc ", RescaleIntercept=0), pre="Modality/VOI LUT")
case("rescale-slope-inf", raw_attr(0x00281053, b"inf ", RescaleIntercept=0), pre="NaN or infinite|Modality/VOI LUT")
case("rescale-slope-zero", file_of(RescaleSlope=0, RescaleIntercept=0), pre="uniform")
case("rescale-valid", file_of(RescaleSlope=2, RescaleIntercept=-100))

# --------------------------------------------------------------------------- compressed pixel data

_JPEG_ARR = phantom(bits=8).astype(np.uint8)


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_JPEG_ARR).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _encapsulated(uid: str, frame_of: Callable[[bytes], bytes], raw_pixel_data: Callable[[bytes], bytes] | None = None,
                  **attrs: Any) -> Callable[[Path], None]:
    """A compressed mammogram: a JPEG (Pillow) frame for JPEG syntaxes, pydicom's encoder for the others."""
    def write(folder: Path) -> None:
        ds = mg_dataset(pixels=_JPEG_ARR)
        if uid in (JPEGBaseline8Bit, "1.2.840.10008.1.2.4.51"):
            frame = _jpeg_bytes()
            ds.file_meta.TransferSyntaxUID = uid
        else:
            from pydicom.encaps import generate_frames

            ds.compress(uid)
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        data = encapsulate([frame_of(frame)])
        ds.PixelData = raw_pixel_data(frame) if raw_pixel_data else data
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        for k, v in attrs.items():
            setattr(ds, k, v)
        save(ds, folder / "img.dcm", enforce_file_format=True)
    return write


def _sof(frame: bytes, rows: int, cols: int) -> bytes:
    i = frame.index(b"\xff\xc0")
    return frame[: i + 5] + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + frame[i + 9:]


def _flip(frame: bytes, at: float = 0.5) -> bytes:
    k = int(len(frame) * at)
    return frame[:k] + bytes([frame[k] ^ 0x10]) + frame[k + 1:]


def _limit_check(box: Path) -> None:
    """A flipped bit inside entropy-coded data is undetectable (no checksum in JPEG / JPEG 2000 / RLE):
    either the decoder notices, or the pixels must still correlate with the original."""
    pre = box / "pre" / "errors.csv"
    if pre.is_file() and "failed" in pre.read_text():
        return
    from breastscreen.data.readers import load_image

    (exam,) = read_manifest(box / "m.jsonl")
    px = load_image(exam.views["L-CC"][0].path).pixels
    assert np.corrcoef(px.ravel(), _JPEG_ARR.astype(np.float64).ravel())[0, 1] > 0.9


def _fragment_2gb(frame: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0" + (0x80000000).to_bytes(4, "little") + frame


def _no_item_tag(frame: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\x01\x02\x03\x04" + len(frame).to_bytes(4, "little") + frame


case("jpeg-valid", _encapsulated(JPEGBaseline8Bit, lambda f: f))
case("jpeg-sof-65000", _encapsulated(JPEGBaseline8Bit, lambda f: _sof(f, 65000, 65000)), pre="declares 65000x65000")
case("jpeg-sof-off-by-one", _encapsulated(JPEGBaseline8Bit, lambda f: _sof(f, 161, 120)), pre="declares 161x120")
case("jpeg-half", _encapsulated(JPEGBaseline8Bit, lambda f: f[: len(f) // 2]), pre="truncated or damaged")
case("jpeg-half-zeroed", _encapsulated(JPEGBaseline8Bit, lambda f: f[: len(f) // 2] + b"\0" * (len(f) - len(f) // 2)),
     pre="truncated or damaged")
case("jpeg-no-soi", _encapsulated(JPEGBaseline8Bit, lambda f: f[2:]), pre="JPEG stream|damaged")
case("jpeg-flipped-bit", _encapsulated(JPEGBaseline8Bit, _flip), pre=None, kind="limit", check=_limit_check)
case("fragment-length-2gb", _encapsulated(JPEGBaseline8Bit, lambda f: f, raw_pixel_data=_fragment_2gb),
     pre="declares a fragment of 2,147,483,648 bytes")
case("fragment-no-item-tag", _encapsulated(JPEGBaseline8Bit, lambda f: f, raw_pixel_data=_no_item_tag), pre="damaged")
case("fragments-empty", _encapsulated(JPEGBaseline8Bit, lambda f: f,
                                      raw_pixel_data=lambda f: b"\xfe\xff\x00\xe0\x00\x00\x00\x00"), pre="no fragments")


def _j2k_under_jpeg(folder: Path) -> None:
    ds = mg_dataset(pixels=_JPEG_ARR)
    ds.compress(JPEG2000Lossless)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    save(ds, folder / "img.dcm", enforce_file_format=True)


case("jpeg-syntax-j2k-data", _j2k_under_jpeg, pre="JPEG 2000 data where a JPEG stream")


def _j2k_siz(frame: bytes, rows: int) -> bytes:
    i = frame.index(b"\xff\x51")
    ysiz_at = i + 2 + 2 + 2 + 4  # marker, Lsiz, Rsiz, Xsiz
    return frame[:ysiz_at] + rows.to_bytes(4, "big") + frame[ysiz_at + 4:]


case("j2k-valid", _encapsulated(JPEG2000Lossless, lambda f: f))
case("j2k-siz-65000", _encapsulated(JPEG2000Lossless, lambda f: _j2k_siz(f, 65000)), pre="declares 65000x120")
case("j2k-half-zeroed", _encapsulated(JPEG2000Lossless, lambda f: f[: len(f) // 2] + b"\0" * (len(f) - len(f) // 2)),
     pre="truncated or damaged")
case("j2k-cut", _encapsulated(JPEG2000Lossless, lambda f: f[: len(f) * 2 // 3]), pre="truncated or damaged")
case("j2k-flipped-bit", _encapsulated(JPEG2000Lossless, _flip), pre=None, kind="limit", check=_limit_check)
case("j2k-no-soc", _encapsulated(JPEG2000Lossless, lambda f: f[4:]), pre="JPEG 2000 codestream")
case("rle-valid", _encapsulated(RLELossless, lambda f: f))
case("rle-segment-count", _encapsulated(RLELossless, lambda f: (5).to_bytes(4, "little") + f[4:]), pre="segments")
case("rle-half-zeroed", _encapsulated(RLELossless, lambda f: f[:64] + f[64: len(f) // 2] + b"\0" * (len(f) - len(f) // 2)),
     pre="cannot decode|segment")
case("rle-offsets-beyond", _encapsulated(RLELossless, lambda f: f[:4] + (10 ** 8).to_bytes(4, "little") + f[8:]),
     pre="RLE segment offsets|segments")


def _video(folder: Path) -> None:
    ds = mg_dataset(pixels=_JPEG_ARR)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 100])
    ds["PixelData"].VR = "OB"
    save(ds, folder / "img.dcm", enforce_file_format=True)


case("video-syntax", _video, pre="not supported")


# --------------------------------------------------------------------------- structure and garbage


def _nested(depth: int) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        ds = mg_dataset()
        del ds.PixelData
        path = save(ds, folder / "img.dcm", enforce_file_format=True)
        seq = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        blob = (seq + item) * depth + (item_end + seq_end) * depth
        path.write_bytes(path.read_bytes() + blob)
    return write


case("nested-3000-sequences", _nested(3000), problem="nested too deeply|unreadable|non-image")
case("nested-20-sequences", _nested(20), problem="truncated DICOM")
case("header-cut", mutate_bytes(lambda b: b[:300]), problem="unreadable|not a valid|truncated|non-image|Rows")
case("zero-bytes", lambda folder: (folder / "img.dcm").write_bytes(b""), problem="not a valid DICOM|unreadable")
case("dicm-only", lambda folder: (folder / "img.dcm").write_bytes(b"\0" * 128 + b"DICM"),
     problem="not a valid DICOM|unreadable")
case("random-bytes", lambda folder: (folder / "img.dcm").write_bytes(np.random.default_rng(1).bytes(4096)),
     problem="not a valid DICOM|unreadable")
case("text-named-dcm", lambda folder: (folder / "img.dcm").write_text("hello\n" * 50), problem="not a valid DICOM|unreadable")
case("no-modality", file_of(Modality=None), problem="without Modality")
case("modality-ct", file_of(Modality="CT"), problem="non-breast modality CT")
case("modality-cr-breast", file_of(Modality="CR", BodyPartExamined="BREAST"))
case("modality-dx-chest", file_of(Modality="DX", BodyPartExamined="CHEST"), problem="non-breast modality DX")


def _no_image_module(ds: Dataset) -> None:
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)


case("structured-report", with_ds(_no_image_module), problem="non-image DICOM")
case("for-processing", file_of(PresentationIntentType="FOR PROCESSING"), problem="FOR PROCESSING")

# --------------------------------------------------------------------------- view and laterality sources


def _sources(view_from: str, laterality_from: str) -> Callable[[Path], None]:
    def check(box: Path) -> None:
        (exam,) = read_manifest(box / "m.jsonl")
        (img,) = [i for _, i in exam.iter_images()]
        assert img.meta.get("view_from") == view_from, img.meta
        assert img.meta.get("laterality_from") == laterality_from, img.meta
    return check


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


NONE = {"ImageLaterality": None, "ViewPosition": None}
case("source-viewcode", file_of(ViewPosition=None, ViewCodeSequence=[_code("399368009", "medio-lateral oblique")]),
     view="L-MLO", pre=None, check=_sources("ViewCodeSequence", "ImageLaterality"))
case("source-viewcode-beats-viewposition", file_of(ViewPosition="CC",
                                                   ViewCodeSequence=[_code("399368009", "medio-lateral oblique")]),
     view="L-MLO", pre=None, check=_sources("ViewCodeSequence", "ImageLaterality"))
case("source-viewcode-meaning-only", file_of(ViewPosition=None, ViewCodeSequence=[_code("X-1", "cranio-caudal")]),
     view="L-CC", pre=None, check=_sources("ViewCodeSequence", "ImageLaterality"))
case("source-viewposition", file_of(ViewPosition="MLO"), view="L-MLO", pre=None,
     check=_sources("ViewPosition", "ImageLaterality"))
case("source-viewposition-xccl", file_of(ViewPosition="XCCL"), view="L-CC", pre=None,
     check=_sources("ViewPosition", "ImageLaterality"))
case("source-laterality-tag", file_of(ImageLaterality=None, Laterality="R", side="R"), view="R-CC", pre=None,
     check=_sources("ViewPosition", "Laterality"))
case("source-cbis-orientation", file_of(**NONE, Laterality="L", PatientOrientation="MLO"), view="L-MLO", pre=None,
     check=_sources("PatientOrientation", "Laterality"))
case("source-orientation-directions", file_of(**NONE, Laterality="L", PatientOrientation=["A", "R"]),
     problem="unknown view")
case("source-series-description", file_of(**NONE, SeriesDescription="R MLO"), view="R-MLO", pre=None,
     check=_sources("SeriesDescription", "SeriesDescription"))
case("source-image-comments", file_of(**NONE, ImageComments="RCC screening"), view="R-CC", pre=None,
     check=_sources("ImageComments", "ImageComments"))
case("source-protocol-name", file_of(**NONE, ProtocolName="LEFT CC"), view="L-CC", pre=None,
     check=_sources("ProtocolName", "ProtocolName"))
case("source-patient-id", file_of(**NONE, PatientID="Mass-Test_P_00001_LEFT_CC"), view="L-CC", pre=None,
     check=_sources("PatientID", "PatientID"))
case("source-file-name", file_of("1-RMLO.dcm", **NONE), view="R-MLO", pre=None, check=_sources("file name", "file name"))
case("source-file-name-dashes", file_of("x_R-CC.dcm", **NONE), view="R-CC", pre=None,
     check=_sources("file name", "file name"))
case("source-ambiguous-sides", file_of(**NONE, SeriesDescription="LEFT RIGHT CC"), problem="unknown laterality")
case("source-single-letter-next-to-view", file_of(**NONE, SeriesDescription="L R CC"), view="R-CC", pre=None,
     check=_sources("SeriesDescription", "SeriesDescription"))
case("source-bilateral", file_of(ImageLaterality="B", ViewPosition="CC"), problem="unknown laterality")
case("source-unknown-viewposition", file_of(ViewPosition="FOO"), problem="unknown view")
case("source-no-side-words", file_of(**NONE, SeriesDescription="BILATERAL CC"), problem="unknown laterality")
case("source-ml-needs-side", file_of(**NONE, SeriesDescription="ML"), problem="unknown laterality")

# --------------------------------------------------------------------------- exam fields and ids


def _exam_field(**want: Any) -> Callable[[Path], None]:
    def check(box: Path) -> None:
        (exam,) = read_manifest(box / "m.jsonl")
        for k, v in want.items():
            got = exam.meta.get(k[5:]) if k.startswith("meta_") else getattr(exam, k)
            assert got == v, (k, got, v)
        for p in (box / "pre").rglob("*") if (box / "pre").exists() else []:
            assert box in p.resolve().parents
    return check


case("accession-dotdot", file_of(AccessionNumber="../../ESCAPE"), check=_exam_field(exam_id="../../ESCAPE"))
case("accession-absolute", file_of(AccessionNumber="/tmp/bs-escape-test"), check=_exam_field(exam_id="/tmp/bs-escape-test"))
case("accession-backslash", file_of(AccessionNumber="..\\..\\x"), check=_exam_field(exam_id="..\\..\\x"))
case("study-date-month-13", file_of(StudyDate="20201345"), pre=None, check=lambda box: _date_invalid(box))
case("study-date-feb-30", file_of(StudyDate="20200230"), pre=None, check=lambda box: _date_invalid(box))
case("study-date-valid", file_of(StudyDate="20200229"), pre=None, check=_exam_field(study_date="2020-02-29"))
case("age-999", file_of(PatientAge="999Y"), pre=None, check=_exam_field(age=None))
case("age-text", raw_attr(0x00101010, b"abcd"), pre=None, check=_exam_field(age=None))
case("age-valid", file_of(PatientAge="054Y"), pre=None, check=_exam_field(age=54.0))
case("no-study-uid-patient-date", file_of(StudyInstanceUID=None, PatientID="P9", StudyDate="20200101"), pre=None,
     check=_exam_field(exam_id="P9-2020-01-01"))
case("no-grouping-key", file_of(StudyInstanceUID=None, PatientID=None), problem="to group by")
case("unicode-patient", file_of(SpecificCharacterSet="ISO_IR 192", PatientID="Zoë-ß-01"), pre=None,
     check=_exam_field(patient_id="Zoë-ß-01"))
case("long-accession", file_of(AccessionNumber="A" * 16), check=_exam_field(exam_id="A" * 16))


def _date_invalid(box: Path) -> None:
    (exam,) = read_manifest(box / "m.jsonl")
    assert exam.study_date is None
    (img,) = [i for _, i in exam.iter_images()]
    assert re.fullmatch(r"\d{8}", img.meta["study_date_invalid"])


def _ybr_422(folder: Path) -> None:
    """Valid native YBR_FULL_422 colour data: two luma samples share one Cb/Cr pair (2 bytes per pixel)."""
    y = phantom(bits=8).astype(np.uint8)
    pairs = y.reshape(y.shape[0], -1, 2)
    chroma = np.full(pairs.shape[:2], 128, np.uint8)
    data = np.stack([pairs[..., 0], pairs[..., 1], chroma, chroma], axis=-1).tobytes()
    ds = mg_dataset(pixels=y)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = data
    save(ds, folder / "img.dcm", enforce_file_format=True)


case("ybr-full-422-valid", _ybr_422)
