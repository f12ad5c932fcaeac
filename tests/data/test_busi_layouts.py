"""BUSI re-distributions (side by side, images/ + masks/ subfolders) and exact duplicates (issue 14, part 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastscreen.data.adapters import adapt_busi, describe_busi_folder
from breastscreen.data.duplicates import drop_duplicate_exams, duplicate_images, label_name
from breastscreen.data.types import BreastLabel, Exam, ImageRef, Modality
from breastscreen.errors import ManifestError
from breastscreen.inference.predict import is_busi_folder


def _img(path: Path, seed: int, suffix_value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (24, 32)).astype(np.uint8)
    arr[0, 0] = suffix_value
    Image.fromarray(arr).save(path)
    return path


def _mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((24, 32), np.uint8)
    m[5:15, 8:20] = 255
    Image.fromarray(m).save(path)
    return path


def test_side_by_side_with_any_names(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    _img(root / "benign" / "case_001.png", 1)
    _mask(root / "benign" / "case_001_mask.png")
    _mask(root / "benign" / "case_001_mask_1.png")
    _img(root / "Malignant" / "m7.png", 2)
    _mask(root / "Malignant" / "m7_mask.png")
    _img(root / "normal" / "n1.png", 3)
    _mask(root / "normal" / "n1_mask.png")
    layout = describe_busi_folder(root)
    assert layout.kind == "side-by-side" and "side by side" in layout.message and "\n" not in layout.message
    problems: list = []
    exams = adapt_busi(root, problems)
    assert problems == []
    assert [e.exam_id for e in exams] == ["busi-benign-case_001", "busi-malignant-m7", "busi-normal-n1"]
    b, m, n = exams
    assert [Path(x.path).name for x in b.views["U-US"][0].masks] == ["case_001_mask.png", "case_001_mask_1.png"]
    assert m.labels == {"U": BreastLabel(0, 1)} and b.meta["layout"] == "side-by-side"
    assert n.views["U-US"][0].masks == [] and n.labels == {"U": BreastLabel(0, 0)}
    assert is_busi_folder(root)


@pytest.mark.parametrize("img_dir,mask_dir,mask_name", [("images", "masks", "{s}_mask.png"),
                                                         ("images", "mask", "{s}.png"),
                                                         ("Images", "Masks", "{s}_mask_1.png")])
def test_images_and_masks_subfolders(tmp_path: Path, img_dir: str, mask_dir: str, mask_name: str) -> None:
    root = tmp_path / "busi"
    for k, cls in enumerate(("benign", "malignant")):
        _img(root / cls / img_dir / f"{cls} (3).png", 10 + k)
        _mask(root / cls / mask_dir / mask_name.format(s=f"{cls} (3)"))
    _img(root / "normal" / img_dir / "normal (1).jpg", 20)
    layout = describe_busi_folder(root)
    assert layout.kind == "subfolders" and "images/ and masks/ subfolders" in layout.message
    problems: list = []
    exams = adapt_busi(root, problems)
    assert problems == []
    assert [e.exam_id for e in exams] == ["busi-benign-3", "busi-malignant-3", "busi-normal-1"]
    assert [len(e.views["U-US"][0].masks) for e in exams] == [1, 1, 0]
    assert exams[1].views["U-US"][0].masks[0].label == "malignant"


def test_rejected_folders_say_why_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    why = describe_busi_folder(tmp_path / "none")
    assert why.kind is None and "no benign/, malignant/ or normal/ folder" in why.message
    _mask(tmp_path / "masks_only" / "benign" / "a_mask.png")
    why = describe_busi_folder(tmp_path / "masks_only")
    assert why.kind is None and "benign/ hold no image" in why.message
    _img(tmp_path / "mixed" / "benign" / "a.png", 1)
    _img(tmp_path / "mixed" / "malignant" / "images" / "b.png", 2)
    why = describe_busi_folder(tmp_path / "mixed")
    assert why.kind is None and "mix layouts" in why.message
    for folder in ("none", "masks_only", "mixed"):
        msg = describe_busi_folder(tmp_path / folder).message
        assert "\n" not in msg and not is_busi_folder(tmp_path / folder)
        with pytest.raises(ManifestError, match="not a BUSI folder"):
            adapt_busi(tmp_path / folder)


def test_duplicates_same_label_reported_and_later_copy_left_out(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    _img(root / "benign" / "benign (1).png", 1)
    _img(root / "benign" / "benign (2).png", 1)  # same pixels, same class
    _img(root / "malignant" / "malignant (1).png", 2)
    problems: list = []
    exams = adapt_busi(root, problems)
    assert [e.exam_id for e in exams] == ["busi-benign-1", "busi-malignant-1"]
    assert len(problems) == 1
    path, reason = problems[0]
    assert path.endswith("benign (2).png")
    assert "busi-benign-1 (benign" in reason and "busi-benign-2 (benign)" in reason and "left out" in reason
    with pytest.raises(ManifestError, match="duplicate image"):
        adapt_busi(root)  # no problems list: the adapters' rule is to raise


def test_duplicates_with_conflicting_labels_are_an_error(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    _img(root / "benign" / "benign (4).png", 5)
    _img(root / "malignant" / "malignant (9).png", 5)  # same pixels filed as malignant
    _img(root / "normal" / "normal (1).png", 6)
    problems: list = []
    exams = adapt_busi(root, problems)
    assert [e.exam_id for e in exams] == ["busi-normal-1"]
    (path, reason), = problems
    assert reason.startswith("error: conflicting labels")
    assert "busi-malignant-9 (malignant)" in reason and "busi-benign-4 (benign" in reason
    # Without the check every image is kept (the caller decides).
    assert len(adapt_busi(root, [], check_duplicates=False)) == 3


def test_duplicate_helpers_on_any_exams(tmp_path: Path) -> None:
    a = _img(tmp_path / "a.png", 1)
    b = _img(tmp_path / "b.png", 1)
    c = _img(tmp_path / "c.png", 2)

    def exam(eid: str, path: Path, lab: BreastLabel) -> Exam:
        return Exam(exam_id=eid, modality=Modality.US, views={"U-US": [ImageRef(str(path))]}, labels={"U": lab})

    exams = [exam("e1", a, BreastLabel(1, 0)), exam("e2", b, BreastLabel(None, None)), exam("e3", c, BreastLabel(0, 1))]
    dups = duplicate_images(exams)
    assert [(d.exam_id, d.first_exam, d.label, d.first_label, d.conflict) for d in dups] == [
        ("e2", "e1", "unknown", "benign", True)]
    assert label_name(exams[2]) == "malignant"
    problems: list = []
    assert [e.exam_id for e in drop_duplicate_exams(exams, problems)] == ["e3"]
    assert len(problems) == 1 and problems[0][1].startswith("error:")
