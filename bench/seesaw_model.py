"""Timeline model of the Hopper kernel's seesaw: cycles per pair of 64-token tiles.

The two warpgroups run their per-pair programs (cuda/latent_attention_sm90.cu,
H = 128, DeepSeek dims); their MMA batches share the tensor cores, everything
else occupies only the warpgroup that runs it, and the exchanges (m0, m1, P0,
P1) are one-way signals. Copies: a stage's group is refilled when its last
reader is done and lands `latency` cycles later; the next pair's scores wait
for it (group A's four blocks first, then group B's five).

MMA timing is measured (bench/mma_rates.py, H200): each warpgroup's oldest
batch runs; alone, an instruction takes its solo time; with the other
warpgroup's batch running, the two advance by the paired times (the tensor
pipe alternates the warpgroups' instructions). Kinds: "S" a score MMA
64x64x16 (both operands in shared memory), "RS"/"SS" a P V MMA 64x256x16
with P from registers / shared memory. The CUDA-core steps are SASS
instruction counts at ~2 cycles each. Shared-memory and L2 bandwidth are
outside it, and so is what they do to the CUDA-core steps: the kernel's
timeline (bench/timeline.py, 2026-11-30) shows those steps at 2-4x these
counts beside the score MMAs, which take the whole shared-memory bandwidth,
and ~7.4k cycles per pair against the model's ~4.7k. The model called
"scores in turn" slower; it measured 0.6-2% faster.

Since session 18 a second table runs the kernel as v31 has it (scores in
turn, the block-table loads at each pair's top, the refills' issue cost,
CUDA-core steps as long as the timeline measured them) and the prepared
changes, by copy latency.

    python bench/seesaw_model.py          # the kernel's order and its variants, by copy latency
"""
from __future__ import annotations

SOLO = {"S": 32.1, "RS": 185.4, "SS": 128.1}  # cycles per MMA alone
# Cycles per MMA of each kind while the other warpgroup runs the other kind.
# mma_rates runs the same count n on both warpgroups. S + SS measured 117.1 /
# 160.1 per MMA over each loop: the scores ended first (117.1 n cycles), the
# P V then ran alone at 128.1 for the last 43.0 n cycles (0.34 n MMAs), so
# paired it did 0.66 n MMAs in 117.1 n cycles: 177 each. The other pairs
# ended together.
PAIRED = {
    ("S", "S"): (64.1, 61.7), ("RS", "S"): (186.8, 184.9), ("S", "SS"): (117.1, 177.0),
    ("RS", "RS"): (256.1, 256.1), ("RS", "SS"): (256.0, 256.0), ("SS", "SS"): (256.0, 256.0),
}  # RS+SS and SS+SS not measured: both at the tensor peak assumed
DENSE = {"S": 32.0, "RS": 128.0, "SS": 128.0}  # cycles of each MMA at the dense peak
SCORE_MMAS, GROUP_A_MMAS, PV_MMAS = 36, 16, 4  # per tile; group A: the scoring warpgroup's V half (4 blocks)
SASS_COSTS = dict(max=80, exp=250, store_p=180, refill=60, scale=40, sync=30)  # CUDA-core steps (cycles)
# The same steps as the timeline measured them (v31, config A, 2026-11-30:
# scores done -> m published ~480-550, m1 -> P1 published ~1150 = exp +
# store_p, m1 received -> scaled P0 published ~400), the refills' issue
# (group A ~300 cycles of the issuing warp, group B ~420) and the
# block-table loads at each pair's top (~950 cycles before warp 0 reaches
# group A's wait; ~150 of integer conversion once loaded a pair ahead).
TIMELINE_COSTS = dict(max=500, exp=800, store_p=360, refill=40, scale=40, sync=30)
VARIANTS = {  # own: each warpgroup's own P V kind; p0_late: warpgroup 0 signals the scaled P0
    # only after its own product (P0 shares one tile); early: see programs()
    "scores together (v17)": dict(own=("RS", "RS"), p0_late=False, early=False),
    "own P from smem, P0 one tile": dict(own=("SS", "SS"), p0_late=True, early=False),
    "own P from smem, P0 two tiles": dict(own=("SS", "SS"), p0_late=False, early=False),
    "warpgroup 1's own P from smem": dict(own=("RS", "SS"), p0_late=False, early=False),
    "warpgroup 0's own P from smem": dict(own=("SS", "RS"), p0_late=False, early=False),
    "next scores early": dict(own=("RS", "RS"), p0_late=False, early=True),
    "scores in turn (v18, as written)": dict(own=("RS", "RS"), p0_late=False, early=False, in_turn=True),
    "scores in turn, next scores early": dict(own=("RS", "RS"), p0_late=False, early=True, in_turn=True),
}


