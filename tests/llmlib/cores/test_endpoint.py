"""Tests of the `trtllm_endpoint` core against the in-process mock OpenAI server on 127.0.0.1:
exactly one outcome per request, streaming order, token-id vs usage sources, model checks,
every injected fault as a counted failure naming the URL, server down / killed, stop; and the
pure payload / SSE parsing functions."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmlib.cores.base import Request
from llmlib.cores.trtllm_endpoint_core import (
    EndpointSettings,
    StreamState,
    TrtllmEndpointCore,
    base_url,
    parse_reply,
    request_payload,
)
from llmlib.errors import BackendError, ConfigError
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[3]  # `python -m tests.servers...` runs from the repository root

OUT = 12  # tokens the mock generates (below tiny's max_new_tokens)


@pytest.fixture
def mock():
    server = MockOpenAIServer(MockOptions(output_tokens=OUT))
    server.start()
    yield server
    server.stop()


class SendTimesCore(TrtllmEndpointCore):
    """A probe for client-side queueing (test-only): per request id, time.perf_counter_ns() when its
    bytes were written, recorded as its response is read, before its outcome is delivered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.send_times: dict[int, int] = {}

    def _result(self, call, r):
        if call.ex is not None and call.ex.sent_ns:
            self.send_times[call.req.request_id] = call.ex.sent_ns
        return super()._result(call, r)


@pytest.fixture
def make_core(make_config, tiny_benchmark):
    """make_core(sink, url, **settings) -> a started TrtllmEndpointCore, stopped after the test."""
    made = []

    def make(sink, url, probe=False, **settings):
        settings.setdefault("request_timeout_s", 10.0)
        settings.setdefault("health_timeout_s", 2.0)
        settings.setdefault("api_dialect", "vllm")  # the mock speaks vLLM's; auto's probe: test_dialects.py
        cls = SendTimesCore if probe else TrtllmEndpointCore
        core = cls(EndpointSettings(urls=(url,), **settings), rank=0, sink=sink)
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


def req(rid: int, streaming: bool, max_new: int = 64, n_in: int = 5) -> Request:
    return Request(rid, np.arange(rid, rid + n_in, dtype=np.int32), max_new, streaming, sample_index=rid)


def expected_ids(r: Request, n: int = OUT) -> list[int]:
    return output_ids([int(t) for t in r.input_tokens], n, 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_of(recorder, rid) -> BackendError:
    err = recorder.failed[rid][0]
    assert isinstance(err, BackendError)
    return err


# --- configuration ------------------------------------------------------------------------------
def test_one_core_per_url_and_none_is_an_error(make_config):
    assert TrtllmEndpointCore.num_cores(make_config(trtllm_server_urls="127.0.0.1:1,127.0.0.1:2")) == 2
    with pytest.raises(ConfigError, match="--trtllm_server_urls is empty"):
        TrtllmEndpointCore.num_cores(make_config())


def test_base_url_forms():
    assert base_url("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert base_url("http://h:1/v1/") == "http://h:1/v1"
    assert base_url("https://h:1") == "https://h:1"


def test_request_payload_fields():
    body = request_payload(model="m", prompt=[1, 2], max_tokens=8, stream=True,
                           sampling={"temperature": 0.0, "top_k": 1, "seed": 0, "min_new_tokens": 1},
                           stop_token_ids=(2,))
    assert body == {"model": "m", "prompt": [1, 2], "max_tokens": 8, "temperature": 0.0, "seed": 0,
                    "min_tokens": 1, "stop_token_ids": [2], "return_token_ids": True, "stream": True,
                    "stream_options": {"include_usage": True}}
    body = request_payload(model=None, prompt="hi", max_tokens=3, stream=False, sampling={"temperature": 0.7,
                           "top_p": 0.9, "top_k": 5}, chat=True, return_token_ids=False)
    assert body == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0.7,
                    "top_p": 0.9, "top_k": 5}
    with pytest.raises(ConfigError, match="chat endpoint needs a text prompt"):
        request_payload(model="m", prompt=[1], max_tokens=1, stream=False, sampling={}, chat=True)


# --- pure parsing ---------------------------------------------------------------------------------
def _sse(*events: str) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events)


STREAM_IDS = _sse('{"choices":[{"index":0,"text":"a","token_ids":[5],"finish_reason":null}]}',
                  '{"choices":[{"index":0,"text":"b","token_ids":[6, 7],"finish_reason":null}]}',
                  '{"choices":[{"index":0,"text":"","token_ids":[],"finish_reason":"length"}]}',
                  '{"choices":[],"usage":{"completion_tokens":3}}', "[DONE]")
