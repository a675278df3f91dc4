"""Hypothesis strategies and checks for MLA problems, shared by cumla's tests.

Users testing their own kernels or engines against :mod:`cumla.reference`
can draw problems with :func:`mla_cases`, build inputs with
:func:`make_inputs` and compare with :func:`assert_close`. Only
:func:`mla_cases` needs the ``hypothesis`` package (``pip install cumla[test]``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError:  # only mla_cases needs it
    st = None

from ._arrays import BFLOAT16


def examples(count: int) -> int:
    """A property test's example count: ``count`` times the positive integer in
    the ``CUMLA_EXAMPLE_SCALE`` environment variable (1 when unset), so that a
    longer hunt for rare failures needs no edit of the tests.

    Raises
    ------
    ValueError
        If ``CUMLA_EXAMPLE_SCALE`` is set to anything but a positive integer.
    """
    raw = os.environ.get("CUMLA_EXAMPLE_SCALE", "1")
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"CUMLA_EXAMPLE_SCALE must be a positive integer, got {raw!r}")
    return count * int(raw)


#: Relative error bound by dtype (DESIGN): ||out - ref|| / ||ref||.
TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1e-2}


@dataclass(frozen=True)
class MLACase:
    """One MLA decode problem; ``block_size`` is None for a contiguous cache."""

    batch: int
    q_len: int
    heads: int
    latent_dim: int
    rope_dim: int
    nope_dim: int
    v_dim: int
    seqlens: tuple[int, ...]
    capacity: int
    block_size: int | None
    causal: bool
    dtype: str
    scale: float | None
    squeeze: bool
    seed: int

    @property
    def np_dtype(self) -> np.dtype:
        return BFLOAT16 if self.dtype == "bfloat16" else np.dtype(self.dtype)


def mla_cases(**options: Any):
    """A Hypothesis strategy of :class:`MLACase`; see :func:`_draw_case` for the options."""
    if st is None:
        raise ImportError("cumla.testing.mla_cases needs hypothesis: pip install 'cumla[test]'")
    return st.composite(_draw_case)(**options)


def _draw_case(
    draw,
    *,
    max_batch: int = 3,
    max_q_len: int = 4,
    max_heads: int = 6,
    max_seq: int = 80,
    dims: Sequence[int] = (16, 32, 48),
    rope_dims: Sequence[int] = (0, 16, 32),
    dtypes: Sequence[str] = ("float32", "float16", "bfloat16"),
    block_sizes: Sequence[int] = (1, 4, 16, 64),
    paged: bool | None = None,
    head_counts: Sequence[int] | None = None,
) -> MLACase:
    """Draw an :class:`MLACase`: shapes, lengths (0 included), layout, dtype, causal, scale.

    ``dims`` is the pool for L, Dn and Dv; ``paged=None`` draws both layouts.
    """
    batch = draw(st.integers(0, max_batch))
    q_len = draw(st.integers(1, max_q_len))
    heads = draw(st.sampled_from(head_counts)) if head_counts else draw(st.integers(1, max_heads))
    capacity = draw(st.integers(0, max_seq))
    seqlens = tuple(draw(st.lists(st.integers(0, capacity), min_size=batch, max_size=batch)))
    use_pages = draw(st.booleans()) if paged is None else paged
    block_size = draw(st.sampled_from(block_sizes)) if use_pages else None
    scale = draw(st.one_of(st.none(), st.floats(0.02, 0.5)))
    return MLACase(
        batch=batch, q_len=q_len, heads=heads,
        latent_dim=draw(st.sampled_from(dims)), rope_dim=draw(st.sampled_from(rope_dims)),
        nope_dim=draw(st.sampled_from(dims)), v_dim=draw(st.sampled_from(dims)),
        seqlens=seqlens, capacity=capacity, block_size=block_size,
        causal=draw(st.booleans()), dtype=draw(st.sampled_from(dtypes)), scale=scale,
        squeeze=q_len == 1 and draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)),
    )


def _layout_cache(case: MLACase, rows: np.ndarray, rng: np.random.Generator, garbage: float):
    """Contiguous cache, or a paged pool with a shuffled block table.

    Slots past each request's length, spare blocks and unused block-table
    entries hold garbage, which a correct kernel never lets through.
    """
    batch, capacity, width = rows.shape
    for b, n in enumerate(case.seqlens):
        rows[b, n:] = garbage
    if case.block_size is None:
        return rows, None
    bs = case.block_size
    max_blocks = -(-capacity // bs)
    used = [-(-n // bs) for n in case.seqlens]
    num_blocks = sum(used) + 2
    ids = rng.permutation(num_blocks)
    pool = np.full((num_blocks, bs, width), garbage, dtype=np.float32)
    table = rng.choice([-1, num_blocks, 2**31 - 1], size=(batch, max_blocks)).astype(np.int32)
    nxt = 0
    for b in range(batch):
        for j in range(used[b]):
            table[b, j] = ids[nxt]
            chunk = rows[b, j * bs : (j + 1) * bs]
            pool[ids[nxt], : len(chunk)] = chunk
            nxt += 1
    return pool, table


def make_inputs(case: MLACase, xp: Any = np, garbage: float = np.nan) -> dict[str, Any]:
    """Random keyword arguments for :func:`cumla.decode` (and the reference).

    Values are standard normal, ``w_kv`` scaled by 1/sqrt(L) so scores are
    O(1); arrays are in ``case.dtype`` on ``xp`` (NumPy or CuPy).
    """
    rng = np.random.default_rng(case.seed)
    B, Sq, H = case.batch, case.q_len, case.heads
    L, R, Dn, Dv = case.latent_dim, case.rope_dim, case.nope_dim, case.v_dim
    q = rng.standard_normal((B, Sq, H, Dn + R), dtype=np.float32)
    if case.squeeze:
        q = q[:, 0]
    rows = rng.standard_normal((B, case.capacity, L + R), dtype=np.float32)
    w_kv = rng.standard_normal((L, H * (Dn + Dv)), dtype=np.float32) / np.float32(np.sqrt(L))
    cache, table = _layout_cache(case, rows, rng, garbage)  # draws last: layouts share the values
    lengths = np.asarray(case.seqlens, dtype=np.int32)
    dt = case.np_dtype

    def put(a):
        return None if a is None else xp.asarray(a)

    return dict(
        q=put(q.astype(dt)), cache=put(cache.astype(dt)), w_kv=put(w_kv.astype(dt)),
        rope_dim=R, scale=case.scale, causal=case.causal,
        seqlens=put(lengths) if case.block_size is not None or _passes_lengths(case) else None,
        block_table=put(table),
    )


def _passes_lengths(case: MLACase) -> bool:
    """Whether a contiguous case passes seqlens (False when all are full)."""
    return any(n != case.capacity for n in case.seqlens) or case.batch == 0


def make_latent_inputs(case: MLACase, xp: Any = np, garbage: float = np.nan) -> dict[str, Any]:
    """Random keyword arguments for :func:`cumla.latent_attention`.

    Queries have dim L+R (already absorbed); values are the first L columns.
    """
    args = make_inputs(case, xp, garbage)
    rng = np.random.default_rng(case.seed + 1)
    shape = args["q"].shape[:-1] + (case.latent_dim + case.rope_dim,)
    q = rng.standard_normal(shape, dtype=np.float32).astype(case.np_dtype)
    scale = case.scale if case.scale is not None else 1 / np.sqrt(case.latent_dim + case.rope_dim)
    return dict(q_latent=xp.asarray(q), cache=args["cache"], v_dim=case.latent_dim, scale=float(scale),
                seqlens=args["seqlens"], block_table=args["block_table"], causal=case.causal)


def fp8_reference_cache(rows: Any, fmt: Any, case: MLACase) -> np.ndarray:
    """FP8 cache ``rows`` (layout ``fmt``) dequantised on the host to what the GPU
    kernel that serves ``case`` takes in, for the float64 reference.

    A kernel that takes the e4m3 codes into its MMAs and applies the scales in
    float32 sees the exact values (float64 here); rounding them to the input
    dtype would add an error of the reference's own (1.4% in bfloat16 at two
    tokens of large scores). A kernel that dequantises tiles, or a cache
    dequantised before the kernel, sees values rounded to the input dtype.
    """
    from ._gpu import fp8_kernel

    spec = fp8_kernel(case.np_dtype, fmt, case.latent_dim, case.q_len * case.heads, case.block_size)
    exact = spec is not None and spec.fp8_exact
    return fmt.dequantize(to_numpy(rows), np.float64 if exact else case.np_dtype)


class DLPackProducer:
    """Wraps an array so that it speaks only DLPack, as PyTorch or JAX arrays do."""

    def __init__(self, array: Any):
        self._array = array

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._array.__dlpack_device__()


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


def relative_error(out: Any, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute error when ref is zero)."""
    diff = np.linalg.norm(to_numpy(out).astype(np.float64) - ref)
    norm = np.linalg.norm(ref)
    return float(diff / norm) if norm > 0 else float(diff)


