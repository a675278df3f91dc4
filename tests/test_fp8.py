"""The FP8 cache format: round trip, decode over FP8 rows, the cache storing them."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import cumla
from bench_modules import bench_module
from cumla import reference
from cumla.testing import MLACase, assert_close, make_inputs, relative_error


@given(group=st.sampled_from([16, 32, 64]), rope=st.sampled_from([0, 16]), seed=st.integers(0, 1000),
       magnitude=st.sampled_from([1e-3, 1.0, 300.0]))
def test_round_trip_error_is_bounded_per_group(group, rope, seed, magnitude):
    fmt = cumla.fp8_format(latent_dim=64, rope_dim=rope, group=group)
    rows = np.random.default_rng(seed).standard_normal((7, 64 + rope), dtype=np.float32) * np.float32(magnitude)
    data = fmt.quantize(rows)
    assert data.dtype == np.uint8 and data.shape == (7, fmt.row_bytes)
    back = fmt.dequantize(data)
    latent, got = rows[:, :64].reshape(7, -1, group), back[:, :64].reshape(7, -1, group)
    # e4m3 keeps 3 mantissa bits: each value within 1/16 of its group's largest (relative to the scale).
    bound = np.abs(latent).max(axis=-1, keepdims=True) / 16
    assert np.all(np.abs(got - latent) <= bound + 1e-30)
    np.testing.assert_array_equal(back[:, 64:], rows[:, 64:].astype(cumla.bfloat16).astype(np.float32))


def test_layouts():
    assert cumla.fp8_format().row_bytes == 656  # FlashMLA's: 512 e4m3 + 4 fp32 scales + 64 bf16
    assert cumla.fp8_format(512, 64, group=512).row_bytes == 512 + 4 + 128  # one scale per token
    zero = cumla.fp8_format(32, 0, 16)
    np.testing.assert_array_equal(zero.dequantize(zero.quantize(np.zeros((2, 32), np.float32))), 0)
    with pytest.raises(ValueError, match="must divide"):
        cumla.fp8_format(100, 0, 64)
    with pytest.raises(ValueError, match="uint8 with 40 bytes"):
        zero.dequantize(np.zeros((1, 41), np.uint8))


@pytest.mark.parametrize("strategy", ["absorbed", "decompressed"])
@given(seed=st.integers(0, 10**6))
def test_decode_over_fp8_rows_matches_reference_on_dequantized_rows(strategy, seed):
    case = MLACase(3, 2, 4, 64, 16, 32, 16, (50, 0, 33), 50, 8, True, "float32", None, False, seed)
    args = make_inputs(case, garbage=0.0)
    fmt = cumla.fp8_format(64, 16, 32)
    fp8_cache = fmt.quantize(args["cache"])
    o, lse = cumla.decode(**{**args, "cache": fp8_cache}, cache_format=fmt, strategy=strategy, return_lse=True)
    ref_o, ref_lse = reference.decode(**{**args, "cache": fmt.dequantize(fp8_cache)})
    assert_close(o, ref_o, "float32", lse, ref_lse)
    # against the unquantised cache: the FP8 rounding, measured (a few percent)
    assert relative_error(o, reference.decode(**args)[0]) < 0.1


def test_fp8_paged_cache_and_layer():
    rng = np.random.default_rng(2)
    L, R, H = 64, 16, 4
    fmt = cumla.fp8_format(L, R, 32)
    w_dkv = rng.standard_normal((48, L + R), dtype=np.float32) / 7
    w_kv = rng.standard_normal((L, H * 48), dtype=np.float32) / 8
    layer = cumla.LatentAttention(w_dkv, w_kv, heads=H, rope_dim=R, v_dim=16)
    cache = cumla.PagedLatentCache(10, 8, latent_dim=L, rope_dim=R, max_seqs=2, max_blocks_per_seq=5, fp8=fmt)
    assert cache.pool.dtype == np.uint8 and cache.pool.shape == (10, 8, fmt.row_bytes)
    seqs = [cache.add_sequence(), cache.add_sequence()]
    for s, n in zip(seqs, (37, 9)):
        rows = layer.encode(rng.standard_normal((n, 48), dtype=np.float32), np.arange(n))
        cache.append([s] * n, rows[:, :L], rows[:, L:])
    q = layer.rotate_queries(rng.standard_normal((2, H, 48), dtype=np.float32), np.array([36, 8]))
    o, lse = layer.decode(q, cache, seq_ids=seqs, return_lse=True)
    view = cache.batch(seqs)
    ref_o, ref_lse = reference.decode(q, fmt.dequantize(view["cache"]), w_kv, rope_dim=R,
                                      seqlens=view["seqlens"], block_table=view["block_table"])
    assert_close(o, ref_o, "float32", lse, ref_lse)
    with pytest.raises(ValueError, match="fp8 describes"):
        cumla.PagedLatentCache(4, 8, latent_dim=L, rope_dim=0, max_seqs=1, max_blocks_per_seq=1, fp8=fmt)


def test_fp8_validation():
    fmt = cumla.fp8_format(64, 16, 32)
    q = np.zeros((1, 2, 48), np.float32)
    w = np.zeros((64, 2 * 48), np.float32)
    good = np.zeros((1, 4, fmt.row_bytes), np.uint8)
    assert cumla.decode(q, good, w, rope_dim=16, cache_format=fmt).shape == (1, 2, 16)
    with pytest.raises(TypeError, match="FP8 cache needs cache_format"):
        cumla.decode(q, good, w, rope_dim=16)  # uint8 rows without their format
    with pytest.raises(TypeError, match="must be uint8"):
        cumla.decode(q, np.zeros((1, 4, 80), np.float32), w, rope_dim=16, cache_format=fmt)
    with pytest.raises(ValueError, match=r"\(B, S, row_bytes\) with row_bytes = 104"):
        cumla.decode(q, np.zeros((1, 4, 80), np.uint8), w, rope_dim=16, cache_format=fmt)
    with pytest.raises(ValueError, match="must equal cache_format.rope_dim"):
        cumla.decode(np.zeros((1, 2, 40), np.float32), good, np.zeros((64, 2 * 40), np.float32), rope_dim=8,
                     cache_format=fmt)
    with pytest.raises(TypeError, match="cache_format must come from cumla.fp8_format"):
        cumla.decode(q, good, w, rope_dim=16, cache_format="fp8")
    with pytest.raises(ValueError, match="L\\+R = 80"):
        cumla.latent_attention(np.zeros((1, 2, 64), np.float32), good, v_dim=64, scale=0.1, cache_format=fmt)


def test_e4m3_codec_matches_ml_dtypes_bit_for_bit():
    from cumla._fp8 import E4M3, E4M3_VALUES, e4m3_decode, e4m3_encode

    codes = np.arange(256, dtype=np.uint8)
    decoded = e4m3_decode(codes)
    finite = ~np.isnan(E4M3_VALUES)
    np.testing.assert_array_equal(decoded[finite], codes.view(E4M3).astype(np.float32)[finite])
    values = np.sort(E4M3_VALUES[:127])
    middles = (values[:-1] + values[1:]) / 2  # ties: must go to the even code
    rng = np.random.default_rng(0)
    x = np.concatenate([values, middles, np.nextafter(middles, 0), np.nextafter(middles, 1000),
                        rng.uniform(-460, 460, 20000).astype(np.float32), [0.0, -0.0, 1e-9, -1e-9]])
    x = np.concatenate([x, -x]).astype(np.float32)
    np.testing.assert_array_equal(e4m3_encode(x), x.astype(E4M3).view(np.uint8))
    assert e4m3_encode(np.array([np.nan], np.float32))[0] & 0x7F == 0x7F


def test_kernel_e4m3_bit_trick_gives_every_code_exactly():
    """cuda/fp8.cuh's decode without a hardware conversion: byte x placed as
    x << 8 in a 16-bit lane, sign kept and the other bits moved one right, is
    the fp16 number x * 2^-8 for all 254 finite codes (subnormals included),
    and the NaN codes are the pattern the kernel tests for."""
    from cumla._fp8 import E4M3_VALUES

    lane = np.arange(256, dtype=np.uint32) << 8
    half = ((lane & 0x8000) | ((lane >> 1) & 0x3F80)).astype(np.uint16)
    value = half.view(np.float16).astype(np.float32) * np.float32(256)
    finite = ~np.isnan(E4M3_VALUES)
    np.testing.assert_array_equal(value[finite], E4M3_VALUES[finite])
    np.testing.assert_array_equal((half & 0x7FFF) == 0x3F80, ~finite)  # 0x7F and 0xFF, nothing else


def test_e4m3_mma_operands_cost_more_accuracy_than_the_tolerance():
    """bench/fp8_mma_accuracy.py's study, one small case: today's 16-bit queries
    and P stay within bfloat16's tolerance of the reference over the
    dequantised rows, while e4m3 queries or e4m3 P each exceed it."""
    study = bench_module("fp8_mma_accuracy")
    fmt = cumla.fp8_format(512, 64, 128)
    q, cache = study.case("normal", 512, 8, np.random.default_rng(0))
    results = study.paths(q, fmt.quantize(cache), fmt, mma_bits=0)
    ref_o, _ = results["ref"]
    error = {name: relative_error(results[key][0], ref_o) for name, key in study.PATHS.items()}
    assert error["16-bit"] < 1e-2 < min(error["e4m3 scores"], error["e4m3 P V"], error["e4m3 both"])
