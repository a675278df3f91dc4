"""Host mirrors of the kernels' by-value parameter blocks (cuda/params.cuh)."""
from __future__ import annotations

import numpy as np

_POINTERS = ("q", "cache", "seqlens", "block_table", "out", "lse", "part_out", "part_lse",
             "work", "first_part", "piece_base")
_INTS = ("batch", "rows", "q_len", "heads", "capacity", "block_size", "max_blocks", "num_blocks")

LATENT_PARAMS = np.dtype(
    [(name, "<u8") for name in _POINTERS]
    + [(name, "<i4") for name in _INTS]
    + [("scale", "<f4"), ("scale_log2", "<f4"), ("causal", "<i4"), ("pad_", "<i4")]
)
assert LATENT_PARAMS.itemsize == 136


def pointer(array) -> int:
    """Device address of a CuPy array, 0 for None."""
    return 0 if array is None else int(array.data.ptr)


def latent_params(**fields) -> np.void:
    """A LatentParams value; arrays become their device addresses."""
    block = np.zeros((), dtype=LATENT_PARAMS)
    for name, value in fields.items():
        block[name] = pointer(value) if name in _POINTERS else value
    return block[()]
