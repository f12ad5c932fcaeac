"""Burned-in ultrasound annotations: detection, inpainting and the spec switch (issue 14, part 1).

Ground truth comes from the ultrasound phantom, which knows every mark it burns in
(``render_us_image_full``: '+' calipers, and with ``inner_labels`` a text label, 'x' calipers
and dotted lines inside the field of view).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from breastscreen.preprocess.us_annotations import AnnotationParams, detect_annotations, inpaint_marks, remove_annotations
from breastscreen.synthetic.ultrasound import _device, _draw_lesion, _fov_mask, render_us_image_full


def _phantom(seed: int, lesion: str | None, calipers: bool, inner: bool):
    rng = np.random.default_rng(seed)
    dev = _device(rng)
    les = _draw_lesion(rng, lesion) if lesion else None
    r = render_us_image_full(rng, dev, les, "L", 3, calipers, inner_labels=inner)
    return r, _fov_mask(dev)[0]


def test_marks_inside_the_field_of_view_are_found_and_removed() -> None:
    hit = total = removed = n_pixels = 0
    for i in range(12):
        r, fov = _phantom(7000 + i, "malignant" if i % 2 else "benign", True, True)
        res = remove_annotations(r.pixels)
        truth = r.annotation_mask & fov
        n, labels, stats, _ = cv2.connectedComponentsWithStats(truth.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            if stats[k, cv2.CC_STAT_AREA] > 8:  # glyphs and calipers (single dots of dotted lines aside)
                total += 1
                hit += int((res.marks & (labels == k)).any())
        removed += int((res.inpainted & truth).sum())
        n_pixels += int(truth.sum())
    # glyph components as OpenCV 5.1 (pinned in the Makefile) draws them; 5.0 drew 55 (50 found)
    assert total == 59
    assert hit / total >= 0.85  # measured 0.90 (53 of 59)
    assert removed / n_pixels >= 0.7  # measured 0.755


def test_no_detection_on_clean_speckle() -> None:
    for i in range(4):
        r, fov = _phantom(8000 + i, None, False, False)  # marks only outside the field of view
        inner = cv2.erode(fov.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        marks, _ = detect_annotations(r.pixels)
        assert not (marks & inner).any()
        assert (marks & r.annotation_mask).sum() > 0.5 * r.annotation_mask.sum()  # the periphery text is found
    for seed in range(3):
        speckle = np.random.default_rng(seed).gamma(2.0, 40.0, (300, 400)).clip(0, 255).astype(np.uint8)
        marks, n = detect_annotations(speckle)
        assert n == 0 and not marks.any()


def test_inpainting_changes_only_the_inpainted_area() -> None:
    r, _ = _phantom(7001, "malignant", True, True)
    res = remove_annotations(r.pixels)
    assert res.n_marks > 0 and res.inpainted.any()
    assert np.array_equal(res.pixels[~res.inpainted], r.pixels[~res.inpainted])
    assert (res.marks <= res.inpainted).all()
    # The marks are gone: the inpainted strokes are no longer near white.
    assert res.pixels[res.marks & r.annotation_mask].mean() < r.pixels[res.marks & r.annotation_mask].mean() - 40
    same, area = inpaint_marks(r.pixels, np.zeros(r.pixels.shape, bool))
    assert np.array_equal(same, r.pixels) and not area.any()


def test_colour_marks_are_a_cue_and_doppler_blobs_are_not_marks() -> None:
    rng = np.random.default_rng(3)
    grey = rng.gamma(2.0, 30.0, (240, 320)).clip(0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    # dim cyan text, about as bright as the speckle in grey (the grey detector cannot see it)
    cv2.putText(rgb, "L 3CM", (60, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (40, 140, 140), 1)
    cv2.circle(rgb, (240, 60), 25, (200, 30, 30), -1)  # a red Doppler-like patch
    text = np.all(rgb == (40, 140, 140), axis=2)  # the glyphs' full-colour pixels (edges are blended)
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    marks, n = detect_annotations(g, rgb)
    assert n >= 2 and (marks & text).sum() >= 0.95 * text.sum()
    grey_only, _ = detect_annotations(g)
    assert (grey_only & text).sum() < 0.5 * text.sum()  # without colour the dim text is missed
    assert not marks[30:90, 210:270].any()


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError):
        AnnotationParams(caliper_arms=(1,))
    with pytest.raises(ValidationError):
        AnnotationParams(unknown=1)
    assert AnnotationParams.model_validate(AnnotationParams().model_dump(mode="json")) == AnnotationParams()


def test_spec_removes_annotations_before_the_crop(tmp_path) -> None:
    from breastscreen.specs import USSpec

    r, _ = _phantom(7001, "malignant", True, True)
    legacy, new = USSpec(), USSpec(remove_annotations=True, crop="safe")
    a, b = legacy.prepare(r.pixels), new.prepare(r.pixels)
    assert "annotations_removed" not in a.record and "crop_mode" not in a.record
    assert b.record["annotations_removed"] is True and b.record["crop_mode"] == "safe"
    assert b.record["annotation_marks"] > 0 and a.pixels.shape == b.pixels.shape
    assert not np.array_equal(a.pixels, b.pixels)


def test_prepared_image_cache_is_reused_only_for_the_same_preparation(tmp_path) -> None:
    from breastscreen.data.types import ImageRef
    from breastscreen.specs import USSpec
    from breastscreen.training.bag_dataset import ImageCache, build_cache

    r, _ = _phantom(7003, "benign", True, True)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), r.pixels)
    legacy, new = USSpec(prepare_size=64), USSpec(prepare_size=64, remove_annotations=True, crop="safe")
    assert legacy.preparation_key() == "" and '"crop": "safe"' in new.preparation_key()
    old, _ = build_cache([ImageRef(str(path))], legacy)
    old.save(tmp_path / "c.npz")
    loaded = ImageCache.load(tmp_path / "c.npz")
    assert loaded.preparation == ""
    same, _ = build_cache([ImageRef(str(path))], legacy, existing=loaded)
    assert same is loaded  # same preparation: extended in place
    fresh, _ = build_cache([ImageRef(str(path))], new, existing=loaded)
    assert fresh is not loaded and fresh.preparation == new.preparation_key()
    assert not np.array_equal(fresh.entries[str(path)].pixels, loaded.entries[str(path)].pixels)


def test_new_us_models_remove_annotations_and_use_the_safe_crop() -> None:
    from breastscreen.specs import USSpec
    from breastscreen.training.recipes.us import USOptions

    opts = USOptions()
    assert opts.remove_annotations is True and opts.crop == "safe"
    assert USSpec().remove_annotations is False and USSpec().crop == "v1"  # every existing checkpoint
    with pytest.raises(ValidationError):
        USSpec(crop="v3")
