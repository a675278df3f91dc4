"""CUDA kernels against the float64 reference (run on a GPU; skipped without one)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cumla
from cumla import _kernels, reference
from cumla.testing import (MLACase, assert_close, assert_nan_where_reference, capture_graph, examples,
                           fp8_reference_cache, make_inputs, make_latent_inputs, mla_cases, put_nan, to_numpy)

pytestmark = pytest.mark.gpu

DTYPES = ("bfloat16", "float16", "float32")


def cupy():
    import cupy as cp

    return cp


@pytest.fixture(params=["hopper", "portable"])
def kernel_family(request, monkeypatch):
    """Both kernel families on a Hopper GPU (elsewhere both runs take the portable one)."""
    monkeypatch.setattr(_kernels, "USE_HOPPER_KERNEL", request.param == "hopper")
    return request.param


def poisoned(shape, dtype):
    """An output buffer full of NaN: an element the kernel does not write fails the check."""
    cp = cupy()
    return cp.full(shape, np.nan, dtype=dtype)


def on_host(args):
    return {k: to_numpy(v) if hasattr(v, "__cuda_array_interface__") else v for k, v in args.items()}


def run_latent(args, case, **extra):
    out_shape = args["q_latent"].shape[:-1] + (args["v_dim"],)
    out = poisoned(out_shape, case.np_dtype)
    o, lse = cumla.latent_attention(**args, out=out, return_lse=True, **extra)
    assert o is out
    return o, lse


@settings(max_examples=examples(60))
@given(case=mla_cases(dims=(16, 32, 64), dtypes=DTYPES, max_heads=20, max_seq=300, max_batch=4))
def test_latent_attention_matches_reference(case):
    args = make_latent_inputs(case, cupy())
    o, lse = run_latent(args, case)
    ref_o, ref_lse = reference.latent_attention(**on_host(args))
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


@settings(max_examples=examples(30))
@given(case=mla_cases(dims=(16, 32), dtypes=DTYPES, max_heads=8, max_seq=200),
       strategy=st.sampled_from(["absorbed", "decompressed"]))
def test_decode_matches_reference(case, strategy):
    args = make_inputs(case, cupy())
    out = poisoned(args["q"].shape[:-1] + (case.v_dim,), case.np_dtype)
    o, lse = cumla.decode(**args, strategy=strategy, out=out, return_lse=True)
    ref_o, ref_lse = reference.decode(**on_host(args))
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


@settings(max_examples=examples(60), deadline=None)
@given(case=mla_cases(dims=(128, 256), rope_dims=(0, 64), dtypes=("bfloat16", "float16"), max_heads=80,
                      max_seq=300, max_batch=3))
def test_hopper_dims_match_reference(case):
    """Dims the sm_90a kernel covers (L+R multiple of 64, L multiple of 128), up to
    two CTA row tiles; on Hopper GPUs this is the wgmma kernel."""
    args = make_latent_inputs(case, cupy())
    o, lse = run_latent(args, case)
    ref_o, ref_lse = reference.latent_attention(**on_host(args))
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


def test_hopper_gpus_get_the_wgmma_kernel():
    from cumla import _gpu

    arch = _gpu._arch_of(cupy().cuda.Device().id)
    spec = _kernels.latent_kernel(cumla.bfloat16, 576, 512, 128, arch)
    assert spec.file == ("latent_attention_sm90.cu" if arch == "sm_90a" else "latent_attention.cu")


@pytest.mark.parametrize("parts", [1, 7])
@pytest.mark.parametrize("offset", [0, 2, 8])
def test_output_into_a_view_at_a_word_offset(kernel_family, offset, parts):
    """An ``out`` view into a larger buffer, starting 0, 4 or 16 bytes in, is
    written in place by whole requests (1 part) and split ones (7, through the
    combine), and nothing outside the view is written."""
    cp = cupy()
    case = MLACase(2, 1, 64, latent_dim=512, rope_dim=64, nope_dim=64, v_dim=64, seqlens=(900, 130),
                   capacity=900, block_size=64, causal=True, dtype="bfloat16", scale=None, squeeze=False, seed=6)
    args = make_latent_inputs(case, cp)
    plan = cumla.plan(args["seqlens"], heads=case.heads, q_len=case.q_len, v_dim=case.latent_dim, num_parts=parts)
    shape = args["q_latent"].shape[:-1] + (args["v_dim"],)
    size = int(np.prod(shape))
    buffer = cp.full(offset + size + 8, np.nan, dtype=case.np_dtype)
    out = buffer[offset:offset + size].reshape(shape)
    o, lse = cumla.latent_attention(**args, plan=plan, out=out, return_lse=True)
    assert o is out
    ref_o, ref_lse = reference.latent_attention(**on_host(args))
    assert_close(o, ref_o, case.dtype, lse, ref_lse)
    outside = cp.concatenate([buffer[:offset], buffer[offset + size:]])
    assert bool(cp.isnan(outside).all()), "the kernel wrote outside the output view"


def test_output_view_at_an_odd_element_is_refused():
    """16-bit outputs are stored in pairs: an ``out`` view starting at an odd
    element is refused before any launch (it would fault on the device)."""
    cp = cupy()
    case = MLACase(1, 1, 16, latent_dim=128, rope_dim=64, nope_dim=64, v_dim=64, seqlens=(100,), capacity=100,
                   block_size=None, causal=True, dtype="bfloat16", scale=None, squeeze=False, seed=7)
    largs = make_latent_inputs(case, cp)
    shape = largs["q_latent"].shape[:-1] + (largs["v_dim"],)
    buffer = cp.zeros(1 + int(np.prod(shape)), dtype=case.np_dtype)
    with pytest.raises(ValueError, match="out must start at a 4-byte-aligned address"):
        cumla.latent_attention(**largs, out=buffer[1:].reshape(shape))


DEEPSEEK = dict(latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("heads,q_len,seqlens,block", [
    (16, 1, (4096, 1, 0, 777), 64),
    (128, 1, (3000, 130), None),
    (128, 2, (2049, 5), 64),
    (64, 3, (1000, 64, 65), 16),
    (16, 2, (1000, 65, 3), 16),  # one row group over 16-token pages: no producer warpgroup
    (8, 1, (513,), 1),
    (16, 1, (300, 17), 24),  # pages that do not tile 64 tokens: the portable kernel
    (64, 2, (700, 190), 192),  # pages of several tiles (Hopper: one box per tile)
    (16, 1, (100, 0, 3000, 50), 64),  # a long request after short ones: the combine takes it first
])
@pytest.mark.parametrize("parts", [None, 1, 7, 200])
def test_deepseek_dims_with_every_split(dtype, heads, q_len, seqlens, block, parts, kernel_family):
    """DeepSeek's 576/512 specialisation; plans from 1 part (no split) to many."""
    check_deepseek_dims(dtype, heads, q_len, seqlens, block, parts, seed=5)


