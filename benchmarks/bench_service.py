"""Load and fault benchmark of ``breastscreen serve`` on loopback (a benchmark, not a timed test).

1. **Load**: ``--n-exams`` small synthetic four-view exams (scale 0.125) go through a real
   ``breastscreen serve`` process with ``--clients`` concurrent clients (each uploads an exam,
   polls until it is done, takes the next; a 429 is retried after its Retry-After). Every job
   must complete and its four probabilities must equal ``breastscreen predict`` on the same
   files (library call, within 1e-6). Reports p50/p95/max latency (upload to done) and
   throughput.
2. **Faults**: ``--fault-exams`` more exams are queued, the service is killed with SIGKILL while
   jobs are running, and started again. Every job must then be done exactly once (one ``done``
   event in the audit trail), equal the CLI, keep every file its result links to (PNGs decode,
   NPZ load), and leave no attempt folder or orphan upload behind.

Writes ``benchmarks/results/service_<device>.json`` and exits 1 when any check fails.
All traffic goes to 127.0.0.1; every loop is bounded in count and time.

Usage::

    python benchmarks/bench_service.py [--n-exams 100] [--clients 4] [--workers 2] [--fault-exams 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

FOUR = ("left_benign", "left_malignant", "right_benign", "right_malignant")
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- HTTP


def _request(base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
             timeout: float = 60) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, raw, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _json(base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, Any, dict]:
    code, raw, hdrs = _request(base, method, path, headers, body)
    return code, json.loads(raw or b"null"), hdrs


def _multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for f in files:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + f.read_bytes() + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _submit(base: str, auth: dict[str, str], files: list[Path], deadline: float) -> str:
    body, ctype = _multipart(files)
    while True:
        code, doc, hdrs = _json(base, "POST", "/v1/exams", {**auth, "Content-Type": ctype}, body)
        if code == 202:
            return doc["id"]
        if code == 429 and time.monotonic() < deadline:
            time.sleep(min(5.0, float(hdrs.get("Retry-After", "1"))))
            continue
        raise RuntimeError(f"upload answered {code}: {doc}")


def _wait_done(base: str, auth: dict[str, str], job_id: str, deadline: float, poll: float = 0.1) -> dict[str, Any]:
    while time.monotonic() < deadline:
        code, doc, _ = _json(base, "GET", f"/v1/jobs/{job_id}", auth)
        if code != 200:
            raise RuntimeError(f"GET job {job_id} answered {code}")
        if doc["status"] in ("done", "failed"):
            return doc
        time.sleep(poll)
    raise RuntimeError(f"job {job_id} not finished before the deadline")


# --------------------------------------------------------------------------- service process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(exe: Path, model: str, data: Path, port: int, workers: int, log: Path) -> subprocess.Popen:
    cmd = [str(exe), "serve", "--model", model, "--port", str(port), "--data-dir", str(data), "--workers",
           str(workers), "--device", "cpu", "--max-queued", "1000"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise RuntimeError("service not ready in time")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


# --------------------------------------------------------------------------- checks


def _cli_reference(exam_dirs: dict[str, Path], model: str, work: Path) -> dict[str, dict[str, float]]:
    """Per exam, the probabilities ``breastscreen predict`` gives on the same files."""
    from breastscreen.inference.predict import PredictOptions, predict

    folder = work / "cli-input"
    folder.mkdir()
    for d in exam_dirs.values():
        for f in d.iterdir():
            shutil.copy(f, folder / f.name)
    run = predict(folder, [model], work / "cli-pred", PredictOptions(tta=1, device="cpu", pictures=False))
    if run.errors:
        raise RuntimeError(f"predict failed on {run.errors}")
    return {p.exam_id: {k: float(p.values[k]) for k in FOUR} for p in run.predictions}


def _diff(doc: dict[str, Any], ref: dict[str, dict[str, float]]) -> float:
    exam = doc["exams"][0]
    return max(abs(exam["predictions"][k] - ref[exam["exam_id"]][k]) for k in FOUR)


def _check_files(base: str, auth: dict[str, str], doc: dict[str, Any]) -> list[str]:
    """Fetch every file a result links to; return the problems."""
    import io

    import numpy as np
    from PIL import Image

    problems = []
    for exam in doc["exams"]:
        links = list(exam.get("figures", []))
        for v in exam.get("views", {}).values():
            links += [v["image"], *v.get("overlays", {}).values()] + ([v["heatmaps"]] if v.get("heatmaps") else [])
        for link in links:
            code, raw, _ = _request(base, "GET", link, auth)
            try:
                if code != 200:
                    raise ValueError(f"status {code}")
                if link.endswith(".png"):
                    Image.open(io.BytesIO(raw)).load()
                elif link.endswith(".npz"):
                    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
                        data["heatmaps"].sum()
            except Exception as exc:  # noqa: BLE001 - any unreadable file is a finding
                problems.append(f"{doc['id']} {link}: {exc}")
    return problems


# --------------------------------------------------------------------------- phases


def _load_phase(base: str, auth: dict[str, str], exams: list[tuple[str, list[Path]]], clients: int,
                ref: dict[str, dict[str, float]], timeout: float) -> dict[str, Any]:
    todo: queue.Queue = queue.Queue()
    for item in exams:
        todo.put(item)
    latencies: list[float] = []
    diffs: list[float] = []
    failures: list[str] = []
    ids: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def client() -> None:
        while time.monotonic() < deadline:
            try:
                _eid, files = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                job_id = _submit(base, auth, files, deadline)
                doc = _wait_done(base, auth, job_id, deadline)
                took = time.perf_counter() - t0
                with lock:
                    ids.append(job_id)
                    if doc["status"] != "done":
                        failures.append(f"{job_id}: {doc.get('error')}")
                    else:
                        latencies.append(took)
                        diffs.append(_diff(doc, ref))
            except Exception as exc:  # noqa: BLE001 - recorded, the benchmark fails below
                with lock:
                    failures.append(repr(exc))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))], 3) if lat else None

    return {
        "n_exams": len(exams), "n_done": len(latencies), "failures": failures, "job_ids": ids,
        "wall_seconds": round(wall, 2), "throughput_exams_per_second": round(len(latencies) / wall, 3),
        "latency_seconds": {"p50": pct(0.5), "p95": pct(0.95), "max": pct(1.0),
                            "mean": round(statistics.fmean(lat), 3) if lat else None},
        "max_abs_diff_vs_predict": max(diffs) if diffs else None,
    }


def _fault_phase(exe: Path, model: str, data: Path, port: int, workers: int, log: Path, base: str,
                 auth: dict[str, str], exams: list[tuple[str, list[Path]]], ref: dict[str, dict[str, float]],
                 proc: subprocess.Popen, timeout: float) -> tuple[dict[str, Any], subprocess.Popen]:
    from breastscreen.serve.store import JobStore

    deadline = time.monotonic() + timeout
    ids = [_submit(base, auth, files, deadline) for _eid, files in exams]
    store = JobStore(data)
    # Kill once a few jobs are done and some are running: the interesting moment.
    while time.monotonic() < deadline:
        counts = store.counts()
        if counts["running"] and sum(1 for i in ids if store.get(i).status == "done") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    at_kill = {s: sum(1 for i in ids if store.get(i).status == s) for s in ("queued", "running", "done", "failed")}
    restart_start = time.monotonic()
    proc = _start(exe, model, data, port, workers, log)
    ready_s = _wait_ready(base, proc)
    docs = {i: _wait_done(base, auth, i, deadline, poll=0.2) for i in ids}
    recovery_s = time.monotonic() - restart_start
    done_events = {i: sum(1 for e in store.events(i) if e["event"] == "done") for i in ids}
    requeued = sum(1 for i in ids for e in store.events(i) if e["event"] == "requeued")
    leftovers = []
    for d in (data / "jobs").iterdir():
        names = sorted(p.name for p in d.iterdir())
        if store.get(d.name) is None or names != ["result", "upload"]:
            leftovers.append(f"{d.name}: {names}")
    file_problems: list[str] = []
    for doc in docs.values():
        if doc["status"] == "done":
            file_problems += _check_files(base, auth, doc)
    diffs = [_diff(doc, ref) for doc in docs.values() if doc["status"] == "done"]
    return {
        "n_jobs": len(ids), "at_kill": at_kill, "requeued_after_restart": requeued,
        "restart_ready_seconds": round(ready_s, 2), "recovery_seconds": round(recovery_s, 2),
        "lost": [i for i in ids if docs[i]["status"] != "done"],
        "duplicated": [i for i, n in done_events.items() if n != 1],
        "half_written_or_leftover": leftovers, "unreadable_files": file_problems,
        "max_abs_diff_vs_predict": max(diffs) if diffs else None,
        "attempts": {str(n): sum(1 for i in ids if store.get(i).attempts == n) for n in (1, 2, 3)},
    }, proc


def main(argv: list[str] | None = None) -> int:
    """Run both phases and write the JSON; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-exams", type=int, default=100)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="service worker threads (--workers of serve)")
    ap.add_argument("--fault-exams", type=int, default=30)
    ap.add_argument("--model", default="demo-breast-image")
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for each phase at most")
    ap.add_argument("--out", type=Path, default=RESULTS / "service_cpu.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    from breastscreen import __version__
    from breastscreen.serve.keys import add_key
    from breastscreen.serve.store import JobStore
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    exe = Path(sys.executable).with_name("breastscreen")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        work = Path(tmp)
        total = args.n_exams + args.fault_exams
        t0 = time.perf_counter()
        cohort = generate_mammo_cohort(work / "cohort", total, seed=args.seed, scale=0.125)
        synth_s = time.perf_counter() - t0
        exam_dirs: dict[str, Path] = {}
        for exam in cohort:
            d = work / "exams" / exam.exam_id
            d.mkdir(parents=True)
            for _view, image in exam.iter_images():
                shutil.copy(image.path, d / Path(image.path).name)
            exam_dirs[exam.exam_id] = d
        t0 = time.perf_counter()
        ref = _cli_reference(exam_dirs, args.model, work)
        cli_s = time.perf_counter() - t0
        items = [(eid, sorted(d.iterdir())) for eid, d in exam_dirs.items()]

        data = work / "data"
        auth = {"Authorization": f"Bearer {add_key(JobStore(data), 'bench')}"}
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = work / "serve.log"
        proc = _start(exe, args.model, data, port, args.workers, log)
        try:
            ready_s = _wait_ready(base, proc)
            load = _load_phase(base, auth, items[: args.n_exams], args.clients, ref, args.timeout)
            fault, proc = _fault_phase(exe, args.model, data, port, args.workers, log, base, auth,
                                       items[args.n_exams:], ref, proc, args.timeout)
        finally:
            _stop(proc)
        log_text = log.read_text(errors="replace")
        phi_in_log = [eid for eid in exam_dirs if eid in log_text]

    result = {
        "benchmark": "bench_service", "package_version": __version__, "torch": torch.__version__,
        "device": "cpu", "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "model": args.model, "scale": 0.125,
        "service_workers": args.workers, "clients": args.clients,
        "synthesis_seconds": round(synth_s, 2), "cli_predict_seconds": round(cli_s, 2),
        "cli_predict_exams_per_second": round(len(ref) / cli_s, 3),
        "startup_ready_seconds": round(ready_s, 2),
        "load": {k: v for k, v in load.items() if k != "job_ids"},
        "faults": fault,
        "exam_ids_in_service_log": phi_in_log,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    ok = (load["n_done"] == load["n_exams"] and not load["failures"]
          and (load["max_abs_diff_vs_predict"] or 0) <= 1e-6 and not fault["lost"] and not fault["duplicated"]
          and not fault["half_written_or_leftover"] and not fault["unreadable_files"]
          and (fault["max_abs_diff_vs_predict"] or 0) <= 1e-6 and not phi_in_log)
    result["all_checks_passed"] = ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
