"""Heatmap files: atomic writes, --resume, kill-and-resume identity, checkpoint hash changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from breastscreen.data.types import Exam, ImageRef
from breastscreen.data.heatmaps import read_heatmap_file
from breastscreen.inference.heatmap_runner import generate_heatmaps
from breastscreen.labels import PATCH_CLASSES

SCALE = 0.0625  # patch 16, stride 4


class TinyPatchNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 2 * 2, len(PATCH_CLASSES))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        return {"logits": self.head(y)}


class Counting(nn.Module):
    """Wraps a model; counts forward calls and optionally raises after ``fail_after`` calls."""

    def __init__(self, inner: nn.Module, fail_after: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.fail_after = fail_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated kill")
        return self.inner(x)


def _exams(root: Path, n_exams: int = 3) -> list[Exam]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    exams = []
    for e in range(n_exams):
        views = {}
        for v in ("L-CC", "R-CC", "L-MLO", "R-MLO"):
            h, w = int(rng.integers(30, 60)), int(rng.integers(20, 45))
            img = np.zeros((h, w), np.uint16)
            img[:, : w // 2] = rng.integers(2000, 60000, size=(h, w // 2))
            mask = (img > 0).astype(np.uint8) * 255
            path, mpath = root / f"E{e}_{v}.png", root / f"E{e}_{v}_breastmask.png"
            Image.fromarray(img).save(path)
            Image.fromarray(mask).save(mpath)
            record = {"scale": SCALE, "crop_box": [0, 0, w, h], "flipped": False, "original_shape": [h, w],
                      "output_shape": [h, w], "breast_mask_path": str(mpath)}
            views[v] = [ImageRef(path=str(path), preprocessing=record)]
        exams.append(Exam(exam_id=f"E{e}", views=views))
    return exams


def _run(exams, out, model, **kw):
    return generate_heatmaps(exams, model, out, checkpoint_sha256=kw.pop("sha", "abc"), batch_size=kw.pop("bs", 50),
                             images_per_chunk=kw.pop("chunk", 3), **kw)


def _files(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p)["heatmaps"] for p in sorted(out.glob("*.npz"))}


def test_resume_recomputes_nothing(tmp_path: Path) -> None:
    exams = _exams(tmp_path / "img")
    model = Counting(TinyPatchNet())
    first = _run(exams, tmp_path / "hm", model)
    assert first.ok and len(first.computed) == 12 and model.calls > 0
    maps, meta = read_heatmap_file(tmp_path / "hm" / "E0_L-CC_0.npz")
    assert maps.shape[0] == 2 and 0 <= maps.min() and maps.max() <= 1
    assert meta["checkpoint_sha256"] == "abc" and meta["patch_size"] == 16 and meta["stride"] == 4
    assert sum(meta["row_strides"]) == maps.shape[1] - 16 and meta["skip_background"] is False
    assert meta["preprocessing"]["scale"] == SCALE
    again = Counting(TinyPatchNet())
    second = _run(exams, tmp_path / "hm", again, resume=True)
    assert again.calls == 0 and second.computed == [] and len(second.reused) == 12
    # index and manifest name every heatmap
    assert len((tmp_path / "hm" / "heatmaps.jsonl").read_text().splitlines()) == 12
    assert "heatmap_path" in (tmp_path / "hm" / "manifest.jsonl").read_text()


def test_changed_checkpoint_hash_recomputes(tmp_path: Path) -> None:
    exams = _exams(tmp_path / "img", 1)
    _run(exams, tmp_path / "hm", TinyPatchNet())
    model = Counting(TinyPatchNet(seed=1))
    run = _run(exams, tmp_path / "hm", model, sha="def", resume=True)
    assert len(run.computed) == 4 and model.calls > 0
    assert read_heatmap_file(tmp_path / "hm" / "E0_R-MLO_0.npz")[1]["checkpoint_sha256"] == "def"


@pytest.mark.parametrize("fail_after", [1, 3, 5])
def test_kill_then_resume_is_identical(tmp_path: Path, fail_after: int) -> None:
    exams = _exams(tmp_path / "img")
    _run(exams, tmp_path / "ref", TinyPatchNet())
    reference = _files(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated kill"):
        _run(exams, tmp_path / "hm", Counting(TinyPatchNet(), fail_after=fail_after))
    partial = _files(tmp_path / "hm")
    assert len(partial) < 12
    assert not [p for p in (tmp_path / "hm").iterdir() if p.name.startswith(".bstmp-")]  # no temp files
    _run(exams, tmp_path / "hm", TinyPatchNet(), resume=True)
    resumed = _files(tmp_path / "hm")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(resumed[name], reference[name]), name


def test_bad_image_is_reported_and_others_complete(tmp_path: Path) -> None:
    exams = _exams(tmp_path / "img", 2)
    Path(exams[0].views["R-CC"][0].path).write_bytes(b"not a png")
    run = _run(exams, tmp_path / "hm", TinyPatchNet(), skip_background=True)
    assert not run.ok and len(run.errors) == 1 and run.errors[0][:2] == ("E0", "R-CC")
    assert len(run.computed) == 7
    text = (tmp_path / "hm" / "errors.csv").read_text().splitlines()
    assert text[0] == "exam_id,view,path,reason" and text[1].startswith("E0,R-CC")
    meta = read_heatmap_file(tmp_path / "hm" / "E1_L-CC_0.npz")[1]
    assert meta["skip_background"] is True and meta["n_evaluated"] <= meta["n_windows"]


def test_existing_heatmaps_are_refused_unless_resume_or_overwrite(tmp_path: Path) -> None:
    from breastscreen.errors import BreastscreenError

    exams = _exams(tmp_path / "img", 1)
    _run(exams, tmp_path / "hm", TinyPatchNet())
    before = (tmp_path / "hm" / "E0_L-CC_0.npz").read_bytes()
    model = Counting(TinyPatchNet(seed=1))
    with pytest.raises(BreastscreenError, match=r"hm already holds heatmaps .*--resume.*--overwrite"):
        _run(exams, tmp_path / "hm", model, sha="other")
    assert model.calls == 0 and (tmp_path / "hm" / "E0_L-CC_0.npz").read_bytes() == before
    # A lone heatmap file (index lost) is protected too.
    (tmp_path / "hm" / "heatmaps.jsonl").unlink()
    with pytest.raises(BreastscreenError, match="E0_L-CC_0.npz"):
        _run(exams, tmp_path / "hm", model, sha="other")
    with pytest.raises(BreastscreenError, match="not both"):
        _run(exams, tmp_path / "hm", model, sha="other", resume=True, overwrite=True)
    run = _run(exams, tmp_path / "hm", model, sha="other", overwrite=True)
    assert len(run.computed) == 4 and read_heatmap_file(tmp_path / "hm" / "E0_L-CC_0.npz")[1]["checkpoint_sha256"] == "other"


def test_resume_recomputes_heatmaps_of_a_replaced_image(tmp_path: Path) -> None:
    exams = _exams(tmp_path / "img", 2)
    _run(exams, tmp_path / "hm", TinyPatchNet())
    image = Path(exams[0].views["L-CC"][0].path)
    meta = read_heatmap_file(tmp_path / "hm" / "E0_L-CC_0.npz")[1]
    assert meta["image_path"] == str(image) and meta["image_size"] == image.stat().st_size
    assert meta["image_mtime_ns"] == image.stat().st_mtime_ns
    # Same path, different pixels and shape (e.g. re-preprocessed from a replaced source).
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(1000, 60000, size=(40, 33)).astype(np.uint16)).save(image)
    Image.fromarray(np.full((40, 33), 255, np.uint8)).save(exams[0].views["L-CC"][0].preprocessing["breast_mask_path"])
    run = _run(exams, tmp_path / "hm", TinyPatchNet(), resume=True)
    assert run.computed == ["E0_L-CC_0.npz"] and len(run.reused) == 7
    maps, meta = read_heatmap_file(tmp_path / "hm" / "E0_L-CC_0.npz")
    assert maps.shape[1:] == (40, 33) and meta["image_mtime_ns"] == image.stat().st_mtime_ns
    # The same exam/view from another preprocessed image path is not reused either.
    moved = tmp_path / "img" / "copy_E1_R-CC.png"
    moved.write_bytes(Path(exams[1].views["R-CC"][0].path).read_bytes())
    exams[1].views["R-CC"][0].path = str(moved)
    run = _run(exams, tmp_path / "hm", TinyPatchNet(), resume=True)
    assert run.computed == ["E1_R-CC_0.npz"] and len(run.reused) == 7


def test_engine_recorded_and_resume_keeps_only_files_made_the_same_way(tmp_path: Path) -> None:
    from breastscreen.inference.engines import EngineOptions

    exams = _exams(tmp_path / "img", 1)
    exact = _run(exams, tmp_path / "exact", TinyPatchNet(), skip_background=True)
    fast = _run(exams, tmp_path / "hm", TinyPatchNet(), skip_background=True,
                engine=EngineOptions(channels_last=True))
    assert exact.ok and fast.ok
    for name, maps in _files(tmp_path / "exact").items():
        # the channels-last copy computes the same maps (files hold float16)
        assert np.abs(_files(tmp_path / "hm")[name].astype(np.float32) - maps.astype(np.float32)).max() <= 1e-3
    _, meta = read_heatmap_file(tmp_path / "hm" / "E0_L-CC_0.npz")
    assert (meta["mode"], meta["backend"], meta["precision"]) == ("exact", "torch", "fp32")
    # resuming with the same engine reuses everything; with another mode recomputes everything
    again = Counting(TinyPatchNet())
    same = _run(exams, tmp_path / "hm", again, resume=True, skip_background=True,
                engine=EngineOptions(channels_last=True))
    assert again.calls == 0 and len(same.reused) == 4


def test_fullconv_mode_needs_a_trunk_and_is_recorded(tmp_path: Path) -> None:
    from breastscreen.inference.engines import EngineOptions
    from breastscreen.models import create_model

    exams = _exams(tmp_path / "img", 1)
    with pytest.raises(ValueError, match="forward_features/head"):
        _run(exams, tmp_path / "bad", TinyPatchNet(), engine=EngineOptions(mode="fullconv"))
    torch.manual_seed(0)
    run = _run(exams, tmp_path / "fc", create_model("densenet-tiny").eval(), skip_background=True,
               engine=EngineOptions(mode="fullconv"))
    assert run.ok and len(run.computed) == 4
    maps, meta = read_heatmap_file(tmp_path / "fc" / "E0_L-CC_0.npz")
    assert meta["mode"] == "fullconv" and np.isfinite(maps).all() and maps.max() > 0
    redo = _run(exams, tmp_path / "fc", create_model("densenet-tiny").eval(), resume=True, skip_background=True)
    assert len(redo.computed) == 4 and redo.reused == []  # exact mode does not reuse preview files
