"""Import the exam-list pickles of the NYU reference code without executing anything from them.

Those files are Python pickles: a list of dicts with the view keys ``L-CC``, ``R-CC``,
``L-MLO``, ``R-MLO`` (lists of image names without extension), ``horizontal_flip``
(``'YES'``/``'NO'``), and optionally ``cancer_label`` and ``best_center``. A normal
``pickle.load`` would run any code the file asks for, so they are read with
:class:`RestrictedUnpickler`, whose ``find_class`` refuses every global except a vetted set
that is replaced by harmless stand-ins:

* ``numpy.dtype`` and ``numpy.(_)core.multiarray.scalar`` → a plain ``int``/``float``/``bool``
  decoded from the stored bytes (numeric dtypes only), because the reference code stores
  crop coordinates as numpy scalars;
* ``_codecs.encode`` (used by protocol-2 pickles for byte strings) → ``str.encode('latin-1')``.

numpy arrays (``numpy.core.multiarray._reconstruct``) and every other global are refused with
a :class:`~breastscreen.errors.ManifestError` naming the global; nothing is imported or called.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

from breastscreen.data.types import MG_VIEWS, BreastLabel, Exam, ImageRef, Modality
from breastscreen.errors import ManifestError

_NUMERIC_DTYPE = re.compile(r"^(?P<kind>[iufb])(?P<size>[1248])$")
_SCALAR_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_DTYPE_GLOBALS = {("numpy", "dtype")}
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
_CODECS_GLOBALS = {("_codecs", "encode"), ("codecs", "encode")}


class _SafeDtype:
    """Stand-in for ``numpy.dtype`` during unpickling: records a numeric dtype and byte order only."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        m = _NUMERIC_DTYPE.match(str(name))
        if not m or not isinstance(name, str):
            raise ManifestError(f"exam-list pickle: only numeric numpy scalars are accepted, got dtype {name!r}")
        self.kind = m.group("kind")
        self.size = int(m.group("size"))
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.order = "<" if state[1] in ("|", "=") else state[1]
        else:
            raise ManifestError(f"exam-list pickle: unexpected numpy dtype state {state!r}")


