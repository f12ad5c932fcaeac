"""TTA inputs and ensemble manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from breastscreen.errors import CheckpointError
from breastscreen.inference.ensemble import average, expand_model_refs, read_ensemble
from breastscreen.inference.tta import derive_seed, view_inputs
from breastscreen.preprocess.mammo import extract_window, standardize


def test_first_copy_is_unaugmented_and_copies_are_deterministic() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((60, 40)).astype(np.float32)
    maps = rng.random((2, 60, 40)).astype(np.float32)
    box = (0, 5, 30, 55)
    for family in ("nyu", "mvdcn", "flips"):
        x = view_inputs(family, "L-CC", image, maps, box, 3, seed=7, scale=0.05)
        assert x.shape == (3, 3, 50, 30)
        np.testing.assert_allclose(x[0, 0], standardize(extract_window(image, box)), atol=1e-5)
        np.testing.assert_allclose(x[0, 1:], extract_window(maps, box), atol=1e-6)
        y = view_inputs(family, "L-CC", image, maps, box, 3, seed=7, scale=0.05)
        assert np.array_equal(x, y)
        assert not np.array_equal(x[1], x[0]) or family == "flips"
    assert derive_seed(1, "E1", "L-CC", 0) != derive_seed(1, "E1", "R-CC", 0)
    with pytest.raises(ValueError):
        view_inputs("nyu", "L-CC", image, None, box, 0, 0, 0.05)


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
