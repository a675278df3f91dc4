"""Every kernel variant compiles through NVRTC for sm_80 and sm_90a with the run-time options.

Needs no GPU: pip's nvidia-cuda-nvrtc (a test dependency) provides NVRTC.
Registers, shared memory and spills are reported (``pytest -s``); a spill
or a local-memory stack frame in a kernel fails the test.
"""
import re

import pytest

from cumla import _compile, _kernels

NVRTC = _compile.load_nvrtc()
pytestmark = pytest.mark.skipif(NVRTC is None, reason="NVRTC not installed (pip install nvidia-cuda-nvrtc)")

CASES = [(f, names, arch) for f, names, archs in _kernels.check_matrix() for arch in archs]


@pytest.mark.parametrize("file,names,arch", CASES, ids=[f"{f}:{n[0]}:{a}" for f, n, a in CASES])
def test_kernel_compiles(file, names, arch):
    result = _compile.compile_source(NVRTC, _kernels.source(file), _kernels.options(arch), names)
    assert result.ok, result.log
    assert result.cubin_size > 0
    report = re.findall(r"Compiling entry function '(\S+)'.*?(\d+) bytes stack frame, (\d+) bytes spill stores"
                        r".*?Used (\d+) registers", result.log, re.S)
    assert len(report) >= len(names), result.log
    for function, stack, spills, registers in report:
        print(f"{arch} {function}: {registers} registers, {stack} B stack, {spills} B spilled")
        assert int(spills) == 0, f"{function} spills registers on {arch}:\n{result.log}"


def test_every_hopper_specialisation_the_selection_admits_compiles():
    """Each (L+R, L) for which the selection picks the Hopper kernel builds
    (e.g. L = 384 needs a 192-wide MMA that is not specialised: portable)."""
    names = tuple(spec.name for dim in range(64, 577, 64) for v_dim in range(128, dim + 1, 128)
                  if (spec := _kernels.hopper_kernel(_kernels.BFLOAT16, dim, v_dim)) is not None)
    assert "latent_attention_sm90<bf16_t, 576, 512>" in names and len(names) >= 10
    assert _kernels.hopper_kernel(_kernels.BFLOAT16, 448, 384) is None
    result = _compile.compile_source(NVRTC, _kernels.source("latent_attention_sm90.cu"), _kernels.options("sm_90a"),
                                     names)
    assert result.ok, result.log
    assert "C7519" not in result.log, result.log


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
