"""Guards for hostile or malformed input: safe file names, path confinement, regular files, JSON limits.

Every stage that turns user data into file names or follows a path named inside a file goes
through these helpers, so the rules are the same everywhere (``docs/data.md``, "Hostile input"):

* :func:`safe_name` turns an exam id (or any id) into one file-name component. The encoding is
  reversible (characters other than ``A-Z a-z 0-9 _ - .`` become ``~XX`` per UTF-8 byte, a
  leading or trailing dot too), so ``p_1`` and ``p-1`` stay different and ``../../x`` becomes
  ``~2E~2E~2F~2E~2E~2Fx``; :func:`unique_names` refuses ids whose names would still collide
  (equal ignoring case, or equal after the length cap).
* :func:`confine` refuses a path that resolves (symbolic links followed) outside the allowed
  roots.
* :func:`check_regular_file` refuses FIFOs, devices, sockets and folders before anything opens
  them (opening a FIFO blocks forever, ``/dev/zero`` never ends) and symbolic links that leave
  the tree being scanned.
* :func:`loads_json` parses JSON text with a size and nesting-depth limit, refusing ``NaN``,
  ``Infinity`` and numbers that overflow to infinity.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from typing import Any, Iterable, Sequence

from breastscreen.errors import BreastscreenError

# Characters kept as they are in file names; everything else is escaped.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
ESCAPE = "~"
# Longest file-name component made from an id (most file systems allow 255 bytes; the rest of
# the name, e.g. ``_L-MLO_12_breastmask.png``, needs room too).
MAX_NAME_CHARS = 120
_HASH_CHARS = 16
# Nesting and size limits of JSON read from user files (manifest lines, checkpoint headers).
MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 16 * 1024 * 1024


class PathOutsideError(BreastscreenError):
    """A path named in an input file leaves the folders it may use."""


class UnsafeNameError(BreastscreenError):
    """Two ids would be written to the same file name."""


# --------------------------------------------------------------------------- names


def safe_name(text: str) -> str:
    """One file-name component for ``text`` (an exam id, a view ...), reversible and never a path.

    Kept: ``A-Z a-z 0-9 _ - .`` (a dot not at either end); every other character becomes
    ``~XX`` for each byte of its UTF-8 form. Names longer than :data:`MAX_NAME_CHARS` are cut and
    end in ``~~`` plus 16 hex digits of the text's SHA-256, so they stay distinct.
    """
    s = str(text)
    if not s:
        raise ValueError("an id used as a file name must not be empty")
    parts = []
    last = len(s) - 1
    for i, ch in enumerate(s):
        if ch in _SAFE and not (ch == "." and i in (0, last)):
            parts.append(ch)
        else:
            parts.extend(f"{ESCAPE}{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    name = "".join(parts)
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
        name = name[: MAX_NAME_CHARS - _HASH_CHARS - 2].rstrip(".") + ESCAPE * 2 + digest
    return name


def assign_names(ids: Iterable[str], what: str = "exam id") -> tuple[dict[str, str], dict[str, str]]:
    """File names for ``ids`` in order: ``({id: name}, {id: error})``.

    An id whose name equals (ignoring letter case: one file on macOS and Windows) the name of an
    earlier id gets no name but an error naming both ids; earlier ids keep theirs.
    """
    names: dict[str, str] = {}
    errors: dict[str, str] = {}
    seen: dict[str, str] = {}
    for ident in ids:
        if ident in names or ident in errors:
            continue
        name = safe_name(ident)
        key = name.casefold()
        if key in seen:
            errors[ident] = (f"{what}s {seen[key]!r} and {ident!r} would share the file name {name!r} "
                             "(names differing only in letter case are one file on many systems); rename one of them")
            continue
        seen[key] = ident
        names[ident] = name
    return names, errors


def unique_names(ids: Iterable[str], what: str = "exam id") -> dict[str, str]:
    """``{id: safe_name(id)}`` for every id; raise :class:`UnsafeNameError` naming both ids of a collision."""
    names, errors = assign_names(ids, what)
    if errors:
        raise UnsafeNameError(next(iter(errors.values())))
    return names


# --------------------------------------------------------------------------- paths


def real(path: str | os.PathLike[str]) -> str:
    """``os.path.realpath`` of ``path`` (symbolic links followed, ``..`` removed)."""
    return os.path.realpath(os.fspath(path))


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` resolves to ``root`` or a place below it (symbolic links followed)."""
    p, r = real(path), real(root)
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:  # different drives on Windows
        return False


