"""The paged cache and the LatentAttention layer on CuPy arrays."""
import numpy as np
import pytest

import cumla
from cumla import reference
from cumla.testing import assert_close, to_numpy

pytestmark = pytest.mark.gpu


def test_cache_append_on_the_device_equals_numpy():
    import cupy as cp

    rng = np.random.default_rng(0)
    caches = [cumla.PagedLatentCache(40, 16, latent_dim=512, rope_dim=64, max_seqs=3, max_blocks_per_seq=12,
                                     dtype=cumla.bfloat16, xp=xp) for xp in (np, cp)]
    for step in range(6):
        ids = [0, 1, 1, 2][: 1 + step % 4]
        c = rng.standard_normal((len(ids) * 7, 512), dtype=np.float32).astype(cumla.bfloat16)
        r = rng.standard_normal((len(ids) * 7, 64), dtype=np.float32).astype(cumla.bfloat16)
        for cache, xp in zip(caches, (np, cp)):
            if step == 0:
                for _ in range(3):
                    cache.add_sequence()
            cache.append(np.repeat(ids, 7), xp.asarray(c), xp.asarray(r))
    host, dev = caches
    np.testing.assert_array_equal(to_numpy(dev.block_table), host.block_table)
    np.testing.assert_array_equal(to_numpy(dev.seqlens), host.seqlens)
    np.testing.assert_array_equal(to_numpy(dev.pool).view(np.uint16), host.pool.view(np.uint16))


def test_layer_decode_on_the_device_matches_reference():
    import cupy as cp

    rng = np.random.default_rng(1)
    H, L, R, Dn, Dv = 16, 512, 64, 128, 128
    w_dkv = (rng.standard_normal((256, L + R), dtype=np.float32) / 16).astype(cumla.bfloat16)
    w_kv = (rng.standard_normal((L, H * (Dn + Dv)), dtype=np.float32) / np.sqrt(L)).astype(cumla.bfloat16)
    layer = cumla.LatentAttention(cp.asarray(w_dkv), cp.asarray(w_kv), heads=H, rope_dim=R, v_dim=Dv)
    cache = cumla.PagedLatentCache(20, 64, latent_dim=L, rope_dim=R, max_seqs=2, max_blocks_per_seq=10,
                                   dtype=cumla.bfloat16, xp=cp)
    seqs = [cache.add_sequence(), cache.add_sequence()]
    for s, n in zip(seqs, (300, 70)):
        x = cp.asarray(rng.standard_normal((n, 256), dtype=np.float32).astype(cumla.bfloat16))
        rows = layer.encode(x, cp.arange(n))
        cache.append([s] * n, rows[:, :L], rows[:, L:])
    q = cp.asarray(rng.standard_normal((2, H, Dn + R), dtype=np.float32).astype(cumla.bfloat16))
    q = layer.rotate_queries(q, cp.asarray(np.array([299, 69])))
    o, lse = layer.decode(q, cache, seq_ids=seqs, return_lse=True)
    view = cache.batch(seqs)
    ref_o, ref_lse = reference.decode(to_numpy(q), to_numpy(view["cache"]), w_kv, rope_dim=R,
                                      seqlens=to_numpy(view["seqlens"]), block_table=to_numpy(view["block_table"]))
    assert_close(o, ref_o, "bfloat16", lse, ref_lse)


