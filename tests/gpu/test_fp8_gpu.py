"""FP8 cache rows read and dequantised inside the tensor-core kernel (run on a
GPU; skipped without one), against the float64 reference on the same rows
dequantised by the NumPy format code."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import cumla
from cumla import _kernels, reference
from cumla.testing import MLACase, assert_close, make_inputs, make_latent_inputs, mla_cases, to_numpy

pytestmark = pytest.mark.gpu


def fp8_inputs(case, group):
    """latent_attention arguments whose cache is FP8 rows of ``group`` values per
    scale, and the reference's arguments over those rows dequantised to the
    input dtype (what the kernel's MMAs read)."""
    import cupy as cp

    fmt = cumla.fp8_format(case.latent_dim, case.rope_dim, group)
    args = make_latent_inputs(case, cp)
    rows = fmt.quantize(args["cache"])
    host = {k: to_numpy(v) if hasattr(v, "__cuda_array_interface__") else v for k, v in args.items()}
    host["cache"] = fmt.dequantize(to_numpy(rows), case.np_dtype)
    return dict(args, cache=rows, cache_format=fmt), host


def check(case, group, **extra):
    import cupy as cp

    args, host = fp8_inputs(case, group)
    out = cp.full(args["q_latent"].shape[:-1] + (case.latent_dim,), np.nan, dtype=case.np_dtype)
    o, lse = cumla.latent_attention(**args, out=out, return_lse=True, **extra)
    ref_o, ref_lse = reference.latent_attention(**host)
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


# Few dims and groups: each (dtype, L, R, group) is a kernel build on the device.
@settings(max_examples=25, deadline=None)
@given(case=mla_cases(dims=(32, 64), rope_dims=(0, 16), dtypes=("bfloat16", "float16"), max_heads=40,
                      max_seq=200, max_batch=3),
       group=st.sampled_from([8, 16]))
def test_fp8_rows_read_in_the_kernel_match_reference(case, group):
    fmt = cumla.fp8_format(case.latent_dim, case.rope_dim, group)
    assume(_kernels.fp8_in_kernel(fmt, case.latent_dim))
    check(case, group)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("heads,q_len,seqlens,block", [
    (16, 1, (4096, 1, 0, 777), 64),
    (128, 2, (2049, 5), 64),
    (64, 1, (1000, 65), None),
    (32, 1, (300, 17), 1),
])
@pytest.mark.parametrize("parts", [None, 7])
@pytest.mark.parametrize("smem", [None, _kernels.A100_SMEM, 99 * 1024])
def test_flashmla_fp8_layout_at_deepseek_dims(dtype, heads, q_len, seqlens, block, parts, smem, monkeypatch):
    """The 656-byte rows (512 e4m3, 4 float32 scales, 64 bfloat16 RoPE) through 16,
    32 and 64 query rows per CTA (3, 2 and 1 raw stages), split and unsplit;
    also with the tiles for an A100's 163 KB per block (32 tokens at 64 rows)
    and an sm_89 GPU's 99 KB (32 rows per CTA, 32 tokens)."""
    import cupy as cp
    from cumla import _gpu

    if smem is not None:
        monkeypatch.setattr(_gpu, "smem_limit", lambda device_id: smem)

    case = MLACase(len(seqlens), q_len, heads, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128,
                   seqlens=tuple(seqlens), capacity=max(seqlens), block_size=block, causal=True, dtype=dtype,
                   scale=None, squeeze=False, seed=3)
    plan = None if parts is None else cumla.plan(cp.asarray(np.array(seqlens, np.int32)), heads=heads, q_len=q_len,
                                                 v_dim=512, num_parts=parts)
    check(case, 128, plan=plan)


def test_fp8_rows_in_the_kernel_are_deterministic():
    """Two calls over FlashMLA's layout give identical bits, from the kernel that
    dequantises (which pointer it gets is checked without a GPU, test_gpu_host.py)."""
    import cupy as cp

    case = MLACase(3, 1, 16, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128, seqlens=(500, 64, 1),
                   capacity=500, block_size=64, causal=False, dtype="bfloat16", scale=None, squeeze=False, seed=9)
    args, _ = fp8_inputs(case, 128)
    first = cumla.latent_attention(**args)
    second = cumla.latent_attention(**args)
    np.testing.assert_array_equal(to_numpy(first).view(np.uint16), to_numpy(second).view(np.uint16))
    spec = _kernels.latent_kernel(cumla.bfloat16, 576, 512, 16, "sm_90a", fp8=args["cache_format"])
    assert spec is not None and spec.name == "latent_attention<bf16_t, 576, 512, 1, 64, 128>"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("latent,rope,group", [(512, 64, 128), (512, 64, 512), (64, 16, 8), (48, 0, 3)])
@pytest.mark.parametrize("blocks", [None, (3, -1, 0, 3, 7)])
def test_fp8_pool_for_other_kernels_is_the_format_codes_rows(dtype, latent, rope, group, blocks):
    """The rows the kernels that do not read FP8 get (decompressed, float32,
    unaligned layouts such as one scale per token): the dequantising kernel's
    rows equal cumla's own dequantisation bit for bit, block by block in the
    order given (-1 read as block 0, as the dense path passes them)."""
    import cupy as cp
    from cumla import _gpu

    fmt = cumla.fp8_format(latent, rope, group)
    rng = np.random.default_rng(latent + group)
    rows = rng.standard_normal((8, 16, fmt.width), dtype=np.float32) * rng.choice([1e-3, 1.0, 300.0], (8, 16, 1))
    pool = fmt.quantize(rows)
    np_dtype = np.dtype(cumla.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    if blocks is None:
        got = _gpu._dequantize_rows(fmt, cp.asarray(pool), None, 1, np_dtype)
        expected = fmt.dequantize(pool.reshape(-1, fmt.row_bytes), np_dtype)
    else:
        picked = np.maximum(np.array(blocks, np.int32), 0)
        got = _gpu._dequantize_rows(fmt, cp.asarray(pool), cp.asarray(picked), 16, np_dtype)
        expected = fmt.dequantize(pool[picked].reshape(-1, fmt.row_bytes), np_dtype)
    bits = np.uint32 if dtype == "float32" else np.uint16
    np.testing.assert_array_equal(to_numpy(got).view(bits), expected.view(bits))


@pytest.mark.parametrize("strategy,dtype,group", [("decompressed", "bfloat16", 128), ("decompressed", "float16", 512),
                                                  ("absorbed", "float32", 128), ("absorbed", "bfloat16", 512)])
@pytest.mark.parametrize("block", [None, 16])
def test_decode_over_fp8_rows_no_kernel_reads(strategy, dtype, group, block):
    """decode with an FP8 cache where the rows go through the dequantised pool
    (the decompressed strategy, float32, one scale per token) against the
    float64 reference on the same rows dequantised by the format code."""
    import cupy as cp

    case = MLACase(3, 2, 16, latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128, seqlens=(300, 0, 65),
                   capacity=320, block_size=block, causal=True, dtype=dtype, scale=None, squeeze=False, seed=4)
    fmt = cumla.fp8_format(512, 64, group)
    args = make_inputs(case, cp)
    rows = fmt.quantize(args["cache"])
    host = {k: to_numpy(v) if hasattr(v, "__cuda_array_interface__") else v for k, v in args.items()}
    host["cache"] = fmt.dequantize(to_numpy(rows), case.np_dtype)
    out = cp.full(args["q"].shape[:-1] + (case.v_dim,), np.nan, dtype=case.np_dtype)
    o, lse = cumla.decode(**dict(args, cache=rows), cache_format=fmt, strategy=strategy, out=out, return_lse=True)
    ref_o, ref_lse = reference.decode(**host)
    assert_close(o, ref_o, dtype, lse, ref_lse)
