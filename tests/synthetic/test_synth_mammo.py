"""Synthetic mammography phantoms: files, geometry, lesions, labels, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastscreen.data.lesions import exam_lesions
from breastscreen.data.manifest import read_manifest
from breastscreen.data.types import MG_VIEWS
from breastscreen.errors import BreastscreenError
from breastscreen.synthetic import mammo
from breastscreen.synthetic.mammo import draw_exam, generate_mammo_cohort, render_view

SCALE = 0.06  # 180 x 120 px: tiny but every structure is still drawn


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("mg")
    exams = generate_mammo_cohort(out, 8, seed=5, scale=SCALE, prevalence=0.5, benign_prevalence=0.5)
    return out, exams


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    generate_mammo_cohort(tmp_path / "a", 2, seed=3, scale=SCALE, prevalence=1.0)
    generate_mammo_cohort(tmp_path / "b", 2, seed=3, scale=SCALE, prevalence=1.0)
    generate_mammo_cohort(tmp_path / "c", 2, seed=4, scale=SCALE, prevalence=1.0)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b
    assert _digest(tmp_path / "c") != a


def test_exam_does_not_depend_on_cohort_size() -> None:
    # Exam index 1 is the same whether 2 or 50 exams are drawn.
    first = draw_exam(9, 1, prevalence=0.3)
    again = draw_exam(9, 1, prevalence=0.3)
    assert first.exam_id == again.exam_id == "syn9-0002"
    a = render_view(first, "L-MLO", SCALE).pixels
    b = render_view(again, "L-MLO", SCALE).pixels
    np.testing.assert_array_equal(a, b)


def test_manifest_validates_and_lists_four_views(cohort: tuple[Path, list]) -> None:
    out, exams = cohort
    back = read_manifest(out / "manifest.jsonl")
    assert [e.exam_id for e in back] == [e.exam_id for e in exams]
    for e in back:
        assert "_" not in e.exam_id
        assert e.missing_views() == []
        assert e.density in "ABCD" and e.birads in {"0", "1", "2", "3", "4", "5"}
        for view in MG_VIEWS:
            (img,) = e.views[view]
            assert Path(img.path).name == f"{e.exam_id}_{view}.png"
            assert img.pixel_spacing == pytest.approx((0.1 / SCALE, 0.1 / SCALE))
            for k, m in enumerate(m for m in img.masks if m.label == "malignant"):
                assert Path(m.path).name == f"{e.exam_id}_{view}_mask_malignant_{k}.png"


def test_png_is_16_bit_12_bit_values_with_spacing(cohort: tuple[Path, list]) -> None:
    out, exams = cohort
    path = exams[0].views["L-CC"][0].path
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # 16-bit greyscale
        dpi = im.info["dpi"][0]
        arr = np.asarray(im)
    assert arr.dtype in (np.uint16, np.int32)
    assert 0 <= arr.min() and arr.max() <= 4095 and arr.max() > 255
    assert 25.4 / dpi == pytest.approx(0.1 / SCALE, rel=1e-3)


def test_chest_wall_side_and_dark_background() -> None:
    ph = draw_exam(2, 0)
    for view in MG_VIEWS:
        r = render_view(ph, view, 0.1)
        px = r.pixels.astype(float)
        h, w = px.shape
        left, right = px[:, : w // 8], px[:, -w // 8 :]
        # The chest-wall edge is covered by tissue over a long stretch; the opposite edge is dark.
        on_left = (left[:, 0] > 300).mean() > (right[:, -1] > 300).mean()
        assert on_left == view.startswith("L"), view
        # Background stays near zero (apart from the burned-in label).
        corner = px[h // 2 - 10 : h // 2 + 10, -5:] if view.startswith("L") else px[h // 2 - 10 : h // 2 + 10, :5]
        assert corner.mean() < 40


def test_label_is_a_small_separate_bright_blob() -> None:
    import cv2

    r = render_view(draw_exam(2, 0), "L-CC", 0.1)
    bright = (r.pixels > 3800).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(bright)
    top_right = [i for i in range(1, n) if stats[i, 0] > r.pixels.shape[1] * 0.6 and stats[i, 1] < r.pixels.shape[0] * 0.15]
    assert top_right, "no burned-in label in the corner away from the chest wall"
    tissue = (r.pixels > 200).astype(np.uint8)
    n2, lab2, stats2, _ = cv2.connectedComponentsWithStats(tissue)
    biggest = 1 + int(np.argmax(stats2[1:, cv2.CC_STAT_AREA]))
    for i in top_right:
        assert not np.any((lab == i) & (lab2 == biggest))


def test_mlo_has_bright_pectoral_corner_and_cc_does_not() -> None:
    ph = draw_exam(4, 2)
    for side in ("L", "R"):
        cc = render_view(ph, f"{side}-CC", 0.1).pixels.astype(float)
        mlo = render_view(ph, f"{side}-MLO", 0.1).pixels.astype(float)
        h, w = mlo.shape
        sl = slice(0, 12) if side == "L" else slice(w - 12, w)
        pect_corner = mlo[5:25, sl]
        middle = mlo[int(0.55 * h) : int(0.65 * h), sl]
        assert pect_corner.mean() > 2000 and pect_corner.mean() > middle.mean() + 300
        assert cc[5:25, sl].mean() < 100  # CC: no tissue in that corner


@pytest.mark.parametrize("label,kind", [("malignant", "mass"), ("benign", "mass"), ("malignant", "calcification")])
def test_masks_cover_brighter_lesions(label: str, kind: str) -> None:
    found = 0
    for index in range(60):
        ph = draw_exam(11, index, prevalence=1.0, benign_prevalence=1.0)
        for side, b in ph.breasts.items():
            if not any(les.label == label and les.kind == kind for les in b.lesions):
                continue
            r = render_view(ph, f"{side}-CC", 0.1)
            for m, les in r.masks:
                if les.label != label or les.kind != kind:
                    continue
                assert m.any()
                inside = r.pixels[m].astype(float)
                ring = _ring(m, 4) & (r.pixels > 200)
                if kind == "calcification":
                    assert inside.max() > np.percentile(r.pixels[ring], 99)
                else:
                    assert inside.mean() > r.pixels[ring].mean()
                found += 1
        if found >= 2:
            break
    assert found >= 1, f"no {label} {kind} drawn in 60 exams"


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool) & ~mask


def test_lesion_at_same_depth_in_cc_and_mlo() -> None:
    checked = 0
    for index in range(10):
        ph = draw_exam(21, index, prevalence=1.0, benign_prevalence=0.0)
        for side, b in ph.breasts.items():
            for les in b.lesions:
                for angle, g in (("CC", b.cc), ("MLO", b.mlo)):
                    x, _ = mammo._lesion_centre(angle, g, les)
                    depth_behind_nipple = (g["a"] - x) / g["a"]
                    assert depth_behind_nipple == pytest.approx(les.depth_fraction, abs=0.2)
                checked += 1
    assert checked >= 5


def test_labels_birads_and_prevalence(cohort: tuple[Path, list]) -> None:
    _, exams = cohort
    for e in exams:
        findings = e.meta["findings"]
        for side in ("L", "R"):
            lab = e.labels[side]
            assert lab.malignant == int(any(f["side"] == side and f["label"] == "malignant" for f in findings))
            assert lab.benign == int(any(f["side"] == side and f["label"] == "benign" for f in findings))
        if not findings:
            assert e.birads in ("0", "1")
        else:
            worst = max((f["birads"] for f in findings), key=mammo.BIRADS_SEVERITY.index)
            assert e.birads == worst
        n_masks = sum(len(i.masks) for _, i in e.iter_images())
        assert n_masks == 2 * len(findings)  # every finding is outlined in both views
        # One lesion record per finding and view; the same id names the lesion in CC and MLO.
        records = exam_lesions(e)
        assert len(records) == n_masks and all(r.shape == "mask" and r.box is not None for r in records)
        for side in ("L", "R"):
            side_findings = [f for f in findings if f["side"] == side]
            for angle in ("CC", "MLO"):
                got = sorted((r.lesion_id, r.outcome, r.kind) for r in records if r.view == f"{side}-{angle}")
                want = sorted((f"{side}{k}", f["label"], f["kind"]) for k, f in enumerate(side_findings, start=1))
                assert got == want
    # Prevalence is tracked closely even in small cohorts (low-discrepancy assignment).
    n = 40
    mal = sum(int(_has_finding(draw_exam(1, i, prevalence=0.25, benign_prevalence=0.0), "malignant")) for i in range(n))
    ben = sum(int(_has_finding(draw_exam(1, i, prevalence=0.0, benign_prevalence=0.5), "benign")) for i in range(n))
    assert abs(mal - 10) <= 2 and abs(ben - 20) <= 2
    assert sum(_has_finding(draw_exam(1, i, prevalence=0.0, benign_prevalence=0.0), "malignant") for i in range(n)) == 0


def _has_finding(ph: mammo.ExamPhantom, label: str) -> bool:
    return any(les.label == label for b in ph.breasts.values() for les in b.lesions)


def test_dicom_tags(tmp_path: Path) -> None:
    import pydicom

    exams = generate_mammo_cohort(tmp_path / "d", 1, seed=8, scale=SCALE, fmt="dicom")
    e = exams[0]
    uids = set()
    for view in MG_VIEWS:
        path = e.views[view][0].path
        assert path.endswith(f"{e.exam_id}_{view}.dcm")
        ds = pydicom.dcmread(path)
        side, angle = view.split("-")
        assert ds.Modality == "MG"
        assert ds.ImageLaterality == side and ds.ViewPosition == angle
        assert ds.ViewCodeSequence[0].CodeMeaning == ("cranio-caudal" if angle == "CC" else "medio-lateral oblique")
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BitsStored == 12 and ds.BitsAllocated == 16
        assert float(ds.PixelSpacing[0]) == pytest.approx(0.1 / SCALE, rel=1e-6)
        assert float(ds.ImagerPixelSpacing[1]) == pytest.approx(0.1 / SCALE, rel=1e-6)
        assert ds.PatientID == e.patient_id and ds.PatientAge.endswith("Y")
        assert ds.StudyDate == e.study_date.replace("-", "")
        assert ds.pixel_array.max() <= 4095
        uids.add(ds.StudyInstanceUID)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert len(uids) == 1  # one study per exam
    generate_mammo_cohort(tmp_path / "d2", 1, seed=8, scale=SCALE, fmt="dicom")
    assert _digest(tmp_path / "d") == _digest(tmp_path / "d2")


def test_refuses_non_empty_folder_and_bad_arguments(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("user data")
    with pytest.raises(BreastscreenError, match="not empty"):
        generate_mammo_cohort(tmp_path, 1, seed=0, scale=SCALE)
    generate_mammo_cohort(tmp_path, 3, seed=0, scale=SCALE, overwrite=True)
    generate_mammo_cohort(tmp_path, 1, seed=0, scale=SCALE, overwrite=True)
    assert keep.read_text() == "user data"
    assert not list(tmp_path.glob("syn0-0003*"))  # the earlier, larger cohort was replaced
    for kwargs, match in [
        (dict(scale=0.0), "scale"),
        (dict(prevalence=1.5), "prevalence"),
        (dict(fmt="jpg"), "format"),
        (dict(id_prefix="a_b"), "id_prefix"),
    ]:
        with pytest.raises(BreastscreenError, match=match):
            generate_mammo_cohort(tmp_path / "x", 1, seed=0, **{"scale": SCALE, **kwargs})
    with pytest.raises(BreastscreenError, match="seed"):
        generate_mammo_cohort(tmp_path / "y", 1, seed=-1, scale=SCALE)
