"""Host mirrors of the kernels' by-value parameter blocks (cuda/params.cuh)."""
from __future__ import annotations

import numpy as np

_POINTERS = ("q", "cache", "seqlens", "block_table", "out", "lse", "part_out", "part_lse",
             "work", "first_part", "piece_base", "w")
_INTS = ("batch", "rows", "q_len", "heads", "capacity", "block_size", "max_blocks", "num_blocks")

ATTN_PARAMS = np.dtype(
    [(name, "<u8") for name in _POINTERS[:-1]]
    + [(name, "<i4") for name in _INTS]
    + [("scale", "<f4"), ("scale_log2", "<f4"), ("causal", "<i4"), ("pad_", "<i4"), ("w", "<u8")]
)
assert ATTN_PARAMS.itemsize == 144
_FIELDS = frozenset(ATTN_PARAMS.names)
_LAYOUT = tuple((name, name in _POINTERS) for name in ATTN_PARAMS.names)  # (field, holds an address)


def pointer(array) -> int:
    """Device address of a CuPy array, 0 for None."""
    return 0 if array is None else int(array.data.ptr)


def attn_params(**fields) -> np.void:
    """An AttnParams value; arrays become their device addresses, fields not
    given are 0. Built from one tuple: a field-by-field fill costs ~25 µs of
    host time per launch."""
    unknown = fields.keys() - _FIELDS
    if unknown:
        raise ValueError(f"AttnParams has no field(s) {sorted(unknown)}")
    values = tuple(pointer(fields.get(name)) if address else fields.get(name, 0) for name, address in _LAYOUT)
    return np.array(values, dtype=ATTN_PARAMS)[()]
