"""Shared libraries: those already loaded into this process, found by path,
and functions of the CUDA driver called through ctypes."""
from __future__ import annotations

import ctypes
from functools import lru_cache


def loaded_library(fragment: str) -> str | None:
    """Path of the first mapped library whose path contains ``fragment`` (e.g.
    ``"/libcublas.so"``), from /proc/self/maps; None where nothing matches or
    the maps cannot be read (not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if fragment in path:
                    return path
    except OSError:
        pass
    return None


@lru_cache(maxsize=None)
def driver_function(name: str, argtypes: tuple, purpose: str):
    """Function ``name`` of the CUDA driver (libcuda, present wherever CuPy runs
    on a GPU) returning a CUresult; ``purpose`` completes the error raised
    where the driver cannot be loaded ("... is needed to <purpose>")."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise RuntimeError(f"the CUDA driver (libcuda.so.1) is needed to {purpose}") from exc
    fn = getattr(driver, name)
    fn.restype = ctypes.c_int
    fn.argtypes = list(argtypes)
    return fn
