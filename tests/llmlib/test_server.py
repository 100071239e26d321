"""Tests of llmlib.server.LLMServer: scheduling policies, per-core statistics, the exactly-once
guard under injected faults, the request watchdog, fail_pending and flush.

Backends are faked at the process boundary: small LLMCore subclasses defined here.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from llmlib.cores.base import CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, ConfigError, FlushTimeoutError
from llmlib.server import LATENCY_WINDOW, LLMServer, make_policy, mask_variable_parts


# --- fake cores -------------------------------------------------------------------------------------
def _tokens(req: Request) -> np.ndarray:
    """A deterministic output of req.max_new_tokens tokens."""
    return np.arange(1, req.max_new_tokens + 1, dtype=np.uint32)


class HoldCore(LLMCore):
    """Never answers by itself: the test completes (or not) what it received."""

    name = "hold"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.received: list[Request] = []

    def _enqueue_impl(self, requests):
        self.received.extend(requests)

    def health_check(self):
        pass

    def finish(self, request_id: int, n_tokens: int = 3) -> None:
        self._complete(request_id, np.arange(n_tokens, dtype=np.uint32), n_tokens)


class EchoCore(LLMCore):
    """Answers inline: first token (when streaming) then the whole output."""

    name = "echo"

    def _enqueue_impl(self, requests):
        for req in requests:
            out = _tokens(req)
            if req.streaming:
                self._first_token(req.request_id, out[:1])
            self._complete(req.request_id, out, len(out))

    def health_check(self):
        pass


class FailingCore(EchoCore):
    """Fails every second request it receives (the error is data), answers the others."""

    name = "failing"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = 0

    def _enqueue_impl(self, requests):
        good = []
        for req in requests:
            self.seen += 1
            if self.seen % 2 == 0:
                self._fail(req.request_id, BackendError(self.address, "injected: every second request"))
            else:
                good.append(req)
        super()._enqueue_impl(good)


class DuplicatingCore(EchoCore):
    """Delivers every outcome twice, and a stray first token after the final response."""

    name = "duplicating"

    def _enqueue_impl(self, requests):
        super()._enqueue_impl(requests)
        for req in requests:
            out = _tokens(req)
            self._complete(req.request_id, out, len(out))
            self._fail(req.request_id, BackendError(self.address, "late error"))
            self._first_token(req.request_id, out[:1])


class RawDuplicatingCore(EchoCore):
    """A misbehaving backend that bypasses LLMCore's guard: calls the sink twice directly."""

    name = "raw_duplicating"

    def _enqueue_impl(self, requests):
        for req in requests:
            out = _tokens(req)
            if req.streaming:
                self.sink.on_first_token(req.request_id, out[:1])
            self.sink.on_complete(req.request_id, out, len(out))
            self.sink.on_complete(req.request_id, out, len(out))
            self.sink.on_error(req.request_id, BackendError(self.address, "late error"))
            self.sink.on_first_token(req.request_id, out[:1])
            self._pending.pop(req.request_id, None)


class NoFirstTokenCore(EchoCore):
    """Completes streaming requests without ever sending a first token."""

    name = "no_first_token"

    def _enqueue_impl(self, requests):
        for req in requests:
            out = _tokens(req)
            self._complete(req.request_id, out, len(out))


class RaisingEnqueueCore(EchoCore):
    """Its submit path raises."""

    name = "raising"

    def _enqueue_impl(self, requests):
        raise RuntimeError("submit refused: queue full")


class ThreadedCore(EchoCore):
    """Answers from its own thread after `delay_s` (joined on stop)."""

    name = "threaded"
    delay_s = 0.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.threads: list[threading.Thread] = []

    def _enqueue_impl(self, requests):
        reqs = list(requests)

        def answer():
            if self.delay_s:
                time.sleep(self.delay_s)
            EchoCore._enqueue_impl(self, reqs)

        t = threading.Thread(target=answer, name=f"threaded-core-{self.rank}")
        self.threads.append(t)
        t.start()

    def stop(self):
        for t in self.threads:
            t.join(timeout=5)
        super().stop()


