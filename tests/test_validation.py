"""Every bad argument raises TypeError or ValueError naming it."""
import numpy as np
import pytest

import cumla
from cumla._arrays import BFLOAT16

B, S, H, L, R, Dn, Dv = 2, 8, 3, 16, 8, 8, 4


def good(**overrides):
    rng = np.random.default_rng(0)
    args = dict(
        q=rng.standard_normal((B, H, Dn + R), dtype=np.float32),
        cache=rng.standard_normal((B, S, L + R), dtype=np.float32),
        w_kv=rng.standard_normal((L, H * (Dn + Dv)), dtype=np.float32),
        rope_dim=R,
    )
    args.update(overrides)
    return args


def paged(**overrides):
    rng = np.random.default_rng(1)
    args = good(cache=rng.standard_normal((5, 4, L + R), dtype=np.float32),
                block_table=np.array([[0, 1], [2, 3]], np.int32), seqlens=np.array([8, 5], np.int32))
    args.update(overrides)
    return args


def test_good_arguments_pass():
    assert cumla.decode(**good()).shape == (B, H, Dv)
    assert cumla.decode(**paged()).shape == (B, H, Dv)


CASES = [
    # (arguments, exception, words the message must contain)
    (good(q=[[1.0]]), TypeError, "q must be a numpy.ndarray, a cupy.ndarray or a DLPack"),
    (good(cache=np.zeros((B, S, L + R)).tolist()), TypeError, "cache"),
    (good(q=np.zeros((B, H, Dn + R), np.int32)), TypeError, "q must have dtype"),
    (good(q=np.zeros((B, H, Dn + R), np.float64)), TypeError, "float64"),
    (good(cache=np.zeros((B, S, L + R), np.float16)), TypeError, "cache must have the same dtype"),
    (good(w_kv=np.zeros((L, H * (Dn + Dv)), BFLOAT16)), TypeError, "w_kv must have the same dtype"),
    (good(q=np.zeros((B, Dn + R), np.float32)), ValueError, "q must have shape"),
    (good(q=np.zeros((1, B, 1, H, Dn + R), np.float32)), ValueError, "q must have shape"),
    (good(q=np.zeros((B, H, R), np.float32)), ValueError, "must exceed rope_dim"),
    (good(q=np.zeros((B, 0, Dn + R), np.float32)), ValueError, "at least one head"),
    (good(q=np.zeros((B, 0, H, Dn + R), np.float32)), ValueError, "at least one query token"),
    (good(cache=np.zeros((B, S), np.float32)), ValueError, "cache must have shape"),
    (good(cache=np.zeros((B + 1, S, L + R), np.float32)), ValueError, "(B=2, S, L+R)"),
    (good(cache=np.zeros((B, S, L + R), np.float32)[:, ::2]), ValueError, "C-contiguous"),
    (good(cache=np.zeros((B, S, R), np.float32)), ValueError, "must exceed rope_dim"),
    (good(w_kv=np.zeros((L + 1, H * (Dn + Dv)), np.float32)), ValueError, "w_kv must have L"),
    (good(w_kv=np.zeros((L, H * (Dn + Dv) + 1), np.float32)), ValueError, "H=3 blocks"),
    (good(w_kv=np.zeros((L, H + 1, Dn + Dv), np.float32)), ValueError, "(L, H=3, Dn+Dv)"),
    (good(w_kv=np.zeros((L, H * Dn), np.float32)), ValueError, "must exceed Dn"),
    (good(w_kv=np.zeros((L,), np.float32)), ValueError, "w_kv must have shape"),
    (good(rope_dim=-1), ValueError, "rope_dim"),
    (good(rope_dim=1.5), TypeError, "rope_dim"),
    (good(scale=float("nan")), ValueError, "scale must be finite and positive"),
    (good(scale=float("inf")), ValueError, "scale must be finite and positive"),
    (good(scale="1"), TypeError, "scale must be a real number"),
    (good(scale=-0.5), ValueError, "scale must be finite and positive"),
    (good(scale=0.0), ValueError, "scale must be finite and positive"),
    (good(strategy="fast"), ValueError, "strategy must be one of"),
    (good(causal="yes"), TypeError, "causal must be a bool"),
    (good(return_lse=1), TypeError, "return_lse must be a bool"),
    (good(seqlens=np.array([1, 2], np.int64)), TypeError, "seqlens must have dtype int32"),
    (good(seqlens=np.array([1, 2, 3], np.int32)), ValueError, "seqlens must have shape (B=2,)"),
    (good(seqlens=np.array([[1, 2]], np.int32)), ValueError, "seqlens must be 1-D"),
    (good(seqlens=np.array([1, -1], np.int32)), ValueError, "seqlens[1] = -1"),
    (good(seqlens=np.array([S + 1, 0], np.int32)), ValueError, "seqlens[0] = 9"),
    (paged(seqlens=None), ValueError, "seqlens is required"),
    (paged(seqlens=np.array([9, 0], np.int32)), ValueError, "[0, 8]"),
    (paged(block_table=np.array([[0, 1], [2, 3]], np.int64)), TypeError, "block_table must have dtype int32"),
    (paged(block_table=np.array([0, 1], np.int32)), ValueError, "block_table must be 2-D"),
    (paged(block_table=np.array([[0, 1]], np.int32)), ValueError, "block_table must have shape (B=2"),
    (paged(block_table=np.array([[0, 5], [2, 3]], np.int32)), ValueError, "block_table[0, 1] = 5"),
    (paged(block_table=np.array([[0, 1], [-1, 3]], np.int32)), ValueError, "block_table[1, 0] = -1"),
    (good(out=np.zeros((B, H, Dv + 1), np.float32)), ValueError, "out must have shape"),
    (good(out=np.zeros((B, H, Dv), np.float16)), ValueError, "dtype float32"),
    (good(out=np.zeros((B, H, 2 * Dv), np.float32)[..., ::2]), ValueError, "out must be C-contiguous"),
    (good(out=[0.0]), TypeError, "out must be a numpy.ndarray"),
    (good(out=np.broadcast_to(np.zeros(Dv, np.float32), (B, H, Dv))), ValueError, "out must be C-contiguous"),
    (good(out=np.zeros((B, H, Dv), np.float32).view()), None, None),
]


