"""cumla: Multi-head Latent Attention decode on CuPy (CUDA kernels) and NumPy.

Entry point: :func:`decode`. NumPy inputs run on the CPU backend, CuPy inputs
on the CUDA kernels; the float64 oracle is :mod:`cumla.reference`.
"""
from ._absorb import absorb
from ._arrays import BFLOAT16 as bfloat16
from ._api import decode, latent_attention
from ._combine import combine
from ._cache import PagedLatentCache
from ._cost import Cost, cost
from ._fp8 import Fp8Format, fp8_format
from ._layer import LatentAttention
from ._memory import MemoryReport, memory_report
from ._plan import Plan, plan
from ._rope import rope

__version__ = "0.1.0"

__all__ = [
    "Cost",
    "Fp8Format",
    "LatentAttention",
    "MemoryReport",
    "PagedLatentCache",
    "Plan",
    "absorb",
    "bfloat16",
    "combine",
    "cost",
    "decode",
    "fp8_format",
    "latent_attention",
    "memory_report",
    "plan",
    "rope",
]
