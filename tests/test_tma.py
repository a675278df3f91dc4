"""The Hopper kernel's TMA descriptor: what is asked of the driver (no GPU needed)."""
import ctypes

import numpy as np
import pytest

from cumla import _tma


def test_descriptor_describes_rows_of_the_cache(monkeypatch):
    seen = {}

    def encode(tmap, dtype, rank, address, dims, strides, box, steps, interleave, swizzle, l2, oob):
        seen.update(aligned=tmap % 64 == 0, dtype=dtype, rank=rank, address=address, dims=list(dims[:2]),
                    strides=[strides[0]], box=list(box[:2]), steps=list(steps[:2]), swizzle=swizzle, oob=oob)
        ctypes.memmove(tmap, bytes(range(128)), 128)  # the driver writes the 128-byte descriptor
        return 0

    monkeypatch.setattr(_tma, "_encode_fn", lambda: encode)
    tmap = _tma.rows_map(0x7F0000001000, rows=15 * 64, width=576, box_rows=16)
    assert seen == dict(aligned=True, dtype=1, rank=2, address=0x7F0000001000, dims=[576, 960], strides=[1152],
                        box=[64, 16], steps=[1, 1], swizzle=3, oob=0)
    assert tmap.dtype == _tma.TMA_MAP and bytes(np.asarray(tmap["words"]).tobytes()) == bytes(range(128))


@pytest.mark.parametrize("address,rows,width,box", [(0x1008, 64, 576, 64), (0x1000, 64, 36, 64),
                                                    (0x1000, 64, 576, 0), (0x1000, 2**31, 576, 64)])
def test_descriptor_arguments_are_checked_first(address, rows, width, box):
    with pytest.raises(ValueError, match="no TMA descriptor"):
        _tma.rows_map(address, rows, width, box)


def test_driver_failure_is_reported(monkeypatch):
    monkeypatch.setattr(_tma, "_encode_fn", lambda: lambda *args: 1)
    with pytest.raises(RuntimeError, match="CUresult 1"):
        _tma.rows_map(0x1000, 64, 576, 64)


def test_descriptor_is_encoded_once_per_cache(monkeypatch):
    calls = []

    def encode(tmap, *args):
        calls.append(args[2])
        return 0

    monkeypatch.setattr(_tma, "_encode_fn", lambda: encode)
    first = _tma.rows_map(0x7E0000002000, 640, 576, 64)
    again = _tma.rows_map(0x7E0000002000, 640, 576, 64)  # the next decode step over the same pool
    other = _tma.rows_map(0x7E0000004000, 640, 576, 64)
    assert calls == [0x7E0000002000, 0x7E0000004000]
    assert first.tobytes() == again.tobytes() and first is not again and other.dtype == _tma.TMA_MAP
