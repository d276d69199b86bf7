import statistics
import time

import pytest
import torch
import torch.nn as nn

from torchslim import measure


def test_summarize_statistics_of_known_samples():
    xs = [float(i) for i in range(1, 101)]  # 1..100 ms
    t = measure.summarize(xs, first_call_ms=500.0, batch_size=4)
    assert t.n == 100
    assert t.median_ms == pytest.approx(50.5)
    assert t.p90_ms == pytest.approx(90.1, abs=0.2)
    assert t.iqr_ms == pytest.approx(49.5, abs=0.6)
    lo, hi = t.ci95_ms
    assert lo < t.median_ms < hi and hi - lo < 25  # order-statistic CI around the median
    assert t.throughput == pytest.approx(4 * 1000 / 50.5)
    assert t.first_call_ms == 500.0
    assert t.stdev_ms == pytest.approx(statistics.stdev(xs))


def test_median_ci_widens_with_fewer_samples():
    many = measure.median_ci(sorted(float(i) for i in range(1000)))
    few = measure.median_ci(sorted(float(i) for i in range(0, 1000, 50)))
    assert (many[1] - many[0]) < (few[1] - few[0])


def test_interleaved_runs_every_function_each_round_and_sees_a_real_difference():
    calls = []

    def fast():
        calls.append("fast")
        time.sleep(0.001)

    def slow():
        calls.append("slow")
        time.sleep(0.004)

    samples = measure.interleaved({"fast": fast, "slow": slow}, rounds=4, target_round_ms=8, warmup=1)
    assert len(samples["fast"]) >= 4 and len(samples["slow"]) >= 4
    assert statistics.median(samples["slow"]) > 2 * statistics.median(samples["fast"])
    # round-robin: both appear in the first and the last part of the call sequence
    assert {"fast", "slow"} <= set(calls[2:10]) and {"fast", "slow"} <= set(calls[-10:])


def test_settled_turns_pause_and_make_one_untimed_call_first():
    """settle_ms (engines timed beside PyTorch): before each turn a pause and one untimed call, so
    the timed calls never start while another function's worker threads still spin."""
    calls, stamps = {"a": 0, "b": 0}, []

    def make(name):
        def fn():
            calls[name] += 1
            stamps.append((name, time.perf_counter()))
        return fn

    samples = measure.interleaved({"a": make("a"), "b": make("b")}, rounds=3, target_round_ms=0.001, warmup=1,
                                  max_iters=1, settle_ms=20)
    assert [len(samples[n]) for n in "ab"] == [3, 3]
    assert calls == {"a": 1 + 3 * 2, "b": 1 + 3 * 2}  # warm-up, then per turn one untimed + one timed call
    # every change of function is preceded by the pause
    switches = [t1 - t0 for (n0, t0), (n1, t1) in zip(stamps[2:], stamps[3:]) if n0 != n1]
    assert switches and min(switches) >= 0.015


def test_num_threads_is_scoped():
    before = torch.get_num_threads()
    with measure.num_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_peak_memory_sees_a_large_temporary():
    def allocate():
        x = torch.ones(64 * 1024 * 1024 // 4 * 3)  # 192 MiB, touched
        return float(x[-1])

    peak = measure.peak_memory(allocate, calls=1)
    assert peak["peak_bytes"] > 150 * 1024 * 1024
    small = measure.peak_memory(lambda: torch.ones(10).sum(), calls=1)
    assert small["peak_bytes"] < 50 * 1024 * 1024


def test_serialized_bytes_halves_in_bf16():
    m = nn.Linear(512, 512)
    fp32 = measure.serialized_bytes(m)
    bf16 = measure.serialized_bytes(m.to(torch.bfloat16))
    assert fp32 > 512 * 512 * 4
    assert bf16 == pytest.approx(fp32 / 2, rel=0.05)
    assert measure.parameter_bytes(m) == (512 * 512 + 512) * 2
