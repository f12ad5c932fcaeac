"""Lesion records: manifest round trip, identity rules, regions, errors, preprocessing, check, consumers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.lesions import (
    LesionError,
    LesionRecord,
    exam_lesions,
    format_lesion_summary,
    image_lesions,
    lesion_problems,
    lesion_region,
    lesion_summary,
    manifest_lesions,
)
from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.data.types import ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality, circle_box
from breastscreen.errors import ManifestError


def _mask(path: Path, shape: tuple[int, int], pixels: list[tuple[int, int]]) -> str:
    arr = np.zeros(shape, np.uint8)
    for y, x in pixels:
        arr[y, x] = 255
    Image.fromarray(arr).save(path)
    return str(path)


def _image(path: Path, shape: tuple[int, int] = (20, 30)) -> str:
    Image.fromarray(np.full(shape, 100, np.uint8)).save(path)
    return str(path)


@pytest.fixture()
def three_shapes(tmp_path: Path) -> Exam:
    """One image with a mask lesion (plus its box), a box lesion and a circle lesion of unknown outcome."""
    img = ImageRef(_image(tmp_path / "a.png"))
    img.masks = [LesionMask(_mask(tmp_path / "a_mask.png", (20, 30), [(2, 3), (2, 4), (3, 3)]), "malignant",
                            "mass", "les-a")]
    img.rois = [ROI((3, 2, 5, 4), "malignant", None, "les-a"),
                ROI((10, 5, 14, 8), "benign", "calcification", "les-b"),
                ROI.from_circle(20, 10, 2, None, lesion_id="les-c")]
    return Exam("e1", Modality.MG, {"L-CC": [img]}, patient_id="p1", labels={"L": BreastLabel(1, 1)})


def test_round_trip_of_all_shapes_and_ids(three_shapes: Exam, tmp_path: Path) -> None:
    path = write_manifest([three_shapes], tmp_path / "m.jsonl")
    line = json.loads(path.read_text())
    image = line["views"]["L-CC"][0]
    assert image["masks"] == [{"path": "a_mask.png", "label": "malignant", "kind": "mass", "lesion_id": "les-a"}]
    assert image["rois"][2] == {"box": [18, 8, 23, 13], "label": None, "lesion_id": "les-c", "circle": [20.0, 10.0, 2.0]}
    (back,) = read_manifest(path)
    assert back.views["L-CC"][0].masks == three_shapes.views["L-CC"][0].masks
    assert back.views["L-CC"][0].rois == three_shapes.views["L-CC"][0].rois
    recs = manifest_lesions([back])
    assert [(r.key, r.shape, r.outcome, r.kind, r.box, r.circle) for r in recs] == [
        ("e1/L-CC/0/les-a", "mask", "malignant", "mass", (3, 2, 5, 4), None),
        ("e1/L-CC/0/les-b", "box", "benign", "calcification", (10, 5, 14, 8), None),
        ("e1/L-CC/0/les-c", "circle", None, None, (18, 8, 23, 13), (20.0, 10.0, 2.0)),
    ]
    assert recs[0].mask_path == back.views["L-CC"][0].masks[0].path and recs[0].patient_id == "p1"
    assert recs[0].image_path.endswith("a.png") and recs[0].image_index == 0
    # an absent label reads as unknown (and is written back as null)
    del image["rois"][1]["label"]
    path.write_text(json.dumps(line) + "\n")
    assert read_manifest(path)[0].views["L-CC"][0].rois[1].label is None
    # a circle whose box is not its bounding box is refused on read
    image["rois"][2]["box"] = [17, 8, 23, 13]
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ManifestError, match="bounding box"):
        read_manifest(path)


def test_legacy_manifest_round_trips_byte_identically_and_gives_one_lesion_per_mask(tmp_path: Path) -> None:
    for name in ("x.png", "x_m0.png", "x_m1.png"):
        _image(tmp_path / name)
    legacy = ('{"exam_id": "old", "modality": "MG", "labels": {"L": {"benign": 1, "malignant": 1}}, "views": '
              '{"L-CC": [{"path": "x.png", "masks": [{"path": "x_m0.png", "label": "benign", "kind": "mass"}, '
              '{"path": "x_m1.png", "label": "malignant"}], "rois": [{"box": [1, 2, 3, 4], "label": "benign", '
              '"kind": "mass"}, {"box": [5, 6, 7, 8], "label": "malignant"}]}], "R-CC": [], "L-MLO": [], '
              '"R-MLO": []}}\n')
    (tmp_path / "old.jsonl").write_text(legacy)
    exams = read_manifest(tmp_path / "old.jsonl")
    write_manifest(exams, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == legacy
    recs = exam_lesions(exams[0])
    assert [(r.lesion_id, r.shape, r.outcome, r.kind, r.box) for r in recs] == [
        ("m1", "mask", "benign", "mass", None), ("m2", "mask", "malignant", None, None)]
    # without masks the ROIs are the lesions
    exams[0].views["L-CC"][0].masks = []
    assert [(r.lesion_id, r.shape, r.box) for r in exam_lesions(exams[0])] == [
        ("r1", "box", (1, 2, 3, 4)), ("r2", "box", (5, 6, 7, 8))]


def test_identity_rules_merge_conflict_and_order(tmp_path: Path) -> None:
    img = ImageRef(str(tmp_path / "i.png"),
                   masks=[LesionMask("/m/1.png", None, "mass", "x"), LesionMask("/m/2.png", "benign")],
                   rois=[ROI((0, 0, 4, 4), "malignant", "calcification", "x"), ROI((5, 5, 9, 9), "benign")])
    exam = Exam("e", Modality.MG, {"R-MLO": [img], "L-CC": [ImageRef("/l.png", rois=[ROI((1, 1, 2, 2), None)])]})
    recs = exam_lesions(exam)
    # canonical view order (L-CC before R-MLO); unknown mask outcome takes the ROI's; automatic ids by position
    assert [(r.view, r.lesion_id, r.outcome, r.kind, r.shape) for r in recs] == [
        ("L-CC", "r1", None, None, "box"),
        ("R-MLO", "x", "malignant", "mass", "mask"),
        ("R-MLO", "m2", "benign", None, "mask"),
        ("R-MLO", "r2", "benign", None, "box"),
    ]
    img.rois[0].label = "benign"
    img.masks[0].label = "malignant"
    with pytest.raises(LesionError, match=r"exam e R-MLO image 0: lesion 'x': conflicting outcomes benign and "
                                          r"malignant"):
        image_lesions(exam, "R-MLO", 0, img)
    img.rois[0].label = None
    img.masks[1].lesion_id = "r2"  # the automatic id of the second ROI
    with pytest.raises(LesionError, match="lesion 'r2': the automatic id of ROI 2"):
        exam_lesions(exam)
    img.masks[1].lesion_id = "x"
    with pytest.raises(LesionError, match="2 masks and 1 ROIs share this id"):
        exam_lesions(exam)
    with pytest.raises(LesionError, match="repeats"):
        manifest_lesions([Exam("d", Modality.MG, {"L-CC": [ImageRef("/a.png", rois=[ROI((0, 0, 1, 1), None)])]})] * 2)


def _record(tmp_path: Path, shape: str, **kw) -> LesionRecord:
    base = dict(exam_id="e", patient_id=None, view="L-CC", image_index=0, image_path=str(tmp_path / "img.png"),
                lesion_id="L7", outcome=None, kind=None, shape=shape, mask_path=None, box=None, circle=None)
    base.update(kw)
    return LesionRecord(**base)


def test_lesion_region_values(tmp_path: Path) -> None:
    box = _record(tmp_path, "box", box=(2, 3, 7, 5))
    region = lesion_region(box, (10, 12))
    assert region.shape == (10, 12) and region.sum() == 10 and region[3:5, 2:7].all()
    assert lesion_region(replace(box, box=(8, 8, 15, 15)), (10, 10)).sum() == 4  # clipped to 2x2
    circle = _record(tmp_path, "circle", circle=(5.0, 5.0, 2.0), box=circle_box(5, 5, 2))
    disc = lesion_region(circle, (10, 10))
    assert disc.sum() == 13 and disc[5, 3] and disc[5, 7] and not disc[3, 3]  # 13 centres within r = 2
    corner = replace(circle, circle=(0.0, 0.0, 2.0), box=circle_box(0, 0, 2))
    assert lesion_region(corner, (10, 10)).sum() == 6  # the quarter disc inside the image
    pts = [(1, 1), (1, 2), (2, 2), (5, 5), (6, 5), (7, 7), (9, 11)]
    mask = _record(tmp_path, "mask", mask_path=_mask(tmp_path / "m.png", (10, 12), pts))
    got = lesion_region(mask, (10, 12))
    assert got.sum() == 7 and all(got[y, x] for y, x in pts)


def test_lesion_region_errors_name_the_image_and_lesion(tmp_path: Path) -> None:
    img = str(tmp_path / "img.png")
    cases = [
        (_record(tmp_path, "mask", mask_path=_mask(tmp_path / "empty.png", (10, 12), [])), "is empty"),
        (_record(tmp_path, "mask", mask_path=_mask(tmp_path / "small.png", (5, 5), [(1, 1)])), "does not match"),
        (_record(tmp_path, "mask", mask_path=str(tmp_path / "gone.png")), "mask file unreadable"),
        (_record(tmp_path, "box", box=(20, 20, 25, 25)), "no pixel inside the 10x12 image"),
        (_record(tmp_path, "circle", circle=(30.0, 30.0, 2.0), box=circle_box(30, 30, 2)), "no pixel inside"),
    ]
    for rec, why in cases:
        with pytest.raises(LesionError) as info:
            lesion_region(rec, (10, 12))
        msg = str(info.value)
        assert msg.startswith(f"{img}: lesion 'L7': ") and why in msg and "\n" not in msg, msg
    assert "gone.png" in str(pytest.raises(LesionError, lesion_region, cases[2][0], (10, 12)).value)


def test_roi_circle_rules() -> None:
    roi = ROI.from_circle(10.5, 3.0, 4.0, "benign", "mass", "a")
    assert roi.box == (6, 0, 15, 8) and roi.circle == (10.5, 3.0, 4.0)  # top clipped at 0
    assert ROI.from_circle(10, 10, 5, None, shape=(12, 12)).box == (5, 5, 12, 12)
    with pytest.raises(ValueError, match="outside the image"):
        ROI.from_circle(50, 50, 3, None, shape=(12, 12))
    with pytest.raises(ValueError, match="label"):
        ROI((0, 0, 1, 1), "unsure")
    with pytest.raises(ValueError, match="label"):
        LesionMask("/m.png", "maybe")


def _mammo_png(path: Path, h: int = 240, w: int = 160) -> str:
    """A bright half-disc breast against the RIGHT edge (so preprocessing flips it) on a dark background."""
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w) / (0.8 * w)) ** 2 <= 1
    arr = np.where(breast, 2500 + (yy % 7) * 30, 40).astype(np.uint16)
    Image.fromarray(arr).save(path)
    return str(path)


def test_circle_lesion_through_mammo_preprocessing(tmp_path: Path) -> None:
    from breastscreen.preprocess.pipeline import preprocess_exam

    src = _mammo_png(tmp_path / "mg.png")
    yy, xx = np.mgrid[0:240, 0:160]
    disc = (xx - 110) ** 2 + (yy - 100) ** 2 <= 12**2
    mpath = tmp_path / "mg_mask.png"
    Image.fromarray(disc.astype(np.uint8) * 255).save(mpath)
    image = ImageRef(src, masks=[LesionMask(str(mpath), "malignant", "mass", "c1")],
                     rois=[ROI.from_circle(110, 100, 12, "malignant", "mass", "c1"),
                           ROI.from_circle(110, 100, 12, "malignant", "mass", "c2"),
                           ROI.from_circle(2, 2, 1, "benign", None, "off")])  # in the background, cropped away
    out = preprocess_exam(Exam("pp", Modality.MG, {"R-CC": [image]}), tmp_path / "pre", scale=0.5)
    assert out.exam is not None, out.issues
    new = out.exam.views["R-CC"][0]
    rec = new.preprocessing
    assert rec["flipped"] is True and rec["rois_dropped"] == 1
    assert [m.lesion_id for m in new.masks] == ["c1"] and [r.lesion_id for r in new.rois] == ["c1", "c2"]
    shape = tuple(rec["output_shape"])
    by_id = {r.lesion_id: r for r in image_lesions(out.exam, "R-CC", 0, new)}
    assert by_id["c1"].shape == "mask" and by_id["c2"].shape == "circle"
    moved_mask = lesion_region(by_id["c1"], shape)
    moved_circle = lesion_region(by_id["c2"], shape)
    # expected centre: crop, mirror, halve (pixel centres at integers)
    x0, y0, x1, y1 = rec["crop_box"]
    fy, fx = shape[0] / (y1 - y0), shape[1] / (x1 - x0)
    want = ((100 + 0.5 - y0) * fy - 0.5, ((x1 - x0) - (110 + 0.5 - x0)) * fx - 0.5)
    cx, cy, r = by_id["c2"].circle
    assert (cy, cx) == pytest.approx(want, abs=1e-6) and r == pytest.approx(12 * np.sqrt(fx * fy))
    for region in (moved_mask, moved_circle):
        centroid = np.argwhere(region).mean(axis=0)
        assert centroid == pytest.approx(want, abs=0.75)
    assert abs(int(moved_circle.sum()) - int(moved_mask.sum())) <= 0.15 * moved_mask.sum()
    assert moved_circle.sum() == pytest.approx(np.pi * r * r, rel=0.15)


def test_circle_and_ids_through_ultrasound_preprocessing(tmp_path: Path) -> None:
    from breastscreen.preprocess.pipeline import preprocess_exam

    rng = np.random.default_rng(1)
    arr = np.zeros((120, 160), np.uint8)
    arr[20:110, 30:150] = (rng.random((90, 120)) * 180 + 40).astype(np.uint8)  # field of view on black
    Image.fromarray(arr).save(tmp_path / "us.png")
    mask = np.zeros((120, 160), bool)
    mask[50:60, 70:90] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "us_mask.png")
    image = ImageRef(str(tmp_path / "us.png"), masks=[LesionMask(str(tmp_path / "us_mask.png"), None, None, "u1")],
                     rois=[ROI((70, 50, 90, 60), None, None, "u1"), ROI.from_circle(80, 55, 5, "benign", None, "u2")])
    out = preprocess_exam(Exam("us", Modality.US, {"L-US": [image]}), tmp_path / "pre")
    assert out.exam is not None, out.issues
    new = out.exam.views["L-US"][0]
    x0, y0, _, _ = new.preprocessing["crop_box"]
    assert Path(new.masks[0].path).name == "us_L-US_mask_unknown_0.png" and new.masks[0].lesion_id == "u1"
    assert [(r.lesion_id, r.box) for r in new.rois] == [("u1", (70 - x0, 50 - y0, 90 - x0, 60 - y0)),
                                                        ("u2", (75 - x0, 50 - y0, 86 - x0, 61 - y0))]
    assert new.rois[1].circle == pytest.approx((80 - x0, 55 - y0, 5.0))


def test_summary_and_manifest_check(three_shapes: Exam, tmp_path: Path) -> None:
    s = lesion_summary([three_shapes])
    assert s == {"lesions": 3, "images_with_lesions": 1, "by_outcome": {"benign": 1, "malignant": 1, "unknown": 1},
                 "by_kind": {"calcification": 1, "mass": 1, "unspecified": 1},
                 "by_shape": {"mask": 1, "box": 1, "circle": 1}, "errors": []}
    line = ("lesions: 3 on 1 images (benign 1, malignant 1, unknown 1; calcification 1, mass 1, unspecified 1; "
            "mask 1, box 1, circle 1)")
    assert format_lesion_summary(s) == line
    m = write_manifest([three_shapes], tmp_path / "m.jsonl")
    r = CliRunner().invoke(app, ["manifest", "check", str(m)])
    assert r.exit_code == 0, r.output
    assert line in r.output
    # an empty mask file and a circle outside the image make the check fail, naming both lesions
    _mask(tmp_path / "a_mask.png", (20, 30), [])
    three_shapes.views["L-CC"][0].rois[2] = ROI.from_circle(40, 10, 2, None, lesion_id="les-c")
    write_manifest([three_shapes], m)
    problems = lesion_problems(read_manifest(m))
    assert len(problems) == 2 and "'les-a'" in problems[0] and "is empty" in problems[0]
    assert "'les-c'" in problems[1] and "no pixel inside the 20x30 image" in problems[1]
    r = CliRunner().invoke(app, ["manifest", "check", str(m)])
    assert r.exit_code == 1 and "2 invalid lesions" in r.output and "les-c" in r.output
    # without file checks only identity errors count
    assert CliRunner().invoke(app, ["manifest", "check", str(m), "--no-files"]).exit_code == 0


def test_patch_consumers_skip_unknown_outcomes(tmp_path: Path) -> None:
    from breastscreen.preprocess.patches import PatchSampler, PatchSource, five_class, roi_patch_set, sources_from_exams

    assert five_class(None, "mass") is None and five_class("benign", "mass") is not None
    image = np.ones((64, 64), np.float32)
    breast = np.ones((64, 64), bool)
    known = np.zeros((64, 64), bool)
    known[10:20, 10:20] = True
    unknown = np.zeros((64, 64), bool)
    unknown[40:50, 40:50] = True
    src = PatchSource(image, breast, [(known, "benign", "mass"), (unknown, None, "mass")], key="s")
    ps = roi_patch_set([src], n_per_roi=1, seed=0, patch_size=16)
    assert [s.label for s in ps.specs if s.label] == [five_class("benign", "mass")]
    assert ps.skipped == ["s lesion 1: outcome unknown"]
    sampler = PatchSampler([src], scale=0.05, size_range=(128, 128))
    assert sampler._eligible("outside") == [] and sampler._eligible("benign") == [0]
    # an image with any lesion of unknown outcome is left out of the patch sources and counted
    exam = Exam("u", Modality.MG, {"L-CC": [ImageRef("/x.png", rois=[ROI((1, 1, 3, 3), None)],
                                                     preprocessing={"breast_mask_path": "/b.png"})]},
                labels={"L": BreastLabel(0, 0)})
    skipped: list[str] = []
    assert sources_from_exams([exam], load=lambda p: np.zeros((8, 8)), skipped=skipped) == []
    assert skipped == ["u/L-CC/0"]
