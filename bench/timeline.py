"""Where the Hopper kernel's warpgroups wait: the clock at each step of its pairs.

Builds cuda/latent_attention_sm90.cu with its per-step clock stamps (the
profiling build, ``CUMLA_TIMELINE=1``; the default build has none), runs one
configuration and prints, for each warpgroup and step, the median clock after
the pair's start (warpgroup 0 at the top of the pair), over the pairs of CTA
(0, 0) but the first two and the last two. What the seesaw model
(bench/seesaw_model.py) predicts per pair can be read against it.

It also prints how evenly the grid's CTAs start and end (%globaltimer), the
SM clock during the call, each copy group's release-to-issue time (from the
stamp of its last reader's release to the stamp after its refill's copies
are issued, in the same pair), and its refill-to-landing time: from
the stamp after the refill's copies are issued (one pair) to the stamp after
the wait for it (the next pair); when the waiting warpgroup arrives at the
wait (stamped too) before the copy lands, that is the copy's latency, and
otherwise an upper bound of it: the spread of the first group's wait
(printed) says which.
``--batch N`` runs N requests on N schedule parts (one per request, 2N CTAs
at H = 128), so that the same copies meet a lightly loaded memory system
(with the default plan the requests would be split over every SM again, and
the load per SM would not change).

``--table sequential`` lays the cache's blocks out request after request
(default: shuffled over the pool, as bench_gpu.py does).

    python bench/timeline.py [A-F ...] [--batch N] [--table shuffled|sequential] [--out DIR]  # Hopper, from bench/
"""
from __future__ import annotations

import os

os.environ["CUMLA_TIMELINE"] = "1"  # before cumla compiles anything

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

import cupy as cp  # noqa: E402
from bench_gpu import BLOCK, CONFIGS, L, R, TABLE_ORDERS  # noqa: E402
from cumla import _gpu, _kernels  # noqa: E402
from cumla._arrays import BFLOAT16  # noqa: E402
from profile_one import core_call  # noqa: E402

PAIRS, STEPS, CTAS = 64, 17, 1024  # kTimelinePairs, kTimelineSteps, kTimelineCtas in the kernel
# Step k of each warpgroup (TIMELINE_STAMP(pairs, wg, k) in the kernel); None: not stamped.
# Steps 1 and 2: the tile's first-scored group landed, then the other
# (warpgroup 1 scores its group B first since session 33; FP8 rows, which
# the profiling build does not time, keep A first).
STEP_NAMES = (
    ("pair start", "pair start"),
    ("group A landed", "group B landed"),
    ("group B landed", "group A landed"),
    ("scores done", "scores done"),
    ("m0 published", "m0 received, m1 published"),
    ("own P V issued", "P1 published"),
    ("m1 received", "P0 received"),
    ("scaled P0 published", "P0 V0_R and own P V issued"),
    ("own P V done", "own P V done"),
    ("P1 received", None),
    ("P1 V1_L done", "P0 V0_R done"),
    ("pair end", "pair end"),
    ("at the wait for group A", "at the wait for group B"),
    ("stage 0 group A refill issued", "stage 1 group A refill issued"),
    ("stage 1 group B refill issued", "stage 0 group B refill issued"),
    ("stage 0 group A released", "stage 1 group A released"),
    ("stage 1 group B released", "stage 0 group B released"),
)


# Copy groups: (name, (warpgroup, step) stamped once the refill is issued in
# one pair, (warpgroup, step) stamped after the wait for it in the next pair).
# The releasing warpgroup stamps the group's release two steps after its
# refill's issue stamp (15/16 against 13/14), in the same pair.
REFILLS = (
    ("stage 0 group A", (0, 13), (0, 1)),
    ("stage 0 group B", (1, 14), (0, 2)),
    ("stage 1 group A", (1, 13), (1, 2)),
    ("stage 1 group B", (0, 14), (1, 1)),
)


