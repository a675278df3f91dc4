"""Start one process per GPU on this host for a cumla.distributed script.

    python -m cumla.launch -n 2 script.py [script arguments]

Each process gets CUMLA_RANK, CUMLA_WORLD_SIZE, CUMLA_LOCAL_RANK (its GPU)
and CUMLA_NCCL_ID_FILE (where rank 0 publishes NCCL's unique id), which
:meth:`cumla.distributed.Communicator.from_env` reads. If a rank fails, the
others are stopped and the launcher exits with that rank's status, so a
failure never leaves the other ranks waiting in a collective; a launcher
stopped by SIGTERM (a time limit) stops its ranks as well. Across hosts,
start the ranks with your scheduler instead and set the same variables, with
the id file on a shared filesystem (or use mpirun and mpi4py).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from ._nccl import ENV_ID_FILE, ENV_LOCAL_RANK, ENV_RANK, ENV_WORLD


def launch(script: str, args: list[str], processes: int, grace: float = 5.0) -> int:
    """Run ``script`` in ``processes`` ranks; the first failure stops the rest.

    Returns
    -------
    int
        0 when every rank succeeded, else the failed rank's exit status.
    """
    with tempfile.TemporaryDirectory(prefix="cumla-launch-") as folder:
        ranks: list[subprocess.Popen] = []
        # A launcher stopped by a signal (e.g. a time limit) stops its ranks too.
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        try:
            for rank in range(processes):
                env = dict(os.environ, **{ENV_RANK: str(rank), ENV_WORLD: str(processes),
                                          ENV_LOCAL_RANK: str(rank), ENV_ID_FILE: os.path.join(folder, "nccl-id.json")})
                ranks.append(subprocess.Popen([sys.executable, script, *args], env=env))
            return _supervise(ranks, grace)
        finally:
            _stop([p for p in ranks if p.poll() is None], grace)
            signal.signal(signal.SIGTERM, previous)


def _supervise(ranks: list[subprocess.Popen], grace: float) -> int:
    """Wait for every rank; the first failure stops the rest. Returns the status."""
    while True:
        codes = [p.poll() for p in ranks]  # poll every rank: returncode is only set by poll()
        if all(code is not None for code in codes):
            return next((code for code in codes if code != 0), 0)
        failed = [(r, code) for r, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank, status = failed[0]
            print(f"cumla.launch: rank {rank} exited with status {status}; stopping the other ranks",
                  file=sys.stderr, flush=True)
            _stop([p for p in ranks if p.poll() is None], grace)
            return status
        time.sleep(0.05)


def _stop(processes: list[subprocess.Popen], grace: float) -> None:
    for p in processes:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cumla.launch", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--processes", type=int, required=True, help="ranks to start (one per GPU)")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    if opts.processes < 1:
        parser.error("-n must be at least 1")
    return launch(opts.script, opts.args, opts.processes)


if __name__ == "__main__":
    sys.exit(main())
