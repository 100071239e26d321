"""The `triton_grpc` core against a real tritonserver (nvidia-pytriton's, on CPU) serving a
decoupled model with the TensorRT-LLM model's tensors (tests/servers/triton_trtllm_server.py):
streaming and non-streaming outputs, end ids, several clients and models, model errors that
Triton does not attribute to a request, the server down at start or killed mid-run, timeouts,
and a LoadGen Server run to VALID."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llmlib.cli import resolve_for
from llmlib.cores.base import Request
from llmlib.benchmarks import load_benchmark
from llmlib.config import resolve
from llmlib.generation import generation_params
from llmlib.cores.triton_grpc_core import TritonGrpcCore, TritonSettings
from llmlib.errors import BackendError
from llmlib.harness import run_scenario
from llmlib.loadgen_log import parse_detail_log, summarize
from tests.servers.mock_openai_server import output_ids
from tests.servers.triton import TritonServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

OUT = 12  # tokens the server generates (below tiny's max_new_tokens)
VOCAB = 1000


@pytest.fixture(scope="module")
def triton():
    """One server for the module's well-behaved tests: two models, a little per-token delay."""
    with TritonServer(num_models=2, output_tokens=OUT, per_token_delay_ms=0.2) as server:
        yield server


@pytest.fixture
def make_core(make_config, tiny_benchmark):
    made = []

    def make(sink, url, model="tensorrt_llm_0", **settings):
        settings.setdefault("health_timeout_s", 5.0)
        core = TritonGrpcCore(TritonSettings(url=url, model=model, **settings), rank=0, sink=sink)
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


#: what the harness sends with every request of the tiny benchmark (its EOS is the end id)
RUN_PARAMS = generation_params(resolve(cli={}, env={}, layers=()), load_benchmark("tiny"))


def req(rid: int, streaming: bool, max_new: int = 64, n_in: int = 5) -> Request:
    return Request(rid, np.arange(rid, rid + n_in, dtype=np.int32), RUN_PARAMS.with_max_new_tokens(max_new),
                   streaming, sample_index=rid)


def expected(r: Request, n: int = OUT) -> list[int]:
    return output_ids([int(t) for t in r.input_tokens], n, VOCAB)


def test_health_check_reads_the_model_inputs(triton, make_core, recorder):
    core = make_core(recorder, triton.url)
    core.health_check()
    assert {"input_ids", "input_lengths", "request_output_len", "end_id", "streaming"} <= core.model_inputs
    missing = make_core(recorder, triton.url, model="llama-405b")
    with pytest.raises(BackendError, match="model 'llama-405b' not in the server's model repository") as info:
        missing.health_check()
    assert info.value.final  # retrying cannot make it appear: the health check stops at once
    renamed = make_core(recorder, triton.url, tensor_names={"input_ids": "INPUT_ID"})
    with pytest.raises(BackendError, match="lacks input.*INPUT_ID") as info:
        renamed.health_check()
    assert info.value.final


def test_streamed_and_whole_outputs_exactly_once_over_two_clients(triton, make_core, recorder):
    core = make_core(recorder, triton.url, num_clients=2, max_concurrency=32)
    core.health_check()
    reqs = [req(i, streaming=bool(i % 2), max_new=8 if i % 5 == 0 else 64) for i in range(200)]
    for start in range(0, 200, 25):
        core.enqueue(reqs[start:start + 25])
    assert recorder.wait_final(200, 60)
    time.sleep(0.05)
    assert not recorder.failed and set(recorder.final.values()) == {1}
    assert core.num_pending == 0
    for r in reqs:
        tokens, n, _ = recorder.completed[r.request_id]
        n_expected = min(OUT, r.max_new_tokens)
        assert tokens.dtype == np.uint32 and tokens.tolist() == expected(r, n_expected) and n == n_expected
        assert recorder.first[r.request_id] == (1 if r.streaming else 0)
    firsts, finals = recorder.times("first"), recorder.times("complete")
    assert all(firsts[r.request_id] < finals[r.request_id] for r in reqs if r.streaming)


def test_second_model_on_the_same_server(triton, make_core, recorder):
    core = make_core(recorder, triton.url, model="tensorrt_llm_1")
    core.health_check()
    core.enqueue([req(1, True)])
    assert recorder.wait_final(1, 20) and recorder.completed[1][0].tolist() == expected(req(1, True))


def test_output_stops_before_the_end_id(make_core, recorder, tiny_benchmark):
    """Every prompt ends early with the end id (tiny's eos): it is not part of the output, and
    nothing after it is either (the non-streamed reply is padded with it)."""
    eos = tiny_benchmark.eos_token_id
    with TritonServer(output_tokens=OUT, eos_every=1, eos_at=4) as server:
        core = make_core(recorder, server.url, model="tensorrt_llm")
        core.health_check()
        core.enqueue([req(1, True), req(2, False)])
        assert recorder.wait_final(2, 20) and not recorder.failed
        for r in (req(1, True), req(2, False)):
            tokens = recorder.completed[r.request_id][0].tolist()
            assert tokens == expected(r, 3) and eos not in tokens


