"""Every kernel variant compiles through NVRTC for sm_80 and sm_90a with the run-time options.

Needs no GPU: pip's nvidia-cuda-nvrtc (a test dependency) provides NVRTC.
Registers, shared memory and spills are reported (``pytest -s``); a spill,
a local-memory stack frame or a compiler warning in a kernel fails the test.
"""
import itertools
import re

import pytest

import cumla
from bench_modules import bench_module
from cumla import _compile, _kernels

NVRTC = _compile.load_nvrtc()
pytestmark = pytest.mark.skipif(NVRTC is None, reason="NVRTC not installed (pip install nvidia-cuda-nvrtc)")

CASES = [(f, names, arch) for f, names, archs in _kernels.check_matrix() for arch in archs]


def assert_builds_without_spills(file: str, arch: str, names) -> str:
    """Builds ``names`` of cuda/``file`` for ``arch`` as one module and fails on an
    error, a compiler warning, a spill or a stack frame in any of its kernels
    (each reported with ``pytest -s``); returns the build log."""
    names = tuple(sorted(set(names)))
    result = _compile.compile_source(NVRTC, _kernels.source(file), _kernels.options(arch), names)
    assert result.ok, result.log
    assert result.cubin_size > 0
    # A front-end warning (e.g. a variable read before it is set) is a bug until shown otherwise.
    assert not re.search(r"warning #\d+", result.log), result.log
    report = re.findall(r"Compiling entry function '(\S+)'.*?(\d+) bytes stack frame, (\d+) bytes spill stores"
                        r".*?Used (\d+) registers", result.log, re.S)
    assert len(report) >= len(names), result.log
    for function, stack, spills, registers in report:
        print(f"{arch} {function}: {registers} registers, {stack} B stack, {spills} B spilled")
        assert int(spills) == 0, f"{function} spills registers on {arch}:\n{result.log}"
        assert int(stack) == 0, f"{function} keeps a {stack}-byte stack frame (local memory) on {arch}"
    return result.log


@pytest.mark.parametrize("file,names,arch", CASES, ids=[f"{f}:{n[0]}:{a}" for f, n, a in CASES])
def test_kernel_compiles(file, names, arch):
    assert_builds_without_spills(file, arch, names)


def test_every_hopper_specialisation_the_selection_admits_compiles():
    """Each (L+R, L) for which the selection picks the Hopper kernel builds,
    without spills (e.g. L = 384 needs a 192-wide MMA that is not
    specialised: portable)."""
    names = tuple(spec.name for dim in range(64, 577, 64) for v_dim in range(128, dim + 1, 128)
                  for rows, block in _kernels.HOPPER_PRODUCER_CHOICES
                  if (spec := _kernels.hopper_kernel(_kernels.BFLOAT16, dim, v_dim, block, rows=rows)) is not None)
    assert {f"latent_attention_sm90<bf16_t, 576, 512, {flag}>" for flag in ("false", "true")} <= set(names)
    assert len(names) >= 20
    assert _kernels.hopper_kernel(_kernels.BFLOAT16, 448, 384) is None
    assert "C7519" not in assert_builds_without_spills("latent_attention_sm90.cu", "sm_90a", names)


@pytest.mark.parametrize("arch,smem_limit", [("sm_90a", _kernels.SMEM_LIMIT), ("sm_89", 99 * 1024)])
def test_every_fp8_fragment_specialisation_the_selection_admits_compiles_without_spills(arch, smem_limit):
    """Each FP8 row layout (L, R, group) for which the selection picks the
    fragment kernel builds without spills (L = 1024, or L = 512 with eight
    groups, would spill: refused)."""
    specs = {}
    for latent, rope, group in itertools.product((256, 512, 768, 1024), (0, 16, 32, 48, 64, 128),
                                                 (32, 64, 128, 256, 512)):
        if latent % group == 0:
            spec = _kernels.fp8_fragment_kernel(_kernels.BFLOAT16, cumla.fp8_format(latent, rope, group), 16, arch,
                                                smem_limit)
            if spec is not None:
                specs[spec.name] = spec
    assert "latent_attention_fp8_fragments<bf16_t, 256, 32, 32, 2>" in specs
    if arch == "sm_90a":
        assert "latent_attention_fp8_fragments<bf16_t, 512, 64, 128, 2>" in specs
        assert "latent_attention_fp8_fragments<bf16_t, 512, 128, 128, 2>" in specs  # one CTA an SM
    assert not any(", 1024, " in name or (", 512, " in name and name.endswith(", 64, 2>")) for name in specs)
    assert_builds_without_spills("fp8_fragments.cu", arch, specs)


