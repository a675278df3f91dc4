"""NVRTC compilation without a GPU or CuPy, for the compile check and the CLI.

Loads libnvrtc through ctypes (pip's nvidia-cuda-nvrtc or a CUDA toolkit),
compiles a source with the run-time options and returns the log, in which
``-Xptxas -v`` reports registers, shared memory and spills per kernel.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from dataclasses import dataclass

from ._libs import loaded_library


def _candidates() -> list[str]:
    found = []
    for base in sys.path:
        found += sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "lib", "libnvrtc.so*")))
        found += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
    for home in (os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"):
        if home:
            found += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))
    return [f for f in found if "builtins" not in f]


def _cupys_nvrtc() -> str | None:
    """The libnvrtc CuPy compiles with, where CuPy is installed: the compile
    check then builds with exactly the library the kernels run from."""
    try:
        import cupy

        cupy.cuda.nvrtc.getVersion()  # loads it; needs no GPU
    except Exception:  # no CuPy, or a CuPy without its NVRTC: use the candidates
        return None
    return loaded_library("/libnvrtc.so")


def load_nvrtc() -> ctypes.CDLL | None:
    """The NVRTC library, or None when none is installed: CuPy's where CuPy is
    installed, else pip's nvidia-cuda-nvrtc or a CUDA toolkit's."""
    for path in filter(None, [_cupys_nvrtc()] + _candidates()):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    try:
        return ctypes.CDLL("libnvrtc.so")
    except OSError:
        return None


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    log: str
    cubin: bytes  # the compiled code, empty on failure

    @property
    def cubin_size(self) -> int:
        return len(self.cubin)


def compile_source(lib: ctypes.CDLL, code: str, options: tuple[str, ...], names: tuple[str, ...],
                   verbose: bool = True) -> CompileResult:
    """Compile ``code`` with ``options`` (plus ``-Xptxas -v`` when verbose) for ``names``."""
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"cumla.cu", 0, None, None)
    if rc:
        raise RuntimeError(f"nvrtcCreateProgram failed ({rc})")
    try:
        for name in names:
            lib.nvrtcAddNameExpression(prog, name.encode())
        opts = list(options) + (["-Xptxas", "-v"] if verbose else [])
        argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        cubin = b""
        if rc == 0:
            cubin_size = ctypes.c_size_t(0)
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin_size))
            data = ctypes.create_string_buffer(cubin_size.value)
            lib.nvrtcGetCUBIN(prog, data)
            cubin = data.raw
        return CompileResult(rc == 0, buf.value.decode(errors="replace"), cubin)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def find_tool(name: str) -> str | None:
    """A CUDA binary utility (e.g. cuobjdump) from pip's nvidia packages, CUDA_HOME or PATH."""
    import shutil

    for base in sys.path:
        found = sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "bin", name)))
        if found:
            return found[-1]
    for home in (os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", name)):
            return os.path.join(home, "bin", name)
    return shutil.which(name)


def sass(cubin: bytes, cuobjdump: str) -> str:
    """The SASS listing of a cubin (cuobjdump runs nvdisasm, found like cuobjdump)."""
    import subprocess
    import tempfile

    env = dict(os.environ)
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is not None:
        env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        run = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {run.stderr.strip()}")
    return run.stdout
