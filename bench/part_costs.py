"""What a schedule part's work costs on the Hopper kernel: each CTA's time against its planned pairs and segments.

Runs the kernel's profiling build (``CUMLA_TIMELINE=1``, as bench/timeline.py)
on configurations and bench_gpu's serving batches (B=64, H=128, 64 x 4096
tokens: even, lengths drawn from 1..2S, one request 10x longer), reads every
CTA's start and end (%globaltimer) and its part's work in the plan: pairs
(each segment's tiles in pairs, rounded up, as the kernel walks them) and
segments (the requests' pieces the part walks, each paying Q's load, the
first pair's copies and an epilogue). Over the CTAs of every batch it fits

    CTA time = a * pairs + b * segments + c

and prints a, b, c and b / a, what a segment costs in pairs (make_schedule
charges kSegmentCost = 3 tiles, 1.5 pairs). Per batch it prints the kernel's
span, the CTA that ended last and the part the plan rates busiest (its tiles
in whole pairs + kSegmentCost per segment), each with its work and time:
whether the uneven batches lose their time in the busiest part or elsewhere.
With ``--repeats N`` it stamps N calls of each batch and asks whether CTAs
of equal work differ by their SM: each CTA's time over its call's median
for its work, averaged per SM, and how well one call's per-SM times predict
the next's (a correlation near 1: some SMs are slow every call, which only
a schedule that moves work at run time recovers; near 0: chance).

The profiling build stamps the combine's blocks too: per batch it prints
when the combine's blocks start, when the first is released by the
attention kernel's end, and when its last merge ends, each from the
attention kernel's last CTA end, and the merging blocks' median and
longest merge: whether the combine's time after the attention kernel is
its launch, its release or its merges.

    python bench/part_costs.py [--batches D even random one] [--repeats N] [--out DIR]   # Hopper, from bench/
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

ROWS_PER_CTA = 64  # query rows of a CTA (a row group; Tile::BM)
COMBINE_BLOCKS = 8192  # kCombineStampBlocks in cuda/split_kv.cu
SEGMENT_COST = 3  # tiles' worth a segment costs in make_schedule (kSegmentCost in cuda/split_kv.cu)
SERVING = {"even": "even", "random": "random 1..2S", "one": "one 10x longer"}  # bench_gpu's serving batch names


def part_work(work: np.ndarray, lengths: np.ndarray, tile: int) -> np.ndarray:
    """(tiles, pairs, segments) of each part: ``work`` holds the plan's rows
    (first request, its first tile, last request, the tile it ends before)."""
    tiles_of = -(-np.asarray(lengths, np.int64) // tile)
    rows = []
    for b0, t_begin, b1, t_end in np.asarray(work, np.int64):
        tiles = pairs = segments = 0
        for b in range(b0, min(b1, len(tiles_of) - 1) + 1):
            first = t_begin if b == b0 else 0
            last = min(t_end, tiles_of[b]) if b == b1 else tiles_of[b]
            if last > first:
                tiles, pairs, segments = tiles + last - first, pairs + -(-(last - first) // 2), segments + 1
        rows.append((tiles, pairs, segments))
    return np.array(rows, np.int64).reshape(-1, 3)


def planned_cost(work: np.ndarray) -> np.ndarray:
    """What make_schedule charges each part of ``work`` (rows of part_work):
    its segments' tiles in whole pairs (every segment starts at an even tile)
    and SEGMENT_COST per segment."""
    work = np.asarray(work, np.int64).reshape(-1, 3)
    return 2 * work[:, 1] + SEGMENT_COST * work[:, 2]


def fit_costs(times_us: np.ndarray, pairs: np.ndarray, segments: np.ndarray) -> dict:
    """Least-squares a, b, c of time = a * pairs + b * segments + c, with R^2."""
    design = np.column_stack([pairs, segments, np.ones(len(pairs))]).astype(np.float64)
    times = np.asarray(times_us, np.float64)
    (a, b, c), *_ = np.linalg.lstsq(design, times, rcond=None)
    residual = times - design @ np.array([a, b, c])
    spread = ((times - times.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / spread if spread > 0 else float("nan")
    return {"us_per_pair": float(a), "us_per_segment": float(b), "us_fixed": float(c),
            "pairs_per_segment": float(b / a) if a else float("nan"), "r2": float(r2)}


def batch_summary(name: str, spans_ns: np.ndarray, work: np.ndarray) -> dict:
    """One batch's CTAs: ``spans_ns`` (CTAs, 2) start and end in ns, CTA i in
    part i // (CTAs / parts); ``work`` its parts' (tiles, pairs, segments)."""
    per_part = len(spans_ns) // len(work)
    cta_work = np.repeat(work, per_part, axis=0)
    times = (spans_ns[:, 1] - spans_ns[:, 0]) / 1e3
    last = int(np.argmax(spans_ns[:, 1]))
    busiest = int(np.argmax(planned_cost(work))) * per_part
    busiest = busiest + int(np.argmax(times[busiest:busiest + per_part]))

    def cta(i: int) -> dict:
        return {"cta": i, "pairs": int(cta_work[i, 1]), "segments": int(cta_work[i, 2]), "us": float(times[i])}

    return {"batch": name, "ctas": len(times), "span_us": float((spans_ns[:, 1].max() - spans_ns[:, 0].min()) / 1e3),
            "median_us": float(np.median(times)), "last": cta(last), "busiest": cta(busiest),
            "times_us": times.tolist(), "pairs": cta_work[:, 1].tolist(), "segments": cta_work[:, 2].tolist()}


