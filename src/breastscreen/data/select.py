"""Subsets of a manifest: ``breastscreen manifest select``.

Researchers cut manifests all the time (one cross-validation fold, one device, a list of
exam ids). A hand-made subset written to another folder breaks the relative image paths, and
one written beside the original lacks its ``<stem>.roots.json`` sidecar, so ``read_manifest``
refuses its paths. Selecting here reads the manifest with its own roots and writes the subset
with :func:`~breastscreen.data.manifest.write_manifest`, which makes paths relative to the new
file and writes the sidecar it needs.

A condition ``FIELD=VALUE`` tests a field of the exam's manifest line; ``FIELD`` is dotted for
nested fields (``meta.fold``, ``labels.U.malignant``) and ``VALUE`` may list alternatives
separated by commas (so a value that itself contains a comma cannot be selected this way; use
``--ids``). A number matches by value (``meta.fold=4`` matches ``4`` and ``4.0``), a boolean by
``true``/``false`` in any case, ``null`` a JSON null, anything else by its text; a list field
matches when one of its items does. Several conditions must all hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from breastscreen.data.manifest import exam_to_dict
from breastscreen.data.types import Exam
from breastscreen.errors import ManifestError

_MISSING = object()


@dataclass(frozen=True)
class Condition:
    """One ``FIELD=VALUE[,VALUE...]`` test on an exam's manifest line."""

    field: tuple[str, ...]
    values: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> "Condition":
        """Parse ``FIELD=VALUE[,VALUE...]``; a malformed condition is a one-line error."""
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ManifestError(f"--where {text!r}: expected FIELD=VALUE, e.g. meta.fold=4 or modality=US")
        return cls(tuple(key.split(".")), frozenset(v.strip() for v in value.split(",")))

    @property
    def name(self) -> str:
        """The dotted field name."""
        return ".".join(self.field)

    def lookup(self, line: dict[str, Any]) -> Any:
        """The field's value in ``line``, or a sentinel when it is absent."""
        node: Any = line
        for part in self.field:
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def matches(self, line: dict[str, Any]) -> bool:
        """Whether ``line`` has the field with one of the values (a list: one of its items)."""
        value = self.lookup(line)
        if value is _MISSING:
            return False
        items = value if isinstance(value, list) else [value]
        return any(_equal(item, want) for item in items for want in self.values)


def _equal(value: Any, text: str) -> bool:
    """Whether a manifest value equals the text a user typed (see the module docstring)."""
    if isinstance(value, bool):
        return text.lower() == ("true" if value else "false")
    if value is None:
        return text.lower() == "null"
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, str):
        return value == text
    return json.dumps(value, sort_keys=True) == text


MAX_IDS_BYTES = 64 * 1024 * 1024


def read_ids(path: str | Path) -> list[str]:
    """Exam ids from a text file, one per line; blank lines and lines starting with ``#`` are skipped.

    Surrounding whitespace is ignored; a ``#`` inside an id is part of it. UTF-8, or UTF-16/32
    with a byte-order mark (a UTF-8 one is dropped), as every user text file.
    """
    from breastscreen.safety import read_user_text

    text = read_user_text(path, "exam id list", MAX_IDS_BYTES, ManifestError)
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]


@dataclass
class Selection:
    """The exams kept, and what the user should hear about the ones that were not."""

    exams: list[Exam]
    unknown_ids: list[str]


def select_exams(exams: Sequence[Exam], base: Path, where: Sequence[Condition] = (),
                 ids: Sequence[str] | None = None, exclude: bool = False) -> Selection:
    """The exams matching every condition and (when given) listed in ``ids``; ``exclude`` inverts.

    A condition whose field no exam has is an error (almost always a misspelt field), as is a
    selection that keeps nothing.
    """
    lines = [exam_to_dict(e, base) for e in exams]
    for cond in where:
        if not any(cond.lookup(line) is not _MISSING for line in lines):
            raise ManifestError(f"--where {cond.name}=...: no exam has the field {cond.name!r}")
    wanted = set(ids) if ids is not None else None
    keep = []
    for exam, line in zip(exams, lines):
        hit = all(c.matches(line) for c in where) and (wanted is None or exam.exam_id in wanted)
        if hit != exclude:
            keep.append(exam)
    known = {e.exam_id for e in exams}
    unknown = [i for i in (ids or []) if i not in known]
    if not keep:
        why = ""
        if unknown:
            why = f" ({len(unknown)} listed id(s) are not in the manifest, e.g. {', '.join(map(repr, unknown[:3]))})"
        raise ManifestError(f"no exam was selected{why}; nothing written")
    return Selection(keep, unknown)
