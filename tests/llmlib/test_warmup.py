"""Tests of llmlib.warmup: parallel health checks with exponential backoff and a deadline,
warmup queries that reach every core and never LoadGen, and warmup_shapes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from llmlib.cores.base import CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, HarnessError, RunStopped
from llmlib.reporter import LoadgenReporter
from llmlib.server import LLMServer
from llmlib.warmup import HealthCheckError, WarmupManager, warmup_picks, warmup_shapes


# --- fake cores ------------------------------------------------------------------------------------
class EchoCore(LLMCore):
    """Healthy; answers inline (first token when streaming); records what it got."""

    name = "echo"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.received: list[Request] = []
        self.warm_up_calls = 0
        self.health_calls = 0

    def _enqueue_impl(self, requests):
        for req in requests:
            self.received.append(req)
            out = np.arange(1, req.max_new_tokens + 1, dtype=np.uint32)
            if req.streaming:
                self._first_token(req.request_id, out[:1])
            self._complete(req.request_id, out, len(out))

    def health_check(self):
        self.health_calls += 1

    def warm_up(self):
        self.warm_up_calls += 1


class HangingHealthCore(EchoCore):
    """Its probe blocks (a connect to a black-holed address with no timeout of its own)."""

    name = "hanging"

    def health_check(self):
        time.sleep(1.0)


class FlakyCore(EchoCore):
    """Unhealthy for the first `failures` checks (forever if None)."""

    name = "flaky"
    failures: int | None = 2

    def health_check(self):
        self.health_calls += 1
        if self.failures is None or self.health_calls <= self.failures:
            raise BackendError(self.address, "connection refused")


class DeadCore(FlakyCore):
    name = "dead"
    failures = None


class OSErrorCore(EchoCore):
    name = "oserror"

    def health_check(self):
        raise ConnectionRefusedError("[Errno 111] Connection refused")


class FailAllCore(EchoCore):
    name = "failall"

    def _enqueue_impl(self, requests):
        for req in requests:
            self._fail(req.request_id, BackendError(self.address, "model not loaded"))


class FailHalfCore(EchoCore):
    name = "failhalf"

    def _enqueue_impl(self, requests):
        for k, req in enumerate(requests):
            if k % 2:
                self._fail(req.request_id, BackendError(self.address, "model not loaded"))
            else:
                super()._enqueue_impl([req])


class SilentCore(EchoCore):
    name = "silent"

    def _enqueue_impl(self, requests):
        self.received.extend(requests)


class HoldSamplesCore(EchoCore):
    """Answers internal (warmup) requests, holds LoadGen samples (ids >= 0) pending."""

    name = "holdsamples"

    def _enqueue_impl(self, requests):
        super()._enqueue_impl([r for r in requests if r.request_id < 0])


class FakeClock:
    """An injected clock: `sleep` records the delay and advances time."""

    def __init__(self):
        self.t = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.t += seconds


@pytest.fixture
def make_server(make_config, tiny_benchmark):
    servers = []
    config = make_config()

    def make(core_classes):
        server = LLMServer()
        server.attach([cls(settings=CoreSettings(), rank=i, sink=server)
                       for i, cls in enumerate(core_classes)])
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def fake_lg():
    calls = {"ftc": [], "qsc": []}
    lg = SimpleNamespace(
        QuerySampleResponse=lambda rid, ptr, size, n: (rid, size, n),
        FirstTokenComplete=lambda responses: calls["ftc"].extend(responses),
        QuerySamplesComplete=lambda responses: calls["qsc"].extend(responses),
    )
    return lg, calls


# --- health checks ------------------------------------------------------------------------------------
class MeetingHealthCore(EchoCore):
    """Its probe returns only once the other core's probe has started too (a barrier shared by the class)."""

    name = "meeting"
    barrier = threading.Barrier(2)

    def health_check(self):
        self.barrier.wait(timeout=10)  # BrokenBarrierError when the checks run one after the other


def test_health_checks_run_in_parallel(make_server):
    MeetingHealthCore.barrier = threading.Barrier(2)
    server = make_server([MeetingHealthCore, MeetingHealthCore])
    WarmupManager(server).health_check()  # one after the other, the first check would fail at the barrier
    assert MeetingHealthCore.barrier.n_waiting == 0 and not MeetingHealthCore.barrier.broken


def test_flaky_core_passes_after_exponential_backoff(make_server):
    server = make_server([FlakyCore, EchoCore])
    clock = FakeClock()
    WarmupManager(server, health_timeout_s=60, backoff_s=0.5, sleep=clock.sleep, clock=clock.now).health_check()
    assert clock.sleeps == [0.5, 1.0]
    assert server.cores[0].health_calls == 3 and server.cores[1].health_calls == 1


def test_backoff_doubles_up_to_its_cap_then_the_deadline_names_address_and_cause(make_server):
    server = make_server([EchoCore, DeadCore])
    clock = FakeClock()
    manager = WarmupManager(server, health_timeout_s=20, backoff_s=0.5, max_backoff_s=5.0,
                            sleep=clock.sleep, clock=clock.now)
    with pytest.raises(HealthCheckError) as info:
        manager.health_check()
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 2.5]  # the last one only up to the deadline
    assert info.value.failures == {"dead[1]": "connection refused"}
    msg = str(info.value)
    assert "dead[1]" in msg and "connection refused" in msg and "20s" in msg and "echo[0]" not in msg