def confine(path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]], what: str,
            hint: str = "") -> str:
    """Return ``path`` unchanged when it resolves inside one of ``roots``; else raise :class:`PathOutsideError`.

    ``what`` names the path in the message (e.g. ``"manifest.jsonl:3: image path"``); ``hint``
    says how to allow it.
    """
    if any(is_within(path, root) for root in roots):
        return os.fspath(path)
    shown = ", ".join(str(r) for r in roots) or "(none)"
    raise PathOutsideError(f"{what} {os.fspath(path)!r} is outside the allowed folder(s) {shown}" +
                           (f"; {hint}" if hint else ""))


def check_regular_file(path: str | os.PathLike[str], error: type[BreastscreenError] = BreastscreenError,
                       root: str | os.PathLike[str] | None = None) -> os.stat_result:
    """Refuse anything but a regular file, before it is opened; return its ``stat``.

    A symbolic link is followed; when ``root`` is given its target must lie inside ``root``.
    Raises ``error`` naming the path and what it is (missing, FIFO, device, socket, folder).
    """
    p = os.fspath(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise error(f"{p}: file not found") from None
    except OSError as exc:
        raise error(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        target = real(p)
        if root is not None and not is_within(target, root):
            raise error(f"{p}: symbolic link to {target}, outside the folder {root}")
        try:
            st = os.stat(p)
        except OSError:
            raise error(f"{p}: broken symbolic link (to {target})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: not a regular file ({file_kind(st.st_mode)})")
    return st


def file_kind(mode: int) -> str:
    """Human name of a file type from ``st_mode``: regular file, folder, FIFO, device ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO / named pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


# --------------------------------------------------------------------------- JSON

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in JSON ``text`` (strings ignored), without recursion."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_JSON_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is too large (overflows to infinity)")
    return value


def loads_json(text: str | bytes, what: str, *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH, allow_nonfinite: bool = False) -> Any:
    """Parse JSON with a size and depth limit and finite numbers only; ``ValueError`` names ``what``.

    ``NaN``, ``Infinity`` and numbers such as ``1e400`` are refused rather than read as
    non-finite floats, unless ``allow_nonfinite`` (free-form metadata such as an undefined
    validation AUC; the fields that are used must then be checked for finiteness).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what}: not UTF-8 text (byte {exc.start})") from None
    if len(text) > max_bytes:
        raise ValueError(f"{what}: {len(text):,} characters of JSON, above the limit of {max_bytes:,}")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what}: JSON nested {depth} levels deep, above the limit of {max_depth}")
    try:
        if allow_nonfinite:
            return json.loads(text)
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def read_user_text(path: str | os.PathLike[str], what: str, max_bytes: int,
                   error: type[BreastscreenError] = BreastscreenError) -> str:
    """The text of a user file (CSV, manifest ...): regular file, at most ``max_bytes``, UTF-8 or
    UTF-16/32 with a byte-order mark (:func:`decode_text`), no NUL bytes; ``error`` names the file."""
    st = check_regular_file(path, error)
    if st.st_size > max_bytes:
        raise error(f"{path}: {what} of {st.st_size:,} bytes, above the limit of {max_bytes:,}")
    try:
        with open(path, "rb") as fh:
            text = decode_text(fh.read(), f"{path}: {what}")
    except ValueError as exc:
        raise error(str(exc)) from None
    if "\0" in text:
        raise error(f"{path}: {what} holds NUL bytes (a binary file, or UTF-16 text without a byte-order mark?)")
    return text


def decode_text(data: bytes, what: str) -> str:
    """Text of a user file: UTF-8 (with or without BOM) or UTF-16/32 with a BOM; else a clear ``ValueError``.

    Latin-1 and other 8-bit encodings are refused (their bytes cannot be told apart from UTF-8
    reliably) with the position of the first byte that is not UTF-8.
    """
    import codecs

    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(enc)
            except UnicodeDecodeError as exc:
                raise ValueError(f"{what}: invalid {enc} text at byte {exc.start}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{what}: not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}); save the file as UTF-8"
        ) from None
