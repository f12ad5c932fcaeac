"""Tiny DICOM files written in tests (imported by the data tests; not a test module itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image - For Presentation
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"


def make_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    modality: str = "MG",
    sop_class: str = MG_SOP_CLASS,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs: Any,
) -> Path:
    """Write an uncompressed little-endian DICOM; ``attrs`` become header attributes (keywords)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "p1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if pixels is not None:
        arr = np.asarray(pixels)
        frames = arr.shape[0] if arr.ndim == 3 else 1
        if arr.ndim == 3:
            ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        if arr.dtype == np.uint8:
            ds.BitsAllocated = 8
        else:
            ds.BitsAllocated = 16
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence (e.g. ViewCodeSequence)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item
