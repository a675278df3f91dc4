"""Where a kernel's warps wait: the per-instruction stall samples of an ncu
source page (the .csv bench/profile_device.sh writes): the totals by reason,
the instructions with the most samples and each one's main stall reasons,
and with --windows N the samples per N consecutive instructions (the phases).

    python bench/ncu_stalls.py ncu-A-main.csv [--top 40] [--windows 40]

Samples that no listed reason accounts for are shown as "other" (on Hopper
that is the GMMA stall, which the csv has no column for).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and instruction rows of an ncu ``--page source --csv`` export."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header_at = next(i for i, row in enumerate(rows) if SAMPLES in row)
    return rows[header_at], rows[header_at + 1:]


def number(text: str) -> int:
    return int(text.replace(",", "")) if text not in ("", "-") else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--windows", type=int, default=0,
                        help="also print the samples per window of this many instructions (the phases)")
    args = parser.parse_args()
    header, rows = read_rows(args.csv)
    col = {name: i for i, name in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(number(r[col[SAMPLES]]) for r in rows)
    print(f"{args.csv.name}: {total} samples over {len(rows)} instructions")
    by_reason = {h[len("stall_"):]: sum(number(r[col[h]]) for r in rows) for h in reasons}
    by_reason["other"] = total - sum(by_reason.values())
    print("\nBy reason: " + ", ".join(f"{k} {100 * v / max(total, 1):.1f}%"
                                     for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]) if v > 0) + "\n")
    print("| index | samples | share | executed | instruction | main reasons |")
    print("|---|---|---|---|---|---|")
    ranked = sorted(range(len(rows)), key=lambda i: -number(rows[i][col[SAMPLES]]))[:args.top]
    for i in ranked:
        row = rows[i]
        samples = number(row[col[SAMPLES]])
        counts = {h[len("stall_"):]: number(row[col[h]]) for h in reasons}
        counts["other"] = samples - sum(counts.values())
        main_reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:3] if v > 0)
        print(f"| {i} | {samples} | {100 * samples / max(total, 1):.1f}% | {row[col[EXECUTED]]} | "
              f"`{row[col['Source']].strip()[:64]}` | {main_reasons} |")
    if args.windows > 0:
        print_windows(rows, col, total, args.windows)


def opcode(source: str) -> str:
    """The opcode of a SASS line, without predicate and modifiers."""
    words = [w for w in source.split() if not w.startswith("@")]
    return words[0].split(".")[0] if words else ""


def print_windows(rows: list[list[str]], col: dict[str, int], total: int, size: int) -> None:
    """Samples per window of ``size`` consecutive instructions (0.5% and more),
    with the most executed count and the opcodes there: where the phases are."""
    print(f"\n| window | samples | share | most executed | opcodes |\n|---|---|---|---|---|")
    for start in range(0, len(rows), size):
        window = rows[start:start + size]
        samples = sum(number(r[col[SAMPLES]]) for r in window)
        if samples < 0.005 * total:
            continue
        executed = max(number(r[col[EXECUTED]]) for r in window)
        ops = sorted({opcode(r[col["Source"]]) for r in window} - {""})
        print(f"| {start}-{start + len(window) - 1} | {samples} | {100 * samples / max(total, 1):.1f}% | "
              f"{executed} | {' '.join(ops)} |")


if __name__ == "__main__":
    main()
