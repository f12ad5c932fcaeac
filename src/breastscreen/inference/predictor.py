"""The in-memory Predictor: one exam in, one typed prediction out. No files, no globals.

    from breastscreen import Predictor
    predictor = Predictor.load("demo-breast-image", tta=4)
    result = predictor.predict_exam({"L-CC": ["lcc.dcm"], "R-CC": [array], "L-MLO": [dataset], ...})
    result.values["left_malignant"]

Images may be file paths, :class:`~breastscreen.data.types.ImageRef` objects (raw, or
preprocessed by ``breastscreen preprocess``), numpy arrays or ``pydicom.Dataset`` objects. The
model family's spec (stored in the checkpoint) prepares them and builds the model input, exactly
as the training datasets do. TTA copies and ensemble members are averaged inside. A model that
takes heatmaps gets them from ``heatmaps=`` (a callable, e.g. files of ``breastscreen heatmaps``)
or computes them with the patch model given to :meth:`Predictor.load`.

Thread safety: :meth:`Predictor.predict_exam` keeps no state between calls (models are in eval
mode and run under ``torch.inference_mode``), so several threads may share one Predictor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from breastscreen.data.types import MG_VIEWS, US_VIEWS, Exam, Modality, view_side
from breastscreen.errors import BreastscreenError, CheckpointError
from breastscreen.inference.ensemble import MemberRef, average, expand_model_refs
from breastscreen.labels import HEATMAP_CHANNELS
from breastscreen.specs import ImageSpec, ModelSpec, MultiViewSpec, PatchSpec, PreparedImage, USSpec, prepare_bag
from breastscreen.specs.mammo import HeatmapSource
from breastscreen.specs.sources import ImageLike


@dataclass
class Member:
    """One loaded checkpoint of an ensemble."""

    ref: MemberRef
    model: nn.Module
    name: str
    sha256: str
    metadata: dict[str, Any]
    spec: ModelSpec


@dataclass
class ExamPrediction:
    """Everything predicted for one exam.

    ``values``: the CSV columns (per-breast ``left_benign`` ... or BI-RADS columns); ``details``:
    per-view / per-branch / per-member outputs and attention; ``panels``: view -> (prepared
    image, {map name: array}) for pictures; ``us_bags``: side -> bag data for ultrasound pictures.
    """

    exam_id: str
    values: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)
    panels: dict[str, Any] = field(default_factory=dict)
    us_bags: dict[str, Any] = field(default_factory=dict)


def load_members(refs: str | Sequence[str], device: torch.device | str = "cpu") -> list[Member]:
    """Load every checkpoint (ensemble manifests expanded) and check their specs agree."""
    from breastscreen.models import load_checkpoint

    members = []
    for ref in expand_model_refs([refs] if isinstance(refs, str) else list(refs)):
        ckpt = load_checkpoint(ref.ref)
        members.append(Member(ref, ckpt.model.to(device).eval(), ckpt.name, ckpt.sha256, dict(ckpt.metadata or {}),
                              ckpt.spec))
    if not members:
        raise CheckpointError("no model given")
    first = members[0]
    for m in members[1:]:
        if m.spec != first.spec:
            raise CheckpointError(
                f"ensemble members must agree on one spec: {first.ref.ref} has {first.spec.to_dict()}, "
                f"{m.ref.ref} has {m.spec.to_dict()}"
            )
    return members


def _to_np(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_np(v) for k, v in x.items()}
    return x


def run_model(model: nn.Module, device: torch.device, *args: Any, precision: str = "fp32") -> dict[str, Any]:
    """Forward pass without gradients; tensor outputs as numpy (``features`` dropped).

    ``precision`` ``bf16`` autocasts to bfloat16 (on CUDA and on CPUs with native bf16); ``fp32``
    keeps float32 on the CPU and the historical float16 autocast on CUDA.
    """
    if device.type == "cuda":
        dtype, enabled = (torch.bfloat16 if precision == "bf16" else torch.float16), True
    else:
        dtype, enabled = torch.bfloat16, precision == "bf16"
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled):
        out = model(*args)
    return _to_np({k: v for k, v in out.items() if k != "features"})


def default_batch_size(spec: ModelSpec, device: torch.device) -> int:
    """Input rows per model call when none is given: 1 for four-view models on a CPU, else 8.

    A full-resolution four-view row already keeps oneDNN busy; more rows only spill the caches
    (``benchmarks/results/exam_model_cpu.json``). Only the four-view family was measured, so the
    others keep 8; GPUs want large batches.
    """
    return 1 if device.type == "cpu" and isinstance(spec, MultiViewSpec) else 8


def _exam_views(exam: Exam | Mapping[str, Sequence[ImageLike]]) -> dict[str, list[ImageLike]]:
    views = exam.views if isinstance(exam, Exam) else exam
    out = {}
    for view, images in views.items():
        if view not in MG_VIEWS and view not in US_VIEWS:
            raise BreastscreenError(f"unknown view {view!r}; expected one of {MG_VIEWS + US_VIEWS}")
        out[view] = list(images) if isinstance(images, (list, tuple)) else [images]
    return out


class Predictor:
    """Runs one model or an ensemble (one spec) on exams held in memory (see the module docstring)."""

    def __init__(self, members: Sequence[Member], device: torch.device | str = "cpu", *, tta: int = 1, seed: int = 0,
                 batch_size: int | None = None, patch: Member | None = None, patch_batch_size: int | None = None,
                 patch_engine: Any = None, precision: str = "fp32", channels_last: bool = True) -> None:
        if not members:
            raise BreastscreenError("a Predictor needs at least one model")
        if tta < 1:
            raise BreastscreenError(f"tta must be >= 1, got {tta}")
        if batch_size is not None and batch_size < 1:
            raise BreastscreenError(f"batch_size must be >= 1, got {batch_size}")
        if patch is not None and not isinstance(patch.spec, PatchSpec):
            raise BreastscreenError(f"{patch.ref.ref}: model {patch.name} is not a patch classifier")
        self.members = list(members)
        self.device = torch.device(device)
        self.tta, self.seed = int(tta), int(seed)
        self.patch = patch
        from breastscreen.inference.engines import default_patch_batch_size

        self.patch_batch_size = (int(patch_batch_size) if patch_batch_size is not None
                                 else default_patch_batch_size(self.device))
        self._inferers: dict[bool, Any] = {}  # built on first use and kept: building copies the patch model
        # How patch windows are computed (EngineOptions); the default is the exact mode in channels-last.
        self.patch_engine = patch_engine
        self.spec: ModelSpec = self.members[0].spec
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(self.spec, self.device)
        if precision not in ("fp32", "bf16"):
            raise BreastscreenError(f"precision must be fp32 or bf16, got {precision!r}")
        from breastscreen.inference.engines import effective_precision

        # the breast-level models' arithmetic (what runs, after any fallback) and why it differs
        self.precision, self.precision_note = effective_precision(precision, self.device)
        # Mammography models run full-resolution convolutions: NHWC is oneDNN's (and tensor cores')
        # native layout, 12-30 % faster on CPU at the same values within float rounding.
        # The members' models are converted in place (either way, so that a later NCHW Predictor
        # on the same members really runs NCHW).
        self.channels_last = bool(channels_last) and isinstance(self.spec, (MultiViewSpec, ImageSpec))
        if isinstance(self.spec, (MultiViewSpec, ImageSpec)):
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            for member in self.members:
                member.model.to(memory_format=fmt)

    @classmethod
    def load(cls, models: str | Sequence[str], device: str | torch.device = "cpu", *, tta: int = 1, seed: int = 0,
             batch_size: int | None = None, patch_model: str | None = None, patch_batch_size: int | None = None,
             patch_engine: Any = None, precision: str = "fp32", channels_last: bool = True) -> "Predictor":
        """Load checkpoint files, bundled model names or ensemble manifests (``device="auto"`` picks CUDA).

        ``patch_engine`` (:class:`~breastscreen.inference.engines.EngineOptions`) chooses the backend,
        precision and mode of on-the-fly heatmaps (default: exact fp32, channels-last);
        ``precision`` (``fp32`` or ``bf16``) that of the breast-level models (:func:`run_model`);
        ``channels_last`` runs mammography models in NHWC (``False``: the NCHW reference layout;
        the members' models are converted in place either way).
        """
        from breastscreen.utils import resolve_device

        try:
            dev = resolve_device(str(device))
        except ValueError as exc:
            raise BreastscreenError(str(exc)) from None
        members = load_members(models, dev)
        patch = load_members(patch_model, dev)[0] if patch_model else None
        return cls(members, dev, tta=tta, seed=seed, batch_size=batch_size, patch=patch,
                   patch_batch_size=patch_batch_size, patch_engine=patch_engine, precision=precision,
                   channels_last=channels_last)

    # ------------------------------------------------------------------ description

    @property
    def modality(self) -> Modality:
        """Modality of the exams this model reads."""
        return Modality.US if isinstance(self.spec, USSpec) else Modality.MG

    @property
    def columns(self) -> list[str]:
        """CSV value columns of this model's predictions."""
        return list(self.spec.value_columns)

    @property
    def needs_heatmaps(self) -> bool:
        """True when the model takes patch heatmaps as input channels."""
        return bool(getattr(self.spec, "needs_heatmaps", False))

    # ------------------------------------------------------------------ heatmaps

    def compute_heatmaps(self, prepared: PreparedImage) -> np.ndarray:
        """Heatmaps [2, H, W] of one prepared mammogram with the patch model (float16-rounded like files)."""
        if self.patch is None:
            raise BreastscreenError("this model takes heatmaps: give heatmaps= or load the Predictor with patch_model=")
        spec: PatchSpec = self.patch.spec  # type: ignore[assignment]
        if not np.isclose(spec.scale, prepared.record.get("scale", spec.scale)):
            raise BreastscreenError(f"{prepared.source}: image at scale {prepared.record.get('scale')}, "
                                    f"the patch model works at {spec.scale}")
        # Background windows are skipped when the breast mask is known, as `breastscreen heatmaps`
        # does by default, so in-memory and file heatmaps are the same maps.
        skip = prepared.mask is not None and prepared.mask.shape == prepared.pixels.shape
        maps = self._inferer(skip).heatmaps([prepared.pixels], [prepared.mask] if skip else None)[0].maps
        return maps.astype(np.float16).astype(np.float32)

    def _inferer(self, skip: bool) -> Any:
        inferer = self._inferers.get(skip)
        if inferer is None:
            from breastscreen.inference.engines import EngineOptions
            from breastscreen.inference.heatmaps import SlidingWindowHeatmapper

            spec: PatchSpec = self.patch.spec  # type: ignore[union-attr, assignment]
            engine = self.patch_engine or EngineOptions(channels_last=True)
            inferer = self._inferers[skip] = SlidingWindowHeatmapper(
                self.patch.model, spec.patch_size, spec.target_stride, batch_size=self.patch_batch_size,  # type: ignore[union-attr]
                device=self.device, skip_background=skip, class_names=spec.classes, **engine.kwargs())
        return inferer

    def warm_up(self) -> None:
        """Build the on-the-fly heatmap engine now rather than on the first exam.

        Compiled backends export, compile and (int8) calibrate the patch model when built, which
        takes seconds; a service calls this once at start so that no request waits for it.
        """
        if self.patch is not None:
            self._inferer(True)

    def _maps(self, heatmaps: HeatmapSource | None, exam_id: str, view: str, k: int,
              prepared: PreparedImage) -> np.ndarray | None:
        if not self.needs_heatmaps:
            return None
        maps = heatmaps(exam_id, view, k, prepared) if heatmaps is not None else self.compute_heatmaps(prepared)
        if not np.isfinite(maps).all():
            raise BreastscreenError(f"{prepared.source}: heatmaps hold NaN or infinite values")
        return maps

    # ------------------------------------------------------------------ prediction

    def predict_exam(self, exam: Exam | Mapping[str, Sequence[ImageLike]], exam_id: str | None = None,
                     heatmaps: HeatmapSource | None = None) -> ExamPrediction:
        """Predict one exam: an :class:`Exam` or a mapping ``{view: [image, ...]}`` (see module doc)."""
        eid = exam.exam_id if isinstance(exam, Exam) else (exam_id or "exam")
        views = _exam_views(exam)
        if isinstance(self.spec, MultiViewSpec):
            return self._multiview(eid, views, heatmaps)
        if isinstance(self.spec, ImageSpec):
            return self._image(eid, views, heatmaps)
        if isinstance(self.spec, USSpec):
            return self._us(eid, views)
        raise BreastscreenError(f"a {self.spec.family} model does not predict exams (use `breastscreen heatmaps`)")

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        """An input array as a tensor on the device, in the models' memory layout."""
        t = torch.from_numpy(x)
        if self.channels_last and t.ndim == 4:
            return t.to(self.device, memory_format=torch.channels_last)
        return t.to(self.device)

    def _batched(self, member: Member, rows: int, make: Any) -> list[dict[str, Any]]:
        """Run ``member`` over ``rows`` input rows in chunks of ``batch_size``; ``make(slice)`` gives the args."""
        return [run_model(member.model, self.device, *make(slice(s, s + self.batch_size)), precision=self.precision)
                for s in range(0, rows, self.batch_size)]

    def _mammo_views(self, exam_id: str, views: dict[str, list[ImageLike]],
                     heatmaps: HeatmapSource | None) -> tuple[dict[str, list[PreparedImage]], dict[str, list[Any]]]:
        spec = self.spec
        prepared: dict[str, list[PreparedImage]] = {}
        maps: dict[str, list[Any]] = {}
        for view in MG_VIEWS:
            images = views.get(view) or []
            prepared[view] = [spec.prepare(im, view) for im in images]  # type: ignore[attr-defined]
            maps[view] = [self._maps(heatmaps, exam_id, view, k, p) for k, p in enumerate(prepared[view])]
        if not any(prepared.values()):
            raise BreastscreenError(f"exam {exam_id}: no mammography image")
        return prepared, maps

    def _multiview(self, exam_id: str, views: dict[str, list[ImageLike]], heatmaps: HeatmapSource | None) -> ExamPrediction:
        spec: MultiViewSpec = self.spec  # type: ignore[assignment]
        prepared, maps = self._mammo_views(exam_id, views, heatmaps)
        # rows are built a batch at a time: all TTA copies of a full-resolution exam at once need 2.5 GB
        plan = spec.exam_plan(exam_id, prepared, maps, n_tta=self.tta, seed=self.seed)
        rows = plan.rows

        # Each batch of rows is built once and run through every member (an ensemble must not
        # rebuild the jittered full-resolution windows per member).
        per_member: list[list[dict[str, Any]]] = [[] for _ in self.members]
        for s in range(0, rows, self.batch_size):
            inputs, present = plan.take(slice(s, s + self.batch_size))
            args = ({v: self._to_device(x) for v, x in inputs.items()},
                    {v: torch.from_numpy(p).to(self.device) for v, p in present.items()})
            for chunks, member in zip(per_member, self.members):
                chunks.append(run_model(member.model, self.device, *args, precision=self.precision))
        member_out = []
        for chunks in per_member:
            probs = np.concatenate([c["probs"] for c in chunks]).mean(axis=0)
            branch = {a: np.concatenate([c["branch_probs"][a] for c in chunks]).mean(axis=0)
                      for a in (chunks[0].get("branch_probs") or {})}
            member_out.append({"probs": probs, "branch_probs": branch})
        probs = average([m["probs"] for m in member_out])
        used = [v for v in MG_VIEWS if prepared[v]]
        details: dict[str, Any] = {
            "views_used": used,
            "missing_views": [v for v in MG_VIEWS if not prepared[v]],
            "images_per_view": {v: len(prepared[v]) for v in used},
            "samples_per_member": rows,
        }
        if member_out[0]["branch_probs"]:
            names = [c for c in spec.value_columns if c.startswith("birads_")] if spec.task == "birads" else list(
                spec.value_columns)
            details["branch_probs"] = {
                a: dict(zip(names, (float(v) for v in average([m["branch_probs"][a] for m in member_out]))))
                for a in member_out[0]["branch_probs"]
            }
        details["members"] = [{"sha256": mem.sha256, "probs": [float(v) for v in out["probs"]]}
                              for mem, out in zip(self.members, member_out)]
        panels = {v: (prepared[v][0], None if maps[v][0] is None else dict(zip(HEATMAP_CHANNELS, maps[v][0])))
                  for v in used}
        values = spec.postprocess(probs)
        # A breast without any image has no prediction, although a four-view model still outputs one.
        for side, name in (("L", "left"), ("R", "right")):
            if not any(prepared[v] for v in MG_VIEWS if view_side(v) == side):
                values.update({c: None for c in values if c.startswith(f"{name}_")})
                details.setdefault("breasts_without_images", []).append(side)
        return ExamPrediction(exam_id, values, details, panels)

    def _image(self, exam_id: str, views: dict[str, list[ImageLike]], heatmaps: HeatmapSource | None) -> ExamPrediction:
        spec: ImageSpec = self.spec  # type: ignore[assignment]
        prepared, maps = self._mammo_views(exam_id, views, heatmaps)
        per_view: dict[str, list[dict[str, float | None]]] = {}
        side_probs: dict[str, list[np.ndarray]] = {"L": [], "R": []}
        panels: dict[str, Any] = {}
        for view in [v for v in MG_VIEWS if prepared[v]]:
            per_view[view] = []
            for k, image in enumerate(prepared[view]):
                x = spec.image_inputs(image, view, maps[view][k], n=self.tta)
                outs, saliency = [], []
                for member in self.members:
                    parts = self._batched(member, x.shape[0], lambda sl: (self._to_device(x[sl]),))
                    outs.append(spec.image_probs(np.concatenate([q["probs"] for q in parts]).mean(axis=0)))
                    if "saliency" in parts[0]:
                        saliency.append(parts[0]["saliency"][0])  # copy 0 = un-flipped geometry
                p = average(outs)
                side_probs[view_side(view)].append(p)
                per_view[view].append({"benign": None if np.isnan(p[0]) else float(p[0]), "malignant": float(p[1])})
                if k == 0:
                    overlay = None
                    if saliency:
                        sal = average(saliency).astype(np.float32)
                        if spec.input == "window":
                            box = spec.base_window(image, view)
                            placed = window_map_to_image(sal, box, image.pixels.shape)
                        else:
                            placed = window_map_to_image(sal, (0, 0, image.pixels.shape[1], image.pixels.shape[0]),
                                                         image.pixels.shape)
                        overlay = dict(zip(HEATMAP_CHANNELS, placed))
                    elif maps[view][k] is not None:
                        overlay = dict(zip(HEATMAP_CHANNELS, maps[view][k]))
                    panels[view] = (image, overlay)
        values: dict[str, float | None] = {c: None for c in spec.value_columns}
        for side, name in (("L", "left"), ("R", "right")):
            if side_probs[side]:
                p = spec.breast_probs(side_probs[side])
                values[f"{name}_benign"] = None if np.isnan(p[0]) else float(p[0])
                values[f"{name}_malignant"] = float(p[1])
        details = {"per_view": per_view, "views_used": list(per_view), "aggregation": spec.aggregation,
                   "missing_views": [v for v in MG_VIEWS if v not in per_view]}
        return ExamPrediction(exam_id, values, details, panels)

    def _us(self, exam_id: str, views: dict[str, list[ImageLike]]) -> ExamPrediction:
        spec: USSpec = self.spec  # type: ignore[assignment]
        values: dict[str, float | None] = {c: None for c in self.columns}
        details: dict[str, Any] = {"breasts": {}}
        bags: dict[str, Any] = {}
        for view in US_VIEWS:
            images = views.get(view) or []
            if not images:
                continue
            side = view_side(view) or "U"
            kept, dropped = prepare_bag(spec, images)
            if not kept:
                reasons = "; ".join(f"{name}: {why}" for name, why in dropped)
                raise BreastscreenError(f"exam {exam_id} {view}: no usable image ({reasons})")
            x = spec.tta_inputs(f"{exam_id}/{view}", kept, self.tta, self.seed)  # [T, K, C, S, S]
            probs, att, sal = [], [], []
            for member in self.members:
                out = self._batched(member, x.shape[0], lambda sl: (self._to_device(x[sl]),))
                probs.append(np.concatenate([o["probs"] for o in out]).mean(axis=0))
                att.append(np.concatenate([o["attention"] for o in out]).mean(axis=0))
                sal.append(out[0]["saliency"][0])  # copy 0 = un-augmented
            p, a, s = average(probs), average(att), average(sal)
            if side in ("L", "R"):
                name = "left" if side == "L" else "right"
                values[f"{name}_benign"], values[f"{name}_malignant"] = float(p[0]), float(p[1])
            details["breasts"][side] = {
                "benign": float(p[0]), "malignant": float(p[1]),
                "attention_malignant": [float(v) for v in a[:, 1]],
                "attention_benign": [float(v) for v in a[:, 0]],
                "images": [im.record.get("source_path", im.source) for im in kept],
                "excluded": [{"image": n, "reason": r} for n, r in dropped],
                # Per image, in the order of "images": the maps cover the prepared square, which is
                # the crop box of the original resized to prepared_size (what `evaluate --masks` needs).
                "saliency_malignant": np.round(s[:, 1], 6).tolist(),
                "saliency_benign": np.round(s[:, 0], 6).tolist(),
                "crop_boxes": [[int(v) for v in im.record["crop_box"]] if "crop_box" in im.record else None
                               for im in kept],
                "original_shapes": [[int(v) for v in im.record["original_shape"]] if "original_shape" in im.record
                                    else None for im in kept],
                "prepared_size": int(spec.prepare_size),
            }
            bags[side] = {"pixels": [im.pixels for im in kept], "attention": a[:, 1], "saliency": s[:, 1], "probs": p,
                          "sources": [im.source for im in kept], "records": [im.record for im in kept]}
        if not bags:
            raise BreastscreenError(f"exam {exam_id}: no ultrasound image")
        return ExamPrediction(exam_id, values, details, {}, bags)


def window_map_to_image(maps: np.ndarray, window: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Place low-resolution maps [C, h, w] of a model window back onto the preprocessed image grid."""
    import cv2

    x0, y0, x1, y1 = (int(v) for v in window)
    up = np.stack([cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) for m in maps])
    out = np.zeros((maps.shape[0], *shape), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0:sy1, sx0:sx1] = up[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out
