"""Output folders: which command made them, leftovers of killed runs, the run log.

Every command that writes a folder (``preprocess``, ``heatmaps``, ``predict``, ``evaluate``,
``synth``) claims it with :func:`claim_output_dir`, which writes a small marker file
``.breastscreen-output.json`` naming the command. A folder marked by another command is refused
(even with ``--overwrite``), so ``heatmaps --out pre`` can never replace the ``manifest.jsonl``
of a ``preprocess`` folder. Claiming also deletes the temporary files that killed runs leave
behind (:func:`breastscreen.utils.atomic_path` names them ``.bstmp-<pid>-...``), but only those
of processes that are no longer running.

Tracebacks of unexpected errors go to the ``breastscreen`` logger; the command line sends it to
``breastscreen-error.log`` in the output folder (:func:`error_log_path`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from breastscreen import __version__
from breastscreen.errors import BreastscreenError

MARKER_NAME = ".breastscreen-output.json"
TEMP_PREFIX = ".bstmp-"
ERROR_LOG_NAME = "breastscreen-error.log"
_TEMP_RE = re.compile(r"^\.bstmp-(?P<pid>\d+)-")
logger = logging.getLogger("breastscreen")


class OutputDirError(BreastscreenError):
    """The output folder belongs to another command or cannot be used."""


def read_marker(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of ``out`` (``{"command": ..., ...}``), ``None`` when it has none.

    An unreadable or malformed marker is an error: the folder's owner cannot be told.
    """
    path = Path(out) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8")[:65536])
    except (OSError, ValueError) as exc:
        raise OutputDirError(f"{path}: unreadable output-folder marker ({exc}); delete it if the folder is yours")
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise OutputDirError(f"{path}: malformed output-folder marker; delete it if the folder is yours")
    return data


def claim_output_dir(out: str | os.PathLike[str], command: str, **extra: Any) -> Path:
    """Create ``out`` (or check it) for ``command``; write its marker; clean leftovers of killed runs.

    Raises :class:`OutputDirError` when ``out`` is a file, or a folder marked by another command.
    ``extra`` JSON-ready facts are stored in a new marker (e.g. the input it was made from).
    Whether earlier outputs of the same command may be replaced is the command's own rule
    (``--resume`` / ``--overwrite``); this function only guards ownership.
    """
    out = Path(out)
    marker = check_output_owner(out, command)
    out.mkdir(parents=True, exist_ok=True)
    if marker is None:
        from breastscreen.utils import atomic_path

        # No time stamp: two runs of the same command on the same input leave identical folders.
        record = {"command": command, "package_version": __version__, **extra}
        with atomic_path(out / MARKER_NAME) as tmp:
            tmp.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    remove_stale_temp_files(out)
    return out


def check_output_owner(out: str | os.PathLike[str], command: str) -> dict[str, Any] | None:
    """Raise :class:`OutputDirError` when ``out`` is a file or a folder marked by another command.

    Nothing is written; returns the folder's marker (``None`` when it has none).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: exists and is not a folder; choose another --out")
    marker = read_marker(out) if out.is_dir() else None
    if marker is not None and marker["command"] != command:
        raise OutputDirError(
            f"{out} holds the output of `breastscreen {marker['command']}`; `breastscreen {command}` never "
            "writes into another command's folder (not even with --overwrite); choose another --out"
        )
    return marker


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    except OSError:
        return False
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str], max_depth: int = 2) -> list[Path]:
    """Delete temporary files of dead processes under ``folder`` (``max_depth`` levels); return them.

    Sub-folders with their own marker belong to their own command and are left to it.
    """
    removed: list[Path] = []
    root = Path(folder)

    def walk(d: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            m = _TEMP_RE.match(e.name)
            if m and e.is_file(follow_symlinks=False):
                if not _alive(int(m.group("pid"))):
                    try:
                        os.unlink(e.path)
                        removed.append(Path(e.path))
                    except FileNotFoundError:
                        pass  # removed meanwhile by its owner: nothing left to clean
            elif depth < max_depth and e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                if not (Path(e.path) / MARKER_NAME).is_file():
                    walk(Path(e.path), depth + 1)

    if root.is_dir():
        walk(root, 0)
    if removed:
        logger.info("removed %d temporary file(s) left by killed runs in %s", len(removed), root)
    return removed


def error_log_path(out: str | os.PathLike[str] | None) -> Path | None:
    """Where the traceback of a failed command goes: ``OUT/breastscreen-error.log`` for a folder
    ``--out``, ``<stem>.error.log`` beside a file ``--out``; ``None`` without ``--out``."""
    if out is None:
        return None
    p = Path(out)
    if p.is_dir() or not p.suffix:
        return p / ERROR_LOG_NAME
    return p.with_name(f"{p.stem}.error.log")
