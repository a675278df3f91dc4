"""The device split-KV schedule (cumla.plan on CuPy) against its contract in
cuda/params.cuh: every cache tile of every request is in exactly one part,
every piece holds tiles from an even one on, and every piece slot is written
by exactly one segment (run on a GPU)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cumla
from cumla._kernels import SCHEDULE_TILE
from cumla.testing import examples

pytestmark = pytest.mark.gpu


def segments(work, first_part, piece_base, tiles):
    """(part, request, t0, t1, slot) of every segment, read as PartWork::segment reads the schedule."""
    batch = len(tiles)
    out = []
    for part, (req_begin, tile_begin, req_end, tile_end) in enumerate(work):
        for b in range(max(req_begin, 0), min(req_end, batch - 1) + 1):
            pieces = piece_base[b + 1] - piece_base[b]
            piece = part - first_part[b]
            if not 0 <= piece < pieces:
                continue
            t0 = tile_begin if b == req_begin else 0
            t1 = min(tile_end, tiles[b]) if b == req_end else tiles[b]
            out.append((part, b, t0, t1, piece_base[b] + piece))
    return out


@settings(max_examples=examples(40), deadline=None)
@given(lengths=st.lists(st.one_of(st.just(0), st.integers(1, 40 * SCHEDULE_TILE)), min_size=1, max_size=40),
       num_parts=st.integers(1, 70))
def test_schedule_covers_every_tile_once(lengths, num_parts):
    import cupy as cp

    seqlens = np.array(lengths, np.int32)
    plan = cumla.plan(cp.asarray(seqlens), heads=16, num_parts=num_parts)
    work, first_part, piece_base = (cp.asnumpy(a) for a in (plan.work, plan.first_part, plan.piece_base))
    tiles = -(-seqlens // SCHEDULE_TILE)
    segs = segments(work, first_part, piece_base, tiles)
    covered = {}
    for part, b, t0, t1, _ in segs:
        assert t1 > t0, f"part {part} holds an empty piece [{t0}, {t1}) of request {b} ({tiles[b]} tiles)"
        assert t0 % 2 == 0, f"part {part} starts request {b} at odd tile {t0}: the Hopper kernel walks pairs"
        for t in range(t0, t1):
            assert (b, t) not in covered, f"tile {t} of request {b} in parts {covered[b, t]} and {part}"
            covered[b, t] = part
    assert set(covered) == {(b, t) for b in range(len(tiles)) for t in range(tiles[b])}
    slots = [slot for *_, slot in segs]
    assert sorted(slots) == list(range(piece_base[-1])), "each piece slot written exactly once"
    assert piece_base[-1] <= plan.slots
    assert all((piece_base[b + 1] > piece_base[b]) == (tiles[b] > 0) for b in range(len(tiles)))
    # The combine's order: requests of more than one merge stage (8 pieces)
    # first, then the others, each group in index order.
    pieces = np.diff(piece_base)
    order = cp.asnumpy(plan.combine_order)
    assert order.tolist() == np.flatnonzero(pieces > 8).tolist() + np.flatnonzero(pieces <= 8).tolist()
