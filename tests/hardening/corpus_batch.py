"""Corpus family "batch": whole commands on small batches — one bad exam never stops the others,
nothing is written outside --out, output folders keep their owner, nothing processed means a
non-zero exit with the reason, NaN outputs are named per exam.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.safety import safe_name
from hardening_helpers import Case, bs, expect, mg_dataset, phantom, png, save, save_with_raw_element

CASES: list[Case] = []


def add(name: str, kind: str, internal_error: bool = False):  # noqa: ANN201 - decorator
    def deco(fn):  # noqa: ANN001, ANN202
        CASES.append(Case("batch", name, kind, fn, internal_error))
        return fn
    return deco


@lru_cache(maxsize=1)
def _cohort() -> Path:
    """Two synthetic four-view exams at the bundled demo models' scale (made once per session)."""
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    root = Path(tempfile.mkdtemp(prefix="bs-corpus-cohort-"))
    atexit.register(shutil.rmtree, root, True)
    generate_mammo_cohort(root / "c", n_exams=2, seed=7, scale=0.125, fmt="png")
    return root / "c"


def _copy_cohort(box: Path) -> Path:
    dst = box / "cohort"
    shutil.copytree(_cohort(), dst)
    (dst / ".breastscreen-output.json").unlink(missing_ok=True)
    return dst


def _tiny_breast_model(box: Path, *, nan: bool = False) -> Path:
    from breastscreen.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("nyu-viewwise-image", num_filters=4)
    if nan:
        # Finite weights that still give NaN: a negative BatchNorm variance (sqrt of < 0).
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(-1.0)
    return save_checkpoint(model, box / ("nan.safetensors" if nan else "tiny.safetensors"), {"scale": 0.125})


def _dicom_exam(folder: Path, exam: str, **attrs) -> None:  # noqa: ANN003 - DICOM attributes
    from pydicom.uid import generate_uid

    uid = generate_uid()
    for side in "LR":
        for view in ("CC", "MLO"):
            save(mg_dataset(phantom(side=side), side=side, view=view, StudyInstanceUID=uid, AccessionNumber=exam,
                            **attrs), folder / f"{safe_name(exam)}_{side}{view}.dcm", enforce_file_format=True)


@add("preprocess-spacing-inf-one-of-three", "accepted")
def _spacing_batch(box: Path) -> None:
    folder = box / "in"
    for e in ("E1", "E2"):
        _dicom_exam(folder, e)
    from pydicom.uid import generate_uid

    uid = generate_uid()
    for side in "LR":
        for view in ("CC", "MLO"):
            save_with_raw_element(mg_dataset(phantom(side=side), side=side, view=view, StudyInstanceUID=uid,
                                             AccessionNumber="E3"), folder / f"E3_{side}{view}.dcm", 0x00280030,
                                  b"inf\\inf ")
    expect(bs("manifest", "build", folder, "--out", box / "m.jsonl"), 0, "3 exams")
    res = bs("preprocess", box / "m.jsonl", "--out", box / "pre", "--scale", "0.5")
    expect(res, 0, r"preprocessed 3/3 exams .* 4 warnings")
    rows = list(csv.DictReader(open(box / "pre" / "errors.csv")))
    assert {r["exam_id"] for r in rows} == {"E3"} and all(r["status"] == "warning" for r in rows)
    assert all("PixelSpacing" in r["reason"] for r in rows)


@add("build-frames-abc-one-file", "accepted")
def _frames_batch(box: Path) -> None:
    folder = box / "in"
    for e in ("E1", "E2"):
        _dicom_exam(folder, e)
    path = folder / "E2_LCC.dcm"
    from pydicom import dcmread

    ds = dcmread(path)
    save_with_raw_element(ds, path, 0x00280008, b"abc ")
    res = bs("manifest", "build", folder, "--out", box / "m.jsonl")
    expect(res, 0, "E2_LCC.dcm: NumberOfFrames must be an integer, got 'abc")
    exams = {e.exam_id: e for e in read_manifest(box / "m.jsonl")}
    assert sorted(exams) == ["E1", "E2"] and exams["E2"].missing_views() == ["L-CC"]