STREAM_USAGE = _sse('{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
                    '{"choices":[{"index":0,"delta":{"content":"a"}}]}',
                    '{"choices":[{"index":0,"delta":{"content":"b"}}]}',
                    '{"choices":[],"usage":{"completion_tokens":9}}', "[DONE]")


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_stream_state_any_split_token_ids(step):
    st = StreamState()
    firsts = [st.feed(STREAM_IDS[i:i + step]) for i in range(0, len(STREAM_IDS), step)]
    assert sum(firsts) == 1 and st.done
    tokens, n, source = st.result()
    assert tokens.tolist() == [5, 6, 7] and n == 3 and source == "token_ids" and tokens.dtype == np.uint32


def test_stream_state_usage_and_chunk_count_fallback():
    st = StreamState()
    assert st.feed(STREAM_USAGE.replace(b"\n\n", b"\r\n\r\n"))  # the role-only chunk is not the first token
    assert st.result()[1:] == (9, "usage")
    st = StreamState()
    st.feed(_sse('{"choices":[{"text":"a"}]}', '{"choices":[{"text":"b"}]}', '{"choices":[{"text":"c"}]}',
                 "[DONE]"))
    assert st.result()[1:] == (3, "chunks")
    st = StreamState()  # llama-cpp-python ends with a chunk carrying only finish_reason: not a token
    st.feed(_sse('{"choices":[{"text":"a"}]}', '{"choices":[{"text":"b"}]}',
                 '{"choices":[{"text":"","index":0,"finish_reason":"stop"}]}', "[DONE]"))
    assert st.result()[1:] == (2, "chunks")


@pytest.mark.parametrize("data, match", [
    (_sse('{"choices":[{"text":"a"}]}', '{"choices":[{"te'), "malformed SSE chunk"),
    (_sse('{"choices": [{"te'), "malformed SSE chunk"),
    (_sse('{"choices":[{"text":"a"}]}', '{"error":{"message":"out of KV cache"}}'), "out of KV cache"),
])
def test_stream_state_errors(data, match):
    from llmlib.cores.trtllm_endpoint_core import ReplyError
    with pytest.raises(ReplyError, match=match):
        StreamState().feed(data)


def test_parse_reply_sources_and_errors():
    from llmlib.cores.trtllm_endpoint_core import ReplyError
    tokens, n, src = parse_reply(b'{"choices":[{"text":"x","token_ids":[4,5]}],"usage":{"completion_tokens":2}}')
    assert tokens.tolist() == [4, 5] and n == 2 and src == "token_ids"
    tokens, n, src = parse_reply(b'{"choices":[{"text":"x"}],"usage":{"completion_tokens":7}}')
    assert len(tokens) == 0 and n == 7 and src == "usage"
    for bad, match in ((b'{"choices":[{"te', "malformed JSON reply"), (b'{"choices":[{"text":"x"}]}', "neither"),
                       (b'{"error":{"message":"nope"}}', "server error: nope")):
        with pytest.raises(ReplyError, match=match):
            parse_reply(bad)


# --- against the mock -------------------------------------------------------------------------------
def test_health_check_finds_the_model(mock, make_core, recorder):
    core = make_core(recorder, mock.url)
    core.health_check()
    assert core.model == "mock-model" and core.served_models == ["mock-model"]


def test_model_mismatch_names_url_and_served_models(mock, make_core, recorder):
    core = make_core(recorder, mock.url, model="llama-405b")
    with pytest.raises(BackendError) as info:
        core.health_check()
    msg = str(info.value)
    assert f"http://{mock.url}" in msg and "'llama-405b' is not served" in msg and "mock-model" in msg


def test_200_requests_exactly_one_outcome_with_server_token_ids(mock, make_core, recorder):
    core = make_core(recorder, mock.url, max_concurrency=16)
    core.health_check()
    reqs = [req(i, streaming=bool(i % 2)) for i in range(200)]
    for start in range(0, 200, 25):
        core.enqueue(reqs[start:start + 25])
    assert recorder.wait_final(200, 20)
    time.sleep(0.05)  # a second outcome would arrive here
    assert recorder.num_final == 200 and set(recorder.final.values()) == {1} and not recorder.failed
    assert core.num_pending == 0
    firsts, finals = recorder.times("first"), recorder.times("complete")
    for r in reqs:
        tokens, n, _ = recorder.completed[r.request_id]
        assert tokens.dtype == np.uint32 and tokens.tolist() == expected_ids(r) and n == OUT
        if r.streaming:
            assert recorder.first[r.request_id] == 1 and firsts[r.request_id] <= finals[r.request_id]
        else:
            assert recorder.first[r.request_id] == 0
    first_payload = next(p for k, rid, p, *_ in recorder.events if k == "first" and rid == 1)
    assert first_payload[0] == expected_ids(reqs[1])[0]
    assert core.token_sources == {"token_ids": 200} and core.token_source == "token_ids"
    assert mock.stats["max_in_flight"] <= 16