def test_every_hopper_fp8_specialisation_the_selection_admits_compiles_without_spills():
    """Each FP8 row layout for which the selection picks the Hopper kernel
    with its converting producer builds without spills (L = 512 with groups
    under 128 values would spill: refused)."""
    names = set()
    for latent, rope, group in itertools.product((128, 256, 384, 512), (0, 64), (16, 32, 64, 128)):
        if latent % group == 0:
            spec = _kernels.hopper_fp8_kernel(_kernels.BFLOAT16, cumla.fp8_format(latent, rope, group), "sm_90a")
            if spec is not None:
                names.update(spec.module)
    assert "latent_attention_sm90<bf16_t, 576, 512, true, 128>" in names
    assert "latent_attention_sm90<bf16_t, 192, 128, true, 16>" in names
    assert not any(name.startswith(("latent_attention_sm90<bf16_t, 576, 512", "latent_attention_sm90<bf16_t, 512, 512"))
                   and not name.endswith(", 128>") for name in names)
    assert_builds_without_spills("latent_attention_sm90.cu", "sm_90a", names)


def test_every_warpgroup_decompressed_specialisation_the_selection_admits_compiles_without_spills():
    """Each (L, R, Dn, Dv) for which the decompressed kernel runs on warpgroup
    MMAs builds without spills (at Dv = 128, Dn + R under 192 would spill:
    those run the mma.sync form)."""
    names = set()
    for latent, rope, (nope, v_dim) in itertools.product((128, 256, 512), (0, 16, 32, 64, 128),
                                                         ((64, 64), (128, 128), (64, 128))):
        spec = _kernels.decompressed_kernel(_kernels.BFLOAT16, latent, rope, nope, v_dim, "sm_90a")
        if spec.name.endswith(", true>") and spec.smem <= _kernels.SMEM_LIMIT:
            names.add(spec.name)
    assert "decompressed_attention<bf16_t, 512, 64, 128, 128, 64, 3, true>" in names
    assert not _kernels.decompressed_kernel(_kernels.BFLOAT16, 512, 16, 128, 128, "sm_90a").name.endswith("true>")
    assert_builds_without_spills("decompressed.cu", "sm_90a", names)


def test_every_cuda_source_is_checked():
    sources = {p.name for p in _kernels.source_dir().glob("*.cu")}
    assert sources == {f for f, _, _ in _kernels.check_matrix()}


def test_arch_selection():
    assert _kernels.arch_for(9, 0) == "sm_90a"
    assert _kernels.arch_for(8, 9) == "sm_89"
    with pytest.raises(RuntimeError, match="8.0 or newer"):
        _kernels.arch_for(7, 5)


CUOBJDUMP = _compile.find_tool("cuobjdump")


def test_hopper_kernel_runs_on_warpgroup_mma():
    """The sm_90a kernel, compiled with the run-time options, really uses wgmma
    (HGMMA in its SASS); the portable kernel uses mma.sync (HMMA) only."""
    assert CUOBJDUMP is not None, "cuobjdump missing: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
    hopper = _kernels.latent_kernel(_kernels.BFLOAT16, 576, 512, 128, "sm_90a")
    built = _compile.compile_source(NVRTC, _kernels.source(hopper.file), _kernels.options("sm_90a"), hopper.module)
    assert built.ok, built.log
    listing = _compile.sass(built.cubin, CUOBJDUMP)
    # Scores 64 x 64 per warpgroup; P V with P from shared memory and from registers.
    assert "HGMMA.64x64x16.F32.BF16" in listing and "HGMMA.64x256x16.F32.BF16 R" in listing
    assert re.search(r"HGMMA\.64x256x16\.F32\.BF16 R\d+, R\d+, gdesc", listing), "no P V with P in registers"
    # ptxas serialises MMAs it cannot prove warpgroup-uniform (warning C7519): a silent slowdown.
    assert "C7519" not in built.log, built.log
    portable = _kernels.latent_kernel(_kernels.BFLOAT16, 576, 512, 128, "sm_80")
    built = _compile.compile_source(NVRTC, _kernels.source(portable.file), _kernels.options("sm_90a"), portable.module)
    assert built.ok, built.log
    listing = _compile.sass(built.cubin, CUOBJDUMP)
    assert "HMMA.16816.F32.BF16" in listing and "HGMMA" not in listing