class DelayedThreadedCore(ThreadedCore):
    delay_s = 0.05


# --- helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def make_server(make_config, tiny_benchmark):
    """make_server([CoreCls, ...], policy=..., request_timeout_s=...) -> server with those cores."""
    servers = []
    config = make_config()

    def make(core_classes, **kwargs):
        server = LLMServer(**kwargs)
        cores = [cls(settings=CoreSettings(), rank=i, sink=server)
                 for i, cls in enumerate(core_classes)]
        server.attach(cores)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def req(rid: int, input_len: int = 4, max_new: int = 3, streaming: bool = False) -> Request:
    return Request(rid, np.full(input_len, 7, dtype=np.int32), max_new, streaming, sample_index=rid)


def cores_of(server: LLMServer, rids) -> list[int]:
    """The core index each request was sent to (from what each core received)."""
    where = {}
    for ci, core in enumerate(server.cores):
        for r in core.received:
            where[r.request_id] = ci
    return [where[rid] for rid in rids]


def assert_exactly_once(target, rids, streaming=()) -> None:
    """Every request got one complete-or-fail; at most one first token, and before the final; the
    `streaming` ones exactly one first token (the server's guarantee, whatever the core did)."""
    rids = list(rids)
    assert {rid: target.final[rid] for rid in rids} == {rid: 1 for rid in rids}
    assert set(target.final) == set(rids), "outcomes for requests never submitted"
    assert all(target.first[rid] <= 1 for rid in rids)
    assert all(target.first[rid] == 1 for rid in streaming), "a streaming request without its first token"
    order = {}
    for i, (kind, rid, *_rest) in enumerate(target.events):
        order.setdefault((kind == "first", rid), i)
    for rid in rids:
        if (True, rid) in order:
            assert order[(True, rid)] < order[(False, rid)], f"first token of {rid} after its final"


# --- scheduling policies ------------------------------------------------------------------------------
def test_round_robin_cycles_regardless_of_load(make_server, recorder):
    server = make_server([HoldCore] * 3, policy="round_robin")
    server.submit([req(i) for i in range(4)], recorder)
    server.cores[0].finish(0)  # core 0 now idle: round robin must not care
    server.submit([req(i) for i in range(4, 8)], recorder)
    assert cores_of(server, range(8)) == [0, 1, 2, 0, 1, 2, 0, 1]


def test_load_balancing_picks_least_pending_requests(make_server, recorder):
    server = make_server([HoldCore] * 3, policy="load_balancing")
    server.submit([req(i) for i in range(3)], recorder)
    assert cores_of(server, range(3)) == [0, 1, 2]  # ties spread over idle cores
    server.cores[1].finish(1)  # core 1 has the fewest pending now
    server.submit([req(10)], recorder)
    assert cores_of(server, [10]) == [1]
    assert server.core_pending == [1, 1, 1]
    server.submit([req(11), req(12), req(13)], recorder)  # ties again: all three used
    assert sorted(cores_of(server, [11, 12, 13])) == [0, 1, 2]


@pytest.mark.parametrize("policy", ["load_balancing", "token_aware"])
def test_ties_between_idle_cores_rotate(make_server, recorder, policy):
    """At low load every request finds all cores idle: they must share the work, not core 0."""
    server = make_server([HoldCore] * 3, policy=policy)
    for rid in range(6):
        server.submit([req(rid)], recorder)
        ci = cores_of(server, [rid])[0]
        server.cores[ci].finish(rid)
    assert cores_of(server, range(6)) == [0, 1, 2, 0, 1, 2]


def test_load_balancing_ignores_request_size_token_aware_does_not(make_server, recorder):
    long = req(0, input_len=1000, max_new=100)
    shorts = [req(i, input_len=10, max_new=10) for i in range(1, 7)]

    lb = make_server([HoldCore] * 2, policy="load_balancing")
    lb.submit([long], recorder)
    lb.submit(shorts, recorder)
    assert cores_of(lb, range(7)) == [0, 1, 0, 1, 0, 1, 0]

    ta = make_server([HoldCore] * 2, policy="token_aware")
    ta.submit([long], recorder)
    for s in shorts:  # one at a time, like LoadGen's Server scenario
        ta.submit([s], recorder)
    assert cores_of(ta, range(7)) == [0, 1, 1, 1, 1, 1, 1]
    assert ta.core_pending_tokens == [1100, 6 * 20]


