"""NYU exam-list pickle importer and its restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.manifest import read_manifest
from breastscreen.data.nyu import import_nyu_exam_list, safe_load_pickle
from breastscreen.errors import ManifestError


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilEval:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (eval, (f"open({self.target!r}, 'w').write('x')",))


def _entry(prefix: str = "0", **extra) -> dict:
    return {"horizontal_flip": "NO", "L-CC": [f"{prefix}_L_CC"], "R-CC": [f"{prefix}_R_CC"],
            "L-MLO": [f"{prefix}_L_MLO"], "R-MLO": [f"{prefix}_R_MLO"], **extra}


def _images(folder: Path, prefixes: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for p in prefixes:
        for v in ("L_CC", "R_CC", "L_MLO", "R_MLO"):
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / f"{p}_{v}.png")


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilEval])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, evil_cls, protocol: int) -> None:
    target = tmp_path / "pwned"
    pkl = tmp_path / "exam_list.pkl"
    pkl.write_bytes(pickle.dumps([_entry(), evil_cls(str(target))], protocol=protocol))
    with pytest.raises(ManifestError, match=r"refused: it asks for the global (posix|nt|os|builtins|__builtin__)\.(system|eval)"):
        import_nyu_exam_list(pkl, tmp_path, check_files=False)
    assert not target.exists()
    r = CliRunner().invoke(app, ["manifest", "import-nyu", str(pkl), "--images", str(tmp_path),
                                 "--out", str(tmp_path / "m.jsonl")])
    assert r.exit_code != 0 and isinstance(r.exception, ManifestError)
    assert not target.exists() and not (tmp_path / "m.jsonl").exists()


def test_numpy_arrays_refused_but_scalars_decoded() -> None:
    with pytest.raises(ManifestError, match="numpy arrays"):
        safe_load_pickle(pickle.dumps({"x": np.zeros(3)}))
    for protocol in (2, 4):
        out = safe_load_pickle(pickle.dumps({"c": (np.int64(-7), np.float32(2.5), np.uint16(9)), "b": True},
                                            protocol=protocol))
        assert out == {"c": (-7, 2.5, 9), "b": True}
        assert all(type(v) in (int, float) for v in out["c"])
    with pytest.raises(ManifestError, match="not a valid"):
        safe_load_pickle(b"garbage")


def test_import_sample_style_exam_list(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["0", "1"])
    entries = [
        _entry("0", cancer_label={"benign": 1, "left_benign": 0, "left_malignant": 0, "right_benign": 1,
                                  "right_malignant": 0, "unknown": 0},
               best_center={"L-CC": [(np.int64(10), np.int64(20))]}),
        _entry("1", horizontal_flip="YES"),
    ]
    pkl = tmp_path / "exam_list.pkl"
    pkl.write_bytes(pickle.dumps(entries, protocol=2))
    exams = import_nyu_exam_list(pkl, tmp_path / "img")
    assert [e.exam_id for e in exams] == ["0", "1"]
    e0, e1 = exams
    assert not e0.missing_views()
    assert Path(e0.views["L-MLO"][0].path).name == "0_L_MLO.png"
    assert e0.labels["R"].benign == 1 and e0.labels["L"].malignant == 0
    assert e0.meta["best_center"] == {"L-CC": [[10, 20]]}
    assert e1.meta["horizontal_flip"] == "YES" and e1.labels == {}
    out = tmp_path / "m.jsonl"
    r = CliRunner().invoke(app, ["manifest", "import-nyu", str(pkl), "--images", str(tmp_path / "img"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_manifest(out) == exams


def test_missing_images_and_bad_values_are_errors(tmp_path: Path) -> None:
    pkl = tmp_path / "l.pkl"
    pkl.write_bytes(pickle.dumps([_entry()]))
    (tmp_path / "img").mkdir()
    with pytest.raises(ManifestError, match="4 listed images not found"):
        import_nyu_exam_list(pkl, tmp_path / "img")
    pkl.write_bytes(pickle.dumps([_entry(horizontal_flip="maybe")]))
    with pytest.raises(ManifestError, match="horizontal_flip must be 'YES' or 'NO'"):
        import_nyu_exam_list(pkl, tmp_path / "img", check_files=False)
    pkl.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(ManifestError, match="expected a list"):
        import_nyu_exam_list(pkl, tmp_path / "img", check_files=False)