def _cbis_folder(folder: Path, patient: str = "P_00099", study_date: str | None = None) -> None:
    from pydicom.uid import generate_uid

    for side, word in (("L", "LEFT"), ("R", "RIGHT")):
        for view in ("CC", "MLO"):
            attrs = dict(ImageLaterality=None, ViewPosition=None, Laterality=side, PatientOrientation=view,
                         PatientID=f"Mass-Test_{patient}_{word}_{view}", StudyInstanceUID=generate_uid(),
                         PixelSpacing=None)
            if study_date:
                attrs["StudyDate"] = study_date
            save(mg_dataset(phantom(side=side), **attrs), folder / f"{patient}-{side}{view}.dcm", enforce_file_format=True)


@add("cbis-four-views-one-exam", "accepted")
def _cbis(box: Path) -> None:
    _cbis_folder(box / "in")
    expect(bs("manifest", "build", box / "in", "--out", box / "m.jsonl"), 0, "1 exams")
    (exam,) = read_manifest(box / "m.jsonl")
    assert exam.present_views() == ["L-CC", "R-CC", "L-MLO", "R-MLO"]
    assert exam.exam_id == "Mass-Test_P_00099" and exam.meta["grouped_by"] == "patient-date"
    assert len(exam.meta["study_instance_uids"]) == 4
    for view, img in exam.iter_images():
        assert img.meta["laterality_from"] == "Laterality" and img.meta["view_from"] == "PatientOrientation"
    res = bs("preprocess", box / "m.jsonl", "--out", box / "pre", "--scale", "0.5")
    expect(res, 0, "4 warnings")  # no pixel spacing: documented default, listed as warnings


@add("cbis-two-patients-two-dates", "accepted")
def _cbis_two(box: Path) -> None:
    _cbis_folder(box / "in", "P_00001", "20200101")
    _cbis_folder(box / "in", "P_00002", "20200101")
    expect(bs("manifest", "build", box / "in", "--out", box / "m.jsonl"), 0, "2 exams")
    assert sorted(e.exam_id for e in read_manifest(box / "m.jsonl")) == ["Mass-Test_P_00001-2020-01-01",
                                                                       "Mass-Test_P_00002-2020-01-01"]


@add("cbis-group-by-study-override", "accepted")
def _cbis_override(box: Path) -> None:
    _cbis_folder(box / "in")
    expect(bs("manifest", "build", box / "in", "--out", box / "m.jsonl", "--group-by", "study"), 0, "4 exams")


@add("group-by-invalid", "error")
def _group_invalid(box: Path) -> None:
    _cbis_folder(box / "in")
    expect(bs("manifest", "build", box / "in", "--out", box / "m.jsonl", "--group-by", "nonsense"), 2, "group_by must be")


@add("predict-empty-folder", "error")
def _predict_empty(box: Path) -> None:
    (box / "in").mkdir()
    (box / "in" / "a.txt").write_text("text")
    res = bs("predict", box / "in", "--model", "demo-breast-image", "--out", box / "p0")
    expect(res, 2, r"0 exams predicted: 1 file\(s\) skipped, see .*skipped_files.csv")


@add("predict-only-bad-files", "error")
def _predict_bad(box: Path) -> None:
    folder = box / "in"
    folder.mkdir()
    (folder / "broken.dcm").write_bytes(b"DICM" + bytes(300))
    os.mkfifo(folder / "x_L-CC.png")
    png(folder / "holiday.png", np.zeros((50, 50), np.uint8))
    res = bs("predict", folder, "--model", "demo-breast-image", "--out", box / "p0")
    expect(res, 2, r"0 exams predicted: 3 file\(s\) skipped")
    assert len(list(csv.DictReader(open(box / "p0" / "skipped_files.csv")))) == 3


def _escape_ids(box: Path) -> Path:
    cohort = _copy_cohort(box)
    exams = read_manifest(cohort / "manifest.jsonl")
    exams[0].exam_id = "../../ESCAPED"
    exams[1].exam_id = "/tmp/bs-corpus-escape"
    write_manifest(exams, cohort / "manifest.jsonl")
    return cohort