def sm_consistency(runs: list[np.ndarray], work: np.ndarray) -> dict:
    """Whether CTAs of equal work are slow on the same SMs call after call.

    ``runs`` holds each call's CTA spans (CTAs, 5): ns start, ns end, clock
    start, clock end, SM; CTA i works on part i // (CTAs / parts) of ``work``
    (rows of part_work). A CTA's relative time is its time over the median of
    the CTAs with the same pairs and segments in its call."""
    per_part = len(runs[0]) // len(work)
    cta_work = np.repeat(np.asarray(work, np.int64)[:, 1:], per_part, axis=0)  # (pairs, segments) a CTA
    _, kind = np.unique(cta_work, axis=0, return_inverse=True)
    kind = kind.reshape(-1)
    sms = 1 + max(int(r[:, 4].max()) for r in runs)
    by_sm = np.full((len(runs), sms), np.nan)
    skews = []
    for i, spans in enumerate(runs):
        times = (spans[:, 1] - spans[:, 0]).astype(np.float64)
        relative = times / np.array([np.median(times[kind == k]) for k in range(kind.max() + 1)])[kind]
        for sm in range(sms):
            on = (spans[:, 4] == sm) & (cta_work[:, 0] > 0)
            if on.any():
                by_sm[i, sm] = relative[on].mean()
        skews.append(float((spans[:, 0].max() - spans[:, 0].min()) / 1e3))
    seen = ~np.isnan(by_sm).any(axis=0)
    pairs = [np.corrcoef(by_sm[i, seen], by_sm[i + 1, seen])[0, 1] for i in range(len(runs) - 1)]
    mean = np.nanmean(by_sm[:, seen], axis=0)
    order = np.argsort(mean)
    sm_ids = np.flatnonzero(seen)
    return {"calls": len(runs), "sms": int(seen.sum()),
            "call_to_call_correlation": float(np.mean(pairs)) if pairs else float("nan"),
            "relative_spread": [float(mean.min()), float(mean.max())],
            "slowest_sms": [[int(sm_ids[j]), float(mean[j])] for j in order[::-1][:8]],
            "fastest_sms": [[int(sm_ids[j]), float(mean[j])] for j in order[:8]],
            "start_skew_us": skews, "per_sm_relative": by_sm.tolist()}


def combine_summary(attention_ns: np.ndarray, combine: np.ndarray) -> dict:
    """The combine's blocks against the attention kernel's CTAs of one call:
    ``attention_ns`` (CTAs, 2) start and end, ``combine`` (blocks, 3) the
    combine's stamps (ns at the start, after the wait or 0, at the last
    warp's end), unstamped rows zero. Times in µs from the attention
    kernel's last CTA end."""
    ran = combine[combine[:, 0] != 0]
    if not len(ran):
        return {"blocks": 0}
    end = attention_ns[:, 1].max()
    released = ran[ran[:, 1] != 0]
    merged = released[released[:, 2] - released[:, 1] > 0]
    merge_us = (merged[:, 2] - merged[:, 1]) / 1e3
    return {"blocks": len(ran), "released_blocks": len(released),
            "first_start_us": float((ran[:, 0].min() - end) / 1e3),
            "last_start_us": float((ran[:, 0].max() - end) / 1e3),
            "first_release_us": float((released[:, 1].min() - end) / 1e3) if len(released) else float("nan"),
            "last_end_us": float((ran[:, 2].max() - end) / 1e3),
            "median_merge_us": float(np.median(merge_us)) if len(merged) else 0.0,
            "longest_merge_us": float(merge_us.max()) if len(merged) else 0.0}


