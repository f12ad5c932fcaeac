"""Key-name conversion from other implementations' state dicts to this package's module names.

``convert_state_dict(sd, scheme)`` returns a new dict with renamed (and where documented, re-ordered)
tensors; keys that match no rule raise an error listing them, except keys a scheme documents as
dropped. Mapping tables (regular expression -> replacement, first match wins):

``nyu-viewwise`` - NYU ``breast_cancer_classifier`` SplitBreastModel (view-wise, image-only or
image-and-heatmaps) -> ``nyu-viewwise``:
    four_view_resnet.{cc,mlo}.first_conv.*                 -> columns.{CC,MLO}.first_conv.*
    four_view_resnet.{cc,mlo}.layer_list.I.J.{bn1,conv1,bn2,conv2}.* -> columns.A.layers.I.J.*
    four_view_resnet.{cc,mlo}.layer_list.I.J.downsample.0.* -> columns.A.layers.I.J.shortcut.*
    four_view_resnet.{cc,mlo}.final_bn.*                   -> columns.A.final_bn.*
    fc1_{cc,mlo}.*                                          -> hidden.{CC,MLO}.*
    output_layer_{cc,mlo}.fc_layer.*                        -> output.{CC,MLO}.*
  The reference orders its 4 output labels (left_benign, right_benign, left_malignant,
  right_malignant); rows of the output layer are permuted to BREAST_LABELS order
  (left_benign, left_malignant, right_benign, right_malignant).
``nyu-imagewise`` - NYU ImageBreastModel -> ``nyu-imagewise``: columns as above;
    fc1_{lcc,rcc,lmlo,rmlo}.* -> hidden.{L_CC,R_CC,L_MLO,R_MLO}.*;
    output_layer_X.fc_layer.* -> output.X.* keeping the first 2 labels x 2 classes (benign,
    malignant), as the reference's image-level predictions do.
``torchvision-densenet`` - torchvision-style DenseNet names (``features.conv0``, ``features.norm0``,
    ``features.denseblockB.denselayerL.{norm1,conv1,norm2,conv2}`` also in the legacy
    ``norm.1``/``conv.1`` spelling, ``features.transitionT.{norm,conv}``, ``features.norm5``,
    ``classifier``) -> ``stem.conv``, ``stem.norm``, ``blocks.B-1.layers.L-1.*``,
    ``transitions.T-1.*``, ``final_norm``, ``head.fc``.
``torchvision-resnet`` - ``conv1``, ``bn1``, ``layerI.J.{conv,bn}K``, ``layerI.J.downsample.{0,1}``,
    ``fc`` -> ``stem.conv``, ``stem.bn``, ``layers.I-1.J.*``, ``layers.I-1.J.downsample.{conv,bn}``,
    ``head.fc``.
``torchvision-vgg`` - ``features.N`` (N = position in torchvision's flat Sequential): the k-th
    convolution (4-D weight) maps to the k-th conv of ``stages`` in order, a batch norm directly
    after it to its ``.bn``; the fully connected ``classifier.*`` layers are dropped (our VGG uses
    global average pooling; see DROPPED).
``identity`` - keys unchanged.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from breastscreen.errors import CheckpointError

SCHEMES: tuple[str, ...] = ("identity", "nyu-viewwise", "nyu-imagewise", "torchvision-densenet",
                            "torchvision-resnet", "torchvision-vgg")

# Keys documented as having no counterpart (they are dropped, and reported by the loaders).
DROPPED: dict[str, str] = {"torchvision-vgg": r"^classifier\."}

_ANGLE = {"cc": "CC", "mlo": "MLO"}
_VIEW = {"lcc": "L_CC", "rcc": "R_CC", "lmlo": "L_MLO", "rmlo": "R_MLO"}
# NYU label order -> ours: our row i takes NYU row _NYU_LABEL_PERM[i].
_NYU_LABEL_PERM = (0, 2, 1, 3)


def _column_rules() -> list[tuple[str, Callable[[re.Match], str]]]:
    pre = r"^four_view_resnet\.(cc|mlo)\."
    return [
        (pre + r"first_conv\.(.+)$", lambda m: f"columns.{_ANGLE[m[1]]}.first_conv.{m[2]}"),
        (pre + r"layer_list\.(\d+)\.(\d+)\.downsample\.0\.(.+)$",
         lambda m: f"columns.{_ANGLE[m[1]]}.layers.{m[2]}.{m[3]}.shortcut.{m[4]}"),
        (pre + r"layer_list\.(\d+)\.(\d+)\.((?:bn|conv)[12])\.(.+)$",
         lambda m: f"columns.{_ANGLE[m[1]]}.layers.{m[2]}.{m[3]}.{m[4]}.{m[5]}"),
        (pre + r"final_bn\.(.+)$", lambda m: f"columns.{_ANGLE[m[1]]}.final_bn.{m[2]}"),
    ]


def _rules(scheme: str) -> list[tuple[str, Callable[[re.Match], str]]]:
    if scheme == "nyu-viewwise":
        return _column_rules() + [
            (r"^fc1_(cc|mlo)\.(.+)$", lambda m: f"hidden.{_ANGLE[m[1]]}.{m[2]}"),
            (r"^output_layer_(cc|mlo)\.fc_layer\.(.+)$", lambda m: f"output.{_ANGLE[m[1]]}.{m[2]}"),
        ]
    if scheme == "nyu-imagewise":
        return _column_rules() + [
            (r"^fc1_(lcc|rcc|lmlo|rmlo)\.(.+)$", lambda m: f"hidden.{_VIEW[m[1]]}.{m[2]}"),
            (r"^output_layer_(lcc|rcc|lmlo|rmlo)\.fc_layer\.(.+)$", lambda m: f"output.{_VIEW[m[1]]}.{m[2]}"),
        ]
    if scheme == "torchvision-densenet":
        return [
            (r"^features\.conv0\.(.+)$", lambda m: f"stem.conv.{m[1]}"),
            (r"^features\.norm0\.(.+)$", lambda m: f"stem.norm.{m[1]}"),
            (r"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)\.?([12])\.(.+)$",
             lambda m: f"blocks.{int(m[1]) - 1}.layers.{int(m[2]) - 1}.{m[3]}{m[4]}.{m[5]}"),
            (r"^features\.transition(\d+)\.(norm|conv)\.(.+)$",
             lambda m: f"transitions.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
            (r"^features\.norm5\.(.+)$", lambda m: f"final_norm.{m[1]}"),
            (r"^classifier\.(.+)$", lambda m: f"head.fc.{m[1]}"),
        ]
    if scheme == "torchvision-resnet":
        return [
            (r"^conv1\.(.+)$", lambda m: f"stem.conv.{m[1]}"),
            (r"^bn1\.(.+)$", lambda m: f"stem.bn.{m[1]}"),
            (r"^layer(\d+)\.(\d+)\.downsample\.0\.(.+)$", lambda m: f"layers.{int(m[1]) - 1}.{m[2]}.downsample.conv.{m[3]}"),
            (r"^layer(\d+)\.(\d+)\.downsample\.1\.(.+)$", lambda m: f"layers.{int(m[1]) - 1}.{m[2]}.downsample.bn.{m[3]}"),
            (r"^layer(\d+)\.(\d+)\.((?:conv|bn)[123])\.(.+)$", lambda m: f"layers.{int(m[1]) - 1}.{m[2]}.{m[3]}.{m[4]}"),
            (r"^fc\.(.+)$", lambda m: f"head.fc.{m[1]}"),
        ]
    if scheme == "identity":
        return [(r"^(.+)$", lambda m: m[1])]
    raise CheckpointError(f"unknown conversion scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")


def _vgg_names(sd: dict[str, torch.Tensor], stage_convs: tuple[int, ...]) -> dict[int, str]:
    """torchvision VGG ``features`` index -> our module prefix."""
    indices = sorted({int(m[1]) for k in sd if (m := re.match(r"^features\.(\d+)\.", k))})
    slots = [(s, j) for s, n in enumerate(stage_convs) for j in range(n)]
    names, k, last_conv = {}, 0, None
    for idx in indices:
        w = sd.get(f"features.{idx}.weight")
        if w is not None and w.dim() == 4:
            if k >= len(slots):
                raise CheckpointError(f"VGG state dict has more convolutions than stages {stage_convs} hold")
            s, j = slots[k]
            names[idx] = f"stages.{s}.{j}.conv"
            last_conv, k = (s, j), k + 1
        elif f"features.{idx}.running_mean" in sd and last_conv is not None:
            names[idx] = f"stages.{last_conv[0]}.{last_conv[1]}.bn"
        else:
            raise CheckpointError(f"cannot place VGG key features.{idx}.* (neither a conv nor a batch norm after one)")
    if k != len(slots):
        raise CheckpointError(f"VGG state dict has {k} convolutions, the model expects {len(slots)} ({stage_convs})")
    return names


def convert_state_dict(sd: dict[str, torch.Tensor], scheme: str,
                       vgg_stage_convs: tuple[int, ...] = (2, 2, 3, 3, 3)) -> dict[str, torch.Tensor]:
    """Rename ``sd``'s keys from ``scheme`` to this package's names (see the module docstring).

    Keys that match no rule raise :class:`CheckpointError` listing them; keys in ``DROPPED`` for the
    scheme are left out silently (use :func:`dropped_keys` to report them).
    """
    drop = DROPPED.get(scheme)
    out: dict[str, torch.Tensor] = {}
    unmatched = []
    if scheme == "torchvision-vgg":
        names = _vgg_names({k: v for k, v in sd.items() if not (drop and re.match(drop, k))}, vgg_stage_convs)
        for key, value in sd.items():
            if drop and re.match(drop, key):
                continue
            m = re.match(r"^features\.(\d+)\.(.+)$", key)
            if m is None:
                unmatched.append(key)
                continue
            out[f"{names[int(m[1])]}.{m[2]}"] = value
    else:
        rules = [(re.compile(p), f) for p, f in _rules(scheme)]
        for key, value in sd.items():
            if drop and re.match(drop, key):
                continue
            for pattern, fn in rules:
                m = pattern.match(key)
                if m:
                    new = fn(m)
                    if new in out:
                        raise CheckpointError(f"two source keys map to {new!r} under scheme {scheme!r}")
                    out[new] = value
                    break
            else:
                unmatched.append(key)
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} key(s) do not fit conversion scheme {scheme!r}: "
                              f"{', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}")
    if scheme == "nyu-viewwise":
        for a in ("CC", "MLO"):
            for p in ("weight", "bias"):
                key = f"output.{a}.{p}"
                if key in out and out[key].shape[0] == 8:
                    t = out[key].reshape(4, 2, *out[key].shape[1:])
                    out[key] = t[list(_NYU_LABEL_PERM)].reshape(out[key].shape).clone()
    if scheme == "nyu-imagewise":
        for key in [k for k in out if k.startswith("output.")]:
            if out[key].shape[0] == 8:
                out[key] = out[key][:4].clone()
    return out


def dropped_keys(sd: dict[str, torch.Tensor], scheme: str) -> list[str]:
    """Keys of ``sd`` that ``scheme`` documents as having no counterpart."""
    drop = DROPPED.get(scheme)
    return sorted(k for k in sd if drop and re.match(drop, k))