def test_usage_source_when_the_server_returns_no_ids(mock, make_core, recorder):
    mock.options.token_ids = False
    core = make_core(recorder, mock.url, max_concurrency=8)
    core.enqueue([req(i, streaming=bool(i % 2), max_new=5) for i in range(20)])
    assert recorder.wait_final(20, 10)
    assert not recorder.failed
    for i in range(20):
        tokens, n, _ = recorder.completed[i]
        assert n == 5 and len(tokens) == 0  # the count from usage; no ids invented
        assert recorder.first[i] == (1 if i % 2 else 0)
    assert core.token_sources == {"usage": 20} and core.token_source == "usage"


def test_ttft_is_the_first_chunk_not_the_end(mock, make_core, recorder):
    mock.options.first_token_delay_ms, mock.options.per_token_delay_ms = 20, 20
    core = make_core(recorder, mock.url)
    core.enqueue([req(0, streaming=True, max_new=10)])
    assert recorder.wait_final(1, 10)
    gap = recorder.times("complete")[0] - recorder.times("first")[0]
    assert gap >= 0.15  # nine more tokens at 20 ms each came after the first


def test_concurrency_cap_is_kept(mock, make_core, recorder):
    mock.options.first_token_delay_ms = 30
    core = make_core(recorder, mock.url, max_concurrency=3)
    core.enqueue([req(i, streaming=False) for i in range(12)])
    assert recorder.wait_final(12, 10) and not recorder.failed
    assert mock.stats["max_in_flight"] == 3


def server_connections(mock, at_least: int) -> int:
    """The mock's count of connections it accepted, once it has seen `at_least` (its accept loop runs
    on another thread, a moment after the client's connect returned)."""
    deadline = time.monotonic() + 5
    while mock.stats["connections"] < at_least and time.monotonic() < deadline:
        time.sleep(0.005)
    return mock.stats["connections"]


def test_warm_up_opens_the_connections_the_timed_requests_use(mock, make_core, recorder):
    mock.options.first_token_delay_ms = 30  # all 12 at once on the server
    core = make_core(recorder, mock.url, max_concurrency=12)
    core.health_check()
    core.warm_up()
    assert core.num_connections == 12 and server_connections(mock, 12) == 12  # the health check's among them
    core.enqueue([req(i, streaming=True) for i in range(12)])
    assert recorder.wait_final(12, 10) and not recorder.failed
    assert core.num_connections == 12 and mock.stats["connections"] == 12  # none opened on the way
    assert mock.stats["max_in_flight"] == 12


def test_warm_up_connect_ahead_is_a_setting_and_never_fails_the_core(mock, make_core, recorder):
    core = make_core(recorder, mock.url, max_concurrency=12, connect_ahead=3)
    core.warm_up()
    assert core.num_connections == 3 and server_connections(mock, 3) == 3
    off = make_core(recorder, mock.url, connect_ahead=0)
    off.warm_up()
    assert off.num_connections == 0
    down = make_core(recorder, f"127.0.0.1:{free_port()}")
    down.warm_up()  # logged; the requests report the server
    assert down.num_connections == 0
    down.enqueue([req(1, True)])
    assert recorder.wait_final(1, 5) and "connection failed" in error_of(recorder, 1).cause


@pytest.mark.parametrize("fault, streaming, match", [
    ("fail_rate", True, "HTTP 500: .*injected server error"),
    ("fail_rate", False, "HTTP 500: .*injected server error"),
    ("malformed_rate", True, "malformed SSE chunk"),
    ("malformed_rate", False, "malformed JSON reply"),
    ("drop_rate", True, "connection dropped mid-request"),
    ("drop_rate", False, "connection dropped mid-request"),
])
def test_each_fault_fails_its_requests_with_a_clear_message(mock, make_core, recorder, fault, streaming, match):
    setattr(mock.options, fault, 1.0)
    core = make_core(recorder, mock.url)
    core.enqueue([req(i, streaming) for i in range(10)])
    assert recorder.wait_final(10, 15)
    assert len(recorder.failed) == 10 and set(recorder.final.values()) == {1} and core.num_pending == 0
    for i in range(10):
        err = error_of(recorder, i)
        assert err.address == f"http://{mock.url}" and f"http://{mock.url}" in str(err)
        assert re.search(match, err.cause), err.cause


