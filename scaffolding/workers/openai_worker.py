"""OpenAIWorker: generation tasks against an OpenAI-compatible server (/v1/completions or
/v1/chat/completions: OpenAI, trtllm-serve, vLLM, SGLang), SSE streaming over httpx.AsyncClient; the
wire format (bodies, SSE events, reasoning deltas, errors) is llmlib.cores.wire.openai's, as the
endpoint core's."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmlib.cores.wire.openai import SSEDecoder, choice_parts, completion_body, logprobs_of, server_error
from llmlib.errors import BackendError
from scaffolding.task import GenerationTask, StreamGenerationTask
from scaffolding.worker import Worker
from scaffolding.workers import TaskInputError, WorkerUnavailableError, check_supported, describe, split_stops

try:
    import httpx
except ImportError as err:  # pragma: no cover - depends on the environment
    raise WorkerUnavailableError(f"OpenAIWorker needs httpx ({err}). Install it with: "
                                 "pip install -e '.[endpoint]'") from err

#: environment variable read for the API key when none is given
API_KEY_ENV = "OPENAI_API_KEY"
#: most characters of a server's reply quoted in an error
SNIPPET_CHARS = 300


# --- configuration ---------------------------------------------------------------------------------
def normalise_base_url(base_url: str) -> str:
    """`http(s)://host:port[/prefix]` with '/v1' appended unless it already ends with it."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"OpenAIWorker: base_url={base_url!r}; expected an http:// or https:// URL "
                         "(e.g. http://127.0.0.1:8000/v1)")
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def resolve_api_key(api_key: str | None, api_key_file: str | os.PathLike | None,
                    env: Mapping[str, str] | None = None) -> str | None:
    """The key, highest first: `api_key`, the first line of `api_key_file`, $OPENAI_API_KEY.
    None when there is none (local servers need none). The key itself is never put in a message."""
    if api_key:
        return api_key
    if api_key_file is not None:
        path = Path(api_key_file).expanduser()
        try:
            lines = path.read_text().strip().splitlines()
        except OSError as err:
            raise ValueError(f"OpenAIWorker: api_key_file={str(path)!r} cannot be read ({type(err).__name__}); "
                             "expected a file holding the API key") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"OpenAIWorker: api_key_file={str(path)!r} is empty; expected the API key on its "
                             "first line")
        return lines[0].strip()
    env = os.environ if env is None else env
    return env.get(API_KEY_ENV) or None


