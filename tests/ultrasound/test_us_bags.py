"""Bags of ultrasound images: cache, exclusion rules, padding/collation through the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breastscreen.data.types import BreastLabel, Exam, ImageRef, Modality
from breastscreen.errors import BreastscreenError
from breastscreen.ultrasound.bags import (
    BagDataset,
    ImageCache,
    birads_score,
    breasts_from_exams,
    build_cache,
    collate_bags,
    map_to_cache_geometry,
)


def _us_image(rng: np.random.Generator, h: int = 120, w: int = 160, text: bool = False) -> np.ndarray:
    """A speckled rectangular field of view (rows 20..h-5, cols 20..w-11) on black, optionally with
    bright burned-in text and a device label outside it."""
    img = np.zeros((h, w), np.uint8)
    img[20 : h - 4, 20 : w - 10] = rng.integers(40, 200, size=(h - 24, w - 30))
    if text:
        img[3:10, 5:60] = 255  # annotation strip above the field of view
        img[60:66, 2:8] = 230  # device mark left of it
    return img


def _write(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture()
def us_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = [_write(tmp_path / f"img{i}.png", _us_image(rng, text=(i == 0))) for i in range(4)]
    dup = _write(tmp_path / "dup.png", np.array(Image.open(paths[1])))
    empty = np.zeros((120, 160), np.uint8)
    empty[:5, :5] = 100  # 99.5 % zeros
    empty_path = _write(tmp_path / "empty.png", empty)
    return paths, dup, empty_path


def _loader(image: ImageRef) -> np.ndarray:
    return np.array(Image.open(image.path))


def test_cache_excludes_duplicates_and_empty_images_and_roundtrips(us_files, tmp_path):
    paths, dup, empty = us_files
    refs = [ImageRef(p) for p in [*paths, dup, empty]]
    cache, report = build_cache(refs, size=32, loader=_loader)
    assert len(cache) == 4
    assert report.excluded[dup].startswith("duplicate")
    assert report.excluded[empty].startswith("mostly-empty")
    assert report.as_dict()["by_reason"] == {"duplicate": 1, "mostly-empty": 1}
    cache.save(tmp_path / "c.npz")
    again = ImageCache.load(tmp_path / "c.npz")
    assert again.size == 32 and set(again.entries) == set(cache.entries)
    for k in cache.entries:
        assert np.array_equal(again.entries[k].pixels, cache.entries[k].pixels)
        assert again.entries[k].crop_box == cache.entries[k].crop_box


def test_crop_through_pipeline_removes_burned_in_text_and_keeps_field_of_view(us_files):
    paths, _, _ = us_files
    cache, _ = build_cache([ImageRef(paths[0])], size=32, loader=_loader)
    entry = cache.get(ImageRef(paths[0]))
    x0, y0, x1, y1 = entry.crop_box
    # field of view is rows 20..115, cols 20..149: fully inside the box; text and mark outside it
    assert x0 <= 20 and y0 <= 20 and x1 >= 150 and y1 >= 116
    assert y0 >= 10 and x0 >= 8
    # the text is gone from the cached image: its top rows are field-of-view speckle
    assert entry.pixels[0].max() < 255
    # a mask covering the field-of-view corner maps into the cached geometry without loss
    mask = np.zeros((120, 160), np.uint8)
    mask[20:40, 20:50] = 1
    mapped = map_to_cache_geometry(mask, entry)
    assert mapped.shape == (32, 32) and mapped.any()


def _exam(eid, views, labels, birads=None, meta=None):
    return Exam(
        exam_id=eid,
        modality=Modality.US,
        meta=meta or {},
        views={v: [ImageRef(p, meta={"birads": b, "fold": 2}) for p, b in zip(ps, birads or [None] * len(ps))]
               for v, ps in views.items()},
        labels=labels,
    )


def test_breasts_from_exams_labels_and_birads(us_files):
    paths, _, _ = us_files
    exams = [
        _exam("e1", {"L-US": paths[:2], "R-US": paths[2:3]},
              {"L": BreastLabel(0, 1), "R": BreastLabel(1, 0)}, birads=["3", "4B"]),
        _exam("e2", {"U-US": paths[3:]}, {"U": BreastLabel(0, 0)}),
    ]
    breasts = breasts_from_exams(exams, require_labels=True)
    assert [b.breast_id for b in breasts] == ["e1/L-US", "e1/R-US", "e2/U-US"]
    assert breasts[0].targets == (0, 1) and breasts[1].targets == (1, 0) and breasts[2].targets == (0, 0)
    assert breasts[0].meta["birads"] == pytest.approx(birads_score("4B")) and breasts[0].meta["fold"] == 2
    with pytest.raises(BreastscreenError, match="BI-RADS"):
        birads_score("7")


def test_bags_of_1_to_20_images_in_one_padded_batch_with_zero_attention_on_padding():
    from breastscreen.models.registry import create_model

    rng = np.random.default_rng(1)
    refs = [ImageRef(f"/virtual/img{i}.png") for i in range(20)]
    pixels = {r.path: _us_image(rng) for r in refs}
    cache, _ = build_cache(refs, size=32, loader=lambda r: pixels[r.path], cropper=None)
    from breastscreen.ultrasound.bags import Breast

    breasts = [Breast(f"b{k}", f"e{k}", "L-US", refs[:k], BreastLabel(0, k % 2)) for k in (1, 2, 7, 20)]
    ds = BagDataset(breasts, cache, input_size=32, channels=1, train=True, seed=3, augment=None)
    batch = collate_bags([ds[i] for i in range(len(ds))])
    assert batch["images"].shape == (4, 20, 1, 32, 32)
    assert batch["mask"].sum(dim=1).tolist() == [1, 2, 7, 20]
    torch.manual_seed(0)
    model = create_model("us-mil-tiny").eval()
    with torch.no_grad():
        out = model(batch["images"], batch["mask"])
        att = out["attention"]
        assert torch.all(att[~batch["mask"]] == 0)
        assert torch.allclose(att.sum(dim=1), torch.ones(4, 2))
        # a bag alone gives the same result as inside the padded batch (padding has no effect)
        alone = model(batch["images"][1:2, :2], batch["mask"][1:2, :2])
    assert torch.allclose(alone["probs"], out["probs"][1:2], atol=1e-5)


def test_augmentation_is_seeded_per_epoch_and_breast(us_files):
    paths, _, _ = us_files
    cache, _ = build_cache([ImageRef(p) for p in paths], size=48, loader=_loader)
    from breastscreen.ultrasound.bags import Breast

    b = [Breast("b", "e", "L-US", [ImageRef(p) for p in paths], BreastLabel(0, 1))]
    ds = BagDataset(b, cache, input_size=40, train=True, seed=5, max_images=3)
    first = ds[0]["images"]
    assert first.shape == (3, 1, 40, 40)
    assert torch.equal(first, ds[0]["images"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["images"])
    evalds = BagDataset(b, cache, input_size=40, train=False)
    x = evalds[0]["images"]
    assert x.shape == (4, 1, 40, 40)
    assert abs(float(x[0].mean())) < 1e-4 and abs(float(x[0].std()) - 1) < 1e-2


def test_scaled_augmentation_equals_the_paper_at_strength_one_and_is_milder_below():
    from breastscreen.ultrasound.bags import ScaledAugment, default_augment

    img = np.random.default_rng(0).integers(0, 255, size=(64, 64)).astype(np.uint8)
    full = ScaledAugment(1.0)(img, 48, np.random.default_rng(7))
    assert np.array_equal(full, default_augment(img, 48, np.random.default_rng(7)))
    # strength 0: no rotation/shear/scaling, so a horizontally symmetric image stays symmetric
    sym = np.tile(np.concatenate([np.arange(32), np.arange(32)[::-1]]).astype(np.uint8) * 4, (64, 1))
    out = ScaledAugment(0.0)(sym, 64, np.random.default_rng(3))
    rows_equal = np.allclose(out[20:44].std(axis=0), 0, atol=1e-3)  # columns constant over rows: no rotation
    assert rows_equal
    with pytest.raises(ValueError, match="strength"):
        ScaledAugment(1.5)
