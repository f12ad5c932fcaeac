"""Corpus family "checkpoint": forged checkpoint files through `models convert` (which loads them) and `models info`.

Headers of the wrong JSON type, out-of-range configs (``num_classes`` 2e9, ``growth_rate`` 1e5),
bad metadata (``patch_size`` 100000, ``scale`` 'abc'), NaN weights, truncated files and
malicious pickles must all end in one named error (exit 2) before any large allocation, and no
pickled code may run.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from hardening_helpers import Case, bs, expect

CASES: list[Case] = []
MODEL = "densenet-tiny"


def _base() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from breastscreen.models import create_model
    from breastscreen.models.registry import config_to_dict

    torch.manual_seed(0)
    model = create_model(MODEL)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    header = {"format_version": 1, "model_name": MODEL, "config": config_to_dict(model.config),
              "package_version": "0.1.0", "metadata": {"scale": 0.125, "patch_size": 32, "classes":
                                                       ["malignant", "benign", "outside", "negative"]}}
    return state, header


def _write_st(path: Path, state: dict[str, torch.Tensor], header_text: str | None) -> Path:
    meta = {"format": "pt"}
    if header_text is not None:
        meta["breastscreen"] = header_text
    save_file(state, str(path), metadata=meta)
    return path


def _run(box: Path, make: Callable[[Path], Path], pattern: str, code: int, command: str) -> None:
    ck = make(box)
    if command == "info":
        res = bs("models", "info", ck)
    else:
        res = bs("models", "convert", ck, box / "out.safetensors")
    expect(res, code, pattern)
    assert not Path("/tmp/bs-corpus-pwned").exists()
    if code != 0:
        assert not (box / "out.safetensors").exists()


def ck(name: str, make: Callable[[Path], Path], pattern: str, code: int = 2, command: str = "convert") -> None:
    CASES.append(Case("checkpoint", name, "error" if code else "accepted",
                      lambda box: _run(box, make, pattern, code, command)))


def header(edit: Callable[[dict[str, Any]], Any] | None = None, text: str | None = None,
           state_edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Callable[[Path], Path]:
    """A .safetensors file whose header is the valid one changed by ``edit`` (or replaced by ``text``)."""
    def make(box: Path) -> Path:
        state, head = _base()
        if edit is not None:
            out = edit(head)
            head = head if out is None else out
        if state_edit is not None:
            state_edit(state)
        return _write_st(box / "ck.safetensors", state, text if text is not None else json.dumps(head))
    return make


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(head: dict[str, Any]) -> None:
        node = head
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


_DELETE = object()

ck("valid", header(), "densenet-tiny with spec", code=0)
ck("valid-info", header(), "model: densenet-tiny", code=0, command="info")
ck("header-list", header(text="[1, 2]"), "header must be a JSON object, got list")
ck("header-string", header(text='"text"'), "header must be a JSON object, got str")
ck("header-number", header(text="3"), "header must be a JSON object, got int")
ck("header-invalid-json", header(text="{"), "not valid JSON")
ck("header-deep", header(text='{"a": ' * 5000 + "1" + "}" * 5000), "nested 5000 levels deep")
ck("header-huge", header(text=json.dumps({"x": "a" * (5 * 1024 * 1024)})), "above the limit")
ck("header-nan-format-version", header(text='{"format_version": NaN}'), "unsupported checkpoint format_version 'nan'")
ck("header-nan-metric-ok", header(_set("metadata.validation_metrics", {"val_auc_benign": float("nan")})),
   "densenet-tiny with spec", code=0)
ck("header-nan-config", header(_set("config.drop_rate", float("nan"))), "drop_rate must be a finite number")
ck("header-inf-scale", header(_set("metadata.scale", float("inf"))), "scale must be a number")
ck("header-info-list", header(text="[1]"), "must be a JSON object", command="info")
ck("no-model-name", header(_set("model_name", _DELETE)), "lacks a model_name")
ck("model-name-number", header(_set("model_name", 7)), "lacks a model_name")
ck("model-name-unknown", header(_set("model_name", "resnet-9000")), "unknown model 'resnet-9000'")
ck("format-version-99", header(_set("format_version", 99)), "unsupported checkpoint format_version '99'")
ck("config-list", header(_set("config", [1, 2])), "config must be a JSON object")
for label, key, value, msg in [
    ("num-classes-2e9", "num_classes", 2_000_000_000, r"num_classes must be in \[1, 1000\]"),
    ("num-classes-negative", "num_classes", -1, "num_classes must be in"),
    ("num-classes-text", "num_classes", "abc", "num_classes must be an integer"),
    ("num-classes-float", "num_classes", 2.5, "num_classes must be an integer"),
    ("num-classes-bool", "num_classes", True, "num_classes must be an integer"),
    ("growth-rate-1e5", "growth_rate", 100_000, r"growth_rate must be in \[1, 512\]"),
    ("block-config-huge", "block_config", [100_000], r"block_config must be in \[1, 256\]"),
    ("block-config-text", "block_config", "abc", "block_config must be a list"),
    ("block-config-long", "block_config", [1] * 100, "at most 64 items"),
    ("drop-rate-5", "drop_rate", 5.0, r"drop_rate must be in \[0, 0.99\]"),
    ("compression-text", "compression", "half", "compression must be a finite number"),
    ("in-channels-zero", "in_channels", 0, "in_channels must be in"),
    ("unknown-field", "colour", 1, "has no config field"),
    ("grown-but-shapes-differ", "growth_rate", 16, "does not match model"),
]:
    ck(f"config-{label}", header(_set(f"config.{key}", value)), msg)
for label, key, value, msg in [
    ("patch-size-100000", "patch_size", 100_000, r"patch_size must be an integer in \[1, 4096\]"),
    ("patch-size-negative", "patch_size", -5, "patch_size must be an integer"),
    ("patch-size-text", "patch_size", "abc", "patch_size must be an integer"),
    ("patch-size-float", "patch_size", 2.5, "patch_size must be an integer"),
    ("scale-zero", "scale", 0, "scale must be a number"),
    ("scale-negative", "scale", -1, "scale must be a number"),
    ("scale-text", "scale", "abc", "scale must be a number"),
    ("scale-huge", "scale", 1e9, "scale must be a number"),
    ("stride-beyond-patch", "patch_stride", 64, "exceeds patch_size"),
    ("classes-not-list", "classes", "malignant", "classes must be a list"),
    ("patch-model-number", "patch_model", 5, "patch_model must be"),
]:
    ck(f"metadata-{label}", header(_set(f"metadata.{key}", value)), msg)
ck("metadata-list", header(_set("metadata", [1])), "metadata must be a JSON object")
ck("spec-unknown-family", header(_set("spec", {"family": "nope"})), "unknown family 'nope'")
ck("spec-bad-scale", header(_set("spec", {"family": "patch", "scale": "abc", "patch_size": 32})), "scale")
ck("spec-list", header(_set("spec", [1])), "spec must be a JSON object")


def _poison(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)
        state[key].view(-1)[3] = value
    return edit


ck("weights-nan", header(state_edit=_poison(float("nan"))), "NaN or infinite values")
ck("weights-inf", header(state_edit=_poison(float("inf"))), "NaN or infinite values")
ck("weights-missing-key", header(state_edit=lambda s: s.pop(next(iter(s)))), "missing keys")
ck("weights-extra-key", header(state_edit=lambda s: s.update(extra=torch.zeros(2))), "unexpected keys")


def _truncated_st(box: Path) -> Path:
    path = header()(box)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _declared_beyond(box: Path) -> Path:
    """A safetensors header whose tensor offsets point past the end of the file."""
    path = header()(box)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8:8 + n])
    key = next(k for k in head if k != "__metadata__")
    head[key]["data_offsets"][1] = 10 ** 12
    text = json.dumps(head).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    return path


ck("safetensors-truncated", _truncated_st, "not a readable safetensors file|cannot read tensors")
ck("safetensors-offsets-beyond", _declared_beyond, "not a readable safetensors file|cannot read tensors")


def _bytes_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(box: Path) -> Path:
        (box / name).write_bytes(data)
        return box / name
    return make


ck("safetensors-zero-bytes", _bytes_file("ck.safetensors", b""), "not a readable safetensors file")
ck("safetensors-random", _bytes_file("ck.safetensors", os.urandom(4096)), "not a readable safetensors file")
ck("safetensors-no-header", lambda box: _write_st(box / "ck.safetensors", _base()[0], None),
   "no breastscreen header; give the model name")


def _pt(box: Path, obj: Any, name: str = "ck.pt") -> Path:
    path = box / name
    torch.save(obj, path)
    return path


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, ("touch /tmp/bs-corpus-pwned",))


def _pt_truncated(box: Path) -> Path:
    state, head = _base()
    path = _pt(box, {"breastscreen": head, "state_dict": state})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _pt_evil(box: Path) -> Path:
    path = box / "ck.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(_Evil(), protocol=2))
        zf.writestr("archive/version", "3\n")
    return path


def _pt_evil_plain(box: Path) -> Path:
    path = box / "ck.pt"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    return path


ck("pt-valid", lambda box: _pt(box, {"breastscreen": _base()[1], "state_dict": _base()[0]}), "densenet-tiny with spec",
   code=0)
ck("pt-truncated-zip", _pt_truncated, "truncated or damaged")
ck("pt-malicious-zip", _pt_evil, "refused to load")
ck("pt-malicious-legacy", _pt_evil_plain, "refused to load")
ck("pt-random", _bytes_file("ck.pt", os.urandom(2048)), "refused to load")
ck("pt-header-list", lambda box: _pt(box, {"breastscreen": [1], "state_dict": _base()[0]}), "must be a JSON object")
ck("pt-no-header", lambda box: _pt(box, _base()[0]), "no breastscreen header")
ck("pt-not-tensors", lambda box: _pt(box, {"state_dict": {"a": 1}}), "expected a dict of name -> tensor|no breastscreen")