def assert_close(out: Any, ref: np.ndarray, dtype: str, lse: Any = None, ref_lse: np.ndarray | None = None) -> None:
    """Assert ``out`` (and ``lse``) match the float64 reference within DESIGN's tolerance.

    NaN anywhere fails. LSE: -inf exactly where the reference has -inf, and
    elsewhere max |lse - ref| <= tol * (1 + max |ref|).
    """
    tol = TOLERANCE[dtype]
    host = to_numpy(out).astype(np.float64)
    assert host.shape == ref.shape, f"shape {host.shape} != reference {ref.shape}"
    assert not np.isnan(host).any(), "output has NaN (unwritten or poisoned elements)"
    err = relative_error(host, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e} ({dtype})"
    if lse is None:
        return
    got = to_numpy(lse).astype(np.float64)
    assert got.shape == ref_lse.shape, f"lse shape {got.shape} != reference {ref_lse.shape}"
    assert not np.isnan(got).any(), "lse has NaN"
    empty = np.isneginf(ref_lse)
    assert np.array_equal(np.isneginf(got), empty), "lse is -inf exactly where nothing is visible"
    if (~empty).any():
        gap = np.abs(got[~empty] - ref_lse[~empty]).max()
        bound = tol * (1 + np.abs(ref_lse[~empty]).max())
        assert gap <= bound, f"lse error {gap:.3e} > {bound:.3e} ({dtype})"