def paired(kind: str, other: str) -> float:
    """Cycles per MMA of `kind` beside `other`."""
    key = tuple(sorted((kind, other)))
    return PAIRED[key][key.index(kind)] if kind != other else PAIRED[key][0]


def programs(pairs: int, own: tuple[str, str], p0_late: bool, early: bool, in_turn: bool = False,
             table: float = 0.0, issue: tuple[float, float] = (0.0, 0.0), wg1_b1: bool = False,
             p0_first: bool = False, p0_early: str = "", p0_apart: bool = False,
             p0_shared: bool = False, costs: dict | None = None) -> list[list[tuple]]:
    """Both warpgroups' steps over ``pairs`` pairs, each step tagged with its pair.
    ``own``: the kind of each warpgroup's own P V; ``p0_late``: the scaled P0 is
    written over warpgroup 0's own P0 tile, after its product; ``early``:
    warpgroup 0 issues the next pair's group-A score MMAs right after its last
    product, before waiting for it; ``in_turn``: warpgroup 1's scores start once
    warpgroup 0's are done (the tensor pipe runs them one after the other);
    ``table``: cycles of block-table loads at each pair's top, before the
    scores; ``issue``: cycles a refill of group A / group B holds the issuing
    warpgroup; ``wg1_b1``: warpgroup 1 refills stage 1's group B once warpgroup
    0 signals it free; ``p0_first``: warpgroup 1 runs P0 V0_R before P1 V1_R;
    ``p0_early``: warpgroup 1 issues P0 V0_R before exponentiating S1
    ("exp") or before storing P1 ("store"), then P1 V1_R; ``p0_apart``:
    stage 0's RoPE block in group A (warpgroup 0's first 20 score MMAs);
    ``p0_shared``: warpgroup 0's own product reads the scaled P0 it stores for
    warpgroup 1 (shared memory, after m1) instead of P0 from registers;
    ``costs``: the CUDA-core steps (SASS_COSTS, the default, or TIMELINE_COSTS)."""
    c = costs or SASS_COSTS
    refill_cost = {"A": c["refill"] + issue[0], "B": c["refill"] + issue[1]}

    def refill(p: int, stage: int, group: str) -> list[tuple]:
        return [(p, ("cpu", refill_cost[group])), (p, ("refill", stage, group))]

    out: list[list[tuple]] = [[], []]
    for p in range(pairs):
        for wg in (0, 1):
            s = f"S{wg}"
            group_a = GROUP_A_MMAS + (4 if p0_apart and wg == 0 else 0)
            a = [(p, ("copy", wg, "A")), (p, ("issue", s + "a", group_a, "S"))]
            b = [(p, ("copy", wg, "B")), (p, ("issue", s + "b", SCORE_MMAS - group_a, "S")),
                 (p, ("wait", s + "b"))]
            scores = (a if not (early and wg == 0 and p > 0) else []) + b
            if in_turn and wg == 1:
                scores = [(p, ("wait", "S0b"))] + scores
            if table:
                scores = [(p, ("cpu", table))] + scores
            if wg == 0:
                own_p = [(p, ("cpu", c["store_p"] + c["sync"]))] if own[0] == "SS" else []
                # With P0 in shared memory for its own product, the scaled P0 goes over it after that product.
                scaled_p0 = [(p, ("cpu", c["scale"] + c["store_p"])), (p, ("signal", "P0"))]
                body = [(p, ("cpu", c["max"])), (p, ("signal", "m0")), (p, ("cpu", c["exp"]))]
                if p0_shared:  # P0 V0_L from the scaled P0, once it is stored
                    body += [(p, ("wait_signal", "m1"))] + scaled_p0 + [
                        (p, ("issue", "P0V0L", PV_MMAS, "SS")), (p, ("wait", "P0V0L"))] + refill(p, 0, "A")
                else:
                    body += own_p + [(p, ("issue", "P0V0L", PV_MMAS, own[0])), (p, ("wait_signal", "m1"))]
                    after = [(p, ("wait", "P0V0L"))] + refill(p, 0, "A")
                    body += after + scaled_p0 if p0_late else scaled_p0 + after
                body += [(p, ("wait_signal", "P1")), (p, ("issue", "P1V1L", PV_MMAS, "SS"))]
                if early and p + 1 < pairs:
                    body += [(p + 1, ("copy", 0, "A")), (p + 1, ("issue", "S0a", GROUP_A_MMAS, "S"))]
                body += [(p, ("wait", "P1V1L"))]
                body += [(p, ("signal", "B1"))] if wg1_b1 else refill(p, 1, "B")
            else:
                body = [(p, ("wait_signal", "m0")), (p, ("cpu", c["max"])), (p, ("signal", "m1"))]
                p0v0r = [(p, ("wait_signal", "P0")), (p, ("issue", "P0V0R", PV_MMAS, "SS"))]
                if p0_early == "exp":
                    body += p0v0r + [(p, ("cpu", c["exp"] + c["store_p"]))]
                elif p0_early == "store":
                    body += [(p, ("cpu", c["exp"]))] + p0v0r + [(p, ("cpu", c["store_p"]))]
                else:
                    body += [(p, ("cpu", c["exp"] + c["store_p"]))]
                body += [(p, ("signal", "P1"))]
                body += [(p, ("cpu", c["sync"]))] if own[1] == "SS" else []
                if p0_early:
                    body += [(p, ("issue", "P1V1R", PV_MMAS, own[1])), (p, ("wait", "P0V0R"))] + refill(p, 0, "B")
                    body += [(p, ("wait", "P1V1R"))] + refill(p, 1, "A")
                elif p0_first:
                    body += [(p, ("wait_signal", "P0")), (p, ("issue", "P0V0R", PV_MMAS, "SS")),
                             (p, ("issue", "P1V1R", PV_MMAS, own[1])), (p, ("wait", "P0V0R"))] + refill(p, 0, "B")
                    body += [(p, ("wait", "P1V1R"))] + refill(p, 1, "A")
                else:
                    body += [(p, ("issue", "P1V1R", PV_MMAS, own[1])), (p, ("wait_signal", "P0")),
                             (p, ("issue", "P0V0R", PV_MMAS, "SS")), (p, ("wait", "P1V1R"))] + refill(p, 1, "A")
                    body += [(p, ("wait", "P0V0R"))] + refill(p, 0, "B")
                if wg1_b1:
                    body += [(p, ("wait_signal", "B1"))] + refill(p, 1, "B")
            out[wg] += scores + body
    return out


