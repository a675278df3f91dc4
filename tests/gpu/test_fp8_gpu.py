"""FP8 cache rows read and dequantised inside the tensor-core kernel (run on a
GPU; skipped without one), against the float64 reference on the same rows
dequantised by the NumPy format code."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import cumla
from cumla import _kernels, reference
from cumla.testing import (
    MLACase, assert_close, examples, fp8_reference_cache, make_inputs, make_latent_inputs, mla_cases, to_numpy,
)

pytestmark = pytest.mark.gpu


def fp8_inputs(case, group, args=None):
    """latent_attention arguments (``args``, else ``make_latent_inputs``' for the
    case) whose cache is made FP8 rows of ``group`` values per scale, and the
    reference's arguments over those rows dequantised to what the kernel that
    reads them takes in (``fp8_reference_cache``)."""
    import cupy as cp

    fmt = cumla.fp8_format(case.latent_dim, case.rope_dim, group)
    args = make_latent_inputs(case, cp) if args is None else args
    rows = fmt.quantize(args["cache"])
    host = {k: to_numpy(v) if hasattr(v, "__cuda_array_interface__") else v for k, v in args.items()}
    host["cache"] = fp8_reference_cache(rows, fmt, case)
    return dict(args, cache=rows, cache_format=fmt), host


def check(case, group, args=None, **extra):
    import cupy as cp

    args, host = fp8_inputs(case, group, args)
    out = cp.full(args["q_latent"].shape[:-1] + (case.latent_dim,), np.nan, dtype=case.np_dtype)
    o, lse = cumla.latent_attention(**args, out=out, return_lse=True, **extra)
    ref_o, ref_lse = reference.latent_attention(**host)
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


# Few dims and groups: each (dtype, L, R, group) is a kernel build on the device.
@settings(max_examples=examples(25), deadline=None)
@given(case=mla_cases(dims=(32, 64), rope_dims=(0, 16), dtypes=("bfloat16", "float16"), max_heads=40,
                      max_seq=200, max_batch=3),
       group=st.sampled_from([8, 16]))
def test_fp8_rows_read_in_the_kernel_match_reference(case, group):
    fmt = cumla.fp8_format(case.latent_dim, case.rope_dim, group)
    assume(_kernels.fp8_in_kernel(fmt, case.latent_dim))
    check(case, group)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("heads,q_len,seqlens,block,fragments", [
    (16, 1, (4096, 1, 0, 777), 64, True),
    (16, 1, (4096, 1, 0, 777), 64, False),
    (8, 2, (300, 17, 64), 1, True),
    (3, 4, (129, 0, 1000), None, True),
    (128, 2, (2049, 5), 64, True),
    (64, 1, (1000, 65), None, True),
    (32, 1, (300, 17), 1, True),
])
@pytest.mark.parametrize("parts", [None, 7])
@pytest.mark.parametrize("smem", [None, _kernels.A100_SMEM, 99 * 1024])
def test_flashmla_fp8_layout_at_deepseek_dims(dtype, heads, q_len, seqlens, block, fragments, parts, smem,
                                              monkeypatch):
    """The 656-byte rows (512 e4m3, 4 float32 scales, 64 bfloat16 RoPE) through 16,
    32 and 64 query rows per CTA (3, 2 and 1 raw stages), split and unsplit;
    also with the tiles for an A100's 163 KB per block (32 tokens at 64 rows)
    and an sm_89 GPU's 99 KB (32 rows per CTA, 32 tokens). M <= 16 runs the
    kernel that reads the rows into its MMA fragments (two CTAs per SM; one
    at 163 KB; at 99 KB it does not fit), and once (on Hopper, as M > 16
    over whole 64-token tiles does) the Hopper kernel whose producer
    converts the rows; other pages and budgets the kernel that dequantises
    tiles."""
    import cupy as cp
    from cumla import _gpu

    if smem is not None:
        monkeypatch.setattr(_gpu, "smem_limit", lambda device_id: smem)
    monkeypatch.setattr(_kernels, "USE_FP8_FRAGMENTS", fragments)

    case = MLACase(len(seqlens), q_len, heads, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128,
                   seqlens=tuple(seqlens), capacity=max(seqlens), block_size=block, causal=True, dtype=dtype,
                   scale=None, squeeze=False, seed=3)
    plan = None if parts is None else cumla.plan(cp.asarray(np.array(seqlens, np.int32)), heads=heads, q_len=q_len,
                                                 v_dim=512, num_parts=parts)
    check(case, 128, plan=plan)


@pytest.mark.parametrize("heads,hopper,name", [
    (16, True, "latent_attention_fp8_fragments<bf16_t, 512, 64, 128, 2>"),
    (32, True, "latent_attention_sm90<bf16_t, 576, 512, true, 128>"),
    (32, False, "latent_attention<bf16_t, 576, 512, 2, 64, 128>"),
])
def test_fp8_rows_in_the_kernel_are_deterministic(heads, hopper, name, monkeypatch):
    """Two calls over FlashMLA's layout give identical bits, from each kernel
    that reads FP8 rows (the Hopper kernel on sm_90a; which pointer it gets
    is checked without a GPU, test_gpu_host.py)."""
    monkeypatch.setattr(_kernels, "USE_HOPPER_KERNEL", hopper)
    case = MLACase(3, 1, heads, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128, seqlens=(500, 64, 1),
                   capacity=500, block_size=64, causal=False, dtype="bfloat16", scale=None, squeeze=False, seed=9)
    args, _ = fp8_inputs(case, 128)
    first = cumla.latent_attention(**args)
    second = cumla.latent_attention(**args)
    np.testing.assert_array_equal(to_numpy(first).view(np.uint16), to_numpy(second).view(np.uint16))
    spec = _kernels.latent_kernel(cumla.bfloat16, 576, 512, heads, "sm_90a", 64, fp8=args["cache_format"])
    assert spec is not None and spec.name == name


# Each (dtype, R, group) is a kernel build on the device: few of them.
@settings(max_examples=examples(20), deadline=None)
@given(case=mla_cases(dims=(256,), rope_dims=(0, 32), dtypes=("bfloat16", "float16"), max_heads=16,
                      max_seq=300, max_batch=3),
       group=st.sampled_from([32, 64]))
def test_fp8_rows_read_into_fragments_match_reference(case, group):
    """The fragment kernel (M <= 16) on L = 256 with and without RoPE, a scale
    per 32 values (a warp's 32 output columns) and per 64 (two warps' columns)."""
    assume(case.q_len * case.heads <= _kernels.FP8_FRAGMENT_ROWS)
    fmt = cumla.fp8_format(case.latent_dim, case.rope_dim, group)
    assert _kernels.fp8_fragment_kernel(case.np_dtype, fmt, case.q_len * case.heads, "sm_90a") is not None
    check(case, group)


# Each (dtype, L, R, group) is a kernel build on the device: few of them.
@settings(max_examples=examples(20), deadline=None)
@given(case=mla_cases(dims=(128,), rope_dims=(0, 64), dtypes=("bfloat16",), max_heads=40, max_seq=300,
                      max_batch=3, block_sizes=(64, 128)),
       group=st.sampled_from([16, 32]))
def test_fp8_rows_converted_by_the_hopper_producer_match_reference(case, group):
    """The Hopper kernel over FP8 rows, its producer warpgroup converting them
    into the 16-bit stages (sm_90a; elsewhere the kernel that dequantises
    tiles): L = 128 with and without RoPE, scales per 16 and 32 values, any
    M (the fragment kernel switched off for M <= 16), pages of 64 and 128
    tokens or a contiguous cache. float16 and DeepSeek's dims: the FlashMLA
    layout test."""
    fmt = cumla.fp8_format(case.latent_dim, case.rope_dim, group)
    assert _kernels.hopper_fp8_kernel(case.np_dtype, fmt, "sm_90a", case.block_size) is not None
    with pytest.MonkeyPatch.context() as patch:  # (a fixture would not be reset between examples)
        patch.setattr(_kernels, "USE_FP8_FRAGMENTS", False)
        check(case, group)


@pytest.mark.parametrize("dtype,magnitude", [("bfloat16", 1e-6), ("bfloat16", 1e4), ("float16", 1e-3),
                                             ("float16", 8.0)])
def test_fp8_fragments_take_queries_of_any_magnitude(dtype, magnitude):
    """The fragment kernel brings each query row into f16 range by a power of
    two: queries times 1e-6 or 1e4 (past f16's 65504, in bfloat16), or in
    float16 as far as it stays normal, with the softmax scale divided by the
    same, match the reference."""
    case = MLACase(2, 1, 16, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128, seqlens=(700, 65),
                   capacity=700, block_size=64, causal=False, dtype=dtype, scale=None, squeeze=False, seed=5)
    args, host = fp8_inputs(case, 128)
    args["q_latent"] = (args["q_latent"].astype(np.float32) * magnitude).astype(case.np_dtype)
    host["q_latent"] = to_numpy(args["q_latent"])
    args["scale"] = host["scale"] = args["scale"] / magnitude
    o, lse = cumla.latent_attention(**args, return_lse=True)
    ref_o, ref_lse = reference.latent_attention(**host)
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


@pytest.mark.parametrize("heads,q_len", [(16, 1), (8, 2)])
@pytest.mark.parametrize("fragments", [True, False])
@pytest.mark.parametrize("parts", [None, 5])
def test_fp8_scores_that_keep_rising_move_the_bases_tile_after_tile(heads, q_len, fragments, parts, monkeypatch):
    """Keys that grow by half their size every two 64-token tiles, under a
    softmax scale eight times the usual: a row's maximum passes its base by
    more than the slack (2^8) in tile after tile, and stays within it in the
    tiles between. The fragment kernel and (fragments off) the Hopper kernel
    match the reference."""
    import cupy as cp

    monkeypatch.setattr(_kernels, "USE_FP8_FRAGMENTS", fragments)
    seqlens = (700, 300, 1)
    case = MLACase(len(seqlens), q_len, heads, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128,
                   seqlens=seqlens, capacity=max(seqlens), block_size=None, causal=True, dtype="bfloat16",
                   scale=8 / np.sqrt(576), squeeze=False, seed=11)
    args = make_latent_inputs(case, cp)
    level = 1 + 0.5 * (cp.arange(case.capacity) // 128)
    args["cache"] = (args["cache"].astype(cp.float32) * level[None, :, None]).astype(args["cache"].dtype)
    # What the docstring says of request 0's first row over its first ten
    # tiles (all visible): its lazy base moves in several tiles past the
    # first, and stays in others.
    keys, query = (to_numpy(x).astype(np.float64) for x in (args["cache"][0, :640], args["q_latent"][0, 0, 0]))
    scores = keys @ query * case.scale * np.log2(np.e)
    base, moves = -np.inf, []
    for tile_max in scores.reshape(10, 64).max(axis=1):
        moves.append(tile_max > base + 8)
        base = tile_max if moves[-1] else base
    assert sum(moves[1:]) >= 3 and not all(moves[1:]), moves
    plan = None if parts is None else cumla.plan(cp.asarray(np.array(seqlens, np.int32)), heads=heads, q_len=q_len,
                                                 v_dim=512, num_parts=parts)
    check(case, 128, args, plan=plan)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("latent,rope,group",
                         [(512, 64, 128), (512, 64, 512), (1024, 64, 256), (36, 4, 4), (40, 6, 8)])
@pytest.mark.parametrize("paged", [False, True])
def test_fp8_rows_dequantised_by_the_pass_match_the_format(dtype, latent, rope, group, paged):
    """The pass that dequantises FP8 rows for the kernels that do not read them
    (word by word where every field of a row is 4-byte aligned: FlashMLA's
    rows, one scale per token, 1168-byte rows wider than one round of a
    lane's loads, 80-byte rows of groups of 4; byte by byte for 6 RoPE
    values) gives Fp8Format.dequantize's values exactly, a NaN code
    included, from a contiguous cache or the blocks a table names."""
    import cupy as cp
    from cumla import _gpu

    fmt = cumla.fp8_format(latent, rope, group)
    np_dtype = cumla.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(7)
    spread = np.logspace(-3, 3, latent + rope, dtype=np.float32)  # scales far apart across the groups
    raw = fmt.quantize(rng.standard_normal((6 * 8, latent + rope), dtype=np.float32) * spread)
    raw[5, 7] = 0x7F  # an e4m3 NaN code
    blocks = np.array([4, 0, 2], np.int32) if paged else None  # three 8-row blocks, out of order
    got = _gpu._dequantize_rows(fmt, cp.asarray(raw), None if blocks is None else cp.asarray(blocks), 8, np_dtype)
    picked = raw if blocks is None else raw.reshape(6, 8, -1)[blocks].reshape(-1, raw.shape[-1])
    want = fmt.dequantize(picked, np_dtype)
    assert np.isnan(want).any() == (blocks is None or 0 in blocks)
    np.testing.assert_array_equal(to_numpy(got).astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("order", ["cache", "table"])
@pytest.mark.parametrize("block", [1, 16, 64])
@pytest.mark.parametrize("dtype,strategy", [("bfloat16", "latent"), ("float32", "latent"), ("bfloat16", "decompressed")])
def test_dequantise_first_takes_only_the_blocks_within_the_lengths(block, dtype, strategy, order, monkeypatch):
    """Layouts no FP8 kernel reads are dequantised first, and only the blocks
    within each request's length: with a table padded for its longest request
    whose entries past the other lengths name spare blocks of NaN codes, the
    pass is handed exactly the blocks within the lengths (-1 elsewhere) and
    the result is the reference's. The pass's output pool takes the cache's
    order where the cache has fewer blocks than the table has entries, else
    the table's; both are covered (a pool grown by NaN blocks for the
    latter)."""
    import cupy as cp
    from cumla import _gpu

    seqlens = (300, 17, 0, 129)
    case = MLACase(len(seqlens), 1, 16, latent_dim=64, rope_dim=64, nope_dim=32, v_dim=32, seqlens=seqlens,
                   capacity=320, block_size=block, causal=True, dtype=dtype, scale=None, squeeze=False, seed=11)
    fmt = cumla.fp8_format(64, 64, 64)  # one scale per token: 196-byte rows, which no FP8 kernel reads
    args = make_latent_inputs(case, cp) if strategy == "latent" else make_inputs(case, cp)
    table = to_numpy(args["block_table"])
    if order == "table":
        grown = table.size + 3 - args["cache"].shape[0]
        args["cache"] = cp.concatenate([args["cache"], cp.full((grown,) + args["cache"].shape[1:], np.nan,
                                                               dtype=args["cache"].dtype)])
    assert (args["cache"].shape[0] < table.size) == (order == "cache")
    needed = [-(-n // block) for n in seqlens]
    reached = {int(table[b, j]) for b in range(len(seqlens)) for j in range(needed[b])}
    spare = [i for i in range(args["cache"].shape[0]) if i not in reached]  # garbage (NaN) blocks
    for b in range(len(seqlens)):
        for j in range(needed[b], table.shape[1]):
            table[b, j] = spare[(b + j) % len(spare)]
    rows = fmt.quantize(args["cache"])
    host = {k: to_numpy(v) if hasattr(v, "__cuda_array_interface__") else v for k, v in args.items()}
    host.update(cache=fp8_reference_cache(rows, fmt, case), block_table=table)
    args.update(cache=rows, block_table=cp.asarray(table), cache_format=fmt)

    handed = []
    dequantize = _gpu._dequantize_rows

    def recording(fmt, cache, blocks, *rest):
        handed.append(to_numpy(blocks))
        return dequantize(fmt, cache, blocks, *rest)

    monkeypatch.setattr(_gpu, "_dequantize_rows", recording)
    if strategy == "latent":
        o, lse = cumla.latent_attention(**args, return_lse=True)
        ref_o, ref_lse = reference.latent_attention(**host)
    else:
        o, lse = cumla.decode(**args, strategy="decompressed", return_lse=True)
        ref_o, ref_lse = reference.decode(**host)
    assert_close(o, ref_o, case.dtype, lse, ref_lse)
    (blocks,) = handed
    assert blocks.shape == (min(table.size, args["cache"].shape[0]),)
    assert set(blocks[blocks >= 0].tolist()) == reached and set(blocks[blocks < 0].tolist()) <= {-1}
    if order == "cache":
        np.testing.assert_array_equal(blocks, [i if i in reached else -1 for i in range(blocks.size)])
