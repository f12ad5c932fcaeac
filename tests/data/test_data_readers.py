"""DICOM / PNG / TIFF readers: codecs, LUTs, MONOCHROME1, guards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from breastscreen.data.readers import is_dicom_file, load_image, read_dicom_header
from breastscreen.errors import ImageReadError
from data_dicom_factory import SR_SOP_CLASS, make_dicom


def _ramp(h: int = 40, w: int = 30, top: int = 4095) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, top + 1, size=(h, w)).astype(np.uint16)


def test_uncompressed_dicom_keeps_16_bit_values_and_spacing(tmp_path: Path) -> None:
    arr = _ramp()
    p = make_dicom(tmp_path / "a.dcm", arr, bits_stored=12, PixelSpacing=[0.07, 0.08])
    img = load_image(p)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == arr.shape
    np.testing.assert_array_equal(img.pixels, arr.astype(np.float32))
    assert img.pixel_spacing == (0.07, 0.08)
    assert img.bits_stored == 12
    assert img.source == str(p)


def test_imager_pixel_spacing_is_used_when_pixel_spacing_absent(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "a.dcm", _ramp(), ImagerPixelSpacing=[0.1, 0.1])
    img = load_image(p)
    assert img.pixel_spacing == (0.1, 0.1)
    assert img.meta["spacing_tag"] == "ImagerPixelSpacing"


def test_rle_compressed_dicom_round_trips(tmp_path: Path) -> None:
    arr = _ramp()
    p = make_dicom(tmp_path / "plain.dcm", arr, bits_stored=12)
    ds = pydicom.dcmread(p)
    ds.compress(RLELossless, arr)
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(load_image(tmp_path / "rle.dcm").pixels, arr.astype(np.float32))


def test_jpeg2000_lossless_dicom_round_trips(tmp_path: Path) -> None:
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder

    if not JPEG2000LosslessEncoder.is_available:
        pytest.skip("no JPEG 2000 encoder plugin installed")
    arr = _ramp(64, 96)  # openjpeg's default 6 resolution levels need >= 32 px per side
    p = make_dicom(tmp_path / "plain.dcm", arr, bits_stored=12)
    ds = pydicom.dcmread(p)
    ds.compress(JPEG2000Lossless, arr)
    ds.save_as(tmp_path / "j2k.dcm")
    assert pydicom.dcmread(tmp_path / "j2k.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(load_image(tmp_path / "j2k.dcm").pixels, arr.astype(np.float32))


def test_monochrome1_is_inverted_within_nominal_range(tmp_path: Path) -> None:
    arr = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    p = make_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", bits_stored=12)
    img = load_image(p)
    np.testing.assert_array_equal(img.pixels, 4095.0 - arr.astype(np.float32))
    assert img.meta["inverted"] is True


def test_rescale_slope_intercept_is_applied(tmp_path: Path) -> None:
    arr = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    p = make_dicom(tmp_path / "r.dcm", arr, RescaleSlope=0.5, RescaleIntercept=-3, RescaleType="US")
    np.testing.assert_allclose(load_image(p).pixels, arr * 0.5 - 3)


def test_window_is_applied_without_quantising(tmp_path: Path) -> None:
    arr = np.array([[999, 1500], [2000, 2001]], dtype=np.uint16)
    p = make_dicom(tmp_path / "w.dcm", arr, bits_stored=12, WindowCenter=1500, WindowWidth=1001)
    img = load_image(p)
    assert img.meta["voi_applied"] is True
    # LINEAR window (PS3.3 C.11.2.1.2): 1000 -> lowest output, centre -> middle, above -> highest
    assert img.pixels[0, 0] == 0.0 and img.pixels[1, 1] == 4095.0
    assert 0 < img.pixels[0, 1] < 4095 and img.pixels[0, 1] != round(img.pixels[0, 1])  # not quantised
    raw = load_image(p, voi=False)
    np.testing.assert_array_equal(raw.pixels, arr.astype(np.float32))


def test_multiframe_requires_a_frame(tmp_path: Path) -> None:
    arr = np.stack([np.full((8, 9), k, np.uint16) for k in range(3)])
    p = make_dicom(tmp_path / "tomo.dcm", arr)
    with pytest.raises(ImageReadError, match="multi-frame.*3 frames"):
        load_image(p)
    assert load_image(p, frame=2).pixels[0, 0] == 2.0
    with pytest.raises(ImageReadError, match="frame must be in"):
        load_image(p, frame=3)


def test_non_image_dicom_is_refused(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "sr.dcm", None, modality="SR", sop_class=SR_SOP_CLASS)
    with pytest.raises(ImageReadError, match="no pixel data") as exc:
        load_image(p)
    assert "sr.dcm" in str(exc.value)


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "big.dcm", _ramp(100, 100))
    ds = pydicom.dcmread(p)
    ds.Rows, ds.Columns = 60000, 60000  # header claims 3.6 G pixels; the data are never decoded
    ds.save_as(p)
    with pytest.raises(ImageReadError, match="above the limit"):
        load_image(p)
    with pytest.raises(ImageReadError, match="above the limit"):
        load_image(tmp_path / "big.dcm", max_pixels=10)
    # PNG: the size is checked from the header
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ImageReadError, match="3,000 pixels"):
        load_image(tmp_path / "b.png", max_pixels=2999)


def test_corrupt_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.dcm").write_bytes(b"DICM" + b"\0" * 300)
    with pytest.raises(ImageReadError, match="broken.dcm"):
        read_dicom_header(tmp_path / "broken.dcm")
    with pytest.raises(ImageReadError, match="broken.dcm"):
        load_image(tmp_path / "broken.dcm")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnonsense")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        load_image(tmp_path / "notes.txt")


def test_dicom_detection_by_preamble(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "IMG0001", _ramp())
    assert is_dicom_file(p)
    assert load_image(p).pixels.shape == (40, 30)
    assert read_dicom_header(p).Modality == "MG"


def test_png_16_bit_precision_and_phys_spacing(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 2], [4095, 40000, 65535]], dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    # pHYs in pixels per metre: 10000 px/m = 0.1 mm
    im.save(tmp_path / "x.png", dpi=(254.0, 254.0))
    img = load_image(tmp_path / "x.png")
    np.testing.assert_array_equal(img.pixels, arr.astype(np.float32))
    assert img.bits_stored == 16
    assert img.pixel_spacing == pytest.approx((0.1, 0.1), rel=1e-3)
    Image.fromarray(arr).save(tmp_path / "y.png")
    assert load_image(tmp_path / "y.png").pixel_spacing is None


def test_rgb_and_rgba_png_collapse_to_grey(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = np.stack([grey] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png").pixels, grey.astype(np.float32))
    colour = np.zeros((2, 2, 4), np.uint8)
    colour[..., 0], colour[..., 3] = 255, 255
    Image.fromarray(colour, "RGBA").save(tmp_path / "c.png")
    img = load_image(tmp_path / "c.png")
    assert img.pixels.shape == (2, 2)
    np.testing.assert_allclose(img.pixels, 0.299 * 255, rtol=1e-5)


def test_tiff_16_bit(tmp_path: Path) -> None:
    arr = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "t.tif")
    img = load_image(tmp_path / "t.tif")
    np.testing.assert_array_equal(img.pixels, arr.astype(np.float32))
    assert img.bits_stored == 16


def test_jpeg_baseline_dicom_decodes_through_plugin(tmp_path: Path) -> None:
    import io

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    arr = (np.add.outer(np.arange(32), np.arange(48)) * 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    p = make_dicom(tmp_path / "plain.dcm", arr)
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm")
    img = load_image(tmp_path / "jpeg.dcm")
    assert img.pixels.shape == arr.shape
    assert np.abs(img.pixels - arr).max() <= 4  # lossy codec, but the same image
