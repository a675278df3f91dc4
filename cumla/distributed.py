"""Context-parallel decode: each rank (one GPU) holds a slice of every request's
tokens, attends over it, and the ranks merge their partial outputs exactly by
their log-sum-exp, the split-KV rule.

Only (output, lse) per query row crosses between ranks, never the cache.
Launch one process per GPU with ``python -m cumla.launch -n N script.py``
(or mpirun with mpi4py) and build a :class:`Communicator` with
``Communicator.from_env()``.

Examples
--------
The merge does not depend on the transport: two shards of a cache, attended
separately and merged, equal the unsharded result.

>>> import numpy as np, cumla
>>> from cumla.distributed import ShardedLatentCache, TokenSharding, local_partials, merge_partials
>>> rng = np.random.default_rng(0)
>>> H, L, R, Dn, Dv, S = 2, 16, 8, 8, 8, 20
>>> w_kv = rng.standard_normal((L, H * (Dn + Dv)), dtype=np.float32)
>>> q = rng.standard_normal((1, H, Dn + R), dtype=np.float32)
>>> rows = rng.standard_normal((S, L + R), dtype=np.float32)
>>> sharding = TokenSharding(world=2, stripe=4)
>>> shards = [ShardedLatentCache(sharding, r, 8, 4, latent_dim=L, rope_dim=R, max_seqs=1, max_blocks_per_seq=4)
...           for r in range(2)]
>>> for shard in shards:
...     seq = shard.add_sequence()
...     shard.append([seq] * S, rows[:, :L], rows[:, L:])
>>> parts = [local_partials(q, shard, w_kv, seq_ids=[0], rope_dim=R) for shard in shards]
>>> o, _ = merge_partials(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))
>>> full = cumla.decode(q, rows[None], w_kv, rope_dim=R)
>>> bool(np.allclose(o, full, atol=1e-5))
True
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._api import decode
from ._cache import PagedLatentCache
from ._combine import combine
from ._nccl import Communicator
from ._plan import Plan, plan as make_plan
from ._sharding import TokenSharding

__all__ = ["Communicator", "ShardedLatentCache", "TokenSharding", "local_partials",
           "merge_partials", "sharded_decode"]


class ShardedLatentCache:
    """This rank's slice of a paged latent cache under a :class:`TokenSharding`.

    Every rank creates one with the same arguments but its own ``rank``, and
    makes the same calls in the same order (``add_sequence``, ``append`` with
    all new tokens): each keeps the tokens it owns in a local
    :class:`cumla.PagedLatentCache` and the global lengths on the host.

    Parameters
    ----------
    sharding : TokenSharding
    rank : int
    num_blocks, block_size, latent_dim, rope_dim, max_seqs, max_blocks_per_seq, dtype, xp
        Of the local pool, as for :class:`cumla.PagedLatentCache`.
    """

    def __init__(self, sharding: TokenSharding, rank: int, num_blocks: int, block_size: int, *, latent_dim: int,
                 rope_dim: int, max_seqs: int, max_blocks_per_seq: int, dtype: Any = np.float32, xp: Any = np):
        if not 0 <= rank < sharding.world:
            raise ValueError(f"rank must be in [0, {sharding.world}), got {rank}")
        self.sharding, self.rank = sharding, rank
        self.local = PagedLatentCache(num_blocks, block_size, latent_dim=latent_dim, rope_dim=rope_dim,
                                      max_seqs=max_seqs, max_blocks_per_seq=max_blocks_per_seq, dtype=dtype, xp=xp)
        self._lengths = np.zeros(max_seqs, dtype=np.int64)  # global tokens per sequence

    def add_sequence(self) -> int:
        """A new empty sequence (the same id on every rank that calls in the same order)."""
        seq_id = self.local.add_sequence()
        self._lengths[seq_id] = 0
        return seq_id

    def free_sequence(self, seq_id: int) -> None:
        """Release a sequence and this rank's blocks of it."""
        self.local.free_sequence(seq_id)
        self._lengths[seq_id] = 0

    def length(self, seq_id: int) -> int:
        """Global tokens of a sequence (all ranks together)."""
        self.local._check_live(seq_id)
        return int(self._lengths[seq_id])

    def global_lengths(self, seq_ids: Sequence[int]) -> np.ndarray:
        """Global tokens of each sequence (host int64 array)."""
        ids = np.asarray(seq_ids, dtype=np.int64).reshape(-1)
        for seq_id in ids:
            self.local._check_live(int(seq_id))
        return self._lengths[ids].copy()

    def append(self, seq_ids: Sequence[int], c_kv: Any, k_rope: Any) -> None:
        """Append one token per entry of ``seq_ids`` (all ranks pass the same
        tokens); this rank stores those it owns. Raises like
        :meth:`cumla.PagedLatentCache.append`, before anything is written on
        this rank (size the pools alike so that ranks fail alike)."""
        ids = np.asarray(seq_ids).reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"seq_ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        for seq_id in np.unique(ids):
            self.local._check_live(int(seq_id))
        xp = self.local.xp
        c_kv, k_rope = xp.asarray(c_kv), xp.asarray(k_rope)
        n, latent, rope = ids.size, self.local.latent_dim, self.local.rope_dim
        if tuple(c_kv.shape) != (n, latent) or tuple(k_rope.shape) != (n, rope):
            raise ValueError(f"c_kv and k_rope must have shapes ({n}, {latent}) and ({n}, {rope}), "
                             f"got {tuple(c_kv.shape)} and {tuple(k_rope.shape)}")
        order = np.argsort(ids, kind="stable")
        rank_in_call = np.empty(ids.size, dtype=np.int64)
        rank_in_call[order] = np.arange(ids.size) - np.searchsorted(ids[order], ids[order], side="left")
        positions = self._lengths[ids] + rank_in_call
        mine = np.flatnonzero(self.sharding.owner(positions) == self.rank)
        take = xp.asarray(mine)
        self.local.append(ids[mine], c_kv[take], k_rope[take])  # validates shapes and room first
        np.add.at(self._lengths, ids, 1)

    def batch(self, seq_ids: Sequence[int]) -> dict[str, Any]:
        """The local ``cache``, ``block_table``, ``seqlens`` (this rank's tokens of
        each sequence, on the device) and ``cache_format``, as
        :meth:`cumla.PagedLatentCache.batch`."""
        return self.local.batch(seq_ids)

    def plan(self, seq_ids: Sequence[int], *, heads: int, q_len: int = 1) -> Plan:
        """A split-KV plan over this rank's tokens of these sequences, for
        :func:`sharded_decode` (refresh it with ``plan.update(batch["seqlens"])``
        after appends)."""
        batch = self.batch(seq_ids)
        return make_plan(batch["seqlens"], heads=heads, q_len=q_len, v_dim=self.local.latent_dim,
                         cache_format=batch["cache_format"])


