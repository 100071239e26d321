"""Tokens streamed through the core contract to whoever listens: StreamGenerationTask steps by
streaming_step through LLMServer (dummy and endpoint cores, in-process and in worker processes),
cancel stops the backend request, inter-token statistics, and nothing for requests nobody listens to."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from llmlib.cores.base import Request
from llmlib.cores.trtllm_endpoint_core import EndpointSettings, TrtllmEndpointCore
from llmlib.serving.core_workers import WorkerPoolCore
from llmlib.server import LLMServer
from scaffolding import StreamGenerationTask
from scaffolding.workers.llmcore_worker import LLMCoreWorker
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids

pytestmark = pytest.mark.timeout(60)


def dummy_output(prompt: list[int], n: int) -> list[int]:
    return [((i + prompt[-1]) % 32000) + 3 for i in range(n)]


async def steps_of(worker, task, cancel_after: int | None = None) -> list[int]:
    """Run a stream task step by step; the output length after each step (cancel after N steps)."""
    seen = []
    while not task.end_flag:
        if cancel_after is not None and len(seen) == cancel_after:
            task.cancel_flag = True
        await worker.stream_step(task)
        seen.append(len(task.output_tokens or ()))
    return seen


def test_stream_steps_follow_streaming_step_on_a_chunking_core(make_server):
    server = make_server(dummy_ttft_ms=5, dummy_tpot_ms=3)
    worker = LLMCoreWorker(server, default_max_tokens=20)
    task = StreamGenerationTask(input_tokens=[1, 2, 3], streaming_step=4)
    lengths = asyncio.run(steps_of(worker, task))
    assert lengths[-1] == 20 and task.output_tokens == dummy_output([1, 2, 3], 20)
    assert len(lengths) >= 4  # several steps, each of at least 4 more tokens (chunks, not first + final)
    assert all(b - a >= 4 for a, b in zip([0] + lengths[:-2], lengths[:-1]))
    assert task.finish_reason == "length" and task.ttft_s is not None
    assert len(server.itl_ns) > 10 and all(g >= 0 for g in server.itl_ns)  # inter-token gaps of the listener
    assert len(server.max_gap_ns) == 1 and not server._chunk_state


def test_requests_nobody_listens_to_get_no_chunks(make_server, recorder):
    server = make_server(dummy_ttft_ms=2, dummy_tpot_ms=1)
    calls = []
    server.on_chunk = lambda *a: calls.append(a)  # would see any chunk a core delivered
    server.submit([Request(i, np.array([4, 5], np.int32), 8, True, i) for i in range(20)], recorder)
    server.flush(10)
    assert len(recorder.completed) == 20 and calls == [] and not server.itl_ns


def _endpoint_worker(mock, workers: int):
    server = LLMServer()
    settings = EndpointSettings(urls=(mock.url,), max_concurrency=8, request_timeout_s=30.0)
    if workers:
        core = WorkerPoolCore(TrtllmEndpointCore, settings, rank=0, sink=server, workers=workers)
    else:
        core = TrtllmEndpointCore(settings, rank=0, sink=server)
    server.attach([core])
    core.health_check()
    return server, LLMCoreWorker(server, default_max_tokens=64)


@pytest.mark.parametrize("workers", [0, 2])
def test_endpoint_streams_steps_and_cancel_stops_the_server_request(workers):
    with MockOpenAIServer(MockOptions(output_tokens=40, per_token_delay_ms=20)) as mock:
        server, worker = _endpoint_worker(mock, workers)
        try:
            task = StreamGenerationTask(input_tokens=[7, 8, 9], streaming_step=3, max_tokens=40)
            t0 = time.monotonic()
            lengths = asyncio.run(steps_of(worker, task, cancel_after=3))
            took = time.monotonic() - t0
            assert lengths[:3] == sorted(lengths[:3]) and lengths[0] >= 3 and lengths[2] >= 9
            assert task.finish_reason == "cancelled" and task.end_flag
            assert task.output_tokens == output_ids([7, 8, 9], 40, 1000)[:lengths[2]]  # what was seen
            assert took < 0.8 * 40 * 0.020 + 0.3  # it did not wait for the 40 tokens (0.8 s)
            deadline = time.monotonic() + 3
            while mock.stats["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert mock.stats["in_flight"] == 0  # the server's request was stopped (its connection closed)
            assert server.counts.accounted and server.num_pending == 0 if hasattr(server, "num_pending") else True
            whole = StreamGenerationTask(input_tokens=[1, 2], streaming_step=10, max_tokens=40)
            lengths = asyncio.run(steps_of(worker, whole))
            assert whole.output_tokens == output_ids([1, 2], 40, 1000) and len(lengths) >= 3
        finally:
            server.stop()
