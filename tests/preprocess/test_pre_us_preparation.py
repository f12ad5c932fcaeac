"""`breastscreen preprocess --us-preparation`: ultrasound outputs a model reuses as they are, or re-prepares."""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.errors import PreprocessError
from breastscreen.preprocess.pipeline import preprocess_manifest
from breastscreen.preprocess.us_annotations import AnnotationParams
from breastscreen.specs import USSpec


@pytest.fixture(scope="module")
def us_exams(tmp_path_factory):
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    root = tmp_path_factory.mktemp("us_prep")
    return generate_us_cohort(root / "c", 2, seed=7, min_images=2, max_images=2, prevalence=0.6,
                              benign_prevalence=0.4)


def _images(exams):
    return [im for e in exams for _, im in e.iter_images()]


def test_safe_output_is_what_a_new_model_prepares_without_the_source(us_exams, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(Path(_images(us_exams)[0].path).parent, src)
    exams = copy.deepcopy(us_exams)
    for im in _images(exams):
        im.path = str(src / Path(im.path).name)
        im.masks.clear()
    done, issues = preprocess_manifest(exams, tmp_path / "pre")  # default: safe
    assert not [i for i in issues if i["status"] == "failed"]
    spec = USSpec(remove_annotations=True, crop="safe")  # how `train us` prepares new models
    pre = _images(done)
    expected = [spec.prepare(im).pixels for im in _images(exams)]
    for im in pre:
        rec = im.preprocessing
        assert rec["us_preparation"] == "safe" and rec["crop_mode"] == "safe" and rec["annotations_removed"] is True
        assert rec["annotation_params"] == AnnotationParams().model_dump(mode="json")
        os.remove(rec["source_path"])  # the stored crop is used as it is: the original is not needed
    for im, want in zip(pre, expected):
        np.testing.assert_array_equal(spec.prepare(im).pixels, want)
    # a model with other removal parameters does not take these crops: it needs the original
    other = USSpec(remove_annotations=True, crop="safe", annotation_params=AnnotationParams(max_stroke_px=5))
    with pytest.raises(PreprocessError, match="original image"):
        other.prepare(pre[0])


def test_legacy_output_is_refused_by_a_safe_model_and_resume_redoes_another_preparation(us_exams, tmp_path) -> None:
    out = tmp_path / "pre"
    done, _ = preprocess_manifest(us_exams, out, us_preparation="legacy")
    legacy = _images(done)
    assert all(im.preprocessing["us_preparation"] == "legacy" and "annotations_removed" not in im.preprocessing
               for im in legacy)
    assert all("annotations_removed" not in im.preprocessing for im in legacy)
    spec = USSpec(remove_annotations=True, crop="safe")
    # the original still exists: the model prepares it again, as from the source
    np.testing.assert_array_equal(spec.prepare(legacy[0]).pixels, spec.prepare(_images(us_exams)[0]).pixels)
    # a resume under the other preparation redoes every image rather than reusing legacy crops
    again, _ = preprocess_manifest(us_exams, out, resume=True, us_preparation="safe")
    assert all(im.preprocessing["us_preparation"] == "safe" for im in _images(again))
    stamps = {im.path: os.stat(im.path).st_mtime_ns for im in _images(again)}
    time.sleep(0.05)  # a redone image would get a later modification time
    kept, _ = preprocess_manifest(us_exams, out, resume=True, us_preparation="safe")
    assert {im.path: os.stat(im.path).st_mtime_ns for im in _images(kept)} == stamps  # reused, not redone


def test_cli_option_and_a_bad_name(us_exams, tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    write_manifest(us_exams, m)
    r = CliRunner().invoke(app, ["preprocess", str(m), "--out", str(tmp_path / "pre"), "--us-preparation", "legacy"])
    assert r.exit_code == 0, r.output
    assert {im.preprocessing["us_preparation"] for im in _images(read_manifest(tmp_path / "pre" / "manifest.jsonl"))} \
        == {"legacy"}
    r = CliRunner().invoke(app, ["preprocess", str(m), "--out", str(tmp_path / "bad"), "--us-preparation", "v2"])
    assert isinstance(r.exception, PreprocessError) and "--us-preparation must be one of safe, legacy" in str(r.exception)
    assert not (tmp_path / "bad").exists()


def test_resume_redoes_safe_outputs_made_with_other_removal_parameters(us_exams, tmp_path) -> None:
    import json

    out = tmp_path / "pre"
    preprocess_manifest(us_exams, out)
    manifest = out / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:  # as an older version with another default would have recorded them
        for images in row["views"].values():
            for im in images:
                im["preprocessing"]["annotation_params"]["max_stroke_px"] = 99
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again, _ = preprocess_manifest(us_exams, out, resume=True)
    assert all(im.preprocessing["annotation_params"]["max_stroke_px"] != 99 for im in _images(again))
