"""Helpers of the service tests (imported by them; not a test module itself)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

from breastscreen.serve.config import ServeConfig
from breastscreen.serve.keys import add_key
from breastscreen.serve.store import JobStore


def image_files(folder: Path, pattern: str = "*.png") -> list[Path]:
    """The images of a synthetic cohort folder (lesion masks and the manifest left out)."""
    return sorted(p for p in folder.glob(pattern) if "_mask_" not in p.name)


def form_files(paths: list[Path], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    """``files=`` argument of the test client for a multipart upload of ``paths``."""
    names = names or [p.name for p in paths]
    return [("files", (n, p.read_bytes(), "application/octet-stream")) for n, p in zip(names, paths)]


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    """A zip archive holding ``entries`` (name -> content), deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def new_key(data_dir: Path, name: str) -> dict[str, str]:
    """Authorization header of a fresh key called ``name``."""
    return {"Authorization": f"Bearer {add_key(JobStore(data_dir), name)}"}


def wait_ready(client: Any, timeout: float = 60.0) -> None:
    """Wait until ``/readyz`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("service not ready in time")


def wait_job(client: Any, job_id: str, headers: dict[str, str], timeout: float = 90.0,
             seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Poll a job until it is done or failed; ``seen`` collects every status document."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        doc = r.json()
        if seen is not None:
            seen.append(doc)
        if doc["status"] in ("done", "failed"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished in {timeout} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(app: Any, port: int) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:``port`` in a thread; yield its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def config(data_dir: Path, model: str = "demo-breast-image", **overrides: Any) -> ServeConfig:
    """Service settings for a test: CPU, one worker, the given data folder."""
    return ServeConfig(models=(model,), data_dir=data_dir, device="cpu", **{"workers": 1, **overrides})
