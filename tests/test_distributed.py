"""Context parallelism on the CPU: the sharding plan, the sharded cache, the
merge of per-rank partials, and the launcher (process start, failure stop)."""
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cumla
from cumla.distributed import ShardedLatentCache, TokenSharding, local_partials, merge_partials, sharded_decode
from cumla.launch import launch
from cumla.testing import examples, relative_error

shardings = st.builds(TokenSharding, world=st.integers(1, 4), layout=st.sampled_from(["round_robin", "contiguous"]),
                      stripe=st.integers(1, 8))


@settings(max_examples=examples(100))
@given(sharding=shardings, visible=st.integers(-3, 40))
def test_local_count_is_the_rank_share_of_a_prefix(sharding, visible):
    capacity = sharding.world * sharding.stripe if sharding.layout == "contiguous" else 64
    visible = min(visible, capacity)
    owners = sharding.owner(np.arange(capacity))
    for rank in range(sharding.world):
        expected = int((owners[:max(visible, 0)] == rank).sum())
        assert sharding.local_count([visible], rank).tolist() == [expected]


def test_sharding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layout"):
        TokenSharding(2, layout="striped")
    with pytest.raises(ValueError, match="world"):
        TokenSharding(0)
    with pytest.raises(ValueError, match="past the last rank"):
        TokenSharding(2, layout="contiguous", stripe=4).owner([8])
    with pytest.raises(ValueError, match="rank"):
        TokenSharding(2).local_count([3], rank=2)


L, R, DN, DV = 16, 8, 8, 8


