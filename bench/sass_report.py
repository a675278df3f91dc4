"""A kernel's registers, spills and SASS instruction mix, compiled on this
machine (no GPU): the whole kernel's opcode counts and, per stretch between
two CTA-wide waits (BAR.SYNC, mbarrier try-waits), its length and leading
opcodes, so that a change's instruction cost can be read before a device
call.

    python bench/sass_report.py fp8_fragments.cu "latent_attention_fp8_fragments<bf16_t, 512, 64, 128, 2>" \\
        [--arch sm_90a] [--nvrtc /tmp/nv13/nvidia/cu13/lib/libnvrtc.so.13] [--option=-default-device] \\
        [--top 8] [--sass out.sass]

The device compiles with the NVRTC its CuPy loads, which need not be this
machine's: in session 22 the H200 used NVRTC 13.0 and pip's newest was
13.5, and the FP8 fragment kernel's tile loop differed by 10% between them
(13.0 rebuilt each shared-memory address from a generic pointer). Point
--nvrtc at the device's version (``pip install --target /tmp/nv13
"nvidia-cuda-nvrtc>=13.0,<13.1"``, with LD_LIBRARY_PATH at its lib folder
for the builtins; that build wants ``--option=-default-device`` for the
kernels' generic lambdas).
"""
from __future__ import annotations

import argparse
import ctypes
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cumla import _compile, _kernels  # noqa: E402

_INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
_WAIT = re.compile(r"^(BAR\.SYNC|SYNCS\.PHASECHK)")


def opcode(instruction: str) -> str:
    """The opcode of a SASS instruction without its predicate and modifiers."""
    words = instruction.split()
    word = words[1] if words[0].startswith("@") else words[0]
    return word.split(".")[0]


def instructions(sass: str) -> list[str]:
    """The instructions of a cuobjdump listing, in order."""
    return [m.group(1) for line in sass.splitlines() if (m := _INSTRUCTION.match(line))]


def stretches(listing: list[str]) -> list[tuple[int, int]]:
    """[start, end) index ranges between CTA-wide waits (each wait opens a stretch)."""
    cuts = [0] + [i for i, ins in enumerate(listing) if _WAIT.match(ins)] + [len(listing)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def mix(listing: list[str], top: int) -> str:
    return ", ".join(f"{op} {n}" for op, n in Counter(map(opcode, listing)).most_common(top))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a .cu file of cuda/")
    parser.add_argument("kernel", help="the kernel's instantiation, as _kernels names it")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--nvrtc", help="a libnvrtc to compile with (default: the one cumla finds)")
    parser.add_argument("--option", action="append", default=[], help="an extra NVRTC option (repeatable)")
    parser.add_argument("--top", type=int, default=8, help="opcodes listed per stretch")
    parser.add_argument("--sass", type=Path, help="write the whole listing here")
    args = parser.parse_args(argv)

    lib = ctypes.CDLL(args.nvrtc) if args.nvrtc else _compile.load_nvrtc()
    tool = _compile.find_tool("cuobjdump")
    if lib is None or tool is None:
        print("needs an NVRTC library and cuobjdump", file=sys.stderr)
        return 2
    options = _kernels.options(args.arch) + ("--ptxas-options=-v",) + tuple(args.option)
    result = _compile.compile_source(lib, _kernels.source(args.file), options, (args.kernel,))
    for line in result.log.splitlines():
        if re.search(r"error|registers|spill", line):
            print(line.strip())
    if not result.ok:
        return 1
    sass = _compile.sass(result.cubin, tool)
    if args.sass:
        args.sass.write_text(sass)
    listing = instructions(sass)
    print(f"{len(listing)} instructions: {mix(listing, 2 * args.top)}")
    for a, b in stretches(listing):
        print(f"  [{a}, {b}) {b - a:5d}  {listing[a][:40]:40s}  {mix(listing[a:b], args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
