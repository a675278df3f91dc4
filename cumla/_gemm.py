"""Batched matrix products on CuPy arrays through cuBLAS, in 16-bit with float32 accumulation.

CuPy's batched ``matmul`` has no bfloat16 path and goes through float32
copies otherwise; absorbing W_uk into the queries and W_uv into the outputs
of a decode step then costs more than the attention. One strided-batched
cuBLAS call (``cublasGemmStridedBatchedEx``) reads the strided views of
q, w_kv and the latent output as they lie, and writes straight into the
layout the next step reads.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# cudaDataType_t / cublasComputeType_t / cublasOperation_t / cublasGemmAlgo_t values (cuBLAS API).
_DATA_TYPE = {"float32": 0, "float16": 2, "bfloat16": 14}
_COMPUTE_32F, _OP_N, _OP_T, _ALGO_DEFAULT = 68, 0, 1, -1
_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)  # host scalars (pointer mode host)


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
    from cupy_backends.cuda.libs import cublas

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
    cublas.gemmStridedBatchedEx(
        cp.cuda.device.get_cublas_handle(), op_b, op_a, cols, m, k,
        _ONE.ctypes.data, b.data.ptr, _DATA_TYPE[kind], ld_b, b.strides[0] // b.itemsize,
        a.data.ptr, _DATA_TYPE[kind], ld_a, a.strides[0] // a.itemsize,
        _ZERO.ctypes.data, out.data.ptr, _DATA_TYPE[out_kind], ld_out, out.strides[0] // out.itemsize,
        n, _COMPUTE_32F, _ALGO_DEFAULT)
    return out
