"""The emulated TensorRT-LLM Triton server itself, over the real gRPC wire with tritonclient: readiness,
the model's tensors, streamed and whole outputs, early end ids, model errors, requests in flight at
once on one stream, and a stop or kill that leaves no process and no shared memory behind."""

from __future__ import annotations

import queue
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype

from tests.servers.mock_openai_server import output_ids
from tests.servers import triton as triton_helper
from tests.servers.triton import TritonServer, TritonServerError, _group_pids, _mapped_shm, _model_copies

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

OUT = 8
EOS_EVERY, EOS_AT = 100, 3  # prompts summing to a multiple of 100 end after 3 tokens (with an end_id)
FAIL_EVERY, FAIL_AFTER = 97, 2  # prompts summing to a multiple of 97 fail after 2 tokens
END_ID = 2
RESPONSE_TIMEOUT_S = 20.0
#: Names and dtypes of tensorrtllm_backend's all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt.
SCALAR_INPUTS = {"input_lengths": "TYPE_INT32", "request_output_len": "TYPE_INT32", "end_id": "TYPE_INT32",
                 "pad_id": "TYPE_INT32", "streaming": "TYPE_BOOL", "beam_width": "TYPE_INT32",
                 "temperature": "TYPE_FP32", "runtime_top_k": "TYPE_INT32", "runtime_top_p": "TYPE_FP32",
                 "random_seed": "TYPE_UINT64", "min_length": "TYPE_INT32", "presence_penalty": "TYPE_FP32",
                 "frequency_penalty": "TYPE_FP32", "stop": "TYPE_BOOL"}


@pytest.fixture(scope="module")
def server():
    with TritonServer(num_models=2, output_tokens=OUT, eos_every=EOS_EVERY, eos_at=EOS_AT,
                      fail_every=FAIL_EVERY, fail_after_tokens=FAIL_AFTER) as s:
        yield s


@pytest.fixture
def stream(server):
    """A client with an open stream; `stream.get()` -> (InferResult | None, error | None)."""
    client = grpcclient.InferenceServerClient(server.url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.get = lambda: responses.get(timeout=RESPONSE_TIMEOUT_S)
    yield client
    client.stop_stream()
    client.close()


SAMPLING = {"beam_width": np.array([[1]], np.int32), "temperature": np.array([[0.7]], np.float32),
            "runtime_top_k": np.array([[40]], np.int32), "runtime_top_p": np.array([[0.9]], np.float32),
            "random_seed": np.array([[2**63 + 5]], np.uint64), "min_length": np.array([[1]], np.int32),
            "presence_penalty": np.array([[0.1]], np.float32), "frequency_penalty": np.array([[0.2]], np.float32)}


def tensors(prompt: list[int], n: int, *, streaming: bool | None = None, end_id: int | None = None,
            extra: dict | None = None) -> list:
    """The inputs the triton_grpc core sends: a leading batch dim of 1, optional ones left out when None."""
    arrays = {"input_ids": np.array([prompt], np.int32), "input_lengths": np.array([[len(prompt)]], np.int32),
              "request_output_len": np.array([[n]], np.int32), **(extra or {})}
    if streaming is not None:
        arrays["streaming"] = np.array([[streaming]], bool)
    if end_id is not None:
        arrays["end_id"] = np.array([[end_id]], np.int32)
    out = []
    for name, array in arrays.items():
        t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        out.append(t)
    return out


def send(client, prompt, n, *, model="tensorrt_llm_0", request_id="", **kw) -> None:
    client.async_stream_infer(model, tensors(prompt, n, **kw), request_id=request_id,
                              enable_empty_final_response=True)


def is_final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def test_ready_and_the_model_config_of_tensorrt_llm(server):
    client = grpcclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert server.models == ["tensorrt_llm_0", "tensorrt_llm_1"]
    assert all(client.is_model_ready(m) for m in server.models) and not client.is_model_ready("tensorrt_llm")
    config = client.get_model_config("tensorrt_llm_0").config
    assert config.max_batch_size > 0 and config.model_transaction_policy.decoupled
    inputs = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input}
    assert len(inputs) == 36  # all of the real model's
    assert inputs["input_ids"] == ("TYPE_INT32", [-1]) and inputs["stop_words_list"] == ("TYPE_INT32", [2, -1])
    assert {name: inputs[name] for name in SCALAR_INPUTS} == {n: (t, [1]) for n, t in SCALAR_INPUTS.items()}
    required = {t.name for t in config.input if not t.optional}
    assert required == {"input_ids", "input_lengths", "request_output_len"}
    outputs = {t.name: list(t.dims) for t in config.output}
    assert outputs == {"output_ids": [-1, -1], "sequence_length": [-1]}
    client.close()


