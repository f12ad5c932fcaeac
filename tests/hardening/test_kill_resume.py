"""SIGKILL in the middle of `preprocess`, `heatmaps`, `predict` and `train`, then resume: the outputs equal an
uninterrupted run (bytes; heatmap arrays exactly) and no temporary file is left behind.

One kill per command, after about half of its work units; benchmarks/kill_resume.py runs the
same scenarios with many random kill points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark




@pytest.fixture(scope="module")
def kr():  # noqa: ANN201 - the benchmark module
    return load_benchmark("kill_resume")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kill")


def _kill_and_resume(kr, work: Path, name: str) -> None:  # noqa: ANN001 - module object
    scenario = kr.scenarios(work)[name]
    ref, _ = kr.reference(work, scenario)
    out = work / f"out-{name}"
    target = max(1, scenario.total_units // 2)
    info = kr.kill_at(scenario.command(work, out), out, scenario.units, target, None)
    assert info["killed"] and info["exit"] == -9, info
    assert scenario.units(out) < scenario.total_units or name == "train", "killed after the work was done"
    res = kr.run_cli(scenario.resume(work, out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert kr.leftover_temp_files(out) == []
    assert kr.compare(ref, out, scenario) == []


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["preprocess", "heatmaps"])
def test_kill_and_resume(kr, work: Path, name: str) -> None:  # noqa: ANN001
    _kill_and_resume(kr, work, name)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["predict", "train"])
def test_kill_and_resume_slow(kr, work: Path, name: str) -> None:  # noqa: ANN001
    _kill_and_resume(kr, work, name)


def test_compare_notices_a_changed_file(kr, tmp_path: Path) -> None:  # noqa: ANN001
    """The comparison itself can fail: a changed byte, a missing file and a temp file are all reported."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "images").mkdir(parents=True)
        (d / "x.csv").write_text("exam_id\n1\n")
    (b / "x.csv").write_text("exam_id\n2\n")
    (a / "only.png").write_bytes(b"1")
    (b / "images" / ".bstmp-1-x.png").write_bytes(b"")
    scenario = kr.Scenario("t", lambda w: None, lambda w, o: [], lambda w, o: [], lambda o: 0, 1)
    diffs = kr.compare(a, b, scenario)
    assert "differs: x.csv" in diffs and "only in reference: only.png" in diffs
    assert kr.leftover_temp_files(b) == ["images/.bstmp-1-x.png"]
