"""Synthetic ultrasound phantoms: bags, lesion images, masks, labels, DICOM, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastscreen.data.manifest import read_manifest
from breastscreen.errors import BreastscreenError
from breastscreen.synthetic.ultrasound import generate_us_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("us")
    exams = generate_us_cohort(out, 4, seed=2, min_images=2, max_images=3, prevalence=0.5, benign_prevalence=0.5)
    return out, exams


def test_manifest_bags_and_labels(cohort: tuple[Path, list]) -> None:
    out, exams = cohort
    back = read_manifest(out / "manifest.jsonl")
    assert [e.exam_id for e in back] == [e.exam_id for e in exams]
    for e in back:
        assert e.modality.value == "US" and "_" not in e.exam_id
        assert set(e.labels) == {v[0] for v in e.present_views()}
        for view in e.present_views():
            images = e.views[view]
            assert 2 <= len(images) <= 3
            lab = e.labels[view[0]]
            flags = [img.meta["has_lesion"] for img in images]
            if lab.benign or lab.malignant:
                # The lesion is shown in some, but not all, of the breast's images.
                assert 1 <= sum(flags) < len(flags)
            else:
                assert not any(flags)
            for k, img in enumerate(images):
                assert Path(img.path).name == f"{e.exam_id}_{view}_{k}.png"
                assert bool(img.masks) == img.meta["has_lesion"]
                for m in img.masks:
                    assert m.label == ("malignant" if lab.malignant else "benign")
                    assert m.lesion_id == f"{view[0]}1" and [r.lesion_id for r in img.rois] == [m.lesion_id]


def test_images_8_bit_and_lesions_darker_than_surroundings(cohort: tuple[Path, list]) -> None:
    import cv2

    _, exams = cohort
    n = 0
    for e in exams:
        for _, img in e.iter_images():
            with Image.open(img.path) as im:
                assert im.mode == "L"
                arr = np.asarray(im).astype(float)
            assert 256 <= max(arr.shape) <= 600
            x0, y0, x1, y1 = img.meta["fov_box"]
            assert arr[y0:y1, x0:x1].mean() > 30  # speckle inside the field of view
            for m in img.masks:
                mask = np.asarray(Image.open(m.path)) > 0
                ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
                ring &= arr > 0
                assert arr[mask].mean() < arr[ring].mean()  # hypoechoic
                n += 1
    assert n >= 2


def test_text_and_calipers_outside_the_field_of_view(cohort: tuple[Path, list]) -> None:
    _, exams = cohort
    for e in exams:
        for _, img in e.iter_images():
            arr = np.asarray(Image.open(img.path))
            x0, y0, x1, y1 = img.meta["fov_box"]
            outside = arr.copy()
            outside[y0:y1, x0:x1] = 0
            assert (outside > 200).sum() > 20  # burned-in text / depth-scale marks


def test_determinism_and_size_independence(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    generate_us_cohort(tmp_path / "a", 2, seed=4, max_images=2, both_breasts=0.0)
    generate_us_cohort(tmp_path / "b", 2, seed=4, max_images=2, both_breasts=0.0)
    generate_us_cohort(tmp_path / "c", 3, seed=4, max_images=2, both_breasts=0.0)
    a, c = digest(tmp_path / "a"), digest(tmp_path / "c")
    assert a == digest(tmp_path / "b")
    # The first two exams are the same whatever the cohort size.
    assert {k: v for k, v in c.items() if not k.startswith("us4-0003") and k != "manifest.jsonl"} == {
        k: v for k, v in a.items() if k != "manifest.jsonl"
    }


def test_bag_size_range_and_validation(tmp_path: Path) -> None:
    exams = generate_us_cohort(tmp_path / "one", 4, seed=1, min_images=1, max_images=1, both_breasts=1.0)
    for e in exams:
        for view in ("L-US", "R-US"):
            (img,) = e.views[view]
            lab = e.labels[view[0]]
            assert img.meta["has_lesion"] == bool(lab.benign or lab.malignant)
    for kwargs, match in [
        (dict(min_images=3, max_images=2), "min_images"),
        (dict(max_images=21), "max_images"),
        (dict(prevalence=0.7, benign_prevalence=0.5), "prevalence"),
        (dict(fmt="jpg"), "format"),
    ]:
        with pytest.raises(BreastscreenError, match=match):
            generate_us_cohort(tmp_path / "bad", 1, seed=0, **kwargs)


def test_dicom_output(tmp_path: Path) -> None:
    import pydicom

    exams = generate_us_cohort(tmp_path, 2, seed=6, max_images=2, fmt="dicom", both_breasts=1.0)
    studies = set()
    for e in exams:
        for view, img in e.iter_images():
            ds = pydicom.dcmread(img.path)
            assert ds.Modality == "US"
            assert ds.ImageLaterality == view[0] and ds.Laterality == view[0]
            assert ds.BitsStored == 8 and ds.pixel_array.dtype == np.uint8
            studies.add((e.exam_id, ds.StudyInstanceUID))
    assert len({s for _, s in studies}) == len(exams)
