"""How far e4m3 MMA operands would move decode's output over an FP8 cache: a
float64 study on the CPU, for a kernel whose products run on FP8 tensor cores
(queries and P in e4m3 beside the cache's own codes) against today's kernels
(16-bit queries and P, the codes converted to 16-bit exactly).

One request of FlashMLA's 656-byte rows (L = 512 in four 128-value scale
groups, R = 64 in bfloat16), H query rows, scale 1/sqrt(192). Three paths:

- reference: float64 over the dequantised rows;
- 16-bit: queries and P rounded to bfloat16, the codes and scales exact,
  float64 sums (what the FP8 kernels compute, up to their float32 sums);
- e4m3: each query row's latent part in e4m3 per scale group with its own
  float32 scale (amax / 448), the RoPE part in bfloat16; P of each 64-token
  tile times each token's V scale, in e4m3 with one scale per tile and group
  shared by all rows (the tile's largest V scale / 448, so that P <= 1 after
  the running maximum fits), as a kernel could do without a reduction over
  rows; every group's product summed exactly (a kernel would add the
  groups' partial sums in float32, as DeepSeek promotes its FP8 GEMMs every
  128 values) and optionally rounded to ``--mma-bits`` mantissa bits first
  (Hopper's FP8 MMAs accumulate with fewer bits than float32).

Score distributions: "normal" (unit normal rows and queries), "peaked" (a few
tokens aligned with the queries), "flat" (queries x 0.02: P near uniform),
"wide" (queries x 4: P spans many decades). Error as DESIGN measures it:
||o - ref|| / ||ref||, and the largest |lse - ref|.

    python bench/fp8_mma_accuracy.py [--tokens 4096] [--heads 64] [--seeds 3] [--mma-bits 0]
"""
from __future__ import annotations

import argparse

import numpy as np

import cumla
from cumla._fp8 import E4M3, E4M3_MAX
from cumla.testing import relative_error

L, R, GROUP, TILE = 512, 64, 128, 64
SCALE = 1 / np.sqrt(128 + R)  # DeepSeek's softmax scale: 1 / sqrt(Dn + R)


def to_e4m3(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(E4M3).astype(np.float64)


def to_bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(cumla.bfloat16).astype(np.float64)


def round_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` rounded to ``bits`` mantissa bits (0: unchanged)."""
    if bits <= 0:
        return x
    mantissa, exponent = np.frexp(x)
    return np.ldexp(np.round(mantissa * 2.0**bits) / 2.0**bits, exponent)


def split_rows(rows: np.ndarray, fmt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dequantised rows (S, L + R), codes' values (S, L), group scales (S, G)) of
    FP8 rows, float64."""
    dense = fmt.dequantize(rows, np.float64)
    scales = np.ascontiguousarray(rows[:, L : L + 4 * fmt.groups]).view(np.float32).astype(np.float64)
    return dense, dense[:, :L] / np.repeat(scales, GROUP, axis=1), scales


def attend(scores: np.ndarray, product) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over ``scores`` (H, S); ``product(p)`` gives P V for the unnormalised P."""
    peak = scores.max(axis=1, keepdims=True)
    p = np.exp(scores - peak)
    total = p.sum(axis=1, keepdims=True)
    return product(p) / total, (peak + np.log(total))[:, 0]


def case(kind: str, tokens: int, heads: int, rng: np.random.Generator):
    cache = rng.standard_normal((tokens, L + R)).astype(np.float32)
    q = rng.standard_normal((heads, L + R))
    if kind == "peaked":
        hot = rng.choice(tokens, 8, replace=False)
        cache[hot] += 3 * q[rng.integers(0, heads, 8)].astype(np.float32)
    q *= {"normal": 1.0, "peaked": 1.0, "flat": 0.02, "wide": 4.0}[kind]
    return q, cache


def paths(q: np.ndarray, rows: np.ndarray, fmt, mma_bits: int):
    dense, values, scales = split_rows(rows, fmt)
    latent_v, rope = dense[:, :L], dense[:, L:]
    ref = attend(SCALE * q @ dense.T, lambda p: p @ latent_v)

    qb = to_bf16(q)
    sixteen = attend(SCALE * qb @ dense.T, lambda p: to_bf16(p) @ latent_v)

    heads, tokens = q.shape[0], rows.shape[0]
    groups = L // GROUP
    scores = to_bf16(q[:, L:]) @ rope.T
    for g in range(groups):
        cols = slice(g * GROUP, (g + 1) * GROUP)
        q_scale = np.abs(q[:, cols]).max(axis=1, keepdims=True) / E4M3_MAX
        q8 = to_e4m3(q[:, cols] / q_scale)
        scores = scores + q_scale * round_bits(q8 @ values[:, cols].T, mma_bits) * scales[:, g][None, :]
    scores *= SCALE

    def fp8_pv(p: np.ndarray) -> np.ndarray:
        out = np.zeros((heads, L))
        for t0 in range(0, tokens, TILE):
            tile = slice(t0, min(tokens, t0 + TILE))
            for g in range(groups):
                cols = slice(g * GROUP, (g + 1) * GROUP)
                v_scale = scales[tile, g]
                p_scale = v_scale.max() / E4M3_MAX
                p8 = to_e4m3(p[:, tile] * v_scale[None, :] / p_scale)
                out[:, cols] += p_scale * round_bits(p8 @ values[tile, cols], mma_bits)
        return out

    return dict(ref=ref, sixteen=sixteen, scores_e4m3=attend(scores, lambda p: to_bf16(p) @ latent_v),
                pv_e4m3=attend(SCALE * qb @ dense.T, fp8_pv), both_e4m3=attend(scores, fp8_pv))


#: The paths compared with the reference, by their names in the table.
PATHS = {"16-bit": "sixteen", "e4m3 scores": "scores_e4m3", "e4m3 P V": "pv_e4m3", "e4m3 both": "both_e4m3"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mma-bits", type=int, default=0, help="mantissa bits of each group's MMA sum (0: exact)")
    args = parser.parse_args()
    fmt = cumla.fp8_format(L, R, GROUP)
    print(f"tokens {args.tokens}, heads {args.heads}, MMA sums {'exact' if args.mma_bits <= 0 else f'{args.mma_bits} bits'}")
    print("| scores | path | max rel. error of o | max abs. error of lse |")
    print("|---|---|---|---|")
    for kind in ("normal", "peaked", "flat", "wide"):
        worst = {name: [0.0, 0.0] for name in PATHS}
        for seed in range(args.seeds):
            q, cache = case(kind, args.tokens, args.heads, np.random.default_rng(seed))
            results = paths(q, fmt.quantize(cache), fmt, args.mma_bits)
            ref_o, ref_lse = results["ref"]
            for name in PATHS:
                o, lse = results[PATHS[name]]
                worst[name][0] = max(worst[name][0], relative_error(o, ref_o))
                worst[name][1] = max(worst[name][1], float(np.abs(lse - ref_lse).max()))
        for name, (err, lse_err) in worst.items():
            print(f"| {kind} | {name} | {err:.2e} | {lse_err:.2e} |")


if __name__ == "__main__":
    main()
