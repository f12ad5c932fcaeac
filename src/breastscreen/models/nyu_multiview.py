"""NYU multi-view breast cancer classifier (Wu et al. 2019): four ResNet-22 columns + a head.

Columns: one ResNet-22 per view angle, shared by the left and right views of that angle
(L-CC/R-CC, L-MLO/R-MLO). Each view's feature map is average-pooled to a 256-d vector.

Heads (each keeps 1,024 hidden activations between its fully connected layers):

* ``view``   (view-wise, the paper's main model): per angle, concatenate the L and R vectors
  (512) -> FC 512->512 + ReLU -> FC 512->4x2; the final prediction averages the CC and MLO
  branch probabilities. 2 branches x 512 = 1,024.
* ``image``  (image-wise): per view, FC 256->256 + ReLU -> FC 256->2x2 (benign, malignant of that
  view's breast); a breast's prediction averages its CC and MLO probabilities. Separate FC weights
  per view as in the published reference code. 4 x 256 = 1,024.
* ``breast`` (breast-wise): per breast, concatenate its CC and MLO vectors (512) -> FC 512->512 +
  ReLU -> FC 512->2x2, separate weights for the left and right breast. 2 x 512 = 1,024.
* ``joint``: concatenate all four vectors (1,024) -> FC 1024->1024 + ReLU -> FC 1024->4x2.

Outputs (``task="cancer"``): ``probs`` [B, 4] in BREAST_LABELS order (left_benign, left_malignant,
right_benign, right_malignant); ``logits`` [B, 4, 2] = log of the averaged class probabilities
(so softmax(logits) == averaged probabilities and cross-entropy on them is the loss of the averaged
prediction); ``branch_probs``/``branch_logits`` {"CC", "MLO"} for the view and image heads;
``features`` {view: [B, 256]}. ``task="birads"`` (view head only) returns ``logits``/``probs`` [B, 3]
for BI-RADS 0/1/2 plus the branch outputs.

Orientation: the preprocessing stage flips every breast so the chest wall is at the left edge, so
by default the model does NOT flip left views again (``flip_left=False``). Set ``flip_left=True``
for inputs in the original orientation, as the published pipeline did in its data loader.

Missing views: pass ``present`` {view: bool[B]} or omit a view from the input dict. A missing
view's 256-d feature vector is replaced by zeros, and:
view head - a branch counts only where both of its views are present; if no branch is complete
for a sample, branches are weighted by how many of their views are present;
image head - a breast averages only its present views; breast and joint heads - zero-filled
features are used as they are (no alternative prediction exists). A sample with no view at all
gets the prediction of all-zero features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from breastscreen.data.types import MG_VIEWS
from breastscreen.labels import BIRADS_CLASSES, BREAST_LABELS, NYU_WINDOWS
from breastscreen.models.layers import GaussianNoise, check_image_batch
from breastscreen.models.nyu_resnet22 import ResNet22, ResNet22Config
from breastscreen.models.registry import register_model

ANGLES: tuple[str, ...] = ("CC", "MLO")
SIDES: tuple[str, ...] = ("L", "R")
HEADS: tuple[str, ...] = ("view", "image", "breast", "joint")


@dataclass(frozen=True)
class NYUMultiViewConfig:
    """Configuration of the NYU four-view model."""

    head: str = "view"  # view | image | breast | joint
    task: str = "cancer"  # cancer (4 labels x 2 classes) | birads (3 classes, view head)
    in_channels: int = 1  # 1 = image only; 3 = image + benign + malignant heatmaps
    noise_std: float = 0.01
    flip_left: bool = False  # inputs are already oriented by preprocessing
    num_filters: int = 16
    blocks_per_layer: tuple[int, ...] = (2, 2, 2, 2, 2)
    layer_strides: tuple[int, ...] = (1, 2, 2, 2, 2)
    input_size_cc: tuple[int, int] = NYU_WINDOWS["CC"]
    input_size_mlo: tuple[int, int] = NYU_WINDOWS["MLO"]


def _weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average ``stack`` [K, B, ...] over K with per-sample weights [K, B]."""
    w = weights / weights.sum(dim=0, keepdim=True)
    w = w.view(*w.shape, *([1] * (stack.dim() - 2)))
    return (stack * w).sum(dim=0)


