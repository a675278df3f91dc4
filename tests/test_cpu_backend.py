"""The NumPy backend against the float64 reference and against itself."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import cumla
from cumla import reference
from cumla._arrays import BFLOAT16
from cumla.testing import (
    MLACase, assert_close, assert_nan_where_reference, make_inputs, make_latent_inputs, mla_cases, put_nan,
    relative_error,
)


def _reference_args(args):
    return {k: v for k, v in args.items()}


@pytest.mark.parametrize("strategy", ["absorbed", "decompressed", "auto"])
@given(case=mla_cases())
def test_decode_matches_reference(strategy, case):
    args = make_inputs(case)
    o, lse = cumla.decode(**args, strategy=strategy, return_lse=True)
    ref_o, ref_lse = reference.decode(**_reference_args(args))
    assert o.dtype == case.np_dtype and lse.dtype == np.float32
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


@given(case=mla_cases())
def test_latent_attention_matches_reference(case):
    args = make_latent_inputs(case)
    o, lse = cumla.latent_attention(**args, return_lse=True)
    ref_o, ref_lse = reference.latent_attention(**args)
    assert_close(o, ref_o, case.dtype, lse, ref_lse)


@given(case=mla_cases(dtypes=("float32",)))
def test_absorbed_equals_decompressed(case):
    args = make_inputs(case)
    a = cumla.decode(**args, strategy="absorbed")
    d = cumla.decode(**args, strategy="decompressed")
    scale = max(float(np.abs(a).max(initial=0)), 1.0)
    np.testing.assert_allclose(a, d, rtol=0, atol=2e-5 * scale)


@given(case=mla_cases(paged=False, dtypes=("float32",)), block_size=st.sampled_from([1, 2, 8, 64]))
def test_paged_shuffled_equals_contiguous(case, block_size):
    contiguous = make_inputs(case)
    paged = make_inputs(MLACase(**{**case.__dict__, "block_size": block_size}))
    a = cumla.decode(**contiguous)
    b = cumla.decode(**paged)
    # Same values in the same order; BLAS may still round differently by buffer
    # alignment (float32 rounding, amplified by exp for large scores): far
    # below DESIGN's float32 tolerance, far above a wrong row's effect.
    assert relative_error(b, a.astype(np.float64)) <= 1e-5


@given(case=mla_cases(dtypes=("float32",)))
def test_garbage_past_seqlens_changes_nothing(case):
    nan_args = make_inputs(case, garbage=np.nan)
    big_args = make_inputs(case, garbage=1e30)
    a, lse_a = cumla.decode(**nan_args, return_lse=True)
    b, lse_b = cumla.decode(**big_args, return_lse=True)
    assert not np.isnan(a).any() and not np.isnan(lse_a).any()
    assert relative_error(b, a.astype(np.float64)) <= 1e-5  # rounding by alignment only
    np.testing.assert_allclose(lse_a, lse_b, rtol=1e-5, atol=1e-5)


@given(case=mla_cases(dtypes=("float32",)), data=st.data())
def test_nan_in_a_visible_row_reaches_what_sees_it(case, data):
    """A NaN in the row of a token every query of its request sees makes NaN
    that request's outputs and LSEs, as in the reference; the other requests
    are unchanged."""
    hidden = case.q_len - 1 if case.causal else 0  # the first query sees all but the last `hidden` tokens
    requests = [b for b, n in enumerate(case.seqlens) if n > hidden]
    assume(requests)
    args = make_inputs(case)
    request = data.draw(st.sampled_from(requests))
    token = data.draw(st.integers(0, case.seqlens[request] - 1 - hidden))
    put_nan(args, request, token, data.draw(st.integers(0, case.latent_dim + case.rope_dim - 1)))
    ref_o, ref_lse = reference.decode(**args)
    assert np.isnan(ref_o[request]).all() and np.isnan(ref_lse[request]).all()
    for strategy in ("absorbed", "decompressed"):
        o, lse = cumla.decode(**args, strategy=strategy, return_lse=True)
        assert_nan_where_reference(o, ref_o, case.dtype, lse, ref_lse)


@given(case=mla_cases(paged=False, dtypes=("float32",), max_seq=60), cut=st.floats(0, 1))
def test_split_cache_merged_by_lse_equals_whole(case, cut):
    """Attend over [0, k) and [k, S) separately (no causal), merge with LSE."""
    args = make_latent_inputs(case)
    args["causal"] = False
    cache, seqlens = args.pop("cache"), args.pop("seqlens")
    lengths = np.full(case.batch, case.capacity, np.int32) if seqlens is None else seqlens
    k = int(cut * case.capacity)
    first = np.minimum(lengths, k).astype(np.int32)
    second = (lengths - first).astype(np.int32)
    o1, l1 = cumla.latent_attention(cache=np.ascontiguousarray(cache[:, :k]), seqlens=first,
                                    return_lse=True, **args)
    o2, l2 = cumla.latent_attention(cache=np.ascontiguousarray(cache[:, k:]), seqlens=second,
                                    return_lse=True, **args)
    o, lse = cumla.combine([o1, o2], [l1, l2])
    whole, whole_lse = cumla.latent_attention(cache=cache, seqlens=lengths, return_lse=True, **args)
    assert relative_error(o, whole.astype(np.float64)) <= 1e-5  # float32 rounding of the merge only
    np.testing.assert_allclose(lse, whole_lse, rtol=1e-5, atol=1e-5)


def test_out_is_written_and_returned():
    case = MLACase(2, 2, 3, 16, 16, 16, 16, (5, 9), 9, None, True, "float32", None, False, 7)
    args = make_inputs(case)
    out = np.full((2, 2, 3, 16), np.nan, np.float32)
    res = cumla.decode(**args, out=out)
    assert res is out
    np.testing.assert_array_equal(out, cumla.decode(**args))


@pytest.mark.parametrize("squeeze", [True, False])
def test_edge_cases(squeeze):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 2 * 12), dtype=np.float32)
    shape = (0, 2, 4) if squeeze else (0, 3, 2, 4)
    # empty batch
    o = cumla.decode(np.zeros(shape, np.float32), np.zeros((0, 5, 8), np.float32), w)
    assert o.shape == shape[:-1] + (8,)
    # all seqlens 0, R = 0
    q = rng.standard_normal((2, 3, 2, 4), dtype=np.float32)
    o, lse = cumla.decode(q, np.zeros((2, 5, 8), np.float32), w, seqlens=np.zeros(2, np.int32),
                          return_lse=True)
    assert np.all(o == 0) and np.isneginf(lse).all()
    # Sq larger than the visible cache
    cache = rng.standard_normal((2, 5, 8), dtype=np.float32)
    o, lse = cumla.decode(q, cache, w, seqlens=np.array([1, 2], np.int32), return_lse=True)
    ref_o, ref_lse = reference.decode(q, cache, w, seqlens=np.array([1, 2], np.int32))
    assert np.isneginf(lse[0, :2]).all() and np.isfinite(lse[0, 2]).all()
    assert_close(o, ref_o, "float32", lse, ref_lse)


def test_long_cache_is_chunked():
    """More tokens than one chunk: the online softmax carries across chunks."""
    case = MLACase(1, 2, 2, 16, 16, 16, 16, (1500,), 1500, 64, True, "float32", None, False, 3)
    args = make_inputs(case)
    for strategy in ("absorbed", "decompressed"):
        o, lse = cumla.decode(**args, strategy=strategy, return_lse=True)
        ref_o, ref_lse = reference.decode(**args)
        assert_close(o, ref_o, "float32", lse, ref_lse)


def test_bfloat16_inputs_give_bfloat16_output():
    case = MLACase(2, 1, 4, 32, 16, 16, 16, (30, 17), 30, None, True, "bfloat16", None, True, 11)
    args = make_inputs(case)
    o = cumla.decode(**args)
    assert o.dtype == BFLOAT16 and o.shape == (2, 4, 16)
    assert relative_error(o, reference.decode(**args)[0]) < 1e-2


def test_auto_picks_by_cost():
    assert cumla.cost(batch=1, seq_len=64, heads=16, q_len=1, latent_dim=32, rope_dim=16,
                      nope_dim=16, v_dim=16).best == "absorbed"
    big = cumla.cost(batch=1, seq_len=64, heads=16, q_len=300, latent_dim=32, rope_dim=16,
                     nope_dim=16, v_dim=16)
    assert big.best == "decompressed"