def test_half_the_requests_failing_are_counted_not_lost(mock, make_core, recorder):
    mock.options.fail_rate = 0.5
    core = make_core(recorder, mock.url)
    core.enqueue([req(i, streaming=bool(i % 2)) for i in range(100)])
    assert recorder.wait_final(100, 15)
    assert len(recorder.completed) + len(recorder.failed) == 100 and 20 < len(recorder.failed) < 80


def test_per_request_timeout(mock, make_core, recorder):
    mock.options.first_token_delay_ms = 5000
    core = make_core(recorder, mock.url, request_timeout_s=0.3)
    t0 = time.monotonic()
    core.enqueue([req(0, True), req(1, False)])
    assert recorder.wait_final(2, 5)
    assert time.monotonic() - t0 < 3
    for i in (0, 1):
        assert "timed out after 0.3s" in error_of(recorder, i).cause


def test_server_down_at_start(make_core, recorder):
    url = f"127.0.0.1:{free_port()}"
    core = make_core(recorder, url)
    with pytest.raises(BackendError) as info:
        core.health_check()
    assert info.value.address == f"http://{url}" and "not reachable" in info.value.cause
    core.enqueue([req(0, True), req(1, False)])
    assert recorder.wait_final(2, 5)
    assert all("connection failed" in error_of(recorder, i).cause for i in (0, 1))


def test_slow_start_fails_health_then_passes(make_core, recorder):
    with MockOpenAIServer(MockOptions(startup_delay_s=1.5)) as server:
        core = make_core(recorder, server.url)
        with pytest.raises(BackendError, match="HTTP 503"):
            core.health_check()
        deadline = time.monotonic() + 5
        while True:  # what the WarmupManager does, with backoff
            try:
                core.health_check()
                break
            except BackendError:
                assert time.monotonic() < deadline + 3, "still unhealthy after the startup delay"
                time.sleep(0.1)
        assert core.model == "mock-model"


def test_server_killed_mid_run_fails_pending_requests(mock, make_core, recorder):
    mock.options.output_tokens, mock.options.per_token_delay_ms = 1000, 20
    core = make_core(recorder, mock.url)
    core.enqueue([req(i, streaming=bool(i % 2), max_new=1000) for i in range(20)])
    deadline = time.monotonic() + 5
    while sum(recorder.first.values()) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(recorder.first.values()) == 10  # every streaming request is under way
    mock.stop()
    assert recorder.wait_final(20, 10), "requests hung after the server died"
    assert len(recorder.failed) == 20 and core.num_pending == 0
    assert all("connection dropped" in error_of(recorder, i).cause for i in range(20))


def test_stop_fails_in_flight_requests_and_refuses_new_ones(mock, make_core, recorder):
    mock.options.first_token_delay_ms = 5000
    core = make_core(recorder, mock.url)
    core.enqueue([req(i, True) for i in range(5)])
    time.sleep(0.1)
    t0 = time.monotonic()
    core.stop()
    assert time.monotonic() - t0 < 3
    assert len(recorder.failed) == 5
    assert all("core stopped" in error_of(recorder, i).cause for i in range(5))
    core.enqueue([req(9, True)])
    assert "core stopped" in error_of(recorder, 9).cause
    with pytest.raises(BackendError, match="core stopped"):
        core.health_check()


def test_cancel_gives_one_outcome(mock, make_core, recorder):
    mock.options.first_token_delay_ms = 2000
    core = make_core(recorder, mock.url)
    core.enqueue([req(0, True)])
    core.cancel(0, "cancelled by the test")
    assert recorder.wait_final(1, 2)
    time.sleep(0.1)
    assert recorder.final[0] == 1 and error_of(recorder, 0).cause == "cancelled by the test"


# --- sending without a loop hop -----------------------------------------------------------------------
def test_a_request_issued_from_an_outcome_is_written_before_enqueue_returns(mock, make_core, recorder):
    """A closed loop issues the next request from the sink, on the loop thread: it goes out inside that
    enqueue call (its slot was freed before the outcome), not a loop iteration or two later."""
    returned = {}

    class Chain:
        def on_first_token(self, rid, tokens):
            recorder.on_first_token(rid, tokens)

        def on_complete(self, rid, tokens, n):
            recorder.on_complete(rid, tokens, n)
            if rid < 20:
                core.enqueue([req(rid + 1, streaming=bool(rid % 2))])
                returned[rid + 1] = time.perf_counter_ns()

        def on_error(self, rid, err):
            recorder.on_error(rid, err)

    core = make_core(Chain(), mock.url, max_concurrency=1, probe=True)
    core.health_check()
    issued = time.perf_counter_ns()
    core.enqueue([req(0, streaming=True)])
    assert recorder.wait_final(21, 10) and not recorder.failed and set(recorder.final.values()) == {1}
    assert issued < core.send_times[0]  # from another thread: written on the loop, after the hop
    assert all(core.send_times[rid] <= returned[rid] for rid in range(1, 21))
    assert mock.stats["max_in_flight"] == 1


