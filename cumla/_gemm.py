"""Batched matrix products on CuPy arrays through cuBLAS, in 16-bit with float32 accumulation.

CuPy's batched ``matmul`` has no bfloat16 path and goes through float32
copies otherwise; absorbing W_uk into the queries and W_uv into the outputs
of a decode step then costs more than the attention. One strided-batched
cuBLAS call (``cublasGemmStridedBatchedEx``) reads the strided views of
q, w_kv and the latent output as they lie, and writes straight into the
layout the next step reads.

The call goes through ctypes on a cuBLAS handle of our own, not through
CuPy's wrappers: those refuse any cuBLAS call while a stream is being
captured, and a planned ``decode`` must be capturable in a CUDA graph.
cuBLAS itself supports capture once a handle has a workspace of its own
(then it allocates nothing), which is what each handle here gets.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import numpy as np

from ._libs import loaded_library

# cudaDataType_t / cublasComputeType_t / cublasOperation_t / cublasGemmAlgo_t values (cuBLAS API).
_DATA_TYPE = {"float32": 0, "float16": 2, "bfloat16": 14}
_COMPUTE_32F, _OP_N, _OP_T, _ALGO_DEFAULT = 68, 0, 1, -1
_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)  # host scalars (pointer mode host)
#: Workspace per handle: the size cuBLAS's own default pool uses on Hopper.
WORKSPACE_BYTES = 32 << 20


def _library_path() -> str:
    """The libcublas CuPy uses (so that both share one copy in the process)."""
    import cupy as cp

    cp.cuda.device.get_cublas_handle()  # makes CuPy load its cuBLAS
    found = loaded_library("/libcublas.so") or ctypes.util.find_library("cublas")
    if found is None:
        raise RuntimeError("libcublas not found (CuPy's cuBLAS is needed for decode's absorption products)")
    return found


class _Cublas:
    """cuBLAS through ctypes: one handle and workspace per thread and device
    (a handle carries its stream: threads must not share one), made outside
    any capture (the thread's first eager call) and reused by later calls."""

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    # (thread, device) -> [handle, workspace, the stream the handle is bound to]
    _handles: dict[tuple[int, int], list[Any]] = {}

    @classmethod
    def lib(cls) -> ctypes.CDLL:
        if cls._lib is None:
            lib = ctypes.CDLL(_library_path())
            lib.cublasCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
            lib.cublasSetStream_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.cublasSetWorkspace_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            ll, i, p = ctypes.c_longlong, ctypes.c_int, ctypes.c_void_p
            lib.cublasGemmStridedBatchedEx.argtypes = [
                p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll, p, p, i, i, ll, i, i, i]
            cls._lib = lib
        return cls._lib

    @classmethod
    def handle(cls, stream_ptr: int) -> ctypes.c_void_p:
        """This thread's handle on the current device, bound to ``stream_ptr``
        with its own workspace."""
        import cupy as cp

        key = (threading.get_ident(), cp.cuda.runtime.getDevice())
        with cls._lock:
            if key not in cls._handles:
                if cp.cuda.runtime.streamIsCapturing(stream_ptr):
                    raise RuntimeError("decode's first call in a thread on a device must run outside a CUDA-graph "
                                       "capture (it creates the thread's cuBLAS handle and compiles the kernels)")
                handle = ctypes.c_void_p()
                _check(cls.lib().cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
                cls._handles[key] = [handle, cp.empty(WORKSPACE_BYTES, dtype=np.uint8), None]
        entry = cls._handles[key]
        handle, workspace, bound = entry
        if bound != stream_ptr:  # a decode step calls twice on one stream: bind once
            lib = cls.lib()
            _check(lib.cublasSetStream_v2(handle, stream_ptr), "cublasSetStream")
            # Setting a stream resets the handle to cuBLAS's default workspace pool: set ours again.
            _check(lib.cublasSetWorkspace_v2(handle, workspace.data.ptr, workspace.nbytes), "cublasSetWorkspace")
            entry[2] = stream_ptr
        return handle


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with cublasStatus_t {status}")


def _transposed_operand(x: Any) -> tuple[int, int]:
    """cuBLAS (op, ld) that make op(X) the column-major transpose of each row-major
    matrix x[i] (the last two axes, one of which must be unit-stride)."""
    (rows, cols), item = x.shape[1:], x.itemsize
    s_rows, s_cols = x.strides[1] // item, x.strides[2] // item
    if s_cols == 1 or cols == 1:  # x[i] row-major is its transpose column-major
        return _OP_N, max(s_rows, cols, 1)
    if s_rows == 1 or rows == 1:  # x[i] column-major: transpose it
        return _OP_T, max(s_cols, rows, 1)
    raise ValueError(f"no unit-stride axis in a matrix of strides {x.strides}")


def batched_matmul(a: Any, b: Any, out: Any) -> Any:
    """``out[i] = a[i] @ b[i]`` for CuPy arrays of shapes (n, M, K), (n, K, N), (n, M, N).

    Views with any strides work as long as each matrix has a unit-stride axis
    and ``out``'s last axis is unit-stride; ``a`` and ``b`` share a dtype
    (float16, bfloat16 or float32), ``out`` has theirs or float32. The
    product accumulates in float32 and is rounded once into ``out``.
    """
    import cupy as cp

    n, m, k = a.shape
    n_b, k_b, cols = b.shape
    if (n_b, k_b) != (n, k) or out.shape != (n, m, cols):
        raise ValueError(f"shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    if a.dtype != b.dtype or out.dtype not in (a.dtype, np.dtype(np.float32)):
        raise TypeError(f"dtypes {a.dtype} @ {b.dtype} -> {out.dtype} are not supported")
    if out.strides[2] != out.itemsize and cols > 1:
        raise ValueError("out's last axis must be unit-stride")
    if out.size == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    # Row-major out = a b is column-major out^T = b^T a^T: cuBLAS's (m, n, k) = (N, M, K).
    op_b, ld_b = _transposed_operand(b)  # b^T (N x K)
    op_a, ld_a = _transposed_operand(a)  # a^T (K x M)
    ld_out = max(out.strides[1] // out.itemsize, cols)
    kind, out_kind = a.dtype.name, out.dtype.name  # "float32", "float16" or "bfloat16"
    stream = cp.cuda.get_current_stream().ptr
    _check(_Cublas.lib().cublasGemmStridedBatchedEx(
        _Cublas.handle(stream), op_b, op_a, cols, m, k,
        _ONE.ctypes.data, b.data.ptr, _DATA_TYPE[kind], ld_b, b.strides[0] // b.itemsize,
        a.data.ptr, _DATA_TYPE[kind], ld_a, a.strides[0] // a.itemsize,
        _ZERO.ctypes.data, out.data.ptr, _DATA_TYPE[out_kind], ld_out, out.strides[0] // out.itemsize,
        n, _COMPUTE_32F, _ALGO_DEFAULT), "cublasGemmStridedBatchedEx")
    return out