def _fallback_weights(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """Per sample use ``primary`` [K, B] weights if any is positive, else ``secondary``, else equal."""
    has_primary = primary.sum(0, keepdim=True) > 0
    has_secondary = secondary.sum(0, keepdim=True) > 0
    equal = torch.ones_like(primary)
    return torch.where(has_primary, primary, torch.where(has_secondary, secondary, equal))


class NYUMultiView(nn.Module):
    """Four-view breast-level classifier; see the module docstring for heads and outputs."""

    def __init__(self, config: NYUMultiViewConfig) -> None:
        super().__init__()
        if config.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {config.head!r}")
        if config.task not in ("cancer", "birads"):
            raise ValueError(f"task must be 'cancer' or 'birads', got {config.task!r}")
        if config.task == "birads" and config.head != "view":
            raise ValueError(f"the BI-RADS model uses the view-wise head, got head={config.head!r}")
        if config.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {config.in_channels}")
        self.config = config
        self.noise = GaussianNoise(config.noise_std)
        col_cfg = ResNet22Config(
            in_channels=config.in_channels, num_filters=config.num_filters,
            blocks_per_layer=config.blocks_per_layer, layer_strides=config.layer_strides,
        )
        # One column per angle; the L and R views of an angle share it.
        self.columns = nn.ModuleDict({a: ResNet22(col_cfg) for a in ANGLES})
        d = col_cfg.out_channels
        self.feature_dim = d
        n_out = len(BIRADS_CLASSES) if config.task == "birads" else 8
        if config.head == "view":
            self.hidden = nn.ModuleDict({a: nn.Linear(2 * d, 2 * d) for a in ANGLES})
            self.output = nn.ModuleDict({a: nn.Linear(2 * d, n_out) for a in ANGLES})
        elif config.head == "image":
            keys = [v.replace("-", "_") for v in MG_VIEWS]
            self.hidden = nn.ModuleDict({k: nn.Linear(d, d) for k in keys})
            self.output = nn.ModuleDict({k: nn.Linear(d, 4) for k in keys})
        elif config.head == "breast":
            self.hidden = nn.ModuleDict({s: nn.Linear(2 * d, 2 * d) for s in SIDES})
            self.output = nn.ModuleDict({s: nn.Linear(2 * d, 4) for s in SIDES})
        else:
            self.hidden = nn.ModuleDict({"joint": nn.Linear(4 * d, 4 * d)})
            self.output = nn.ModuleDict({"joint": nn.Linear(4 * d, 8)})

    # -- helpers -------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int = 2, height: int = 96, width: int = 80) -> dict:
        """Random forward() arguments of the given size (for tests and shape checks)."""
        views = {v: torch.randn(batch_size, self.config.in_channels, height, width) for v in MG_VIEWS}
        return {"views": views}

    def _presence(self, views: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None,
                  batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        out = {}
        for v in MG_VIEWS:
            if v not in views:
                out[v] = torch.zeros(batch, dtype=torch.bool, device=device)
            elif present is not None and v in present:
                p = torch.as_tensor(present[v], device=device).bool()
                if p.shape != (batch,):
                    raise ValueError(f"present[{v!r}] must have shape ({batch},), got {tuple(p.shape)}")
                out[v] = p
            else:
                out[v] = torch.ones(batch, dtype=torch.bool, device=device)
        return out

    def view_features(self, views: dict[str, torch.Tensor],
                      present: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Average-pooled 256-d vector per view (zeros for missing views)."""
        unknown = sorted(set(views) - set(MG_VIEWS))
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; expected keys among {MG_VIEWS}")
        if not views:
            raise ValueError("views is empty: give at least one of " + ", ".join(MG_VIEWS))
        first = next(iter(views.values()))
        batch, device = first.shape[0], first.device
        pres = self._presence(views, present, batch, device)
        feats = {}
        for v in MG_VIEWS:
            if v not in views:
                feats[v] = torch.zeros(batch, self.feature_dim, device=device, dtype=first.dtype)
                continue
            x = views[v]
            check_image_batch(x, self.config.in_channels, f"view {v}")
            if x.shape[0] != batch:
                raise ValueError(f"all views need the same batch size; {v} has {x.shape[0]}, expected {batch}")
            if self.config.flip_left and v.startswith("L-"):
                x = torch.flip(x, dims=[-1])
            h = self.columns[v.split("-")[1]](self.noise(x)).mean(dim=(2, 3))
            feats[v] = h * pres[v].to(h.dtype)[:, None]
        return feats

    # -- forward -------------------------------------------------------------------------------
    def forward(self, views: dict[str, torch.Tensor],
                present: dict[str, torch.Tensor] | None = None) -> dict:
        """Run the model on ``views`` {view: [B, C, H, W]}; see the module docstring for outputs."""
        feats = self.view_features(views, present)
        first = next(iter(views.values()))
        pres = {k: p.to(first.dtype) for k, p in
                self._presence(views, present, first.shape[0], first.device).items()}
        head = self.config.head
        if head == "view":
            out = self._view_head(feats, pres)
        elif head == "image":
            out = self._image_head(feats, pres)
        elif head == "breast":
            out = self._breast_head(feats)
        else:
            out = self._joint_head(feats)
        out["features"] = feats
        return out

    def _mlp(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self.output[key](F.relu(self.hidden[key](x)))

    def _view_head(self, feats: dict, pres: dict) -> dict:
        branch_logits, branch_p = {}, {}
        for a in ANGLES:
            z = self._mlp(a, torch.cat([feats[f"L-{a}"], feats[f"R-{a}"]], dim=1))
            if self.config.task == "cancer":
                z = z.view(-1, 4, 2)
            branch_logits[a] = z
            branch_p[a] = F.softmax(z, dim=-1)
        complete = torch.stack([pres[f"L-{a}"] * pres[f"R-{a}"] for a in ANGLES])
        partial = torch.stack([pres[f"L-{a}"] + pres[f"R-{a}"] for a in ANGLES])
        w = _fallback_weights(complete, partial)
        p = _weighted_mean(torch.stack([branch_p[a] for a in ANGLES]), w)
        logits = torch.log(p.clamp_min(1e-12))
        if self.config.task == "birads":
            return {"logits": logits, "probs": p, "branch_logits": branch_logits, "branch_probs": branch_p}
        return {
            "logits": logits, "probs": p[..., 1],
            "branch_logits": branch_logits,
            "branch_probs": {a: branch_p[a][..., 1] for a in ANGLES},
        }

    def _image_head(self, feats: dict, pres: dict) -> dict:
        view_p, view_z = {}, {}
        for v in MG_VIEWS:
            z = self._mlp(v.replace("-", "_"), feats[v]).view(-1, 2, 2)
            view_z[v], view_p[v] = z, F.softmax(z, dim=-1)
        breast_p = []
        for s in SIDES:
            stack = torch.stack([view_p[f"{s}-{a}"] for a in ANGLES])
            w = torch.stack([pres[f"{s}-{a}"] for a in ANGLES])
            breast_p.append(_weighted_mean(stack, _fallback_weights(w, w)))
        p = torch.cat(breast_p, dim=1)  # [B, 4, 2]: L benign, L malignant, R benign, R malignant
        branch_logits = {a: torch.cat([view_z[f"L-{a}"], view_z[f"R-{a}"]], dim=1) for a in ANGLES}
        branch_probs = {a: torch.cat([view_p[f"L-{a}"], view_p[f"R-{a}"]], dim=1)[..., 1] for a in ANGLES}
        return {"logits": torch.log(p.clamp_min(1e-12)), "probs": p[..., 1],
                "branch_logits": branch_logits, "branch_probs": branch_probs}

    def _breast_head(self, feats: dict) -> dict:
        z = torch.cat([self._mlp(s, torch.cat([feats[f"{s}-CC"], feats[f"{s}-MLO"]], dim=1)).view(-1, 2, 2)
                       for s in SIDES], dim=1)
        return {"logits": z, "probs": F.softmax(z, dim=-1)[..., 1]}

    def _joint_head(self, feats: dict) -> dict:
        z = self._mlp("joint", torch.cat([feats[v] for v in MG_VIEWS], dim=1)).view(-1, 4, 2)
        return {"logits": z, "probs": F.softmax(z, dim=-1)[..., 1]}


def build_nyu_multiview(config: NYUMultiViewConfig) -> NYUMultiView:
    """Builder used by the registry."""
    return NYUMultiView(config)


@torch.no_grad()
def init_cancer_model_from_birads(cancer_model: NYUMultiView, birads_model: NYUMultiView) -> list[str]:
    """Copy the BI-RADS model's ResNet-22 columns into a cancer model (Wu et al. 2019 SI).

    The first convolution's kernels for the image channel are duplicated into every extra input
    channel (the heatmap channels of an image-and-heatmaps model). Fully connected layers stay at
    their random initialisation. Returns the names of the copied parameters/buffers.
    """
    if not isinstance(cancer_model, NYUMultiView) or not isinstance(birads_model, NYUMultiView):
        raise TypeError("both models must be NYUMultiView instances")
    if birads_model.config.in_channels != 1:
        raise ValueError(f"the BI-RADS model must be image-only (1 channel), got {birads_model.config.in_channels}")
    src = birads_model.columns.state_dict()
    dst = cancer_model.columns.state_dict()
    if set(src) != set(dst):
        raise ValueError("BI-RADS and cancer columns differ in structure: "
                         f"missing {sorted(set(dst) - set(src))[:5]}, unexpected {sorted(set(src) - set(dst))[:5]}")
    new = {}
    for key, value in src.items():
        target = dst[key]
        if key.endswith("first_conv.weight") and target.shape[1] != value.shape[1]:
            value = value.repeat(1, target.shape[1], 1, 1)
        if value.shape != target.shape:
            raise ValueError(f"shape mismatch for columns.{key}: BI-RADS {tuple(value.shape)} vs cancer {tuple(target.shape)}")
        new[key] = value
    cancer_model.columns.load_state_dict(new, strict=True)
    return [f"columns.{k}" for k in new]


_SIZE = "CC 2677x1942, MLO 2974x1748"
_TINY = {"num_filters": 4}
for _name, _cfg, _desc in (
    ("nyu-viewwise", NYUMultiViewConfig(), "NYU view-wise 4-view model (Wu 2019); in_channels=1 or 3"),
    ("nyu-viewwise-image", NYUMultiViewConfig(in_channels=1), "NYU view-wise, image only (1 channel)"),
    ("nyu-viewwise-heatmaps", NYUMultiViewConfig(in_channels=3),
     "NYU view-wise, image + benign + malignant heatmaps (3 channels)"),
    ("nyu-imagewise", NYUMultiViewConfig(head="image"), "NYU image-wise head (4 x 256 hidden)"),
    ("nyu-breastwise", NYUMultiViewConfig(head="breast"), "NYU breast-wise head (2 x 512 hidden)"),
    ("nyu-joint", NYUMultiViewConfig(head="joint"), "NYU joint head (1024 hidden)"),
    ("nyu-birads", NYUMultiViewConfig(task="birads"), "NYU view-wise BI-RADS 0/1/2 pretraining model"),
):
    register_model(_name, build_nyu_multiview, _cfg, _desc, _SIZE,
                   "birads" if _cfg.task == "birads" else "breast", _TINY)