def test_model_errors_fail_only_their_requests(make_core, recorder):
    """A model error reaches the stream without the request's id; the core still fails exactly the
    requests that failed, after their stream drains, and the others complete with the right ids."""
    with TritonServer(output_tokens=OUT, per_token_delay_ms=0.5, fail_rate=0.2, seed=3) as server:
        core = make_core(recorder, server.url, model="tensorrt_llm", num_clients=2)
        core.health_check()
        reqs = [req(i, streaming=True) for i in range(100)]
        core.enqueue(reqs)
        assert recorder.wait_final(100, 60)
        assert 5 <= len(recorder.failed) <= 40 and core.model_errors == len(recorder.failed)
        for rid, (err, *_) in recorder.failed.items():
            assert isinstance(err, BackendError) and "model error" in str(err) and server.url in str(err)
        for rid, (tokens, *_ ) in recorder.completed.items():
            assert tokens.tolist() == expected(reqs[rid])
        assert set(recorder.final.values()) == {1} and core.num_pending == 0
        # the core goes on with fresh streams
        more = [req(i, True) for i in range(100, 110)]
        core.enqueue(more)
        assert recorder.wait_final(110, 30)


def test_server_down_at_start_is_a_clear_health_error(make_core, recorder):
    core = make_core(recorder, "127.0.0.1:9")
    with pytest.raises(BackendError, match=r"grpc://127\.0\.0\.1:9/tensorrt_llm_0.*health check failed") as info:
        core.health_check()
    assert not info.value.final  # UNAVAILABLE: a server that is starting heals
    core.enqueue([req(1, True)])  # a request to a dead server fails, never hangs
    assert recorder.wait_final(1, 20) and 1 in recorder.failed


class _StreamOrder:
    """Forces one order of tritonclient's two steps when a stream fails (it marks the stream dead,
    then calls back with why) against a send, on a real gRPC stream to a closed port. Each wait is
    bounded and a step that does not come in time is named in `late` (the test then fails saying
    so, rather than passing on an order it did not force)."""

    def __init__(self, monkeypatch, send_first: bool):
        import tritonclient.grpc as grpcclient

        self.reported, self.send_raised = threading.Event(), threading.Event()
        self.late: list[str] = []  # a step that did not come in time (a loaded machine), for the assertion
        cls = grpcclient.InferenceServerClient
        start, send = cls.start_stream, cls.async_stream_infer
        order = self

        def start_stream(client, callback, **kw):
            def on_response(result=None, error=None):
                if error is not None and send_first:
                    if not order.send_raised.wait(30):  # hold the callback until a send has hit the dead stream
                        order.late.append("no send met the dead stream within 30 s")
                if error is not None:
                    # the report has begun: the core's callback may wait for its lock, which the
                    # core holds while it starts the stream
                    order.reported.set()
                callback(result=result, error=error)

            start(client, on_response, **kw)
            if send_first:  # wait until the stream is dead, its callback held
                deadline = time.monotonic() + 30
                while client._stream._active and time.monotonic() < deadline:
                    time.sleep(0.001)
                if client._stream._active:
                    order.late.append("the stream was still active 30 s after it started")
            elif not order.reported.wait(30):  # the failure is being reported before start_stream returns
                order.late.append("the stream's failure was not reported within 30 s of its start")

        def async_stream_infer(client, *args, **kw):
            try:
                return send(client, *args, **kw)
            except Exception:
                order.send_raised.set()
                raise

        monkeypatch.setattr(cls, "start_stream", start_stream)
        monkeypatch.setattr(cls, "async_stream_infer", async_stream_infer)
        self.reset = lambda: (self.reported.clear(), self.send_raised.clear())


@pytest.mark.parametrize("send_first", [False, True], ids=["failure-reported-first", "send-raised-first"])
def test_a_stream_that_fails_as_it_opens_fails_each_request_with_the_cause(make_core, recorder, monkeypatch,
                                                                          send_first):
    """The server is gone: each request opens a fresh stream that fails at once, whichever of the
    failure report and the send comes first, and fails with gRPC's UNAVAILABLE (not a stale
    "stream no longer in valid state" on a stream never replaced)."""
    order = _StreamOrder(monkeypatch, send_first)
    core = make_core(recorder, "127.0.0.1:9")
    for rid in range(4):
        order.reset()
        core.enqueue([req(rid, True)])
        assert recorder.wait_final(rid + 1, 70) and rid in recorder.failed
        assert not order.late, order.late
        assert order.send_raised.is_set()  # the send did meet a dead stream
    causes = [str(err) for err, *_ in recorder.failed.values()]
    assert all("gRPC stream failed: StatusCode.UNAVAILABLE" in c for c in causes), causes
    assert core.stream_failures == 4 and core.num_pending == 0


