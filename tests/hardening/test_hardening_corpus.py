"""The hostile-input corpus: every case ends in its expected, clearly named outcome.

Cases come from the family modules (``corpus_*.py``). Around each case this test checks what
holds for all of them: no traceback and no internal-error exit (3) in any command's output,
nothing written outside the case's own folder, and no memory blow-up (peak RSS growth below
1.5 GB); ``pytest-timeout`` turns a hang into a failure.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from pathlib import Path

import pytest

import corpus_batch
import corpus_datasets
import corpus_dicom
import corpus_eval
import corpus_files
import corpus_manifest
import corpus_models
from hardening_helpers import Case, files_outside

FAMILIES = (corpus_dicom, corpus_files, corpus_manifest, corpus_datasets, corpus_eval, corpus_models, corpus_batch)
CASES: list[Case] = [c for module in FAMILIES for c in module.CASES]
MAX_RSS_GROWTH_KB = 1_500_000


def test_corpus_is_large_and_names_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    assert len(CASES) >= 300
    families = Counter(c.family for c in CASES)
    assert set(families) == {"dicom", "raster", "files", "manifest", "adapter", "pickle", "evaluate", "checkpoint",
                             "batch"}, families
    kinds = Counter(c.kind for c in CASES)
    assert set(kinds) <= {"error", "accepted", "limit"} and kinds["accepted"] >= 50 and kinds["error"] >= 200, kinds


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import breastscreen.cli as cli

    outputs: list[str] = []
    real_run = cli.run

    def recording_run(argv=None):  # noqa: ANN001, ANN202 - wraps the CLI entry point
        code = real_run(argv)
        outputs.append(f"exit {code}")
        return code

    monkeypatch.setattr(cli, "run", recording_run)
    box = tmp_path / "box"
    box.mkdir()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    case.run(box)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < MAX_RSS_GROWTH_KB, f"peak memory grew by {grown / 1e6:.1f} GB"
    assert case.internal_error or "exit 3" not in outputs, "a command failed with an internal error (exit 3)"
    assert not files_outside(box, tmp_path), files_outside(box, tmp_path)
    assert os.getcwd() != str(box)
