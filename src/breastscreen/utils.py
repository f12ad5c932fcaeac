"""Small shared helpers: atomic file writes, device choice, seeding."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A crash inside the block never leaves a half-written ``path`` behind; a killed process leaves
    at most a hidden ``.bstmp-<pid>-*`` file, which the next run in that folder deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets a later run tell leftovers of a killed process from files that a
    # live one is still writing (breastscreen.outdir.remove_stale_temp_files).
    fd, tmp = tempfile.mkstemp(prefix=f".bstmp-{os.getpid()}-{path.stem[:80]}.", suffix=path.suffix,
                               dir=str(path.parent))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_device(device: str = "auto") -> "torch.device":  # noqa: F821
    """Map ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` to a torch device, failing clearly if absent."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, got {device!r}")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (for reproducible CPU runs)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_field(name: str) -> str | None:
    """The value of the first ``name`` line of ``/proc/cpuinfo`` (e.g. ``"model name"``, ``"flags"``), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None