def put_nan(args: dict[str, Any], request: int, token: int, column: int) -> None:
    """Set one value of a token's cache row to NaN, in place (contiguous or paged
    cache, NumPy or CuPy, as :func:`make_inputs` lays it out)."""
    cache, table = args["cache"], args.get("block_table")
    if table is None:
        cache[request, token, column] = np.nan
    else:
        size = cache.shape[1]
        cache[int(to_numpy(table)[request, token // size]), token % size, column] = np.nan


def assert_nan_where_reference(out: Any, ref: np.ndarray, dtype: str, lse: Any, ref_lse: np.ndarray) -> None:
    """:func:`assert_close` for inputs holding NaN: outputs and LSEs are NaN
    exactly where the reference's are, and the other elements within tolerance."""
    host, got = to_numpy(out).astype(np.float64), to_numpy(lse).astype(np.float64)
    bad, bad_lse = np.isnan(ref), np.isnan(ref_lse)
    assert np.array_equal(np.isnan(host), bad), "output NaN where the reference has none, or the reverse"
    assert np.array_equal(np.isnan(got), bad_lse), "LSE NaN where the reference has none, or the reverse"
    assert_close(np.where(bad, 0, host), np.where(bad, 0, ref), dtype,
                 np.where(bad_lse, 0, got), np.where(bad_lse, 0, ref_lse))


def capture_graph(call: Any, calls: int = 1) -> tuple[Any, Any]:
    """``call`` run once eagerly (it compiles, makes a plan's buffers), then
    captured ``calls`` times back to back in one CUDA graph on a fresh
    non-blocking stream. Returns ``(graph, stream)``: replay with
    ``graph.launch(stream)`` after synchronising the device (that stream does
    not wait for work on the default one). A failing call ends the capture
    before the error propagates, so the stream is not left capturing."""
    import cupy as cp

    call()
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            for _ in range(calls):
                call()
        finally:
            graph = stream.end_capture()
    return graph, stream
