"""Kernel sources, compile options and the choice of specialisation: one place.

The loader (:mod:`cumla._gpu`) and the compile check in the tests both use
these functions, so the tests compile exactly what runs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import BFLOAT16
from ._fp8 import fp8_format

#: Archs the compile check builds for (the portable and the Hopper target).
CHECK_ARCHS = ("sm_80", "sm_90a")
SCHEDULE_TILE = 64  # tokens per schedule tile (the tensor-core kernel's BN)
THREADS = 256
SMEM_LIMIT = 227 * 1024  # opt-in shared memory per block on sm_90 (Hopper), the most any kernel takes
A100_SMEM = 163 * 1024  # on sm_80 and sm_87 (sm_86/89: 99 KB)
#: Blocks a launch grid's y and z dimensions hold at most (x holds 2^31 - 1): the
#: Hopper kernel's grid takes the plan's parts as y.
MAX_GRID_YZ = 65535
DECOMPRESSED_STAGES = 4  # most latent/W slice stages the decompressed kernel keeps in flight

_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.M)
_ELEMENT = {np.dtype(np.float16): "f16_t", BFLOAT16: "bf16_t", np.dtype(np.float32): "f32_t"}


def element_of(dtype: np.dtype) -> str:
    """The kernels' element tag (common.cuh) of a dtype."""
    return _ELEMENT[np.dtype(dtype)]


def source_dir() -> Path:
    """The CUDA sources: inside the installed package, or cuda/ beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "cuda", here.parent / "cuda"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"cumla's CUDA sources are missing (looked in {here / 'cuda'} and {here.parent / 'cuda'})")


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """A .cu file with its local #includes inlined, so CuPy's cache keys on all of it."""
    folder = source_dir()
    seen: set[str] = set()

    def inline(match: re.Match) -> str:
        header = match.group(1)
        if header in seen:
            return ""
        seen.add(header)
        return _INCLUDE.sub(inline, (folder / header).read_text())

    return _INCLUDE.sub(inline, (folder / name).read_text())


def arch_for(major: int, minor: int) -> str:
    """NVRTC -arch for a device; Hopper gets sm_90a (its own instructions)."""
    if (major, minor) < (8, 0):
        raise RuntimeError(f"cumla's kernels need compute capability 8.0 or newer, got {major}.{minor}")
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def options(arch: str) -> tuple[str, ...]:
    """NVRTC options; ``CUMLA_LINEINFO=1`` adds source lines to the code
    (compute-sanitizer and profilers then name lines instead of offsets);
    ``CUMLA_TIMELINE=1`` builds the Hopper kernel's per-step clock stamps
    (bench/timeline.py). The schedule tile (SCHEDULE_TILE) reaches the
    kernels as CUMLA_SCHEDULE_TILE."""
    lineinfo = ("-lineinfo",) if os.environ.get("CUMLA_LINEINFO") == "1" else ()
    timeline = ("-DCUMLA_TIMELINE",) if os.environ.get("CUMLA_TIMELINE") == "1" else ()
    return ("-std=c++17", f"-arch={arch}", f"-DCUMLA_SCHEDULE_TILE={SCHEDULE_TILE}") + lineinfo + timeline


#: Hopper GPUs run the wgmma kernel wherever its dims allow. Tests switch this
#: off to run the portable kernel on the same GPU.
USE_HOPPER_KERNEL = True


class _SplitPartials:
    """The combine step that merges an attention kernel's split partials, from
    its ``element`` and whether it writes them in that 16-bit type
    (``narrow_partials``) or in float32."""

    @property
    def combine(self) -> str:
        return combine_name(self.element, self.narrow_partials)

    @property
    def combine_lane_columns(self) -> int:
        """Output columns a lane of the combine merges: 16 bytes of partials."""
        return 8 if self.narrow_partials else 4


