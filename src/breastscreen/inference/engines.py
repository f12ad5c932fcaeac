"""Execution engines for patch classifiers: the same network run by PyTorch, ONNX Runtime or OpenVINO.

A patch engine maps a float32 batch [B, C, p, p] to float32 logits [B, K]. Every engine is
built from the checkpoint's own ``nn.Module``, so its weights cannot drift from the exact
PyTorch model; what differs is how the arithmetic is scheduled and in which precision:

* ``torch`` / ``fp32`` with ``channels_last=False`` is the *exact* reference every other engine
  is checked against (tests on a tiny model; ``benchmarks/bench_heatmaps.py`` with trained weights).
* ``torch`` / ``fp32`` with ``channels_last=True`` runs oneDNN's NHWC convolutions on a private
  copy of the model (the checkpoint's module is not modified); agreement ~1e-7.
* ``bf16`` (torch autocast, or OpenVINO's ``INFERENCE_PRECISION_HINT``) multiplies in bfloat16
  with float32 accumulation: about 3 significant digits, so probabilities move by ~1e-3 with
  trained weights. Used only where the CPU has native bf16 (AVX512-BF16 or AMX) or on a GPU;
  elsewhere the engine falls back to fp32 and says so in :attr:`PatchEngine.note`, because
  emulated bf16 is slower than fp32.
* ``onnxruntime`` (fp32) and ``openvino`` (fp32/bf16) compile the graph ahead of time (export
  takes seconds, once per engine); they need ``pip install 'breastscreen[fast]'``.
* ``int8`` is post-training static quantisation with int8 dot products (VNNI where the CPU has
  it): on ``openvino`` the converted model is quantised by NNCF (``nncf.quantize``; the fast
  one), on ``onnxruntime`` the exported graph gets QuantizeLinear/DequantizeLinear pairs from
  ONNX Runtime's ``quantize_static`` (weights int8 per output channel, activations uint8 per
  tensor; slower, because every DenseNet concatenation is requantised). The calibration
  windows are the caller's (``calibration=``) or, by default, tissue windows of one synthetic
  phantom rendered at the patch's scale with a fixed seed, so that the same checkpoint always
  gives the same int8 engine (:func:`synthetic_calibration_windows`). Agreement with fp32 is
  looser than bf16 (measured in ``benchmarks/bench_heatmaps.py`` with trained weights).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from breastscreen.errors import BreastscreenError

log = logging.getLogger(__name__)

CPU_BATCH_SIZE = 16  # patches per call on CPU: the fastest measured (benchmarks/bench_heatmaps.py)
GPU_BATCH_SIZE = 256


def default_patch_batch_size(device: str | torch.device) -> int:
    """Patches per model call when none is given: 16 on a CPU (allocator churn and caches make larger
    batches slower and 4x heavier there), 256 on a GPU. ``device`` may be a string such as ``cuda:1``."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return GPU_BATCH_SIZE if kind == "cuda" else CPU_BATCH_SIZE
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
CALIBRATION_WINDOWS = 64  # default number of calibration windows for int8 (the phantom's tissue windows)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bfloat16 dot products natively (AVX512-BF16 or AMX-BF16)."""
    from breastscreen.utils import cpu_field

    return bool({"avx512_bf16", "amx_bf16"} & set((cpu_field("flags") or "").split()))


def effective_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """``(precision that runs, note)``: bf16 falls back to fp32 on a CPU without native bf16.

    Emulated bf16 is slower than fp32 and no more exact, so it is never run; the note says why.
    """
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return "fp32", "bf16 requested but this CPU has no native bf16 (AVX512-BF16/AMX): ran fp32"
    return precision, ""


