"""OpenAIWorker against a loopback HTTP server started by the test (deterministic completions and
chat endpoints, SSE streaming, error replies), plus its pure payload / SSE / response functions."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmlib.errors import BackendError
from scaffolding import (
    Controller, GenerationTask, NativeGenerationController, ScaffoldingLlm, StreamGenerationTask, TaskFailedError,
)
from scaffolding.workers import TaskInputError
from scaffolding.workers.openai_worker import (
    OpenAIWorker, SSEDecoder, normalise_base_url, parse_response, request_payload, resolve_api_key,
)

pytestmark = pytest.mark.timeout(30)

KEY = "sk-test-secret-0123456789"


def reply_words(body: dict) -> list[str]:
    """The server's deterministic output: the prompt's words reversed, then 'w<i>', up to max_tokens."""
    if "messages" in body:
        prompt = body["messages"][-1]["content"]
    else:
        prompt = body["prompt"]
    words = [str(t + 1) for t in prompt] if isinstance(prompt, list) else prompt.split()[::-1]
    n = body.get("max_tokens", 16)
    out = (words + [f"w{i}" for i in range(n)])[:n] if "long" in words else words[:n]
    return [" " + w for w in out]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # bodies end when the connection closes (SSE too)

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _json(self, status: int, obj) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        marker = prompt if isinstance(prompt, str) else ""
        if marker == "status500":
            return self._json(500, {"error": {"message": "engine exploded"}})
        if marker == "malformed":
            return self._json(200, b"{not json")
        if marker == "nochoices":
            return self._json(200, {"id": "x", "choices": []})
        if marker == "slow":
            time.sleep(1.0)  # the client's timeout is shorter; bounded either way
            try:
                self._json(200, {"choices": [{"text": "late", "finish_reason": "stop"}]})
            except (BrokenPipeError, ConnectionResetError):
                server.disconnects.append(marker)
            return None
        if marker.startswith("delayed"):
            time.sleep(0.1)
        words = reply_words(body)
        n_prompt = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        finish = "length" if len(words) == body.get("max_tokens", 16) else "stop"
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(words), "total_tokens": n_prompt + len(words)}
        if not body.get("stream"):
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                          "finish_reason": finish}
            else:
                choice = {"index": 0, "text": "".join(words), "finish_reason": finish,
                          "logprobs": {"token_logprobs": [-0.5] * len(words)} if body.get("logprobs") else None}
            return self._json(200, {"id": "cmpl-1", "object": "text_completion", "choices": [choice],
                                    "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        delay = 0.03 if "slowstream" in marker else 0.002
        try:
            for i, w in enumerate(words):
                last = i == len(words) - 1
                if chat:
                    choice = {"index": 0, "delta": {"content": w}, "finish_reason": finish if last else None}
                else:
                    choice = {"index": 0, "text": w, "finish_reason": finish if last else None}
                if "streambroken" in marker and i == 2:
                    self.wfile.write(b"data: {broken\n\n")
                    self.wfile.flush()
                    return
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                self.wfile.flush()
                time.sleep(delay)
            self.wfile.write(f": usage follows\n\ndata: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            server.disconnects.append(marker)


class LoopbackServer(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops concurrent connects (retried after 1 s)
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def api():
    """A loopback OpenAI-style server on a free port; `api.url`, `api.seen`, `api.disconnects`."""
    httpd = LoopbackServer(("127.0.0.1", 0), Handler)
    httpd.seen, httpd.disconnects = [], []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def run(worker, prompt, controller=None):
    with ScaffoldingLlm(controller or NativeGenerationController(), {"generation": worker}) as llm:
        return llm.generate(prompt)


# --- end to end ------------------------------------------------------------------------------------------
def test_completions_end_to_end_with_sampling_and_key(api):
    worker = OpenAIWorker(api.url, "tiny", api_key=KEY)
    ctrl = NativeGenerationController({"max_tokens": 2, "temperature": 0.5, "top_k": 3, "seed": 7})
    task = run(worker, "alpha beta gamma", ctrl)
    assert task.output_str == " gamma beta" and task.finish_reason == "length"
    assert (task.completion_tokens, task.prompt_tokens) == (2, 3)
    assert task.ttft_s is None and task.latency_s > 0 and task.output_tokens is None
    seen = api.seen[-1]
    assert seen["path"] == "/v1/completions" and seen["auth"] == f"Bearer {KEY}"
    assert seen["body"] == {"model": "tiny", "prompt": "alpha beta gamma", "max_tokens": 2, "temperature": 0.5,
                            "top_k": 3, "seed": 7}


def test_token_prompts_and_logprobs_on_completions(api):
    worker = OpenAIWorker(api.url + "/v1/", "tiny")
    task = run(worker, [4, 5, 6], NativeGenerationController({"max_tokens": 8, "num_logprobs": 1}))
    assert task.output_str == " 5 6 7" and task.finish_reason == "stop" and task.logprobs == [-0.5] * 3
    assert api.seen[-1]["body"]["prompt"] == [4, 5, 6] and api.seen[-1]["auth"] is None


def test_chat_endpoint(api):
    worker = OpenAIWorker(api.url, "tiny", chat=True)
    task = run(worker, "one two", NativeGenerationController({"max_tokens": 4, "stop": ["\n"]}))
    assert task.output_str == " two one" and task.completion_tokens == 2
    body = api.seen[-1]["body"]
    assert api.seen[-1]["path"] == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "one two"}] and body["stop"] == ["\n"]
    with pytest.raises(TaskFailedError, match="chat endpoint needs input_str"):
        run(worker, [1, 2])


def test_many_concurrent_requests_share_the_loop(api):
    worker = OpenAIWorker(api.url, "tiny")

    class FanOut(Controller):
        def process(self, tasks, **kwargs):
            subs = [GenerationTask(input_str=f"delayed p{i} long", max_tokens=5) for i in range(24)]
            yield subs
            return [t.output_str for t in subs]

    t0 = time.monotonic()
    outs = run(worker, "x", FanOut())
    assert time.monotonic() - t0 < 1.2  # 24 x 100 ms one after the other would take 2.4 s
    assert outs == [f" long p{i} delayed w0 w1" for i in range(24)]


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, message", [
    ("status500", r"/v1/completions: HTTP 500: .*engine exploded"),
    ("malformed", r"/v1/completions: HTTP 200: malformed JSON: \{not json"),
    ("nochoices", r"response has no choices\[0\]\.text"),
    ("slow", r"/v1/completions: timed out after 0\.3s"),
])
def test_server_errors_fail_the_task_naming_url_and_status(api, prompt, message):
    worker = OpenAIWorker(api.url, "tiny", api_key=KEY, timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(TaskFailedError, match=message) as info:
        run(worker, prompt)
    assert time.monotonic() - t0 < 5
    error = info.value.tasks[0].error
    assert isinstance(error, BackendError) and error.address == f"{api.url}/v1/completions"
    assert KEY not in str(error) and KEY not in repr(worker)


def test_a_server_that_is_not_there(api):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = OpenAIWorker(f"http://127.0.0.1:{port}", "tiny", timeout_s=2)
    with pytest.raises(TaskFailedError, match=f"127.0.0.1:{port}/v1/completions: request failed: ConnectError"):
        run(worker, "hi")


# --- streaming -------------------------------------------------------------------------------------------
class Stepper(Controller):
    def __init__(self, prompt, step, max_tokens=10, cancel_at=None, chat=False):
        self.prompt, self.step, self.max_tokens, self.cancel_at = prompt, step, max_tokens, cancel_at

    def process(self, tasks, **kwargs):
        task = StreamGenerationTask(input_str=self.prompt, max_tokens=self.max_tokens, streaming_step=self.step)
        seen = []
        while not task.end_flag:
            yield [task]
            seen.append(task.output_str)
            if self.cancel_at is not None and len(seen) >= self.cancel_at:
                task.cancel_flag = True
        return task, seen


def test_stream_steps_return_every_streaming_step_chunks(api):
    task, seen = run(OpenAIWorker(api.url, "tiny"), "x", Stepper("a b c d e", step=2))
    assert seen == [" e d", " e d c b", " e d c b a"]
    assert task.finish_reason == "stop" and task.completion_tokens == 5 and task.prompt_tokens == 5
    assert 0 < task.ttft_s <= task.latency_s
    assert api.seen[-1]["body"]["stream"] is True and api.seen[-1]["body"]["stream_options"] == {"include_usage": True}


def test_chat_streams_too(api):
    task, seen = run(OpenAIWorker(api.url, "tiny", chat=True), "x", Stepper("a b c", step=1))
    assert seen == [" c", " c b", " c b a"] and task.end_flag and task.finish_reason == "stop"


def test_cancel_closes_the_connection_and_the_server_sees_it(api):
    task, seen = run(OpenAIWorker(api.url, "tiny"), "x", Stepper("slowstream long", step=2, max_tokens=40,
                                                                  cancel_at=1))
    assert seen == [" long slowstream", " long slowstream"]
    assert task.finish_reason == "cancelled" and task.end_flag and task.completion_tokens == 2
    deadline = time.monotonic() + 3
    while not api.disconnects and time.monotonic() < deadline:  # the server notices at its next write
        time.sleep(0.02)
    assert api.disconnects == ["slowstream long"]


def test_streamed_generation_tasks_get_a_ttft(api):
    task = run(OpenAIWorker(api.url, "tiny", streaming=True), "p q r")
    assert task.output_str == " r q p" and 0 < task.ttft_s <= task.latency_s and task.completion_tokens == 3


def test_a_malformed_stream_event_fails_the_task(api):
    with pytest.raises(TaskFailedError, match=r"/v1/completions: malformed SSE event \(not JSON\): \{broken"):
        run(OpenAIWorker(api.url, "tiny"), "x", Stepper("streambroken a b c d e", step=1))


def test_a_stream_error_status_fails_before_reading(api):
    with pytest.raises(TaskFailedError, match="HTTP 500"):
        run(OpenAIWorker(api.url, "tiny"), "x", Stepper("status500", step=1))


# --- configuration and pure functions -----------------------------------------------------------------------
def test_api_key_sources(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert resolve_api_key("explicit", key_file, env={"OPENAI_API_KEY": "env"}) == "explicit"
    assert resolve_api_key(None, key_file, env={"OPENAI_API_KEY": "env"}) == "from-file"
    assert resolve_api_key(None, None, env={"OPENAI_API_KEY": "env"}) == "env"
    assert resolve_api_key(None, None, env={}) is None
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_api_key(None, tmp_path / "missing", env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        resolve_api_key(None, tmp_path / "empty", env={})


def test_the_key_from_the_environment_is_sent(api, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run(OpenAIWorker(api.url, "tiny"), "a")
    assert api.seen[-1]["auth"] == f"Bearer {KEY}"


def test_base_url_and_arguments_are_checked():
    assert normalise_base_url("http://h:1") == "http://h:1/v1"
    assert normalise_base_url("https://h/v1/") == "https://h/v1"
    with pytest.raises(ValueError, match="base_url='h:1'"):
        OpenAIWorker("h:1", "m")
    with pytest.raises(ValueError, match="model=''"):
        OpenAIWorker("http://h", "")
    with pytest.raises(ValueError, match="timeout_s=0"):
        OpenAIWorker("http://h", "m", timeout_s=0)
    with pytest.raises(ValueError, match="default_max_tokens=0"):
        OpenAIWorker("http://h", "m", default_max_tokens=0)
    with pytest.raises(ValueError, match="max_connections=0"):
        OpenAIWorker("http://h", "m", max_connections=0)


def test_payload_maps_fields_by_their_openai_names():
    task = GenerationTask(input_str="q", max_tokens=3, temperature=0.1, top_p=0.9, top_k=5, seed=1,
                          frequency_penalty=0.2, presence_penalty=0.3, stop=["x", 7], num_logprobs=2)
    body = request_payload(task, "m", chat=False, stream=False, extra_body={"ignore_eos": True})
    assert body == {"model": "m", "prompt": "q", "max_tokens": 3, "temperature": 0.1, "top_p": 0.9, "top_k": 5,
                    "seed": 1, "frequency_penalty": 0.2, "presence_penalty": 0.3, "stop": ["x"],
                    "stop_token_ids": [7], "logprobs": 2, "ignore_eos": True}
    chat = request_payload(task, "m", chat=True, stream=True)
    assert chat["logprobs"] is True and chat["top_logprobs"] == 2 and chat["stream"] is True
    assert request_payload(GenerationTask(input_str="q"), "m", chat=False, stream=False,
                           default_max_tokens=9)["max_tokens"] == 9
    with pytest.raises(TaskInputError, match="n=2"):
        request_payload(GenerationTask(input_str="q", n=2), "m", chat=False, stream=False)
    with pytest.raises(TaskInputError, match="no prompt"):
        request_payload(GenerationTask(), "m", chat=False, stream=False)


def test_sse_decoder_joins_data_lines_and_skips_comments():
    sse = SSEDecoder()
    events = [sse.feed(line) for line in [": keep-alive", "event: message", "data: {\"a\":", "data: 1}", "",
                                          "", "data:[DONE]"]]
    assert [e for e in events if e is not None] == ['{"a":\n1}']
    assert sse.flush() == "[DONE]"


def test_parse_response_chat_logprobs_and_errors():
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop",
                         "logprobs": {"content": [{"logprob": -1.0}, {"logprob": -2.0}]}}],
            "usage": {"completion_tokens": 2, "prompt_tokens": 4}}
    assert parse_response(body, "u", chat=True) == {"text": "hi", "finish_reason": "stop", "completion_tokens": 2,
                                                    "prompt_tokens": 4, "logprobs": [-1.0, -2.0]}
    with pytest.raises(BackendError, match="server error: bad model"):
        parse_response({"error": {"message": "bad model"}}, "u", chat=False)
    with pytest.raises(BackendError, match="expected a JSON object, got list"):
        parse_response([1], "u", chat=False)