def _safe_scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """Stand-in for ``numpy.core.multiarray.scalar``: decode one number from its bytes."""
    if not isinstance(dtype, _SafeDtype):
        raise ManifestError("exam-list pickle: numpy scalar without a vetted dtype")
    if isinstance(data, str):
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.size:
        raise ManifestError("exam-list pickle: malformed numpy scalar")
    codes = {("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q", ("u", 1): "B", ("u", 2): "H",
             ("u", 4): "I", ("u", 8): "Q", ("f", 4): "f", ("f", 8): "d", ("b", 1): "?"}
    code = codes.get((dtype.kind, dtype.size))
    if code is None:
        raise ManifestError(f"exam-list pickle: unsupported numpy scalar {dtype.kind}{dtype.size}")
    return struct.unpack(dtype.order + code, bytes(data))[0]


def _safe_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` as protocol-2 pickles use it for byte strings."""
    if not isinstance(text, str) or str(encoding).lower() not in ("latin1", "latin-1"):
        raise ManifestError("exam-list pickle: _codecs.encode is only accepted as (str, 'latin1')")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers, strings and numbers (see the module doc)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented in the class
        key = (module, name)
        if key in _DTYPE_GLOBALS:
            return _SafeDtype
        if key in _SCALAR_GLOBALS:
            return _safe_scalar
        if key in _CODECS_GLOBALS:
            return _safe_encode
        if key in _ARRAY_GLOBALS:
            raise ManifestError(
                "exam-list pickle holds numpy arrays, which are refused for safety; convert the arrays "
                "to lists in a trusted Python session and save the list again"
            )
        raise ManifestError(f"exam-list pickle refused: it asks for the global {module}.{name}, which is not allowed "
                            "(only plain lists, dicts, strings and numbers are accepted)")

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise ManifestError("exam-list pickle refused: persistent references are not allowed")


# Budgets of an exam-list pickle: file size, pickle opcodes, and values visited while converting
# (shared references in a pickle can make a small file stand for 2**40 list items).
MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_PICKLE_OPS = 5_000_000
MAX_VALUES = 2_000_000
MAX_DEPTH = 32


class _Budget:
    """Counts values visited (shared objects count every time they are reached)."""

    def __init__(self, limit: int = MAX_VALUES) -> None:
        self.left = limit

    def spend(self, where: str, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise ManifestError(f"{where}: the exam list expands to more than {MAX_VALUES:,} values (shared "
                                "references or a huge list); refused")


def safe_load_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; raise :class:`ManifestError` on anything else.

    The file size and its number of pickle opcodes are limited before anything is built.
    """
    import pickletools

    if len(data) > MAX_PICKLE_BYTES:
        raise ManifestError(f"exam-list pickle of {len(data):,} bytes, above the limit of {MAX_PICKLE_BYTES:,}")
    try:
        for n, _ in enumerate(pickletools.genops(data)):
            if n >= MAX_PICKLE_OPS:
                raise ManifestError(f"exam-list pickle has more than {MAX_PICKLE_OPS:,} operations; refused")
    except ManifestError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError/other types for damaged streams
        raise ManifestError(f"not a valid exam-list pickle ({type(exc).__name__}: {exc})") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin-1").load()
    except ManifestError:
        raise
    except (RecursionError, MemoryError):
        raise ManifestError("exam-list pickle nests too deeply or is too large to load") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise ManifestError(f"not a valid exam-list pickle ({type(exc).__name__}: {exc})") from None


def _plain(value: Any, where: str, budget: _Budget | None = None, depth: int = 0) -> Any:
    """Convert tuples to lists and check that only JSON-friendly values remain (within a budget)."""
    budget = budget or _Budget()
    budget.spend(where)
    if depth > MAX_DEPTH:
        raise ManifestError(f"{where}: values nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, (list, tuple)):
        return [_plain(v, where, budget, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where, budget, depth + 1) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise ManifestError(f"{where}: unsupported value of type {type(value).__name__}")


def _label(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise ManifestError(f"{where}: cancer_label values must be 0 or 1, got {value!r}")


def import_nyu_exam_list(
    pkl_path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    suffix: str = ".png",
    check_files: bool = True,
) -> list[Exam]:
    """Turn an NYU exam-list pickle into exams (images ``image_dir/<name><suffix>``).

    Exam ids are the image-name prefix before the first ``_`` (``0_L_CC`` → ``0``) when that is
    shared by all images of an entry and unique across entries, else the entry's index.
    ``horizontal_flip``, ``best_center`` and any other keys go to ``exam.meta``; ``cancer_label``
    gives the per-breast labels. With ``check_files`` a missing image is an error.
    """
    from breastscreen.safety import check_regular_file, is_within

    pkl_path = Path(pkl_path)
    image_dir = Path(image_dir)
    if not pkl_path.exists():
        raise ManifestError(f"{pkl_path}: file not found")
    check_regular_file(pkl_path, ManifestError)
    if check_files and not image_dir.is_dir():
        raise ManifestError(f"{image_dir}: image folder not found")
    if pkl_path.stat().st_size > MAX_PICKLE_BYTES:
        raise ManifestError(f"{pkl_path}: exam-list pickle above the size limit of {MAX_PICKLE_BYTES:,} bytes")
    try:
        data = safe_load_pickle(pkl_path.read_bytes())
    except ManifestError as exc:
        raise ManifestError(f"{pkl_path}: {exc}") from None
    if not isinstance(data, list):
        raise ManifestError(f"{pkl_path}: expected a list of exam dicts, got {type(data).__name__}")

    budget = _Budget()
    root = image_dir.resolve()
    entries: list[tuple[dict[str, Any], dict[str, list[str]]]] = []
    for i, entry in enumerate(data):
        where = f"{pkl_path} entry {i}"
        budget.spend(where)
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a dict, got {type(entry).__name__}")
        views: dict[str, list[str]] = {}
        for view in MG_VIEWS:
            names = entry.get(view, [])
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, (list, tuple)):
                raise ManifestError(f"{where}: {view} must be a list of image names, got {str(names)[:60]!r}")
            budget.spend(where, len(names))
            if not all(isinstance(n, str) and n for n in names):
                raise ManifestError(f"{where}: {view} must be a list of image names, got {str(names)[:60]!r}")
            for n in names:
                if "\0" in n or not is_within(root / n, root):
                    raise ManifestError(f"{where}: image name {n[:80]!r} leaves the image folder {root} (refused)")
            views[view] = list(names)
        if not any(views.values()):
            raise ManifestError(f"{where}: no image under any of {', '.join(MG_VIEWS)}")
        entries.append((entry, views))

    prefixes = []
    for _, views in entries:
        pre = {n.split("_", 1)[0] for names in views.values() for n in names if "_" in n}
        all_have = all("_" in n for names in views.values() for n in names)
        prefixes.append(next(iter(pre)) if len(pre) == 1 and all_have else None)
    use_prefix = None not in prefixes and len(set(prefixes)) == len(prefixes)

    exams: list[Exam] = []
    missing: list[str] = []
    for i, (entry, views) in enumerate(entries):
        where = f"{pkl_path} entry {i}"
        exam_id = prefixes[i] if use_prefix else str(i)
        exam = Exam(exam_id=exam_id, modality=Modality.MG)
        for view, names in views.items():
            for name in names:
                fname = name if Path(name).suffix.lower() in (".png", ".dcm", ".tif", ".tiff") else name + suffix
                path = (root / fname).resolve()
                if not is_within(path, root):
                    raise ManifestError(f"{where}: image {fname[:80]!r} leaves the image folder {root} (refused)")
                if check_files and not path.is_file():
                    missing.append(str(path))
                exam.views[view].append(ImageRef(path=str(path), meta={"nyu_name": name}))
        flip = entry.get("horizontal_flip")
        if flip is not None:
            if flip not in ("YES", "NO"):
                raise ManifestError(f"{where}: horizontal_flip must be 'YES' or 'NO', got {flip!r}")
            exam.meta["horizontal_flip"] = flip
        labels = entry.get("cancer_label")
        if labels is not None:
            if not isinstance(labels, dict):
                raise ManifestError(f"{where}: cancer_label must be a dict, got {type(labels).__name__}")
            exam.labels = {
                "L": BreastLabel(_label(labels.get("left_benign"), where), _label(labels.get("left_malignant"), where)),
                "R": BreastLabel(
                    _label(labels.get("right_benign"), where), _label(labels.get("right_malignant"), where)
                ),
            }
        if "best_center" in entry:
            exam.meta["best_center"] = _plain(entry["best_center"], where, budget)
        extra = {k: v for k, v in entry.items() if k not in (*MG_VIEWS, "horizontal_flip", "cancer_label", "best_center")}
        if extra:
            exam.meta["nyu"] = _plain(extra, where, budget)
        exams.append(exam)
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ManifestError(f"{pkl_path}: {len(missing)} listed images not found, e.g. {', '.join(missing[:3])}{more}")
    return exams
