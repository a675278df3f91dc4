"""A paged latent KV cache: a block pool, per-sequence block tables and lengths."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._arrays import FLOAT_DTYPES, dtype_name, ingest
from ._validate import check_cache_format, check_float_dtype


class PagedLatentCache:
    """Latent rows ``[c_kv (L) | k_rope (R)]`` in fixed-size blocks, on NumPy or CuPy.

    The pool, the block table and the lengths live on the array module
    ``xp``; the allocator (free list, lengths) is mirrored on the host, so
    appending never synchronises with the device. Rows past a sequence's
    length are never read by :func:`cumla.decode`.

    Parameters
    ----------
    num_blocks : int
        Blocks in the pool.
    block_size : int
        Tokens per block: a power of two from 1 to 256.
    latent_dim, rope_dim : int
        L and R.
    max_seqs : int
        Sequence slots (rows of the block table).
    max_blocks_per_seq : int
        Columns of the block table (a sequence holds at most
        ``max_blocks_per_seq * block_size`` tokens).
    dtype : dtype, optional
        float32, float16 or ``cumla.bfloat16``.
    xp : module, optional
        ``numpy`` (default) or ``cupy``.
    fp8 : Fp8Format, optional
        Store rows as FP8 (:func:`cumla.fp8_format`, uint8 pool of
        ``fp8.row_bytes`` per token), quantised by :meth:`append`; ``dtype``
        is then the type of the rows given to :meth:`append`.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> cache = cumla.PagedLatentCache(8, 4, latent_dim=16, rope_dim=8, max_seqs=2, max_blocks_per_seq=4)
    >>> s = cache.add_sequence()
    >>> cache.append([s, s], np.ones((2, 16), np.float32), np.ones((2, 8), np.float32))
    >>> cache.length(s), cache.free_blocks
    (2, 7)
    """

    def __init__(self, num_blocks: int, block_size: int, *, latent_dim: int, rope_dim: int, max_seqs: int,
                 max_blocks_per_seq: int, dtype: Any = np.float32, xp: Any = np, fp8: Any = None):
        for name, value in (("num_blocks", num_blocks), ("latent_dim", latent_dim), ("max_seqs", max_seqs),
                            ("max_blocks_per_seq", max_blocks_per_seq)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(rope_dim, bool) or not isinstance(rope_dim, int) or rope_dim < 0:
            raise ValueError(f"rope_dim must be a non-negative int, got {rope_dim!r}")
        if not isinstance(block_size, int) or not 1 <= block_size <= 256 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two from 1 to 256, got {block_size!r}")
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype_name(dtype)}")
        if fp8 is not None:
            check_cache_format(fp8)
            if (fp8.latent_dim, fp8.rope_dim) != (latent_dim, rope_dim):
                raise ValueError(f"fp8 describes L={fp8.latent_dim}, R={fp8.rope_dim}; the cache has "
                                 f"L={latent_dim}, R={rope_dim}")
        self.xp, self.dtype, self.fp8 = xp, np.dtype(dtype), fp8
        self.block_size, self.latent_dim, self.rope_dim = block_size, latent_dim, rope_dim
        self.max_blocks_per_seq = max_blocks_per_seq
        width, storage = (latent_dim + rope_dim, dtype) if fp8 is None else (fp8.row_bytes, np.uint8)
        # One spare block past the pool receives the tokens append_step cannot
        # place (counted in `dropped`); it is never in a block table.
        self._pool_and_spare = xp.zeros((num_blocks + 1, block_size, width), dtype=storage)
        self.pool = self._pool_and_spare[:num_blocks]
        self.num_blocks = num_blocks
        self.block_table = xp.full((max_seqs, max_blocks_per_seq), -1, dtype=np.int32)
        self.seqlens = xp.zeros(max_seqs, dtype=np.int32)
        self.dropped = xp.zeros(1, dtype=np.int64)  # tokens append_step could not place
        self._stale = False  # append_step moved the device lengths past the host mirror
        # Host mirrors: the allocator never reads device memory.
        self._lengths = np.zeros(max_seqs, dtype=np.int64)
        self._table = np.full((max_seqs, max_blocks_per_seq), -1, dtype=np.int32)
        self._live = np.zeros(max_seqs, dtype=bool)
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first

    # -- bookkeeping ---------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def capacity(self) -> int:
        """Most tokens one sequence can hold."""
        return self.max_blocks_per_seq * self.block_size

    def length(self, seq_id: int) -> int:
        self._check_in_sync()
        self._check_live(seq_id)
        return int(self._lengths[seq_id])

    def add_sequence(self) -> int:
        """A free sequence slot, empty; raises RuntimeError when all are in use."""
        self._check_in_sync()
        free_slots = np.flatnonzero(~self._live)
        if free_slots.size == 0:
            raise RuntimeError(f"all {self._live.size} sequence slots are in use")
        seq_id = int(free_slots[0])
        self._live[seq_id] = True
        return seq_id

    def free_sequence(self, seq_id: int) -> None:
        """Release a sequence and return its blocks to the pool."""
        self._check_in_sync()
        self._check_live(seq_id)
        held = self._table[seq_id][self._table[seq_id] >= 0]
        self._free.extend(int(b) for b in held[::-1])
        self._live[seq_id] = False
        self._lengths[seq_id] = 0
        self._table[seq_id] = -1
        self.block_table[seq_id] = -1
        self.seqlens[seq_id] = 0

    def _check_in_sync(self) -> None:
        if self._stale:
            raise RuntimeError("append_step moved the lengths on the device: call sync() before changing the "
                               "cache from the host")

    def _check_live(self, seq_id: int) -> None:
        if not (isinstance(seq_id, (int, np.integer)) and 0 <= seq_id < self._live.size and self._live[seq_id]):
            raise ValueError(f"sequence {seq_id} is not in the cache (add_sequence first)")

    # -- writing ---------------------------------------------------------------
    def append(self, seq_ids: Sequence[int], c_kv: Any, k_rope: Any) -> None:
        """Append one token per entry of ``seq_ids`` (repeats append in order).

        Parameters
        ----------
        seq_ids : sequence of int, length n
            Host-side sequence ids.
        c_kv : ndarray, shape (n, L)
        k_rope : ndarray, shape (n, R)

        Raises
        ------
        ValueError
            Unknown sequence, wrong shapes, a sequence over its capacity, or
            not enough free blocks; nothing is written then.
        """
        self._check_in_sync()
        ids = np.asarray(seq_ids).reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"seq_ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        xp, a = ingest(c_kv=c_kv, k_rope=k_rope)
        c_kv, k_rope = a["c_kv"], a["k_rope"]
        if xp is not self.xp:
            raise TypeError(f"c_kv and k_rope must be {self.xp.__name__} arrays like the cache, got {xp.__name__}")
        n = ids.size
        if tuple(c_kv.shape) != (n, self.latent_dim) or tuple(k_rope.shape) != (n, self.rope_dim):
            raise ValueError(f"c_kv and k_rope must have shapes ({n}, {self.latent_dim}) and ({n}, {self.rope_dim}), "
                             f"got {tuple(c_kv.shape)} and {tuple(k_rope.shape)}")
        check_float_dtype("c_kv", c_kv, self.dtype, like="the cache")
        check_float_dtype("k_rope", k_rope, self.dtype, like="the cache")
        touched, counts = np.unique(ids, return_counts=True)
        for seq_id in touched:
            self._check_live(int(seq_id))
        new_lengths = self._lengths[touched] + counts
        if (new_lengths > self.capacity).any():
            worst = int(np.argmax(new_lengths))
            raise ValueError(f"sequence {touched[worst]} would hold {new_lengths[worst]} tokens, over its capacity "
                             f"{self.capacity} (max_blocks_per_seq * block_size)")
        self._allocate(touched, new_lengths, "append")
        xp = self.xp
        # Position of every new token: the length so far plus its rank among
        # this call's tokens of the same sequence.
        order = np.argsort(ids, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.searchsorted(ids[order], ids[order], side="left")
        positions = self._lengths[ids] + rank
        blk = xp.asarray(self._table[ids, positions // self.block_size].astype(np.int64))
        off = xp.asarray(positions % self.block_size)
        new_rows = xp.concatenate([c_kv, k_rope], axis=1)
        if self.fp8 is not None:
            new_rows = self.fp8.quantize(new_rows)
        self.pool[blk, off] = new_rows  # one scatter of whole rows
        self._lengths[touched] = new_lengths
        self.seqlens[xp.asarray(touched)] = xp.asarray(new_lengths.astype(np.int32))

    def _allocate(self, seqs: np.ndarray, lengths: np.ndarray, what: str) -> None:
        """Give each sequence the blocks for ``lengths`` tokens (blocks it holds,
        appended or reserved, count); raises before allocating when short."""
        held = (self._table[seqs] >= 0).sum(axis=1)
        needed = np.maximum(0, -(-lengths // self.block_size) - held)
        if needed.sum() > len(self._free):
            raise ValueError(f"{what} needs {needed.sum()} new blocks, only {len(self._free)} are free; "
                             "nothing was written")
        # Allocate on the host, then one scatter into the device block table.
        rows = np.repeat(seqs, needed)
        cols = np.concatenate([np.arange(h, h + k) for h, k in zip(held, needed)]) if rows.size else rows
        fresh = np.array([self._free.pop() for _ in range(rows.size)], dtype=np.int32)
        self._table[rows, cols] = fresh
        if rows.size:
            xp = self.xp
            self.block_table[xp.asarray(rows), xp.asarray(cols)] = xp.asarray(fresh)

    def reserve(self, seq_ids: Sequence[int], tokens: int) -> None:
        """Allocate now the blocks for ``tokens`` more tokens of each sequence, so
        that :meth:`append_step` never needs the allocator.

        Raises
        ------
        ValueError
            Over a sequence's capacity or not enough free blocks; nothing is
            allocated then.
        """
        self._check_in_sync()
        ids = np.unique(np.asarray(seq_ids, dtype=np.int64).reshape(-1))
        for seq_id in ids:
            self._check_live(int(seq_id))
        if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 0:
            raise ValueError(f"tokens must be a non-negative int, got {tokens!r}")
        target = self._lengths[ids] + int(tokens)
        if (target > self.capacity).any():
            worst = int(np.argmax(target))
            raise ValueError(f"sequence {ids[worst]} would hold {target[worst]} tokens, over its capacity "
                             f"{self.capacity}")
        self._allocate(ids, target, "reserve")

    def append_step(self, seq_ids: Any, c_kv: Any, k_rope: Any) -> None:
        """Append one token to each sequence of ``seq_ids`` at the position its
        length on the device gives, with array operations only: no host
        synchronisation and no allocator, so that a whole decode step
        (``append_step``, ``plan.update``, ``decode``) can be captured in a
        CUDA graph and replayed while the lengths grow on the device.

        Parameters
        ----------
        seq_ids : ndarray of int, shape (n,), on the cache's array module
            Distinct sequence ids.
        c_kv : ndarray, shape (n, L)
        k_rope : ndarray, shape (n, R)

        Room must be reserved beforehand (:meth:`reserve`): a token past a
        sequence's reserved blocks is not stored and its length does not move;
        it is counted in ``dropped`` and :meth:`sync` raises. Call
        :meth:`sync` before changing the cache from the host again.
        """
        xp = self.xp
        ids = xp.asarray(seq_ids).reshape(-1)
        n = ids.shape[0]
        if tuple(c_kv.shape) != (n, self.latent_dim) or tuple(k_rope.shape) != (n, self.rope_dim):
            raise ValueError(f"c_kv and k_rope must have shapes ({n}, {self.latent_dim}) and ({n}, {self.rope_dim}), "
                             f"got {tuple(c_kv.shape)} and {tuple(k_rope.shape)}")
        check_float_dtype("c_kv", c_kv, self.dtype, like="the cache")
        check_float_dtype("k_rope", k_rope, self.dtype, like="the cache")
        positions = self.seqlens[ids]
        column = xp.minimum(positions // self.block_size, self.max_blocks_per_seq - 1)
        block = self.block_table[ids, column]
        placed = (positions < self.capacity) & (block >= 0)
        rows = xp.concatenate([c_kv, k_rope], axis=1)
        if self.fp8 is not None:
            rows = self.fp8.quantize(rows)
        slot = (xp.where(placed, block, self.num_blocks), xp.where(placed, positions % self.block_size, 0))
        self._pool_and_spare[slot] = rows
        self.seqlens[ids] = positions + placed.astype(np.int32)
        self.dropped += (~placed).sum()
        self._stale = True

    def sync(self) -> None:
        """Bring the host bookkeeping up to date after :meth:`append_step` (one
        device-to-host copy of the lengths).

        Raises
        ------
        ValueError
            If append_step could not place some tokens (no reserved room);
            the count is reset.
        """
        xp = self.xp
        lengths = np.asarray(self.seqlens.get() if xp is not np else self.seqlens, dtype=np.int64)
        dropped = int(self.dropped.get()[0] if xp is not np else self.dropped[0])
        self._lengths[:] = lengths
        self._stale = False
        if dropped:
            self.dropped[...] = 0
            raise ValueError(f"{dropped} token(s) given to append_step found no reserved block and were not "
                             "stored; reserve() more room before stepping")

    # -- reading ----------------------------------------------------------------
    def batch(self, seq_ids: Sequence[int]) -> dict[str, Any]:
        """``cache``, ``block_table``, ``seqlens`` and ``cache_format`` keyword
        arguments of :func:`cumla.decode` for these sequences, in this order."""
        ids = np.asarray(seq_ids, dtype=np.int64).reshape(-1)
        for seq_id in ids:
            self._check_live(int(seq_id))
        if ids.size and (ids == np.arange(ids[0], ids[0] + ids.size)).all():
            # A run of ids: views, no copy and no host-to-device transfer, so a
            # call on them can be captured in a CUDA graph and sees later appends.
            index = slice(int(ids[0]), int(ids[0]) + ids.size)
        else:
            index = self.xp.asarray(ids)
        return dict(cache=self.pool, block_table=self.block_table[index], seqlens=self.seqlens[index],
                    cache_format=self.fp8)
