"""Dataset adapters: real mini-MIAS / BUS-BRA when present, tiny fixtures for BUSI, CBIS-DDSM, VinDr."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.adapters import (
    adapt_bus_bra,
    adapt_busi,
    adapt_cbis_ddsm,
    adapt_mini_mias,
    adapt_vindr,
    parse_mias_info,
    vindr_kind,
)
from breastscreen.data.bags import breast_bags
from breastscreen.data.lesions import exam_lesions, lesion_region, lesion_summary
from breastscreen.data.manifest import read_manifest
from breastscreen.data.readers import load_image
from breastscreen.data.types import BreastLabel
from breastscreen.errors import ManifestError
from data_dicom_factory import make_dicom


def _png(path: Path, shape: tuple[int, int] = (20, 30), value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- mini-MIAS


def _tiny_mias(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "Info.txt").write_text(
        "header text\n\nmdb001 G CIRC B 535 425 197\nmdb002 G NORM \nmdb003 D CALC M *NOTE 3* \n"
        "mdb004 D SPIC M 10 1000 30\nmdb004 D CIRC B 500 500 5\n"
    )
    for n in range(1, 5):
        _png(root / "images" / f"mdb{n:03d}.png", (1024, 1024))
    return root


def test_mini_mias_fixture_rules(tmp_path: Path) -> None:
    root = _tiny_mias(tmp_path / "mias")
    exams = adapt_mini_mias(root, masks_dir=tmp_path / "masks")
    assert [e.exam_id for e in exams] == ["mias001", "mias002"]
    e1, e2 = exams
    # film-marker convention: odd = left, even = right
    assert Path(e1.views["L-MLO"][0].path).name == "mdb001.png"
    assert Path(e1.views["R-MLO"][0].path).name == "mdb002.png"
    assert e1.labels["L"].benign == 1 and e1.labels["L"].malignant == 0
    assert e1.labels["R"].benign == 0 and e1.labels["R"].malignant == 0
    roi = e1.views["L-MLO"][0].rois[0]
    assert roi.box == (338, 402, 733, 797)  # centre (535, 1024-425=599), radius 197
    # the circular mask is centred on the same point
    mask = load_image(e1.views["L-MLO"][0].masks[0].path).pixels
    assert mask[599, 535] == 255 and mask[599, 535 + 198] == 0 and mask[599 - 196, 535] == 255
    assert e2.views["L-MLO"][0].meta["findings_without_location"] == [{"class": "CALC", "severity": "M"}]
    assert e2.labels["R"].benign == 1 and e2.labels["R"].malignant == 1
    assert e2.views["R-MLO"][0].rois[0].box == (0, 0, 41, 55)  # clipped at the top-left corner
    # lesions: a circle ROI and a mask per located finding, both with the finding's position as id
    assert roi.circle == (535.0, 599.0, 197.0) and roi.lesion_id == "1" and roi.kind == "mass"
    (rec,) = exam_lesions(e1)
    assert (rec.lesion_id, rec.outcome, rec.kind, rec.shape, rec.circle) == (
        "1", "benign", "mass", "mask", (535.0, 599.0, 197.0))
    r_mlo = e2.views["R-MLO"][0]
    assert [(r.lesion_id, r.label, r.kind, r.circle) for r in r_mlo.rois] == [
        ("1", "malignant", "mass", (10.0, 24.0, 30.0)), ("2", "benign", "mass", (500.0, 524.0, 5.0))]
    assert [m.lesion_id for m in r_mlo.masks] == ["1", "2"]
    # the circle region equals the written mask, pixel for pixel (also where the circle is clipped)
    for rec in exam_lesions(e2):
        circle = replace(rec, shape="circle", mask_path=None)
        mask = load_image(rec.mask_path).pixels > 0
        assert np.array_equal(lesion_region(circle, (1024, 1024)), mask) and mask.sum() > 0
    no_masks = adapt_mini_mias(root)
    assert [(r.shape, r.lesion_id) for r in exam_lesions(no_masks[1])] == [("circle", "1"), ("circle", "2")]
    assert e2.density == "C" and e1.density == "B"
    info = adapt_mini_mias(root, side_convention="info")
    assert Path(info[0].views["R-MLO"][0].path).name == "mdb001.png"
    with pytest.raises(ValueError, match="side_convention"):
        adapt_mini_mias(root, side_convention="guess")


def test_mini_mias_real_counts(shared_data: Path) -> None:
    root = shared_data / "mini-mias"
    rows = parse_mias_info(root / "Info.txt")
    abnormal = [r for r in rows if r["class"] != "NORM"]
    assert len(abnormal) == 123 and sum(r["x"] is not None for r in abnormal) == 119
    problems: list = []
    exams = adapt_mini_mias(root, problems=problems)
    assert problems == []
    images = [(e, v, i) for e in exams for v, i in e.iter_images()]
    assert len(exams) == 161 and len(images) == 322
    labels = [e.labels[v[0]] for e, v, _ in images]
    assert sum(lab.benign == 0 and lab.malignant == 0 for lab in labels) == 207
    assert sum(lab.benign == 1 for lab in labels) == 64
    assert sum(lab.malignant == 1 for lab in labels) == 52
    both = [i for e, v, i in images if e.labels[v[0]].benign == 1 and e.labels[v[0]].malignant == 1]
    assert [i.meta["mias_ref"] for i in both] == ["mdb144"]
    assert sum(len(i.rois) for _, _, i in images) == 119
    summary = lesion_summary(exams)
    assert summary["lesions"] == 119 and summary["by_shape"]["circle"] == 119 and not summary["errors"]
    assert summary["by_outcome"]["unknown"] == 0


# ---------------------------------------------------------------- BUS-BRA


def test_bus_bra_fixture(tmp_path: Path) -> None:
    root = tmp_path / "bb"
    (root / "bus_data.csv").parent.mkdir()
    (root / "bus_data.csv").write_text(
        "ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n"
        "bus_0001-l,1,invasive ductal carcinoma,malignant,4,GE,30,20,left,\"[5,6,10,8]\"\n"
        "bus_0001-r,1,invasive ductal carcinoma,malignant,5,GE,30,20,right,\"[25,15,10,8]\"\n"
        "bus_0002-s,2,fibroadenoma,benign,3,GE,30,999,single,\"[1,1,3,3]\"\n"
    )
    (root / "5-fold-cv.csv").write_text("ID,Pathology,kFold\nbus_0001-l,malignant,3\nbus_0001-r,malignant,3\n"
                                        "bus_0002-s,benign,1\n")
    for i in ("0001-l", "0001-r", "0002-s"):
        _png(root / "Images" / f"bus_{i}.png")
        _png(root / "Masks" / f"mask_{i}.png", value=255)
    exams = adapt_bus_bra(root)
    assert [e.exam_id for e in exams] == ["busbra0001", "busbra0002"]
    e1 = exams[0]
    assert e1.modality.value == "US" and e1.birads == "5" and e1.meta["fold"] == 3
    (bag,) = breast_bags(e1)
    assert bag[0] == "U-US" and len(bag[1]) == 2 and (bag[2].benign, bag[2].malignant) == (0, 1)
    assert [i.meta["panel"] for i in bag[1]] == ["left", "right"]
    assert bag[1][1].rois[0].box == (25, 15, 30, 20)  # clipped to the real 30x20 image
    assert bag[1][0].masks[0].label == "malignant"
    # mask and BBOX are one lesion (id "1"): the mask's region, the box kept
    recs = exam_lesions(e1)
    assert [(r.lesion_id, r.shape, r.box, r.kind) for r in recs] == [
        ("1", "mask", (5, 6, 15, 14), "lesion"), ("1", "mask", (25, 15, 30, 20), "lesion")]
    assert breast_bags(exams[1])[0][2].benign == 1
    assert e1.labels == {"U": BreastLabel(0, 1)} and "label_U" not in e1.meta


def test_bus_bra_real_counts(shared_data: Path) -> None:
    exams = adapt_bus_bra(shared_data / "bus-bra")
    assert len(exams) == 1064
    images = [i for e in exams for i in e.views["U-US"]]
    assert len(images) == 1875
    assert Counter(i.meta["pathology"] for i in images) == {"benign": 1268, "malignant": 607}
    assert Counter(len(e.views["U-US"]) for e in exams) == {2: 811, 1: 253}
    assert all(len(i.masks) == 1 and len(i.rois) == 1 for i in images)
    assert {e.meta["fold"] for e in exams} == {1, 2, 3, 4, 5}


# ---------------------------------------------------------------- BUSI


def test_busi_fixture(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    # Distinct pixels per image: identical images are reported as duplicates (test_busi_layouts.py).
    _png(root / "benign" / "benign (1).png", value=1)
    _png(root / "benign" / "benign (1)_mask.png", value=255)
    _png(root / "benign" / "benign (1)_mask_1.png", value=255)
    _png(root / "malignant" / "malignant (10).png", value=2)
    _png(root / "malignant" / "malignant (10)_mask.png", value=255)
    _png(root / "normal" / "normal (2).png", value=3)
    _png(root / "normal" / "normal (2)_mask.png")
    _png(root / "normal" / "stray.png")
    problems: list = []
    exams = adapt_busi(root, problems=problems)
    assert [e.exam_id for e in exams] == ["busi-benign-1", "busi-malignant-10", "busi-normal-2"]
    b, m, n = exams
    assert [Path(x.path).name for x in b.views["U-US"][0].masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    assert m.labels == {"U": BreastLabel(0, 1)} and "label_U" not in m.meta
    assert n.views["U-US"][0].masks == [] and n.label("U") == BreastLabel(0, 0)
    assert [Path(p).name for p, _ in problems] == ["stray.png"]
    with pytest.raises(ManifestError, match="BUSI layout"):
        adapt_busi(tmp_path / "empty_nothing")


# ---------------------------------------------------------------- CBIS-DDSM


def test_cbis_ddsm_fixture(tmp_path: Path) -> None:
    root = tmp_path / "cbis"
    px = np.zeros((16, 12), np.uint16)
    # TCIA layout: file names differ from the CSV (1-1.dcm vs 000000.dcm); image folder holds one DICOM,
    # the ROI folder holds the crop and the mask.
    make_dicom(root / "CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/1.2/1.3/1-1.dcm", px)
    make_dicom(root / "CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/1.2/1.4/1-1.dcm", px[:4, :4],
               SeriesDescription="cropped images")
    make_dicom(root / "CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/1.2/1.5/1-2.dcm", px,
               SeriesDescription="ROI mask images")
    make_dicom(root / "Calc-Test_P_00001_RIGHT_MLO/1.2/1.6/000000.dcm", px)  # exact CSV path
    head = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
            "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path\n")
    (root / "mass_case_description_train_set.csv").write_text(
        head + "P_00001,3,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,BENIGN_WITHOUT_CALLBACK,4,"
        "Mass-Training_P_00001_LEFT_CC/1.2/1.3/000000.dcm,Mass-Training_P_00001_LEFT_CC_1/1.2/1.4/000000.dcm,"
        "Mass-Training_P_00001_LEFT_CC_1/1.2/1.5/000001.dcm\n"
        "P_00002,2,LEFT,MLO,1,mass,OVAL,CIRCUMSCRIBED,4,MALIGNANT,4,"
        "Mass-Training_P_00002_LEFT_MLO/x/y/000000.dcm,,\n"
    )
    (root / "calc_case_description_test_set.csv").write_text(
        "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,"
        "calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,"
        "ROI mask file path\n"
        "P_00001,4,RIGHT,MLO,1,calcification,PLEOMORPHIC,CLUSTERED,5,MALIGNANT,3,"
        "Calc-Test_P_00001_RIGHT_MLO/1.2/1.6/000000.dcm,,\n"
    )
    problems: list = []
    exams = adapt_cbis_ddsm(root, problems=problems)
    assert [e.exam_id for e in exams] == ["P_00001"]
    (e,) = exams
    assert e.present_views() == ["L-CC", "R-MLO"]
    assert (e.labels["L"].benign, e.labels["L"].malignant) == (1, 0)
    assert (e.labels["R"].benign, e.labels["R"].malignant) == (0, 1)
    (mask,) = e.views["L-CC"][0].masks
    assert mask.path.endswith("1-2.dcm") and mask.label == "benign" and mask.kind == "mass"
    assert e.density == "D" and e.birads == "5" and e.meta["splits"] == ["test", "train"]
    assert e.views["R-MLO"][0].meta["abnormalities"][0]["calc_type"] == "PLEOMORPHIC"
    assert mask.lesion_id == "1"
    assert [(r.view, r.lesion_id, r.outcome, r.kind, r.shape) for r in exam_lesions(e)] == [
        ("L-CC", "1", "benign", "mass", "mask")]
    assert len(problems) == 1 and "P_00002" in problems[0][0]
    with pytest.raises(ManifestError, match="not found"):
        adapt_cbis_ddsm(root)


# ---------------------------------------------------------------- VinDr-Mammo


def test_vindr_fixture(tmp_path: Path) -> None:
    root = tmp_path / "vindr"
    px = np.zeros((16, 12), np.uint16)
    rows = []
    for study, birads in (("s1", {"L": 1, "R": 4}), ("s2", {"L": 2, "R": 1})):
        for side in "LR":
            for view in ("CC", "MLO"):
                image_id = f"{study}{side}{view}"
                make_dicom(root / "images" / study / f"{image_id}.dicom", px)
                rows.append(f"{study},ser,{image_id},{side},{view},16,12,BI-RADS {birads[side]},DENSITY C,training")
    (root / "breast-level_annotations.csv").write_text(
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split\n"
        + "\n".join(rows) + "\ns3,ser,gone,L,CC,16,12,BI-RADS 1,DENSITY A,test\n"
    )
    (root / "finding_annotations.csv").write_text(
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
        "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split\n"
        "s1,ser,s1RCC,R,CC,16,12,BI-RADS 4,DENSITY C,\"['Mass', 'Suspicious Calcification']\",BI-RADS 4,"
        "1.2,2.5,8.9,9.0,training\n"
        "s1,ser,s1LCC,L,CC,16,12,BI-RADS 1,DENSITY C,\"['No Finding']\",,,,,,training\n"
    )
    problems: list = []
    exams = adapt_vindr(root, problems=problems)
    assert [e.exam_id for e in exams] == ["s1", "s2"]
    s1, s2 = exams
    assert not s1.missing_views()
    assert (s1.labels["L"].benign, s1.labels["L"].malignant) == (0, 0)
    assert (s1.labels["R"].benign, s1.labels["R"].malignant) == (None, None)
    assert (s2.labels["L"].benign, s2.labels["L"].malignant) == (None, 0)
    assert s1.birads == "4" and s1.density == "C" and s1.meta["split"] == "training"
    assert s1.meta["breast_birads"] == {"L": "1", "R": "4"}
    (finding,) = s1.views["R-CC"][0].meta["findings"]
    assert finding == {"categories": ["Mass", "Suspicious Calcification"], "birads": "4", "box": [1, 2, 9, 9]}
    assert "findings" not in s1.views["L-CC"][0].meta
    # the boxed finding is also an ROI of unknown outcome, clipped to the 12x16 image
    (roi,) = s1.views["R-CC"][0].rois
    assert (roi.box, roi.label, roi.kind, roi.lesion_id) == ((1, 2, 9, 9), None, "mass", "1")
    assert [(r.key, r.outcome, r.shape) for r in exam_lesions(s1)] == [("s1/R-CC/0/1", None, "box")]
    assert vindr_kind(["Suspicious Calcification"]) == "calcification"
    assert vindr_kind(["Focal Asymmetry", "Architectural Distortion"]) == "other"
    assert len(problems) == 1 and problems[0][0].endswith("gone.dicom")


def test_cli_adapt_writes_manifest_and_report(tmp_path: Path) -> None:
    root = _tiny_mias(tmp_path / "mias")
    (root / "images" / "mdb004.png").unlink()
    out = tmp_path / "m.jsonl"
    r = CliRunner().invoke(app, ["manifest", "adapt", "mini-mias", str(root), "--out", str(out),
                                 "--masks-dir", str(tmp_path / "masks")])
    assert r.exit_code == 0, r.output
    assert "mdb004.png" in r.output and (tmp_path / "m.problems.csv").exists()
    exams = read_manifest(out)
    assert len(exams) == 2 and exams[0].views["L-MLO"][0].masks
    r = CliRunner().invoke(app, ["manifest", "adapt", "nope", str(root), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code != 0 and "unknown dataset" in str(r.exception)


def test_cbis_lesion_ids_stay_unique_on_one_image() -> None:
    from breastscreen.data._adapt_mg import _cbis_lesion_ids

    # the mass and calcification tables both number from 1; a repeat within one kind gets a suffix
    got = _cbis_lesion_ids([("1", "mass"), ("1", "calcification"), ("2", "mass"), (None, "mass"),
                            ("3", "mass"), ("3", "mass")])
    assert got == ["mass-1", "calcification-1", "2", None, "mass-3-1", "mass-3-2"]
