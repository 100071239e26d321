"""Tests of llmlib.cores.base.LLMCore: the delivery helpers keep the in-flight table and pass every
outcome on unfiltered (the LLMServer keeps exactly once), enqueue failures, cancel and stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from llmlib.cores.base import CoreSettings, LLMCore, Request
from llmlib.errors import BackendError
from llmlib.server import LLMServer


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


def test_the_in_flight_table_and_unfiltered_delivery(make_core, recorder):
    core = make_core()
    core.enqueue([req(1, streaming=True), req(2)])
    assert core.num_pending == 2 and sorted(core.pending_ids()) == [1, 2]
    core._first_token(1, np.array([9], dtype=np.uint32))
    core._complete(1, np.array([9, 8], dtype=np.uint32), 2)
    assert core.pending_ids() == [2]  # out of flight once its final outcome went
    core._complete(1, np.array([9, 8], dtype=np.uint32), 2)  # a duplicate: passed on, for the server to drop
    core._complete(77, np.array([1], dtype=np.uint32), 1)  # unknown: passed on too
    assert [(k, rid) for k, rid, *_ in recorder.events] == [("first", 1), ("complete", 1), ("complete", 1),
                                                            ("complete", 77)]
    assert core.pending_ids() == [2]
    assert not hasattr(core, "flush") and not hasattr(core, "dropped_duplicates")  # the server's job


def test_through_the_server_duplicates_are_dropped_and_counted_once(make_config, recorder):
    server = LLMServer(policy="round_robin")
    core = ManualCore(settings=CoreSettings(), rank=0, sink=server)
    server.attach([core])
    server.submit([req(1, streaming=True), req(2)], recorder)
    core._first_token(1, np.array([9], dtype=np.uint32))
    core._complete(1, np.array([9, 8], dtype=np.uint32), 2)
    core._complete(1, np.array([9, 8], dtype=np.uint32), 2)  # duplicate
    core._fail(1, BackendError(core.address, "late"))  # duplicate
    core._first_token(1, np.array([9], dtype=np.uint32))  # stray, after the final response
    core._complete(77, np.array([1], dtype=np.uint32), 1)  # never submitted
    assert recorder.first[1] == 1 and recorder.final[1] == 1
    assert [k for k, rid, *_ in recorder.events if rid == 1] == ["first", "complete"]
    assert server.counts.duplicates_dropped == 4 and server.counts.late_after_cancel == 0
    assert 77 not in recorder.final and server.num_pending == 1
    server.stop()  # fails what is still pending, once
    assert recorder.final[2] == 1 and "stopped" in str(recorder.failed[2][0])
    assert server.counts.accounted


def test_enqueue_that_raises_fails_every_request_with_the_cause(make_core, recorder):
    core = make_core(RaisingCore, rank=3)
    core.enqueue([req(1), req(2)])  # must not raise
    assert sorted(recorder.failed) == [1, 2] and core.num_pending == 0
    err = recorder.failed[1][0]
    assert isinstance(err, BackendError) and err.address == "raising[3]"
    assert "enqueue failed" in str(err) and "malformed payload" in str(err)


def test_cancel_takes_the_request_out_of_flight_with_the_reason(make_core, recorder):
    core = make_core()
    core.enqueue([req(1), req(2)])
    core.cancel(1)
    core.cancel(1)  # no longer in flight: left alone
    assert recorder.final[1] == 1 and recorder.final[2] == 0
    err = recorder.failed[1][0]
    assert isinstance(err, BackendError) and "cancelled" in str(err) and err.address == "manual[0]"
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
