"""Context-parallel decode on N GPUs: a small batch with a very long context.

    python -m cumla.launch -n 1 bench/bench_distributed.py --out $OUT   # one GPU
    python -m cumla.launch -n 2 bench/bench_distributed.py --out $OUT   # two GPUs

Times the whole sharded decode step (local decode + all-gather + merge) as
GPU time per call, from planned calls replayed as one CUDA graph on every
rank (the method of bench_gpu.py), and the local decode alone the same way:
the merge's cost is the median of the rounds' differences. Also the eager
planned call and the eager call without a plan (host work included). Rank 0
writes distributed-<N>gpu.json; compare the two files for the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import cupy as cp
import cumla
from bench_gpu import graph_time_us, time_us
from cumla.distributed import Communicator, ShardedLatentCache, TokenSharding, sharded_decode

L, R, DN, DV, BLOCK = 512, 64, 128, 128, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=262144)
    parser.add_argument("--heads", type=int, default=128)
    args = parser.parse_args()
    comm = Communicator.from_env()
    batch, seq, heads = args.batch, args.seq, args.heads
    sharding = TokenSharding(comm.world, "round_robin", stripe=BLOCK)
    per_rank = -(-seq // comm.world)
    blocks = batch * -(-per_rank // BLOCK)
    shard = ShardedLatentCache(sharding, comm.rank, blocks, BLOCK, latent_dim=L, rope_dim=R, max_seqs=batch,
                               max_blocks_per_seq=-(-per_rank // BLOCK), dtype=cumla.bfloat16, xp=cp)
    ids = [shard.add_sequence() for _ in range(batch)]
    chunk = 16384  # append in pieces: a few scatters, bounded temporaries
    for seq_id in ids:
        for begin in range(0, seq, chunk):
            n = min(chunk, seq - begin)
            rows = cp.random.standard_normal((n, L + R), dtype=np.float32).astype(cumla.bfloat16)
            shard.append([seq_id] * n, rows[:, :L], rows[:, L:])
    rng = np.random.default_rng(0)
    q = cp.asarray(rng.standard_normal((batch, heads, DN + R), dtype=np.float32).astype(cumla.bfloat16))
    w_kv = cp.asarray((rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32) / 20).astype(cumla.bfloat16))

    plan = shard.plan(ids, heads=heads)
    local = shard.batch(ids)
    out = cp.empty((batch, heads, DV), dtype=cumla.bfloat16)
    local_out = cp.empty_like(out)

    def step():
        sharded_decode(q, shard, w_kv, comm, seq_ids=ids, rope_dim=R, plan=plan, out=out, check=False)

    def local_only():
        cumla.decode(q, local["cache"], w_kv, rope_dim=R, seqlens=local["seqlens"], block_table=local["block_table"],
                     plan=plan, out=local_out, check=False)

    # Alternated and repeated: the card's clocks drift between measurements (power cap).
    rounds = [(graph_time_us(step), graph_time_us(local_only)) for _ in range(5)]
    total_us, local_us = (float(np.median(column)) for column in zip(*rounds))
    # The merge from each round's own pair: the two medians above each drift
    # by more than the merge costs on one GPU (a negative difference there is
    # that drift, hence the rounds in the file too).
    merge_us = float(np.median([total - local for total, local in rounds]))
    eager_us = time_us(step, warmup=1, repeat=10)
    unplanned_us = time_us(lambda: sharded_decode(q, shard, w_kv, comm, seq_ids=ids, rope_dim=R), warmup=1, repeat=10)
    if comm.rank == 0:
        result = dict(gpus=comm.world, batch=batch, seq=seq, heads=heads, block=BLOCK, layout=sharding.layout,
                      gpu=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                      time_us=total_us, local_us=local_us, merge_us=merge_us, merge_share=merge_us / total_us,
                      eager_us=eager_us, eager_unplanned_us=unplanned_us, rounds_us=rounds,
                      method="GPU time per call: 10 planned calls replayed as one CUDA graph, median of 10, "
                             "median of 5 alternated rounds of step and local decode; merge: median of the "
                             "rounds' differences")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"distributed-{comm.world}gpu.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
