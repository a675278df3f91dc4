"""Context parallelism over NCCL on the device: one rank (any GPU), two ranks
(two GPUs of one host, through cumla.launch), and a failing rank."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
WORKER = Path(__file__).with_name("distributed_worker.py")


def devices() -> int:
    import cupy as cp

    return cp.cuda.runtime.getDeviceCount()


def run_ranks(n, tmp_path, mode):
    return subprocess.run([sys.executable, "-m", "cumla.launch", "-n", str(n), str(WORKER), str(tmp_path), mode],
                          capture_output=True, text=True, timeout=120)


def test_one_rank_over_nccl_equals_single_gpu_decode(tmp_path):
    run = run_ranks(1, tmp_path, "ok")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "rank0.npy").exists() and (tmp_path / "rank0-planned.npy").exists()


def test_two_ranks_agree_bitwise_and_with_one_gpu(tmp_path):
    if devices() < 2:
        pytest.skip("needs two CUDA devices (NCCL ranks cannot share one)")
    run = run_ranks(2, tmp_path, "ok")
    assert run.returncode == 0, run.stderr
    for name in ("", "-planned"):  # Sq = 2 eager; Sq = 1 planned, replayed from a CUDA graph
        assert np.array_equal(np.load(tmp_path / f"rank0{name}.npy"), np.load(tmp_path / f"rank1{name}.npy"))


def test_a_failing_rank_makes_the_run_fail_not_hang(tmp_path):
    if devices() < 2:
        pytest.skip("needs two CUDA devices (NCCL ranks cannot share one)")
    run = run_ranks(2, tmp_path, "fail")
    assert run.returncode != 0
    assert "rank 1 fails before the collective" in run.stderr