def test_submit_one_applies_the_policy_like_submit(make_server, recorder):
    """LoadGen's Server scenario issues one sample at a time through submit_one."""
    lb = make_server([HoldCore] * 2, policy="load_balancing")
    ta = make_server([HoldCore] * 2, policy="token_aware")
    rr = make_server([HoldCore] * 3, policy="round_robin")
    for server in (lb, ta, rr):
        server.submit_one(req(0, input_len=1000, max_new=100), recorder)
        for i in range(1, 5):
            server.submit_one(req(i, input_len=10, max_new=10), recorder)
    assert cores_of(lb, range(5)) == [0, 1, 0, 1, 0]
    assert cores_of(ta, range(5)) == [0, 1, 1, 1, 1]
    assert cores_of(rr, range(5)) == [0, 1, 2, 0, 1]
    assert lb.counts.issued == 5 and lb.core_pending == [3, 2] and ta.core_pending_tokens == [1100, 80]


def test_submit_one_outcomes_exactly_once(make_server, recorder):
    server = make_server([FailingCore, DuplicatingCore, RaisingEnqueueCore, DelayedThreadedCore])
    for i in range(80):
        server.submit_one(req(i, streaming=bool(i % 2)), recorder)
    server.flush(5.0)
    assert_exactly_once(recorder, range(80))
    assert server.counts.issued == 80 and server.counts.accounted


def test_token_aware_counts_input_plus_max_new_tokens(make_server, recorder):
    server = make_server([HoldCore] * 2, policy="token_aware")
    # core 0: 50 input + 10 new = 60; core 1: 5 input + 50 new = 55 -> next goes to core 1
    server.submit([req(0, input_len=50, max_new=10)], recorder)
    server.submit([req(1, input_len=5, max_new=50)], recorder)
    server.submit([req(2, input_len=1, max_new=1)], recorder)
    assert cores_of(server, range(3)) == [0, 1, 1]
    server.cores[0].finish(0)
    assert server.core_pending_tokens == [0, 55 + 2]
    server.submit([req(3)], recorder)
    assert cores_of(server, [3]) == [0]


def test_unknown_policy_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="round_robin.*load_balancing.*token_aware"):
        make_policy("least_busy", 2)


def test_per_core_stats_after_a_mixed_run(make_server, recorder):
    server = make_server([FailingCore, DuplicatingCore, RaisingEnqueueCore, HoldCore], policy="round_robin")
    rids = list(range(40))
    server.submit([req(i, max_new=5) for i in rids], recorder)
    for r in list(server.cores[3].received)[:6]:  # core 3 answers 6 of its 10, 4 stay pending
        server.cores[3].finish(r.request_id, n_tokens=2)
    stats = server.core_stats()
    # core 0 fails half; core 1 completes all (its duplicates dropped); core 2 fails all at enqueue
    assert [(s["completed"], s["failed"], s["pending"], s["output_tokens"]) for s in stats] == [
        (5, 5, 0, 25), (10, 0, 0, 50), (0, 10, 0, 0), (6, 0, 4, 12)]
    assert "duplicates_dropped" not in stats[1]  # the server counts them, not per core
    # core 1: per request the second complete, the late fail and the stray first token
    assert server.counts.duplicates_dropped == 30
    assert server.counts.issued == 40
    assert (server.counts.completed, server.counts.failed, server.counts.output_tokens) == (21, 15, 87)
    assert not server.counts.accounted and server.num_pending == 4
    assert server.core_pending_tokens[3] == 4 * (4 + 5)


# --- exactly once ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("core_cls", [FailingCore, DuplicatingCore, RawDuplicatingCore, NoFirstTokenCore,
                                      RaisingEnqueueCore, ThreadedCore])