def test_portable_kernel_loads_and_mmas_are_unconditional():
    """At DeepSeek dims no ldmatrix or MMA of the portable kernel (16, 32 and
    64 rows per CTA; 16-bit and FP8 rows) sits behind a predicate: a bound test the compiler cannot
    prove (e.g. on a warp index) made the P V loop one serial ldmatrix -> MMA
    chain, 10-12% of the time at 64 rows (docs/NOTES.md, portable v7)."""
    assert CUOBJDUMP is not None, "cuobjdump missing: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
    portable = _kernels.latent_kernel(_kernels.BFLOAT16, 576, 512, 128, "sm_80")
    fp8 = _kernels.latent_kernel(_kernels.BFLOAT16, 576, 512, 128, "sm_80", fp8=cumla.fp8_format(512, 64, 128))
    names = tuple(n for spec in (portable, fp8) for n in spec.module if n.startswith("latent_attention<"))
    assert len(set(names)) == 6
    for arch in ("sm_80", "sm_90a"):
        built = _compile.compile_source(NVRTC, _kernels.source(portable.file), _kernels.options(arch), names)
        assert built.ok, built.log
        listing = _compile.sass(built.cubin, CUOBJDUMP)
        assert listing.count("HMMA.16816") >= 6 * 64
        predicated = re.findall(r"@!?U?P\w+\s+(?:LDSM|HMMA)\S*", listing)
        assert not predicated, predicated[:5]


def test_hopper_timeline_build_keeps_the_kernel_as_it_is(monkeypatch):
    """The profiling build (CUMLA_TIMELINE=1, bench/timeline.py) compiles with
    the same MMAs, none serialised, plus its clock reads; the default build
    reads no clock."""
    assert CUOBJDUMP is not None, "cuobjdump missing: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
    for rows, block in _kernels.HOPPER_PRODUCER_CHOICES:  # without and with the producer warpgroup
        hopper = _kernels.hopper_kernel(_kernels.BFLOAT16, 576, 512, block, rows=rows)
        listings = {}
        for timeline in ("1", "0"):
            monkeypatch.setenv("CUMLA_TIMELINE", timeline)
            options = _kernels.options("sm_90a")
            assert ("-DCUMLA_TIMELINE" in options) == (timeline == "1")
            built = _compile.compile_source(NVRTC, _kernels.source(hopper.file), options, hopper.module)
            assert built.ok and "C7519" not in built.log, built.log
            listings[timeline] = _compile.sass(built.cubin, CUOBJDUMP)
        mmas = [re.findall(r"HGMMA\.\w+", listings[t]) for t in ("1", "0")]
        assert mmas[0] == mmas[1] and len(mmas[0]) >= 52
        for clock in ("SR_CLOCKLO", "SR_GLOBALTIMERLO"):  # per-step stamps, per-CTA spans
            assert clock in listings["1"] and clock not in listings["0"]


def test_combine_timeline_build_stamps_its_blocks(monkeypatch):
    """The split-KV module's profiling build (its combine's block spans,
    bench/part_costs.py) compiles and reads the global timer; its default
    build reads no clock (test_kernel_compiles holds that one to no spills)."""
    assert CUOBJDUMP is not None, "cuobjdump missing: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
    for timeline in ("1", "0"):
        monkeypatch.setenv("CUMLA_TIMELINE", timeline)
        built = _compile.compile_source(NVRTC, _kernels.source("split_kv.cu"), _kernels.options("sm_90a"),
                                        _kernels.SPLIT_KV_NAMES)
        assert built.ok, built.log
        listing = _compile.sass(built.cubin, CUOBJDUMP)
        assert ("SR_GLOBALTIMERLO" in listing) == (timeline == "1")


def _args(name: str) -> list[str]:
    """Template arguments of a kernel name, e.g. 'k<bf16_t, 576, 512>' -> ['bf16_t', '576', '512']."""
    return [a.strip() for a in name[name.index("<") + 1:name.rindex(">")].split(",")]