def test_batches_past_65535_requests_match_reference():
    """The combine step takes its requests in the launch grid's x dimension (y
    stops at 65535 blocks): 70000 requests, the last one split over parts and
    merged past index 65535, match the reference."""
    cp = cupy()
    batch, block, long = 70000, 16, 2048
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, block + 1, batch).astype(np.int32)
    lengths[-1] = long
    per = long // block
    table = np.full((batch, per), -1, np.int32)
    table[:-1, 0] = np.arange(batch - 1)
    table[-1] = np.arange(batch - 1, batch - 1 + per)
    pool = rng.standard_normal((batch - 1 + per, block, 32), dtype=np.float32).astype(np.float16)
    q = rng.standard_normal((batch, 1, 1, 32), dtype=np.float32).astype(np.float16)
    plan = cumla.plan(cp.asarray(lengths), heads=1, v_dim=16, num_parts=20000)
    assert int(plan.piece_base[-1] - plan.piece_base[-2]) > 1  # the last request is split
    out = poisoned((batch, 1, 1, 16), np.float16)
    o, lse = cumla.latent_attention(cp.asarray(q), cp.asarray(pool), v_dim=16, scale=0.25, seqlens=cp.asarray(lengths),
                                    block_table=cp.asarray(table), plan=plan, out=out, return_lse=True)
    ref_o, ref_lse = reference.latent_attention(q, pool, v_dim=16, scale=0.25, seqlens=lengths, block_table=table)
    assert_close(o, ref_o, "float16", lse, ref_lse)


