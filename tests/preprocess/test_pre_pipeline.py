"""Manifest-level preprocessing and the `breastscreen preprocess` command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pre_phantoms import phantom_mammo
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.data.types import ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import PreprocessError
from breastscreen.preprocess.mammo import to_original
from breastscreen.preprocess.pipeline import preprocess_manifest


def _png16(a: np.ndarray, path: Path) -> str:
    Image.fromarray(np.clip(a, 0, 65535).astype(np.uint16)).save(path)
    return str(path)


def _mask_png(m: np.ndarray, path: Path) -> str:
    Image.fromarray((m > 0).astype(np.uint8) * 255).save(path)
    return str(path)


def _make_exam(tmp: Path, exam_id: str, blank_view: str | None = None) -> Exam:
    views = {}
    for k, view in enumerate(("L-CC", "R-CC", "L-MLO", "R-MLO")):
        side = "left" if view.startswith("L") else "right"
        img, _ = phantom_mammo(h=300, w=200, chest_wall=side, seed=k)
        if view == blank_view:
            img = np.zeros_like(img)
        ref = ImageRef(_png16(img, tmp / f"{exam_id}_{view}.png"))
        if view == "R-CC":
            lesion = np.zeros(img.shape, bool)
            lesion[140:160, 170:185] = True  # near the chest wall, which is on the right here
            ref.masks = [LesionMask(_mask_png(lesion, tmp / f"{exam_id}_{view}_mask_benign_0.png"), "benign", "mass")]
            ref.rois = [ROI((170, 140, 185, 160), "benign", "mass")]
        views[view] = [ref]
    return Exam(exam_id, Modality.MG, views, labels={"L": BreastLabel(0, 0), "R": BreastLabel(1, 0)})


def test_preprocess_manifest_writes_outputs_and_reports_bad_exam(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    exams = [_make_exam(src, "ex1"), _make_exam(src, "ex2", blank_view="L-MLO")]
    out = tmp_path / "pre"
    done, all_issues = preprocess_manifest(exams, out, scale=0.5)
    assert [e.exam_id for e in done] == ["ex1"]
    issues = [i for i in all_issues if i["status"] != "warning"]
    assert len(issues) == 1 and issues[0]["exam_id"] == "ex2" and issues[0]["status"] == "failed"
    assert "no breast" in issues[0]["reason"] and "ex2_L-MLO.png" in issues[0]["reason"]
    # PNGs carry no pixel spacing: every image preprocessed gets the documented default and a warning
    warnings = [i for i in all_issues if i["status"] == "warning"]
    assert len(warnings) == 7 and all("assumed 0.1 mm" in w["reason"] for w in warnings)
    rows = list(csv.DictReader(open(out / "errors.csv")))
    assert [r["exam_id"] for r in rows if r["status"] == "failed"] == ["ex2"]
    back = read_manifest(out / "manifest.jsonl")
    assert len(back) == 1 and back[0].labels["R"].benign == 1
    for view, img in back[0].iter_images():
        rec = img.preprocessing
        assert Path(img.path).name == f"ex1_{view}.png" and Path(rec["breast_mask_path"]).is_file()
        assert rec["flipped"] is view.startswith("R")
        assert rec["scale"] == 0.5 and rec["original_shape"] == [300, 200]
        assert len(rec["window"]) == 4 and len(rec["mvdcn_window"]) == 4
        assert Path(rec["source_path"]).name == f"ex1_{view}.png"
        arr = np.array(Image.open(img.path))
        assert arr.dtype == np.uint16 and list(arr.shape) == rec["output_shape"]
        assert rec["intensity"] == {"mode": "original"}
        assert img.pixel_spacing == (0.2, 0.2) and rec["spacing_assumed_mm"] == 0.1
    rcc = back[0].views["R-CC"][0]
    moved = np.array(Image.open(rcc.masks[0].path)) > 0
    assert "mask" in Path(rcc.masks[0].path).name and moved.any()
    assert np.nonzero(moved)[1].mean() < moved.shape[1] / 2  # chest wall now on the left
    original = to_original(moved.astype(np.uint8), rcc.preprocessing, kind="mask")
    truth = np.array(Image.open(exams[0].views["R-CC"][0].masks[0].path)) > 0
    assert ((original > 0) & truth).sum() / ((original > 0) | truth).sum() > 0.7
    x0, y0, x1, y1 = rcc.rois[0].box
    ys, xs = np.nonzero(moved)
    assert x0 <= xs.min() and xs.max() < x1 + 1 and y0 <= ys.min() and ys.max() < y1 + 1


def test_refuses_existing_output_unless_resume_or_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    exams = [_make_exam(src, "ex1")]
    out = tmp_path / "pre"
    preprocess_manifest(exams, out, scale=0.5)
    with pytest.raises(PreprocessError, match="--resume"):
        preprocess_manifest(exams, out, scale=0.5)
    first = Path(out / "images" / "ex1_L-CC.png").stat().st_mtime_ns
    done, _ = preprocess_manifest(exams, out, scale=0.5, resume=True)
    assert len(done) == 1 and Path(out / "images" / "ex1_L-CC.png").stat().st_mtime_ns == first  # reused
    done, _ = preprocess_manifest(exams, out, scale=0.5, overwrite=True)
    assert len(done) == 1
    with pytest.raises(PreprocessError, match="not both"):
        preprocess_manifest(exams, out, scale=0.5, resume=True, overwrite=True)


def test_resume_redoes_an_image_whose_source_was_replaced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    exams = [_make_exam(src, "ex1")]
    out = tmp_path / "pre"
    done, _ = preprocess_manifest(exams, out, scale=0.5)
    rec = done[0].views["L-CC"][0].preprocessing
    source = Path(exams[0].views["L-CC"][0].path)
    assert rec["source_size"] == source.stat().st_size and rec["source_mtime_ns"] == source.stat().st_mtime_ns
    before = {v: Path(out / "images" / f"ex1_{v}.png").stat().st_mtime_ns for v in ("L-CC", "R-MLO")}
    old_shape = rec["output_shape"]
    # Same path, different content (a smaller breast): the earlier output must not be reused.
    img, _ = phantom_mammo(h=260, w=150, chest_wall="left", seed=9)
    _png16(img, source)
    done, _ = preprocess_manifest(exams, out, scale=0.5, resume=True)
    new = done[0].views["L-CC"][0]
    assert Path(out / "images" / "ex1_L-CC.png").stat().st_mtime_ns != before["L-CC"]
    assert new.preprocessing["original_shape"] == [260, 150] and new.preprocessing["output_shape"] != old_shape
    assert new.preprocessing["source_mtime_ns"] == source.stat().st_mtime_ns
    assert Path(out / "images" / "ex1_R-MLO.png").stat().st_mtime_ns == before["R-MLO"]  # unchanged source reused
    # A record without the size/mtime keys (older runs) cannot be checked, so it is redone.
    for ex in (m := read_manifest(out / "manifest.jsonl")):
        for _, im in ex.iter_images():
            im.preprocessing.pop("source_size")
    write_manifest(m, out / "manifest.jsonl")
    preprocess_manifest(exams, out, scale=0.5, resume=True)
    assert Path(out / "images" / "ex1_R-MLO.png").stat().st_mtime_ns != before["R-MLO"]


def test_ultrasound_exclusions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = (rng.random((120, 160)) * 200 + 30).astype(np.uint8)
    empty = np.zeros((120, 160), np.uint8)
    empty[:10, :10] = 100  # > 80 % zero pixels
    paths = []
    for name, arr in (("u1", a), ("u2", a), ("u3", empty), ("u4", a[::-1].copy())):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    exams = [
        Exam("p1", Modality.US, {"L-US": [ImageRef(paths[0]), ImageRef(paths[2])]}),
        Exam("p2", Modality.US, {"R-US": [ImageRef(paths[1]), ImageRef(paths[3])]}),
    ]
    done, issues = preprocess_manifest(exams, tmp_path / "pre")
    reasons = {Path(i["path"]).name: i["reason"] for i in issues}
    assert set(reasons) == {"u2.png", "u3.png"}
    assert "duplicate of" in reasons["u2.png"] and "zero" in reasons["u3.png"]
    assert all(i["status"] == "excluded" for i in issues)
    assert [len(e.views[v]) for e in done for v in e.views] == [1, 1]


def test_cli_exit_codes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = tmp_path / "m.jsonl"
    write_manifest([_make_exam(src, "ex1"), _make_exam(src, "ex2", blank_view="R-CC")], m)
    runner = CliRunner()
    r = runner.invoke(app, ["preprocess", str(m), "--out", str(tmp_path / "pre"), "--scale", "0.5"])
    assert r.exit_code == 1, r.output  # one exam failed, the other was written
    assert len(read_manifest(tmp_path / "pre" / "manifest.jsonl")) == 1
    r = runner.invoke(app, ["preprocess", str(m), "--out", str(tmp_path / "pre"), "--scale", "0.5"])
    assert r.exit_code != 0 and isinstance(r.exception, PreprocessError)
    m2 = tmp_path / "m2.jsonl"
    write_manifest([_make_exam(src, "ex3", blank_view="L-CC")], m2)
    r = runner.invoke(app, ["preprocess", str(m2), "--out", str(tmp_path / "pre2")])
    assert isinstance(r.exception, PreprocessError) and "no exam" in str(r.exception)
    m3 = tmp_path / "m3.jsonl"
    write_manifest([_make_exam(src, "ex4")], m3)
    r = runner.invoke(app, ["preprocess", str(m3), "--out", str(tmp_path / "pre3"), "--scale", "0.25", "--workers", "2"])
    assert r.exit_code == 0, r.output


def test_patch_sources_from_preprocessed_manifest(tmp_path: Path) -> None:
    from breastscreen.preprocess.patches import PatchSampler, sources_from_exams

    src = tmp_path / "src"
    src.mkdir()
    done, _ = preprocess_manifest([_make_exam(src, "ex1")], tmp_path / "pre", scale=1.0)
    sources = sources_from_exams(done)
    # left breast negative (2 views) + R-CC with its benign lesion; R-MLO has a finding but no mask
    assert sorted(s.key for s in sources) == ["ex1/L-CC/0", "ex1/L-MLO/0", "ex1/R-CC/0"]
    sampler = PatchSampler(sources, scale=0.25)
    specs = sampler.sample_specs({"benign": 3, "negative": 3}, seed=0)
    assert len(specs) == 6
    with pytest.raises(PreprocessError, match="not preprocessed"):
        sources_from_exams([_make_exam(src, "raw")])
