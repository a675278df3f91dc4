"""One rank of the multi-GPU tests (started by cumla.launch): sharded decode
against the single-GPU decode on this rank's device; writes its output."""
import os
import sys

import numpy as np

import cupy as cp
import cumla
from cumla.distributed import Communicator, ShardedLatentCache, TokenSharding, sharded_decode
from cumla.testing import capture_graph, relative_error

L, R, DN, DV, H = 512, 64, 128, 128, 16


def main(out_dir: str, mode: str) -> None:
    comm = Communicator.from_env(timeout=60)
    rng = np.random.default_rng(0)  # the same inputs on every rank
    lengths = [700, 1, 0, 2050]
    rows = [rng.standard_normal((n, L + R), dtype=np.float32).astype(cumla.bfloat16) for n in lengths]
    w_kv = cp.asarray((rng.standard_normal((L, H * (DN + DV)), dtype=np.float32) / 20).astype(cumla.bfloat16))
    q = cp.asarray(rng.standard_normal((len(lengths), 2, H, DN + R), dtype=np.float32).astype(cumla.bfloat16))
    sharding = TokenSharding(comm.world, "round_robin", stripe=64)
    shard = ShardedLatentCache(sharding, comm.rank, 256, 64, latent_dim=L, rope_dim=R, max_seqs=len(lengths),
                               max_blocks_per_seq=64, dtype=cumla.bfloat16, xp=cp)
    ids = [shard.add_sequence() for _ in lengths]
    for seq, r in zip(ids, rows):
        block = cp.asarray(r)
        shard.append([seq] * len(r), block[:, :L], block[:, L:])
    if mode == "fail" and comm.rank == 1:
        raise RuntimeError("rank 1 fails before the collective")
    o = sharded_decode(q, shard, w_kv, comm, seq_ids=ids, rope_dim=R)
    capacity = max(lengths)
    cache = np.zeros((len(lengths), capacity, L + R), cumla.bfloat16)
    for b, r in enumerate(rows):
        cache[b, :len(r)] = r
    whole = cumla.decode(q, cp.asarray(cache), w_kv, rope_dim=R, seqlens=cp.asarray(np.array(lengths, np.int32)))
    error = relative_error(o, cp.asnumpy(whole).astype(np.float64))
    assert error <= 1e-2, f"rank {comm.rank}: relative error {error} against the single-GPU decode"
    np.save(os.path.join(out_dir, f"rank{comm.rank}.npy"), cp.asnumpy(o).view(np.uint16))

    # Sq = 1 with a plan: captured once in a CUDA graph (all-gather included),
    # replayed after new queries land in the same buffer.
    q1 = cp.ascontiguousarray(q[:, 0])
    plan, out = shard.plan(ids, heads=H), cp.empty((len(lengths), H, DV), dtype=cumla.bfloat16)
    graph, stream = capture_graph(
        lambda: sharded_decode(q1, shard, w_kv, comm, seq_ids=ids, rope_dim=R, plan=plan, out=out, check=False))
    q1[...] = cp.asarray(rng.standard_normal(q1.shape, dtype=np.float32).astype(cumla.bfloat16))
    out.fill(np.nan)
    cp.cuda.Device().synchronize()
    graph.launch(stream)
    stream.synchronize()
    whole = cumla.decode(q1, cp.asarray(cache), w_kv, rope_dim=R, seqlens=cp.asarray(np.array(lengths, np.int32)))
    error = relative_error(out, cp.asnumpy(whole).astype(np.float64))
    assert error <= 1e-2, f"rank {comm.rank}: replayed planned step, relative error {error}"
    np.save(os.path.join(out_dir, f"rank{comm.rank}-planned.npy"), cp.asnumpy(out).view(np.uint16))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
