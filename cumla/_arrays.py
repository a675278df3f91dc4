"""Array-module dispatch and dtype helpers shared by every backend."""
from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), BFLOAT16)
INDEX_DTYPE = np.dtype(np.int32)


def _cupy() -> ModuleType | None:
    loaded = sys.modules.get("cupy")  # every call asks: skip the import machinery once loaded
    if loaded is not None:
        return loaded
    try:
        import cupy
    except Exception:  # CuPy absent or broken: NumPy-only installation
        return None
    return cupy


def module_of(x: Any) -> str:
    """'numpy', 'cupy' or 'other' for one argument."""
    if type(x).__module__.startswith("cupy"):
        cp = _cupy()
        if cp is not None and isinstance(x, cp.ndarray):
            return "cupy"
    if isinstance(x, np.ndarray):
        return "numpy"
    return "other"


def array_module(**arrays: Any) -> ModuleType:
    """The one array module (NumPy or CuPy) shared by the named arrays.

    ``None`` values are skipped. Lists, scalars and foreign objects raise
    TypeError naming the argument; mixing NumPy and CuPy raises TypeError.
    """
    seen: dict[str, str] = {}
    for name, value in arrays.items():
        if value is None:
            continue
        kind = module_of(value)
        if kind == "other":
            raise TypeError(
                f"{name} must be a numpy.ndarray, a cupy.ndarray or a DLPack-capable array, "
                f"got {type(value).__name__}"
            )
        seen[name] = kind
    kinds = set(seen.values())
    if len(kinds) > 1:
        listing = ", ".join(f"{n}: {k}" for n, k in seen.items())
        raise TypeError(f"arrays must all be NumPy or all CuPy, got a mix ({listing})")
    if kinds == {"cupy"}:
        return _cupy()
    return np


_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def from_dlpack(name: str, x: Any) -> Any:
    """``x`` itself if it is a NumPy/CuPy array (or None), else a zero-copy view of a
    DLPack producer (PyTorch, JAX, ...): NumPy for host memory, CuPy for CUDA memory."""
    if x is None or module_of(x) != "other" or not hasattr(x, "__dlpack__"):
        return x
    device_type = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else _DLPACK_CPU
    try:
        if device_type == _DLPACK_CUDA:
            cp = _cupy()
            if cp is None:
                raise TypeError("it lives on a CUDA device and CuPy is not installed")
            return cp.from_dlpack(x)
        if device_type == _DLPACK_CPU:
            return np.from_dlpack(x)
        raise TypeError(f"its DLPack device type {device_type} is neither CPU (1) nor CUDA (2)")
    except (TypeError, BufferError, RuntimeError, ValueError) as err:
        raise TypeError(f"{name} could not be taken through DLPack: {err}") from err


def ingest(**arrays: Any) -> tuple[ModuleType, dict[str, Any]]:
    """The arguments as NumPy or CuPy arrays (DLPack producers converted without a
    copy) and their one array module; see :func:`array_module` for the errors."""
    taken = {name: from_dlpack(name, value) for name, value in arrays.items()}
    return array_module(**taken), taken


def dtype_name(dtype: Any) -> str:
    return "bfloat16" if np.dtype(dtype) == BFLOAT16 else np.dtype(dtype).name