class _LogitsOnly(nn.Module):
    """Wraps a patch model so that it returns the logits tensor (exporters need one tensor out)."""

    def __init__(self, model: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.in_channels = in_channels

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its grey channel repeated to the model's input channels."""
        return x if x.shape[1] == self.in_channels else x.expand(-1, self.in_channels, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] of a batch [B, C, p, p]."""
        out = self.model(self.channels(x))
        return out["logits"] if isinstance(out, dict) else out


class _Trunk(_LogitsOnly):
    """The patch model's ``forward_features`` (what the fully-convolutional preview runs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [N, C', h/s, w/s] of an image batch [N, C, h, w]."""
        return self.model.forward_features(self.channels(x))


@dataclass(frozen=True)
class EngineOptions:
    """How heatmap windows are computed: ``breastscreen heatmaps --backend --precision --mode --tile``.

    ``mode`` ``exact`` classifies every window on its own pixels (the default); ``fullconv`` is the
    fully-convolutional preview of :mod:`breastscreen.inference.fullconv` (torch backend only),
    with the trunk run in horizontal bands of ``tile`` pixels when given, and the ``refine``
    fraction of windows with the highest preview probability then evaluated exactly.
    """

    backend: str = "torch"
    precision: str = "fp32"
    channels_last: bool = False
    mode: str = "exact"
    tile: int | None = None
    refine: float = 0.0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~breastscreen.inference.heatmaps.SlidingWindowHeatmapper`."""
        return asdict(self)


@dataclass
class PatchEngine:
    """A callable ``engine(x) -> logits`` with a description of what actually runs.

    ``backend``/``precision`` are what runs (after any fallback); ``note`` explains a fallback.
    """

    backend: str
    precision: str
    channels_last: bool
    run: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the torch backend's model as it runs (a channels_last copy when asked)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] (float32, on ``x``'s device for torch, CPU otherwise)."""
        return self.run(x)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (written into heatmap provenance and benchmark results)."""
        return {"backend": self.backend, "precision": self.precision, "channels_last": self.channels_last,
                "note": self.note, **self.details}


def check_engine_options(backend: str, precision: str, mode: str = "exact") -> None:
    """Refuse an unknown backend/precision/mode combination with one line naming the choices."""
    if mode not in ("exact", "fullconv"):
        raise BreastscreenError(f"--mode must be exact or fullconv, got {mode!r}")
    if mode == "fullconv" and backend == "onnxruntime":
        raise BreastscreenError("--mode fullconv runs the torch or openvino backend (its input size changes per image)")
    if backend not in BACKENDS:
        raise BreastscreenError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise BreastscreenError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "onnxruntime" and precision == "bf16":
        raise BreastscreenError("--backend onnxruntime runs fp32 or int8 (its CPU kernels have no bf16 convolutions); "
                                "use --backend openvino or torch for bf16")
    if precision == "int8" and backend == "torch":
        raise BreastscreenError("--precision int8 runs on --backend openvino or onnxruntime (post-training "
                                "quantised graph); the torch backend runs fp32 or bf16")


