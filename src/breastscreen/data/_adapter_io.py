"""Reading dataset folders safely: the shared helpers of :mod:`breastscreen.data.adapters`.

Tables are read as text with a size limit (UTF-8 or UTF-16 with a byte-order mark; NUL bytes
refused), rows with more fields than columns are kept for their problem report, literal cells
(``BBOX``, category lists) are parsed with a size and depth limit, and every file a table names
must be a regular file inside the dataset folder. Problems go to a ``problems`` list when one is
given (the row is skipped), else raise :class:`~breastscreen.errors.ManifestError`.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Any

import numpy as np

from breastscreen.errors import ManifestError

Problems = list[tuple[str, str]]


def problem(problems: Problems | None, path: str, reason: str) -> None:
    """Record ``(path, reason)`` in ``problems``, or raise :class:`ManifestError` when there is no list."""
    if problems is None:
        raise ManifestError(f"{path}: {reason}")
    problems.append((path, reason))


# Largest dataset table read, and the longest / deepest literal in a table cell (BBOX, category lists).
MAX_TABLE_BYTES = 512 * 1024 * 1024
MAX_LITERAL_CHARS = 10_000
MAX_LITERAL_DEPTH = 8


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a dataset table as stripped text; extra unnamed fields are kept under ``_extra``."""
    import io

    from breastscreen.safety import read_user_text

    if not path.exists():
        raise ManifestError(f"{path}: table not found")
    text = read_user_text(path, "table", MAX_TABLE_BYTES, ManifestError)
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline=""), restkey="_extra"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, list):  # fields beyond the header: kept for the row's problem report
                clean["_extra"] = ",".join(str(x) for x in v)
            else:
                clean[(k or "").strip()] = (v or "").strip()
        rows.append(clean)
    return rows


def literal(text: str, where: str, what: str) -> Any:
    """A Python literal from a table cell (``[x, y, w, h]``, ``['Mass']``) with size and depth limits."""
    from breastscreen.safety import json_depth

    if len(text) > MAX_LITERAL_CHARS or json_depth(text) > MAX_LITERAL_DEPTH:
        raise ManifestError(f"{where}: {what} is too long or nested too deeply ({len(text):,} characters)")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        raise ManifestError(f"{where}: {what} is not a valid list, got {text[:60]!r}") from None


def dataset_file(root: Path, path: Path, problems: Problems | None, where: str) -> Path | None:
    """``path`` when it is a regular file inside the dataset ``root`` (else a problem, ``None``)."""
    from breastscreen.safety import check_regular_file, is_within

    if not is_within(path, root):
        problem(problems, str(path), f"named in {where}, but outside the dataset folder {root} (refused)")
        return None
    try:
        check_regular_file(path, ManifestError, root=root)
    except ManifestError as exc:
        msg = str(exc)
        problem(problems, str(path), f"{msg[len(str(path)) + 2:] if msg.startswith(str(path)) else msg} "
                                      f"(named in {where})")
        return None
    return path


def require(rows: list[dict[str, str]], path: Path, cols: list[str]) -> None:
    """Raise :class:`ManifestError` when the table ``path`` has rows but lacks one of ``cols``."""
    have = set(rows[0]) if rows else set()
    missing = [c for c in cols if c not in have]
    if rows and missing:
        raise ManifestError(f"{path}: missing columns {missing}; found {sorted(have)}")


def clip_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple[int, int, int, int] | None:
    """The box clipped to a ``w`` x ``h`` image as integers, or ``None`` when nothing is left."""
    bx0, by0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    bx1, by1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if bx1 <= bx0 or by1 <= by0:
        return None
    return (bx0, by0, bx1, by1)
