"""Bags of ultrasound images: cache, exclusion rules, padding/collation through the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breastscreen.data.types import BreastLabel, Exam, ImageRef, Modality
from breastscreen.errors import BreastscreenError
from breastscreen.data.bags import Breast, birads_score, breasts_from_exams
from breastscreen.evaluation.localisation import mask_in_prepared_geometry
from breastscreen.specs import USSpec, prepare_bag
from breastscreen.training.bag_dataset import BagDataset, ImageCache, build_cache, collate_bags


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


SPEC32 = USSpec(input_size=32, prepare_size=32)


def test_cache_excludes_empty_images_bags_drop_duplicates_and_cache_roundtrips(us_files, tmp_path):
    paths, dup, empty = us_files
    refs = [ImageRef(p) for p in [*paths, dup, empty]]
    cache, report = build_cache(refs, SPEC32)
    assert len(cache) == 5  # the duplicate is a valid image; bags drop it (below)
    assert report.excluded[empty].startswith("mostly-empty")
    assert report.as_dict()["by_reason"] == {"mostly-empty": 1}
    ds = BagDataset([Breast("b", "e", "L-US", refs, BreastLabel(0, 1))], cache, SPEC32)
    assert ds.image_ids[0] == paths  # duplicate and empty image left out, as the Predictor does
    kept, dropped = prepare_bag(SPEC32, refs)
    assert [k.source for k in kept] == paths and {d[0] for d in dropped} == {dup, empty}
    assert np.array_equal(ds[0]["images"].numpy(), SPEC32.bag_input(kept))
    cache.save(tmp_path / "c.npz")
    again = ImageCache.load(tmp_path / "c.npz")
    assert again.size == 32 and set(again.entries) == set(cache.entries)
    for k in cache.entries:
        assert np.array_equal(again.entries[k].pixels, cache.entries[k].pixels)
        assert again.entries[k].record["crop_box"] == cache.entries[k].record["crop_box"]


def test_crop_through_pipeline_removes_burned_in_text_and_keeps_field_of_view(us_files):
    paths, _, _ = us_files
    cache, _ = build_cache([ImageRef(paths[0])], SPEC32)
    entry = cache.get(ImageRef(paths[0]))
    x0, y0, x1, y1 = entry.record["crop_box"]
    # field of view is rows 20..115, cols 20..149: fully inside the box; text and mark outside it
    assert x0 <= 20 and y0 <= 20 and x1 >= 150 and y1 >= 116
    assert y0 >= 10 and x0 >= 8
    # the text is gone from the cached image: its top rows are field-of-view speckle
    assert entry.pixels[0].max() < 255
    # a mask covering the field-of-view corner maps into the prepared geometry without loss
    mask = np.zeros((120, 160), np.uint8)
    mask[20:40, 20:50] = 1
    mapped = mask_in_prepared_geometry(mask, entry.record, 32)
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


def test_bags_of_1_to_20_images_in_one_padded_batch_with_zero_attention_on_padding(tmp_path):
    from breastscreen.models.registry import create_model

    rng = np.random.default_rng(1)
    refs = [ImageRef(_write(tmp_path / f"img{i}.png", _us_image(rng))) for i in range(20)]
    cache, _ = build_cache(refs, SPEC32)
    breasts = [Breast(f"b{k}", f"e{k}", "L-US", refs[:k], BreastLabel(0, k % 2)) for k in (1, 2, 7, 20)]
    ds = BagDataset(breasts, cache, SPEC32, train=False)
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
    spec = USSpec(input_size=40, prepare_size=48)
    cache, _ = build_cache([ImageRef(p) for p in paths], spec)
    b = [Breast("b", "e", "L-US", [ImageRef(p) for p in paths], BreastLabel(0, 1))]
    ds = BagDataset(b, cache, spec, train=True, seed=5, max_images=3)
    first = ds[0]["images"]
    assert first.shape == (3, 1, 40, 40)
    assert torch.equal(first, ds[0]["images"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["images"])
    evalds = BagDataset(b, cache, spec, train=False)
    x = evalds[0]["images"]
    assert x.shape == (4, 1, 40, 40)
    assert abs(float(x[0].mean())) < 1e-4 and abs(float(x[0].std()) - 1) < 1e-2


def test_augmentation_strength_one_is_the_paper_and_zero_keeps_geometry():
    from breastscreen.preprocess.ultrasound import USAugmentConfig, apply_us_augment, draw_us_params, normalize
    from breastscreen.specs import PreparedImage

    img = np.random.default_rng(0).integers(0, 255, size=(64, 64)).astype(np.float32)
    full = USSpec(input_size=48, augment_strength=1.0).image_input(PreparedImage(img, {}), np.random.default_rng(7))
    paper = USAugmentConfig(size=(48, 48))
    expected = normalize(apply_us_augment(img, draw_us_params(np.random.default_rng(7), paper), paper.size)[0])
    assert np.array_equal(full, expected)
    # strength 0: no rotation/shear/scaling, so a horizontally symmetric image stays symmetric
    sym = np.tile(np.concatenate([np.arange(32), np.arange(32)[::-1]]).astype(np.float32) * 4, (64, 1))
    out = USSpec(input_size=64, augment_strength=0.0).image_input(PreparedImage(sym, {}), np.random.default_rng(3))
    assert np.allclose(out[20:44].std(axis=0), 0, atol=1e-3)  # columns constant over rows: no rotation
    with pytest.raises(ValueError, match="augment_strength"):
        USSpec(augment_strength=1.5)
