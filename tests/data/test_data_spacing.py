"""DICOM pixel spacing: one function shared by the manifest builder and the image reader."""

from __future__ import annotations

from pydicom.dataset import Dataset

from breastscreen.data.readers import dicom_pixel_spacing


def _region(units: int, dx: object, dy: object) -> Dataset:
    reg = Dataset()
    reg.PhysicalUnitsXDirection = units
    reg.PhysicalUnitsYDirection = units
    reg.PhysicalDeltaX = dx
    reg.PhysicalDeltaY = dy
    return reg


def test_spacing_tag_order_and_ultrasound_regions() -> None:
    ds = Dataset()
    assert dicom_pixel_spacing(ds) == (None, None)
    ds.ImagerPixelSpacing = [0.1, 0.2]
    assert dicom_pixel_spacing(ds) == ((0.1, 0.2), "ImagerPixelSpacing")
    ds.PixelSpacing = [0.07, 0.07]
    assert dicom_pixel_spacing(ds) == ((0.07, 0.07), "PixelSpacing")

    us = Dataset()
    us.SequenceOfUltrasoundRegions = [_region(3, 0.01, -0.02)]  # cm; sign = direction only
    assert dicom_pixel_spacing(us) == ((0.2, 0.1), "SequenceOfUltrasoundRegions")
    us.SequenceOfUltrasoundRegions = [_region(4, 0.01, 0.02)]  # seconds, not a length
    assert dicom_pixel_spacing(us) == (None, None)


def test_bad_spacing_values_count_as_absent() -> None:
    ds = Dataset()
    ds.PixelSpacing = [0.0, 0.1]
    assert dicom_pixel_spacing(ds) == (None, None)
    ds.ImagerPixelSpacing = [0.1, 0.1]
    assert dicom_pixel_spacing(ds) == ((0.1, 0.1), "ImagerPixelSpacing")
