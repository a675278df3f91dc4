"""Command line: ``python -m cumla info [--heads N ...]``."""
from __future__ import annotations

import argparse
import sys

from ._memory import memory_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cumla", description="cumla utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="KV-cache memory of MHA versus MLA")
    info.add_argument("--heads", type=int, default=128)
    info.add_argument("--head-dim", type=int, default=128)
    info.add_argument("--latent", type=int, default=512)
    info.add_argument("--rope", type=int, default=64)
    info.add_argument("--seq-len", type=int, default=4096)
    info.add_argument("--batch", type=int, default=1)
    info.add_argument("--layers", type=int, default=61)
    info.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32", "float8"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = memory_report(
            heads=args.heads, head_dim=args.head_dim, latent=args.latent, rope=args.rope,
            seq_len=args.seq_len, batch=args.batch, layers=args.layers, dtype=args.dtype,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
