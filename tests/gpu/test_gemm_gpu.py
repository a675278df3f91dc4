"""cuBLAS batched products behind the absorption steps (run on a GPU; skipped without one)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cumla
from cumla._gemm import batched_matmul
from cumla.testing import TOLERANCE, capture_graph, examples, relative_error, to_numpy

pytestmark = pytest.mark.gpu


@settings(max_examples=examples(40), deadline=None)
@given(n=st.integers(1, 5), m=st.integers(1, 40), k=st.integers(1, 70), cols=st.integers(1, 50),
       dtype=st.sampled_from(["bfloat16", "float16", "float32"]), a_transposed=st.booleans(),
       b_transposed=st.booleans(), out_float32=st.booleans(), pad=st.integers(0, 3))
def test_batched_matmul_on_strided_views(n, m, k, cols, dtype, a_transposed, b_transposed, out_float32, pad):
    """Every layout the absorption passes: row- or column-major operands inside
    wider buffers (padding), batch strides of any size, float32 or 16-bit out."""
    import cupy as cp

    rng = np.random.default_rng(n * 1000 + m * 10 + k)
    np_dtype = np.dtype(getattr(cumla, dtype) if dtype == "bfloat16" else dtype)

    def operand(rows, width, transposed):
        shape = (n, width, rows + pad) if transposed else (n, rows, width + pad)
        buf = cp.asarray(rng.standard_normal(shape).astype(np_dtype))
        return buf[:, :, :rows].transpose(0, 2, 1) if transposed else buf[:, :, :width]

    a, b = operand(m, k, a_transposed), operand(k, cols, b_transposed)
    out_dtype = np.float32 if out_float32 else np_dtype
    wide = cp.full((n, m, cols + pad), np.nan, dtype=out_dtype)
    out = wide[:, :, :cols]
    assert batched_matmul(a, b, out) is out
    ref = to_numpy(a).astype(np.float64) @ to_numpy(b).astype(np.float64)
    assert relative_error(out, ref) <= TOLERANCE[dtype]
    assert np.isnan(to_numpy(wide[:, :, cols:]).astype(np.float64)).all(), "wrote outside out"


def test_batched_matmul_rejects_mismatches():
    import cupy as cp

    a = cp.zeros((2, 3, 4), dtype=np.float16)
    with pytest.raises(ValueError, match="do not match"):
        batched_matmul(a, cp.zeros((2, 5, 6), dtype=np.float16), cp.zeros((2, 3, 6), dtype=np.float16))
    with pytest.raises(TypeError, match="not supported"):
        batched_matmul(a, cp.zeros((2, 4, 6), dtype=np.float32), cp.zeros((2, 3, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="unit-stride"):
        batched_matmul(a, cp.zeros((2, 4, 6), dtype=np.float16), cp.zeros((2, 6, 3), dtype=np.float16).transpose(0, 2, 1))


def test_batched_matmul_is_captured_in_a_cuda_graph():
    """The product replays from a graph on new data in the same buffers, on
    each of two streams (the handle follows the stream it is called on)."""
    import cupy as cp

    rng = np.random.default_rng(5)
    a = cp.asarray(rng.standard_normal((3, 16, 64)).astype(cumla.bfloat16))
    b = cp.asarray(rng.standard_normal((3, 64, 32)).astype(cumla.bfloat16))
    out = cp.empty((3, 16, 32), dtype=np.float32)
    for _ in range(2):  # the eager call before each capture makes the thread's handle on the first
        graph, stream = capture_graph(lambda: batched_matmul(a, b, out))
        a[...] = cp.asarray(rng.standard_normal(a.shape).astype(cumla.bfloat16))
        out.fill(np.nan)
        cp.cuda.Device().synchronize()
        graph.launch(stream)
        stream.synchronize()
        ref = to_numpy(a).astype(np.float64) @ to_numpy(b).astype(np.float64)
        assert relative_error(out, ref) <= TOLERANCE["bfloat16"]