def test_a_request_cancelled_before_its_task_ran_frees_its_slot_and_connection(mock, make_core, recorder):
    mock.options.first_token_delay_ms = 3000
    core = make_core(recorder, mock.url, max_concurrency=1)
    core.health_check()

    def on_loop():
        core.enqueue([req(0, True)])  # written here, on the health check's idle connection
        core.cancel(0, "cancelled by the test")
        core._abort(0)  # the loop's abort ahead of the task's first step (a cancel racing the enqueue)

    core._loop.call_soon_threadsafe(on_loop)
    assert recorder.wait_final(1, 5)
    mock.options.first_token_delay_ms = 0
    core.enqueue([req(1, True)])
    assert recorder.wait_final(2, 5), "the cancelled request kept the only slot"
    assert recorder.final[0] == 1 and error_of(recorder, 0).cause == "cancelled by the test"
    assert recorder.completed[1][0].tolist() == expected_ids(req(1, True))
    assert core._http.num_connections == 1  # request 0's connection was dropped, not kept busy


def test_send_times_precede_first_tokens_and_outcomes(mock, make_core, recorder):
    core = make_core(recorder, mock.url, max_concurrency=4, probe=True)
    t0 = time.perf_counter_ns()
    core.enqueue([req(i, streaming=bool(i % 2)) for i in range(12)])
    assert recorder.wait_final(12, 10) and not recorder.failed
    assert sorted(core.send_times) == list(range(12))
    assert all(t0 < t < time.perf_counter_ns() for t in core.send_times.values())


def test_api_key_goes_in_the_header_only(mock, make_core, recorder):
    mock.options.fail_rate = 1.0
    core = make_core(recorder, mock.url, api_key="sk-do-not-log")
    assert core._headers["Authorization"] == "Bearer sk-do-not-log"
    core.enqueue([req(0, True), req(1, False)])
    assert recorder.wait_final(2, 5)
    for i in (0, 1):
        err = error_of(recorder, i)
        assert "HTTP 500" in err.cause and "sk-do-not-log" not in str(err) and "sk-do-not-log" not in repr(err)


def test_a_malformed_http_response_fails_its_request(make_core, recorder):
    """A server that answers garbage (not HTTP) fails each request with the URL and the cause."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(5)
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        core = make_core(recorder, url)
        core.enqueue([req(0, True)])
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
            assert recorder.wait_final(1, 5)
    err = error_of(recorder, 0)
    assert err.address == f"http://{url}" and "malformed HTTP response" in err.cause


def test_mock_command_line_prints_its_port_and_serves():
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--output_tokens", "3"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        import httpx
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": [1], "return_token_ids": True},
                       timeout=5)
        body = r.json()
        assert body["choices"][0]["token_ids"] == output_ids([1], 3, 1000)
        assert body["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        proc.wait(10)


def test_mock_processes_share_the_port_and_end_together():
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--processes", "2", "--output_tokens", "4", "--token_text", " the"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        children = [int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        assert len(children) == 1
        import httpx
        for _ in range(6):  # new connections: the kernel hands them to either process
            with httpx.Client(timeout=5) as client:
                r = client.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": [1], "stream": False})
                assert r.json()["choices"][0]["text"] == " the" * 4
    finally:
        proc.terminate()
        proc.wait(10)
    # the first process waits for the others before it exits
    assert not [c for c in children if os.path.exists(f"/proc/{c}")], "a server process outlived the first one"


def test_request_bodies_are_the_json_of_the_payload_numpy_scalars_included():
    from llmlib.cores.trtllm_endpoint_core import _body_bytes
    import json as _json

    payload = request_payload(model="m", prompt=list(range(300)), max_tokens=7, stream=True,
                              sampling={"temperature": 0.7, "top_p": 1.0}, stop_token_ids=(2,), chat=False,
                              return_token_ids=True, extensions=frozenset(), stream_usage=True)
    assert _json.loads(_body_bytes(payload)) == payload
    odd = {"prompt": [1, 2], "temperature": np.float64(0.25)}  # json takes it (a float subclass), msgspec not
    assert _json.loads(_body_bytes(odd)) == {"prompt": [1, 2], "temperature": 0.25}
