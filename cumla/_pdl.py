"""Programmatic dependent launches (compute capability 9.0+) through the CUDA
driver's cuLaunchKernelEx, with ctypes: CuPy launches through cuLaunchKernel,
which has no launch attributes.

A kernel launched this way may be scheduled while the previous kernel of its
stream still runs (once every block of that kernel has executed
``griddepcontrol.launch_dependents`` or exited); it must execute
``griddepcontrol.wait`` before it touches what that kernel writes
(cuda/common.cuh: ``allow_dependent_launch`` / ``wait_for_previous_grid``).
Stream capture records such a launch as a programmatic edge of the graph.
"""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from ._libs import driver_function

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: a 4-byte id, 4 bytes of padding, a 64-byte value union."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("value_rest", ctypes.c_char * 60)]


class LaunchConfig(ctypes.Structure):
    """CUlaunchConfig."""
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttribute)),
                ("num_attrs", ctypes.c_uint)]


def _launch_fn():
    return driver_function(
        "cuLaunchKernelEx",
        (ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p),
        "launch dependent kernels")


def argument_buffers(args: Sequence[Any]) -> list[np.ndarray]:
    """Each by-value kernel argument (a NumPy scalar or structured scalar) as a
    0-d array holding its bytes; cuLaunchKernelEx reads them through pointers."""
    buffers = []
    for arg in args:
        if not isinstance(arg, np.generic):
            raise TypeError(f"a dependent launch takes NumPy scalars and structured scalars, got {type(arg).__name__}")
        buffers.append(np.array(arg))
    return buffers


def config(grid: Sequence[int], block: Sequence[int], shared_mem: int, stream: int) -> LaunchConfig:
    """The launch configuration with one programmatic-serialization attribute
    (the structure keeps the attribute it points to alive)."""
    grid3 = tuple(grid) + (1,) * (3 - len(grid))
    block3 = tuple(block) + (1,) * (3 - len(block))
    attribute = LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
    return LaunchConfig((ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3), shared_mem, stream,
                        ctypes.pointer(attribute), 1)


def launch_dependent(function: int, grid: Sequence[int], block: Sequence[int], args: Sequence[Any],
                     stream: int, shared_mem: int = 0) -> None:
    """Launch CUfunction ``function`` on ``stream`` (a CUstream handle, 0 for the
    default stream) as a programmatic dependent of the stream's previous kernel."""
    buffers = argument_buffers(args)
    pointers = (ctypes.c_void_p * len(buffers))(*(b.ctypes.data for b in buffers))
    launch = config(grid, block, shared_mem, stream)
    rc = _launch_fn()(ctypes.byref(launch), function, pointers, None)
    if rc != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc}")