# --- payloads (pure) ---------------------------------------------------------------------------------
def request_payload(task: GenerationTask, model: str, *, chat: bool, stream: bool,
                    default_max_tokens: int | None = None, extra_body: Mapping[str, Any] | None = None) -> dict:
    """The JSON body for one task. Sampling fields keep their OpenAI names; `top_k` and integer stops
    (`stop_token_ids`) are the extensions vLLM, SGLang and trtllm-serve accept."""
    check_supported(task, "OpenAIWorker", logprobs=True)
    if chat:
        if task.input_str is None:
            raise TaskInputError(f"{describe(task)}: the chat endpoint needs input_str (a user message); "
                                 "token ids need the completions endpoint")
        prompt: Any = task.input_str
    elif task.input_tokens is not None:
        prompt = [int(t) for t in task.input_tokens]
    elif task.input_str is not None:
        prompt = task.input_str
    else:
        raise TaskInputError(f"{describe(task)}: no prompt; set input_str or input_tokens")
    max_tokens = task.max_tokens if task.max_tokens is not None else default_max_tokens
    fields: dict[str, Any] = {name: getattr(task, name) for name in
                              ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")}
    if task.num_logprobs is not None:
        if chat:
            fields["logprobs"], fields["top_logprobs"] = True, int(task.num_logprobs)
        else:
            fields["logprobs"] = int(task.num_logprobs)
    strings, ids = split_stops(task.stop, task)
    body = completion_body(model=model, prompt=prompt, chat=chat, max_tokens=max_tokens, stream=stream,
                           fields=fields, stop_strings=strings, stop_token_ids=ids)
    if extra_body:
        body.update(extra_body)
    return body


def _snippet(text: str) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def _check_error(body: Any, url: str, where: str) -> dict:
    if not isinstance(body, dict):
        raise BackendError(url, f"{where}: expected a JSON object, got {type(body).__name__}")
    message = server_error(body)
    if message:
        raise BackendError(url, f"{where}: server error: {message}")
    return body


def parse_response(body: Any, url: str, *, chat: bool) -> dict[str, Any]:
    """A non-streamed reply -> {text, finish_reason, completion_tokens, prompt_tokens, logprobs}, and
    `reasoning` when a reasoning parser split the thinking off the answer."""
    body = _check_error(body, url, "response")
    try:
        choice = body["choices"][0]
        if not isinstance(choice, dict) or ("message" if chat else "text") not in choice:
            raise KeyError
        text, reasoning, _ = choice_parts(choice, chat)
    except (KeyError, IndexError, TypeError):
        field = "choices[0].message.content" if chat else "choices[0].text"
        raise BackendError(url, f"response has no {field}: {_snippet(json.dumps(body))}") from None
    usage = body.get("usage") or {}
    out = {"text": text or "", "finish_reason": choice.get("finish_reason"),
           "completion_tokens": usage.get("completion_tokens"), "prompt_tokens": usage.get("prompt_tokens"),
           "logprobs": logprobs_of(choice.get("logprobs"), chat)}
    if reasoning:
        out["reasoning"] = reasoning
    return out


# --- the stream of one request -----------------------------------------------------------------------
class OpenAIStream:
    """An open SSE response. `read(n)` consumes events until `n` more content chunks arrived or
    the stream ended; text, finish reason and usage accumulate here between steps."""

    def __init__(self, response: httpx.Response, url: str, chat: bool, issued_ns: int):
        self.response = response
        self.url = url
        self.chat = chat
        self.issued_ns = issued_ns
        self.first_ns = 0
        self.final_ns = 0
        self.parts: list[str] = []
        self.reasoning_parts: list[str] = []  # a reasoning parser's thinking (chat deltas), apart from the answer
        self.chunks = 0
        self.finish_reason: str | None = None
        self.usage: dict = {}
        self.logprobs: list[float] = []
        self.done = False
        self._lines = response.aiter_lines()
        self._sse = SSEDecoder()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def read(self, min_chunks: int) -> None:
        """Past the target, a stream whose finish_reason has come is read to its end (only usage
        and [DONE] follow), so the step that brings the last chunk also ends the task."""
        target = self.chunks + max(min_chunks, 1)
        try:
            while not self.done and (self.chunks < target or self.finish_reason is not None):
                try:
                    line = await self._lines.__anext__()
                except StopAsyncIteration:
                    data = self._sse.flush()
                    if data is not None:
                        self._event(data)
                    if not self.done:
                        if self.finish_reason is None:
                            raise BackendError(self.url, "the stream ended before the response was complete "
                                                         "(no finish_reason, no [DONE])") from None
                        self._end()
                    break
                data = self._sse.feed(line)
                if data is not None:
                    self._event(data)
        except httpx.TimeoutException as err:
            await self.close()
            raise BackendError(self.url, f"stream timed out ({type(err).__name__})") from err
        except httpx.HTTPError as err:
            await self.close()
            raise BackendError(self.url, f"stream broke: {type(err).__name__}: {err}") from err
        except BackendError:
            await self.close()
            raise

    def _event(self, data: str) -> None:
        if data.strip() == "[DONE]":
            self._end()
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise BackendError(self.url, f"malformed SSE event (not JSON): {_snippet(data)}") from None
        event = _check_error(event, self.url, "stream event")
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            piece, thinking, _ = choice_parts(choice, self.chat)
            if piece or thinking:  # a reasoning delta is a generated chunk too (TTFT, streaming_step)
                if not self.first_ns:
                    self.first_ns = time.monotonic_ns()
                if piece:
                    self.parts.append(piece)
                if thinking:
                    self.reasoning_parts.append(thinking)
                self.chunks += 1
            lp = logprobs_of(choice.get("logprobs"), self.chat)
            if lp:
                self.logprobs.extend(lp)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _end(self) -> None:
        self.done = True
        self.final_ns = time.monotonic_ns()

    async def close(self) -> None:
        self.done = True
        await self.response.aclose()


# --- the worker --------------------------------------------------------------------------------------
class OpenAIWorker(Worker):
    """Runs GenerationTask and StreamGenerationTask on an OpenAI-compatible server.

    - `base_url`: http(s)://host:port, with or without the trailing /v1.
    - `api_key`: explicit, else the first line of `api_key_file`, else $OPENAI_API_KEY; sent as a
      Bearer token and never written to a message or a repr.
    - `chat`: use /v1/chat/completions (input_str as one user message) instead of /v1/completions
      (input_str or input_tokens as the prompt).
    - `timeout_s`: per connect / read / write; a timeout fails the task naming the URL.
    - `streaming`: plain GenerationTasks are streamed too (then they get `ttft_s`).
    - Results: output_str, finish_reason, completion_tokens / prompt_tokens from `usage`
      (None when the server sends none), logprobs, ttft_s (streamed only), latency_s.
      output_tokens stays None: the API returns text.

    A StreamGenerationTask step returns after `streaming_step` (at least 1) more content chunks;
    servers send one chunk per decoding step, usually one token. `cancel_flag` closes the
    connection, which makes the server abort the request; the task ends with finish_reason
    'cancelled' and the text read so far.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 api_key_file: str | os.PathLike | None = None, timeout_s: float = 600.0, chat: bool = False,
                 streaming: bool = False, default_max_tokens: int | None = None, max_connections: int = 256,
                 extra_body: Mapping[str, Any] | None = None):
        super().__init__()
        if not isinstance(model, str) or not model:
            raise ValueError(f"OpenAIWorker: model={model!r}; expected the served model's name")
        if not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"OpenAIWorker: timeout_s={timeout_s!r}; expected seconds > 0")
        if default_max_tokens is not None and (isinstance(default_max_tokens, bool)
                                               or not isinstance(default_max_tokens, int) or default_max_tokens < 1):
            raise ValueError(f"OpenAIWorker: default_max_tokens={default_max_tokens!r}; expected an integer >= 1 "
                             "or None (the server's default)")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"OpenAIWorker: max_connections={max_connections!r}; expected an integer >= 1")
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.chat = bool(chat)
        self.streaming = bool(streaming)
        self.timeout_s = float(timeout_s)
        self.default_max_tokens = default_max_tokens
        self.max_connections = int(max_connections)
        self.extra_body = dict(extra_body or {})
        self.url = self.base_url + ("/chat/completions" if self.chat else "/completions")
        key = resolve_api_key(api_key, api_key_file)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self.register_task_handler(GenerationTask, self.generate)
        self.register_task_handler(StreamGenerationTask, self.stream_step)

    def __repr__(self) -> str:
        return (f"OpenAIWorker(url={self.url!r}, model={self.model!r}, "
                f"api_key={'set' if self._headers else 'none'})")

    # --- http ---------------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        """One client (connection pool) per event loop: connections belong to the loop that made them."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx.AsyncClient(
                headers=self._headers, timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=self.max_connections,
                                    max_keepalive_connections=self.max_connections))
            self._http_loop = loop
        return self._http

    async def _send(self, payload: dict, *, stream: bool) -> httpx.Response:
        client = self._client()
        try:
            request = client.build_request("POST", self.url, json=payload)
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException as err:
            raise BackendError(self.url, f"timed out after {self.timeout_s:g}s ({type(err).__name__})") from err
        except httpx.HTTPError as err:
            raise BackendError(self.url, f"request failed: {type(err).__name__}: {err}") from err
        if response.status_code >= 400:
            try:
                body = (await response.aread()).decode("utf-8", "replace") if stream else response.text
            finally:
                await response.aclose()
            raise BackendError(self.url, f"HTTP {response.status_code}: {_snippet(body)}")
        return response

    # --- handlers -------------------------------------------------------------------------------------
    async def generate(self, task: GenerationTask) -> None:
        payload = self._payload(task, stream=self.streaming)
        if self.streaming:
            stream = await self._open(payload)
            while not stream.done:
                await stream.read(1 << 30)
            self._fill_from_stream(task, stream)
            return
        issued = time.monotonic_ns()
        response = await self._send(payload, stream=False)
        try:
            body = response.json()
        except ValueError:
            raise BackendError(self.url, f"HTTP {response.status_code}: malformed JSON: "
                                         f"{_snippet(response.text)}") from None
        result = parse_response(body, self.url, chat=self.chat)
        task.output_str = result["text"]
        task.finish_reason = result["finish_reason"]
        task.completion_tokens = result["completion_tokens"]
        task.prompt_tokens = result["prompt_tokens"]
        task.logprobs = result["logprobs"]
        if result.get("reasoning"):
            task.customized_result_fields["reasoning_str"] = result["reasoning"]
        task.ttft_s = None
        task.latency_s = (time.monotonic_ns() - issued) / 1e9

    async def stream_step(self, task: StreamGenerationTask) -> None:
        stream: OpenAIStream | None = task.request_handle
        if stream is None:
            if task.cancel_flag:  # cancelled before it started: nothing is sent
                task.output_str, task.completion_tokens = "", 0
                task.finish_reason, task.end_flag = "cancelled", True
                return
            stream = await self._open(self._payload(task, stream=True))
            task.request_handle = stream
        elif task.cancel_flag:
            if not stream.done:
                await stream.close()
                stream.final_ns = time.monotonic_ns()
                stream.finish_reason = "cancelled"
            self._fill_from_stream(task, stream)
            task.end_flag = True
            return
        await stream.read(task.streaming_step)
        self._fill_from_stream(task, stream)
        task.end_flag = stream.done

    def _payload(self, task: GenerationTask, *, stream: bool) -> dict:
        return request_payload(task, self.model, chat=self.chat, stream=stream,
                               default_max_tokens=self.default_max_tokens, extra_body=self.extra_body)

    async def _open(self, payload: dict) -> OpenAIStream:
        issued = time.monotonic_ns()
        response = await self._send(payload, stream=True)
        return OpenAIStream(response, self.url, self.chat, issued)

    def _fill_from_stream(self, task: GenerationTask, stream: OpenAIStream) -> None:
        task.output_str = stream.text
        task.finish_reason = stream.finish_reason
        task.completion_tokens = stream.usage.get("completion_tokens", stream.chunks)
        task.prompt_tokens = stream.usage.get("prompt_tokens")
        task.logprobs = list(stream.logprobs) or None
        task.ttft_s = (stream.first_ns - stream.issued_ns) / 1e9 if stream.first_ns else None
        task.latency_s = (stream.final_ns - stream.issued_ns) / 1e9 if stream.final_ns else None
        task.customized_result_fields["stream_chunks"] = stream.chunks
        if stream.reasoning_parts:
            task.customized_result_fields["reasoning_str"] = "".join(stream.reasoning_parts)

    async def shutdown(self) -> None:
        client, self._http = self._http, None
        if client is not None and self._http_loop is asyncio.get_running_loop():
            await client.aclose()


__all__ = ["OpenAIStream", "OpenAIWorker", "SSEDecoder", "normalise_base_url", "parse_response",
           "request_payload", "resolve_api_key"]