def local_partials(q: Any, cache: ShardedLatentCache, w_kv: Any, *, seq_ids: Sequence[int], rope_dim: int,
                   scale: float | None = None, causal: bool = True) -> tuple[Any, Any]:
    """This rank's partial decode over its tokens: (o, lse) for every query row.

    ``q`` is (B, H, Dn+R) or (B, Sq, H, Dn+R), the same on every rank. For
    Sq > 1 with the causal rule, query i sees the global tokens
    ``t < S_b - Sq + i + 1``, which are a prefix of each rank's tokens: each
    query token is decoded with its own local lengths.

    Returns
    -------
    o : ndarray, shape (B, [Sq,] H, Dv), float32
    lse : ndarray, shape (B, [Sq,] H), float32
    """
    xp = cache.local.xp
    squeeze = q.ndim == 3
    q4 = q[:, None] if squeeze else q
    q_len = q4.shape[1]
    lengths = cache.global_lengths(seq_ids)
    local = cache.batch(seq_ids)
    outs, lses = [], []
    for i in range(q_len):
        visible = lengths - q_len + i + 1 if causal else lengths
        counts = cache.sharding.local_count(visible, cache.rank).astype(np.int32)
        o, lse = decode(q4[:, i], local["cache"], w_kv, rope_dim=rope_dim, seqlens=xp.asarray(counts),
                        block_table=local["block_table"], cache_format=local["cache_format"], scale=scale,
                        return_lse=True)
        outs.append(o.astype(np.float32))
        lses.append(lse)
    o, lse = xp.stack(outs, axis=1), xp.stack(lses, axis=1)
    return (o[:, 0], lse[:, 0]) if squeeze else (o, lse)


def merge_partials(outputs: Any, lses: Any) -> tuple[Any, Any]:
    """Merge stacked partials (world, ...) by their LSE: :func:`cumla.combine`."""
    return combine(list(outputs), list(lses))


