"""Smoke tests of benchmarks/minimias_patch_cv.py's pieces (folds, ROI patches, statistics, one tiny fold)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from breastscreen.data.types import BreastLabel, Exam, Modality
from breastscreen.labels import PATCH_CLASSES
from breastscreen.preprocess.patches import PatchSource
from tests.benchmark_scripts import load_benchmark




@pytest.fixture(scope="module")
def cv():  # noqa: ANN201 - the benchmark module
    return load_benchmark("minimias_patch_cv")


@pytest.fixture
def one_thread():
    """One torch thread for the test (two OpenMP threads crawl on a busy 2-core machine), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _woman(i: int, mal: int, ben: int) -> Exam:
    return Exam(exam_id=f"w{i:03d}", modality=Modality.MG, patient_id=f"w{i:03d}",
                labels={"L": BreastLabel(ben, mal), "R": BreastLabel(0, 0)})


def test_patient_folds_disjoint_stratified_deterministic(cv) -> None:
    exams = [_woman(i, int(i % 6 == 0), int(i % 5 == 0)) for i in range(40)]
    folds = cv.patient_folds(exams, 5, seed=3)
    assert folds == cv.patient_folds(list(reversed(exams)), 5, seed=3)
    assert folds != cv.patient_folds(exams, 5, seed=4)
    assert set(folds) == {e.exam_id for e in exams} and set(folds.values()) == set(range(5))
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1
    malignant = [folds[e.exam_id] for e in exams if cv.woman_strata(e)[0]]
    counts = np.bincount(malignant, minlength=5)
    assert counts.max() - counts.min() <= 1  # 7 malignant women spread over 5 folds
    with pytest.raises(ValueError, match="n_folds"):
        cv.patient_folds(exams, 1, seed=0)


def test_roi_centred_specs_centre_and_clip(cv) -> None:
    img = np.zeros((40, 30), np.float32)
    m1 = np.zeros_like(img, bool)
    m1[10:15, 12:17] = True  # centre (12.5, 14.5)
    m2 = np.zeros_like(img, bool)
    m2[0:2, 0:2] = True  # near the corner: the patch is pushed inside
    src = PatchSource(img, np.ones_like(img, bool), [(m1, "malignant", "mass"), (m2, "benign", None)], key="w1/L-MLO")
    specs = cv.roi_centred_specs([src], 8)
    assert [(s.cy, s.cx, s.label) for s in specs] == [(12.5, 14.5, PATCH_CLASSES.index("malignant")),
                                                      (4.0, 4.0, PATCH_CLASSES.index("benign"))]


def test_auc_with_ci_resamples_women(cv) -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7, 0.2, 0.95])
    women = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    res = cv.auc_with_ci(y, s, women, n_resamples=200, seed=0)
    assert res["auc"] == 1.0 and res["ci95"] == [1.0, 1.0] and res["n_women"] == 4
    res = cv.auc_with_ci(y, 1 - s, women, n_resamples=200, seed=0)
    assert res["auc"] == 0.0 and res["n_pos"] == 4 and res["n_neg"] == 4


def _tiny_mias(root: Path, shared: Path) -> None:
    """Two women of the real mini-MIAS: mdb023 (malignant) + mdb024, mdb005 (two benign) + mdb006."""
    (root / "images").mkdir(parents=True)
    rows = []
    for line in (shared / "Info.txt").read_text(encoding="latin-1").splitlines():
        if line[:6] in ("mdb005", "mdb006", "mdb023", "mdb024"):
            rows.append(line)
            dst = root / "images" / f"{line[:6]}.png"
            if not dst.exists():
                # A copy, not a link: adapters refuse links that leave the dataset folder.
                shutil.copyfile(shared / "images" / f"{line[:6]}.png", dst)
    (root / "Info.txt").write_text("\n".join(rows) + "\n", encoding="latin-1")


def test_one_tiny_fold_on_real_images(cv, shared_data: Path, tmp_path: Path, one_thread: None) -> None:
    root = tmp_path / "mias"
    _tiny_mias(root, shared_data / "mini-mias")
    scale = 0.0625  # 1.6 mm pixels, 16 px patches: a few seconds on one core
    exams = cv.prepare_data(str(root), tmp_path / "work", scale)
    assert [e.exam_id for e in exams] == ["mias003", "mias012"]
    torch.manual_seed(0)
    args = argparse.Namespace(model="densenet-tiny", model_args='{"stem_channels": 1}', epochs=1, batch_size=16,
                              lr=1e-3, seed=0, composition=[8, 8, 8, 8])
    ckpt = cv.train_fold(exams, tmp_path / "fold", args)
    from breastscreen.models import load_checkpoint

    model = load_checkpoint(ckpt).model
    pp = cv.heldout_patches(model, exams, scale, {"malignant": 4, "benign": 4, "outside": 4, "negative": 4}, seed=1)
    # 16 random patches + one ROI-centred patch per lesion (mdb005 has two, mdb023 one).
    assert len(pp.labels) == 19 and pp.roi_centred.sum() == 3 and pp.probs.shape == (19, 4)
    assert np.allclose(pp.probs.sum(1), 1, atol=1e-5)
    assert set(pp.women[pp.labels == PATCH_CLASSES.index("malignant")]) == {"mias012"}
    # Info.txt's y axis starts at the bottom: mdb023's lesion (x 538, y 681, r 29) lies in the upper half.
    mal = [im for _, im in exams[1].iter_images() if im.meta["mias_ref"] == "mdb023"][0]
    rec = mal.preprocessing
    assert rec["crop_box"][1] <= 1024 - 681 < rec["crop_box"][3]
    ip = cv.heatmap_maxima(model, exams, 16, 4)
    assert sorted(ip.refs) == ["mdb005", "mdb006", "mdb023", "mdb024"]
    assert dict(zip(ip.refs, ip.malignant)) == {"mdb005": 0, "mdb006": 0, "mdb023": 1, "mdb024": 0}
    assert dict(zip(ip.refs, ip.benign))["mdb005"] == 1
    assert all(0.0 <= v <= 1.0 for v in ip.max_malignant + ip.max_benign)
