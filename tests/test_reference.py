"""The float64 oracle against a literal per-head, per-token loop, and the absorbed identity."""
import math

import numpy as np
from hypothesis import given

from cumla import reference
from cumla.testing import make_inputs, mla_cases


def literal_decode(q, cache, w_kv, rope_dim, scale, seqlens, block_table, causal):
    """DESIGN's formulas, one scalar loop per head, query and token."""
    q = np.asarray(q, np.float64)
    if q.ndim == 3:
        q = q[:, None]
    B, Sq, H, qk = q.shape
    Dn = qk - rope_dim
    L = cache.shape[-1] - rope_dim
    w = np.asarray(w_kv, np.float64).reshape(L, H, -1)
    Dv = w.shape[2] - Dn
    scale = 1 / math.sqrt(qk) if scale is None else scale
    out = np.zeros((B, Sq, H, Dv))
    for b in range(B):
        n = cache.shape[1] if seqlens is None else int(seqlens[b])
        for i in range(Sq):
            visible = min(n, max(0, n - Sq + i + 1)) if causal else n
            for h in range(H):
                scores, values = [], []
                for t in range(visible):
                    if block_table is None:
                        row = np.asarray(cache[b, t], np.float64)
                    else:
                        bs = cache.shape[1]
                        row = np.asarray(cache[block_table[b, t // bs], t % bs], np.float64)
                    c, r = row[:L], row[L:]
                    k = np.concatenate([c @ w[:, h, :Dn], r])
                    scores.append(scale * float(q[b, i, h] @ k))
                    values.append(c @ w[:, h, Dn:])
                if scores:
                    e = np.exp(np.array(scores) - max(scores))
                    out[b, i, h] = (e / e.sum()) @ np.array(values)
    return out


@given(mla_cases(max_batch=2, max_heads=3, max_seq=12, dims=(3, 5, 8), rope_dims=(0, 2), dtypes=("float32",),
                 block_sizes=(1, 3, 4)))
def test_reference_matches_literal_loop(case):
    args = make_inputs(case)
    o, lse = reference.decode(**args)
    expected = literal_decode(args["q"], args["cache"], args["w_kv"], args["rope_dim"], args["scale"],
                              args["seqlens"], args["block_table"], args["causal"])
    if case.squeeze:
        expected = expected[:, 0]
    np.testing.assert_allclose(o, expected, rtol=1e-10, atol=1e-12)
    assert lse.shape == o.shape[:-1]


@given(mla_cases(max_batch=2, max_heads=3, max_seq=20, dims=(4, 8), rope_dims=(0, 4), dtypes=("float32",)))
def test_absorbed_identity_in_float64(case):
    """Absorbing W_uk into q and W_uv into o gives the decompressed result."""
    args = make_inputs(case)
    o, lse = reference.decode(**args)
    q = np.asarray(args["q"], np.float64)
    q = q[:, None] if q.ndim == 3 else q
    L, R, Dn = case.latent_dim, case.rope_dim, case.nope_dim
    w = np.asarray(args["w_kv"], np.float64).reshape(L, case.heads, -1)
    q_lat = np.concatenate([np.einsum("bshd,lhd->bshl", q[..., :Dn], w[:, :, :Dn]), q[..., Dn:]], -1)
    scale = args["scale"] if args["scale"] is not None else 1 / math.sqrt(Dn + R)
    o_lat, lse2 = reference.latent_attention(q_lat, args["cache"], v_dim=L, scale=scale,
                                             seqlens=args["seqlens"], block_table=args["block_table"],
                                             causal=case.causal)
    o2 = np.einsum("bshl,lhd->bshd", o_lat, w[:, :, Dn:])
    if case.squeeze:
        o2, lse2 = o2[:, 0], lse2[:, 0]
    np.testing.assert_allclose(o2, o, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lse2, lse, rtol=1e-12)


def test_empty_request_gives_zero_and_minus_inf():
    q = np.ones((1, 2, 1, 4))
    cache = np.ones((1, 3, 4))
    w = np.ones((4, 8))
    o, lse = reference.decode(q, cache, w, seqlens=np.array([1], np.int32), causal=True)
    # Sq=2, S=1: query 0 sees 1 - 2 + 0 + 1 = 0 tokens, query 1 sees 1.
    assert np.all(o[0, 0] == 0) and np.isneginf(lse[0, 0]).all()
    assert np.isfinite(lse[0, 1]).all()