@pytest.mark.parametrize("streaming", [False, True])
def test_every_request_gets_exactly_one_outcome(make_server, recorder, core_cls, streaming):
    server = make_server([core_cls] * 2)
    rids = list(range(100, 160))
    for start in range(0, len(rids), 7):
        server.submit([req(i, streaming=streaming) for i in rids[start:start + 7]], recorder)
    server.flush(5.0)
    assert_exactly_once(recorder, rids, rids if streaming else ())
    c = server.counts
    assert c.issued == 60 == c.completed + c.failed and c.accounted
    assert len(recorder.completed) == c.completed and len(recorder.failed) == c.failed
    assert server.num_pending == 0 and server.core_pending == [0, 0] and server.core_pending_tokens == [0, 0]


def test_failing_core_errors_are_data_with_the_cause(make_server, recorder):
    server = make_server([FailingCore])
    server.submit([req(i) for i in range(10)], recorder)
    assert sorted(recorder.failed) == [1, 3, 5, 7, 9] and sorted(recorder.completed) == [0, 2, 4, 6, 8]
    err = recorder.failed[1][0]
    assert isinstance(err, BackendError) and err.address == "failing[0]" and "every second request" in str(err)
    assert server.counts.errors == {"BackendError: injected: every second request": 5}
    assert server.first_error is not None and "every second request" in server.first_error


def test_duplicates_are_dropped_and_counted_at_the_server(make_server, recorder):
    through = make_server([DuplicatingCore])  # through LLMCore's helpers, which pass everything on
    through.submit([req(i, streaming=True) for i in range(5)], recorder)
    assert through.counts.duplicates_dropped == 15  # per request: second complete, late fail, late first token
    assert_exactly_once(recorder, range(5), range(5))
    assert through.counts.completed == 5 and through.counts.failed == 0 and through.counts.late_after_cancel == 0

    raw_target = type(recorder)()
    raw = make_server([RawDuplicatingCore])
    raw.submit([req(i, streaming=True) for i in range(5)], raw_target)
    # per request: second complete, late error, late first token
    assert raw.counts.duplicates_dropped == 15
    assert_exactly_once(raw_target, range(5))
    assert raw.counts.completed == 5 and raw.counts.failed == 0


def test_streaming_complete_without_first_token_gets_one_made_from_the_output(make_server, recorder):
    server = make_server([NoFirstTokenCore])
    server.submit([req(1, streaming=True, max_new=4), req(2, streaming=False, max_new=4)], recorder)
    assert [(k, rid) for k, rid, *_ in recorder.events] == [("first", 1), ("complete", 1), ("complete", 2)]
    assert recorder.events[0][2].tolist()[:1] == [1]  # the output's first token
    tokens, n, first_before = recorder.completed[1]
    assert (n, first_before) == (4, True) and list(tokens) == [1, 2, 3, 4]
    assert recorder.first[2] == 0  # not streaming: none made
    assert len(server.ttft_ns) == 0 and len(server.tpot_ns) == 0  # a made first token is no TTFT sample


class FirstTokenTwiceCore(EchoCore):
    """Sends the first token twice, then completes."""

    name = "first_twice"

    def _enqueue_impl(self, requests):
        for req in requests:
            out = _tokens(req)
            self._first_token(req.request_id, out[:1])
            self._first_token(req.request_id, out[:2])
            self._complete(req.request_id, out, len(out))


class FirstTokenAfterCore(EchoCore):
    """Completes, then sends the first token (out of order)."""

    name = "first_after"

    def _enqueue_impl(self, requests):
        for req in requests:
            out = _tokens(req)
            self._complete(req.request_id, out, len(out))
            self._first_token(req.request_id, out[:1])


@pytest.mark.parametrize("core_cls", [NoFirstTokenCore, FirstTokenTwiceCore, FirstTokenAfterCore, FailingCore,
                                      RaisingEnqueueCore, DuplicatingCore])