def stamped(call, rows: int, reset=None) -> tuple[np.ndarray, np.ndarray]:
    """The stamps (PAIRS, 2, STEPS) and the CTA spans (CTAS, 5) of one run of
    ``call`` (a planned call over ``rows`` query rows a request, on the bf16
    Hopper kernel at DeepSeek dims) after warm-up calls; ``reset``, if given,
    clears other stamps before that run."""
    for _ in range(3):
        call()
    spec = _kernels.hopper_kernel(BFLOAT16, L + R, L, BLOCK, rows=rows)
    module = _gpu._module(spec.file, spec.module, _gpu._arch_of(cp.cuda.Device().id))
    stamps = cp.ndarray((PAIRS, 2, STEPS), dtype=cp.int64, memptr=module.get_global("cumla_timeline"))
    spans = cp.ndarray((CTAS, 5), dtype=cp.int64, memptr=module.get_global("cumla_cta_span"))
    stamps.fill(0)
    spans.fill(0)
    if reset is not None:
        reset()
    call()
    cp.cuda.Device().synchronize()
    return stamps.get(), spans.get()


def run(config: str, batch: int | None = None, order: str = "shuffled") -> tuple[np.ndarray, np.ndarray]:
    """``stamped`` for one planned call of ``config`` (``batch`` requests on as
    many parts if given; the cache's blocks in ``order``)."""
    call = core_call(config, batch=batch, num_parts=batch, order=order)
    return stamped(call, CONFIGS[config]["heads"] * CONFIGS[config]["q_len"])


def summarise_ctas(spans: np.ndarray) -> dict:
    """How evenly the CTAs run: their starts and ends (µs after the first start,
    from %globaltimer) and the SM clock (clock64 cycles over globaltimer ns)."""
    ran = spans[:, 1] != 0
    start, end = spans[ran, 0], spans[ran, 1]
    first = start.min()
    ghz = (spans[ran, 3] - spans[ran, 2]) / np.maximum(end - start, 1)
    ends = (end - first) / 1e3
    return {"ctas": int(ran.sum()), "sms": int(len(np.unique(spans[ran, 4]))),
            "start_spread_us": float((start.max() - first) / 1e3),
            "end_us": {"min": float(ends.min()), "median": float(np.median(ends)),
                       "p90": float(np.percentile(ends, 90)), "max": float(ends.max())},
            "sm_clock_ghz": float(np.median(ghz))}


def summarise(stamps: np.ndarray) -> dict:
    """Median clocks of each step after the pair's start, and cycles per pair."""
    done = np.flatnonzero(stamps[:, 0, 0])  # pairs CTA (0, 0) ran
    pairs = done[2:-2] if len(done) > 6 else done
    start = stamps[pairs, 0, 0]
    rows = []
    for k, names in enumerate(STEP_NAMES):
        row = {"step": k}
        for wg in (0, 1):
            live = stamps[pairs, wg, k] != 0
            row[f"wg{wg}"] = names[wg]
            row[f"wg{wg}_cycles"] = float(np.median(stamps[pairs, wg, k][live] - start[live])) if live.any() else None
        rows.append(row)
    period = np.diff(stamps[done, 0, 0])
    refills, issues = [], []
    for name, (wg_issue, issue), (wg_land, land) in REFILLS:
        this, following = pairs[:-1], pairs[1:]
        ok = (following == this + 1) & (stamps[this, wg_issue, issue] != 0) & (stamps[following, wg_land, land] != 0)
        spans = stamps[following[ok], wg_land, land] - stamps[this[ok], wg_issue, issue]
        refills.append({"group": name, "cycles": float(np.median(spans)) if len(spans) else None})
        # Release to issue: the wait for the issuing warp (the producer's, or
        # the releasing warpgroup's own barrier) and the copies' acceptance.
        ok = (stamps[pairs, wg_issue, issue] != 0) & (stamps[pairs, wg_issue, issue + 2] != 0)
        spans = stamps[pairs[ok], wg_issue, issue] - stamps[pairs[ok], wg_issue, issue + 2]
        issues.append({"group": name, "cycles": float(np.median(spans)) if len(spans) else None})
    # The first group's wait: from the stamp before it (step 12) to the one
    # after (step 1). A spread that stays at its minimum says the copy had landed before
    # the warp arrived (the minimum is the wait's and the stamps' own cost);
    # a wider one, that the warp waited for the copy.
    waits = {}
    for wg in (0, 1):
        live = (stamps[pairs, wg, 12] != 0) & (stamps[pairs, wg, 1] != 0)
        gap = stamps[pairs, wg, 1][live] - stamps[pairs, wg, 12][live]
        waits[f"wg{wg}"] = {q: float(np.percentile(gap, v)) for q, v in (("min", 0), ("median", 50), ("p90", 90))} \
            if live.any() else None
    return {"pairs": int(len(done)), "pairs_used": int(len(pairs)),
            "cycles_per_pair": float(np.median(period)) if len(period) else None, "steps": rows,
            "release_to_issue": issues, "refill_to_landing": refills, "first_group_wait": waits}


