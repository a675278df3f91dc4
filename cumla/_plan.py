"""Split-KV plans: a balanced schedule of cache tiles over the GPU's SMs."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import ingest
from ._kernels import MAX_GRID_YZ
from ._validate import check_cache_format, check_index_array

INT_MAX = 2**31 - 1


class Plan:
    """Split-KV schedule and workspace for one batch shape, reusable across layers.

    Built by :func:`cumla.plan`. The schedule is computed on the device from
    the device lengths, so building or refreshing a plan never synchronises
    with the host. ``latent_attention(..., plan=plan, out=...)`` then launches
    kernels only, with no device allocation (the kernels' LSE goes to the
    plan's scratch buffer; ``return_lse=True`` returns a copy of it);
    ``decode(..., plan=plan, out=...)`` too from its second call on (the plan
    keeps its absorbed queries and latent output, :meth:`buffer`). Calls that
    share a plan must run in stream order. Refresh it in place with
    :meth:`update` when the lengths change (that launch can be captured in a
    CUDA graph too).

    On NumPy inputs a plan holds no schedule: the CPU backend does not split.
    """

    def __init__(self, xp, batch: int, rows: int, v_dim: int, num_parts: int):
        self.xp, self.batch, self.rows, self.v_dim, self.num_parts = xp, batch, rows, v_dim, num_parts
        self.slots = num_parts + batch
        self._buffers: dict[str, Any] = {}
        if xp is np:
            return
        self.work = xp.zeros((num_parts, 4), dtype=np.int32)
        self.first_part = xp.zeros(batch, dtype=np.int32)
        self.piece_base = xp.zeros(batch + 1, dtype=np.int32)
        self.prefix = xp.zeros(batch + 1, dtype=np.int32)
        self.combine_order = xp.zeros(batch, dtype=np.int32)  # the combine's request order (make_schedule)
        # float32 partials; the 16-bit Hopper kernel writes 16-bit ones into the first half
        self.part_out = xp.empty((self.slots, rows, v_dim), dtype=np.float32)
        self.part_lse = xp.empty((self.slots, rows), dtype=np.float32)
        self.lse = xp.empty((batch, rows), dtype=np.float32)

    def update(self, seqlens: Any, capacity: int = INT_MAX) -> "Plan":
        """Recompute the schedule for new lengths (B,) int32, on the current stream."""
        xp, taken = ingest(seqlens=seqlens)
        seqlens = taken["seqlens"]
        if xp is not self.xp:
            raise TypeError(f"seqlens must be a {self.xp.__name__} array like the plan's, got {xp.__name__}")
        check_index_array("seqlens", seqlens, 1)
        if seqlens.shape[0] != self.batch:
            raise ValueError(f"seqlens must have shape (B={self.batch},), got {tuple(seqlens.shape)}")
        if self.xp is not np and self.batch:
            from ._gpu import run_schedule

            run_schedule(self, self.xp.ascontiguousarray(seqlens), capacity)
        return self

    def buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A device array the plan keeps for a call's temporaries: made on first
        use and reused while ``shape`` and ``dtype`` stay the same, so planned
        calls allocate nothing after their first (make that first call before
        capturing a CUDA graph)."""
        held = self._buffers.get(name)
        if held is None or held.shape != tuple(shape) or held.dtype != np.dtype(dtype):
            held = self._buffers[name] = self.xp.empty(shape, dtype=dtype)
        return held

    def matches(self, batch: int, rows: int, v_dim: int) -> bool:
        return (self.batch, self.rows, self.v_dim) == (batch, rows, v_dim)

    def __repr__(self) -> str:
        return (f"Plan(batch={self.batch}, rows={self.rows}, v_dim={self.v_dim}, "
                f"num_parts={self.num_parts}, on={self.xp.__name__})")


def plan(seqlens: Any, *, heads: int, q_len: int = 1, v_dim: int = 512, num_parts: int | None = None,
         cache_format: Any = None) -> Plan:
    """Plan the split-KV schedule of ``decode``/``latent_attention`` calls.

    Parameters
    ----------
    seqlens : ndarray of int32, shape (B,)
        Cached tokens per request, on the device the calls will run on.
    heads, q_len : int
        H and Sq of the calls (their product is the query rows per request).
    v_dim : int
        Width of the latent output (L; 512 for DeepSeek).
    num_parts : int, optional
        CTA columns to spread the tiles over, at most 65535; default fills
        every SM once (twice for the kernel that reads ``cache_format``'s FP8
        rows where two of its CTAs share an SM).
    cache_format : Fp8Format, optional
        The FP8 row layout of the cache the calls will read, if any: it picks
        the kernel whose CTAs the default ``num_parts`` counts.

    Returns
    -------
    Plan
        Pass it as ``plan=`` to calls with the same B, H, Sq and L.

    Raises
    ------
    TypeError, ValueError
        For a non-array, non-int32 or non-1-D ``seqlens`` or bad sizes.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> cumla.plan(np.array([5, 900], np.int32), heads=16)
    Plan(batch=2, rows=16, v_dim=512, num_parts=1, on=numpy)
    """
    xp, taken = ingest(seqlens=seqlens)
    seqlens = taken["seqlens"]
    check_index_array("seqlens", seqlens, 1)
    for name, value in (("heads", heads), ("q_len", q_len), ("v_dim", v_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    rows = heads * q_len
    check_cache_format(cache_format)
    if num_parts is not None and (isinstance(num_parts, bool) or not isinstance(num_parts, int)
                                  or not 1 <= num_parts <= MAX_GRID_YZ):  # the Hopper kernel's grid y
        raise ValueError(f"num_parts must be an int in [1, {MAX_GRID_YZ}], got {num_parts!r}")
    if xp is np:
        return Plan(np, seqlens.shape[0], rows, v_dim, 1)
    from ._gpu import default_parts

    if num_parts is None:
        num_parts = default_parts(rows, v_dim, cache_format=cache_format)
    return Plan(xp, seqlens.shape[0], rows, v_dim, num_parts).update(seqlens)
