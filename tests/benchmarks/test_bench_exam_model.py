"""benchmarks/bench_exam_model.py end to end on a tiny exam: every variant agrees with the materialised path."""

from __future__ import annotations

import json
from pathlib import Path

from tests.benchmark_scripts import BENCHMARKS, load_benchmark


def test_variants_run_side_by_side_and_agree(tmp_path: Path, monkeypatch) -> None:
    bench = load_benchmark("bench_exam_model")
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_common, as when run from benchmarks/
    out = tmp_path / "exam.json"
    assert bench.main(["--scale", "0.05", "--num-filters", "4", "--tta", "3", "--rounds", "1", "--threads", "1",
                       "--variants", "materialised-nchw-b8,lazy-nhwc-b1", "--work", str(tmp_path / "w"),
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["variants"]
    assert list(rows) == ["materialised-nchw-b8", "lazy-nhwc-b1"]
    assert rows["lazy-nhwc-b1"]["max_abs_diff_vs_first"] < 1e-5  # same probabilities by another path
    assert rows["lazy-nhwc-b1"]["batch_size"] == 1 and result["tta"] == 3 and result["scale"] == 0.05
    assert len(result["probs"]) == 4 and len(set(result["probs"])) > 1  # a model that is not constant
    assert result["fastest"] in rows and all(r["median_seconds"] > 0 for r in rows.values())