def check_deepseek_dims(dtype, heads, q_len, seqlens, block, parts, seed):
    """A causal DeepSeek-dims call (planned into ``parts`` parts unless None)
    against the float64 reference."""
    case = MLACase(len(seqlens), q_len, heads, seqlens=tuple(seqlens), capacity=max(seqlens),
                   block_size=block, causal=True, dtype=dtype, scale=None, squeeze=False, seed=seed, **DEEPSEEK)
    cp = cupy()
    args = make_latent_inputs(case, cp)
    lengths = args["seqlens"] if args["seqlens"] is not None else cp.asarray(np.array(seqlens, np.int32))
    plan = None if parts is None else cumla.plan(lengths, heads=heads, q_len=q_len, v_dim=512, num_parts=parts)
    o, lse = run_latent(args, case, plan=plan)
    ref_o, ref_lse = reference.latent_attention(**on_host(args))
    assert_close(o, ref_o, dtype, lse, ref_lse)


@pytest.mark.parametrize("budget", [_kernels.A100_SMEM, 99 * 1024])
@pytest.mark.parametrize("heads,q_len,seqlens,block", [
    (16, 1, (4096, 1, 0, 777), 64),
    (128, 2, (2049, 5), 64),
    (64, 3, (1000, 64, 65), 16),
    (8, 1, (513,), 1),
])
@pytest.mark.parametrize("parts", [None, 7])
def test_deepseek_dims_on_less_shared_memory(budget, heads, q_len, seqlens, block, parts, monkeypatch):
    """The portable kernel's tiles for an A100's 163 KB of shared memory per
    block (32-token tiles at 32 and 64 rows) and an sm_89 GPU's 99 KB (one
    stage, 32-row CTAs), run here with the device's limit replaced."""
    from cumla import _gpu

    monkeypatch.setattr(_gpu, "smem_limit", lambda device_id: budget)
    check_deepseek_dims("bfloat16", heads, q_len, seqlens, block, parts, seed=6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("q_len,seqlens,block,causal", [
    (300, (700, 0, 257), 64, True),
    (256, (4096,), None, True),
    (5, (1000, 63), 1, False),
])
def test_decompressed_deepseek_dims(dtype, q_len, seqlens, block, causal, kernel_family):
    """The tiled-decompression kernels at DeepSeek dims (tensor cores for 16-bit
    inputs, on warpgroup MMAs on Hopper; CUDA cores for
    float32): several query tiles, causal, paged."""
    case = MLACase(len(seqlens), q_len, 4, seqlens=tuple(seqlens), capacity=max(seqlens), block_size=block,
                   causal=causal, dtype=dtype, scale=None, squeeze=False, seed=8, **DEEPSEEK)
    args = make_inputs(case, cupy())
    out = poisoned(args["q"].shape[:-1] + (case.v_dim,), case.np_dtype)
    o, lse = cumla.decode(**args, strategy="decompressed", out=out, return_lse=True)
    ref_o, ref_lse = reference.decode(**on_host(args))
    assert_close(o, ref_o, dtype, lse, ref_lse)


@pytest.mark.parametrize("block", [None, 4])
def test_float32_decompressed_takes_any_dims(block):
    """float32 inputs decompress on CUDA cores for dims that are not multiples of 16."""
    case = MLACase(3, 3, 5, latent_dim=20, rope_dim=6, nope_dim=10, v_dim=7, seqlens=(37, 0, 70), capacity=70,
                   block_size=block, causal=True, dtype="float32", scale=None, squeeze=False, seed=11)
    args = make_inputs(case, cupy())
    out = poisoned(args["q"].shape[:-1] + (case.v_dim,), case.np_dtype)
    o, lse = cumla.decode(**args, strategy="decompressed", out=out, return_lse=True)
    ref_o, ref_lse = reference.decode(**on_host(args))
    assert_close(o, ref_o, "float32", lse, ref_lse)


def check_core(xp, case, parts, fmt=None):
    """latent_attention on ``case`` with a plan of ``parts`` parts (over the
    cache quantised to ``fmt``'s FP8 rows if given) against the reference."""
    args = make_latent_inputs(case, xp)
    lengths = args["seqlens"] if args["seqlens"] is not None else xp.full(case.batch, case.capacity, dtype=np.int32)
    plan = cumla.plan(lengths, heads=case.heads, q_len=case.q_len, v_dim=case.latent_dim, num_parts=parts)
    host = on_host(args)
    if fmt is not None:
        rows = fmt.quantize(args["cache"])
        args = dict(args, cache=rows, cache_format=fmt)
        host = dict(host, cache=fp8_reference_cache(rows, fmt, case))
    o, lse = cumla.latent_attention(**args, plan=plan, return_lse=True)
    ref_o, ref_lse = reference.latent_attention(**host)
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


@pytest.mark.parametrize("parts", [1, 7])
def test_nan_in_a_visible_row_reaches_what_sees_it(kernel_family, parts):
    """A NaN in the row of a token every query of its request sees makes NaN
    that request's outputs and LSEs, as in the reference, in one piece and
    split (through the combine) and in the decompressed kernel; the other
    requests are unchanged."""
    cp = cupy()
    case = MLACase(3, 2, 16, latent_dim=256, rope_dim=64, nope_dim=64, v_dim=64, seqlens=(300, 130, 64),
                   capacity=320, block_size=64, causal=True, dtype="bfloat16", scale=None, squeeze=False, seed=5)
    for make, run, reference_of in ((make_latent_inputs, None, reference.latent_attention),
                                    (make_inputs, "decompressed", reference.decode)):
        host = make(case)
        put_nan(host, 0, 7, 3)
        args = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
        if run is None:
            plan = cumla.plan(args["seqlens"], heads=case.heads, q_len=case.q_len, v_dim=case.latent_dim,
                              num_parts=parts)
            o, lse = run_latent(args, case, plan=plan)
        else:
            o, lse = cumla.decode(**args, strategy=run, return_lse=True)
        ref_o, ref_lse = reference_of(**host)
        assert np.isnan(ref_o[0]).all() and not np.isnan(ref_o[1:]).any()
        assert_nan_where_reference(o, ref_o, case.dtype, lse, ref_lse)


def test_every_kernel_small():
    """One small call per kernel path (paged/contiguous, split/unsplit, both strategies,
    the FP8 dequantising pass): the subset run under compute-sanitizer memcheck
    and racecheck."""
    cp = cupy()
    for dtype in ("bfloat16", "float32"):
        for block, parts in ((None, 1), (16, 5)):
            case = MLACase(2, 2, 3, 64, 64, 32, 32, (150, 40), 150, block, True, dtype, None, False, 1)
            check_core(cp, case, parts)
            if dtype != "float32":
                dargs = make_inputs(case, cp)
                o = cumla.decode(**dargs, strategy="decompressed")
                assert_close(o, reference.decode(**on_host(dargs))[0], dtype)
                check_core(cp, case, parts, cumla.fp8_format(64, 64, 8))  # FP8 rows dequantised per tile
            else:  # FP8 rows of one scale per token, dequantised first by a pass (fp8_rows.cu)
                check_core(cp, case, parts, cumla.fp8_format(64, 64, 64))
    for block, parts in ((None, 1), (16, 5)):
        # The sm_90a kernel's dims (run by the wgmma kernel on Hopper): 80 rows = two CTA row tiles.
        check_core(cp, MLACase(2, 2, 40, latent_dim=128, rope_dim=64, nope_dim=32, v_dim=32, seqlens=(150, 40),
                               capacity=150, block_size=block, causal=True, dtype="bfloat16", scale=None,
                               squeeze=False, seed=1), parts)
        # FP8 rows read straight into MMA fragments (M <= 16 from sm_89 on; elsewhere dequantised per tile).
        check_core(cp, MLACase(2, 2, 3, latent_dim=256, rope_dim=32, nope_dim=32, v_dim=32, seqlens=(150, 40),
                               capacity=150, block_size=block, causal=True, dtype="bfloat16", scale=None,
                               squeeze=False, seed=2), parts, cumla.fp8_format(256, 32, 32))
    for block, parts in ((None, 1), (64, 5)):
        # FP8 rows converted by the Hopper kernel's producer (whole 64-token tiles; elsewhere dequantised per
        # tile): 80 rows = two CTA row tiles.
        check_core(cp, MLACase(2, 2, 40, latent_dim=128, rope_dim=64, nope_dim=32, v_dim=32, seqlens=(150, 40),
                               capacity=150, block_size=block, causal=True, dtype="bfloat16", scale=None,
                               squeeze=False, seed=4), parts, cumla.fp8_format(128, 64, 32))
    # Dims the decompressed kernel runs on warpgroup MMAs on Hopper (two 64-column passes, Dv 64).
    for block in (None, 16):
        case = MLACase(2, 3, 2, latent_dim=128, rope_dim=16, nope_dim=64, v_dim=64, seqlens=(150, 40),
                       capacity=150, block_size=block, causal=True, dtype="bfloat16", scale=None, squeeze=False,
                       seed=3)
        dargs = make_inputs(case, cp)
        assert_close(cumla.decode(**dargs, strategy="decompressed"), reference.decode(**on_host(dargs))[0],
                     "bfloat16")


def test_two_runs_are_bit_identical():
    case = MLACase(3, 1, 128, seqlens=(5000, 3000, 17), capacity=5000, block_size=64, causal=True,
                   dtype="bfloat16", scale=None, squeeze=True, seed=9, **DEEPSEEK)
    args = make_latent_inputs(case, cupy())
    a = cumla.latent_attention(**args)
    b = cumla.latent_attention(**args)
    assert cupy().array_equal(a, b)


def test_non_default_stream():
    cp = cupy()
    case = MLACase(2, 2, 16, seqlens=(700, 300), capacity=700, block_size=None, causal=True,
                   dtype="float16", scale=None, squeeze=False, seed=2, **DEEPSEEK)
    args = make_latent_inputs(case, cp)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        o = cumla.latent_attention(**args)
    stream.synchronize()
    assert_close(o, reference.latent_attention(**on_host(args))[0], "float16")


def captured(call):
    """``call`` captured once in a CUDA graph on a non-blocking stream, after an
    eager run outside the capture (compiles, makes a plan's buffers); returns
    a function that replays it and waits."""
    cp = cupy()
    graph, stream = capture_graph(call)

    def replay():
        cp.cuda.Device().synchronize()  # the capture stream does not wait for the default one
        graph.launch(stream)
        stream.synchronize()

    return replay


def test_graph_capture_replays_with_new_data():
    """A planned call captured once, replayed after new data lands in the same buffers."""
    cp = cupy()
    case = MLACase(4, 1, 64, seqlens=(3000, 100, 2000, 0), capacity=3000, block_size=64, causal=True,
                   dtype="bfloat16", scale=None, squeeze=True, seed=4, **DEEPSEEK)
    args = make_latent_inputs(case, cp)
    plan = cumla.plan(args["seqlens"], heads=64, v_dim=512)
    out = cp.empty((4, 64, 512), dtype=case.np_dtype)
    replay = captured(lambda: cumla.latent_attention(**args, plan=plan, out=out, check=False))
    fresh = np.random.default_rng(99)
    for name in ("q_latent", "cache"):
        shape = args[name].shape
        args[name][...] = cp.asarray(fresh.standard_normal(shape, dtype=np.float32).astype(case.np_dtype))
    out.fill(np.nan)
    replay()
    ref_o, _ = reference.latent_attention(**on_host(args))
    assert_close(out, ref_o, "bfloat16")


def test_planned_decode_replays_in_a_cuda_graph():
    """decode(plan=, out=) (cuBLAS absorption, core, un-absorption) captured
    after a first eager call, replayed with new queries in the same buffer."""
    cp = cupy()
    case = MLACase(3, 2, 64, seqlens=(700, 5, 1300), capacity=1300, block_size=64, causal=True,
                   dtype="bfloat16", scale=None, squeeze=False, seed=5, **DEEPSEEK)
    args = make_inputs(case, cp)
    plan = cumla.plan(args["seqlens"], heads=64, q_len=2, v_dim=512)
    out = cp.empty((3, 2, 64, 128), dtype=case.np_dtype)
    replay = captured(lambda: cumla.decode(**args, plan=plan, out=out, check=False))
    fresh = np.random.default_rng(98)
    args["q"][...] = cp.asarray(fresh.standard_normal(args["q"].shape, dtype=np.float32).astype(case.np_dtype))
    out.fill(np.nan)
    replay()
    ref_o, _ = reference.decode(**on_host(args))
    assert_close(out, ref_o, "bfloat16")


def test_bad_indices_never_fault_without_check():
    """check=False with lengths and block ids out of range: no fault, finite output."""
    cp = cupy()
    q = cp.ones((2, 16, 576), dtype=np.float16)
    cache = cp.ones((4, 64, 576), dtype=np.float16)
    table = cp.asarray(np.array([[0, 99], [-5, 2**31 - 1]], np.int32))
    lengths = cp.asarray(np.array([10**6, -7], np.int32))
    o = cumla.latent_attention(q, cache, v_dim=512, scale=0.1, seqlens=lengths, block_table=table, check=False)
    cp.cuda.runtime.deviceSynchronize()
    assert o.shape == (2, 16, 512) and bool(cp.isfinite(o).all())
    with pytest.raises(ValueError, match="seqlens"):
        cumla.latent_attention(q, cache, v_dim=512, scale=0.1, seqlens=lengths, block_table=table)


def test_device_validation_errors():
    cp = cupy()
    q = cp.zeros((2, 4, 48), dtype=np.float16)
    with pytest.raises(TypeError, match="all be NumPy or all CuPy"):
        cumla.latent_attention(q, np.zeros((2, 8, 48), np.float16), v_dim=32, scale=0.1)
    cache = cp.zeros((3, 4, 48), dtype=np.float16)
    table = cp.asarray(np.array([[0, 3], [1, 2]], np.int32))
    with pytest.raises(ValueError, match=r"block_table\[0, 1\] = 3"):
        cumla.latent_attention(q, cache, v_dim=32, scale=0.1, block_table=table,
                               seqlens=cp.asarray(np.array([8, 1], np.int32)))
    lengths = cp.asarray(np.array([8, 1], np.int32))
    good_table = cp.asarray(np.array([[0, 2], [1, 0]], np.int32))
    plan = cumla.plan(lengths, heads=5, v_dim=32)
    with pytest.raises(ValueError, match="plan was made for"):
        cumla.latent_attention(q, cache, v_dim=32, scale=0.1, block_table=good_table, seqlens=lengths, plan=plan)
    with pytest.raises(TypeError, match="plan was made for numpy"):
        cumla.latent_attention(q, cache, v_dim=32, scale=0.1, block_table=good_table, seqlens=lengths,
                               plan=cumla.plan(np.array([8, 1], np.int32), heads=4, v_dim=32))


def test_dlpack_producers_on_the_device():
    """CUDA memory from a DLPack-only producer is taken without a copy; out is written in place."""
    from cumla.testing import DLPackProducer as Producer

    cp = cupy()
    case = MLACase(2, 1, 16, seqlens=(300, 65), capacity=300, block_size=64, causal=True,
                   dtype="bfloat16", scale=None, squeeze=True, seed=12, **DEEPSEEK)
    args = make_latent_inputs(case, cp)
    wrapped = {k: Producer(v) if isinstance(v, cp.ndarray) else v for k, v in args.items()}
    target = poisoned((2, 16, 512), case.np_dtype)
    o = cumla.latent_attention(**wrapped, out=Producer(target))
    assert isinstance(o, cp.ndarray) and o.data.ptr == target.data.ptr
    assert_close(target, reference.latent_attention(**on_host(args))[0], "bfloat16")


def test_strided_index_arrays():
    """Lengths and block tables given as strided views are read correctly."""
    cp = cupy()
    case = MLACase(3, 1, 16, seqlens=(200, 64, 129), capacity=200, block_size=64, causal=True,
                   dtype="bfloat16", scale=None, squeeze=True, seed=21, **DEEPSEEK)
    args = make_latent_inputs(case, cp)
    wide_lengths = cp.zeros(6, dtype=np.int32)
    wide_lengths[::2] = args["seqlens"]
    wide_table = cp.full((3, 2 * args["block_table"].shape[1]), -1, dtype=np.int32)
    wide_table[:, ::2] = args["block_table"]
    strided = dict(args, seqlens=wide_lengths[::2], block_table=wide_table[:, ::2])
    o = cumla.latent_attention(**strided)
    plan = cumla.plan(wide_lengths[::2], heads=16, v_dim=512, num_parts=4)
    o_planned = cumla.latent_attention(**strided, plan=plan)
    ref_o, _ = reference.latent_attention(**on_host(args))
    assert_close(o, ref_o, "bfloat16")
    assert_close(o_planned, ref_o, "bfloat16")