def report(config: str, batch: int | None, table: str, out: str | None) -> None:
    """Runs ``config`` in the profiling build and prints its steps, refills and CTA spans."""
    result = {"config": config, "batch": batch or CONFIGS[config]["batch"], "table": table,
              "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    stamps, spans = run(config, batch, table)
    result.update(summarise(stamps), cta_spans=summarise_ctas(spans))
    print(f"config {config} (batch {result['batch']}, blocks {table}): {result['pairs']} pairs in CTA (0, 0), "
          f"median {result['cycles_per_pair']:.0f} cycles per pair; clock after the pair's start:")
    print("| step | warpgroup 0 | cycles | warpgroup 1 | cycles |")
    print("|---|---|---|---|---|")
    for row in result["steps"]:
        cells = [f"{row[f'wg{wg}'] or '-'} | {'-' if row[f'wg{wg}_cycles'] is None else round(row[f'wg{wg}_cycles'])}"
                 for wg in (0, 1)]
        print(f"| {row['step']} | " + " | ".join(cells) + " |")
    print("release to refill issued (median cycles): " + ", ".join(
        f"{r['group']} {'-' if r['cycles'] is None else round(r['cycles'])}" for r in result["release_to_issue"]))
    print("refill to landing (median cycles): " + ", ".join(
        f"{r['group']} {'-' if r['cycles'] is None else round(r['cycles'])}" for r in result["refill_to_landing"]))
    print("first group's wait, stamp before to stamp after (cycles): " + "; ".join(
        f"warpgroup {wg[-1]} " + ("-" if w is None else " / ".join(f"{k} {v:.0f}" for k, v in w.items()))
        for wg, w in result["first_group_wait"].items()))
    ctas = result["cta_spans"]
    print(f"{ctas['ctas']} CTAs on {ctas['sms']} SMs, SM clock {ctas['sm_clock_ghz']:.2f} GHz; started within "
          f"{ctas['start_spread_us']:.1f} us; ended after (us) " +
          ", ".join(f"{k} {v:.1f}" for k, v in ctas["end_us"].items()))
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"timeline-{config}.json"), "w") as f:
            json.dump(result, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", metavar="config", help="one or more of A-F (default: A)")
    parser.add_argument("--batch", type=int, help="requests (default: the config's)")
    parser.add_argument("--table", choices=TABLE_ORDERS, default="shuffled",
                        help="block order of the paged cache (bench_gpu.py's --table)")
    parser.add_argument("--out", help="folder for timeline-<config>.json")
    args = parser.parse_args()
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {''.join(sorted(CONFIGS))}")
    if _gpu._arch_of(cp.cuda.Device().id) != "sm_90a":
        raise SystemExit("timeline.py stamps the Hopper kernel: it needs a Hopper GPU (sm_90a)")
    for config in args.configs or ["A"]:
        report(config, args.batch, args.table, args.out)


if __name__ == "__main__":
    main()
