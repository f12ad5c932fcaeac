"""Load ImageNet-style backbone weights from a local file into a patch classifier.

``load_pretrained_backbone(model, path, mapping=...)``:

1. reads a ``.safetensors`` file or a weights-only torch file (``torch.load(weights_only=True)``;
   ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped);
2. renames keys with a conversion scheme (``torchvision-densenet``, ``torchvision-resnet``,
   ``torchvision-vgg``, ``identity``; ``auto`` picks by model type; tables in
   :mod:`breastscreen.models.convert`), dropping the keys the scheme documents as unused
   (VGG's fully connected ``classifier.*``);
3. adapts the first convolution when the input channels differ: RGB kernels are averaged
   (``first_conv="mean"``, default) or summed (``"sum"``; exactly equivalent for a grey image that
   would have been repeated to RGB) into 1 channel; 1-channel kernels are repeated to C channels
   and divided by C;
4. drops the classifier head (``head.*``) when its shape differs from the model's (e.g. 1000
   ImageNet classes vs 4 patch classes); the model keeps its own initialisation there;
5. is strict about everything else: missing keys (except BN ``num_batches_tracked`` counters and
   the head, which keep the model's values),
   unexpected keys and shape mismatches raise one CheckpointError listing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from breastscreen.errors import CheckpointError
from breastscreen.models.checkpoint import check_state_dict, read_state_dict
from breastscreen.models.convert import convert_state_dict, dropped_keys


@dataclass
class PretrainedReport:
    """What load_pretrained_backbone did."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept_from_model: list[str] = field(default_factory=list)


def _auto_scheme(model: nn.Module) -> str:
    from breastscreen.models.densenet import DenseNet
    from breastscreen.models.resnet import ResNet
    from breastscreen.models.vgg import VGG

    for cls, scheme in ((DenseNet, "torchvision-densenet"), (ResNet, "torchvision-resnet"), (VGG, "torchvision-vgg")):
        if isinstance(model, cls):
            return scheme
    raise CheckpointError(f"cannot pick a mapping for {type(model).__name__}; pass mapping= explicitly")


def _first_conv_key(model: nn.Module) -> str:
    for key in ("stem.conv.weight", "stages.0.0.conv.weight", "first_conv.weight"):
        if key in model.state_dict():
            return key
    raise CheckpointError(f"{type(model).__name__} has no known first convolution")


def load_pretrained_backbone(model: nn.Module, path: str | Path | dict[str, torch.Tensor],
                             mapping: str = "auto", first_conv: str = "mean") -> PretrainedReport:
    """Load backbone weights from ``path`` (or a state dict) into ``model``; see the module docstring."""
    if first_conv not in ("mean", "sum"):
        raise ValueError(f"first_conv must be 'mean' or 'sum', got {first_conv!r}")
    source = "state dict" if isinstance(path, dict) else str(path)
    sd = dict(path) if isinstance(path, dict) else read_state_dict(path)[0]
    scheme = _auto_scheme(model) if mapping == "auto" else mapping
    report = PretrainedReport(dropped=dropped_keys(sd, scheme))
    kwargs = {}
    if scheme == "torchvision-vgg":
        kwargs["vgg_stage_convs"] = tuple(model.config.stage_convs)
    mapped = convert_state_dict(sd, scheme, **kwargs)
    target = model.state_dict()

    conv_key = _first_conv_key(model)
    if conv_key in mapped and mapped[conv_key].dim() == 4 and mapped[conv_key].shape[1] != target[conv_key].shape[1]:
        w, c_out = mapped[conv_key], target[conv_key].shape[1]
        if c_out == 1:
            w = w.sum(dim=1, keepdim=True) if first_conv == "sum" else w.mean(dim=1, keepdim=True)
        elif w.shape[1] == 1:
            w = w.repeat(1, c_out, 1, 1) / c_out
        else:
            raise CheckpointError(f"{source}: first conv has {w.shape[1]} input channels, the model {c_out}; "
                                  "only 3->1 and 1->C are adapted")
        mapped[conv_key] = w
        report.adapted.append(conv_key)

    for key in [k for k in mapped if k.startswith("head.")]:
        if key in target and mapped[key].shape != target[key].shape:
            report.dropped.extend(k for k in mapped if k.startswith("head.") and k not in report.dropped)
            mapped = {k: v for k, v in mapped.items() if not k.startswith("head.")}
            break

    for key in target:
        # A backbone file may lack the head (or had it dropped): the model keeps its own.
        if key not in mapped and (key.endswith("num_batches_tracked") or key.startswith("head.")):
            mapped[key] = target[key]
            report.kept_from_model.append(key)
    check_state_dict(model, mapped, source)
    model.load_state_dict(mapped, strict=True)
    report.loaded = sorted(k for k in mapped if k not in report.kept_from_model)
    return report