def sharded_decode(q: Any, cache: ShardedLatentCache, w_kv: Any, comm: Communicator, *, seq_ids: Sequence[int],
                   rope_dim: int, scale: float | None = None, causal: bool = True, return_lse: bool = False,
                   plan: Plan | None = None, out: Any = None, check: bool = True) -> Any:
    """:func:`cumla.decode` over a cache sharded across ``comm``'s ranks.

    Every rank passes the same ``q`` and gets the full output, bitwise the
    same on every rank (each merges the same gathered partials in rank order).
    Only the partial outputs and LSEs are exchanged: one all-gather of
    ``[o | lse]`` packed in float32, B*Sq*H*(Dv+1) values per rank.

    With Sq = 1 (or ``causal=False``) each rank makes one local decode call
    over its own lengths, on the device. Then, on CuPy, with a ``plan`` from
    :meth:`ShardedLatentCache.plan`, ``out``, ``check=False`` and consecutive
    ``seq_ids``, a call launches kernels and the collective only: it
    allocates nothing after its first call (the plan keeps the buffers) and
    can be captured in a CUDA graph together with its all-gather. With Sq > 1
    and the causal rule each query token is decoded with its own local lengths
    (made on the host), and ``plan`` is refused.

    Returns
    -------
    o : ndarray, shape of ``q`` with Dv last, q's dtype
    lse : ndarray, float32, if ``return_lse``
    """
    xp = cache.local.xp
    q_len = 1 if q.ndim == 3 else q.shape[1]
    if q_len == 1 or not causal:
        o, lse = _local_decode(q, cache, w_kv, seq_ids, rope_dim, scale, causal, plan, check)
    elif plan is not None:
        raise ValueError("plan= needs Sq = 1 or causal=False: with Sq > 1 each causal query token "
                         "has its own local lengths")
    else:
        o, lse = local_partials(q, cache, w_kv, seq_ids=seq_ids, rope_dim=rope_dim, scale=scale, causal=causal)
    buffer = plan.buffer if plan is not None else (lambda name, shape, dtype: xp.empty(shape, dtype=dtype))
    v_dim, rows = o.shape[-1], lse.size
    packed = buffer("sharded_packed", (rows, v_dim + 1), np.float32)
    packed[:, :v_dim] = o.reshape(rows, v_dim)
    packed[:, v_dim] = lse.reshape(rows)
    gathered = comm.all_gather(packed, out=buffer("sharded_gathered", (comm.world, rows, v_dim + 1), np.float32))
    if out is None:
        out = xp.empty(o.shape, dtype=q.dtype)
    elif out.shape != o.shape or out.dtype != q.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {q.dtype} array of shape {o.shape}")
    if xp is np:
        merged, merged_lse = merge_partials(gathered[..., :v_dim], gathered[..., v_dim])
        out[...] = merged.reshape(out.shape)
        merged_lse = merged_lse.reshape(lse.shape)
    else:
        from ._gpu import merge_ranks

        merged_lse = buffer("sharded_lse", lse.shape, np.float32)
        merge_ranks(gathered, out.reshape(rows, v_dim), merged_lse.reshape(rows))
    if not return_lse:
        return out
    return out, (merged_lse.copy() if plan is not None else merged_lse)  # a plan's buffer is reused by the next call


def _local_decode(q, cache, w_kv, seq_ids, rope_dim, scale, causal, plan, check):
    """This rank's decode when every query token sees all of the rank's tokens
    (Sq = 1 or no causal rule): one call over the local lengths."""
    local = cache.batch(seq_ids)
    kwargs = dict(rope_dim=rope_dim, seqlens=local["seqlens"], block_table=local["block_table"],
                  cache_format=local["cache_format"], scale=scale, causal=causal, check=check)
    if plan is not None and cache.local.xp is not np:
        # The plan keeps the output and its LSE scratch: no allocation, no copy.
        heads, nope = q.shape[-2], q.shape[-1] - rope_dim
        v_dim = w_kv.size // (w_kv.shape[0] * heads) - nope
        o_buf = plan.buffer("sharded_local_o", q.shape[:-1] + (v_dim,), q.dtype)
        o = decode(q, local["cache"], w_kv, plan=plan, out=o_buf, **kwargs)
        return o, plan.lse
    return decode(q, local["cache"], w_kv, plan=plan, return_lse=True, **kwargs)