@add("predict-ids-escape", "accepted")
def _predict_escape(box: Path) -> None:
    cohort = _escape_ids(box)
    cwd = box / "deep" / "a" / "b"
    res = bs("predict", cohort / "manifest.jsonl", "--model", "demo-breast-image", "--out", "out", cwd=cwd)
    expect(res, 0, "predicted 2 exam")
    assert not [p for p in box.rglob("*ESCAPED*") if (cwd / "out") not in p.parents]
    assert not list(Path("/tmp").glob("bs-corpus-escape*"))
    names = sorted(p.name for p in (cwd / "out" / "pictures").iterdir())
    assert names == sorted(f"{safe_name(i)}.png" for i in ("../../ESCAPED", "/tmp/bs-corpus-escape")), names
    rows = list(csv.DictReader(open(cwd / "out" / "predictions.csv")))
    assert sorted(r["exam_id"] for r in rows) == ["../../ESCAPED", "/tmp/bs-corpus-escape"]


@add("heatmaps-ids-escape", "accepted")
def _heatmaps_escape(box: Path) -> None:
    cohort = _escape_ids(box)
    res = bs("heatmaps", cohort / "manifest.jsonl", "--model", "demo-patch", "--out", box / "maps", "--device", "cpu")
    expect(res, 0)
    assert {p.name.split("_L-CC")[0].split("_R-")[0].split("_L-")[0] for p in (box / "maps").glob("*.npz")} == {
        safe_name("../../ESCAPED"), safe_name("/tmp/bs-corpus-escape")}
    assert not [p for p in box.rglob("*ESCAPED*") if (box / "maps") not in p.parents]


@add("predict-accession-dotdot-folder", "accepted")
def _predict_accession(box: Path) -> None:
    folder = box / "in"
    _dicom_exam(folder, "../../../ACC", PixelSpacing=[0.8, 0.8])
    res = bs("predict", folder, "--model", "demo-breast-image", "--out", box / "out", "--no-pictures")
    expect(res, 0, "predicted 1 exam")
    assert not [p for p in box.rglob("*ACC*") if (box / "out") not in p.parents and (box / "in") not in p.parents]
    assert list((box / "out" / "preprocessed" / "images").glob(safe_name("../../../ACC") + "_*"))


@add("predict-ids-differing-in-case", "error")
def _predict_case(box: Path) -> None:
    cohort = _copy_cohort(box)
    exams = read_manifest(cohort / "manifest.jsonl")
    exams[0].exam_id, exams[1].exam_id = "ExamA", "examA"
    write_manifest(exams, cohort / "manifest.jsonl")
    res = bs("predict", cohort / "manifest.jsonl", "--model", "demo-breast-image", "--out", box / "o", "--no-pictures")
    expect(res, 1, "exam ids 'ExamA' and 'examA' would share the file name")


@add("heatmaps-scale-mismatch", "error")
def _scale_mismatch(box: Path) -> None:
    cohort = _copy_cohort(box)
    expect(bs("preprocess", cohort / "manifest.jsonl", "--out", box / "pre1", "--scale", "1.0"), 0)
    res = bs("heatmaps", box / "pre1" / "manifest.jsonl", "--model", "demo-patch", "--out", box / "maps")
    expect(res, 2, "trained at scale 0.125 but the images are preprocessed at scale 1.0")


def _owned(command: str, box: Path) -> Path:
    d = box / f"by-{command}"
    d.mkdir()
    (d / ".breastscreen-output.json").write_text(json.dumps({"command": command}))
    (d / "manifest.jsonl").write_text("precious\n")
    return d


def _refused(box: Path, args: list, owner: str) -> None:
    res = bs(*args)
    expect(res, 2, f"holds the output of `breastscreen {owner}`")
    assert (box / f"by-{owner}" / "manifest.jsonl").read_text() == "precious\n"


@add("heatmaps-into-preprocess-folder", "error")
def _hm_into_pre(box: Path) -> None:
    cohort = _copy_cohort(box)
    _owned("preprocess", box)
    for flag in ([], ["--overwrite"], ["--resume"]):
        _refused(box, ["heatmaps", cohort / "manifest.jsonl", "--model", "demo-patch", "--out", box / "by-preprocess",
                       *flag], "preprocess")


@add("preprocess-into-heatmaps-folder", "error")
def _pre_into_hm(box: Path) -> None:
    cohort = _copy_cohort(box)
    _owned("heatmaps", box)
    for flag in ([], ["--overwrite"], ["--resume"]):
        _refused(box, ["preprocess", cohort / "manifest.jsonl", "--out", box / "by-heatmaps", *flag], "heatmaps")


