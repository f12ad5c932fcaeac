"""Derived normals: lesion-free crops away from the masked lesion, their bags and their folds."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from breastscreen.data.bags import breasts_from_exams
from breastscreen.data.manifest import read_manifest
from breastscreen.data.types import BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.ultrasound import normals as N
from breastscreen.ultrasound.normals import (
    NormalCropRules,
    derive_normal_crop,
    derive_normal_exams,
    forbidden_region,
    largest_crop,
)

H, W, BORDER = 240, 200, 10


def _image(seed: int = 0) -> np.ndarray:
    """Tissue (noise 40-200) inside a 10-px uniform black frame, as a scanner paints outside the FOV."""
    img = np.zeros((H, W), np.uint8)
    img[BORDER:H - BORDER, BORDER:W - BORDER] = np.random.default_rng(seed).integers(40, 200, (H - 2 * BORDER,
                                                                                            W - 2 * BORDER))
    return img


def _disc(cy: int, cx: int, r: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255


def test_largest_crop_finds_the_known_rectangle_and_caps_the_aspect():
    allowed = np.zeros((200, 200), bool)
    allowed[20:140, 30:100] = True  # 120 x 70
    assert largest_crop(allowed, NormalCropRules(min_side_px=50, step_px=2)) == (30, 20, 100, 140)
    # step 4 from 50 reaches 118 rows at most: the crop is the tallest height tried
    assert largest_crop(allowed, NormalCropRules(min_side_px=50, step_px=4)) == (30, 20, 100, 138)
    wide = np.zeros((100, 300), bool)
    wide[10:70, 40:260] = True  # 60 x 220: capped to 2 x 60 = 120 wide, leftmost
    assert largest_crop(wide, NormalCropRules(min_side_px=50, step_px=2, max_aspect=2.0)) == (40, 10, 160, 70)
    assert largest_crop(wide, NormalCropRules(min_side_px=61, step_px=1)) is None


def test_forbidden_region_covers_lesion_posterior_band_and_margin():
    lesion = _disc(60, 100, 15) > 0
    rules = NormalCropRules(margin_px=24, posterior_depth=1.0)
    f = forbidden_region(lesion, rules)
    assert f[lesion].all()
    # the band: lesion columns 85-115 from its top (45) to one lesion height (31) below its bottom (75)
    assert f[45:107, 85:116].all()
    assert f[106 + 24, 100] and not f[106 + 26, 100]  # margin below the band
    assert f[60, 100 - 15 - 24] and not f[60, 100 - 15 - 26]  # margin beside the lesion
    box_only = np.zeros_like(lesion)
    box_only[45:76, 85:116] = True  # depth 0: the band shrinks to the lesion's bounding box
    assert np.array_equal(forbidden_region(lesion, NormalCropRules(margin_px=0, posterior_depth=0.0)), box_only)


def test_normal_crop_avoids_the_dilated_lesion_respects_size_and_is_deterministic():
    img, lesion = _image(), _disc(60, 100, 15)
    rules = NormalCropRules()
    crop = derive_normal_crop(img, lesion, rules, "a.png")
    assert crop.box is not None and crop.reason == ""
    x0, y0, x1, y1 = crop.box
    assert min(x1 - x0, y1 - y0) >= rules.min_side_px
    assert max(x1 - x0, y1 - y0) <= rules.max_aspect * min(x1 - x0, y1 - y0)
    assert not forbidden_region(lesion, rules)[y0:y1, x0:x1].any()
    assert (img[y0:y1, x0:x1] >= 40).all()  # tissue only, never the black frame
    assert 0 < crop.fov_share < 1
    again = derive_normal_crop(img.copy(), lesion.copy(), rules, "a.png")
    assert again.box == crop.box and again.fov_share == crop.fov_share


def test_excluded_cases_are_reported_with_their_reason():
    img = _image()
    assert derive_normal_crop(img, None).reason.startswith("no-mask")
    assert derive_normal_crop(img, np.zeros((H, W), np.uint8)).reason.startswith("empty-mask")
    assert derive_normal_crop(img, np.zeros((H + 1, W), np.uint8)).reason.startswith("mask-shape")
    assert derive_normal_crop(np.full((H, W), 90, np.uint8), _disc(60, 100, 15)).reason.startswith("no-fov")
    huge = _disc(H // 2, W // 2, 80)  # no 96-px crop fits beside it
    out = derive_normal_crop(img, huge)
    assert out.box is None and out.reason.startswith("no-fit")


def _dataset(root: Path) -> list[Exam]:
    """Three one-patient exams: two with room for a crop (folds 1 and 2), one with a lesion filling the image."""
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    exams = []
    for case, (fold, disc) in enumerate(((1, (60, 100, 15)), (2, (180, 100, 15)), (1, (H // 2, W // 2, 80))), 1):
        path, mpath = root / "Images" / f"bus_{case:04d}-s.png", root / "Masks" / f"mask_{case:04d}-s.png"
        cv2.imwrite(str(path), _image(case))
        cv2.imwrite(str(mpath), _disc(*disc))
        label = "malignant" if case == 1 else "benign"
        image = ImageRef(str(path), masks=[LesionMask(str(mpath), label, "lesion", "1")],
                         meta={"id": f"bus_{case:04d}-s", "fold": fold, "birads": "4"})
        exams.append(Exam(f"busbra{case:04d}", Modality.US, {"U-US": [image]}, patient_id=str(case),
                          labels={"U": BreastLabel(int(label == "benign"), int(label == "malignant"))},
                          meta={"fold": fold}))
    return exams


def test_normal_bags_written_to_the_work_folder_and_reused(tmp_path, monkeypatch):
    data, work = tmp_path / "dataset", tmp_path / "work" / "normals"
    exams = _dataset(data)
    before = sorted(p.name for p in data.rglob("*"))
    normals, report = derive_normal_exams(exams, work)
    assert sorted(p.name for p in data.rglob("*")) == before  # nothing written into the dataset
    assert [e.exam_id for e in normals] == ["busbra0001-normal", "busbra0002-normal"]
    n1 = normals[0]
    assert n1.patient_id == "1" and n1.labels == {"U": BreastLabel(0, 0)}
    im = n1.views["U-US"][0]
    assert Path(im.path).parent == (work / "images").resolve() and Path(im.path).is_file()
    assert im.meta["fold"] == 1 and im.meta["derived_from"] == exams[0].views["U-US"][0].path and not im.masks
    x0, y0, x1, y1 = im.meta["crop_box"]
    assert cv2.imread(im.path, cv2.IMREAD_GRAYSCALE).shape == (y1 - y0, x1 - x0)
    s = report.summary()
    assert (s["n_source_images"], s["n_crops"], s["n_bags"], s["excluded_by_reason"]) == (3, 2, 2, {"no-fit": 1})
    record = json.loads((work / "normals.json").read_text())
    assert record["rules"] == NormalCropRules().as_dict() and record["excluded"][0]["image"].endswith("bus_0003-s.png")
    breasts = breasts_from_exams(normals, require_labels=True)
    assert [b.targets for b in breasts] == [(0, 0), (0, 0)] and [b.meta["fold"] for b in breasts] == [1, 2]

    def boom(*a, **k):
        raise AssertionError("the second call must reuse normals.json")

    monkeypatch.setattr(N, "derive_normal_crop", boom)
    again, report2 = derive_normal_exams(exams, work)
    assert [e.views["U-US"][0].meta["crop_box"] for e in again] == [e.views["U-US"][0].meta["crop_box"] for e in normals]
    assert report2.summary() == s


def test_fold_manifests_keep_each_normal_bag_with_its_patient(tmp_path):
    from breastscreen.ultrasound.busbra import _fold_manifests, stratified_split

    root = tmp_path / "d"
    root.mkdir()
    img = root / "x.png"
    cv2.imwrite(str(img), _image())
    exams = []
    for i in range(20):
        fold, pid = 1 + i % 2, f"p{i}"
        lab = BreastLabel(int(i % 3 != 0), int(i % 3 == 0))
        ref = ImageRef(str(img), meta={"fold": fold})
        exams.append(Exam(f"e{i}", Modality.US, {"U-US": [ref]}, patient_id=pid, labels={"U": lab}))
        exams.append(Exam(f"e{i}-normal", Modality.US, {"U-US": [ImageRef(str(img), meta={"fold": fold})]},
                          patient_id=pid, labels={"U": BreastLabel(0, 0)}))
    normal_ids = frozenset(e.exam_id for e in exams if e.exam_id.endswith("-normal"))
    breasts = breasts_from_exams(exams, require_labels=True)
    paths, test, n_train, n_val = _fold_manifests(1, breasts, exams, tmp_path / "f1", 0.3, 0, normal_ids)
    parts = {k: {e.exam_id for e in read_manifest(p)} for k, p in paths.items()}
    assert parts["test"] == {f"e{i}{s}" for i in range(0, 20, 2) for s in ("", "-normal")}
    pid = {e.exam_id: e.patient_id for e in exams}
    tr, va = {pid[e] for e in parts["train"]}, {pid[e] for e in parts["val"]}
    assert tr and va and not tr & va and not (tr | va) & {pid[e] for e in parts["test"]}
    assert all(f"{e}-normal" in parts[k] for k in ("train", "val") for e in parts[k] if e in pid and "-" not in e)
    # lesion bags are split exactly as the earlier protocol splits them
    lesion_rest = [b for b in breasts if b.meta["fold"] == 2 and b.exam_id not in normal_ids]
    old_val = {b.exam_id for b in stratified_split(lesion_rest, 0.3, seed=1)[1]}
    assert {e for e in parts["val"] if e not in normal_ids} == old_val
    assert (n_train, n_val) == (len(parts["train"]), len(parts["val"]))


def test_synthetic_cohorts_already_have_normal_bags(tmp_path):
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    exams = generate_us_cohort(tmp_path / "us", n_patients=6, seed=3, min_images=1, max_images=1)
    breasts = breasts_from_exams(exams, require_labels=True)
    normal = [b for b in breasts if b.targets == (0, 0)]
    assert normal and all(not im.masks for b in normal for im in b.images)


@pytest.fixture
def busbra(shared_data: Path) -> Path:
    root = shared_data / "bus-bra"
    if not root.is_dir():
        pytest.skip(f"BUS-BRA not found at {root}")
    return root


def test_real_busbra_crops_stay_off_the_lesion(busbra, tmp_path):
    from breastscreen.data.adapters import adapt_bus_bra

    exams = adapt_bus_bra(busbra)[:6]
    normals, report = derive_normal_exams(exams, tmp_path / "normals")
    assert report.summary()["n_source_images"] == sum(len(e.views["U-US"]) for e in exams)
    for e in normals:
        for im in e.views["U-US"]:
            source = next(s for x in exams for s in x.views["U-US"] if s.path == im.meta["derived_from"])
            lesion = cv2.imread(source.masks[0].path, cv2.IMREAD_GRAYSCALE)
            x0, y0, x1, y1 = im.meta["crop_box"]
            assert not forbidden_region(lesion)[y0:y1, x0:x1].any() and min(x1 - x0, y1 - y0) >= 96