def simulate(own: tuple[str, str] = ("RS", "RS"), p0_late: bool = False, early: bool = False, latency: float = 0.0,
             pairs: int = 40, in_turn: bool = False, sooner: float = 0.0, **options) -> tuple[float, float]:
    """Cycles per pair and the tensor cores' busy fraction (dense-peak cycles of the
    work done over elapsed cycles) over ``pairs`` pairs; ``sooner``: cycles stage
    0's group B lands before ``latency`` (a smaller copy); ``options`` go to programs()."""
    steps = programs(pairs, own, p0_late, early, in_turn, **options)
    at, free_at = [0, 0], [0.0, 0.0]
    queues: list[list[list]] = [[], []]  # per warpgroup: [pair, batch, MMAs left, kind], oldest first
    finished, signals = set(), set()
    landed = {(0, s, g): 0.0 for s in (0, 1) for g in "AB"}  # (pair, stage, group) -> when its copy lands
    now = work = 0.0
    while at[0] < len(steps[0]) or at[1] < len(steps[1]):
        moved = True
        while moved:  # run every step that can run at `now`
            moved = False
            for wg in (0, 1):
                if at[wg] >= len(steps[wg]) or free_at[wg] > now:
                    continue
                pair, (kind, *arg) = steps[wg][at[wg]]
                if kind == "cpu":
                    free_at[wg] = now + arg[0]
                elif kind == "issue":
                    queues[wg].append([pair, arg[0], float(arg[1]), arg[2]])
                elif kind == "signal":
                    signals.add((pair, arg[0]))
                elif kind == "refill":
                    stage, group = arg
                    landed[(pair + 1, stage, group)] = now + latency - (sooner if (stage, group) == (0, "B") else 0.0)
                elif kind == "copy":
                    if landed.get((pair, arg[0], arg[1]), float("inf")) > now:
                        continue
                elif (pair, arg[0]) not in (finished if kind == "wait" else signals):
                    continue
                at[wg] += 1
                moved = True
        if at[0] >= len(steps[0]) and at[1] >= len(steps[1]):
            break
        heads = [q[0] if q else None for q in queues]
        cycles = [None, None]  # cycles per MMA of each running head
        for wg in (0, 1):
            if heads[wg] is not None:
                other = heads[1 - wg]
                cycles[wg] = SOLO[heads[wg][3]] if other is None else paired(heads[wg][3], other[3])
        events = [t for t in free_at if t > now] + [t for t in landed.values() if t > now]
        events += [now + heads[wg][2] * cycles[wg] for wg in (0, 1) if heads[wg] is not None]
        if not events:
            raise RuntimeError("deadlock in the modelled programs")
        step_to = min(events)
        for wg in (0, 1):
            if heads[wg] is not None:
                done = (step_to - now) / cycles[wg]
                work += done * DENSE[heads[wg][3]]
                heads[wg][2] -= done
                if heads[wg][2] <= 1e-6:
                    finished.add((heads[wg][0], heads[wg][1]))
                    queues[wg].pop(0)
        now = step_to
    return now / pairs, work / now