def test_server_killed_mid_run_fails_what_it_held(make_core, recorder):
    with TritonServer(output_tokens=OUT, per_token_delay_ms=50) as server:
        core = make_core(recorder, server.url, model="tensorrt_llm", num_clients=2)
        core.health_check()
        core.enqueue([req(i, True) for i in range(20)])
        time.sleep(0.3)
        server.kill()
        assert recorder.wait_final(20, 30)
        assert len(recorder.failed) == 20 and core.stream_failures >= 1
        assert all("UNAVAILABLE" in str(e) or "stream failed" in str(e) for e, *_ in recorder.failed.values())
        core.enqueue([req(50, True)])  # after the server died: fails, never hangs
        assert recorder.wait_final(21, 30) and 50 in recorder.failed


def test_cancel_stops_the_generation_on_the_server_and_frees_its_slot(make_core, recorder):
    """A cancelled (timed-out) request is stopped on the server with TensorRT-LLM's stop input, on the
    core's own stop stream: the server ends it at once, so its concurrency slot is free for the next
    request long before its generation (12 tokens, 2.2 s) would have ended."""
    with TritonServer(output_tokens=OUT, per_token_delay_ms=200) as server:
        core = make_core(recorder, server.url, model="tensorrt_llm", max_concurrency=1)
        core.health_check()
        core.enqueue([req(1, True)])
        deadline = time.monotonic() + 10
        while not recorder.first.get(1) and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        core.cancel(1, "timed out after 0.2s")
        core.enqueue([req(2, True, max_new=2)])  # waits for request 1's slot
        assert recorder.wait_final(2, 20)
        elapsed = time.monotonic() - start
        assert "timed out" in str(recorder.failed[1][0])
        assert recorder.completed[2][0].tolist() == expected(req(2, True), 2)
        assert elapsed < 1.5 and core.stops_sent == 1 and core.stop_errors == 0  # without the stop: 2.4 s
        assert core.report()["stops_sent"] == 1


def test_request_timeout_ends_the_run_with_the_failures_counted(tmp_path):
    """A server far slower than --request_timeout_s: the watchdog cancels each request on the core,
    and the run ends with every sample accounted for (failed, timed out), not a hang."""
    with TritonServer(output_tokens=OUT, per_token_delay_ms=300) as server:
        o = _run(tmp_path, server, "Server", request_timeout_s="0.5", server_target_qps="50",
                 min_query_count="60", min_duration_ms="300", warmup_queries="0")
    assert o.issued == o.completed + o.failed and o.lost == 0
    assert o.failed > 0 and o.timed_out == o.failed
    assert any("timed out" in cause for cause in o.errors)


def _run(tmp_path, server, scenario, **cli):
    cli = {"core_type": "triton_grpc", "triton_server_urls": server.url, "triton_model_name": "tensorrt_llm",
           "show_progress": "false", "results_dir": str(tmp_path), **cli}
    config, benchmark = resolve_for(cli, "tiny-synthetic", scenario, env={})
    return run_scenario(config, benchmark, scenario)


def test_loadgen_server_valid(tmp_path):
    """Sized for the emulating server (PyTriton's Python backend costs ~1 ms per streamed response
    on this CPU; 30 QPS x 8 tokens leaves room on a loaded 2-core machine)."""
    with TritonServer(num_models=2, output_tokens=8, first_token_delay_ms=5, per_token_delay_ms=0.5) as server:
        o = _run(tmp_path, server, "Server", triton_num_clients_per_server="2", triton_num_models_per_server="2",
                 triton_model_name="tensorrt_llm", warmup_queries="2", min_duration_ms="1000",
                 server_target_qps="30", min_query_count="500")
        url = server.url
        offline = _run(tmp_path, server, "Offline", triton_num_models_per_server="2",
                       triton_model_name="tensorrt_llm", warmup_queries="2", offline_expected_qps="200",
                       min_duration_ms="1000", min_query_count="256")
    assert offline.ok and offline.issued == offline.completed >= 256, offline.errors
    assert offline.output_tokens == 8 * offline.completed  # whole replies, padding cut at sequence_length
    lg = summarize(parse_detail_log(Path(o.outdir) / "mlperf_log_detail.txt"))
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.failed == 0 and o.lost == 0, o.errors
    assert o.issued == o.completed == lg.completed_sample_count >= 500
    assert o.output_tokens == 8 * o.completed
    # one core per model, both used
    assert [st["core"] for st in o.core_stats] == [f"grpc://{url}/tensorrt_llm_{i}" for i in (0, 1)]
    assert all(st["completed"] > 0 for st in o.core_stats)
    assert 4e6 <= lg.ttft_p99_ns < 2000e6  # the server's 5 ms first-token delay is seen, not 0
