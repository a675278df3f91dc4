"""A communicator over NCCL (CuPy's ``cupy.cuda.nccl``): one process per GPU."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

ENV_RANK, ENV_WORLD, ENV_LOCAL_RANK, ENV_ID_FILE = "CUMLA_RANK", "CUMLA_WORLD_SIZE", "CUMLA_LOCAL_RANK", "CUMLA_NCCL_ID_FILE"


def share_unique_id(rank: int, id_file: str, timeout: float, make_id: Callable[[], Any]) -> Any:
    """Rank 0 makes the id (NCCL's unique id) and writes it to ``id_file``; the
    others wait for the file (a shared folder works across hosts). The id keeps
    its type: CuPy hands it out as ``bytes`` or, in older releases, a tuple of
    ints, and its communicator takes only what it hands out."""
    if rank == 0:
        uid = make_id()
        record = {"hex": uid.hex()} if isinstance(uid, bytes) else {"ints": list(uid)}
        tmp = f"{id_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, id_file)  # atomic: readers never see half a file
        return uid
    deadline = time.monotonic() + timeout
    while not os.path.exists(id_file):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: no NCCL id in {id_file} after {timeout:.0f} s (did rank 0 start?)")
        time.sleep(0.01)
    with open(id_file) as f:
        record = json.load(f)
    return bytes.fromhex(record["hex"]) if "hex" in record else tuple(record["ints"])


class Communicator:
    """NCCL communicator of ``world`` processes, this one being ``rank``.

    Parameters
    ----------
    rank, world : int
        This process's rank and the number of processes.
    id_file : str, optional
        Where rank 0 publishes NCCL's unique id: a fresh path (a file left
        from an earlier run would hand out a stale id) that all ranks can
        read, e.g. on a shared filesystem across hosts. Without it, mpi4py's
        ``COMM_WORLD`` broadcasts the id.
    device : int, optional
        CUDA device of this rank (default: ``CUMLA_LOCAL_RANK`` or ``rank``).
    timeout : float
        Seconds a collective may take before the communicator is aborted and
        :class:`TimeoutError` raised, so that a failed peer makes every rank
        raise instead of hang.
    """

    def __init__(self, rank: int, world: int, *, id_file: str | None = None, device: int | None = None,
                 timeout: float = 120.0):
        import cupy as cp
        from cupy.cuda import nccl

        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.rank, self.world, self.timeout = rank, world, timeout
        self.device = int(os.environ.get(ENV_LOCAL_RANK, rank)) if device is None else device
        cp.cuda.Device(self.device).use()
        if id_file is not None:
            uid = share_unique_id(rank, id_file, timeout, nccl.get_unique_id)
        else:
            from mpi4py import MPI

            uid = MPI.COMM_WORLD.bcast(nccl.get_unique_id() if rank == 0 else None, root=0)
        self._comm = nccl.NcclCommunicator(world, uid, rank)

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Communicator":
        """The communicator ``python -m cumla.launch`` sets up (CUMLA_RANK,
        CUMLA_WORLD_SIZE, CUMLA_NCCL_ID_FILE), or mpi4py's world when those are unset."""
        if ENV_RANK in os.environ:
            return cls(int(os.environ[ENV_RANK]), int(os.environ[ENV_WORLD]), id_file=os.environ[ENV_ID_FILE],
                       **kwargs)
        from mpi4py import MPI

        return cls(MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size(), **kwargs)

    def all_gather(self, array: Any, out: Any = None) -> Any:
        """Every rank's ``array`` stacked along a new first axis, in rank order (as bytes:
        any dtype), on the current stream, into ``out`` if given (C-contiguous,
        shape (world,) + array.shape, array's dtype). Waits for it with the
        timeout, except while the stream is being captured in a CUDA graph
        (a capture cannot wait; the replays run in stream order)."""
        import cupy as cp
        from cupy.cuda import nccl

        send = cp.ascontiguousarray(array)
        shape = (self.world,) + send.shape
        if out is None:
            out = cp.empty(shape, dtype=send.dtype)
        elif out.shape != shape or out.dtype != send.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {send.dtype} array of shape {shape}, "
                             f"got {out.dtype} {out.shape}")
        stream = cp.cuda.get_current_stream()
        self._comm.allGather(send.data.ptr, out.data.ptr, send.nbytes, nccl.NCCL_UINT8, stream.ptr)
        if not cp.cuda.runtime.streamIsCapturing(stream.ptr):
            self._wait(stream, "all_gather")
        return out

    def _wait(self, stream: Any, what: str) -> None:
        # Spin first: a gather of partials takes microseconds, and a sleep costs
        # tens of them (the timer's granularity); back off after 2 ms.
        start = time.monotonic()
        deadline = start + self.timeout
        while not stream.done:
            self._comm.check_async_error()
            now = time.monotonic()
            if now > deadline:
                self.abort()
                raise TimeoutError(f"rank {self.rank}: NCCL {what} did not finish within {self.timeout:.0f} s "
                                   "(a peer rank failed or stopped); the communicator was aborted")
            if now - start > 0.002:
                time.sleep(0.0002)

    def abort(self) -> None:
        """Abort pending operations (peers then fail instead of waiting)."""
        if self._comm is not None:
            self._comm.abort()
            self._comm = None
