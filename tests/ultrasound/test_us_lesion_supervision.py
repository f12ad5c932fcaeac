"""Lesion-mask supervision of the ultrasound saliency maps (recipe.lesion_weight): loss, masks, training."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from breastscreen.data.bags import breasts_from_exams
from breastscreen.data.manifest import write_manifest
from breastscreen.errors import BreastscreenError
from breastscreen.specs import PreparedImage, USSpec
from breastscreen.training.bag_dataset import BagDataset, build_cache, collate_bags
from breastscreen.training.losses import us_lesion_loss


def _lesions(cells: list[tuple[int, int]], cls: int, size: int = 8) -> torch.Tensor:
    """[1, 1, 2, size*4, size*4]: lesion of class ``cls`` covering the given 8x8 map cells exactly."""
    m = torch.zeros(1, 1, 2, size * 4, size * 4)
    for r, c in cells:
        m[0, 0, cls, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 1
    return m


def test_lesion_loss_is_class_balanced_bce_with_hand_values() -> None:
    known = torch.ones(1, 1, dtype=torch.bool)
    lesion = _lesions([(2, 3), (2, 4)], cls=1)  # malignant lesion on 2 of 64 cells
    # uninformative maps: ln 2 whatever the target
    assert us_lesion_loss(torch.full((1, 1, 2, 8, 8), 0.5), lesion, known).item() == pytest.approx(math.log(2), rel=1e-5)
    # malignant map 0.9 on the lesion, 0.1 elsewhere; benign map 0.2 everywhere (no benign lesion)
    sal = torch.full((1, 1, 2, 8, 8), 0.1)
    sal[0, 0, 1, 2, 3:5] = 0.9
    sal[0, 0, 0] = 0.2
    expected = (-math.log(0.9) + -math.log(1 - 0.2)) / 2  # malignant: (pos + neg)/2 = -log .9; benign: neg only
    assert us_lesion_loss(sal, lesion, known).item() == pytest.approx(expected, rel=1e-5)
    # partial coverage is the target: a cell half covered has its optimum at 0.5
    half = torch.zeros(1, 1, 2, 32, 32)
    half[0, 0, 1, 0:2, 0:4] = 1
    s = torch.full((1, 1, 2, 8, 8), 0.01, requires_grad=True)
    us_lesion_loss(s, half, known).backward()
    assert s.grad[0, 0, 1, 0, 0] < 0 and s.grad[0, 0, 1, 0, 1] > 0  # raise the covered cell, lower the others


def test_lesion_loss_ignores_unknown_images_and_padding() -> None:
    sal = torch.rand(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    lesions = torch.zeros(2, 3, 2, 32, 32)
    lesions[0, 0] = _lesions([(1, 1)], cls=0)[0, 0]
    known = torch.tensor([[True, False, False], [False, False, False]])
    only = us_lesion_loss(sal[:1, :1], lesions[:1, :1], known[:1, :1])
    assert us_lesion_loss(sal, lesions, known).item() == pytest.approx(only.item(), rel=1e-6)
    none = us_lesion_loss(sal.requires_grad_(), lesions, torch.zeros(2, 3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_lesion_masks_follow_the_image_augmentation() -> None:
    spec = USSpec(input_size=64, prepare_size=72, augment_strength=1.0)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 40, (72, 72)).astype(np.float32)
    pixels[20:44, 30:50] = 220.0  # a bright "lesion"
    lesion = np.zeros((1, 72, 72), np.uint8)
    lesion[0, 20:44, 30:50] = 1
    prepared = PreparedImage(pixels, {"crop_box": [0, 0, 72, 72], "original_shape": [72, 72]})
    for seed in range(5):
        image, moved = spec.image_input_and_lesions(prepared, lesion, np.random.default_rng(seed))
        # the same draw as image_input: masks never change the images
        np.testing.assert_array_equal(image, spec.image_input(prepared, np.random.default_rng(seed)))
        inside = moved[0] > 0
        assert inside.sum() > 50
        # nearest-neighbour mask and bilinear image: the mask's interior is bright, the outside dark
        assert np.median(image[inside]) > 1.0 and np.median(image[~inside]) < 0.0
    image, moved = spec.image_input_and_lesions(prepared, lesion, None)
    assert moved[0].sum() == pytest.approx(24 * 20 * (64 / 72) ** 2, rel=0.1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    root = tmp_path_factory.mktemp("us_lesion")
    exams = generate_us_cohort(root / "c", 8, seed=3, max_images=2, prevalence=0.5, benign_prevalence=0.5)
    return root, exams


def test_bag_dataset_serves_class_masks_with_unchanged_images(cohort) -> None:
    _, exams = cohort
    spec = USSpec(input_size=64, prepare_size=72, remove_annotations=True, crop="safe")
    breasts = breasts_from_exams(exams, require_labels=True)
    cache, _ = build_cache([im for b in breasts for im in b.images], spec)
    plain = BagDataset(breasts, cache, spec, train=True, seed=5)
    sup = BagDataset(breasts, cache, spec, train=True, seed=5, lesion_masks=True)
    n_known = {"benign": 0, "malignant": 0}
    for i in range(len(sup)):
        a, b = plain[i], sup[i]
        torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=0)
        benign, malignant = sup.breasts[i].targets
        refs = {ref.path: ref for ref in sup.breasts[i].images}
        assert len(b["image_ids"]) == b["lesions"].shape[0]
        for k, image_id in enumerate(b["image_ids"]):  # by id: dedupe may have dropped an image of the bag
            has_mask = bool(refs[image_id].masks)
            assert bool(b["lesion_known"][k]) == has_mask
            if has_mask:
                area = b["lesions"][k].flatten(1).sum(1)
                # the mask lands in the channel of the breast's pathology, the other stays empty
                assert (area[1] > 0) == bool(malignant) and (area[0] > 0) == (bool(benign) and not malignant)
                n_known["malignant" if malignant else "benign"] += 1
            else:
                assert int(b["lesions"][k].sum()) == 0
    assert n_known["benign"] > 0 and n_known["malignant"] > 0
    batch = collate_bags([sup[i] for i in range(3)])
    assert batch["lesions"].shape[:3] == (*batch["mask"].shape, 2)
    assert not batch["lesion_known"][~batch["mask"]].any()


def test_lesion_mask_of_another_size_is_a_one_line_error(cohort, tmp_path) -> None:
    from PIL import Image

    _, exams = cohort
    spec = USSpec(input_size=64, prepare_size=72)
    breasts = breasts_from_exams(exams, require_labels=True)
    target = next(b for b in breasts if any(im.masks for im in b.images))
    bad = tmp_path / "bad_mask.png"
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(bad)
    target = copy.deepcopy(target)
    im = next(im for im in target.images if im.masks)
    im.masks[0].path = str(bad)
    cache, _ = build_cache(target.images, spec)
    with pytest.raises(BreastscreenError, match="bad_mask.png"):
        BagDataset([target], cache, spec, lesion_masks=True)


def test_train_us_with_lesion_weight_records_it_and_needs_masks(cohort, tmp_path) -> None:
    from tests.ultrasound.test_us_training import TINY, _run

    root, exams = cohort
    write_manifest(exams[:5], tmp_path / "train.jsonl")
    write_manifest(exams[5:], tmp_path / "val.jsonl")
    args = ["train", "us", "--manifest", str(tmp_path / "train.jsonl"), "--val-manifest", str(tmp_path / "val.jsonl"),
            "epochs=1", *TINY]
    r = _run([*args, "--out", str(tmp_path / "run"), "recipe.lesion_weight=1.0"])
    assert r.exit_code == 0, r.output
    from breastscreen.models.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "run" / "best.safetensors")).metadata["recipe"]["lesion_weight"] == 1.0
    stripped = copy.deepcopy(exams[:5])
    for e in stripped:
        for im in (im for ims in e.views.values() for im in ims):
            im.masks.clear()
    write_manifest(stripped, tmp_path / "train_nomask.jsonl")
    args[3] = str(tmp_path / "train_nomask.jsonl")
    with pytest.raises(BreastscreenError, match="train_nomask.jsonl: recipe.lesion_weight > 0 needs lesion masks"):
        _run([*args, "--out", str(tmp_path / "run2"), "recipe.lesion_weight=1.0"])


def test_preprocessed_manifest_gives_the_same_lesion_maps(cohort, tmp_path) -> None:
    """`breastscreen preprocess` stores masks cut to the crop; supervision must see the same lesion cells."""
    from breastscreen.preprocess.pipeline import preprocess_manifest

    _, exams = cohort
    pre, _ = preprocess_manifest(exams, tmp_path / "pre")
    spec = USSpec(input_size=64, prepare_size=72, remove_annotations=True, crop="safe")
    raw_b, pre_b = breasts_from_exams(exams, require_labels=True), breasts_from_exams(pre, require_labels=True)
    assert [b.breast_id for b in raw_b] == [b.breast_id for b in pre_b]
    masked = [im for b in pre_b for im in b.images if im.masks]
    assert masked and all(spec._matches(im.preprocessing) for im in masked)  # the stored crop is reused
    raw = BagDataset(raw_b, build_cache([im for b in raw_b for im in b.images], spec)[0], spec, lesion_masks=True)
    done = BagDataset(pre_b, build_cache([im for b in pre_b for im in b.images], spec)[0], spec, lesion_masks=True)
    n = 0
    for a, b in zip(raw.lesions, done.lesions):
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
                n += int(x.any())
    assert n == len(masked)


def test_the_lesion_term_is_added_to_the_bag_loss(cohort, tmp_path) -> None:
    from torch.utils.data import DataLoader

    from breastscreen.training.loop import DistInfo
    from breastscreen.training.recipes import get_recipe
    from breastscreen.training.runner import build_config
    from tests.ultrasound.test_us_training import TINY

    _, exams = cohort
    write_manifest(exams[:6], tmp_path / "train.jsonl")
    write_manifest(exams[6:], tmp_path / "val.jsonl")
    losses, outs = {}, {}
    for w in (0.0, 2.0):
        cfg = build_config("us", str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), str(tmp_path / f"r{w}"),
                           overrides=[*TINY, "device=cpu", f"recipe.lesion_weight={w}", "recipe.augment=false"])
        torch.manual_seed(0)
        task = get_recipe("us").build(cfg, DistInfo(), None)
        items = [BagDataset(task.train_set.breasts, task.train_set.cache, task.train_set.spec, train=False,
                            lesion_masks=True)[i] for i in range(4)]
        batch = collate_bags(items)
        model = task.model.eval()
        with torch.no_grad():
            losses[w] = task.compute_loss(model, batch, torch.device("cpu"))
            outs[w] = model(batch["images"], batch["mask"])["saliency"]
    torch.testing.assert_close(outs[0.0], outs[2.0])  # same weights (seed), same inputs
    extra = us_lesion_loss(outs[2.0], batch["lesions"], batch["lesion_known"])
    assert bool(batch["lesion_known"].any()) and float(extra) > 0
    torch.testing.assert_close(losses[2.0] - losses[0.0], 2.0 * extra)
