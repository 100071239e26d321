"""The self-measurement recorder: histogram quantiles within their resolution, time bins that stay
bounded over any run length, the per-sample figures, the distortion warnings, plain progress lines."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

from llmlib.report.recorder import (
    HIST_BINS,
    MAX_TIME_BINS,
    LogHistogram,
    RunRecorder,
    TimeBins,
    distortion_warnings,
    self_measurement,
)
from llmlib.server import LLMServer, Progress


def test_histogram_quantiles_within_resolution():
    rng = np.random.default_rng(1)
    values = (rng.lognormal(mean=17, sigma=1.2, size=50_000)).astype(np.int64)  # ~24 ms median, in ns
    h = LogHistogram()
    h.add(values[:20_000])
    h.add(values[20_000:])
    assert h.n == values.size and h.max == values.max()
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = np.quantile(values, q, method="inverted_cdf")
        got = h.quantile(q)
        assert exact <= got <= exact * 1.024, (q, exact, got)
    again = LogHistogram.from_json(h.to_json())
    assert again.quantile(0.99) == h.quantile(0.99)
    xs, ys = h.cdf()
    assert np.all(np.diff(xs) >= 0) and ys[-1] == pytest.approx(1.0)


def test_histogram_small_values_and_empty():
    h = LogHistogram()
    assert h.quantile(0.5) is None
    h.add(np.array([10, 20, 5_000_000]))  # two below 1 us
    assert h.underflow == 2
    assert h.quantile(0.5) == 1_000
    assert h.quantile(1.0) == 5_000_000


def test_time_bins_stay_bounded_and_keep_totals():
    bins = TimeBins(n_cores=3)
    rng = np.random.default_rng(2)
    total = 0
    for hour in range(1, 30):  # a run of 29 hours in 0.1 s bins would need ~1M bins
        t = rng.integers(0, hour * 3600 * 10**9, size=1000)
        bins.add("completed", t)
        bins.add_core(t, rng.integers(0, 3, size=t.size), np.full(t.size, 1e6))
        total += t.size
    assert bins.data["completed"].size <= MAX_TIME_BINS
    assert bins.data["completed"].sum() == total
    assert bins.core_completed.sum() == total
    assert bins.core_completed.shape[1] == bins.data["completed"].size


def test_recorder_folds_samples_and_stays_fixed_size():
    clock_now = [0]
    rec = RunRecorder(n_cores=2, clock=lambda: clock_now[0], fold_interval_s=60)
    try:
        ms = 1_000_000
        for i in range(10_000):
            t_issue = i * ms  # 1,000 samples/s for 10 s
            if i % 100 == 0:
                rec.on_fail((t_issue, 0, t_issue + 5 * ms, -1, i % 2, t_issue + 5 * ms + 1_000))
                continue
            rec.on_complete((t_issue, t_issue + 20 * ms, t_issue + 20 * ms + 31 * 2 * ms, 32, i % 2,
                             t_issue + 82 * ms + 30_000))
        rec.fold()
        sizes = {k: h.counts.size for k, h in rec.hist.items()}
        for _ in range(5):  # more data: the same memory
            for i in range(1000):
                rec.on_complete((i, i + 1, i + 2, 2, 0, i + 3))
            rec.fold()
        assert {k: h.counts.size for k, h in rec.hist.items()} == sizes == {k: HIST_BINS for k in sizes}
    finally:
        rec.close()
    stats = rec.to_json()
    assert stats["completed"] == 9_900 + 5_000 and stats["failed"] == 100
    ttft = LogHistogram.from_json(stats["histograms"]["ttft"])
    assert 20e6 <= ttft.quantile(0.5) <= 20e6 * 1.024
    tpot = LogHistogram.from_json(stats["histograms"]["tpot"])
    assert 2e6 <= tpot.quantile(0.99) <= 2e6 * 1.024
    added = LogHistogram.from_json(stats["histograms"]["added"])
    assert 30_000 <= added.quantile(0.5) <= 30_000 * 1.024
    tb = stats["time_bins"]
    assert sum(tb["failed"]) == 100 and sum(tb["issued"]) == 15_000
    assert sum(tb["tokens"]) == 9_900 * 32 + 5_000 * 2
    assert [sum(c) for c in tb["core_completed"]] == [4_900 + 5_000, 5_000]  # failures were all on core 0


def test_server_calls_the_recorder_once_per_outcome(make_dummy, recorder):
    """The LLMServer hook: one record per completion or failure, with the core index and a report time
    taken after the target returned."""
    server = LLMServer(policy="round_robin")
    server.attach([make_dummy(server, rank=r, dummy_zero_latency=True) for r in range(2)])
    from llmlib.cores.base import Request

    got = []
    server.recorder = got.append
    server.recorder_fail = got.append
    reqs = [Request(i, np.arange(4, dtype=np.int32), 8, True) for i in range(6)]
    server.submit(reqs, recorder)
    server.on_error(999, RuntimeError("unknown"))  # not pending: no record
    assert len(got) == 6
    assert sorted(r[4] for r in got) == [0, 0, 0, 1, 1, 1]
    for t_issue, t_first, t_core, n, _, t_rep in got:
        assert t_issue <= t_first <= t_core <= t_rep and n > 0


def test_distortion_warnings_fire_only_when_large():
    lg = {"target_qps": 100.0, "result_scheduled_samples_per_second": 100.0, "result_samples_per_second": 99.0}
    quiet = {"added_latency_ms": {"p99_ms": 0.05}, "schedule_delay_ms": {"p99_ms": 0.2},
             "target_qps": 100.0, "scheduled_qps": 100.0, "achieved_qps": 99.0, "harness_cpu_cores": 0.3}
    assert distortion_warnings(quiet, scenario="Server", ttft_limit_ms=2000, loadgen=lg) == []
    loud = dict(quiet, added_latency_ms={"p99_ms": 30.0}, schedule_delay_ms={"p99_ms": 25.0}, achieved_qps=80.0,
                harness_cpu_cores=0.97)
    warnings = distortion_warnings(loud, scenario="Server", ttft_limit_ms=2000, loadgen=lg)
    assert len(warnings) == 4
    assert any("harness-added latency" in w for w in warnings)
    assert any("issued queries late" in w for w in warnings)
    assert any("did not keep up" in w for w in warnings)
    assert any("CPU cores" in w for w in warnings)


def test_self_measurement_from_stats():
    rec = RunRecorder(n_cores=1, clock=lambda: 0, fold_interval_s=60)
    rec.on_complete((0, 10, 20, 3, 0, 50_000_000))  # 50 ms between the core and LoadGen
    rec.close()
    m = self_measurement(rec.to_json(), {"p50_ms": 0.1, "p99_ms": 0.2, "max_ms": 0.3}, {"target_qps": 10.0},
                         scenario="Server", ttft_limit_ms=450)
    assert m["added_latency_ms"]["p99_ms"] == pytest.approx(50, rel=0.03)
    assert m["schedule_delay_ms"]["max_ms"] == 0.3
    assert any("harness-added latency" in w for w in m["warnings"])


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_prints_plain_lines_when_not_a_terminal():
    server = LLMServer()
    stream = _Pipe()
    done = threading.Event()
    progress = Progress(server, total=lambda: 10, desc="tiny Server", interval_s=0.05, stream=stream,
                        plain_every_s=0.1)
    server.counts.completed = 4
    server.counts.output_tokens = 128
    done.wait(0.4)
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.strip().splitlines()
    assert len(lines) >= 2
    assert lines[-1].startswith("tiny Server: 4/10 samples")
    assert "tok/s" in lines[-1]
