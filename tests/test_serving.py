"""RoPE, the paged latent cache and the LatentAttention layer (NumPy)."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import cumla
from cumla import reference
from cumla.testing import assert_close


def rope_reference(x, positions, base):
    """Rotate-half RoPE written out pair by pair in float64."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    half = x.shape[-1] // 2
    for idx in np.ndindex(x.shape[:-1]):
        pos = float(np.broadcast_to(positions, x.shape[:-1])[idx])
        for i in range(half):
            angle = pos * base ** (-2 * i / x.shape[-1])
            a, b = x[idx + (i,)], x[idx + (i + half,)]
            out[idx + (i,)] = a * math.cos(angle) - b * math.sin(angle)
            out[idx + (i + half,)] = b * math.cos(angle) + a * math.sin(angle)
    return out


@given(n=st.integers(1, 5), half=st.integers(1, 8), base=st.sampled_from([10000.0, 500.0]),
       seed=st.integers(0, 1000))
def test_rope_matches_pairwise_reference(n, half, base, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 2 * half), dtype=np.float32)
    pos = rng.integers(0, 5000, size=(n, 1))
    np.testing.assert_allclose(cumla.rope(x, pos, base=base), rope_reference(x, pos, base), rtol=2e-5, atol=2e-5)


def test_rope_errors():
    with pytest.raises(ValueError, match="even width"):
        cumla.rope(np.zeros((2, 3), np.float32), np.arange(2))
    with pytest.raises(TypeError, match="integers"):
        cumla.rope(np.zeros((2, 4), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="broadcast"):
        cumla.rope(np.zeros((2, 4), np.float32), np.arange(3))


def small_cache(block_size=4, num_blocks=6, max_seqs=3, max_blocks=4):
    return cumla.PagedLatentCache(num_blocks, block_size, latent_dim=8, rope_dim=4, max_seqs=max_seqs,
                                  max_blocks_per_seq=max_blocks)


def rows(rng, n):
    return rng.standard_normal((n, 8), dtype=np.float32), rng.standard_normal((n, 4), dtype=np.float32)


@pytest.mark.parametrize("block_size", [1, 2, 4, 64, 256])
def test_append_then_read_back_in_order(block_size):
    rng = np.random.default_rng(block_size)
    cache = cumla.PagedLatentCache(64, block_size, latent_dim=8, rope_dim=4, max_seqs=3,
                                   max_blocks_per_seq=max(1, 300 // block_size + 1))
    a, b = cache.add_sequence(), cache.add_sequence()
    written = {a: [], b: []}
    for step in range(5):
        ids = [a, b, a] if step % 2 else [b]
        c, r = rows(rng, len(ids))
        cache.append(ids, c, r)
        for i, s in enumerate(ids):
            written[s].append(np.concatenate([c[i], r[i]]))
    view = cache.batch([a, b])
    for k, s in enumerate((a, b)):
        expected = np.stack(written[s])
        got = reference.gather_rows(view["cache"], k, int(view["seqlens"][k]), view["block_table"])
        np.testing.assert_array_equal(got, expected)
        assert cache.length(s) == len(expected)


def test_running_out_of_blocks_writes_nothing():
    rng = np.random.default_rng(0)
    cache = small_cache(block_size=2, num_blocks=3)
    s = cache.add_sequence()
    cache.append([s] * 5, *rows(rng, 5))  # 3 blocks used
    pool, table, lengths = cache.pool.copy(), cache.block_table.copy(), cache.seqlens.copy()
    with pytest.raises(ValueError, match="nothing was written"):
        cache.append([s, s], *rows(rng, 2))
    np.testing.assert_array_equal(cache.pool, pool)
    np.testing.assert_array_equal(cache.block_table, table)
    np.testing.assert_array_equal(cache.seqlens, lengths)
    assert cache.length(s) == 5 and cache.free_blocks == 0
    cache.append([s], *rows(rng, 1))  # the last slot of the third block still fits


def test_freed_blocks_are_reused_and_capacity_is_enforced():
    rng = np.random.default_rng(1)
    cache = small_cache(block_size=2, num_blocks=4, max_blocks=2)
    s = cache.add_sequence()
    cache.append([s] * 4, *rows(rng, 4))
    with pytest.raises(ValueError, match="over its capacity 4"):
        cache.append([s], *rows(rng, 1))
    t = cache.add_sequence()
    cache.append([t] * 3, *rows(rng, 3))
    assert cache.free_blocks == 0
    cache.free_sequence(s)
    assert cache.free_blocks == 2 and cache.length(t) == 3
    u = cache.add_sequence()
    assert u == s  # slot reused
    cache.append([u] * 4, *rows(rng, 4))
    assert cache.free_blocks == 0
    with pytest.raises(ValueError, match="not in the cache"):
        cache.length(2)


def test_cache_argument_errors():
    with pytest.raises(ValueError, match="power of two"):
        small_cache(block_size=3)
    with pytest.raises(ValueError, match="power of two"):
        small_cache(block_size=512)
    cache = small_cache()
    s = cache.add_sequence()
    with pytest.raises(ValueError, match=r"shapes \(2, 8\) and \(2, 4\)"):
        cache.append([s, s], np.zeros((2, 7), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="c_kv must have the same dtype as the cache"):
        cache.append([s], np.zeros((1, 8), np.float16), np.zeros((1, 4), np.float16))
    with pytest.raises(ValueError, match="not in the cache"):
        cache.append([s + 1], np.zeros((1, 8), np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="integers"):
        cache.append([0.5], np.zeros((1, 8), np.float32), np.zeros((1, 4), np.float32))
    for _ in range(2):
        cache.add_sequence()
    with pytest.raises(RuntimeError, match="slots are in use"):
        cache.add_sequence()


def make_layer(rng, heads=3, hidden=40, L=32, R=8, Dn=16, Dv=8, dtype=np.float32):
    w_dkv = (rng.standard_normal((hidden, L + R), dtype=np.float32) / np.sqrt(hidden)).astype(dtype)
    w_kv = (rng.standard_normal((L, heads * (Dn + Dv)), dtype=np.float32) / np.sqrt(L)).astype(dtype)
    return w_dkv, w_kv


def test_layer_encode_then_decode_matches_reference():
    rng = np.random.default_rng(3)
    w_dkv, w_kv = make_layer(rng)
    layer = cumla.LatentAttention(w_dkv, w_kv, heads=3, rope_dim=8, v_dim=8, rope_base=1000.0)
    cache = cumla.PagedLatentCache(16, 4, latent_dim=32, rope_dim=8, max_seqs=2, max_blocks_per_seq=8)
    seqs = [cache.add_sequence(), cache.add_sequence()]
    lengths = [11, 5]
    for s, n in zip(seqs, lengths):
        x = rng.standard_normal((n, 40), dtype=np.float32)
        cache.append([s] * n, *np.split(layer.encode(x, np.arange(n)), [32], axis=1))
    q = rng.standard_normal((2, 2, 3, 24), dtype=np.float32)
    positions = np.array(lengths)[:, None] - 2 + np.arange(2)  # the last two positions of each sequence
    q = layer.rotate_queries(q, positions)
    o, lse = layer.decode(q, cache, seq_ids=seqs, return_lse=True)
    view = cache.batch(seqs)
    ref_o, ref_lse = reference.decode(q, view["cache"], w_kv, rope_dim=8, seqlens=view["seqlens"],
                                      block_table=view["block_table"])
    assert_close(o, ref_o, "float32", lse, ref_lse)
    assert layer.w_uk.flags.c_contiguous and layer.w_uk.shape == (3, 16, 32)


def test_layer_encode_applies_rope_to_the_key_part_only():
    rng = np.random.default_rng(4)
    w_dkv, w_kv = make_layer(rng)
    layer = cumla.LatentAttention(w_dkv, w_kv, heads=3, rope_dim=8, v_dim=8)
    x = rng.standard_normal((3, 40), dtype=np.float32)
    pos = np.array([0, 7, 123])
    rows_ = layer.encode(x, pos)
    plain = x.astype(np.float64) @ w_dkv
    np.testing.assert_allclose(rows_[:, :32], plain[:, :32], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows_[:, 32:], rope_reference(plain[:, 32:], pos, 10000.0), rtol=1e-5, atol=1e-5)


def test_from_deepseek_layout_equals_transposed_weights():
    rng = np.random.default_rng(5)
    w_dkv, w_kv = make_layer(rng)
    direct = cumla.LatentAttention(w_dkv, w_kv, heads=3, rope_dim=8, v_dim=8)
    ckpt = cumla.LatentAttention.from_deepseek(np.ascontiguousarray(w_dkv.T), np.ascontiguousarray(w_kv.T),
                                               heads=3, rope_dim=8, v_dim=8)
    np.testing.assert_array_equal(direct.w_uk, ckpt.w_uk)
    np.testing.assert_array_equal(direct.w_uv, ckpt.w_uv)


def test_layer_errors():
    rng = np.random.default_rng(6)
    w_dkv, w_kv = make_layer(rng)
    with pytest.raises(ValueError, match="L\\+R = 44"):
        cumla.LatentAttention(w_dkv, w_kv, heads=3, rope_dim=12, v_dim=8)
    with pytest.raises(TypeError, match="w_kv must have the same dtype as w_dkv"):
        cumla.LatentAttention(w_dkv, w_kv.astype(np.float16), heads=3, rope_dim=8, v_dim=8)
    layer = cumla.LatentAttention(w_dkv, w_kv, heads=3, rope_dim=8, v_dim=8)
    with pytest.raises(ValueError, match="x must have shape"):
        layer.encode(np.zeros((2, 41), np.float32), np.arange(2))
    with pytest.raises(ValueError, match="q must have shape"):
        layer.decode(np.zeros((1, 4, 24), np.float32), np.zeros((1, 3, 40), np.float32))
    with pytest.raises(ValueError, match="seq_ids is required"):
        layer.decode(np.zeros((1, 3, 24), np.float32), small_cache())


def _rows(rng, n, L=16, R=8):
    return rng.standard_normal((n, L), dtype=np.float32), rng.standard_normal((n, R), dtype=np.float32)


def _stored(cache, seq):
    """A sequence's rows in token order, read through its block table."""
    table = np.asarray(cache.block_table[seq])
    n = int(np.asarray(cache.seqlens[seq]))
    return np.asarray(cache.pool)[table[np.arange(n) // cache.block_size], np.arange(n) % cache.block_size]


def test_append_step_after_reserve_equals_host_appends():
    rng = np.random.default_rng(3)
    host = cumla.PagedLatentCache(16, 4, latent_dim=16, rope_dim=8, max_seqs=3, max_blocks_per_seq=5)
    step = cumla.PagedLatentCache(16, 4, latent_dim=16, rope_dim=8, max_seqs=3, max_blocks_per_seq=5)
    c, k = _rows(rng, 3)
    for cache in (host, step):
        a, b = cache.add_sequence(), cache.add_sequence()
        cache.append([a, a, b], c, k)  # prompts of different lengths
    before = step.free_blocks
    step.reserve([0, 1], 9)
    assert step.free_blocks == before - (3 - 1) - (3 - 1)  # 11 and 10 tokens: 3 blocks each, 1 held each
    for _ in range(9):
        c, k = _rows(rng, 2)
        host.append([0, 1], c, k)
        step.append_step(np.array([0, 1]), c, k)
    step.sync()
    for seq in (0, 1):
        assert step.length(seq) == host.length(seq)
        np.testing.assert_array_equal(_stored(step, seq), _stored(host, seq))
    c, k = _rows(rng, 1)
    step.append([1], c, k)  # host appends go on where the device left off
    assert step.length(1) == 11


def test_append_step_without_room_is_counted_not_lost_silently():
    rng = np.random.default_rng(4)
    cache = cumla.PagedLatentCache(4, 4, latent_dim=16, rope_dim=8, max_seqs=2, max_blocks_per_seq=2)
    seq = cache.add_sequence()
    cache.reserve([seq], 4)
    for _ in range(6):  # two more than reserved
        cache.append_step(np.array([seq]), *_rows(rng, 1))
    with pytest.raises(RuntimeError, match="call sync"):
        cache.append([seq], *_rows(rng, 1))
    with pytest.raises(ValueError, match="2 token"):
        cache.sync()
    assert cache.length(seq) == 4 and int(cache.dropped[0]) == 0
    assert cache.pool.shape[0] == 4  # the dropped tokens went to a spare block outside the pool


def test_reserve_checks_capacity_and_blocks_before_allocating():
    cache = cumla.PagedLatentCache(3, 4, latent_dim=16, rope_dim=8, max_seqs=2, max_blocks_per_seq=2)
    a, b = cache.add_sequence(), cache.add_sequence()
    with pytest.raises(ValueError, match="capacity"):
        cache.reserve([a], 9)
    cache.reserve([a], 8)
    with pytest.raises(ValueError, match="only 1 are free"):
        cache.reserve([b], 8)
    assert cache.free_blocks == 1
    with pytest.raises(ValueError, match="non-negative"):
        cache.reserve([a], -1)


def test_append_step_quantises_fp8_rows_like_append():
    rng = np.random.default_rng(6)
    fmt = cumla.fp8_format(16, 8, 8)
    caches = [cumla.PagedLatentCache(8, 4, latent_dim=16, rope_dim=8, max_seqs=2, max_blocks_per_seq=4, fp8=fmt)
              for _ in range(2)]
    for cache in caches:
        cache.add_sequence()
        cache.add_sequence()
    caches[1].reserve([0, 1], 5)
    for _ in range(5):
        c, k = _rows(rng, 2)
        caches[0].append([0, 1], c, k)
        caches[1].append_step(np.array([0, 1]), c, k)
    caches[1].sync()
    for seq in (0, 1):
        np.testing.assert_array_equal(_stored(caches[1], seq), _stored(caches[0], seq))
