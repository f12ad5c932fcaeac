"""Corpus families "raster" (PNG/TIFF/JPEG files) and "files" (FIFOs, devices, links in a scanned folder).

Raster cases go through `manifest build` and `preprocess` like the DICOM ones; the special-file
cases check that a scan reports them without opening them (a FIFO would block forever, a link
to /dev/zero never ends) and keeps the good exam next to them.
"""

from __future__ import annotations

import os
import socket
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from breastscreen.data.manifest import read_manifest
from hardening_helpers import Case, bs, expect, phantom, png

CASES: list[Case] = []


def _run(box: Path, write: Callable[[Path], None], problem: str | None, view: str | None, pre: str | None) -> None:
    folder = box / "in"
    folder.mkdir(parents=True)
    write(folder)
    res = bs("manifest", "build", folder, "--out", box / "m.jsonl")
    if problem is not None:
        expect(res, 1, problem)
        return
    expect(res, 0)
    (exam,) = read_manifest(box / "m.jsonl")
    if view is not None:
        assert exam.present_views() == [view], exam.present_views()
    if pre is None:
        return
    res = bs("preprocess", box / "m.jsonl", "--out", box / "pre", "--scale", "0.5")
    if pre in ("ok", "warn"):
        expect(res, 0, "1 warnings" if pre == "warn" else "0 warnings")
    else:
        expect(res, 2, pre)


def raster(name: str, write: Callable[[Path], None], *, problem: str | None = None, view: str | None = "L-CC",
           pre: str | None = "warn") -> None:
    """A raster case; PNGs carry no pixel spacing, so a good one preprocesses with a spacing warning."""
    kind = "error" if problem or pre not in (None, "ok", "warn") else "accepted"
    CASES.append(Case("raster", name, kind, lambda box: _run(box, write, problem, view, pre)))


def img(name: str, arr: np.ndarray, **info) -> Callable[[Path], None]:  # noqa: ANN003 - Pillow save options
    return lambda folder: png(folder / name, arr, **info) and None


P16 = phantom(bits=16)
P8 = (phantom(bits=8)).astype(np.uint8)

raster("png16-valid", img("e1_L-CC.png", P16))
raster("png8-valid", img("e1_L_CC.png", P8))
raster("png-dpi-spacing", img("e1_L-CC.png", P16, dpi=(254, 254)), pre="ok")  # 0.1 mm
raster("png-dpi-1", img("e1_L-CC.png", P16, dpi=(1, 1)))  # 25.4 mm: implausible, assumed 0.1 mm with a warning
raster("png-dpi-huge", img("e1_L-CC.png", P16, dpi=(1e7, 1e7)))
raster("png-rgb", img("e1_L-CC.png", np.stack([P8] * 3, -1)))
raster("png-rgba", img("e1_L-CC.png", np.dstack([P8] * 3 + [np.full_like(P8, 255)])))
raster("png-grey-alpha", lambda f: Image.fromarray(np.dstack([P8, np.full_like(P8, 255)]), "LA").save(f / "e1_L-CC.png"))
raster("png-palette", lambda f: Image.fromarray(P8).convert("P").save(f / "e1_L-CC.png"))
raster("png-bilevel", lambda f: Image.fromarray(P8 > 60).save(f / "e1_L-CC.png"))
raster("jpeg-valid", lambda f: Image.fromarray(P8).save(f / "e1_L-CC.jpg", quality=95))
raster("jpeg-cmyk", lambda f: Image.fromarray(np.stack([P8] * 3, -1)).convert("CMYK").save(f / "e1_L-CC.jpg"),
       pre="CMYK")
raster("tiff-16", lambda f: Image.fromarray(P16).save(f / "e1_L-CC.tif"))
raster("tiff-float-nan", lambda f: Image.fromarray(np.where(P16 > 0, np.nan, 0).astype(np.float32)).save(f / "e1_L-CC.tif"),
       pre="NaN or infinite")
raster("tiff-float-inf", lambda f: Image.fromarray(np.where(P16 > 30000, np.inf, 1).astype(np.float32)).save(f / "e1_L-CC.tif"),
       pre="NaN or infinite")
raster("tiff-multipage", lambda f: Image.fromarray(P8).save(f / "e1_L-CC.tif", save_all=True,
                                                              append_images=[Image.fromarray(P8)]), pre="multi-page")
raster("png-noise", img("e1_L-CC.png", np.random.default_rng(2).integers(0, 65535, P16.shape).astype(np.uint16)),
       pre="noise")
raster("png-constant", img("e1_L-CC.png", np.full(P16.shape, 999, np.uint16)), pre="uniform")
raster("png-1x1", img("e1_L-CC.png", np.ones((1, 1), np.uint8)), pre="too small")
raster("png-tall-thin", img("e1_L-CC.png", np.ones((4000, 3), np.uint8) * 200), pre="too small")


