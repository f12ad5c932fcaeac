"""Checkpoints that rebuild their model: safetensors weights + a JSON header (name, config, metadata).

File layout (``.safetensors``, preferred): the tensors of ``model.state_dict()`` and, in the
safetensors header metadata, one key ``"breastscreen"`` holding JSON::

    {"format_version": 1, "model_name": "nyu-viewwise", "config": {...dataclass fields...},
     "spec": {"family": "multiview", "spec_version": 1, "scale": 0.125, ...},
     "package_version": "0.1.0", "metadata": {...user metadata...}}

``spec`` is the model family's typed spec (:mod:`breastscreen.specs`): preprocessing, input
builder parameters and output handling, so a checkpoint is self-describing. Checkpoints written
before specs existed get theirs migrated from ``metadata`` on load (:attr:`Checkpoint.spec`).

User metadata is free-form JSON; the documented keys are ``input_size``, ``channels``,
``normalisation``, ``views``, ``scale``, ``training_data`` and ``validation_metrics``.

``.pt``/``.pth`` files are read only with ``torch.load(weights_only=True)``, which refuses arbitrary
pickled objects (nothing in the file is executed). Accepted layouts: this package's dict
``{"breastscreen": header, "state_dict": {...}}``, or a plain state dict (also wrapped as
``{"state_dict": sd}`` or ``{"model": sd}``) together with ``model_name`` (+ optional ``config``
overrides and a conversion ``scheme``) given by the caller.

Loading is strict: missing keys, unexpected keys and shape mismatches are all listed in one
:class:`~breastscreen.errors.CheckpointError`. A checkpoint is user input, so before a model is
allocated the header is parsed with size and depth limits and its types checked, the config is
checked against the architecture's allowed ranges and built on the meta device to compare its
size and shapes with the stored tensors (:mod:`breastscreen.models.limits`), the documented
metadata keys are checked, and weights holding NaN or infinite values are refused.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from breastscreen import __version__
from breastscreen.errors import CheckpointError
from breastscreen.models.limits import check_config, check_metadata, check_size
from breastscreen.models.registry import config_to_dict, create_model, get_entry
from breastscreen.safety import loads_json
from breastscreen.utils import atomic_path

FORMAT_VERSION = 1
HEADER_KEY = "breastscreen"
MAX_HEADER_BYTES = 4 * 1024 * 1024
TORCH_SUFFIXES = (".pt", ".pth", ".p", ".ckpt", ".bin")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and everything stored with it."""

    model: nn.Module
    name: str
    config: Any
    metadata: dict[str, Any]
    sha256: str
    path: Path
    package_version: str | None = None
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Any:
        """The model's :mod:`spec <breastscreen.specs>`: stored in the header, or migrated from an
        older checkpoint's metadata; raises :class:`~breastscreen.specs.SpecError` when neither works."""
        from breastscreen.specs import spec_for_checkpoint

        return spec_for_checkpoint({**self.header, "metadata": self.metadata}, self.name, self.config, str(self.path))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _header(model: nn.Module, metadata: dict[str, Any] | None, spec: Any = None) -> dict[str, Any]:
    name = getattr(model, "model_name", None)
    if name is None or not hasattr(model, "config"):
        raise CheckpointError("only models made by create_model() can be saved (they carry model_name and config)")
    get_entry(name)
    header = {"format_version": FORMAT_VERSION, "model_name": name, "config": config_to_dict(model.config),
              "package_version": __version__, "metadata": dict(metadata or {})}
    if spec is not None:
        header["spec"] = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    try:
        json.dumps(header)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    return header


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None,
                    spec: Any = None) -> Path:
    """Write ``model``'s weights, name, config, ``spec`` and ``metadata`` to ``path`` atomically.

    ``.safetensors`` (recommended) or ``.pt``/``.pth`` (this package's weights-only dict layout).
    """
    path = Path(path)
    header = _header(model, metadata, spec)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={HEADER_KEY: json.dumps(header), "format": "pt"})
        elif path.suffix in TORCH_SUFFIXES:
            torch.save({HEADER_KEY: header, "state_dict": state}, tmp)
        else:
            raise CheckpointError(f"checkpoint path must end in .safetensors or one of {TORCH_SUFFIXES}, got {path.name!r}")
    return path


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The breastscreen header of a checkpoint file without loading its tensors (None if absent)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        if HEADER_KEY not in meta:
            return None
        try:
            # Metadata may hold NaN metrics (an AUC undefined on one class); the numbers that are
            # used (config, scale, patch size ...) are checked for finiteness by models.limits.
            header = loads_json(meta[HEADER_KEY], f"{path}: breastscreen header", max_bytes=MAX_HEADER_BYTES,
                                allow_nonfinite=True)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        return check_header(header, str(path))
    obj = _torch_load(path)
    header = obj.get(HEADER_KEY) if isinstance(obj, dict) else None
    return None if header is None else check_header(header, str(path))