# The kernel since v31 and the prepared changes to it, with the timeline's
# costs (TIMELINE_COSTS, the pair-top loads and the refills' issue).
V31 = dict(in_turn=True, table=950.0, issue=(300.0, 420.0), costs=TIMELINE_COSTS)
PRODUCER = {**V31, "table": 0.0, "issue": (0.0, 0.0)}  # the lookups and the copies' issue off the consumers
V32 = {**PRODUCER, "p0_first": True}
P0_APART = {"p0_apart": True, "sooner": 230.0}  # stage 0's group B one 32 KB copy
CALIBRATED = {
    "v31 (main)": V31,
    "hopper-table-ahead": {**V31, "table": 150.0},
    "hopper-table-ahead+hopper-wg1-refills": {**V31, "table": 150.0, "wg1_b1": True},
    "hopper-table-ahead+hopper-wg1-p0-first": {**V31, "table": 150.0, "p0_first": True},
    "hopper-producer (loads and issue off the consumers)": PRODUCER,
    "hopper-producer+hopper-producer-p0-first (v32)": V32,
    "v32 + P0 V0_R before warpgroup 1's exponentials": {**PRODUCER, "p0_early": "exp"},
    "v32 + P0 V0_R before warpgroup 1's P1 store": {**PRODUCER, "p0_early": "store"},
    "hopper-p0-apart (group B 230 cycles sooner)": {**V32, **P0_APART},
    "hopper-p0-apart + P0 V0_R before the P1 store": {**PRODUCER, **P0_APART, "p0_early": "store"},
    "v32 + warpgroup 0's own product from the scaled P0 in shared memory": {**V32, "p0_shared": True},
}


def table(variants: dict, latencies: tuple) -> None:
    print("| variant | " + " | ".join(f"latency {t}: cycles per pair (tensor busy)" for t in latencies) + " |")
    print("|---|" + "---|" * len(latencies))
    for name, args in variants.items():
        row = [simulate(latency=t, **args) for t in latencies]
        print(f"| {name} | " + " | ".join(f"{c:.0f} ({100 * b:.0f}%)" for c, b in row) + " |")


if __name__ == "__main__":
    print("SASS counts for the CUDA-core steps, no table loads or issue cost:\n")
    table(VARIANTS, (0, 700, 1500, 2500))
    print("\nThe timeline's costs (v31 measured ~7.35k cycles per pair at A):\n")
    table(CALIBRATED, (1000, 1500, 2000, 2500, 3000))
