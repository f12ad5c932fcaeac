"""``breastscreen dicom-node`` driven by Debian's dcmtk (echoscu, storescu, storescp), as a PACS would.

Skips, saying why, where dcmtk is absent on a developer machine; fails in CI (``.ci/run``
installs dcmtk, so a missing one there is a broken setup, not a reason to skip).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BS = [str(Path(sys.executable).parent / "breastscreen")]
MODEL = "demo-breast-image"


@pytest.fixture(scope="module", autouse=True)
def _dcmtk() -> None:
    missing = [t for t in ("echoscu", "storescu", "storescp") if shutil.which(t) is None]
    if missing:
        message = f"dcmtk not installed ({', '.join(missing)} missing; apt-get install dcmtk)"
        if IN_CI:
            pytest.fail(message + " - .ci/run installs it")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _study(folder: Path, seed: int) -> list[Path]:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    generate_mammo_cohort(folder, 1, seed=seed, scale=0.125, fmt="dicom")
    return sorted(p for p in folder.rglob("*.dcm") if "mask" not in p.name.lower())


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, recv = _free_port(), tmp_path / "recv"
    recv.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "RECV", "-od", str(recv), "+xa", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield port, recv
    proc.terminate()
    proc.wait(10)


def _start_node(data: Path, port: int, dest_port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = BS + ["dicom-node", "--ae-title", "BSCREEN", "--port", str(port), "--model", MODEL, "--device", "cpu",
                "--destination", f"RECV@127.0.0.1:{dest_port}", "--data-dir", str(data), *extra]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=_env())
    end = time.monotonic() + 90
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"node exited: {log.read_text()[-2000:]}")
        if subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", "BSCREEN", "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0:
            return proc
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("node did not answer C-ECHO")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _srs(recv: Path) -> list[pydicom.Dataset]:
    out = []
    for f in recv.iterdir():
        ds = pydicom.dcmread(f)
        if ds.Modality == "SR":
            out.append(ds)
    return out


def _wait_srs(recv: Path, n: int, timeout: float = 60.0) -> list[pydicom.Dataset]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = _srs(recv)
        if len(got) >= n:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{n} SR(s) expected, got {len(_srs(recv))}")


def _numbers(sr: pydicom.Dataset) -> list[float]:
    vals: list[float] = []

    def walk(items: pydicom.Sequence) -> None:
        for it in items:
            if "MeasuredValueSequence" in it:
                vals.extend(float(m.NumericValue) for m in it.MeasuredValueSequence)
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(sr.ContentSequence)
    return vals


def test_echo_store_and_refusals_with_dcmtk(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    from breastscreen.inference.options import PredictOptions
    from breastscreen.inference.predict import predict

    dest_port, recv = storescp
    files = _study(tmp_path / "in", seed=21)
    port, log = _free_port(), tmp_path / "node.log"
    node = _start_node(tmp_path / "node", port, dest_port, log, "--complete-after", "30", "--allow", "STORESCU",
                       "--allow", "ECHOSCU")
    try:
        stranger = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "BSCREEN", "127.0.0.1", str(port)],
                                  capture_output=True, text=True)
        assert stranger.returncode != 0
        sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "BSCREEN", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr
        # A CT image: its SOP class is not negotiated, so storescu cannot send it.
        ct = pydicom.dcmread(files[0])
        ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ct.Modality = "CT"
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ct.save_as(tmp_path / "ct.dcm")
        # A truncated mammogram: pixel data cut to a third of what Rows x Columns need.
        cut = pydicom.dcmread(files[1])
        cut.PixelData = cut.PixelData[: len(cut.PixelData) // 3]
        cut.SOPInstanceUID = cut.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        cut.save_as(tmp_path / "cut.dcm")
        for bad in ("ct.dcm", "cut.dcm"):
            r = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "BSCREEN", "127.0.0.1", str(port),
                                str(tmp_path / bad)], capture_output=True, text=True)
            assert r.returncode != 0 or "c002" in (r.stdout + r.stderr).lower(), (bad, r.stdout, r.stderr)
        srs = _wait_srs(recv, 1)
    finally:
        _stop(node)
    text = log.read_text()
    assert "STRANGER" in text and "not in --allow" in text
    assert "status 0xC002" in text
    predict(tmp_path / "in", [MODEL], tmp_path / "pred", PredictOptions(tta=1, pictures=False))
    row = next(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    got = _numbers(srs[0])
    for key in ("left_benign", "left_malignant", "right_benign", "right_malignant"):
        assert any(abs(v - float(row[key])) <= 1e-6 for v in got), key
    assert len(got) == 4
    # No patient data in the log: neither the patient id nor the study UID appear.
    assert str(srs[0].PatientID) not in text and str(srs[0].StudyInstanceUID) not in text


def test_sigkill_between_receipt_and_prediction_predicts_once_after_restart(tmp_path: Path,
                                                                            storescp: tuple[int, Path]) -> None:
    dest_port, recv = storescp
    files = _study(tmp_path / "in", seed=22)[:3]  # three views: complete only after the quiet period
    port, log, data = _free_port(), tmp_path / "node.log", tmp_path / "node"
    node = _start_node(data, port, dest_port, log, "--complete-after", "20")
    sent = subprocess.run(["storescu", "-aec", "BSCREEN", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr
    node.send_signal(signal.SIGKILL)
    node.wait()
    assert _srs(recv) == []
    node = _start_node(data, port, dest_port, log, "--complete-after", "1")
    try:
        _wait_srs(recv, 1)
        time.sleep(2.0)  # a second prediction, were there one, would arrive in this time
        assert len(_srs(recv)) == 1
    finally:
        _stop(node)
    con = sqlite3.connect(data / "breastscreen-serve.sqlite")
    done = con.execute("SELECT COUNT(*) FROM job_events WHERE event='done'").fetchone()[0]
    states = con.execute("SELECT state, n_instances FROM dicom_studies").fetchall()
    con.close()
    assert done == 1 and states == [("sent", 3)]