def test_a_streaming_request_gets_exactly_one_first_token_before_its_final_whatever_the_core_did(
        make_server, recorder, core_cls):
    server = make_server([core_cls])
    server.submit([req(i, streaming=True, max_new=4) for i in range(6)], recorder)
    server.flush(5.0)
    assert_exactly_once(recorder, range(6), range(6))
    for rid, (err, first_before) in recorder.failed.items():
        assert first_before  # an empty first token before the error
        assert next(p for k, r, p, *_ in recorder.events if k == "first" and r == rid).size == 0
    dups = {FirstTokenTwiceCore: 6, FirstTokenAfterCore: 6, DuplicatingCore: 18}.get(core_cls, 0)
    assert server.counts.duplicates_dropped == dups


def test_the_reporter_sends_ftc_before_qsc_for_every_streaming_sample_through_the_server(make_server):
    from llmlib.reporter import LoadgenReporter
    from tests.llmlib.test_reporter import FakeLG

    lg = FakeLG()
    server = make_server([NoFirstTokenCore, FailingCore, EchoCore], policy="round_robin")
    server.submit([req(i, streaming=True, max_new=3) for i in range(9)], LoadgenReporter(lg, streaming=True))
    server.flush(5.0)
    seen: dict[int, list[str]] = {}
    for kind, responses in lg.calls:
        for r in responses:
            seen.setdefault(r[0], []).append(kind)
    assert seen == {i: ["FTC", "QSC"] for i in range(9)}


def test_streaming_complete_after_first_token_says_so(make_server, recorder):
    server = make_server([EchoCore])
    server.submit([req(1, streaming=True, max_new=4)], recorder)
    assert recorder.first[1] == 1 and recorder.completed[1][2] is True
    assert len(server.ttft_ns) == 1 and len(server.tpot_ns) == 1


def test_raising_enqueue_fails_the_requests_naming_the_core(make_server, recorder):
    server = make_server([RaisingEnqueueCore] * 2, policy="round_robin")
    server.submit([req(i) for i in range(4)], recorder)  # submit itself must not raise
    assert sorted(recorder.failed) == [0, 1, 2, 3]
    err = recorder.failed[2][0]
    assert isinstance(err, BackendError) and err.address == "raising[0]"
    assert "enqueue failed" in str(err) and "queue full" in str(err)
    assert server.counts.failed == 4 and server.counts.accounted


def test_mixed_faults_across_cores_keep_exactly_once(make_server, recorder):
    server = make_server([FailingCore, DuplicatingCore, RawDuplicatingCore, NoFirstTokenCore,
                          RaisingEnqueueCore, DelayedThreadedCore], policy="load_balancing")
    rids = list(range(600))
    for start in range(0, 600, 25):
        server.submit([req(i, streaming=bool(i % 3)) for i in rids[start:start + 25]], recorder)
    server.flush(5.0)
    assert_exactly_once(recorder, rids, [i for i in rids if i % 3])
    assert server.counts.accounted and server.counts.issued == 600
    assert sum(s["completed"] + s["failed"] for s in server.core_stats()) == 600