@add("predict-into-preprocess-folder", "error")
def _pred_into_pre(box: Path) -> None:
    cohort = _copy_cohort(box)
    _owned("preprocess", box)
    for flag in ([], ["--overwrite"], ["--resume"]):
        _refused(box, ["predict", cohort / "manifest.jsonl", "--model", "demo-breast-image", "--out",
                       box / "by-preprocess", *flag], "preprocess")


@add("synth-overwrite-into-preprocess-folder", "error")
def _synth_into_pre(box: Path) -> None:
    _owned("preprocess", box)
    _refused(box, ["synth", "mammo", "--n-exams", "1", "--out", box / "by-preprocess", "--overwrite", "--scale", "0.1"],
             "preprocess")


@add("preprocess-into-synth-cohort", "error")
def _pre_into_synth(box: Path) -> None:
    cohort = _copy_cohort(box)
    (cohort / ".breastscreen-output.json").write_text(json.dumps({"command": "synth"}))
    before = (cohort / "manifest.jsonl").read_bytes()
    res = bs("preprocess", cohort / "manifest.jsonl", "--out", cohort, "--overwrite")
    expect(res, 2, "holds the output of `breastscreen synth`")
    assert (cohort / "manifest.jsonl").read_bytes() == before


@add("out-is-a-file", "error")
def _out_file(box: Path) -> None:
    cohort = _copy_cohort(box)
    (box / "file").write_text("x")
    expect(bs("preprocess", cohort / "manifest.jsonl", "--out", box / "file"), 2, "exists and is not a folder")
    assert (box / "file").read_text() == "x"


@add("stale-temp-files-removed", "accepted")
def _stale(box: Path) -> None:
    cohort = _copy_cohort(box)
    expect(bs("preprocess", cohort / "manifest.jsonl", "--out", box / "pre", "--scale", "0.125"), 0)
    dead = box / "pre" / "images" / ".bstmp-999999999-x_L-CC.abc123.png"
    live = box / "pre" / "images" / f".bstmp-{os.getpid()}-y.png"
    dead.write_bytes(b"partial")
    live.write_bytes(b"in use")
    expect(bs("preprocess", cohort / "manifest.jsonl", "--out", box / "pre", "--scale", "0.125", "--resume"), 0)
    assert not dead.exists() and live.exists()


@add("predict-nan-outputs", "error")
def _nan_outputs(box: Path) -> None:
    cohort = _copy_cohort(box)
    model = _tiny_breast_model(box, nan=True)
    res = bs("predict", cohort / "manifest.jsonl", "--model", model, "--out", box / "p", "--no-pictures")
    expect(res, 2, r"0 exams predicted: 2 exam\(s\) failed")
    errors = (box / "p" / "errors.csv").read_text()
    assert errors.count("NaN or infinite values") == 2
    assert len(list(csv.DictReader(open(box / "p" / "predictions.csv")))) == 0


@add("heatmaps-nan-outputs", "error")
def _nan_heatmaps(box: Path) -> None:
    from breastscreen.models import create_model, save_checkpoint

    cohort = _copy_cohort(box)
    torch.manual_seed(0)
    model = create_model("densenet-tiny")
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(-1.0)
    ck = save_checkpoint(model, box / "p.safetensors", {"scale": 0.125, "patch_size": 32,
                                                        "classes": ["malignant", "benign", "outside", "negative"]})
    res = bs("heatmaps", cohort / "manifest.jsonl", "--model", ck, "--out", box / "maps", "--device", "cpu")
    expect(res, 2, r"0 heatmaps made: 8 failed")
    assert "NaN or infinite probabilities" in (box / "maps" / "errors.csv").read_text()
    assert not list((box / "maps").glob("*.npz"))


@add("predict-nan-weights", "error")
def _nan_weights(box: Path) -> None:
    from breastscreen.models import create_model, save_checkpoint

    cohort = _copy_cohort(box)
    model = create_model("nyu-viewwise-image", num_filters=4)
    next(p for p in model.parameters()).data.view(-1)[0] = float("nan")
    ck = save_checkpoint(model, box / "n.safetensors", {"scale": 0.125})
    res = bs("predict", cohort / "manifest.jsonl", "--model", ck, "--out", box / "p")
    expect(res, 2, "weights hold NaN or infinite values")


