"""Bundled models: resolve a model name or a path to a checkpoint file.

Bundled checkpoints live in a zoo folder (default: the package's ``breastscreen/zoo``; override
with the ``zoo_dir`` argument or the ``BREASTSCREEN_ZOO`` environment variable). The folder holds
``index.json``::

    {"models": {"<name>": {"file": "<name>.safetensors", "card": "<name>.md",
                           "summary": "one line", "architecture": "<registry name>"}}}

plus the files it names. A model card is Markdown; its first non-heading paragraph is the summary
shown when ``summary`` is absent.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from breastscreen.errors import CheckpointError

ENV_VAR = "BREASTSCREEN_ZOO"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".p", ".ckpt", ".bin")


@dataclass(frozen=True)
class BundledModel:
    """One entry of a zoo index."""

    name: str
    path: Path
    card_path: Path | None
    summary: str
    architecture: str | None


def zoo_directory(zoo_dir: str | Path | None = None) -> Path:
    """The zoo folder: argument, else $BREASTSCREEN_ZOO, else the package's zoo folder."""
    if zoo_dir is not None:
        return Path(zoo_dir)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "zoo"


def _card_summary(card: Path) -> str:
    if not card.is_file():
        return ""
    para: list[str] = []
    for line in card.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and not para):
            continue
        if not s:
            break
        para.append(s)
    return " ".join(para)


def list_bundled(zoo_dir: str | Path | None = None) -> list[BundledModel]:
    """Entries of the zoo index (empty when the folder has no index.json)."""
    root = zoo_directory(zoo_dir)
    index = root / "index.json"
    if not index.is_file():
        return []
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc})") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise CheckpointError(f"{index}: expected {{\"models\": {{name: {{\"file\": ...}}}}}}")
    out = []
    for name, entry in sorted(models.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise CheckpointError(f"{index}: entry {name!r} needs a \"file\" string")
        card = root / entry["card"] if isinstance(entry.get("card"), str) else None
        summary = entry.get("summary") or (_card_summary(card) if card else "")
        out.append(BundledModel(name, root / entry["file"], card, summary, entry.get("architecture")))
    return out


def resolve_model_ref(name_or_path: str | Path, zoo_dir: str | Path | None = None) -> Path:
    """A checkpoint path for a bundled-model name or an existing file path.

    Unknown names raise :class:`CheckpointError` suggesting the closest bundled names.
    """
    ref = str(name_or_path)
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    looks_like_path = isinstance(name_or_path, Path) or os.sep in ref or "/" in ref or p.suffix in CHECKPOINT_SUFFIXES
    bundled = {b.name: b for b in list_bundled(zoo_dir)}
    if ref in bundled:
        path = bundled[ref].path
        if not path.is_file():
            raise CheckpointError(f"bundled model {ref!r} is listed but its file {path} is missing")
        return path
    if looks_like_path:
        raise CheckpointError(f"checkpoint file not found: {p}")
    close = difflib.get_close_matches(ref, list(bundled), n=3, cutoff=0.4)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(sorted(bundled)) or "none bundled"
    raise CheckpointError(f"{ref!r} is neither a checkpoint file nor a bundled model{hint} (bundled: {known})")


def read_model_card(name: str, zoo_dir: str | Path | None = None) -> str:
    """The Markdown model card of a bundled model ('' when it has none)."""
    for b in list_bundled(zoo_dir):
        if b.name == name:
            return b.card_path.read_text(encoding="utf-8") if b.card_path and b.card_path.is_file() else ""
    raise CheckpointError(f"no bundled model named {name!r}")