def tune_allocator() -> bool:
    """Keep glibc malloc from returning large activation buffers to the kernel after every batch.

    By default glibc serves blocks above a dynamic threshold with ``mmap`` and unmaps them on
    ``free``; a network's activations are such blocks, so every batch re-faults them page by
    page (most of the heatmap loop's time went to the kernel before this). Raising the mmap and
    trim thresholds lets freed blocks be reused from the heap. Process-wide, so only command-line
    entry points call it; returns False where ``mallopt`` is unavailable (non-glibc systems).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # The mmap threshold cannot be raised past 32 MiB on 64-bit glibc, smaller than one batch's
    # activations, so mmap is switched off altogether; 1 GiB of free heap may stay mapped.
    ok_trim = mallopt(m_trim_threshold, 1 << 30)
    ok_mmap = mallopt(m_mmap_max, 0)
    return bool(ok_trim and ok_mmap)


def build_engine(
    model: nn.Module,
    *,
    in_channels: int,
    patch: int,
    backend: str = "torch",
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    threads: int | None = None,
    cuda_fp16: bool = False,
    calibration: np.ndarray | torch.Tensor | None = None,
) -> PatchEngine:
    """Build the engine that runs ``model`` (in eval mode) on batches of ``patch``-pixel windows.

    ``threads`` (default: ``torch.get_num_threads()``) bounds the compiled backends' thread pools.
    ``cuda_fp16`` keeps the historical CUDA default (fp16 autocast) when ``precision`` is fp32.
    ``calibration`` ([N, 1 or C, patch, patch] windows prepared as the heatmapper prepares them)
    sets the int8 activation ranges; default :func:`synthetic_calibration_windows`.
    """
    check_engine_options(backend, precision)
    device = torch.device(device)
    model.eval()
    precision, note = effective_precision(precision, device)
    if backend != "torch" and device.type != "cpu":
        raise BreastscreenError(f"--backend {backend} runs on the CPU; use --backend torch on {device}")
    threads = int(threads or torch.get_num_threads())
    wrapped = _LogitsOnly(model, in_channels)
    if backend == "torch":
        dtype = torch.bfloat16 if precision == "bf16" else (torch.float16 if cuda_fp16 and device.type == "cuda" else None)
        if channels_last:
            # A private copy: converting the checkpoint's own module would change it under its owner.
            wrapped = copy.deepcopy(wrapped).to(memory_format=torch.channels_last)
        run = _torch_runner(wrapped, dtype, device, channels_last)
        return PatchEngine("torch", "fp16" if dtype is torch.float16 else precision, channels_last, run, note,
                           module=wrapped.model)
    example = torch.zeros(2, in_channels, patch, patch)
    if precision == "int8":
        source = "caller's windows"
        if calibration is None:
            calibration = synthetic_calibration_windows(patch)
            source = f"tissue windows of a synthetic phantom (seed 0, scale {patch / 256:g})"
        calib = torch.as_tensor(np.asarray(calibration, dtype=np.float32))
        if calib.ndim != 4 or calib.shape[-2:] != (patch, patch) or calib.shape[1] not in (1, in_channels):
            raise BreastscreenError(f"int8 calibration windows must be [N, 1 or {in_channels}, {patch}, {patch}], "
                                    f"got {list(calib.shape)}")
        calib = calib.expand(-1, in_channels, -1, -1).contiguous()
        details = {"calibration": {"windows": int(calib.shape[0]), "source": source}}
        # measured far from fp32 on a real mammogram (benchmarks/results/heatmaps_speed.json): say so wherever it ran
        note = "; ".join(filter(None, [note, "int8 is experimental: check it against fp32 on your images "
                                       "(docs/inference.md)"]))
        if backend == "onnxruntime":
            details["calibration"]["method"] = ("onnxruntime quantize_static, QDQ: min-max, weights int8 per "
                                                "channel, activations uint8 per tensor")
            run = _onnxruntime_session(_quantized_onnx(wrapped, example, calib, threads), threads)
            return PatchEngine("onnxruntime", "int8", False, run, note, details)
        details["calibration"]["method"] = "nncf.quantize: min-max, fast bias correction, concatenations share scales"
        return PatchEngine("openvino", "int8", False, _openvino_int8(wrapped, example, calib, threads), note, details)
    if backend == "onnxruntime":
        return PatchEngine("onnxruntime", precision, False, _onnxruntime_runner(wrapped, example, threads), note)
    return PatchEngine("openvino", precision, False, _openvino_runner(wrapped, example, precision, threads), note)


def _torch_runner(wrapped: nn.Module, dtype: torch.dtype | None, device: torch.device,
                  channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if channels_last:
            # expand() to 3 channels first so the NHWC copy is made once, at the stem's width
            if x.shape[1] != wrapped.in_channels:
                x = x.expand(-1, wrapped.in_channels, -1, -1)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return wrapped(x).float()

    return run


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        raise BreastscreenError(f"--backend {name} needs the {name} package: pip install 'breastscreen[fast]'") from None


def _export_onnx(wrapped: nn.Module, example: torch.Tensor) -> Any:
    """The model as an ONNX ``ModelProto`` with a dynamic batch dimension."""
    _import("onnxscript")  # the exporter's dependency: one clear line rather than a deep ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (example,), dynamo=True, verbose=False,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return program.model_proto


def _onnxruntime_runner(wrapped: nn.Module, example: torch.Tensor, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return _onnxruntime_session(_export_onnx(wrapped, example).SerializeToString(), threads)


def _onnxruntime_session(onnx_bytes: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {name: arr})[0])

    return run


def _ov_convert(wrapped: nn.Module, example: torch.Tensor, shape: list[int]) -> Any:
    """``openvino.convert_model`` of ``wrapped`` with input ``shape`` (-1: dynamic)."""
    ov = _import("openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(wrapped, example_input=example, input=[ov.PartialShape(shape)])


def _nncf_int8(ov_model: Any, samples: list[np.ndarray]) -> Any:
    """NNCF post-training int8 quantisation (min-max ranges, fast bias correction), quietly.

    NNCF gives the concatenations of a DenseNet one shared scale, so that the int8 tensors pass
    through them unchanged; a generic QDQ graph requantises every concatenation and ran no faster
    than bf16 here.
    """
    nncf = _import("nncf")
    nncf.set_log_level(logging.ERROR)
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples))


def _ov_runner(ov_model: Any, bf16: bool, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compile ``ov_model`` for this CPU; ``run(x)`` gives its first output as a float32 tensor."""
    ov = _import("openvino")
    config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    request = ov.Core().compile_model(ov_model, "CPU", config).create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        request.infer({0: arr})
        # copy: the request's output buffer is reused by the next call
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))

    return run


