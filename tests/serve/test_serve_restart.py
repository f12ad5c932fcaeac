"""Restart recovery: queued and running jobs are finished after a restart, each exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from breastscreen.serve.store import JobStore
from serve_helpers import config, form_files, free_port, image_files, new_key, wait_job, wait_ready


def _done_count(store: JobStore, job_id: str) -> int:
    return sum(1 for e in store.events(job_id) if e["event"] == "done")


def test_restart_finishes_queued_and_interrupted_jobs_once(tmp_path: Path, image_models: Any,
                                                           mammo_folder: Path) -> None:
    from fastapi.testclient import TestClient

    from breastscreen.serve.app import create_app

    data = tmp_path / "data"
    headers = new_key(data, "alice")
    files = image_files(mammo_folder)
    with TestClient(create_app(config(data), models=image_models, start_workers=False)) as first:
        wait_ready(first)
        ids = [first.post("/v1/exams", files=form_files(files), headers=headers).json()["id"] for _ in range(2)]
        # A worker of the first process takes the second job and dies with it (never completes).
        claim = JobStore(data).claim("dead-worker", 3600, 3)
        assert claim.job_id == ids[0]
        (data / "jobs" / ids[0] / "result").mkdir()  # half-published leftovers must not count
    store = JobStore(data)
    assert store.get(ids[0]).status == "running" and store.get(ids[1]).status == "queued"

    with TestClient(create_app(config(data, workers=2), models=image_models)) as second:
        wait_ready(second)
        jobs = [wait_job(second, i, headers) for i in ids]
    assert [j["status"] for j in jobs] == ["done", "done"]
    assert jobs[0]["exams"][0]["predictions"] == jobs[1]["exams"][0]["predictions"]
    assert [_done_count(store, i) for i in ids] == [1, 1]
    assert store.get(ids[0]).attempts == 2 and store.get(ids[1]).attempts == 1
    assert any(e["event"] == "requeued" and e["detail"] == "service restarted" for e in store.events(ids[0]))
    assert not store.complete(claim, {}, None)
    for i in ids:
        left = sorted(p.name for p in (data / "jobs" / i).iterdir())
        assert left == ["result", "upload"], left


def _request(base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Any:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = "bsboundary7"
    body = b""
    for f in files:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
                 "Content-Type: image/png\r\n\r\n").encode() + f.read_bytes() + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _start(data: Path, port: int, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("breastscreen")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(exe), "serve", "--model", "demo-breast-image", "--port", str(port), "--data-dir",
                             str(data), "--device", "cpu"], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


def _wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError("service not ready: " + log.read_text()[-2000:])


@pytest.mark.slow
def test_sigkill_during_jobs_then_restart_loses_and_duplicates_nothing(tmp_path: Path, mammo_folder: Path) -> None:
    """The real command: `breastscreen serve` killed with SIGKILL while jobs run, then started again."""
    data, log = tmp_path / "data", tmp_path / "serve.log"
    headers = new_key(data, "alice")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    body, ctype = _multipart(image_files(mammo_folder))
    proc = _start(data, port, log)
    try:
        _wait_ready(base, proc, log)
        ids = []
        for _ in range(3):
            code, doc = _request(base, "POST", "/v1/exams", {**headers, "Content-Type": ctype}, body)
            assert code == 202, doc
            ids.append(doc["id"])
        store = JobStore(data)
        deadline = time.monotonic() + 60
        while store.get(ids[0]).status == "queued" and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        before = {i: store.get(i).status for i in ids}
        assert "queued" in before.values(), before  # the kill came before every job finished
        proc = _start(data, port, log)
        _wait_ready(base, proc, log)
        deadline = time.monotonic() + 120
        docs: dict[str, Any] = {}
        while time.monotonic() < deadline and len(docs) < len(ids):
            for i in ids:
                code, doc = _request(base, "GET", f"/v1/jobs/{i}", headers)
                assert code == 200
                if doc["status"] in ("done", "failed"):
                    docs[i] = doc
            time.sleep(0.2)
        assert [docs[i]["status"] for i in ids] == ["done"] * len(ids), before
        assert [_done_count(store, i) for i in ids] == [1] * len(ids)
        values = {json.dumps(docs[i]["exams"][0]["predictions"], sort_keys=True) for i in ids}
        assert len(values) == 1
        for i in ids:
            assert sorted(p.name for p in (data / "jobs" / i).iterdir()) == ["result", "upload"]
            req = urllib.request.Request(base + docs[i]["exams"][0]["views"]["L-CC"]["image"], headers=headers)
            with urllib.request.urlopen(req, timeout=30) as resp:  # an access-log line with a file URL
                assert resp.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = log.read_text()
    assert "requeued" in text or all(s == "queued" for s in before.values())
    assert "/files/views/" in text and "syn11" not in text  # URLs and lines never carry exam ids
