"""How much could exact heatmaps gain by computing early DenseNet-121 layers once per image? (issue 13)

The "faithful middle ground" of issue 13: run the first layers of the patch network once over the
whole image and give each 256-pixel window a crop of those features, recomputing only the cells
that the window's own zero padding changes. This script measures, for each prefix of the network
(stem, + dense block 1, + transition 1, ...), with no timing and nothing assumed:

* ``mac_share``: the prefix's share of one window's multiply-accumulates (counted by hooks on
  every convolution and linear layer);
* ``cumulative_stride`` and ``phases``: the heatmapper places windows with Wu et al.'s stride
  algorithm (:func:`breastscreen.inference.strides.window_offsets`: stride 70 shortened so that the
  last window ends at the edge, i.e. 67-69 pixels); a window's feature grid lines up with a
  whole-image feature grid only for origins equal modulo the cumulative stride, so each distinct
  pair of (row, column) origins modulo the stride needs its own whole-image pass;
* ``exact_cell_fraction``: the fraction of a window's prefix cells (all channels) that are equal,
  to float32 rounding, to the matching cells of the whole-image features (measured on a random
  image through the real network with random weights; the rest are what the window's padding
  changed and must be recomputed per window);
* ``speedup_bound`` per view shape: the exact-mode speed-up if the equal cells were free, the
  others cost their share of the prefix (a lower bound on their real cost, which needs a halo),
  and the phases' whole-image passes cost ``row_phases * column_phases * prefix / overlap`` per
  window, ``overlap`` being windows x window area / image area (every window counted, which
  favours sharing: the heatmapper skips background windows).

Usage: ``python benchmarks/shared_layers_bound.py --out benchmarks/results/shared_layers_bound.json``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from breastscreen.models.registry import create_model

WINDOW = 256
STRIDE = 70
# the benchmark's real view (NYU sample L-CC after the crop) and the NYU CC / MLO sizes of Wu et al. 2019
VIEW_SHAPES = {"nyu_sample_L-CC_cropped": (2023, 763), "nyu_cc_2677x1942": (2677, 1942),
               "nyu_mlo_2974x1748": (2974, 1748)}


def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every convolution and linear layer for input ``x``, by module name."""
    macs: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
                macs[name] = int(out.numel() // out.shape[0]) * k
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            def lin_hook(m: nn.Linear, _inp: Any, _out: torch.Tensor, name: str = name) -> None:
                macs[name] = m.in_features * m.out_features
            hooks.append(mod.register_forward_hook(lin_hook))
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return macs


def prefixes(model: nn.Module) -> list[tuple[str, list[nn.Module], tuple[str, ...], int]]:
    """(name, modules to apply in order, module-name prefixes whose MACs they hold, cumulative stride)."""
    out = [("stem", [model.stem], ("stem.",), 4)]
    mods: list[nn.Module] = [model.stem]
    owners: tuple[str, ...] = ("stem.",)
    stride = 4
    for i, block in enumerate(model.blocks):
        mods = [*mods, block]
        owners = (*owners, f"blocks.{i}.")
        out.append((f"stem + block {i + 1}", list(mods), owners, stride))
        if i < len(model.transitions):
            mods = [*mods, model.transitions[i]]
            owners = (*owners, f"transitions.{i}.")
            stride *= 2
            out.append((f"stem + block {i + 1} + transition {i + 1}", list(mods), owners, stride))
    return out


def run_prefix(mods: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Features of ``x`` after ``mods`` (grey input repeated to the stem's 3 channels)."""
    h = x.repeat(1, 3, 1, 1)
    for m in mods:
        h = m(h)
    return h


def exact_fraction(mods: list[nn.Module], stride: int, seed: int = 0) -> float:
    """Fraction of a window's prefix cells equal to the whole-image cells at the same place.

    The window sits at an origin that is a multiple of ``stride`` and at least 64 pixels inside a
    larger random image, so that every cell has real image context on all sides in the whole-image pass.
    """
    g = torch.Generator().manual_seed(seed)
    margin = 2 * stride * math.ceil(64 / stride)
    size = WINDOW + 2 * margin
    image = torch.randn(1, 1, size, size, generator=g)
    with torch.inference_mode():
        whole = run_prefix(mods, image)
        alone = run_prefix(mods, image[:, :, margin:margin + WINDOW, margin:margin + WINDOW])
    o, n = margin // stride, alone.shape[-1]
    crop = whole[:, :, o:o + n, o:o + n]
    scale = whole.abs().amax().item()
    equal = ((alone - crop).abs() <= 1e-5 * scale).all(dim=1)
    return float(equal.float().mean())


def phases(stride: int, side: int) -> int:
    """Distinct window origins modulo ``stride`` along an image side of ``side`` pixels (heatmapper placement)."""
    from breastscreen.inference.strides import window_offsets

    return len({int(o) % stride for o in window_offsets(side, WINDOW, STRIDE)})


def overlap(shape: tuple[int, int]) -> float:
    """Windows x window area / image area: how many windows cover a pixel on average."""
    from breastscreen.inference.strides import window_offsets

    n = len(window_offsets(shape[0], WINDOW, STRIDE)) * len(window_offsets(shape[1], WINDOW, STRIDE))
    return n * WINDOW * WINDOW / (shape[0] * shape[1])


def speedup_bound(share: float, exact: float, stride: int, shape: tuple[int, int]) -> float:
    """Exact-mode speed-up bound of sharing a prefix (``share`` of the MACs, ``exact`` cells reusable)."""
    passes = phases(stride, shape[0]) * phases(stride, shape[1])
    return 1.0 / (1.0 - exact * share + passes * share / overlap(shape))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/shared_layers_bound.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = create_model("densenet121-patch").eval()
    with torch.no_grad():  # random BN statistics, so that every layer passes a non-trivial signal
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    macs = count_macs(model, torch.zeros(1, 1, WINDOW, WINDOW))
    total = sum(macs.values())
    rows = []
    for name, mods, owners, stride in prefixes(model):
        share = sum(v for k, v in macs.items() if k.startswith(owners)) / total
        f = exact_fraction(mods, stride)
        rows.append({"prefix": name, "mac_share": round(share, 4), "cumulative_stride": stride,
                     "exact_cell_fraction": round(f, 4),
                     "phases_rows_x_columns": {v: [phases(stride, hw[0]), phases(stride, hw[1])]
                                               for v, hw in VIEW_SHAPES.items()},
                     "speedup_bound": {v: round(speedup_bound(share, f, stride, hw), 3)
                                       for v, hw in VIEW_SHAPES.items()}})
        print(json.dumps(rows[-1]), flush=True)
    best = {v: max(rows, key=lambda r: r["speedup_bound"][v]) for v in VIEW_SHAPES}
    result = {
        "what": "upper bound on the exact-mode speed-up from computing a prefix of DenseNet-121 once per image "
                "(see the script's docstring for the cost model)",
        "window": WINDOW, "stride": STRIDE, "window_gmac": round(total / 1e9, 3),
        "view_shapes": {v: list(hw) for v, hw in VIEW_SHAPES.items()},
        "overlap": {v: round(overlap(hw), 2) for v, hw in VIEW_SHAPES.items()},
        "prefixes": rows,
        "best": {v: {"prefix": b["prefix"], "speedup_bound": b["speedup_bound"][v]} for v, b in best.items()},
        "command": "python benchmarks/shared_layers_bound.py --out " + args.out,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for v, b in result["best"].items():
        print(f"{v}: best {b['prefix']} -> at most {b['speedup_bound']}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