def check_header(header: Any, where: str) -> dict[str, Any]:
    """Check the types of a breastscreen header (object with format_version, model_name, config ...)."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: breastscreen header must be a JSON object, got {type(header).__name__}")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: unsupported checkpoint format_version {str(header.get('format_version'))[:40]!r}")
    name = header.get("model_name")
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where}: breastscreen header lacks a model_name (text), got {str(name)[:40]!r}")
    for key in ("config", "metadata", "spec"):
        if key in header and not isinstance(header[key], dict):
            raise CheckpointError(f"{where}: header {key} must be a JSON object, got {type(header[key]).__name__}")
    if "package_version" in header and not isinstance(header["package_version"], (str, type(None))):
        raise CheckpointError(f"{where}: header package_version must be text")
    return header


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"{path}: refused to load - it declares more data than fits in memory") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, forged pickles and bad storages raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "truncated or damaged" if not isinstance(exc, pickle.UnpicklingError) else "not a plain tensor state dict"
        raise CheckpointError(
            f"{path}: refused to load - the file is {kind} (torch.load(weights_only=True) failed: {first[:200]}); "
            "arbitrary pickled objects are never unpickled"
        ) from None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and breastscreen header (or None) from a .safetensors or weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        header = read_header(path)
        try:
            return load_file(str(path), device="cpu"), header
        except Exception as exc:  # corrupt/truncated file: report it as a user-input problem
            raise CheckpointError(f"{path}: cannot read tensors ({exc})") from exc
    obj = _torch_load(path)
    header = None
    if isinstance(obj, dict) and HEADER_KEY in obj:
        header = check_header(obj[HEADER_KEY], str(path))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a dict of name -> tensor (a state dict), got {type(obj).__name__}")
    return obj, header


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise one CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:12]) + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "")

        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {show(shapes)}")
        raise CheckpointError(f"{source} does not match model {getattr(model, 'model_name', '?')!r}: " + "; ".join(parts))


def load_checkpoint(path_or_name: str | Path, model_name: str | None = None, config: dict[str, Any] | None = None,
                    scheme: str | None = None, device: str | torch.device = "cpu",
                    zoo_dir: str | Path | None = None) -> Checkpoint:
    """Rebuild a model from a checkpoint file or bundled-model name (strict key matching).

    For files without a breastscreen header (plain state dicts) give ``model_name`` (and
    ``config`` overrides, and ``scheme`` to rename keys from another implementation; see
    :mod:`breastscreen.models.convert`). The returned model is in eval mode.
    """
    from breastscreen.models.convert import convert_state_dict
    from breastscreen.models.hub import resolve_model_ref

    path = resolve_model_ref(path_or_name, zoo_dir=zoo_dir)
    state, header = read_state_dict(path)
    if header is not None:
        name = header["model_name"]
        if model_name is not None and model_name != name:
            raise CheckpointError(f"{path} holds a {name!r} model, not {model_name!r}")
        cfg = dict(header.get("config", {}))
        cfg.update(config or {})
        check_metadata(header.get("metadata", {}), str(path))
    else:
        if model_name is None:
            raise CheckpointError(f"{path} has no breastscreen header; give the model name (and config) it was trained with")
        name, cfg = model_name, dict(config or {})
    try:
        get_entry(name)
    except KeyError as exc:
        raise CheckpointError(f"{path}: {exc.args[0]}") from None
    if scheme is not None:
        state = convert_state_dict(state, scheme)
    # Everything from the file is checked before a real model is allocated.
    check_config(name, cfg, str(path))
    check_size(name, cfg, state, str(path))
    check_finite(state, str(path))
    try:
        model = create_model(name, **cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r} from its config: {exc}") from exc
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return Checkpoint(model=model, name=name, config=model.config,
                      metadata=dict((header or {}).get("metadata", {})), sha256=file_sha256(path), path=path,
                      package_version=(header or {}).get("package_version"), header=dict(header or {}))


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinite values (a diverged or damaged checkpoint), naming them."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" ... (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(f"{where}: weights hold NaN or infinite values ({len(bad)} tensor(s): {shown}); "
                              "the training diverged or the file is damaged")


def load_model(path_or_name: str | Path, **kwargs: Any) -> nn.Module:
    """Shortcut: ``load_checkpoint(...).model``."""
    return load_checkpoint(path_or_name, **kwargs).model