def test_health_check_error_from_a_plain_exception_names_its_type(make_server):
    server = make_server([OSErrorCore])
    clock = FakeClock()
    manager = WarmupManager(server, health_timeout_s=1, sleep=clock.sleep, clock=clock.now)
    with pytest.raises(HealthCheckError, match=r"oserror\[0\]: ConnectionRefusedError.*Connection refused"):
        manager.health_check()


def test_a_health_check_that_blocks_past_the_deadline_fails_at_the_deadline(make_server):
    server = make_server([EchoCore, HangingHealthCore])
    t0 = time.monotonic()
    with pytest.raises(HealthCheckError) as info:
        WarmupManager(server, health_timeout_s=0.2).health_check()
    assert time.monotonic() - t0 < 0.8, "the deadline did not hold against a blocking probe"
    assert list(info.value.failures) == ["hanging[1]"]


def test_health_check_error_is_a_harness_error():
    assert issubclass(HealthCheckError, HarnessError)


# --- warmup queries ----------------------------------------------------------------------------------
def test_warmup_reaches_every_core_and_never_loadgen(make_server):
    server = make_server([EchoCore] * 3)
    lg, lg_calls = fake_lg()
    reporter = LoadgenReporter(lg, streaming=True)
    inputs = [np.full(n, 5, dtype=np.int32) for n in (3, 6, 9, 12, 15, 18)]
    budgets = [2, 4, 6, 8, 10, 12]
    manager = WarmupManager(server)
    collector = manager.warm_up(2, inputs, budgets, streaming=True, timeout_s=5,
                                sample_indices=[30, 31, 32, 33, 34, 35])

    assert (collector.completed, collector.failed) == (6, 0)
    # each request names the sample it was shaped from (cores that send texts look it up)
    assert all(r.sample_index == 30 + (len(r.input_tokens) // 3 - 1) for c in server.cores for r in c.received)
    for core in server.cores:
        assert len(core.received) == 2 and core.warm_up_calls == 1
        assert all(r.request_id < 0 for r in core.received)  # never a LoadGen sample id
        assert all(r.max_new_tokens == 2 * len(r.input_tokens) // 3 for r in core.received)  # shaped
    got = sorted(len(r.input_tokens) for core in server.cores for r in core.received)
    assert got == [3, 6, 9, 12, 15, 18]  # every shape used once
    assert lg_calls == {"ftc": [], "qsc": []}, "warmup responses reached LoadGen"
    assert server.num_pending == 0 and server.counts.accounted

    # the same server afterwards routes LoadGen's samples to the reporter, and only those
    server.submit([Request(7, inputs[0], 3, True), Request(8, inputs[1], 3, True)], reporter)
    assert sorted(r[0] for r in lg_calls["qsc"]) == [7, 8]
    assert sorted(r[0] for r in lg_calls["ftc"]) == [7, 8]


def test_warmup_with_a_recording_loadgen_target_in_flight(make_server, recorder):
    """A LoadGen-side request in flight during warmup gets its own outcome and no warmup ones."""
    server = make_server([HoldSamplesCore, EchoCore])
    server.submit([Request(1, np.ones(4, np.int32), 3, False)], recorder, core_index=0)  # stays pending
    collector = WarmupManager(server).warm_up(3, [np.ones(4, np.int32)], [3], streaming=False, timeout_s=5)
    assert collector.completed == 6
    assert recorder.events == []  # nothing of the warmup reached the LoadGen side
    server.cores[0]._complete(1, np.ones(3, np.uint32), 3)
    assert list(recorder.final) == [1]


def test_all_warmup_requests_failing_is_an_error_with_the_cause(make_server):
    server = make_server([FailAllCore, FailAllCore])
    with pytest.raises(HarnessError, match=r"all 4 warmup requests failed.*model not loaded"):
        WarmupManager(server).warm_up(2, [np.ones(4, np.int32)], [3], streaming=False, timeout_s=5)


def test_some_warmup_requests_failing_is_not_an_error(make_server):
    server = make_server([FailHalfCore, FailHalfCore])
    collector = WarmupManager(server).warm_up(2, [np.ones(4, np.int32)], [3], streaming=True, timeout_s=5)
    assert (collector.completed, collector.failed) == (2, 2)
    assert any("model not loaded" in e for e in collector.errors)


def test_warmup_that_never_finishes_fails_its_requests_and_raises(make_server):
    server = make_server([SilentCore, SilentCore])
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="all 2 warmup requests failed"):
        WarmupManager(server).warm_up(1, [np.ones(4, np.int32)], [3], streaming=False, timeout_s=0.1)
    assert time.monotonic() - t0 < 1.0
    assert server.num_pending == 0 and server.counts.accounted


def test_zero_warmup_queries_sends_nothing(make_server):
    server = make_server([EchoCore])
    collector = WarmupManager(server).warm_up(0, [np.ones(4, np.int32)], [3], streaming=False, timeout_s=1)
    assert collector.expected == 0 and server.cores[0].received == [] and server.counts.issued == 0


# --- warmup_shapes -------------------------------------------------------------------------------------
def _inputs(lens):
    return [np.full(n, 1, dtype=np.int32) for n in lens]


def test_warmup_shapes_spread_over_the_input_length_distribution():
    lens = [50, 10, 90, 30, 70, 20, 80, 40, 60, 100, 1]
    inputs, budgets = warmup_shapes(_inputs(lens), None, 64, 3)
    assert [len(x) for x in inputs] == [1, 50, 100]  # shortest, median, longest
    assert budgets == [64, 64, 64]
    inputs, _ = warmup_shapes(_inputs(lens), None, 64, 5)
    assert [len(x) for x in inputs] == [1, 20, 50, 70, 100]


def test_warmup_shapes_output_budgets_from_the_dataset_clipped():
    lens = [5, 1, 3]
    out = np.array([0, 500, 7])
    inputs, budgets = warmup_shapes(_inputs(lens), out, 64, 3)
    assert [len(x) for x in inputs] == [1, 3, 5]
    assert budgets == [64, 7, 1]  # sample of len 1 wants 500 (capped), len 5 wants 0 (at least 1)


def test_warmup_shapes_never_repeats_when_asked_for_more_than_there_are():
    inputs, budgets = warmup_shapes(_inputs([4, 2, 3]), None, 8, 10)
    assert [len(x) for x in inputs] == [2, 3, 4] and len(budgets) == 3


def test_warmup_shapes_of_nothing():
    assert warmup_shapes(_inputs([4, 2]), None, 8, 0) == ([], [])
    assert warmup_picks(_inputs([4, 2, 3]), 2).tolist() == [1, 0]  # the shortest and the longest sample
    assert warmup_shapes([], None, 8, 4) == ([], [])


def test_warmup_shapes_on_a_synthetic_dataset_cover_its_range(small_dataset):
    ds = small_dataset
    inputs, budgets = warmup_shapes(ds.input_tokens, ds.output_lens, 20, 8)
    got = [len(x) for x in inputs]
    assert got == sorted(got) and got[0] == int(ds.input_lens.min()) and got[-1] == int(ds.input_lens.max())
    assert all(1 <= b <= 20 for b in budgets)


# --- final causes, speaking while waiting, stopping ------------------------------------------------
class WrongServerCore(EchoCore):
    """A 404 from the wrong server: final, it cannot heal."""

    name = "wrongserver"

    def health_check(self):
        self.health_calls += 1
        raise BackendError(self.address, "GET /v1/models: HTTP 404", final=True)


def test_a_final_cause_stops_the_health_check_at_once(make_server):
    server = make_server([WrongServerCore, DeadCore])
    t0 = time.monotonic()
    with pytest.raises(HealthCheckError, match="HTTP 404 .not retried: this cannot heal."):
        WarmupManager(server, health_timeout_s=30).health_check()
    assert time.monotonic() - t0 < 5  # not the 30 s deadline the retryable core would take
    assert server.cores[0].health_calls == 1


def test_a_retryable_cause_is_retried_until_the_deadline(make_server):
    server = make_server([DeadCore])
    t0 = time.monotonic()
    with pytest.raises(HealthCheckError, match="connection refused"):
        WarmupManager(server, health_timeout_s=0.6, backoff_s=0.05).health_check()
    assert time.monotonic() - t0 >= 0.6 and server.cores[0].health_calls > 2


def test_the_health_check_says_what_it_waits_for(make_server, caplog):
    server = make_server([FlakyCore])
    server.cores[0].failures = 6
    with caplog.at_level("INFO", logger="llmlib.warmup"):
        WarmupManager(server, health_timeout_s=10, backoff_s=0.05, max_backoff_s=0.05,
                      report_every_s=0.1).health_check()
    waits = [r.getMessage() for r in caplog.records if "health check: waiting" in r.getMessage()]
    assert waits and "flaky[0] (connection refused)" in waits[0]


def test_a_stop_ends_the_health_check_wait(make_server):
    server = make_server([DeadCore])
    manager = WarmupManager(server, health_timeout_s=30, backoff_s=0.05)
    threading.Timer(0.3, manager.stop_event.set).start()
    t0 = time.monotonic()
    with pytest.raises(RunStopped):
        manager.health_check()
    assert time.monotonic() - t0 < 5


def test_warm_up_speaks_while_waiting_and_a_stop_ends_it(make_server, caplog):
    server = make_server([SilentCore])
    manager = WarmupManager(server, report_every_s=0.1)

    def stop():
        manager.stop_event.set()
        server.fail_pending("interrupted")

    threading.Timer(0.35, stop).start()
    with caplog.at_level("INFO", logger="llmlib.warmup"), pytest.raises(RunStopped):
        manager.warm_up(2, [np.ones(4, np.int32)], [3], streaming=False, timeout_s=30)
    assert any("warm-up: 0 of 2 requests done" in r.getMessage() for r in caplog.records)
    assert server.num_pending == 0
