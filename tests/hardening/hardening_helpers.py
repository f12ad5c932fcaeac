"""Helpers of the hostile-input corpus: run the CLI in-process, write tiny DICOM/PNG files and mutate them.

Not a test module. Everything is made in memory or under a test's own folder; images are small
(about 160 x 120 pixels) so that a case runs in well under a second.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
H, W = 160, 120


@dataclass
class Result:
    """Exit status and the combined stdout + stderr of one command."""

    code: int
    out: str


def bs(*args: Any, cwd: Path | None = None) -> Result:
    """Run ``breastscreen ARGS`` in this process through the console entry point's handler."""
    from breastscreen.cli import run

    buf = io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
            os.chdir(cwd)
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = run([str(a) for a in args])
    finally:
        os.chdir(old)
    return Result(code, buf.getvalue())


def expect(res: Result, code: int | tuple[int, ...], pattern: str | None = None) -> None:
    """Assert the exit status (one or several allowed) and that the output matches ``pattern``."""
    codes = code if isinstance(code, tuple) else (code,)
    assert res.code in codes, f"exit {res.code}, expected {codes}:\n{res.out[-3000:]}"
    if pattern is not None:
        assert re.search(pattern, res.out, re.IGNORECASE | re.DOTALL), f"no /{pattern}/ in:\n{res.out[-3000:]}"


def phantom(h: int = H, w: int = W, side: str = "L", bits: int = 12) -> np.ndarray:
    """A smooth half-ellipse breast against the chest-wall edge (left for ``side`` L), uint16."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x = xx if side == "L" else (w - 1 - xx)
    d = ((yy - h / 2) / (0.42 * h)) ** 2 + (x / (0.7 * w)) ** 2
    top = 2**bits - 1
    img = np.where(d <= 1, (0.45 + 0.35 * (1 - x / w) + 0.05 * np.sin(yy / 7) * np.cos(x / 5)) * top, 0.0)
    return np.clip(img, 0, top).astype(np.uint16)


def mg_dataset(pixels: np.ndarray | None = None, *, side: str = "L", view: str = "CC", **attrs: Any) -> FileDataset:
    """An uncompressed explicit-VR little-endian mammogram data set with laterality, view and spacing."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = MG_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MG_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = "p1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageLaterality = side
    ds.ViewPosition = view
    ds.PixelSpacing = [0.1, 0.1]
    arr = phantom(side=side) if pixels is None else np.asarray(pixels)
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if arr.dtype.itemsize == 1 else 16
    ds.BitsStored = 8 if arr.dtype.itemsize == 1 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path, **kwargs: Any) -> Path:
    """Write a data set without pydicom's value validation (hostile values must reach the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = dicom_config.settings.writing_validation_mode
    dicom_config.settings.writing_validation_mode = dicom_config.IGNORE
    try:
        ds.save_as(str(path), **kwargs)
    finally:
        dicom_config.settings.writing_validation_mode = old
    return path


_LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV")


def save_with_raw_element(ds: Dataset, path: Path, tag: int, raw: bytes) -> Path:
    """Save ``ds`` (explicit VR little endian, without ``tag``) with ``raw`` bytes as the value of
    ``tag``, written as VR UN so that readers convert it with the dictionary VR (``IS 'abc'`` ...)."""
    from breastscreen.data.dicom_checks import _meta_end

    if tag in ds:
        del ds[tag]
    save(ds, path, enforce_file_format=True)
    data = path.read_bytes()
    pos = _meta_end(data)
    while pos + 8 <= len(data):
        group, elem = int.from_bytes(data[pos:pos + 2], "little"), int.from_bytes(data[pos + 2:pos + 4], "little")
        if (group << 16 | elem) > tag:
            break
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length = int.from_bytes(data[pos + 8:pos + 12], "little")
            pos += 12 + (0 if length == 0xFFFFFFFF else length)
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    value = raw + (b" " if len(raw) % 2 else b"")
    element = ((tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + b"UN\0\0"
               + len(value).to_bytes(4, "little") + value)
    path.write_bytes(data[:pos] + element + data[pos:])
    return path


def png(path: Path, arr: np.ndarray, **info: Any) -> Path:
    """Write an array as PNG (16-bit when uint16); ``info`` goes to Pillow's save (e.g. dpi)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **info)
    return path


def files_outside(box: Path, root: Path) -> list[Path]:
    """Files under ``root`` that are not under ``box`` (a command wrote outside its folder)."""
    return [p for p in root.rglob("*") if p.is_file() and box not in p.parents]


@dataclass
class Case:
    """One corpus case: family, name, expected kind of outcome and the function that runs and checks it.

    ``kind`` is ``"error"`` (a clear, named refusal), ``"accepted"`` (processed, with the right
    result checked) or ``"limit"`` (a documented limit of what can be detected; the run must
    still be clean).
    """

    family: str
    name: str
    kind: str
    run: Callable[[Path], None]
    internal_error: bool = False  # the case provokes exit 3 on purpose (the last-resort handler)

    @property
    def id(self) -> str:
        """pytest id."""
        return f"{self.family}-{self.name}"
