"""Tests of AsyncLoopCore (the private-loop base of the network cores) with a minimal subclass: requests
enqueued on the loop thread are taken in that call, outcomes exactly once under chains, a failing
`_begin` and a stop racing the loop thread's own enqueues."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from llmlib.cores._async_loop import AsyncLoopCore
from llmlib.cores.base import CoreSettings, EMPTY_TOKENS, Request
from llmlib.errors import BackendError

pytestmark = pytest.mark.timeout(30)


class EchoCore(AsyncLoopCore):
    """Completes each request after one loop iteration (or `delay_s`); records where `_begin` ran."""

    name = "echo"

    def __init__(self, *, delay_s: float = 0.0, fail_begin: frozenset = frozenset(), **kwargs):
        super().__init__(**kwargs)
        self.delay_s = delay_s
        self.fail_begin = fail_begin
        self.begun: dict[int, tuple[int, bool]] = {}  # request id -> (thread, inside a sink's enqueue)
        self.in_sink_enqueue = False
        self._start_loop("echo")

    def health_check(self) -> None:
        self.loop_health()

    def _begin(self, req: Request) -> asyncio.Task:
        self.begun[req.request_id] = (threading.get_ident(), self.in_sink_enqueue)
        if req.request_id in self.fail_begin:
            raise RuntimeError("begin broke")
        return super()._begin(req)

    async def _run(self, req: Request) -> None:
        await asyncio.sleep(self.delay_s)
        self._complete(req.request_id, EMPTY_TOKENS, 0)


class Chain:
    """A sink that issues request i + 1 when request i ends (up to `last`), from the loop thread."""

    def __init__(self, recorder, last: int):
        self.recorder = recorder
        self.last = last
        self.core: EchoCore | None = None
        self.errors_inside_enqueue = 0

    def on_first_token(self, rid, tokens):
        self.recorder.on_first_token(rid, tokens)

    def on_complete(self, rid, tokens, n):
        self.recorder.on_complete(rid, tokens, n)
        self._next(rid)

    def on_error(self, rid, err):
        if self.core.in_sink_enqueue:
            self.errors_inside_enqueue += 1
        self.recorder.on_error(rid, err)
        self._next(rid)

    def _next(self, rid):
        if rid < self.last and not self.core.in_sink_enqueue:
            self.core.in_sink_enqueue = True
            try:
                self.core.enqueue([req(rid + 1)])
            finally:
                self.core.in_sink_enqueue = False


def req(rid: int) -> Request:
    return Request(rid, np.arange(3, dtype=np.int32), 4, False)


@pytest.fixture
def make_core(make_config, tiny_benchmark):
    made = []

    def make(sink, **kwargs):
        core = EchoCore(settings=CoreSettings(), rank=0, sink=sink, **kwargs)
        if isinstance(sink, Chain):
            sink.core = core
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


def test_requests_from_the_loop_thread_are_taken_inside_enqueue(make_core, recorder):
    chain = Chain(recorder, last=1999)
    core = make_core(chain)
    core.enqueue([req(0)])
    assert recorder.wait_final(2000, 20)
    assert set(recorder.final.values()) == {1} and not recorder.failed and core.num_pending == 0
    loop_thread = core._thread.ident
    assert core.begun[0] == (loop_thread, False)  # from this thread: taken later, on the loop
    assert all(core.begun[i] == (loop_thread, True) for i in range(1, 2000))


def test_a_failing_begin_fails_its_request_after_enqueue_returns(make_core, recorder):
    chain = Chain(recorder, last=5)
    core = make_core(chain, fail_begin=frozenset({0, 3}))
    core.enqueue([req(0)])
    assert recorder.wait_final(6, 5)
    assert sorted(recorder.failed) == [0, 3] and sorted(recorder.completed) == [1, 2, 4, 5]
    assert "internal error" in str(recorder.failed[3][0]) and "begin broke" in str(recorder.failed[3][0])
    assert chain.errors_inside_enqueue == 0 and set(recorder.final.values()) == {1}


def test_stop_while_the_loop_thread_keeps_enqueuing(make_core, recorder):
    chain = Chain(recorder, last=10**9)
    core = make_core(chain, delay_s=0.0005)
    core.enqueue([req(0)])
    assert recorder.wait_final(50, 10)
    core.stop()
    ended = recorder.num_final
    issued = max(recorder.final) + 1
    assert set(recorder.final.values()) == {1} and core.num_pending == 0
    assert ended == issued  # every request issued ended once: completed, or failed by the stop
    stopped = [err for err, _ in recorder.failed.values()]
    assert stopped and all(isinstance(e, BackendError) and "core stopped" in str(e) for e in stopped)