def test_streamed_request_one_response_per_token_then_an_empty_final_one(server, stream):
    prompt = [1, 2, 3, 4]
    send(stream, prompt, 5, streaming=True, request_id="s1", extra=SAMPLING)  # sampling is accepted, ignored
    got = []
    for _ in range(5):
        result, error = stream.get()
        assert error is None and not is_final(result) and result.get_response().id == "s1"
        assert result.as_numpy("output_ids").shape == (1, 1, 1) and result.as_numpy("output_ids").dtype == np.int32
        assert result.as_numpy("sequence_length").tolist() == [[1]]
        got.append(int(result.as_numpy("output_ids")[0, 0, 0]))
    result, error = stream.get()
    assert error is None and is_final(result) and result.get_response().id == "s1"
    assert result.get_response().outputs == [] and result.as_numpy("output_ids") is None
    assert got == output_ids(prompt, 5, 1000)


def test_whole_output_padded_to_request_output_len_with_the_true_length(server, stream):
    prompt = [5, 6, 7]
    send(stream, prompt, 20, streaming=False, end_id=END_ID, model="tensorrt_llm_1")
    result, error = stream.get()
    assert error is None and not is_final(result)
    ids, length = result.as_numpy("output_ids"), result.as_numpy("sequence_length")
    assert ids.shape == (1, 1, 20) and length.tolist() == [[OUT]]
    assert ids[0, 0].tolist() == output_ids(prompt, OUT, 1000) + [END_ID] * (20 - OUT)
    result, error = stream.get()
    assert error is None and is_final(result) and result.as_numpy("output_ids") is None
    # streaming left out means a whole output, as in TensorRT-LLM
    send(stream, prompt, 3)
    result, _ = stream.get()
    assert result.as_numpy("output_ids")[0, 0].tolist() == output_ids(prompt, 3, 1000)
    assert is_final(stream.get()[0])


def test_early_end_id_only_when_the_request_gives_one(server, stream):
    prompt = [40, 60]  # sums to a multiple of EOS_EVERY
    send(stream, prompt, OUT, streaming=True, end_id=END_ID)
    tokens = [int(stream.get()[0].as_numpy("output_ids")[0, 0, 0]) for _ in range(EOS_AT)]
    assert tokens == output_ids(prompt, EOS_AT - 1, 1000) + [END_ID] and is_final(stream.get()[0])
    send(stream, prompt, OUT, streaming=False)
    result, _ = stream.get()
    assert result.as_numpy("sequence_length").tolist() == [[OUT]]
    assert is_final(stream.get()[0])


def test_model_error_ends_the_request_after_its_tokens(server, stream):
    bad, good = [90, 7], [90, 8]  # 97 fails; 98 does not
    send(stream, bad, OUT, streaming=True, request_id="bad")
    for _ in range(FAIL_AFTER):
        result, error = stream.get()
        assert error is None and result.get_response().id == "bad" and not is_final(result)
    result, error = stream.get()
    assert result is None and isinstance(error, grpcclient.InferenceServerException)
    # tritonclient hands the callback the message only; the wire response also names the request
    assert "injected fault" in error.message()
    send(stream, bad, OUT, streaming=False)
    result, error = stream.get()
    assert result is None and "injected fault" in error.message()
    send(stream, good, 2, streaming=True)  # the stream goes on
    assert [e for _, e in (stream.get() for _ in range(3))] == [None] * 3