def run_batch(lengths: np.ndarray, heads: int, q_len: int, rng, repeats: int = 1) -> tuple[list, list, np.ndarray]:
    """The CTA spans (CTAs, 5) and the combine's block stamps (blocks, 3) of
    ``repeats`` planned calls in the profiling build, after warm-up calls,
    and the parts' work."""
    import cupy as cp
    from cumla import _gpu, _kernels
    from split_costs import planned_call
    from timeline import CTAS, stamped

    call, plan = planned_call(lengths, heads, q_len, rng)
    work = part_work(cp.asnumpy(plan.work), lengths, _kernels.SCHEDULE_TILE)
    ctas = len(work) * -(-heads * q_len // ROWS_PER_CTA)  # the grid: parts x row groups
    module = _gpu._module("split_kv.cu", _kernels.SPLIT_KV_NAMES, _gpu._arch_of(cp.cuda.Device().id))
    stamps = cp.ndarray((COMBINE_BLOCKS, 3), dtype=cp.int64, memptr=module.get_global("cumla_combine_span"))
    runs, combines = [], []
    for _ in range(repeats):
        ran = stamped(call, heads * q_len, reset=lambda: stamps.fill(0))[1][:ctas]
        if ctas > CTAS or not ran[:, 1].all():
            raise SystemExit(f"{int(np.count_nonzero(ran[:, 1]))} of {ctas} CTAs stamped (the build stamps {CTAS})")
        runs.append(ran)
        combines.append(stamps.get())
    return runs, combines, work


def main() -> None:
    os.environ["CUMLA_TIMELINE"] = "1"  # before cumla compiles anything
    import cupy as cp
    from bench_gpu import CONFIGS, serving_batches
    from cumla import _gpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="*", default=["D", *SERVING],
                        help=f"configs of {''.join(CONFIGS)} and serving batches {list(SERVING)}")
    parser.add_argument("--repeats", type=int, default=1, help="calls stamped per batch (2 or more: per-SM times)")
    parser.add_argument("--out", help="folder for part-costs.json")
    args = parser.parse_args()
    unknown = sorted(set(args.batches) - set(CONFIGS) - set(SERVING))
    if unknown:
        parser.error(f"unknown batches {unknown}")
    if _gpu._arch_of(cp.cuda.Device().id) != "sm_90a":
        raise SystemExit("part_costs.py reads the Hopper kernel's CTA spans: it needs a Hopper GPU (sm_90a)")
    rng = np.random.default_rng(0)
    serving = dict(serving_batches())
    rows = []
    for name in args.batches:
        if name in CONFIGS:
            cfg = CONFIGS[name]
            lengths, heads, q_len = np.full(cfg["batch"], cfg["seq"], np.int32), cfg["heads"], cfg["q_len"]
        else:
            lengths, heads, q_len = serving[SERVING[name]], 128, 1
        runs, combines, work = run_batch(lengths, heads, q_len, rng, args.repeats)
        rows.append(batch_summary(name, runs[0][:, :2], work))
        rows[-1]["combine"] = [combine_summary(r[:, :2], c) for r, c in zip(runs, combines)]
        if len(runs) > 1:
            rows[-1]["sm_consistency"] = sm_consistency(runs, work)
        cp.get_default_memory_pool().free_all_blocks()
    fit = fit_costs(np.concatenate([r["times_us"] for r in rows]), np.concatenate([r["pairs"] for r in rows]),
                    np.concatenate([r["segments"] for r in rows]))
    print("| batch | CTAs | kernel span µs | median CTA µs | last CTA: pairs + segments, µs |"
          " planned busiest: pairs + segments, µs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        last, busiest = r["last"], r["busiest"]
        print(f"| {r['batch']} | {r['ctas']} | {r['span_us']:.1f} | {r['median_us']:.1f} |"
              f" {last['pairs']} + {last['segments']}, {last['us']:.1f} |"
              f" {busiest['pairs']} + {busiest['segments']}, {busiest['us']:.1f} |")
    print(f"fit over {sum(r['ctas'] for r in rows)} CTAs: {fit['us_per_pair']:.3f} µs a pair,"
          f" {fit['us_per_segment']:.2f} µs a segment ({fit['pairs_per_segment']:.2f} pairs),"
          f" {fit['us_fixed']:.2f} µs fixed; R^2 {fit['r2']:.3f}")
    print("| batch | combine blocks (released) | first start | first release | last end | median / longest merge |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for c in r["combine"]:
            if c["blocks"]:
                print(f"| {r['batch']} | {c['blocks']} ({c['released_blocks']}) | {c['first_start_us']:.1f} |"
                      f" {c['first_release_us']:.1f} | {c['last_end_us']:.1f} |"
                      f" {c['median_merge_us']:.1f} / {c['longest_merge_us']:.1f} |")
    for r in rows:
        if "sm_consistency" in r:
            c = r["sm_consistency"]
            print(f"{r['batch']}: per-SM relative time {c['relative_spread'][0]:.3f}-{c['relative_spread'][1]:.3f}"
                  f" over {c['sms']} SMs, call-to-call correlation {c['call_to_call_correlation']:.2f}"
                  f" ({c['calls']} calls);"
                  f" slowest {c['slowest_sms'][:4]}, start skew {max(c['start_skew_us']):.1f} µs")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "part-costs.json"), "w") as f:
            json.dump({"gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "fit": fit, "batches": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