def make_shards(sharding, lengths, rng, block=4):
    """Every rank's shard of sequences with the given lengths, plus the full rows."""
    shards = [ShardedLatentCache(sharding, r, 64, block, latent_dim=L, rope_dim=R, max_seqs=len(lengths),
                                 max_blocks_per_seq=32) for r in range(sharding.world)]
    rows = [rng.standard_normal((n, L + R), dtype=np.float32) for n in lengths]
    for shard in shards:
        ids = [shard.add_sequence() for _ in lengths]
        # Tokens arrive in two appends (first halves, then the rest), several sequences per call.
        for half in (0, 1):
            parts = [r[: (len(r) + 1) // 2] if half == 0 else r[(len(r) + 1) // 2:] for r in rows]
            seq = [i for i, part in zip(ids, parts) for _ in range(len(part))]
            new = np.concatenate(parts)
            shard.append(seq, new[:, :L], new[:, L:])
    return shards, rows


def test_shards_hold_each_token_once_in_order():
    sharding = TokenSharding(3, "round_robin", stripe=2)
    rng = np.random.default_rng(0)
    lengths = [11, 0, 5]
    shards, _ = make_shards(sharding, lengths, rng)
    for seq, n in enumerate(lengths):
        counts = [shard.local.length(seq) for shard in shards]
        assert sum(counts) == n
        assert counts == [int(sharding.local_count([n], r)[0]) for r in range(3)]
        assert all(shard.length(seq) == n for shard in shards)


def test_sharded_append_checks_shapes_and_room():
    shard = ShardedLatentCache(TokenSharding(2, stripe=1), 0, 1, 2, latent_dim=L, rope_dim=R, max_seqs=1,
                               max_blocks_per_seq=4)
    seq = shard.add_sequence()
    with pytest.raises(ValueError, match="shapes"):
        shard.append([seq], np.zeros((2, L), np.float32), np.zeros((2, R), np.float32))
    shard.append([seq] * 4, np.zeros((4, L), np.float32), np.zeros((4, R), np.float32))  # 2 of them are rank 0's
    with pytest.raises(ValueError, match="new blocks"):
        shard.append([seq] * 2, np.zeros((2, L), np.float32), np.zeros((2, R), np.float32))
    assert shard.length(seq) == 4 and shard.local.length(seq) == 2  # nothing written by the failed append


@settings(max_examples=examples(40), deadline=None)
@given(sharding=shardings, lengths=st.lists(st.integers(0, 30), min_size=1, max_size=3),
       q_len=st.integers(1, 3), causal=st.booleans(), seed=st.integers(0, 2**31))
def test_merged_shards_equal_the_whole_cache(sharding, lengths, q_len, causal, seed):
    if sharding.layout == "contiguous":
        sharding = TokenSharding(sharding.world, "contiguous", stripe=-(-max(lengths + [1]) // sharding.world))
    rng = np.random.default_rng(seed)
    heads = 3
    shards, rows = make_shards(sharding, lengths, rng)
    w_kv = rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32)
    q = rng.standard_normal((len(lengths), q_len, heads, DN + R), dtype=np.float32)
    parts = [local_partials(q, shard, w_kv, seq_ids=list(range(len(lengths))), rope_dim=R, causal=causal)
             for shard in shards]
    o, lse = merge_partials(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))
    assert_equals_whole_cache(o, lse, q, w_kv, rows, lengths, causal)


def assert_equals_whole_cache(o, lse, q, w_kv, rows, lengths, causal):
    """(o, lse) equal decode over the unsharded cache of these rows and lengths."""
    cache = np.zeros((len(lengths), max(lengths + [1]), L + R), np.float32)
    for b, r in enumerate(rows):
        cache[b, :len(r)] = r
    full_o, full_lse = cumla.decode(q, cache, w_kv, rope_dim=R, seqlens=np.array(lengths, np.int32),
                                    causal=causal, return_lse=True)
    assert relative_error(o, full_o) <= 1e-5
    seen = np.isfinite(full_lse)
    assert np.array_equal(seen, np.isfinite(lse))
    np.testing.assert_allclose(lse[seen], full_lse[seen], rtol=1e-5, atol=1e-5)


class ThreadComm:
    """A communicator of ranks that are threads of one process: an all-gather
    posts this rank's array and returns everyone's, in rank order."""

    def __init__(self, rank, board, barrier):
        self.rank, self.board, self.barrier = rank, board, barrier
        self.world, self.calls = len(board), 0

    def all_gather(self, array, out=None):
        self.calls += 1
        self.board[self.rank] = np.array(array)
        self.barrier.wait()
        gathered = np.stack(self.board, out=out)
        self.barrier.wait()  # nobody posts the next exchange before all have read this one
        return gathered


@pytest.mark.parametrize("q_len, causal, planned", [(2, True, False), (1, True, True), (2, False, True)])
def test_sharded_decode_over_two_ranks_equals_the_whole_cache(q_len, causal, planned):
    """sharded_decode on every rank (threads, one all-gather each) returns the
    unsharded decode, the same bits on every rank; with a plan from the shard
    (Sq = 1 or no causal rule: one local call over the local lengths) too."""
    rng = np.random.default_rng(7)
    lengths, heads = [13, 0, 21], 2
    sharding = TokenSharding(2, "round_robin", stripe=4)
    shards, rows = make_shards(sharding, lengths, rng)
    w_kv = rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32)
    q = rng.standard_normal((len(lengths), q_len, heads, DN + R), dtype=np.float32)
    board, barrier = [None, None], threading.Barrier(2)
    comms = [ThreadComm(rank, board, barrier) for rank in range(2)]
    results = [None, None]

    def run(rank):
        plan = shards[rank].plan([0, 1, 2], heads=heads, q_len=q_len) if planned else None
        out = np.full(q.shape[:-1] + (DV,), np.nan, np.float32)
        results[rank] = sharded_decode(q, shards[rank], w_kv, comms[rank], seq_ids=[0, 1, 2], rope_dim=R,
                                       causal=causal, return_lse=True, plan=plan, out=out)
        assert results[rank][0] is out

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(c.calls == 1 for c in comms)
    (o0, lse0), (o1, lse1) = results
    assert np.array_equal(o0, o1) and np.array_equal(lse0, lse1)
    assert_equals_whole_cache(o0, lse0, q, w_kv, rows, lengths, causal)


def test_sharded_decode_refuses_a_plan_for_causal_query_tokens():
    rng = np.random.default_rng(1)
    shards, _ = make_shards(TokenSharding(1), [5], rng)
    q = np.zeros((1, 2, 1, DN + R), np.float32)
    with pytest.raises(ValueError, match="Sq = 1 or causal=False"):
        sharded_decode(q, shards[0], np.zeros((L, DN + DV), np.float32), None, seq_ids=[0], rope_dim=R,
                       plan=shards[0].plan([0], heads=1, q_len=2))


SCRIPT = textwrap.dedent("""
    import os, sys, time
    rank = int(os.environ["CUMLA_RANK"])
    with open(os.path.join(sys.argv[1], f"rank{rank}"), "w") as f:
        f.write(" ".join(os.environ[k] for k in ("CUMLA_WORLD_SIZE", "CUMLA_LOCAL_RANK", "CUMLA_NCCL_ID_FILE")))
    if sys.argv[2] == "fail" and rank == 1:
        sys.exit(3)
    if sys.argv[2] == "fail":
        time.sleep(120)  # a peer that would wait forever for the failed rank
""")


def test_launcher_starts_every_rank_with_its_environment(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    assert launch(str(script), [str(tmp_path), "ok"], 3) == 0
    seen = [(tmp_path / f"rank{r}").read_text().split() for r in range(3)]
    assert [s[:2] for s in seen] == [["3", "0"], ["3", "1"], ["3", "2"]]
    assert len({s[2] for s in seen}) == 1  # one id file for all ranks


def test_a_failed_rank_stops_the_others(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "cumla.launch", "-n", "2", str(script), str(tmp_path), "fail"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert "rank 1 exited with status 3; stopping the other ranks" in run.stderr
    assert time.monotonic() - start < 30


def test_unique_id_goes_through_the_file(tmp_path):
    from cumla._nccl import share_unique_id

    # CuPy hands the id out as bytes (older releases: a tuple of ints); it must come back as it went.
    for i, uid in enumerate((bytes([0, 255, 7] * 40), (3, -1, 4))):
        path = str(tmp_path / f"id{i}.json")
        made = share_unique_id(0, path, 1.0, lambda: uid)
        got = share_unique_id(1, path, 1.0, lambda: pytest.fail("only rank 0 makes the id"))
        assert type(got) is type(uid) and got == made == uid
    with pytest.raises(TimeoutError, match="did rank 0 start"):
        share_unique_id(1, str(tmp_path / "missing.json"), 0.05, lambda: ())


def test_a_stopped_launcher_stops_its_ranks(tmp_path):
    import os
    import signal

    script = tmp_path / "sleeper.py"
    script.write_text("import os, sys, time\n"
                      "open(os.path.join(sys.argv[1], os.environ['CUMLA_RANK']), 'w').write(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    launcher = subprocess.Popen([sys.executable, "-m", "cumla.launch", "-n", "2", str(script), str(tmp_path)])
    deadline = time.monotonic() + 30
    while not all((tmp_path / str(r)).exists() and (tmp_path / str(r)).read_text() for r in range(2)):
        assert time.monotonic() < deadline, "ranks did not start"
        time.sleep(0.05)
    pids = [int((tmp_path / str(r)).read_text()) for r in range(2)]
    launcher.send_signal(signal.SIGTERM)  # what a time limit does
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