def test_whole_decode_step_in_one_cuda_graph():
    """append_step + plan.update + latent_attention captured once; replays with new
    tokens and queries in the same buffers equal the same steps run eagerly."""
    import cupy as cp

    rng = np.random.default_rng(7)
    B, H, L, R = 3, 16, 512, 64

    def rows(n):
        return cp.asarray(rng.standard_normal((n, L + R), dtype=np.float32).astype(cumla.bfloat16))

    prompts = [rows(n) for n in (100, 1, 300)]
    caches = []
    for _ in range(2):  # eager, graphed
        cache = cumla.PagedLatentCache(32, 64, latent_dim=L, rope_dim=R, max_seqs=B, max_blocks_per_seq=8,
                                       dtype=cumla.bfloat16, xp=cp)
        for prompt in prompts:
            seq = cache.add_sequence()
            cache.append([seq] * prompt.shape[0], prompt[:, :L], prompt[:, L:])
        cache.reserve(list(range(B)), 12)
        caches.append(cache)
    ids = cp.arange(B, dtype=cp.int32)
    q_lat, new = cp.empty((B, H, L + R), dtype=cumla.bfloat16), cp.empty((B, L + R), dtype=cumla.bfloat16)
    outs = [cp.empty((B, H, L), dtype=cumla.bfloat16) for _ in caches]
    plans = [cumla.plan(cache.seqlens[:B], heads=H, v_dim=L) for cache in caches]

    def step(cache, plan, out):
        cache.append_step(ids, new[:, :L], new[:, L:])
        plan.update(cache.seqlens[:B], cache.capacity)
        cumla.latent_attention(q_lat, cache.pool, v_dim=L, scale=0.1, seqlens=cache.seqlens[:B],
                               block_table=cache.block_table[:B], plan=plan, out=out, check=False)

    def fresh_inputs():
        q_lat[...] = cp.asarray(rng.standard_normal(q_lat.shape, dtype=np.float32).astype(cumla.bfloat16))
        new[...] = rows(B)

    fresh_inputs()
    for cache, plan, out in zip(caches, plans, outs):  # warm-up step: compiles, fills the memory pool
        step(cache, plan, out)
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        step(caches[1], plans[1], outs[1])
        graph = stream.end_capture()
    for _ in range(10):
        fresh_inputs()
        step(caches[0], plans[0], outs[0])
        cp.cuda.Device().synchronize()  # the capture stream does not wait for the default one
        graph.launch(stream)
        stream.synchronize()
        assert cp.array_equal(outs[0], outs[1])
    for cache in caches:
        cache.sync()
        assert [cache.length(s) for s in range(B)] == [100 + 11, 1 + 11, 300 + 11]
    np.testing.assert_array_equal(to_numpy(caches[0].pool).view(np.uint16), to_numpy(caches[1].pool).view(np.uint16))


def test_fp8_cache_appends_and_decodes_on_the_device():
    """FP8 rows quantised on the device equal the NumPy ones bit for bit; decode
    over them matches the reference on the dequantised cache."""
    import cupy as cp

    rng = np.random.default_rng(5)
    fmt = cumla.fp8_format(512, 64, 128)
    H, Dn, Dv = 16, 128, 128
    caches = [cumla.PagedLatentCache(12, 64, latent_dim=512, rope_dim=64, max_seqs=2, max_blocks_per_seq=6,
                                     dtype=cumla.bfloat16, xp=xp, fp8=fmt) for xp in (np, cp)]
    lengths = (300, 65)
    for n in lengths:
        new = rng.standard_normal((n, 576), dtype=np.float32).astype(cumla.bfloat16)
        for cache, xp in zip(caches, (np, cp)):
            seq = cache.add_sequence()
            rows = xp.asarray(new)
            cache.append([seq] * n, rows[:, :512], rows[:, 512:])
    host, dev = caches
    np.testing.assert_array_equal(to_numpy(dev.pool), host.pool)
    q = rng.standard_normal((2, H, Dn + 64), dtype=np.float32).astype(cumla.bfloat16)
    w_kv = (rng.standard_normal((512, H * (Dn + Dv)), dtype=np.float32) / np.sqrt(512)).astype(cumla.bfloat16)
    o = cumla.decode(cp.asarray(q), w_kv=cp.asarray(w_kv), rope_dim=64, **dev.batch([0, 1]))
    plain = host.batch([0, 1])
    dense = fmt.dequantize(plain["cache"])
    ref, _ = reference.decode(q, dense, w_kv, rope_dim=64, seqlens=plain["seqlens"], block_table=plain["block_table"])
    assert_close(o, ref, "bfloat16")