def test_shared_memory_sizes_match_the_kernels():
    """The host's shared-memory sizes (cumla/_kernels.py) equal each tile's
    kSmemBytes, checked by static_assert in the kernel sources themselves
    (a launch with less traps on the device; this finds it without one)."""
    probes: dict[str, list[str]] = {}
    for dtype in (_kernels.BFLOAT16, _kernels.np.dtype("float16")):
        for dim, v_dim in ((576, 512), (192, 128), (320, 256), (48, 32)):
            for rows in (16, 32, 64):
                spec = _kernels.latent_kernel(dtype, dim, v_dim, rows, "sm_80")
                element, d, dv, wm, bn = _args(spec.name)
                probes.setdefault(spec.file, []).append(
                    f"LatentTile<{element}, {d}, {dv}, {wm}, {bn}>::kSmemBytes == {spec.smem}")
            for group in (8, 16, 32):  # FP8 rows dequantised in the kernel: raw stages + one tile
                fmt = cumla.fp8_format(v_dim, dim - v_dim, group)
                for rows in (16, 32, 64) if _kernels.fp8_in_kernel(fmt, v_dim) else ():
                    spec = _kernels.latent_kernel(dtype, dim, v_dim, rows, "sm_80", fp8=fmt)
                    element, d, dv, wm, bn, g = _args(spec.name)
                    probes[spec.file].append(f"LatentTile<{element}, {d}, {dv}, {wm}, {bn}, {g}>::kSmemBytes == {spec.smem}")
            hopper = _kernels.hopper_kernel(dtype, dim, v_dim)
            if hopper is not None:
                probes.setdefault(hopper.file, []).append(f"HopperTile<{dim}, {v_dim}>::kSmemBytes == {hopper.smem}")
        for fmt in (cumla.fp8_format(512, 64, 128), cumla.fp8_format(256, 0, 32)):  # FP8 rows into fragments
            spec = _kernels.fp8_fragment_kernel(dtype, fmt, 16, "sm_90a")
            probes.setdefault(spec.file, []).append(
                f"Fp8FragmentTile<{', '.join(_args(spec.name)[1:])}>::kSmemBytes == {spec.smem}")
        for dims, arch in (((512, 64, 128, 128), "sm_80"), ((48, 0, 32, 16), "sm_80"), ((96, 32, 64, 32), "sm_80"),
                           ((512, 64, 128, 128), "sm_90a"), ((128, 64, 64, 64), "sm_90a")):
            spec = _kernels.decompressed_kernel(dtype, *dims, arch)
            tile = ", ".join(_args(spec.name)[1:])  # L, R, Dn, Dv, slice, stages[, warpgroup MMAs]
            assert (arch == "sm_90a") == tile.endswith("true"), spec.name
            probes.setdefault("decompressed.cu", []).append(f"DecompTile<{tile}>::kSmemBytes == {spec.smem}")
    assert len(probes) == 4 and sum(map(len, probes.values())) >= 60
    for file, checks in probes.items():
        code = _kernels.source(file) + "".join(f'\nstatic_assert({c}, "{c}");' for c in checks)
        result = _compile.compile_source(NVRTC, code, _kernels.options("sm_90a"), (), verbose=False)
        assert result.ok, result.log


def test_parameter_block_matches_the_kernels():
    """Every field of the host's AttnParams block (cumla/_launch.py) sits at
    the offset the kernels' struct gives it (cuda/params.cuh), checked by
    static_assert; the schedule's arrays are the nested Schedule's."""
    from cumla._launch import ATTN_PARAMS

    schedule = ("work", "first_part", "piece_base")
    checks = [f"__builtin_offsetof(AttnParams, sched) + __builtin_offsetof(Schedule, {name}) == {offset}"
              if name in schedule else f"__builtin_offsetof(AttnParams, {name}) == {offset}"
              for name, (_, offset) in ATTN_PARAMS.fields.items()]
    checks.append(f"sizeof(AttnParams) == {ATTN_PARAMS.itemsize}")
    code = _kernels.source("split_kv.cu") + "".join(f'\nstatic_assert({c}, "{c}");' for c in checks)
    result = _compile.compile_source(NVRTC, code, _kernels.options("sm_90a"), (), verbose=False)
    assert result.ok, result.log


