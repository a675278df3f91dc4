"""Cost model, memory report, CLI, plans on NumPy, combine, the example script and bench/part_costs.py."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cumla
from bench_modules import bench_module
from cumla.__main__ import main as cli

ROOT = Path(__file__).resolve().parent.parent


def test_cost_matches_design_formulas_and_crossover():
    c = cumla.cost(batch=2, seq_len=4096, heads=128, q_len=1)
    L, R, Dn, Dv, S, H = 512, 64, 128, 128, 4096, 128
    assert c.absorbed_flops == 2 * H * (2 * L * Dn + S * 2 * (L + R) + S * 2 * L + 2 * L * Dv)
    assert c.decompressed_flops == 2 * (S * 2 * L * H * (Dn + Dv) + H * S * (2 * (Dn + R) + 2 * Dv))
    assert c.bytes == 2 * (2 * (S * (L + R) + H * (Dn + R + Dv)) + L * H * (Dn + Dv))
    # DESIGN: absorbed wins below about Sq ~ 170 for DeepSeek shapes, decompressed above.
    assert cumla.cost(batch=1, seq_len=4096, heads=128, q_len=150).best == "absorbed"
    assert cumla.cost(batch=1, seq_len=4096, heads=128, q_len=190).best == "decompressed"
    with pytest.raises(ValueError, match="heads"):
        cumla.cost(batch=1, seq_len=1, heads=-1)


def test_memory_report_counts_k_and_v_for_mha():
    r = cumla.memory_report(heads=4, head_dim=8, latent=16, rope=4, seq_len=10, batch=3, layers=2, dtype="float16")
    assert r.mha_bytes == 2 * 4 * 8 * 10 * 3 * 2 * 2
    assert r.mla_bytes == (16 + 4) * 10 * 3 * 2 * 2
    assert r.ratio == pytest.approx(64 / 20)
    with pytest.raises(ValueError, match="dtype"):
        cumla.memory_report(dtype="int4")
    with pytest.raises(ValueError, match="heads"):
        cumla.memory_report(heads=-2)


def test_cli_info(capsys):
    assert cli(["info", "--heads", "128", "--head-dim", "128", "--seq-len", "4096", "--layers", "61"]) == 0
    out = capsys.readouterr().out
    assert "56.89x" in out and "MHA" in out and "MLA" in out
    assert cli(["info", "--heads", "-3"]) == 2


def test_cli_as_module():
    done = subprocess.run([sys.executable, "-m", "cumla", "info", "--heads", "16"], capture_output=True, text=True)
    assert done.returncode == 0 and "ratio" in done.stdout


def test_plan_on_numpy_is_checked_then_ignored():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 24), dtype=np.float32)
    cache = rng.standard_normal((2, 30, 24), dtype=np.float32)
    lengths = np.array([30, 7], np.int32)
    plan = cumla.plan(lengths, heads=4, v_dim=16)
    a = cumla.latent_attention(q, cache, v_dim=16, scale=0.2, seqlens=lengths, plan=plan)
    b = cumla.latent_attention(q, cache, v_dim=16, scale=0.2, seqlens=lengths)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="plan was made for"):
        cumla.latent_attention(q, cache, v_dim=8, scale=0.2, seqlens=lengths, plan=plan)
    with pytest.raises(TypeError, match="plan must come from cumla.plan"):
        cumla.latent_attention(q, cache, v_dim=16, scale=0.2, seqlens=lengths, plan="fast")
    with pytest.raises(TypeError, match="seqlens must have dtype int32"):
        cumla.plan(lengths.astype(np.int64), heads=4)
    with pytest.raises(ValueError, match="heads"):
        cumla.plan(lengths, heads=0)
    # An FP8 layout only sizes GPU plans; on NumPy it is checked, then ignored.
    assert cumla.plan(lengths, heads=4, v_dim=16, cache_format=cumla.fp8_format(16, 8, 8)).num_parts == 1
    with pytest.raises(TypeError, match="cache_format must come from cumla.fp8_format"):
        cumla.plan(lengths, heads=4, cache_format="e4m3")
    # num_parts: CTA columns, at most a launch grid's y dimension; checked on
    # NumPy too, where a plan has one part.
    assert cumla.plan(lengths, heads=4, num_parts=65535).num_parts == 1
    for bad in (0, -3, 65536, True, 2.0, "8"):
        with pytest.raises(ValueError, match=r"num_parts must be an int in \[1, 65535\]"):
            cumla.plan(lengths, heads=4, num_parts=bad)


def test_decode_plan_means_absorbed():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 3, 2, 24), dtype=np.float32)
    cache = rng.standard_normal((2, 30, 24), dtype=np.float32)
    w = rng.standard_normal((16, 2 * 24), dtype=np.float32)
    plan = cumla.plan(np.array([30, 30], np.int32), heads=2, q_len=3, v_dim=16)
    o = cumla.decode(q, cache, w, rope_dim=8, plan=plan)
    np.testing.assert_allclose(o, cumla.decode(q, cache, w, rope_dim=8, strategy="absorbed"), rtol=1e-6)
    with pytest.raises(ValueError, match="plan schedules the absorbed strategy"):
        cumla.decode(q, cache, w, rope_dim=8, plan=plan, strategy="decompressed")


def test_combine_of_empty_parts():
    o, lse = cumla.combine([np.zeros((2, 3)), np.zeros((2, 3))], [np.full(2, -np.inf)] * 2)
    assert np.all(o == 0) and np.isneginf(lse).all()


def test_combine_keeps_a_nan_part():
    part = np.array([[np.nan] * 3, [0.0] * 3])  # row 0 NaN, row 1 empty (zeros, LSE -inf)
    o, lse = cumla.combine([np.ones((2, 3)), part], [np.zeros(2), np.array([np.nan, -np.inf])])
    assert np.isnan(o[0]).all() and np.isnan(lse[0])
    assert np.all(o[1] == 1) and lse[1] == 0


def test_example_runs_on_the_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "mla_decode.py"), "--cpu", "--seq-len", "200"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "-> OK" in done.stdout and "strategy='auto' picks: absorbed" in done.stdout


@pytest.mark.parametrize("fp8", [False, True])
def test_serve_loop_runs_on_the_cpu(fp8):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "serve_loop.py"), "--cpu", "--steps", "20",
                           "--batch", "3", "--heads", "4", "--max-prompt", "70"] + (["--fp8"] if fp8 else []),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tokens/s" in done.stdout and "latent cache pool" in done.stdout
    assert ("FP8 rows" in done.stdout) == fp8


def test_plan_update_checks_lengths():
    plan = cumla.plan(np.array([3, 4], np.int32), heads=2, v_dim=8)
    assert plan.update(np.array([5, 6], np.int32)) is plan
    with pytest.raises(ValueError, match=r"shape \(B=2,\)"):
        plan.update(np.array([1, 2, 3], np.int32))
    with pytest.raises(TypeError, match="int32"):
        plan.update(np.array([1, 2], np.int64))


def test_example_needs_no_test_dependencies():
    """`pip install .` has no hypothesis: the example (and cumla.testing's checks) must not need it."""
    code = ("import sys, runpy; sys.modules['hypothesis'] = None; "
            f"sys.argv = ['mla_decode.py', '--cpu', '--seq-len', '64']; "
            f"runpy.run_path({str(ROOT / 'examples' / 'mla_decode.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "-> OK" in done.stdout, done.stderr


def test_example_counts_scale_with_the_environment(monkeypatch):
    from cumla.testing import examples

    monkeypatch.delenv("CUMLA_EXAMPLE_SCALE", raising=False)
    assert examples(40) == 40
    monkeypatch.setenv("CUMLA_EXAMPLE_SCALE", "3")
    assert examples(40) == 120
    for bad in ("0", "-2", "1.5", "many", "", "\u00b2"):
        monkeypatch.setenv("CUMLA_EXAMPLE_SCALE", bad)
        with pytest.raises(ValueError, match="positive integer"):
            examples(40)


def test_part_costs_counts_pairs_and_fits_segment_costs():
    """bench/part_costs.py: a part's pairs round each segment's tiles up (the
    kernel walks whole pairs), the plan's cost of a part counts them, the fit
    recovers known costs, and the summary names the CTA that ended last and
    the part the plan rates busiest."""
    costs = bench_module("part_costs")
    lengths = np.array([5 * 64, 3 * 64 + 1, 2 * 64])  # 5, 4 and 2 tiles of 64 tokens
    work = np.array([[0, 0, 1, 2],   # request 0 whole (5 tiles: 3 pairs), request 1's tiles 0-1
                     [1, 2, 2, 2],   # request 1's tiles 2-3, request 2 whole
                     [3, 0, 3, 0]])  # past the batch: no work
    assert costs.part_work(work, lengths, 64).tolist() == [[7, 4, 2], [4, 2, 2], [0, 0, 0]]

    pairs, segments = np.array([4, 2, 9, 3, 7]), np.array([2, 2, 1, 3, 1])
    fit = costs.fit_costs(2.0 * pairs + 3.0 * segments + 1.0, pairs, segments)
    assert fit["us_per_pair"] == pytest.approx(2.0) and fit["us_per_segment"] == pytest.approx(3.0)
    assert fit["us_fixed"] == pytest.approx(1.0) and fit["pairs_per_segment"] == pytest.approx(1.5)
    assert fit["r2"] == pytest.approx(1.0)

    # The plan's cost counts whole pairs: three one-tile segments (3 pairs)
    # outweigh 8 tiles in 2 segments, though they hold fewer tiles.
    assert costs.planned_cost([[3, 3, 3], [8, 4, 2]]).tolist() == [15, 14]
    parts = np.array([[7, 4, 2], [4, 2, 2]])  # part 0 the busiest: 4 pairs + 2 segments, 2 x 4 + 2 x 3
    spans = np.array([[0, 9000], [100, 9500], [0, 12000], [50, 6000]])  # two row-group CTAs a part
    summary = costs.batch_summary("t", spans, parts)
    assert summary["last"] == {"cta": 2, "pairs": 2, "segments": 2, "us": 12.0}
    assert summary["busiest"] == {"cta": 1, "pairs": 4, "segments": 2, "us": 9.4}
    assert summary["span_us"] == 12.0 and summary["median_us"] == pytest.approx(9.2)


def test_part_costs_times_the_combine_from_the_attention_kernels_end():
    """bench/part_costs.py's combine reading: block starts, the first release
    and the last end from the attention kernel's last CTA end, merges timed
    only for blocks that were released and merged."""
    costs = bench_module("part_costs")
    attention = np.array([[0, 90_000], [0, 100_000]])  # ns: the last CTA ends at 100 µs
    combine = np.zeros((6, 3), np.int64)
    combine[0] = [99_000, 101_000, 103_000]   # started early, released 1 µs after, merged 2 µs
    combine[1] = [100_500, 101_500, 105_000]  # merged 3.5 µs
    combine[2] = [100_200, 0, 100_300]        # nothing to merge: left before the wait
    combine[3] = [101_000, 102_000, 102_000]  # released with nothing to merge
    summary = costs.combine_summary(attention, combine)
    assert summary["blocks"] == 4 and summary["released_blocks"] == 3
    assert summary["first_start_us"] == pytest.approx(-1.0) and summary["last_start_us"] == pytest.approx(1.0)
    assert summary["first_release_us"] == pytest.approx(1.0) and summary["last_end_us"] == pytest.approx(5.0)
    assert summary["median_merge_us"] == pytest.approx(2.75) and summary["longest_merge_us"] == pytest.approx(3.5)
    assert costs.combine_summary(attention, np.zeros((3, 3), np.int64)) == {"blocks": 0}


def test_part_costs_finds_the_sms_that_are_slow_every_call():
    """bench/part_costs.py's per-SM reading: an SM 10% slower in every call
    leads the list with a call-to-call correlation near 1; times that only
    differ by chance give none; CTAs are compared within their work."""
    costs = bench_module("part_costs")
    rng = np.random.default_rng(0)
    n = 32
    work = np.array([[2, 1, 1]] * (n // 2) + [[4, 2, 1]] * (n // 2))  # (tiles, pairs, segments): two kinds of part

    def call(slow_sm):
        sms = rng.permutation(n)
        base = np.where(np.arange(n) < n // 2, 1000.0, 2000.0) * (1 + 0.005 * rng.standard_normal(n))
        times = base * np.where(sms == slow_sm, 1.1, 1.0)
        start = rng.integers(0, 50, n)
        return np.column_stack([start, start + times, np.zeros(n), np.zeros(n), sms]).astype(np.int64)

    slow = costs.sm_consistency([call(3) for _ in range(4)], work)
    assert slow["slowest_sms"][0][0] == 3 and slow["slowest_sms"][0][1] == pytest.approx(1.1, abs=0.02)
    assert slow["call_to_call_correlation"] > 0.8 and slow["sms"] == n
    chance = costs.sm_consistency([call(-1) for _ in range(4)], work)
    assert abs(chance["call_to_call_correlation"]) < 0.4
    assert chance["relative_spread"][1] < 1.05
