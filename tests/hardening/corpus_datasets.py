"""Corpus families "adapter" (dataset folders through `manifest adapt`) and "pickle" (`manifest import-nyu`).

A bad row is reported (path or table line with the reason) and the other rows still make their
exams; structural problems (a missing column, a table that is not text) exit 2; files a table
names outside the dataset folder are never used; an exam-list pickle never runs code, never
expands without limit and never names images outside the image folder.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np

from breastscreen.data.manifest import read_manifest
from hardening_helpers import Case, bs, expect, mg_dataset, phantom, png, save

CASES: list[Case] = []

# --------------------------------------------------------------------------- BUS-BRA

BUSBRA_HEADER = "ID,Case,Histology,Pathology,BIRADS,Device,Side,BBOX"


def _busbra(root: Path, rows: list[str], folds: str | None = None, encoding: str = "utf-8") -> None:
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    for i in (1, 2, 3):
        png(root / "Images" / f"bus_000{i}-l.png", (phantom(bits=8)).astype(np.uint8))
        png(root / "Masks" / f"mask_000{i}-l.png", np.zeros((160, 120), np.uint8))
    good = [f"bus_000{i}-l,{i},Fibroadenoma,benign,3,GE,left,\"[10, 10, 20, 20]\"" for i in (1, 2)]
    (root / "bus_data.csv").write_bytes(("\n".join([BUSBRA_HEADER, *good, *rows]) + "\n").encode(encoding))
    if folds is not None:
        (root / "5-fold-cv.csv").write_text(folds)


def _adapt_run(box: Path, dataset: str, make: Callable[[Path], None], code: int, pattern: str | None,
               exams: int | None) -> None:
    root = box / "ds"
    make(root)
    res = bs("manifest", "adapt", dataset, root, "--out", box / "m.jsonl")
    expect(res, code, pattern)
    if exams is not None:
        assert len(read_manifest(box / "m.jsonl")) == exams
        for exam in read_manifest(box / "m.jsonl"):
            for _, img in exam.iter_images():
                assert root.resolve() in Path(img.path).resolve().parents


def adapt(name: str, dataset: str, make: Callable[[Path], None], code: int, pattern: str | None, exams: int | None,
          kind: str = "error") -> None:
    CASES.append(Case("adapter", name, kind, lambda box: _adapt_run(box, dataset, make, code, pattern, exams)))


row3 = "bus_0003-l,3,Fibroadenoma,benign,3,GE,left,\"[1,2,3,4]\""
adapt("busbra-valid", "bus-bra", lambda r: _busbra(r, [row3]), 0, "3 exams", 3, kind="accepted")
adapt("busbra-bad-fold", "bus-bra", lambda r: _busbra(r, [row3], folds="ID,kFold\nbus_0001-l,x\nbus_0002-l,2\n"), 0,
      "kFold must be a fold number", 3)
adapt("busbra-fold-float-text", "bus-bra", lambda r: _busbra(r, [row3], folds="ID,kFold\nbus_0001-l,1e400\n"), 0,
      "kFold must be a fold number", 3)
adapt("busbra-extra-field", "bus-bra", lambda r: _busbra(r, [row3 + ",surplus"]), 0, "more fields than columns", 2)
adapt("busbra-missing-column", "bus-bra", lambda r: (r.mkdir(parents=True), (r / "bus_data.csv").write_text(
    "ID,Case\nbus_0001-l,1\n")), 2, "missing columns", None)
adapt("busbra-bbox-deep", "bus-bra", lambda r: _busbra(r, ['bus_0003-l,3,F,benign,3,GE,left,"' + "[" * 5000 + "]" * 5000
                                                           + '"']), 0, "BBOX must look like", 2)
adapt("busbra-bbox-code", "bus-bra", lambda r: _busbra(r, ['bus_0003-l,3,F,benign,3,GE,left,"__import__(\'os\')"']), 0,
      "BBOX must look like", 2)
adapt("busbra-bbox-inf", "bus-bra", lambda r: _busbra(r, ['bus_0003-l,3,F,benign,3,GE,left,"[1e400, 0, 1, 1]"']), 0,
      "BBOX must look like", 2)
adapt("busbra-case-text", "bus-bra", lambda r: _busbra(r, ["bus_0003-l,abc,F,benign,3,GE,left,\"[1,2,3,4]\""]), 0,
      "Case must be a number", 2)
adapt("busbra-pathology", "bus-bra", lambda r: _busbra(r, ["bus_0003-l,3,F,maybe,3,GE,left,\"[1,2,3,4]\""]), 0,
      "Pathology must be benign or malignant", 2)
adapt("busbra-id-escape", "bus-bra", lambda r: _busbra(r, ["../../etc/passwd,3,F,benign,3,GE,left,\"[1,2,3,4]\""]), 0,
      "ID must be a plain image name", 2)
adapt("busbra-utf16", "bus-bra", lambda r: _busbra(r, [row3], encoding="utf-16"), 0, "3 exams", 3, kind="accepted")
adapt("busbra-latin1", "bus-bra", lambda r: _busbra(r, ["bus_0003-l,3,Caf\u00e9,benign,3,GE,left,\"[1,2,3,4]\""],
                                                      encoding="latin-1"), 2, "not UTF-8", None)
adapt("busbra-mixed-case", "bus-bra", lambda r: _busbra(r, ["bus_0003-l,1,F,malignant,4,GE,left,\"[1,2,3,4]\""]), 0,
      "mixes benign and malignant", 1)


def _busbra_link(root: Path) -> None:
    _busbra(root, [])
    os.symlink("/etc/hostname", root / "Images" / "bus_0009-l.png")
    with open(root / "bus_data.csv", "a") as fh:
        fh.write("bus_0009-l,9,F,benign,3,GE,left,\"[1,2,3,4]\"\n")


adapt("busbra-image-symlink-outside", "bus-bra", _busbra_link, 0, "outside", 2)

# --------------------------------------------------------------------------- VinDr

VINDR = "study_id,series_id,image_id,laterality,view_position,breast_birads,breast_density,split"


def _vindr(root: Path, rows: list[str], findings: str | None = None) -> None:
    for study, image, side, view in (("s1", "i1", "L", "CC"), ("s1", "i2", "R", "CC")):
        save(mg_dataset(side=side, view=view), root / "images" / study / f"{image}.dicom", enforce_file_format=True)
    good = ["s1,x,i1,L,CC,BI-RADS 1,DENSITY B,training", "s1,x,i2,R,CC,BI-RADS 2,DENSITY B,training"]
    (root / "breast-level_annotations.csv").write_text("\n".join([VINDR, *good, *rows]) + "\n")
    if findings is not None:
        (root / "finding_annotations.csv").write_text(findings)


FIND = "image_id,finding_categories,finding_birads,xmin,ymin,xmax,ymax\n"
adapt("vindr-valid", "vindr", lambda r: _vindr(r, []), 0, "1 exams", 1, kind="accepted")
adapt("vindr-categories-deep", "vindr", lambda r: _vindr(r, [], FIND + 'i1,"' + "[" * 3000 + "]" * 3000 + '",,1,1,2,2\n'),
      0, "finding_categories", 1)
adapt("vindr-categories-code", "vindr", lambda r: _vindr(r, [], FIND + "i1,\"[__import__('os').system('x')]\",,1,1,2,2\n"),
      0, "finding_categories", 1)
adapt("vindr-coords-text", "vindr", lambda r: _vindr(r, [], FIND + "i1,\"['Mass']\",BI-RADS 4,a,b,c,d\n"), 0,
      "box coordinates must be finite numbers", 1)
adapt("vindr-coords-inf", "vindr", lambda r: _vindr(r, [], FIND + "i1,\"['Mass']\",BI-RADS 4,inf,1,2,3\n"), 0,
      "box coordinates must be finite numbers", 1)
adapt("vindr-missing-column", "vindr", lambda r: (r.mkdir(parents=True), (r / "breast-level_annotations.csv").write_text(
    "study_id,image_id\ns1,i1\n")), 2, "missing columns", None)
adapt("vindr-study-escape", "vindr", lambda r: _vindr(r, ["../..,x,passwd,L,MLO,BI-RADS 1,DENSITY A,test"]), 0,
      "must be plain names", 1)
adapt("vindr-image-escape", "vindr", lambda r: _vindr(r, ["s1,x,../../../etc/passwd,L,MLO,BI-RADS 1,DENSITY A,test"]), 0,
      "must be plain names", 1)
adapt("vindr-bad-laterality", "vindr", lambda r: _vindr(r, ["s1,x,i3,X,CC,BI-RADS 1,DENSITY A,test"]), 0,
      "unsupported laterality", 1)

# --------------------------------------------------------------------------- CBIS-DDSM

CBIS = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
        "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path")


def _cbis(root: Path, rows: list[str]) -> None:
    save(mg_dataset(), root / "Mass-Test_P_00001_LEFT_CC" / "1.dcm", enforce_file_format=True)
    good = "P_00001,2,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,3,BENIGN,4,Mass-Test_P_00001_LEFT_CC/1.dcm,,"
    (root / "mass_case_description_test_set.csv").write_text("\n".join([CBIS, good, *rows]) + "\n")


adapt("cbis-valid", "cbis-ddsm", lambda r: _cbis(r, []), 0, "1 exams", 1, kind="accepted")
adapt("cbis-etc-passwd", "cbis-ddsm", lambda r: _cbis(r, ["P_00002,2,LEFT,CC,1,mass,O,C,3,BENIGN,4,/etc/passwd,,"]), 0,
      "not found inside the dataset folder", 1)
adapt("cbis-dotdot", "cbis-ddsm", lambda r: _cbis(r, ["P_00002,2,LEFT,CC,1,mass,O,C,3,BENIGN,4,../../x.dcm,,"]), 0,
      "not found inside the dataset folder", 1)
adapt("cbis-mask-etc", "cbis-ddsm", lambda r: _cbis(r, ["P_00002,2,LEFT,MLO,1,mass,O,C,3,BENIGN,4,"
                                                        "Mass-Test_P_00001_LEFT_CC/1.dcm,,/etc/shadow"]), 0,
      "ROI mask named in .* not found inside", 2)
adapt("cbis-pathology", "cbis-ddsm", lambda r: _cbis(r, ["P_00002,2,LEFT,CC,1,mass,O,C,3,MAYBE,4,x.dcm,,"]), 0,
      "pathology must be", 1)
adapt("cbis-missing-columns", "cbis-ddsm", lambda r: (r.mkdir(parents=True), (r / "mass_case_description_test_set.csv")
                                                     .write_text("patient_id\nP_1\n")), 2, "missing columns", None)
adapt("cbis-side", "cbis-ddsm", lambda r: _cbis(r, ["P_00002,2,BOTH,CC,1,mass,O,C,3,BENIGN,4,x.dcm,,"]), 0,
      "unknown side/view", 1)

# --------------------------------------------------------------------------- mini-MIAS and BUSI


def _mias(root: Path, info: str) -> None:
    (root / "images").mkdir(parents=True)
    png(root / "images" / "mdb001.png", (phantom(1024, 1024, bits=8)).astype(np.uint8))
    (root / "Info.txt").write_text(info)


adapt("mias-valid", "mini-mias", lambda r: _mias(r, "mdb001 G CIRC B 535 425 197\n"), 0, "1 exams", 1, kind="accepted")
adapt("mias-garbage", "mini-mias", lambda r: _mias(r, "\0\1\2 garbage\n"), 2, "no mdbNNN rows", None)
adapt("mias-huge-numbers", "mini-mias", lambda r: _mias(r, "mdb001 G CIRC B 99999999999 1 1\n"), 0, "1 exams", 1,
      kind="accepted")
adapt("mias-no-severity", "mini-mias", lambda r: _mias(r, "mdb001 G CIRC\n"), 2, "without severity", None)


def _busi(root: Path, extra: Callable[[Path], None]) -> None:
    (root / "benign").mkdir(parents=True)
    png(root / "benign" / "benign (1).png", (phantom(bits=8)).astype(np.uint8))
    extra(root)


adapt("busi-valid", "busi", lambda r: _busi(r, lambda x: None), 0, "1 exams", 1, kind="accepted")
adapt("busi-symlink-out", "busi", lambda r: _busi(r, lambda x: os.symlink("/etc/hostname", x / "benign" / "benign (2).png")),
      0, "outside", 1)
adapt("busi-fifo", "busi", lambda r: _busi(r, lambda x: os.mkfifo(x / "benign" / "benign (3).png")), 0, "FIFO", 1)
adapt("busi-odd-name", "busi", lambda r: _busi(r, lambda x: png(x / "benign" / "holiday.png", np.zeros((4, 4), np.uint8))),
      0, "not a BUSI file name", 1)

# --------------------------------------------------------------------------- NYU exam-list pickles


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, ("touch /tmp/bs-corpus-pwned",))


def _pickle_run(box: Path, payload: Callable[[Path], bytes], code: int, pattern: str) -> None:
    images = box / "imgs"
    images.mkdir()
    for v in ("L_CC", "R_CC", "L_MLO", "R_MLO"):
        png(images / f"0_{v}.png", (phantom(bits=8)).astype(np.uint8))
    (box / "list.pkl").write_bytes(payload(box))
    res = bs("manifest", "import-nyu", box / "list.pkl", "--images", images, "--out", box / "m.jsonl")
    expect(res, code, pattern)
    assert not Path("/tmp/bs-corpus-pwned").exists()


def pkl(name: str, payload: Callable[[Path], bytes], code: int, pattern: str, kind: str = "error") -> None:
    CASES.append(Case("pickle", name, kind, lambda box: _pickle_run(box, payload, code, pattern)))


ENTRY = {"L-CC": ["0_L_CC"], "R-CC": ["0_R_CC"], "L-MLO": ["0_L_MLO"], "R-MLO": ["0_R_MLO"], "horizontal_flip": "NO"}


def _dag(depth: int) -> bytes:
    node: list = ["leaf"]
    for _ in range(depth):
        node = [node, node]
    return pickle.dumps([{**ENTRY, "extra": node}], protocol=2)


pkl("valid", lambda b: pickle.dumps([ENTRY]), 0, "1 exams", kind="accepted")
pkl("os-system", lambda b: pickle.dumps([_Evil()]), 2, "global posix.system|global os.system|not allowed")
pkl("eval-global", lambda b: b"cbuiltins\neval\n(S'1+1'\ntR.", 2, "builtins.eval")
pkl("numpy-array", lambda b: pickle.dumps([{**ENTRY, "best_center": np.zeros(3)}]), 2, "numpy arrays")
pkl("dag-2-to-40", lambda b: _dag(40), 2, "expands to more than|nested more than")
pkl("dag-2-to-30", lambda b: _dag(30), 2, "expands to more than")
pkl("nested-deep", lambda b: pickle.dumps([{**ENTRY, "extra": _nested_list(200)}]), 2, "nested more than")
pkl("truncated", lambda b: pickle.dumps([ENTRY])[:20], 2, "not a valid exam-list pickle")
pkl("not-a-list", lambda b: pickle.dumps({"a": 1}), 2, "expected a list")
pkl("entry-not-dict", lambda b: pickle.dumps([1, 2]), 2, "expected a dict")
pkl("name-dotdot", lambda b: pickle.dumps([{**ENTRY, "L-CC": ["../../../etc/passwd"]}]), 2, "leaves the image folder")
pkl("name-absolute", lambda b: pickle.dumps([{**ENTRY, "L-CC": ["/etc/passwd"]}]), 2, "leaves the image folder")
pkl("persistent-id", lambda b: b"\x80\x02P0\n.", 2, "persistent references")
pkl("huge-file", lambda b: b"\x80\x02" + b"N0" * (33 * 1024 * 1024) + b".", 2, "size limit|more than")
pkl("label-3", lambda b: pickle.dumps([{**ENTRY, "cancer_label": {"left_malignant": 3}}]), 2, "must be 0 or 1")
pkl("flip-text", lambda b: pickle.dumps([{**ENTRY, "horizontal_flip": "MAYBE"}]), 2, "horizontal_flip")
pkl("missing-image", lambda b: pickle.dumps([{**ENTRY, "L-CC": ["nope"]}]), 2, "listed images not found")
pkl("protocol-5", lambda b: pickle.dumps([ENTRY], protocol=5), 0, "1 exams", kind="accepted")


def _nested_list(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


def _manifest_json_check(box: Path) -> None:
    """A manifest written away from the image folder gets a roots file naming that folder."""
    images = box / "imgs"
    images.mkdir()
    for v in ("L_CC", "R_CC", "L_MLO", "R_MLO"):
        png(images / f"0_{v}.png", (phantom(bits=8)).astype(np.uint8))
    (box / "list.pkl").write_bytes(pickle.dumps([ENTRY]))
    out = box / "out" / "m.jsonl"
    expect(bs("manifest", "import-nyu", box / "list.pkl", "--images", images, "--out", out), 0, "1 exams")
    roots = json.loads((box / "out" / "m.roots.json").read_text())["roots"]
    assert roots == [str(images.resolve())]
    expect(bs("manifest", "check", out), 0)


CASES.append(Case("pickle", "roots-file", "accepted", _manifest_json_check))
