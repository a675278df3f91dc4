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


def test_half_descriptor_views_blocks_as_the_outer_dimension(monkeypatch):
    seen = {}

    def encode(tmap, dtype, rank, address, dims, strides, box, steps, interleave, swizzle, l2, oob):
        seen.update(rank=rank, dims=list(dims[:3]), strides=list(strides[:2]), box=list(box[:3]),
                    steps=list(steps[:3]), swizzle=swizzle)
        return 0

    monkeypatch.setattr(_tma, "_encode_fn", lambda: encode)
    _tma.rows_map(0x7F0000003000, rows=640, width=576, box_rows=64, depth=4)
    # (64 columns of a block, rows, 9 blocks): a box is 4 whole blocks of 64 rows, one after the other.
    assert seen == dict(rank=3, dims=[64, 640, 9], strides=[1152, 128], box=[64, 64, 4], steps=[1, 1, 1], swizzle=3)


@pytest.mark.parametrize("width,depth", [(544, 2), (576, 0), (576, 257)])
def test_half_descriptor_needs_whole_blocks(width, depth):
    with pytest.raises(ValueError, match="no TMA descriptor"):
        _tma.rows_map(0x1000, 64, width, 64, depth=depth)


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