@pytest.mark.parametrize("args,error,words", CASES, ids=[c[2] or "valid view" for c in CASES])
def test_bad_arguments_raise(args, error, words):
    if error is None:  # a control case: valid arguments pass
        cumla.decode(**args)
        return
    with pytest.raises(error) as info:
        cumla.decode(**args)
    assert words in str(info.value)


def test_read_only_out_is_refused():
    out = np.zeros((B, H, Dv), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        cumla.decode(**good(out=out))


def test_unused_block_table_entries_are_ignored():
    # request 1 holds 5 tokens in blocks of 4: entries past block 2 are never read
    table = np.array([[0, 1], [2, 99]], np.int32)
    with pytest.raises(ValueError, match=r"block_table\[1, 1\] = 99"):
        cumla.decode(**paged(block_table=table))
    ok = cumla.decode(**paged(block_table=np.array([[0, 1], [2, 99]], np.int32), seqlens=np.array([8, 4], np.int32)))
    assert np.isfinite(ok).all()


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(v_dim=0), ValueError, "v_dim must be in"),
    (dict(v_dim=L + R + 1), ValueError, "v_dim must be in"),
    (dict(v_dim=2.0), TypeError, "v_dim must be an int"),
    (dict(v_dim=L, scale=float("nan")), ValueError, "scale must be finite and positive"),
])
def test_latent_attention_bad_arguments(kwargs, error, words):
    q = np.zeros((B, H, L + R), np.float32)
    cache = np.zeros((B, S, L + R), np.float32)
    kwargs.setdefault("scale", 0.1)
    with pytest.raises(error, match=words):
        cumla.latent_attention(q, cache, **kwargs)


def test_latent_attention_query_dim_must_match_cache():
    with pytest.raises(ValueError, match="L\\+R = 24"):
        cumla.latent_attention(np.zeros((B, H, L + R), np.float32), np.zeros((B, S, L), np.float32),
                               v_dim=8, scale=0.1)


def test_absorb_layout_and_errors():
    w = np.arange(L * H * (Dn + Dv), dtype=np.float32).reshape(L, H * (Dn + Dv))
    w_uk, w_uv = cumla.absorb(w, heads=H, v_dim=Dv)
    assert w_uk.shape == (H, Dn, L) and w_uv.shape == (H, L, Dv)
    assert np.shares_memory(w_uk, w) and np.shares_memory(w_uv, w)
    w3 = w.reshape(L, H, Dn + Dv)
    np.testing.assert_array_equal(w_uk[1], w3[:, 1, :Dn].T)
    np.testing.assert_array_equal(w_uv[2], w3[:, 2, Dn:])
    with pytest.raises(ValueError, match="heads=5"):
        cumla.absorb(w, heads=5, v_dim=Dv)
    with pytest.raises(ValueError, match="v_dim"):
        cumla.absorb(w, heads=H, v_dim=Dn + Dv)
    with pytest.raises(TypeError):
        cumla.absorb(w.tolist(), heads=H, v_dim=Dv)


def test_combine_errors():
    with pytest.raises(ValueError, match="at least one"):
        cumla.combine([], [])
    with pytest.raises(ValueError, match="must match"):
        cumla.combine([np.zeros((2, 3)), np.zeros((2, 4))], [np.zeros(2), np.zeros(2)])