@add("predict-breast-without-images", "accepted")
def _breast_without(box: Path) -> None:
    cohort = _copy_cohort(box)
    exams = read_manifest(cohort / "manifest.jsonl")
    for e in exams:
        e.views["R-CC"], e.views["R-MLO"] = [], []
    write_manifest(exams, cohort / "manifest.jsonl")
    res = bs("predict", cohort / "manifest.jsonl", "--model", _tiny_breast_model(box), "--out", box / "p",
             "--no-pictures")
    expect(res, 0)
    for row in csv.DictReader(open(box / "p" / "predictions.csv")):
        assert row["left_malignant"] and row["right_malignant"] == "" and row["right_benign"] == ""
    line = json.loads((box / "p" / "predictions.jsonl").read_text().splitlines()[0])
    assert line["breasts_without_images"] == ["R"]


@add("predict-resume-after-complete-run", "accepted")
def _resume_complete(box: Path) -> None:
    cohort = _copy_cohort(box)
    args = ["predict", cohort / "manifest.jsonl", "--model", _tiny_breast_model(box), "--out", box / "p"]
    expect(bs(*args), 0)
    first = {p.name: p.read_bytes() for p in (box / "p").glob("*.*") if p.is_file()}
    stamps = {p.name: p.stat().st_mtime_ns for p in (box / "p" / "exam_results").iterdir()}
    expect(bs(*args), 2, "pass --resume to continue it")
    expect(bs(*args, "--resume", "--overwrite"), 2, "not both")
    expect(bs(*args, "--resume"), 0)
    assert {p.name: p.read_bytes() for p in (box / "p").glob("*.*") if p.is_file()} == first
    assert {p.name: p.stat().st_mtime_ns for p in (box / "p" / "exam_results").iterdir()} == stamps


@add("heatmaps-no-mammogram", "error")
def _hm_nothing(box: Path) -> None:
    m = box / "m.jsonl"
    png(box / "u_U-US.png", (phantom(bits=8)).astype(np.uint8))
    m.write_text(json.dumps({"exam_id": "u", "modality": "US", "views": {"U-US": [{"path": "u_U-US.png"}]}}) + "\n")
    expect(bs("heatmaps", m, "--model", "demo-patch", "--out", box / "maps"), 2, "0 heatmaps made")


@add("unexpected-error-logged", "error", internal_error=True)
def _unexpected(box: Path) -> None:
    """A bug-shaped failure: one line naming the command, the traceback in the output folder's log."""
    from unittest import mock

    cohort = _copy_cohort(box)
    with mock.patch("breastscreen.preprocess.pipeline.preprocess_manifest", side_effect=ZeroDivisionError("boom")):
        res = bs("preprocess", cohort / "manifest.jsonl", "--out", box / "pre")
    assert res.code == 3 and "Traceback" not in res.out
    assert "failed unexpectedly (ZeroDivisionError: boom)" in res.out and "breastscreen-error.log" in res.out
    log = (box / "pre" / "breastscreen-error.log").read_text()
    assert "Traceback" in log and "ZeroDivisionError: boom" in log


@add("one-image-unexpected-error-batch-goes-on", "accepted")
def _unexpected_item(box: Path) -> None:
    from unittest import mock

    from breastscreen.preprocess import pipeline

    cohort = _copy_cohort(box)
    real = pipeline._preprocess_mg
    victim = sorted(str(p) for p in cohort.glob("*_L-CC.png"))[0]

    def flaky(image, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202 - same signature as the real one
        if image.path == victim:
            raise ZeroDivisionError("odd input")
        return real(image, *a, **k)

    with mock.patch.object(pipeline, "_preprocess_mg", flaky):
        res = bs("preprocess", cohort / "manifest.jsonl", "--out", box / "pre", "--scale", "0.125")
    expect(res, 1, "unexpected ZeroDivisionError: odd input")
    assert len(read_manifest(box / "pre" / "manifest.jsonl")) == 1
    assert "ZeroDivisionError" in (box / "pre" / "breastscreen-error.log").read_text()
