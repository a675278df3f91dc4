"""TMA descriptors (CUtensorMap) for the Hopper kernel, encoded through the CUDA
driver (libcuda, present wherever CuPy runs) with ctypes: no extra dependency."""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from ._libs import driver_function

#: A CUtensorMap as a by-value kernel argument (the kernel's TmaMap).
TMA_MAP = np.dtype([("words", "<u8", (16,))])

_UINT16 = 1          # CU_TENSOR_MAP_DATA_TYPE_UINT16: 16-bit elements, copied as bits
_INTERLEAVE_NONE = 0
_SWIZZLE_128B = 3
_L2_PROMOTION_256B = 3
_OOB_FILL_ZEROS = 0


def _encode_fn():
    return driver_function(
        "cuTensorMapEncodeTiled",
        (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
         ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
         ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int),
        "encode TMA descriptors")


#: A zero descriptor, for a kernel's descriptor argument that its
#: specialisation never reads (the Hopper kernel over FP8 rows).
UNUSED_MAP = np.zeros((), TMA_MAP)[()]


def rows_map(address: int, rows: int, width: int, box_rows: int, depth: int = 1) -> np.void:
    """Descriptor of a row-major (rows, width) matrix of 16-bit elements at device
    ``address``, copied in boxes of 64 columns x ``box_rows`` rows with the
    128-byte swizzle; out-of-bounds elements read as zeros. With ``depth`` > 1
    a box holds ``depth`` adjacent 64-column blocks of those rows, one after the
    other (a 3-D view: columns within a block, rows, blocks), so that one copy
    fills what ``depth`` copies of single blocks would."""
    if (address % 16 or (width * 2) % 16 or not 1 <= box_rows <= 256 or rows >= 2**31
            or not 1 <= depth <= 256 or (depth > 1 and width % 64)):
        raise ValueError(f"no TMA descriptor for {rows} x {width} at {address:#x} in boxes of {box_rows} rows"
                         f" x {depth} blocks")
    return np.frombuffer(_encoded(address, rows, width, box_rows, depth), TMA_MAP)[0].copy()


@lru_cache(maxsize=256)
def _encoded(address: int, rows: int, width: int, box_rows: int, depth: int) -> bytes:
    """The driver's encoding, once per (address, shape): a serving loop decodes
    over the same cache every step, and the bytes depend on nothing else."""
    storage = (ctypes.c_uint8 * (TMA_MAP.itemsize + 64))()
    aligned = (ctypes.addressof(storage) + 63) // 64 * 64  # the driver wants a 64-byte-aligned CUtensorMap
    if depth == 1:
        rank, dims, strides, box = 2, (width, rows), (width * 2,), (64, box_rows)
    else:  # blocks as the outer dimension, 128 bytes apart inside each row
        rank, dims, strides, box = 3, (64, rows, width // 64), (width * 2, 128), (64, box_rows, depth)
    rc = _encode_fn()(aligned, _UINT16, rank, address, (ctypes.c_uint64 * rank)(*dims),
                      (ctypes.c_uint64 * (rank - 1))(*strides), (ctypes.c_uint32 * rank)(*box),
                      (ctypes.c_uint32 * rank)(*(1,) * rank), _INTERLEAVE_NONE, _SWIZZLE_128B, _L2_PROMOTION_256B,
                      _OOB_FILL_ZEROS)
    if rc != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed with CUresult {rc} for {rows} x {width}, box {box_rows}"
                           f" x {depth}")
    return ctypes.string_at(aligned, TMA_MAP.itemsize)
