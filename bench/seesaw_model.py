"""Timeline model of the Hopper kernel's seesaw: cycles per pair of 64-token tiles.

The two warpgroups run their per-pair programs (cuda/latent_attention_sm90.cu,
H = 128, DeepSeek dims); their MMA batches share the tensor cores (processor
sharing: batches in flight split the rate evenly), everything else occupies
only the warpgroup that runs it, and the exchanges (m0, m1, P0, P1) are
one-way signals. Durations are counts, not measurements: the score batch is
36 HGMMA 64x64x16 at the shared-memory limit (4 KB per 32 cycles), a P V
batch 4 HGMMA 64x256x16 at the tensor peak; the CUDA-core steps are SASS
instruction counts at ~2 cycles each. It models overlap, not bandwidth: TMA
writes and L2 traffic are outside it, which is why it gives ~4.7k cycles per
pair where the kernel takes ~7.3k at config A.

    python bench/seesaw_model.py          # the kernel's order, and with warpgroup 1 staggered
"""
from __future__ import annotations

SCORES, PRODUCT = 1152.0, 512.0  # tensor cycles of one warpgroup's score batch / one P V batch
MAX, EXP, STORE_P, REFILL, SCALE = 80, 250, 180, 60, 40  # CUDA-core steps (cycles)


def program(wg: int, stagger: bool) -> list[tuple]:
    """One pair's steps of warpgroup ``wg``; ``stagger``: warpgroup 1 scores after m0."""
    if wg == 0:
        return [("issue", "S0", SCORES), ("wait", "S0"), ("cpu", MAX), ("signal", "m0"),
                ("cpu", EXP), ("issue", "P0V0L", PRODUCT),
                ("wait_signal", "m1"), ("cpu", SCALE + STORE_P), ("signal", "P0"),
                ("wait", "P0V0L"), ("cpu", REFILL),
                ("wait_signal", "P1"), ("issue", "P1V1L", PRODUCT), ("wait", "P1V1L"), ("cpu", REFILL)]
    first = [("wait_signal", "m0")] if stagger else []
    return first + [("issue", "S1", SCORES), ("wait", "S1"), ("wait_signal", "m0"), ("cpu", MAX),
                    ("signal", "m1"), ("cpu", EXP + STORE_P), ("signal", "P1"), ("issue", "P1V1R", PRODUCT),
                    ("wait_signal", "P0"), ("issue", "P0V0R", PRODUCT), ("wait", "P1V1R"), ("cpu", REFILL),
                    ("wait", "P0V0R"), ("cpu", REFILL)]


def simulate(stagger: bool, pairs: int = 40) -> tuple[float, float]:
    """Cycles per pair and the tensor cores' busy fraction over ``pairs`` pairs."""
    steps = [[(pair, step) for pair in range(pairs) for step in program(wg, stagger)] for wg in (0, 1)]
    at, free_at = [0, 0], [0.0, 0.0]
    in_flight: dict[tuple, float] = {}  # (pair, batch) -> tensor cycles left
    finished, signals = set(), set()
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
                    in_flight[(pair, arg[0])] = arg[1]
                elif kind == "signal":
                    signals.add((pair, arg[0]))
                elif (pair, arg[0]) not in (finished if kind == "wait" else signals):
                    continue
                at[wg] += 1
                moved = True
        share = 1.0 / len(in_flight) if in_flight else 0.0
        events = [t for t in free_at if t > now] + ([now + min(in_flight.values()) / share] if in_flight else [])
        if not events:
            raise RuntimeError("deadlock in the modelled programs")
        step_to = min(events)
        if in_flight:
            busy += step_to - now
            for key in list(in_flight):
                in_flight[key] -= (step_to - now) * share
                if in_flight[key] <= 1e-6:
                    del in_flight[key]
                    finished.add(key)
        now = step_to
    return now / pairs, busy / now


if __name__ == "__main__":
    for stagger in (False, True):
        cycles, busy = simulate(stagger)
        print(f"{'staggered' if stagger else 'as written'}: {cycles:.0f} cycles per pair, tensor cores busy {100 * busy:.0f}%")