def test_mma_rate_benchmark_compiles_without_serialised_mmas():
    """bench/mma_rates.py's kernels build, and ptxas keeps their MMAs
    asynchronous (C7519 reports a wgmma pipeline it serialised)."""
    rates = bench_module("mma_rates")
    result = _compile.compile_source(NVRTC, rates.source(), _kernels.options("sm_90a"), rates.kernel_names())
    assert result.ok, result.log
    assert "C7519" not in result.log, result.log


def test_copy_latency_probe_compiles():
    """bench/copy_latency.py's probes (1, 4 and 9 boxes per copy, alone or
    beside score MMAs) build for sm_90a, the MMAs not serialised."""
    probe = bench_module("copy_latency")
    names = tuple(dict.fromkeys(probe.kernel_name(boxes, mma) for _, boxes, _, _, mma in probe.CASES))
    assert len(names) == 5
    result = _compile.compile_source(NVRTC, probe.source(), _kernels.options("sm_90a"), names)
    assert result.ok, result.log
    assert "C7519" not in result.log, result.log


def test_store_rate_probe_compiles_to_the_stores_it_names():
    """bench/store_rates.py's patterns are the store forms they are named
    for: the kernel's fragments as 64 four-byte stores a round, the row and
    quad-transposed forms as sixteen-byte stores only, the latter after inline shuffles (not the
    collectives NVRTC makes of shuffles it cannot prove convergent), the
    staged form one bulk copy a row."""
    assert CUOBJDUMP is not None, "cuobjdump missing: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
    probe = bench_module("store_rates")
    names = tuple(f"store_rates<{p}>" for p in probe.PATTERNS)
    result = _compile.compile_source(NVRTC, probe.source(), _kernels.options("sm_90a"), names)
    assert result.ok, result.log
    listing = _compile.sass(result.cubin, CUOBJDUMP)
    functions = {int(m.group(1)): body for m, body in zip(
        re.finditer(r"Function : _Z11store_ratesILi(\d)E", listing),
        re.split(r"Function : _Z11store_ratesILi\dE", listing)[1:])}
    assert sorted(functions) == sorted(probe.PATTERNS)
    stores = {p: re.findall(r"\bSTG\.E(?:\.(\d+))?\b", body) for p, body in functions.items()}
    assert stores[0] == [""] * 64
    assert stores[2] == stores[4] == ["128"] * 16 and stores[3] == ["128"] * 32
    assert functions[4].count("SHFL.BFLY") == 64 and "ENDCOLLECTIVE" not in functions[4]
    assert functions[5].count("UBLKCP") == 1


def test_sass_report_splits_the_fragment_kernel_at_its_waits(capsys):
    """bench/sass_report.py on the FP8 fragment kernel: the tile loop opens at
    the stage's mbarrier wait, and the stretch after the wait's barrier holds
    the score MMAs (36 per warp and tile) and their e4m3 conversions."""
    assert CUOBJDUMP is not None, "cuobjdump missing: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
    report = bench_module("sass_report")
    assert report.opcode("@!P0 HMMA.16816.F32 R4, R16, R4, RZ") == "HMMA"
    assert report.stretches(["A", "BAR.SYNC 0x0", "B", "C", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R5]"]) == [
        (0, 1), (1, 4), (4, 5)]
    name = "latent_attention_fp8_fragments<bf16_t, 512, 64, 128, 2>"
    assert report.main(["fp8_fragments.cu", name, "--top", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("0 bytes spill stores" in line for line in lines)
    at = next(i for i, line in enumerate(lines) if "TRYWAIT" in line)
    scores = lines[at + 1]
    assert "BAR.SYNC" in scores and "HMMA 36" in scores and "F2FP 64" in scores, scores


GENERIC_LAMBDA = re.compile(r"\[[^\]]*\]\s*\([^)]*\bauto\b")


def test_cuda_sources_have_no_generic_lambdas():
    """NVRTC 13.0 (what the H200 runs), called directly as the compile
    check and bench/sass_report.py call it, builds a generic lambda inside a
    kernel as host code and refuses it; the NVRTC CI installs accepts it, so
    only this check catches one before a device does."""
    assert GENERIC_LAMBDA.search("auto each = [&](auto&& use) {")
    assert not GENERIC_LAMBDA.search("auto q_word = [&](int kb, int m, int h) { auto x = 1; };")
    for path in sorted(_kernels.source_dir().glob("*.cu*")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not GENERIC_LAMBDA.search(line), f"{path.name}:{number}: a generic lambda: {line.strip()}"
