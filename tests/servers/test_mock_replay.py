"""The mock OpenAI server's `events_per_write` mode (rendered once, replayed) serves the very streams its
ordinary mode does: the same SSE events, one per token, only the response ids differ."""

from __future__ import annotations

import http.client
import json
import re
import time

import numpy as np
import pytest

from llmlib.cores.base import Request
from llmlib.cores.trtllm_endpoint_core import EndpointSettings, TrtllmEndpointCore
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids


def _stream(port: int, body: dict) -> tuple[list[str], list[str]]:
    """(the SSE events' data with ids and timestamps blanked, the response ids) of one streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    text = r.read().decode()
    conn.close()
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    ids = re.findall(r'"id":"([^"]+)"', text)
    return [re.sub(r'"created":\d+', '"created":0', re.sub(r'"id":"[^"]+"', '"id":""', d)) for d in datas], ids


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("usage", [False, True])
def test_replayed_streams_are_the_ordinary_ones(chat, usage):
    body = {"model": "mock-model", "max_tokens": 9, "stream": True, "return_token_ids": True}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": [5, 6, 7]})
    if usage:
        body["stream_options"] = {"include_usage": True}
    with MockOpenAIServer(MockOptions(output_tokens=20)) as plain, \
            MockOpenAIServer(MockOptions(output_tokens=20, events_per_write=4)) as replay:
        want, _ = _stream(plain.port, body)
        got = []
        for _ in range(3):  # rendered the first time, replayed after
            events, rids = _stream(replay.port, body)
            got.append(events)
            assert len(set(rids)) == 1  # every event of a response carries its own id
            got_rid = rids[0]
        assert got == [want] * 3
        assert got_rid.endswith("3") and len(want) == 9 + chat + usage + 1  # one event per token, then [DONE]
        deadline = time.monotonic() + 5  # the mock counts a response once its write has drained
        while replay.stats["completed"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert replay.stats["completed"] == 3


def test_endpoint_core_reads_replayed_streams_token_for_token():
    prompts = [np.arange(i, i + 16, dtype=np.int32) for i in range(8)]
    outcomes: dict[int, tuple] = {}

    class Sink:
        def on_first_token(self, rid, tokens):
            pass

        def on_complete(self, rid, tokens, n):
            outcomes[rid] = (tokens.tolist(), n)

        def on_error(self, rid, err):
            outcomes[rid] = ("error", str(err))

    with MockOpenAIServer(MockOptions(output_tokens=33, events_per_write=5)) as mock:
        core = TrtllmEndpointCore(EndpointSettings(urls=(mock.url,), max_concurrency=8), rank=0, sink=Sink())
        try:
            core.health_check()
            core.enqueue([Request(i, prompts[i % 8], 1 << 10, True, i) for i in range(24)])
            deadline = time.monotonic() + 30
            while len(outcomes) < 24 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            core.stop()
    assert len(outcomes) == 24
    for i in range(24):
        ids = output_ids(prompts[i % 8].tolist(), 33, 1000)
        assert outcomes[i] == (ids, 33)
