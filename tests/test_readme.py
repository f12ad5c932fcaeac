"""The README's Predictor example runs as written (on a synthetic exam made like the comment says)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_predictor_example_runs(tmp_path):
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    example = next(b for b in blocks if "Predictor.load" in b)
    generate_mammo_cohort(tmp_path / "cohort", 1, seed=3, scale=0.125)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    finally:
        os.chdir(cwd)
    values = namespace["result"].values
    assert set(values) == {"left_benign", "left_malignant", "right_benign", "right_malignant"}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert namespace["result"].details["views_used"] == ["L-CC", "R-CC", "L-MLO", "R-MLO"]