def _openvino_runner(wrapped: nn.Module, example: torch.Tensor, precision: str,
                     threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return _ov_runner(_ov_convert(wrapped, example, [-1, *example.shape[1:]]), precision == "bf16", threads)


def _openvino_int8(wrapped: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                   threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """OpenVINO int8 (:func:`_nncf_int8`); layers left in float run in bf16 where the CPU has it."""
    ov_model = _ov_convert(wrapped, example, [-1, *example.shape[1:]])
    quantized = _nncf_int8(ov_model, [calibration[i:i + 1].numpy() for i in range(len(calibration))])
    return _ov_runner(quantized, cpu_has_native_bf16(), threads)


def _quantized_onnx(wrapped: nn.Module, example: torch.Tensor, calibration: torch.Tensor, threads: int) -> bytes:
    """Post-training static int8 quantisation (QDQ format) of the exported graph, as ONNX bytes.

    ONNX Runtime's quantiser works on files, so the graphs pass through a private temporary
    folder that is removed afterwards; nothing is left on disk.
    """
    import tempfile
    from pathlib import Path

    _import("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = _export_onnx(wrapped, example)
    name = proto.graph.input[0].name
    batches = [calibration[i:i + CPU_BATCH_SIZE].numpy() for i in range(0, len(calibration), CPU_BATCH_SIZE)]

    class _Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {name: batch}

    import onnx

    with tempfile.TemporaryDirectory(prefix="breastscreen-int8-") as tmp:
        src, pre, dst = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, str(src))
        root = logging.getLogger()
        level = root.level
        # the quantiser logs one root-logger warning per batch-norm weight it leaves in float
        root.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # shape inference + graph optimisation first, as ONNX Runtime recommends before quantising
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(dst), _Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                calibration_providers=["CPUExecutionProvider"])
        finally:
            root.setLevel(level)
        return dst.read_bytes()


@functools.lru_cache(maxsize=4)
def _phantom_windows(patch: int, n: int, seed: int) -> np.ndarray:
    from breastscreen.inference.heatmaps import prepare_image, windows_with_tissue
    from breastscreen.inference.strides import window_offsets
    from breastscreen.preprocess.mammo import preprocess_view
    from breastscreen.synthetic._mammo_phantom import draw_exam
    from breastscreen.synthetic._mammo_render import render_view

    scale = min(max(patch / 256.0, 0.02), 1.0)
    phantom = draw_exam(seed, 0, prevalence=1.0, benign_prevalence=1.0)
    view = render_view(phantom, "L-CC", scale)
    # Preprocessed like every heatmap input (breast crop, background suppressed, then standardised
    # over the crop): calibrating on the raw render put the background at another level than the
    # heatmapper sees, and int8 clipped it (max |dp| 0.78 on a real mammogram).
    pre = preprocess_view(view.pixels.astype(np.float32), (view.spacing_mm, view.spacing_mm), "L-CC", scale)
    image = prepare_image(pre.image, patch)
    stride = max(patch // 4, 1)
    rows, cols = window_offsets(pre.image.shape[0], patch, stride), window_offsets(pre.image.shape[1], patch, stride)
    # the windows the heatmapper evaluates: any tissue, skin edges and mostly-background ones included
    valid = windows_with_tissue(pre.mask, rows, cols, patch)
    corners = [(int(rows[i]), int(cols[j])) for i, j in zip(*np.nonzero(valid))]
    if not corners:
        raise BreastscreenError(f"no tissue windows of {patch} px in the calibration phantom")
    pick = np.random.default_rng(seed).permutation(len(corners))[:n]
    windows = np.stack([image[r:r + patch, c:c + patch] for r, c in (corners[i] for i in sorted(pick))])
    return windows[:, None].astype(np.float32)


def synthetic_calibration_windows(patch: int, n: int = CALIBRATION_WINDOWS, seed: int = 0) -> np.ndarray:
    """``n`` windows [n, 1, patch, patch] containing breast tissue from one synthetic phantom.

    The phantom (L-CC of exam 0 of cohort ``seed``, with a malignant and a benign finding) is
    rendered at the scale where ``patch`` is the 256-px window at full resolution, preprocessed
    and standardised like every heatmap input, and windowed at a quarter-patch stride; the windows
    are drawn from those the heatmapper would evaluate (any tissue). The same arguments always
    give the same windows.
    """
    return _phantom_windows(int(patch), int(n), int(seed)).copy()


def build_trunk(model: nn.Module, *, in_channels: int, patch: int, backend: str = "openvino",
                precision: str = "fp32", threads: int | None = None,
                calibration: np.ndarray | torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """OpenVINO engine for the trunk over a whole image: ``trunk(x [1, C, H, W]) -> features [C', H', W']``.

    Compiled for any image size (dynamic height and width). ``bf16`` multiplies in bfloat16 where
    the CPU has it (fp32 elsewhere); ``int8`` is quantised by NNCF on the same calibration windows
    as the window engine (:func:`build_engine`), so the two agree in their activation ranges.
    """
    if backend != "openvino":
        raise BreastscreenError(f"a compiled fully-convolutional trunk runs on openvino, not {backend!r}")
    threads = int(threads or torch.get_num_threads())
    example = torch.zeros(1, in_channels, patch, patch)
    ov_model = _ov_convert(_Trunk(model.eval(), in_channels), example, [1, in_channels, -1, -1])
    if precision == "int8":
        calib = calibration if calibration is not None else synthetic_calibration_windows(patch)
        calib = np.asarray(calib, dtype=np.float32)
        ov_model = _nncf_int8(ov_model, [np.ascontiguousarray(np.broadcast_to(calib[i:i + 1], example.shape))
                                         for i in range(len(calib))])
    run = _ov_runner(ov_model, precision in ("bf16", "int8") and cpu_has_native_bf16(), threads)
    return lambda x: run(x)[0]
