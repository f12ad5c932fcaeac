"""`breastscreen serve`: help text and refusal of unusable settings before anything starts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from breastscreen.cli import app, run


def test_serve_help_lists_the_options() -> None:
    out = CliRunner().invoke(app, ["serve", "--help"])
    assert out.exit_code == 0
    for option in ("--model", "--host", "--port", "--workers", "--data-dir", "--patch-model", "--max-upload-mb",
                   "--max-files", "--max-pixels", "--max-queued", "127.0.0.1", "not for clinical use"):
        assert option in out.stdout, option


def test_serve_refuses_unknown_models_and_bad_settings_at_once(tmp_path: Path, capsys) -> None:
    assert run(["serve", "--model", "demo-breast-imag", "--data-dir", str(tmp_path)]) == 2
    assert "did you mean 'demo-breast-image'" in capsys.readouterr().err
    assert run(["serve", "--model", "demo-breast-image", "--tta", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--tta" in capsys.readouterr().err
    assert run(["serve", "--model", "demo-breast-image", "--workers", "0", "--data-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "breastscreen-serve.sqlite").exists()