@dataclass(frozen=True)
class LatentKernel(_SplitPartials):
    """One specialisation of the latent-attention kernel."""

    file: str          # CUDA source
    module: tuple[str, ...]  # every name expression the module is built with
    name: str          # C++ name expression
    rows: int          # query rows per CTA
    smem: int          # dynamic shared memory bytes
    element: str
    tma: bool = False  # takes the cache's TMA descriptors after its parameters (zeros over FP8 rows)
    threads: int = THREADS  # per CTA
    per_sm: int = 1  # CTAs an SM runs at once (default plans give each one a part)
    # Takes FP8 codes into its MMAs exactly and applies the scales in float32,
    # rather than dequantising them to the input dtype first.
    fp8_exact: bool = False
    # Writes split requests' partials in the output's 16-bit type, not float32.
    narrow_partials: bool = False

    def grid(self, parts: int, rows: int) -> tuple[int, int]:
        """Launch grid for ``parts`` schedule parts and ``rows`` query rows: the
        wgmma kernel takes (row groups, parts), so a part's row groups, which
        read the same tiles, are adjacent CTAs (near SMs, one L2 side); the
        others (parts, row groups)."""
        groups = -(-rows // self.rows)
        return (groups, parts) if self.file == "latent_attention_sm90.cu" else (parts, groups)


def _tc_smem(dim: int, rows: int, tile: int, raw_bytes: int = 0, limit: int = SMEM_LIMIT) -> tuple[int, int] | None:
    """Mirror of LatentTile::kSmemBytes and kStages (cuda/latent_attention.cu) for
    ``limit`` bytes of shared memory per block: (bytes, stages), None where not
    one stage fits; ``raw_bytes``: the FP8 row size of a kernel that dequantises
    (0 for 16-bit rows)."""
    q_in_regs = rows == 16 and dim <= 576
    tile_bytes = tile * (-(-dim // 64) * 64) * 2
    q_bytes = 0 if q_in_regs else rows * (-(-dim // 64) * 64) * 2
    p_bytes = rows * (-(-tile // 64) * 64) * 2  # rows padded to 8 chunks
    # + row reductions + the two tile addresses published a tile ahead
    rest = q_bytes + p_bytes + (8 // (rows // 16)) * rows * 4 + 16 + (tile_bytes if raw_bytes else 0)
    stage = tile * raw_bytes if raw_bytes else tile_bytes  # raw FP8 rows beside the dequantised tile, or 16-bit
    wanted = 3 if q_in_regs else 2 if not raw_bytes or rows == 32 else 1
    stages = min(wanted, (limit - rest) // stage)
    return (rest + stages * stage, stages) if stages >= 1 else None


def fp8_in_kernel(fmt: Any, v_dim: int) -> bool:
    """Whether the tensor-core kernel reads this FP8 row layout itself: values are
    L = v_dim, 8-value chunks stay in one scale group, RoPE and rows are 16-byte
    aligned. Other layouts are dequantised into 16-bit rows first."""
    return (fmt.latent_dim == v_dim and fmt.group % 8 == 0 and fmt.rope_dim % 8 == 0
            and (fmt.latent_dim + 4 * fmt.groups) % 16 == 0)  # fp8.cuh's static_assert


#: FP8 rows read straight into tensor-core fragments (cuda/fp8_fragments.cu)
#: run where a CTA's one row group (FP8_FRAGMENT_ROWS) holds every query row.
#: Tests switch this off to run the kernel that dequantises tiles on the same GPU.
USE_FP8_FRAGMENTS = True
FP8_FRAGMENT_ROWS = 16
FP8_FRAGMENT_STAGES = 2  # raw 64-token stages per CTA (two CTAs of 2 x 41 KB at FlashMLA's rows share an SM)


def _arch_number(arch: str) -> int:
    """Compute capability of an NVRTC arch as a number: "sm_90a" -> 90."""
    return int(re.sub(r"\D", "", arch))


#: What a thread of the fragment kernel holds beside its addresses and
#: softmax state within its 128 registers: L/16 query words and L/16
#: accumulators, and five values per scale group (the tile's largest scale,
#: two tokens' scales, two P factors). L = 512 with four groups (FlashMLA's
#: rows) takes all 84; more may spill (L = 512 with eight groups and no
#: RoPE did, by 4-8 bytes under NVRTC 13.0; with RoPE they fit, narrowly).
#: Mirrored by a static_assert in cuda/fp8_fragments.cu.
FP8_FRAGMENT_VALUES = 84


def fp8_fragment_kernel(dtype: np.dtype, fmt: Any, rows: int, arch: str,
                        smem_limit: int = SMEM_LIMIT) -> LatentKernel | None:
    """The kernel that reads FP8 rows of layout ``fmt`` straight into its MMA
    fragments, or None where it does not apply: more than 16 query rows,
    float32, GPUs before sm_89 (no e4m3 conversion instruction), layouts
    ``fp8_in_kernel`` refuses, L not a multiple of 256, scale groups not
    multiples of 32 or of L / 8 (a warp's output columns), R not a multiple
    of 16, more values a thread than ``FP8_FRAGMENT_VALUES`` (L = 512 with
    more than four groups, or wider rows), or two 64-token raw stages more
    than ``smem_limit``. Two CTAs
    share an SM where twice its shared memory fits."""
    if not USE_FP8_FRAGMENTS or rows > FP8_FRAGMENT_ROWS:
        return None
    return _fp8_fragment_kernel(np.dtype(dtype), fmt, arch, smem_limit)


@lru_cache(maxsize=None)
def _fp8_fragment_kernel(dtype: np.dtype, fmt: Any, arch: str, smem_limit: int) -> LatentKernel | None:
    """fp8_fragment_kernel's choice for M <= 16; cached: decode asks every call."""
    latent, rope, group = fmt.latent_dim, fmt.rope_dim, fmt.group
    element = element_of(dtype)
    if (element == "f32_t" or _arch_number(arch) < 89 or not fp8_in_kernel(fmt, latent) or latent % 256
            or group % 32 or group % (latent // 8) or rope % 16
            or latent // 8 + 5 * fmt.groups > FP8_FRAGMENT_VALUES):
        return None
    # P per scale group, the score swap (8 warps x 4 tiles x 512 bytes), the
    # queries' RoPE columns, row reductions, two tile addresses, the stages'
    # mbarriers
    fixed = (fmt.groups * 16 * 64 * 2 + 8 * 4 * 512 + 16 * -(-rope // 64) * 128 + 8 * 16 * 4 + 16
             + 8 * FP8_FRAGMENT_STAGES)
    smem = fixed + FP8_FRAGMENT_STAGES * 64 * fmt.row_bytes
    limit = min(smem_limit, SMEM_LIMIT)
    if smem > limit:
        return None
    name = f"latent_attention_fp8_fragments<{element}, {latent}, {rope}, {group}, {FP8_FRAGMENT_STAGES}>"
    # An SM holds the per-block limit plus the 1 KB every CTA reserves.
    return LatentKernel("fp8_fragments.cu", (name,), name, FP8_FRAGMENT_ROWS, smem, element,
                        per_sm=2 if 2 * smem + 1024 <= limit else 1, fp8_exact=True)


def _hopper_smem(dim: int, v_dim: int) -> int:
    """Mirror of HopperTile::kSmemBytes (cuda/latent_attention_sm90.cu): Q and two
    stages, two P tiles (one where a block past v_dim holds P1), row maxima,
    row sums (two buffers), sixteen mbarriers."""
    own_p = 64 * 64 * 2 if dim - v_dim >= 64 else 2 * 64 * 64 * 2
    return 1024 + 3 * 64 * dim * 2 + own_p + 6 * 64 * 4 + 16 * 8


#: Threads of a Hopper kernel CTA with a producer warpgroup beside the two
#: consumer warpgroups (all but one row group reading pages of under 64 tokens).
HOPPER_PRODUCER_THREADS = 384

#: Smallest page the Hopper kernel's TMA copies take (a page is one box of
#: 64 columns by block_size rows; smaller pages would break the swizzle atom).
HOPPER_MIN_BLOCK = 8


def _tiles_into_pages(block_size: int) -> bool:
    """Whether 64-token tiles are whole pages or whole numbers of pages of at
    least 8 tokens (each page one TMA box; the tile's bytes must all arrive)."""
    if block_size >= 64:
        return block_size % 64 == 0
    return block_size >= HOPPER_MIN_BLOCK and 64 % block_size == 0


#: Output columns per warpgroup (L / 2) the Hopper kernel's P V MMAs come in
#: (the Wgmma widths cuda/hopper.cuh specialises).
HOPPER_HALVES = (64, 128, 256)


#: (rows, block_size) that pick the Hopper kernel without and with its
#: producer warpgroup: what the compile checks build.
HOPPER_PRODUCER_CHOICES = ((64, 16), (128, None))


def hopper_kernel(dtype: np.dtype, dim: int, v_dim: int, block_size: int | None = None,
                  smem_limit: int = SMEM_LIMIT, rows: int = 64, group: int = 0) -> LatentKernel | None:
    """The sm_90a wgmma kernel for these dims and cache layout, or None where it
    does not apply: float32; L+R not a multiple of 64; L not 128, 256 or 512
    (or above L+R); pages of fewer than 8 tokens or that do not tile 64 tokens;
    more shared memory than ``smem_limit``. Its copies come from a producer
    warpgroup, except where one row group (``rows`` <= 64) reads pages of
    under 64 tokens: a tile is then several pages' boxes, which the consumer
    warps issue faster than the producer's one warp. ``group`` > 0: the
    specialisation over FP8 rows with that scale group, its producer
    converting them (see :func:`hopper_fp8_kernel`)."""
    element = element_of(dtype)
    if (element == "f32_t" or dim % 64 or v_dim % 2 or v_dim // 2 not in HOPPER_HALVES or v_dim > dim
            or _hopper_smem(dim, v_dim) > min(smem_limit, SMEM_LIMIT)):
        return None
    if block_size is not None and not _tiles_into_pages(block_size):
        return None
    producer = rows > 64 or block_size is None or block_size >= 64
    fp8 = f", {group}" if group else ""
    name = f"latent_attention_sm90<{element}, {dim}, {v_dim}, {'true' if producer else 'false'}{fp8}>"
    return LatentKernel("latent_attention_sm90.cu", (name,), name, 64, _hopper_smem(dim, v_dim), element, tma=True,
                        threads=HOPPER_PRODUCER_THREADS if producer else THREADS,
                        narrow_partials=not group)  # the FP8 build keeps float32 partials


def hopper_fp8_kernel(dtype: np.dtype, fmt: Any, arch: str, block_size: int | None = None,
                      smem_limit: int = SMEM_LIMIT) -> LatentKernel | None:
    """The sm_90a wgmma kernel over FP8 rows of layout ``fmt``, its producer
    warpgroup converting them into the 16-bit stages (values rounded to the
    query dtype), or None where it does not apply: other archs or the Hopper
    kernel switched off, pages that are not whole 64-token tiles (the
    producer reads a tile's rows as one run), layouts ``fp8_in_kernel``
    refuses, scale groups not a multiple of 16 values (a thread's 16-code
    load) or, at L = 512, under 128 (one scale per row and part), R not a
    multiple of 64 (whole RoPE blocks), or dims the 16-bit Hopper kernel does
    not take. Any M = Sq*H: 64 query rows per CTA."""
    if arch != "sm_90a" or not USE_HOPPER_KERNEL or (block_size is not None and block_size % 64):
        return None
    return _hopper_fp8_kernel(np.dtype(dtype), fmt, smem_limit)


@lru_cache(maxsize=None)
def _hopper_fp8_kernel(dtype: np.dtype, fmt: Any, smem_limit: int) -> LatentKernel | None:
    """hopper_fp8_kernel's choice for the layout; cached: decode asks every call."""
    # A producer thread holds one scale per row and part of a group: at L =
    # 512 (parts of two 64-column blocks) groups under 128 values would need
    # two, and the kernel spills (8-12 bytes under NVRTC 13.0).
    part_blocks = max(1, fmt.latent_dim // 256)  # Fp8Parts::kPartBlocks
    if (not fp8_in_kernel(fmt, fmt.latent_dim) or fmt.group % 16 or fmt.rope_dim % 64
            or (part_blocks > 1 and fmt.group < 64 * part_blocks)):
        return None
    # Whole tiles only, so its producer warpgroup (block_size None) converts them.
    return hopper_kernel(dtype, fmt.width, fmt.latent_dim, None, smem_limit, group=fmt.group)


def _portable(element: str, dim: int, v_dim: int, rows: int, fmt: Any = None,
              limit: int = SMEM_LIMIT) -> tuple[str, int, int]:
    """(name, rows per CTA, shared memory) of the portable tensor-core kernel
    (reading FP8 rows of layout ``fmt`` itself when given) for ``limit`` bytes
    of shared memory per block. The fewest rows per CTA that hold M, in
    64-token tiles, else 32 (each warp's score columns a multiple of 8);
    where those do not fit, other row counts; double-buffered 16-bit tiles
    before single ones (each tile's copy then waits for the previous tile's
    readers)."""
    by_rows = 1 if rows <= 16 else 2 if rows <= 32 else 4
    order = {1: (1, 2, 4), 2: (2, 1, 4), 4: (4, 2, 1)}[by_rows]
    limit = min(limit, SMEM_LIMIT) // 1024 * 1024  # the kernel's budget is in KB
    raw_bytes = 0 if fmt is None else fmt.row_bytes
    shapes = [(wm, tile) for wm in order for tile in (SCHEDULE_TILE, SCHEDULE_TILE // 2) if tile * wm % 64 == 0]
    for least in (1,) if fmt is not None else (2, 1):
        fits = [(wm, tile, fit[0]) for wm, tile in shapes
                if (fit := _tc_smem(dim, 16 * wm, tile, raw_bytes, limit)) is not None and fit[1] >= least]
        if fits:
            warps_m, tile, smem = fits[0]
            break
    else:
        raise ValueError(f"L+R = {dim} needs more shared memory per block than {limit} bytes at any tile shape")
    extra = "" if fmt is None else f", {fmt.group}"
    if limit < SMEM_LIMIT:  # tiles sized for a smaller budget (KB) than the default 227
        extra = f", {0 if fmt is None else fmt.group}, {limit // 1024}"
    return f"latent_attention<{element}, {dim}, {v_dim}, {warps_m}, {tile}{extra}>", 16 * warps_m, smem


def latent_kernel(dtype: np.dtype, dim: int, v_dim: int, rows: int, arch: str, block_size: int | None = None,
                  tma_ready: bool = True, fp8: Any = None, smem_limit: int = SMEM_LIMIT) -> LatentKernel | None:
    """The kernel for a dtype, query/cache width ``dim``, ``v_dim``, M = Sq*H rows, an
    arch and the cache's page size (None: contiguous).

    On sm_90a the wgmma kernel (64 rows per CTA) where its dims and the cache
    allow (``tma_ready``: TMA can address the cache); otherwise 16-bit types
    run on mma.sync tensor cores with 16, 32 or 64 rows per CTA (the fewest
    that hold M), and float32 on CUDA cores. With ``fp8`` (an FP8 row layout)
    the tensor-core kernel that reads those rows itself (into its MMA
    fragments for M <= 16 from sm_89 on, :func:`fp8_fragment_kernel`; on
    sm_90a over whole 64-token tiles the wgmma kernel, its producer
    converting them, :func:`hopper_fp8_kernel`; else dequantising each
    tile), or None where no kernel reads them (float32, or a layout
    ``fp8_in_kernel`` refuses).
    ``smem_limit``: the device's shared memory per block (tiles shrink to fit).
    """
    if fp8 is not None:
        if element_of(np.dtype(dtype)) == "f32_t" or not fp8_in_kernel(fp8, v_dim):
            return None
        fragments = fp8_fragment_kernel(dtype, fp8, rows, arch, smem_limit)
        if fragments is not None:
            return fragments
        hopper = hopper_fp8_kernel(dtype, fp8, arch, block_size, smem_limit)
        if hopper is not None:
            return hopper
        return _choose(np.dtype(dtype), dim, v_dim, rows, False, None, fp8, smem_limit)  # any page size
    return _choose(np.dtype(dtype), dim, v_dim, rows, arch == "sm_90a" and USE_HOPPER_KERNEL and tma_ready,
                   block_size, None, smem_limit)


@lru_cache(maxsize=None)
def _choose(dtype: np.dtype, dim: int, v_dim: int, rows: int, hopper: bool, block_size: int | None,
            fp8: Any = None, smem_limit: int = SMEM_LIMIT) -> LatentKernel:
    """latent_kernel's choice, once per distinct call shape (decode asks every call)."""
    if hopper:
        spec = hopper_kernel(dtype, dim, v_dim, block_size, smem_limit, rows)
        if spec is not None:
            return spec
    element = element_of(dtype)
    if element == "f32_t":
        smem = (16 * (dim + 1) + 32 * (dim + 1) + 16 * 32 + 3 * 16) * 4
        name = f"latent_attention_simt<f32_t, {dim}, {v_dim}>"
        return LatentKernel("latent_attention.cu", (name,), name, 16, smem, element)
    if dim % 16 or v_dim % 16:
        raise ValueError(f"16-bit kernels need L+R and L multiples of 16, got {dim} and {v_dim}")
    name, block_rows, smem = _portable(element, dim, v_dim, rows, fp8, smem_limit)
    module = {name}  # with the row counts' other kernels that fit: one module for every M
    for other in (16, 32, 64):
        try:
            module.add(_portable(element, dim, v_dim, other, fp8, smem_limit)[0])
        except ValueError:
            pass
    module = tuple(sorted(module))
    return LatentKernel("latent_attention.cu", module, name, block_rows, smem, element)


@dataclass(frozen=True)
class DecompressedKernel(_SplitPartials):
    """One specialisation of the tiled-decompression kernel (``queries`` query tokens per CTA)."""

    name: str
    queries: int
    smem: int
    element: str
    narrow_partials = False  # float32 partials (not a field)


def _rows_bytes(rows: int, width: int) -> int:
    """Bytes of a SwizzledRows tile of ``rows`` rows of ``width`` 16-bit elements."""
    return rows * (-(-width // 64) * 64) * 2


def decompresses_on_wgmma(dtype: np.dtype, latent: int, rope: int, nope: int, v_dim: int, arch: str) -> bool:
    """Whether the decompressed kernel runs on warpgroup MMAs (its decompression
    and its attention): Hopper, 16-bit inputs, at least two 64-wide latent
    slices (the ring's two stages), an even number of 64-column passes and
    Dv of 64 or 128 (the output's registers), at Dv = 128 with Dn + R of 192
    or more (narrower keys spilled 16-24 bytes under NVRTC 13.0); DeepSeek's
    dims among them."""
    return (arch == "sm_90a" and USE_HOPPER_KERNEL and element_of(dtype) != "f32_t" and latent % 64 == 0
            and latent >= 128 and nope % 64 == 0 and v_dim in (64, 128) and (nope // 64 + v_dim // 64) % 2 == 0
            and (v_dim == 64 or nope + rope >= 192))


def decompressed_kernel(dtype: np.dtype, latent: int, rope: int, nope: int, v_dim: int,
                        arch: str = "sm_80") -> DecompressedKernel:
    """The decompressed kernel for a dtype, dims and arch: tensor cores for 16-bit
    inputs (L, R, Dn, Dv multiples of 16; warpgroup MMAs for the decompression
    on Hopper where :func:`decompresses_on_wgmma`), CUDA cores in float32 for
    float32 inputs (any dims)."""
    return _decompressed_kernel(np.dtype(dtype), latent, rope, nope, v_dim,
                                decompresses_on_wgmma(dtype, latent, rope, nope, v_dim, arch))


@lru_cache(maxsize=None)
def _decompressed_kernel(dtype: np.dtype, latent: int, rope: int, nope: int, v_dim: int,
                         wgmma: bool) -> DecompressedKernel:
    """decompressed_kernel's choice; cached: decode asks every call."""
    element = element_of(dtype)
    if element != "f32_t" and any(d % 16 for d in (latent, rope, nope, v_dim)):
        raise ValueError(f"16-bit decompressed kernels need L, R, Dn, Dv multiples of 16, "
                         f"got {latent, rope, nope, v_dim}")
    qk = nope + rope
    if element == "f32_t":
        # decompressed.cu's float32 kernel: 16 query tokens x 16 cache tokens per step, float32 tiles.
        smem = 4 * (16 * latent + 16 * qk + 16 * (qk + 1) + 16 * v_dim + 16 * 16)
        name = f"decompressed_attention_f32<{latent}, {rope}, {nope}, {v_dim}>"
        queries = 16
    else:
        slice_ = 64 if latent % 64 == 0 else 32 if latent % 32 == 0 else 16
        w_slices = 2 if wgmma else 1  # W slices per stage: one per warpgroup's pass with warpgroup MMAs
        fixed = (1024 if wgmma else 0) + _rows_bytes(256, qk) + _rows_bytes(64, qk) + _rows_bytes(64, v_dim)
        stage = _rows_bytes(64, slice_) + w_slices * _rows_bytes(slice_, 64)  # a latent slice and W slice(s)
        passes = -(-nope // 64) + -(-v_dim // 64)  # 64-column blocks of K_nope, then of V
        steps = (latent // slice_) * passes // w_slices
        # A ring of up to DECOMPRESSED_STAGES slice stages (at least 2), as many as fit.
        stages = max(2, min(DECOMPRESSED_STAGES, steps, (SMEM_LIMIT - fixed) // stage))
        smem = fixed + stages * stage
        name = (f"decompressed_attention<{element}, {latent}, {rope}, {nope}, {v_dim}, {slice_}, {stages}"
                f"{', true' if wgmma else ''}>")
        queries = 256
    if smem > SMEM_LIMIT:
        raise ValueError(f"L = {latent}, Dn+R = {qk}, Dv = {v_dim} need {smem} bytes of shared memory, "
                         f"over {SMEM_LIMIT}")
    return DecompressedKernel(name, queries, smem, element)


def combine_name(element: str, narrow: bool) -> str:
    """The combine step for outputs of ``element`` over float32 partials, or
    over partials in the output's 16-bit type where ``narrow``."""
    return f"combine_partials<{element}, {'true' if narrow else 'false'}>"


#: The split-KV module: the scheduler and the combine step for every element type.
SPLIT_KV_NAMES = (("make_schedule",) + tuple(combine_name(e, False) for e in ("bf16_t", "f16_t", "f32_t"))
                  + tuple(combine_name(e, True) for e in ("bf16_t", "f16_t"))
                  + tuple(f"merge_ranks<{e}>" for e in ("bf16_t", "f16_t", "f32_t")))


#: FP8 rows dequantised into a pool of 16-bit or float32 rows, for the kernels
#: that do not read FP8: one specialisation per element type, and the kernel
#: that lists the blocks to dequantise.
FP8_ROWS_NAMES = tuple(f"dequantize_fp8_rows<{e}>" for e in ("bf16_t", "f16_t", "f32_t")) + ("fp8_block_lists",)


def check_matrix() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """What the compile check builds: (file, name expressions, archs), DeepSeek dims and a generic one."""
    out = [("split_kv.cu", SPLIT_KV_NAMES, CHECK_ARCHS), ("fp8_rows.cu", FP8_ROWS_NAMES, CHECK_ARCHS)]
    for dtype in (BFLOAT16, np.dtype(np.float16), np.dtype(np.float32)):
        for dim, v_dim in ((576, 512), (48, 32)):
            out.append(("latent_attention.cu", latent_kernel(dtype, dim, v_dim, 16, "sm_80").module, CHECK_ARCHS))
    for dtype in (BFLOAT16, np.dtype(np.float16)):  # FP8 rows: FlashMLA's layout and a small one
        for fmt in (fp8_format(512, 64, 128), fp8_format(32, 16, 8)):
            dim, v_dim = fmt.width, fmt.latent_dim
            out.append(("latent_attention.cu", latent_kernel(dtype, dim, v_dim, 16, "sm_80", fp8=fmt).module,
                        CHECK_ARCHS))
    for dtype in (BFLOAT16, np.dtype(np.float16)):  # FP8 rows into fragments: FlashMLA's layout and a small one
        for fmt in (fp8_format(512, 64, 128), fp8_format(256, 32, 64)):
            out.append(("fp8_fragments.cu", (fp8_fragment_kernel(dtype, fmt, 16, "sm_90a").name,),
                        ("sm_89", "sm_90a")))
    # Tiles for an A100's 163 KB and an sm_89 GPU's 99 KB per block, 16-bit and FP8 rows.
    for limit in (A100_SMEM, 99 * 1024):
        for fmt in (None, fp8_format(512, 64, 128)):
            out.append(("latent_attention.cu", latent_kernel(BFLOAT16, 576, 512, 16, "sm_80", fp8=fmt,
                                                             smem_limit=limit).module, CHECK_ARCHS))
    for dtype in (BFLOAT16, np.dtype(np.float16)):
        for dim, v_dim in ((576, 512), (256, 128)):
            for rows, block in HOPPER_PRODUCER_CHOICES:
                out.append(("latent_attention_sm90.cu",
                            hopper_kernel(dtype, dim, v_dim, block, rows=rows).module, ("sm_90a",)))
        for fmt in (fp8_format(512, 64, 128), fp8_format(128, 0, 32)):  # FP8 rows converted by the producer
            out.append(("latent_attention_sm90.cu", hopper_fp8_kernel(dtype, fmt, "sm_90a").module, ("sm_90a",)))
    for dtype in (BFLOAT16, np.dtype(np.float16), np.dtype(np.float32)):
        for dims in ((512, 64, 128, 128), (48, 0, 32, 16)):
            out.append(("decompressed.cu", (decompressed_kernel(dtype, *dims).name,), CHECK_ARCHS))
    for dtype in (BFLOAT16, np.dtype(np.float16)):  # the decompression on warpgroup MMAs
        for dims in ((512, 64, 128, 128), (128, 0, 64, 64)):
            out.append(("decompressed.cu", (decompressed_kernel(dtype, *dims, "sm_90a").name,), ("sm_90a",)))
    out.append(("decompressed.cu", (decompressed_kernel(np.float32, 20, 6, 10, 7).name,), CHECK_ARCHS))
    return out
