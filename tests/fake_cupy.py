"""A stand-in for CuPy built on NumPy, to exercise the GPU backend's host code
(validation, planning, parameter blocks, launch shapes) on machines without a
GPU. Kernels are not run: launches are recorded."""
from __future__ import annotations

import types

import numpy as np


class ndarray(np.ndarray):  # noqa: N801 - mirrors cupy.ndarray
    """NumPy memory that looks like a CuPy array to cumla."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self):
        return np.asarray(self).copy()


ndarray.__module__ = "cupy"


def _wrap(value):
    if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
        return value.view(ndarray)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


class Launch(types.SimpleNamespace):
    pass


class Kernel:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log
        self.max_dynamic_shared_size_bytes = 0
        self.kernel = types.SimpleNamespace(ptr=id(self))  # the CUfunction handle cumla._pdl launches

    def __call__(self, grid, block, args, shared_mem=0):
        self.record(grid, block, args, shared_mem, dependent=False)

    def record(self, grid, block, args, shared_mem=0, dependent=False):
        """Log a launch (``dependent``: a programmatic dependent one, cumla._pdl's)."""
        self.log.append(Launch(name=self.name, grid=tuple(grid), block=tuple(block), args=args,
                               shared_mem=shared_mem, limit=self.max_dynamic_shared_size_bytes, dependent=dependent))


#: Opt-in shared memory per block by compute capability (CUDA's tables):
#: 163 KB on sm_80 (A100), 99 KB on sm_86/89, 227 KB on sm_90.
OPT_IN_SHARED_MEMORY = {"80": 166912, "86": 101376, "89": 101376, "90": 232448}
OPT_IN_ATTRIBUTE = 97  # cudaDevAttrMaxSharedMemoryPerBlockOptin


def make(sm_count: int = 132, capability: str = "90") -> types.ModuleType:
    """A fresh fake ``cupy`` module; ``module.launches`` lists the recorded launches."""
    fake = types.ModuleType("cupy")
    fake.ndarray = ndarray
    fake.launches = []
    fake.functions = {}  # CUfunction stand-in -> Kernel
    fake.compiled = []

    class RawModule:
        def __init__(self, code, options, name_expressions):
            fake.compiled.append((options, tuple(name_expressions)))
            self.names = set(name_expressions)

        def get_function(self, name):
            assert name in self.names, f"{name} was not compiled"
            fn = Kernel(name, fake.launches)
            fake.functions[fn.kernel.ptr] = fn
            return fn

    class Device:
        def __init__(self, device_id=0):
            self.id = device_id
            self.compute_capability = capability
            self.attributes = {"MultiProcessorCount": sm_count}

    fake.RawModule = RawModule
    def device_attribute(attribute, device_id):
        assert attribute == OPT_IN_ATTRIBUTE, f"attribute {attribute} is not faked"
        return OPT_IN_SHARED_MEMORY[capability]

    runtime = types.SimpleNamespace(cudaDevAttrMaxSharedMemoryPerBlockOptin=OPT_IN_ATTRIBUTE,
                                    deviceGetAttribute=device_attribute)
    fake.cuda = types.SimpleNamespace(Device=Device, runtime=runtime,
                                      get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    fake.asnumpy = lambda x: np.asarray(x).copy()
    fake.empty = lambda *a, **k: _wrap(np.zeros(*a, **k))  # defined values: nothing runs the kernels

    def numpy_function(name):
        fn = getattr(np, name)
        return lambda *a, **k: _wrap(fn(*a, **k))

    fake.__getattr__ = numpy_function  # everything else: NumPy's, returning fake arrays
    return fake