def _truncated(folder: Path) -> None:
    path = png(folder / "e1_L-CC.png", P16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_crc(folder: Path) -> None:
    path = png(folder / "e1_L-CC.png", P16)
    data = bytearray(path.read_bytes())
    i = data.index(b"IDAT")
    data[i + 10] ^= 0xFF
    path.write_bytes(bytes(data))


def _bomb(folder: Path) -> None:
    """A PNG whose header declares 50000 x 50000 pixels (2.5 gigapixels) with a tiny body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 1000)
    (folder / "e1_L-CC.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                                          + chunk(b"IEND", b""))


raster("png-truncated", _truncated, pre="unreadable image|truncated")
raster("png-bad-crc", _bad_crc, pre="unreadable image|crc|broken")
raster("png-bomb-header", _bomb, problem="above the limit|decompression-bomb")
raster("png-zero-bytes", lambda f: (f / "e1_L-CC.png").write_bytes(b""), problem="unreadable image")
raster("png-text", lambda f: (f / "e1_L-CC.png").write_text("not a png\n"), problem="unreadable image")
raster("png-random", lambda f: (f / "e1_L-CC.png").write_bytes(np.random.default_rng(3).bytes(5000)),
       problem="unreadable image")
raster("gif-named-png", lambda f: Image.fromarray(P8).save(f / "e1_L-CC.png", format="GIF"))
raster("name-no-view", img("holiday.png", P8), problem="cannot tell exam and view")
raster("name-u-laterality", img("e1_U-CC.png", P8), problem="unknown laterality 'U'")
raster("name-ultrasound", img("e1_L-US.png", P8), view="L-US", pre=None)
raster("name-left-cc-words", img("Mass-Test_P_00007_LEFT_CC.png", P16), view="L-CC")
raster("name-compact-rmlo", img("patient7_RMLO.png", phantom(bits=16, side="R")), view="R-MLO")
raster("name-unicode", img("Zoë_é_L-CC.png", P16))
raster("name-spaces", img("exam one_L-CC.png", P16))
raster("mask-without-image", img("e9_L-CC_mask_benign_0.png", P8), problem="lesion mask without its image")
raster("txt-file", lambda f: (f / "notes.txt").write_text("x"), problem="not an image file")


# --------------------------------------------------------------------------- special files


def _files_run(box: Path, make: Callable[[Path, Path], None], pattern: str) -> None:
    folder = box / "in"
    folder.mkdir(parents=True)
    png(folder / "good_L-CC.png", P16)
    make(folder, box)
    res = bs("manifest", "build", folder, "--out", box / "m.jsonl")
    expect(res, 0, pattern)
    (exam,) = read_manifest(box / "m.jsonl")
    assert exam.exam_id == "good"


def special(name: str, make: Callable[[Path, Path], None], pattern: str, kind: str = "error") -> None:
    """A scanned folder holding a good PNG and the special file ``make`` adds; ``pattern`` must be reported."""
    CASES.append(Case("files", name, kind, lambda box: _files_run(box, make, pattern)))


special("fifo-png", lambda f, b: os.mkfifo(f / "x_L-CC.png"), r"x_L-CC.png: not a regular file \(a FIFO")
special("fifo-dcm", lambda f, b: os.mkfifo(f / "x.dcm"), r"x.dcm: not a regular file \(a FIFO")
special("symlink-dev-zero-png", lambda f, b: os.symlink("/dev/zero", f / "z_L-CC.png"),
        r"z_L-CC.png: symbolic link to /dev/zero, outside")
special("symlink-dev-zero-dcm", lambda f, b: os.symlink("/dev/zero", f / "z.dcm"), "z.dcm: symbolic link to /dev/zero")
special("symlink-outside-tree", lambda f, b: os.symlink(png(b / "elsewhere_L-CC.png", P16), f / "o_L-CC.png"),
        "o_L-CC.png: symbolic link to .*outside the folder")
special("symlink-etc-passwd", lambda f, b: os.symlink("/etc/passwd", f / "p.dcm"), "p.dcm: symbolic link to /etc/passwd")
special("symlink-broken", lambda f, b: os.symlink(b / "missing.png", f / "m_L-CC.png"), "m_L-CC.png: symbolic link to")
special("symlink-folder", lambda f, b: os.symlink(b, f / "loop"), "symbolic link to a folder")


def _inside_link(folder: Path, box: Path) -> None:
    store = folder / ".store"  # hidden: not scanned itself, but inside the scanned tree
    store.mkdir()
    png(store / "real.png", phantom(bits=16, side="R"))
    os.symlink(store / "real.png", folder / "good_R-CC.png")


def _socket(folder: Path, box: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "s.dcm"))
    s.close()


special("socket", _socket, r"s.dcm: not a regular file \(a socket")
special("folder-named-png", lambda f, b: (f / "dir_L-CC.png").mkdir(), "1 exams", kind="accepted")
special("hidden-files-skipped", lambda f, b: (f / ".DS_Store").write_bytes(b"\0junk"), "0 problems", kind="accepted")
CASES.append(Case("files", "symlink-inside-tree", "accepted", lambda box: _inside_link_run(box)))


def _inside_link_run(box: Path) -> None:
    folder = box / "in"
    folder.mkdir(parents=True)
    png(folder / "good_L-CC.png", P16)
    _inside_link(folder, box)
    res = bs("manifest", "build", folder, "--out", box / "m.jsonl")
    expect(res, 0)
    (exam,) = read_manifest(box / "m.jsonl")
    assert exam.present_views() == ["L-CC", "R-CC"]
