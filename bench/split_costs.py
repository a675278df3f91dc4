"""What the split-KV schedule costs: the attention kernel and the combine step apart.

For DESIGN's configurations A-F and bench_gpu's serving batches (B=64, H=128,
64 x 4096 tokens in total, page 64: even, lengths drawn from 1..2S, one
request 10x longer) prints the plan's shape (pieces, split requests, the
busiest part's tiles and segments) and the GPU time of the planned core call
with and without its combine launch (their difference is the combine step's
time, launch included). The two are captured as graphs once and replayed in
alternation, so that a change of the card's clocks between them (seen at B
and F) does not land on one side.

    python bench/split_costs.py [--configs ABCDEF] [--even 8x16384 ...] [--out DIR]     # on a CUDA GPU

--even adds even batches of BATCHxSEQ (H=128, Sq=1), e.g. shapes whose
requests split into a given number of pieces (8x16384: ~8 a request).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import cupy as cp
import cumla
from bench_gpu import BLOCK, CONFIGS, L, paged_inputs, replay_us, serving_batches
from cumla import _gpu
from cumla._arrays import BFLOAT16
from cumla._kernels import SCHEDULE_TILE
from cumla.testing import capture_graph
from part_costs import part_work, planned_cost

CALLS, ROUNDS = 10, 15  # calls per graph, alternating replays of the two graphs


def paired_times_us(first, second) -> tuple[float, float]:
    """Median GPU time per call of two calls, each captured CALLS times in a
    graph, the graphs replayed in turn ROUNDS times."""
    graphs = [capture_graph(call, CALLS) for call in (first, second)]
    times: list[list[float]] = [[], []]
    for _ in range(ROUNDS):
        for (graph, stream), out in zip(graphs, times):
            cp.cuda.Device().synchronize()
            out.append(replay_us(graph, stream, CALLS))
    return float(np.median(times[0])), float(np.median(times[1]))


def planned_call(lengths, heads: int, q_len: int, rng):
    """A planned core call over a paged cache of ``lengths`` (bench_gpu's
    inputs), ready to repeat, and its plan."""
    q, cache, table, seqlens = paged_inputs(lengths, heads, BLOCK, rng, q_len)
    plan = cumla.plan(seqlens, heads=heads, q_len=q_len, v_dim=L)
    out = cp.empty(q.shape[:-1] + (L,), dtype=BFLOAT16)

    def call():
        cumla.latent_attention(q, cache, v_dim=L, scale=0.1, seqlens=seqlens, block_table=table, plan=plan,
                               out=out, check=False)

    return call, plan


def measure(name: str, lengths, rng, heads: int = 128, q_len: int = 1) -> dict:
    call, plan = planned_call(lengths, heads, q_len, rng)

    def attention_only():
        combine = _gpu._combine
        _gpu._combine = lambda *args, **kwargs: None
        try:
            call()
        finally:
            _gpu._combine = combine

    full, attention = paired_times_us(call, attention_only)
    pieces = np.diff(cp.asnumpy(plan.piece_base))
    work = part_work(cp.asnumpy(plan.work), lengths, SCHEDULE_TILE)  # (tiles, pairs, segments) a part
    busiest = int(np.argmax(planned_cost(work)))
    return dict(batch=name, full_us=full, attention_us=attention, combine_us=full - attention,
                pieces=int(pieces.sum()), split_requests=int((pieces > 1).sum()),
                busiest_tiles=int(work[busiest, 0]), busiest_segments=int(work[busiest, 2]),
                max_tiles=int(work[:, 0].max()), max_segments=int(work[:, 2].max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="ABCDEF")
    parser.add_argument("--even", nargs="*", default=[], metavar="BATCHxSEQ",
                        help="extra even batches, H=128, e.g. 8x16384")
    parser.add_argument("--out", default=None, help="folder for split-costs.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = [(name, np.full(CONFIGS[name]["batch"], CONFIGS[name]["seq"], np.int32),
                dict(heads=CONFIGS[name]["heads"], q_len=CONFIGS[name]["q_len"])) for name in args.configs]
    for shape in args.even:
        batch, seq = (int(v) for v in shape.split("x"))
        batches.append((shape, np.full(batch, seq, np.int32), {}))
    batches += [(name, lengths, {}) for name, lengths in serving_batches()]
    rows = []
    print("| batch | full µs | attention µs | combine µs | pieces | split requests | busiest part tiles + segments |"
          " most tiles | most segments |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, lengths, shape in batches:
        row = measure(name, lengths, rng, **shape)
        rows.append(row)
        print(f"| {name} | {row['full_us']:.1f} | {row['attention_us']:.1f} | {row['combine_us']:.1f} | {row['pieces']} |"
              f" {row['split_requests']} | {row['busiest_tiles']} + {row['busiest_segments']} | {row['max_tiles']} |"
              f" {row['max_segments']} |")
        cp.get_default_memory_pool().free_all_blocks()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "split-costs.json"), "w") as f:
            json.dump(dict(gpu=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
