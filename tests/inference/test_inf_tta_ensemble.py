"""TTA inputs and ensemble manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from breastscreen.errors import CheckpointError
from breastscreen.inference.ensemble import average, expand_model_refs, read_ensemble
from breastscreen.errors import BreastscreenError
from breastscreen.specs import ImageSpec, MultiViewSpec, PreparedImage, derive_seed
from breastscreen.preprocess.mammo import extract_window, standardize


def test_first_copy_is_unaugmented_and_copies_are_deterministic() -> None:
    scale = 0.05
    rng = np.random.default_rng(0)
    image = rng.random((150, 120)).astype(np.float32)
    maps = rng.random((2, 150, 120)).astype(np.float32)
    channels = ("image", "benign", "malignant")
    cc = MultiViewSpec(scale=scale, channels=channels).window_shape("L-CC")
    mv = MultiViewSpec(kind="mvdcn", task="birads", window="mvdcn_window", scale=scale, channels=channels)
    record = {"scale": scale, "window": [0, 5, cc[1], 5 + cc[0]],
              "mvdcn_window": [0, 2, mv.window_shape("L-CC")[1], 2 + mv.window_shape("L-CC")[0]]}
    prepared = PreparedImage(image, record)
    specs = [MultiViewSpec(scale=scale, channels=channels), mv,
             ImageSpec(scale=scale, channels=channels, input="window", kind="saliency")]
    for spec in specs:
        box = record[getattr(spec, "window", "window")]
        if isinstance(spec, ImageSpec):
            x = spec.image_inputs(prepared, "L-CC", maps, n=3)
            y = spec.image_inputs(prepared, "L-CC", maps, n=3)
            np.testing.assert_allclose(x[1], x[0][..., ::-1], atol=1e-5)  # copy 1 = horizontal flip
            np.testing.assert_allclose(x[2], x[0][..., ::-1, :], atol=1e-5)  # copy 2 = vertical flip
        else:
            x = spec.view_inputs(prepared, "L-CC", maps, rng=np.random.default_rng(7), n=3)
            y = spec.view_inputs(prepared, "L-CC", maps, rng=np.random.default_rng(7), n=3)
            assert not np.array_equal(x[1], x[0])
        assert x.shape == (3, 3, box[3] - box[1], box[2] - box[0])
        np.testing.assert_allclose(x[0, 0], standardize(extract_window(image, box)), atol=1e-5)
        np.testing.assert_allclose(x[0, 1:], extract_window(maps, box), atol=1e-6)
        assert np.array_equal(x, y)
    assert derive_seed(1, "E1", "L-CC", 0) != derive_seed(1, "E1", "R-CC", 0)
    with pytest.raises(BreastscreenError, match="tta"):
        specs[0].exam_rows("E1", {"L-CC": [prepared]}, n_tta=0)


def test_ensemble_manifest(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"x")
    ens = tmp_path / "e.json"
    ens.write_text(json.dumps({"members": [{"path": "a.safetensors", "val_auc": 0.8}, {"path": "bundled-name"}]}))
    refs = expand_model_refs([str(ens), "other.pt"])
    assert [r.ref for r in refs] == [str((tmp_path / "a.safetensors").resolve()), "bundled-name", "other.pt"]
    assert refs[0].info == {"val_auc": 0.8}
    ens.write_text(json.dumps({"members": []}))
    with pytest.raises(CheckpointError, match="non-empty"):
        read_ensemble(ens)
    ens.write_text(json.dumps({"members": [{"file": "x"}]}))
    with pytest.raises(CheckpointError, match=r"members\[0\]"):
        read_ensemble(ens)
    assert average([np.array([0.2, 0.4]), np.array([0.4, 0.8])]).tolist() == pytest.approx([0.3, 0.6])
    with pytest.raises(ValueError):
        average([np.zeros(2), np.zeros(3)])


def test_whole_image_input_is_the_resized_image_and_flips_are_exact() -> None:
    from breastscreen.specs.wholeimage import resize_image

    image = np.random.default_rng(1).random((150, 120)).astype(np.float32)
    spec = ImageSpec(image_size=(48, 32))
    x = spec.image_inputs(PreparedImage(image, {"scale": 1.0}), "L-CC", None, n=4)
    assert x.shape == (4, 1, 48, 32)
    np.testing.assert_allclose(x[0, 0], standardize(resize_image(image, (48, 32))), atol=1e-6)
    np.testing.assert_allclose(x[3], x[0][..., ::-1, ::-1], atol=1e-5)
    with pytest.raises(BreastscreenError, match="exact flips"):
        spec.image_inputs(PreparedImage(image, {}), "L-CC", None, n=5)
    aug = spec.image_inputs(PreparedImage(image, {}), "L-CC", None, rng=np.random.default_rng(0))
    assert aug.shape == (1, 1, 48, 32) and not np.allclose(aug[0], x[0])
    assert spec.breast_probs([np.array([np.nan, 0.2]), np.array([np.nan, 0.6])])[1] == pytest.approx(0.4)
    assert ImageSpec(aggregation="max").breast_probs([np.array([np.nan, 0.2]), np.array([np.nan, 0.6])])[1] == 0.6
