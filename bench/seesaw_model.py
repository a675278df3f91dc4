"""Timeline model of the Hopper kernel's seesaw: cycles per pair of 64-token tiles.

The two warpgroups run their per-pair programs (cuda/latent_attention_sm90.cu,
H = 128, DeepSeek dims); their MMA batches share the tensor cores (the
oldest batch of each warpgroup runs, and those running split the rate
evenly), everything else occupies only the warpgroup that runs it, and the
exchanges (m0, m1, P0, P1) are one-way signals. Copies: a stage's group is
refilled when its last reader is done and lands `latency` cycles later; the
next pair's scores wait for it (group A's four blocks first, then group B's
five). Durations are counts, not measurements: the score batch is 36 HGMMA
64x64x16 at the shared-memory limit (4 KB per 32 cycles), a P V batch 4
HGMMA 64x256x16 at the tensor peak; the CUDA-core steps are SASS
instruction counts at ~2 cycles each. Shared-memory and L2 bandwidth are
outside it; bench/mma_rates.py measures the MMA durations it assumes.

    python bench/seesaw_model.py          # the kernel's order and a staggered one, by copy latency
"""
from __future__ import annotations

SCORES, PRODUCT = 1152.0, 512.0  # tensor cycles of one warpgroup's score batch / one P V batch
MAX, EXP, STORE_P, REFILL, SCALE = 80, 250, 180, 60, 40  # CUDA-core steps (cycles)
GROUP_A = 4 / 9  # share of a tile's score MMAs on group A's blocks (the scoring warpgroup's V half)


def program(wg: int, stagger: bool) -> list[tuple]:
    """One pair's steps of warpgroup ``wg``; ``stagger``: warpgroup 1 scores after m0."""
    s = f"S{wg}"
    scores = [("copy", wg, "A"), ("issue", s + "a", SCORES * GROUP_A),
              ("copy", wg, "B"), ("issue", s + "b", SCORES * (1 - GROUP_A)), ("wait", s + "b")]
    if wg == 0:
        return scores + [("cpu", MAX), ("signal", "m0"), ("cpu", EXP), ("issue", "P0V0L", PRODUCT),
                         ("wait_signal", "m1"), ("cpu", SCALE + STORE_P), ("signal", "P0"),
                         ("wait", "P0V0L"), ("cpu", REFILL), ("refill", 0, "A"),
                         ("wait_signal", "P1"), ("issue", "P1V1L", PRODUCT), ("wait", "P1V1L"), ("cpu", REFILL),
                         ("refill", 1, "B")]
    first = [("wait_signal", "m0")] if stagger else []
    return first + scores + [("wait_signal", "m0"), ("cpu", MAX), ("signal", "m1"), ("cpu", EXP + STORE_P),
                             ("signal", "P1"), ("issue", "P1V1R", PRODUCT), ("wait_signal", "P0"),
                             ("issue", "P0V0R", PRODUCT), ("wait", "P1V1R"), ("cpu", REFILL), ("refill", 1, "A"),
                             ("wait", "P0V0R"), ("cpu", REFILL), ("refill", 0, "B")]


def simulate(stagger: bool, latency: float = 0.0, pairs: int = 40) -> tuple[float, float]:
    """Cycles per pair and the tensor cores' busy fraction over ``pairs`` pairs."""
    steps = [[(pair, step) for pair in range(pairs) for step in program(wg, stagger)] for wg in (0, 1)]
    at, free_at = [0, 0], [0.0, 0.0]
    queues: list[list[list]] = [[], []]  # per warpgroup: [pair, batch, tensor cycles left], oldest first
    finished, signals = set(), set()
    landed = {(0, s, g): 0.0 for s in (0, 1) for g in "AB"}  # (pair, stage, group) -> when its copy lands
    now = busy = 0.0
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
                    queues[wg].append([pair, arg[0], arg[1]])
                elif kind == "signal":
                    signals.add((pair, arg[0]))
                elif kind == "refill":
                    landed[(pair + 1, arg[0], arg[1])] = now + latency
                elif kind == "copy":
                    if landed.get((pair, arg[0], arg[1]), float("inf")) > now:
                        continue
                elif (pair, arg[0]) not in (finished if kind == "wait" else signals):
                    continue
                at[wg] += 1
                moved = True
        if at[0] >= len(steps[0]) and at[1] >= len(steps[1]):
            break
        running = [q[0] for q in queues if q]
        share = 1.0 / len(running) if running else 0.0
        events = [t for t in free_at if t > now] + [t for t in landed.values() if t > now]
        if running:
            events.append(now + min(batch[2] for batch in running) / share)
        if not events:
            raise RuntimeError("deadlock in the modelled programs")
        step_to = min(events)
        if running:
            busy += step_to - now
            for wg in (0, 1):
                if queues[wg]:
                    head = queues[wg][0]
                    head[2] -= (step_to - now) * share
                    if head[2] <= 1e-6:
                        finished.add((head[0], head[1]))
                        queues[wg].pop(0)
        now = step_to
    return now / pairs, busy / now


if __name__ == "__main__":
    print("| copy latency (cycles) | as written: cycles per pair | tensor busy | staggered | tensor busy |")
    print("|---|---|---|---|---|")
    for latency in (0, 700, 1500, 2500):
        row = [simulate(stagger, latency) for stagger in (False, True)]
        print(f"| {latency} | " + " | ".join(f"{c:.0f} | {100 * b:.0f}%" for c, b in row) + " |")
