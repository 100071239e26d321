"""Tests of llmlib.cores.base.LLMCore: the exactly-once delivery helpers, enqueue failures,
flush waiting on its condition, cancel and stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from llmlib.cores.base import CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, FlushTimeoutError


class ManualCore(LLMCore):
    """Keeps what it receives; the test delivers outcomes (optionally from another thread)."""

    name = "manual"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.received: list[Request] = []
        self.threads: list[threading.Thread] = []

    def _enqueue_impl(self, requests):
        self.received.extend(requests)

    def health_check(self):
        pass

    def complete_later(self, request_id: int, delay_s: float) -> None:
        def run():
            time.sleep(delay_s)
            self._complete(request_id, np.array([5, 6], dtype=np.uint32), 2)

        t = threading.Thread(target=run)
        self.threads.append(t)
        t.start()

    def stop(self):
        for t in self.threads:
            t.join(timeout=5)
        super().stop()


class RaisingCore(ManualCore):
    name = "raising"

    def _enqueue_impl(self, requests):
        raise ValueError("malformed payload")


@pytest.fixture
def make_core(make_config, tiny_benchmark, recorder):
    made = []

    def make(cls=ManualCore, rank=0):
        core = cls(settings=CoreSettings(), rank=rank, sink=recorder)
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


def req(rid: int, streaming: bool = False) -> Request:
    return Request(rid, np.array([1, 2, 3], dtype=np.int32), 4, streaming)


def test_enqueue_tracks_pending_and_complete_delivers_once(make_core, recorder):
    core = make_core()
    core.enqueue([req(1, streaming=True), req(2)])
    assert core.num_pending == 2 and sorted(core.pending_ids()) == [1, 2]
    core._first_token(1, np.array([9], dtype=np.uint32))
    core._complete(1, np.array([9, 8], dtype=np.uint32), 2)
    core._complete(1, np.array([9, 8], dtype=np.uint32), 2)  # duplicate
    core._fail(1, BackendError(core.address, "late"))  # duplicate
    core._first_token(1, np.array([9], dtype=np.uint32))  # stray, after the final response
    assert recorder.first[1] == 1 and recorder.final[1] == 1
    assert [k for k, rid, *_ in recorder.events if rid == 1] == ["first", "complete"]
    assert core.dropped_duplicates == 2
    assert core.pending_ids() == [2]


def test_outcome_for_an_unknown_request_is_dropped(make_core, recorder):
    core = make_core()
    core._complete(77, np.array([1], dtype=np.uint32), 1)
    core._first_token(77, np.array([1], dtype=np.uint32))
    assert recorder.events == [] and core.dropped_duplicates == 1


def test_enqueue_that_raises_fails_every_request_with_the_cause(make_core, recorder):
    core = make_core(RaisingCore, rank=3)
    core.enqueue([req(1), req(2)])  # must not raise
    assert sorted(recorder.failed) == [1, 2] and core.num_pending == 0
    err = recorder.failed[1][0]
    assert isinstance(err, BackendError) and err.address == "raising[3]"
    assert "enqueue failed" in str(err) and "malformed payload" in str(err)


def test_flush_is_woken_by_a_completion_from_another_thread(make_core, recorder):
    core = make_core()
    core.enqueue([req(1)])
    core.complete_later(1, 0.05)
    t0 = time.monotonic()
    core.flush(5.0)
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 1.0, elapsed  # woken by the completion, long before the 5 s deadline
    assert core.num_pending == 0 and recorder.final[1] == 1


def test_flush_with_nothing_pending_returns_at_once(make_core):
    core = make_core()
    t0 = time.monotonic()
    core.flush(5.0)
    assert time.monotonic() - t0 < 0.1


def test_flush_timeout_names_the_core_and_the_pending_ids(make_core):
    core = make_core(rank=2)
    core.enqueue([req(11), req(12)])
    t0 = time.monotonic()
    with pytest.raises(FlushTimeoutError) as info:
        core.flush(0.1)
    assert 0.09 <= time.monotonic() - t0 < 1.0
    assert sorted(info.value.pending_ids) == [11, 12]
    assert "manual[2]" in str(info.value) and "11" in str(info.value) and "12" in str(info.value)
    # the flag is reset: a later completion after a failed flush still works, and flush succeeds
    core._complete(11, np.zeros(1, np.uint32), 1)
    core._complete(12, np.zeros(1, np.uint32), 1)
    core.flush(0.1)


def test_cancel_fails_the_request_exactly_once(make_core, recorder):
    core = make_core()
    core.enqueue([req(1), req(2)])
    core.cancel(1)
    core.cancel(1)
    assert recorder.final[1] == 1 and recorder.final[2] == 0
    err = recorder.failed[1][0]
    assert isinstance(err, BackendError) and "cancelled" in str(err) and err.address == "manual[0]"
    core._complete(1, np.zeros(2, np.uint32), 2)  # the backend answering after the cancel
    assert recorder.final[1] == 1
    assert core.pending_ids() == [2]


def test_stop_fails_every_pending_request(make_core, recorder):
    core = make_core()
    core.enqueue([req(i) for i in range(4)])
    core._complete(0, np.zeros(2, np.uint32), 2)
    core.stop()
    assert sorted(recorder.failed) == [1, 2, 3] and core.num_pending == 0
    assert all("stopped" in str(err) for err, _ in recorder.failed.values())


def test_address_and_default_core_count(make_core, make_config):
    core = make_core(rank=5)
    assert core.address == "manual[5]"
    assert ManualCore.num_cores(make_config()) == 1