def test_many_requests_completed_concurrently_from_several_threads(make_dummy, recorder, small_dataset):
    server = LLMServer(policy="load_balancing")
    cores = [make_dummy(server, rank=r, dataset=small_dataset, dummy_ttft_ms=1, dummy_tpot_ms=0.01,
                        dummy_max_batch_size=16, dummy_fail_rate=0.05, dummy_output_len="4")
             for r in range(4)]
    server.attach(cores)
    n, per_thread = 2000, 500
    ds = small_dataset

    def submit(base):
        for start in range(base, base + per_thread, 10):
            server.submit([Request(i, ds.input_tokens[i % len(ds)], 8, bool(i % 2), sample_index=i % len(ds))
                           for i in range(start, start + 10)], recorder)

    submitters = [threading.Thread(target=submit, args=(k * per_thread,)) for k in range(4)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join(timeout=10)
    server.flush(10.0)
    assert_exactly_once(recorder, range(n))
    c = server.counts
    assert c.issued == n == c.completed + c.failed and c.accounted
    assert 0 < c.failed < n // 5  # ~5% injected failures
    delivering = {tid for *_rest, tid in recorder.events}
    assert len(delivering) >= 4  # outcomes came from the cores' own engine threads
    stats = server.core_stats()
    assert all(s["completed"] > 0 and s["pending"] == 0 for s in stats)
    assert sum(s["completed"] for s in stats) == c.completed
    assert sum(s["failed"] for s in stats) == c.failed
    assert sum(s["output_tokens"] for s in stats) == c.output_tokens == 4 * c.completed


# --- watchdog, fail_pending, flush --------------------------------------------------------------------------
def test_watchdog_fails_a_request_that_never_completes(make_server, recorder):
    server = make_server([HoldCore], request_timeout_s=0.2)
    t0 = time.monotonic()
    server.submit([req(1), req(2)], recorder)
    server.cores[0].finish(2)  # answered in time: must not time out
    assert recorder.wait_final(2, timeout_s=3.0), "the watchdog never failed the stuck request"
    elapsed = recorder.times("fail")[1] - t0
    assert 0.19 <= elapsed < 1.5
    err, first_before = recorder.failed[1]
    assert first_before is False  # not streaming: no first token made
    assert "timed out" in str(err) and "request_timeout_s" in str(err), str(err)
    assert server.counts.timed_out == 1 and server.counts.failed == 1 and server.counts.accounted
    assert sorted(recorder.completed) == [2]
    # the backend answering late is dropped: still exactly one outcome
    server.cores[0].finish(1)
    assert recorder.final[1] == 1 and server.counts.completed == 1


def test_no_watchdog_when_timeout_is_zero(make_server, recorder):
    server = make_server([HoldCore], request_timeout_s=0.0)
    server.submit([req(1)], recorder)
    assert not recorder.wait_final(1, timeout_s=0.3)
    assert server.counts.timed_out == 0 and server.num_pending == 1


def test_fail_pending_fails_everything_pending_once(make_server, recorder):
    server = make_server([HoldCore, HoldCore])
    server.submit([req(i, streaming=True) for i in range(5)], recorder)
    server.cores[0].finish(0)
    assert server.fail_pending("run aborted by the test") == 4
    assert sorted(recorder.failed) == [1, 2, 3, 4] and sorted(recorder.completed) == [0]
    assert all("run aborted by the test" in str(err) for err, _ in recorder.failed.values())
    assert server.num_pending == 0 and server.counts.accounted and server.core_pending == [0, 0]
    assert all(core.num_pending == 0 for core in server.cores)
    assert server.fail_pending("again") == 0
    assert_exactly_once(recorder, range(5))


def test_flush_returns_once_requests_complete_from_another_thread(make_server, recorder):
    server = make_server([DelayedThreadedCore] * 2)
    server.submit([req(i) for i in range(6)], recorder)
    assert server.num_pending == 6
    t0 = time.monotonic()
    server.flush(5.0)
    assert time.monotonic() - t0 < 1.0  # woken by the completions, not by the deadline
    assert server.num_pending == 0 and len(recorder.completed) == 6


def test_flush_with_nothing_pending_returns_at_once(make_server):
    server = make_server([HoldCore])
    t0 = time.monotonic()
    server.flush(5.0)
    assert time.monotonic() - t0 < 1.0  # not the 5 s timeout


def test_flush_timeout_names_the_pending_ids(make_server, recorder):
    server = make_server([HoldCore])
    server.submit([req(41), req(42), req(43)], recorder)
    server.cores[0].finish(42)
    t0 = time.monotonic()
    with pytest.raises(FlushTimeoutError) as info:
        server.flush(0.15)
    assert 0.14 <= time.monotonic() - t0 < 1.0
    assert sorted(info.value.pending_ids) == [41, 43]
    assert "41" in str(info.value) and "43" in str(info.value) and "42" not in str(info.value)
    assert "2 request(s)" in str(info.value)


def test_attach_rejects_no_cores_and_a_second_attach(make_server):
    with pytest.raises(ConfigError):
        LLMServer().attach([])
    server = make_server([HoldCore])
    with pytest.raises(RuntimeError):
        server.attach(server.cores)


class KvCore(EchoCore):
    def kv_cache_utilisation(self):
        return 0.25 * (self.rank + 1)


def test_progress_display_shows_throughput_latency_and_kv_cache(make_server, recorder):
    from llmlib.server import Progress

    server = make_server([KvCore, KvCore])
    issued = {"n": 0}
    progress = Progress(server, total=lambda: issued["n"], desc="t", interval_s=60, plain=False)  # the bar
    try:
        reqs = [req(i, streaming=True) for i in range(1, 41)]
        issued["n"] = len(reqs)
        server.submit(reqs, recorder)
        progress._refresh()
        bar = progress._bar
        assert bar.n == 40 and bar.total == 40
        post = bar.postfix
        assert "tok/s" in post and "p99 TTFT ms" in post and "KV cache=38%" in post  # mean of 25% and 50%
    finally:
        progress.close()


def test_progress_shows_no_kv_column_for_cores_without_it(make_server, recorder):
    from llmlib.server import Progress

    server = make_server([EchoCore])
    progress = Progress(server, total=None, desc="t", interval_s=60, plain=False)
    try:
        server.submit([req(1)], recorder)
        progress._refresh()
        assert "KV cache" not in (progress._bar.postfix or "")
    finally:
        progress.close()


# --- stopping a run, cores that can no longer serve, error shapes, stalls, bounded memory -----------
class AlwaysFailingCore(EchoCore):
    name = "always_failing"

    def _enqueue_impl(self, requests):
        for req in requests:
            self._fail(req.request_id, BackendError(self.address, f"HTTP 503 for cmpl-{req.request_id:08d}x"))


class DyingCore(HoldCore):
    """Its worker exits: every request fails, and it says it can no longer serve."""

    name = "dying"
    dead: str | None = None

    @property
    def dead_cause(self):
        return self.dead

    def die(self):
        self.dead = "worker process ended (exit code -9)"
        for rid in list(self._pending):
            self._fail(rid, BackendError(self.address, self.dead))


def test_a_closed_intake_fails_new_requests_at_once_and_counts_them(make_server, recorder):
    server = make_server([HoldCore, HoldCore])
    server.submit([Request(1, np.ones(3, np.int32), 4, False)], recorder)
    server.stop_intake("interrupted by SIGINT")
    assert server.fail_pending("interrupted by SIGINT") == 1
    server.submit([Request(i, np.ones(3, np.int32), 4, False) for i in (2, 3)], recorder)
    server.submit_one(Request(4, np.ones(3, np.int32), 4, True), recorder)
    server.submit([Request(5, np.ones(3, np.int32), 4, False)], recorder, core_index=1)
    assert set(recorder.failed) == {1, 2, 3, 4, 5} and not recorder.completed
    assert all("interrupted by SIGINT" in str(err) for err, _ in recorder.failed.values())
    assert all(not c.received[1:] for c in server.cores)  # nothing reached a core after the stop
    c = server.counts
    assert c.issued == 5 and c.failed == 5 and c.accounted and server.num_pending == 0


def test_n_failures_in_a_row_lose_a_core_once(make_server, recorder):
    server = make_server([AlwaysFailingCore], max_consecutive_failures=3)
    lost = []
    server.on_core_lost = lost.append
    server.submit([Request(i, np.ones(3, np.int32), 4, False) for i in range(5)], recorder)
    assert len(lost) == 1
    assert "failed its last 3 requests in a row" in lost[0] and "HTTP 503" in lost[0]


def test_a_success_resets_the_failure_streak(make_server, recorder):
    server = make_server([FailingCore], max_consecutive_failures=2)  # fails every second request
    lost = []
    server.on_core_lost = lost.append
    for i in range(20):
        server.submit([Request(i, np.ones(3, np.int32), 4, False)], recorder)
    assert server.counts.failed == 10 and lost == []


def test_a_dead_core_is_lost_at_its_first_failure(make_server, recorder):
    server = make_server([DyingCore])
    lost = []
    server.on_core_lost = lost.append
    server.submit([Request(i, np.ones(3, np.int32), 4, False) for i in range(3)], recorder)
    server.cores[0].die()
    assert lost == ["core dying[0] can no longer serve: worker process ended (exit code -9)"]


def test_error_causes_are_grouped_by_shape_with_an_example_and_every_one_goes_to_the_sink(make_server, recorder):
    server = make_server([AlwaysFailingCore])
    seen = []
    server.error_sink = lambda rid, index, cause: seen.append((rid, index, cause))
    server.submit([Request(i, np.ones(3, np.int32), 4, False, sample_index=100 + i) for i in range(58)], recorder)
    assert server.counts.errors == {"BackendError: HTTP <n> for cmpl-<id>": 58}
    assert server.error_examples["BackendError: HTTP <n> for cmpl-<id>"] == "BackendError: HTTP 503 for cmpl-00000000x"
    assert len(seen) == 58 and seen[3] == (3, 103, "BackendError: HTTP 503 for cmpl-00000003x")


@pytest.mark.parametrize("cause, shape", [
    ("HTTP 500: malformed reply for chatcmpl-8a7sdf6A9 at byte 1234",
     "HTTP <n>: malformed reply for chatcmpl-<id> at byte <n>"),
    ("connect to 10.0.0.7:8000 refused", "connect to <addr> refused"),
    ("http://127.0.0.1:8001/v1/completions: timed out after 1.5s", "<addr>/v1/completions: timed out after <n>s"),
    ("request 5f0c2a9e-1d2b-4c3d-9e8f-0a1b2c3d4e5f failed", "request <uuid> failed"),
    ("hf[0] pid 4242: out of memory", "hf[<n>] pid <n>: out of memory"),
    ("trace 0xdeadbeef, digest 0123456789abcdef0123", "trace <hex>, digest <hex>"),
    ("model tiny-llama3.1-8b not found", "model tiny-llama3.1-8b not found"),  # words stay words
    ('malformed SSE chunk: {"id":"cmpl-34","object":"text_completion","created":1765000000}',
     'malformed SSE chunk: {"id":"<id>","object":"text_completion","created":<n>}'),
    ("stream of chatcmpl-7 cut", "stream of chatcmpl-<id> cut"),
])
def test_mask_variable_parts(cause, shape):
    assert mask_variable_parts(cause) == shape


def test_stalled_requests_are_reported_while_the_run_goes_on(make_server, recorder, caplog):
    server = make_server([HoldCore], stall_warning_s=1.0)
    server.submit([Request(i, np.ones(3, np.int32), 4, True) for i in range(3)], recorder)
    server.on_first_token(2, np.ones(1, np.uint32))  # this one has started
    with caplog.at_level("WARNING", logger="llmlib.server"):
        deadline = time.monotonic() + 20
        while not server.stalls_reported and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.stalls_reported >= 1 and server.num_pending == 3  # warned, nothing failed
    msg = next(r.getMessage() for r in caplog.records if "no first token" in r.getMessage())
    assert msg.startswith("2 request(s) have had no first token for over 1s") and "request 0 on hold[0]" in msg


def test_running_latency_samples_are_bounded(make_server, recorder):
    server = make_server([EchoCore])
    for start in range(0, 3 * LATENCY_WINDOW, 512):
        server.submit([Request(i, np.ones(3, np.int32), 4, True) for i in range(start, start + 512)], recorder)
    assert len(server.ttft_ns) == len(server.tpot_ns) == LATENCY_WINDOW
    assert server.latency_percentiles()["ttft_p99_ms"] is not None


def test_a_late_outcome_after_a_cancel_is_not_a_duplicate(make_server, recorder):
    server = make_server([HoldCore])
    server.submit([Request(1, np.ones(3, np.int32), 4, False)], recorder)
    assert server.cancel(1, "interrupted")
    server.cores[0].finish(1)  # the backend finishes what it was told to stop
    core = server.cores[0]
    assert server.counts.late_after_cancel == 1 and server.counts.duplicates_dropped == 0
    core.finish(1)  # a second one is a duplicate
    assert server.counts.duplicates_dropped == 1 and recorder.final[1] == 1