def test_error_response_on_the_wire_carries_the_request_id_and_the_final_flag(server):
    """Below tritonclient's callback: the raw ModelStreamInferResponse of an error names its request."""
    def requests():
        for rid, prompt in (("fails", [97]), ("works", [98])):
            request = service_pb2.ModelInferRequest(model_name="tensorrt_llm_0", id=rid)
            request.parameters["triton_enable_empty_final_response"].bool_param = True
            for t in tensors(prompt, 1, streaming=True):
                request.inputs.append(t._get_tensor())
                request.raw_input_contents.append(t._get_content())
            yield request
        finals.get(timeout=RESPONSE_TIMEOUT_S)  # keep the stream open until both requests ended

    finals: queue.Queue = queue.Queue()
    seen = []
    with grpc.insecure_channel(server.url) as channel:
        for response in service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests()):
            final = response.infer_response.parameters["triton_final_response"].bool_param
            seen.append((response.infer_response.id, bool(response.error_message), final))
            if sum(f for *_, f in seen) == 2:
                finals.put(True)
                break
    assert ("fails", True, True) in seen and ("works", False, True) in seen


def test_requests_on_one_stream_run_at_once(server):
    """50 requests of 5 tokens 100 ms apart finish in about one request's time, not 50 of them."""
    with TritonServer(output_tokens=5, per_token_delay_ms=100) as slow:
        client = grpcclient.InferenceServerClient(slow.url)
        finals: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: finals.put(error) if error or is_final(result) else None)
        start = time.monotonic()
        for i in range(50):
            send(client, [i + 1], 5, streaming=True, model="tensorrt_llm")
        errors = [finals.get(timeout=RESPONSE_TIMEOUT_S) for _ in range(50)]
        elapsed = time.monotonic() - start
        client.stop_stream()
        client.close()
    assert errors == [None] * 50 and elapsed < 3.0


def test_a_stop_request_ends_the_generation_with_its_prompt_from_any_stream():
    """TensorRT-LLM's cancel: a request with stop=true (and the same id, which the real backend
    matches; the emulator matches the prompt) ends the live generation at once; the stop request gets
    an empty final response of its own."""
    with TritonServer(output_tokens=12, per_token_delay_ms=200) as slow:
        clients, queues = [], []
        for _ in range(2):
            client = grpcclient.InferenceServerClient(slow.url)
            q: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error, q=q: q.put((result, error)))
            clients.append(client)
            queues.append(q)
        send(clients[0], [4, 5, 6], 12, streaming=True, model="tensorrt_llm", request_id="7")
        send(clients[0], [8, 9], 12, streaming=True, model="tensorrt_llm", request_id="8")  # not stopped
        first, error = queues[0].get(timeout=RESPONSE_TIMEOUT_S)
        assert error is None and not is_final(first)
        start = time.monotonic()
        send(clients[1], [4, 5, 6], 1, model="tensorrt_llm", request_id="7", extra={"stop": np.array([[True]])})
        stop_reply, error = queues[1].get(timeout=RESPONSE_TIMEOUT_S)
        assert error is None and is_final(stop_reply) and stop_reply.as_numpy("output_ids") is None
        ends = {}
        while len(ends) < 2:
            result, error = queues[0].get(timeout=RESPONSE_TIMEOUT_S)
            assert error is None
            if is_final(result):
                ends[result.get_response().id] = time.monotonic() - start
        for client in clients:
            client.stop_stream()
            client.close()
    assert ends["7"] < 1.0 and ends["8"] > 1.5  # 7 stopped at once; 8 ran its 12 tokens (2.2 s)


def test_stop_and_kill_leave_no_process_no_shared_memory_no_files():
    for end in (TritonServer.stop, TritonServer.kill):
        server = TritonServer(output_tokens=4).start()
        pids = _group_pids(server.pid)
        files = _mapped_shm(pids) | _model_copies(pids) | {server._tmp}
        assert len(pids) >= 3 and len(files) >= 3  # the script, tritonserver, a Python backend stub
        end(server)
        assert not [p for p in pids if _alive(p)] and not [f for f in files if f.exists()], end
        with pytest.raises(TritonServerError, match="not started"):
            server.url


def test_missing_server_venv_fails_naming_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setattr(triton_helper, "SERVER_VENV", tmp_path / "nowhere")
    with pytest.raises(TritonServerError, match="make test_servers"):
        TritonServer().start()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
