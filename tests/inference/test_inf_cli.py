"""`breastscreen heatmaps` and `breastscreen predict` through the command line."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.models import create_model, save_checkpoint


@pytest.mark.slow
def test_heatmaps_cli_resume_and_predict_exit_codes(tmp_path: Path) -> None:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    generate_mammo_cohort(tmp_path / "raw", 2, seed=3, scale=0.03)
    torch.manual_seed(0)
    patch = save_checkpoint(create_model("densenet-tiny"), tmp_path / "patch.safetensors", {"scale": 0.03})
    runner = CliRunner()
    manifest = str(tmp_path / "raw" / "manifest.jsonl")
    res = runner.invoke(app, ["heatmaps", manifest, "--model", str(patch), "--out", str(tmp_path / "hm"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "8 computed, 0 reused, 0 failed" in res.output
    res = runner.invoke(app, ["heatmaps", manifest, "--model", str(patch), "--out", str(tmp_path / "hm"), "--resume"])
    assert res.exit_code == 0 and "0 computed, 8 reused" in res.output, res.output
    # another engine is not mixed into the same folder on --resume; a bad choice is one line, exit 2
    res = runner.invoke(app, ["heatmaps", manifest, "--model", str(patch), "--out", str(tmp_path / "hm"), "--resume",
                              "--mode", "fullconv"])
    assert res.exit_code == 0 and "8 computed, 0 reused" in res.output, res.output
    if importlib.util.find_spec("onnxruntime") is not None:
        res = runner.invoke(app, ["heatmaps", manifest, "--model", str(patch), "--out", str(tmp_path / "hm"),
                                  "--resume", "--backend", "onnxruntime", "--precision", "int8"])
        assert res.exit_code == 0 and "8 computed, 0 reused" in res.output, res.output
        from breastscreen.data.heatmaps import read_heatmap_file

        _, meta = read_heatmap_file(sorted((tmp_path / "hm").glob("*.npz"))[0])
        assert (meta["backend"], meta["precision"]) == ("onnxruntime", "int8"), meta
    for bad_opts, words in ((["--backend", "tensorrt"], "--backend must be one of"),
                            (["--backend", "onnxruntime", "--precision", "bf16"], "runs fp32 or int8"),
                            (["--precision", "int8"], "int8 runs on --backend openvino or onnxruntime")):
        res = runner.invoke(app, ["heatmaps", manifest, "--model", str(patch), "--out", str(tmp_path / "x"), *bad_opts])
        # (main() turns BreastscreenError into its one line and exit status 2)
        assert type(res.exception).__name__ == "BreastscreenError" and words in str(res.exception), res.output
        assert not (tmp_path / "x").exists()  # refused before anything is written

    model = save_checkpoint(create_model("nyu-viewwise-heatmaps", num_filters=4), tmp_path / "m.safetensors",
                            {"scale": 0.03})
    bad = sorted((tmp_path / "raw").glob("*_R-MLO.png"))[0]
    bad.write_bytes(b"garbage")
    res = runner.invoke(app, ["predict", manifest, "--model", str(model), "--heatmaps", str(tmp_path / "hm"),
                              "--out", str(tmp_path / "out"), "--device", "cpu", "--no-pictures"])
    assert res.exit_code == 1, res.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert len(rows) == 1 and len(errors) == 1 and errors[0]["exam_id"] == bad.name.split("_")[0]


@pytest.mark.parametrize("command, existing", [("predict", "predictions.csv"), ("heatmaps", "heatmaps.jsonl"),
                                               ("heatmaps", "E1_L-CC_0.npz")])
def test_existing_outputs_exit_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture, command: str, existing: str) -> None:
    from breastscreen.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text("earlier run")
    monkeypatch.setattr("sys.argv", ["breastscreen", command, str(tmp_path / "m.jsonl"), "--model", "demo-patch",
                                     "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert str(out) in err and "--overwrite" in err, err
    assert (out / existing).read_text() == "earlier run"
