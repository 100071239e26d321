"""A fast OpenAI-compatible mock server (completions, chat, models, health) with fault injection.

Raw asyncio HTTP/1.1 (keep-alive, chunked SSE), no dependency; run it as
`python -m tests.servers.mock_openai_server --port 0` (prints the port) or in-process with MockOpenAIServer.

Token ids: like vLLM (`return_token_ids: true` in the request), each choice of a reply or stream chunk
then carries `token_ids`, the ids it adds; otherwise only `usage` tells the count. Output ids are
deterministic: id_i = 3 + (sum(prompt ids) + 7 i) mod (vocab_size - 3), count min(max_tokens,
output_tokens). Faults (rates drawn per request from a seeded RNG; 1.0 = always): HTTP 500,
a malformed SSE chunk (or non-stream body), the connection dropped after the first chunk, and a slow
start (every endpoint answers 503 for `startup_delay_s` after start).

Timing. With a delay, token i of a stream is sent at start + first_token_delay + i * per_token_delay
(an absolute schedule, so the mean gap is the delay), each SSE event in its own HTTP chunk, and what is
due at once in one write (the head with the first token; the last token with the usage chunk and
[DONE]): a client sees the tokens one by one. With no delay at all, the whole stream (every event in its
own HTTP chunk, the usage chunk, [DONE]) goes out in one write, so that the mock is not what limits a
client: the client then sees every event of a stream in one read (or a few, for long outputs), and its
time to first token is the time to the whole reply. With `events_per_write` K > 0 (and no delay), a
stream is rendered once per output ids and replayed, only its id put in, K events (HTTP chunks) per write:
the mock then spends far less per event than a client that parses them (the worker scaling benchmark).
`--processes N` runs N server processes on one
listening socket (the kernel spreads connections over them; fault rates apply per process).

Reasoning (`reasoning_tokens` R > 0, chat only): like vLLM / SGLang with a reasoning parser, the first R
output tokens are the thinking, streamed as `delta.<reasoning_field>` (`reasoning_content`, or vLLM's newer
`reasoning`), the rest as `delta.content`; a non-streamed reply has both in `message`; token ids and
`usage.completion_tokens` cover all of them. Also: TLS (`ssl_context`, or `--tls_cert/--tls_key`), a
path prefix the routes hang from (`path_prefix`: `<prefix>/v1/models`, `<prefix>/health`), answers that
must be refused (`/v1/models` as 404, token-id prompts refused as llama-cpp-python does, HTTP 500 with a
validation error), and `echo_key`: every error body and header carries the request's Authorization
header, as some proxies do (for tests that a key never leaks).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import contextvars
import ctypes
import json
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 500: "Internal Server Error", 503: "Service Unavailable"}
#: the Authorization header of the request a connection's task is answering (echo_key)
_AUTH: contextvars.ContextVar[str] = contextvars.ContextVar("auth", default="")
#: Longest wait for the in-process server to start or stop.
START_STOP_TIMEOUT_S = 10.0


@dataclass(slots=True, kw_only=True)
class MockOptions:
    """What the mock serves and which faults it injects. Mutable: tests change faults while it runs."""

    model: str = "mock-model"
    output_tokens: int = 128
    first_token_delay_ms: float = 0.0
    per_token_delay_ms: float = 0.0
    vocab_size: int = 1000
    #: honour `return_token_ids` in requests (False: only usage, like trtllm-serve / SGLang)
    token_ids: bool = True
    #: the text of every output token ("" : "t<id> "); a word the client's tokenizer counts as one token
    #: (" the") lets tools that count tokens by tokenizing the text agree with `usage`
    token_text: str = ""
    fail_rate: float = 0.0  # HTTP 500
    malformed_rate: float = 0.0
    drop_rate: float = 0.0
    startup_delay_s: float = 0.0
    seed: int = 0
    #: the first N output tokens of a chat reply are reasoning (delta.<reasoning_field>), the rest content
    reasoning_tokens: int = 0
    reasoning_field: str = "reasoning_content"
    #: routes hang from this prefix ("/llm": /llm/v1/models, /llm/health)
    path_prefix: str = ""
    #: echo the request's Authorization header in every error body and an error header
    echo_key: bool = False
    #: refuse token-id prompts like llama-cpp-python (HTTP 500, a pydantic validation error per element)
    refuse_token_ids: bool = False
    #: no /v1/models route (a server that is not OpenAI-compatible)
    no_models: bool = False
    #: > 0 (with no delays and no faults drawn): a stream's SSE events, one per token, are rendered once per
    #: (output ids, options) and replayed, this many events per write, only the response id put in; so a
    #: client that streams from it pays far more per event than the mock does (scripts/bench_worker_scaling.py)
    events_per_write: int = 0
    #: > 0: the process dies (os._exit, no goodbye to any connection) once this many generate requests
    #: have completed: a server that crashes mid-run, whatever the time its client took to start
    crash_after: int = 0


def output_ids(prompt_ids: list[int], n: int, vocab_size: int) -> list[int]:
    base = sum(prompt_ids)
    span = max(vocab_size - 3, 1)
    return [3 + (base + 7 * i) % span for i in range(n)]


class _Handler:
    """The HTTP server proper (runs on one event loop)."""

    def __init__(self, options: MockOptions):
        self.options = options
        self.stats: collections.Counter = collections.Counter()
        self._rng = random.Random(options.seed)
        self._started = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._next_id = 0
        #: (token, chat, with ids, token text, reasoning) -> the choice of a stream chunk for that token (not
        #: the last one)
        self._choices: dict[tuple[int, bool, bool, str, bool], bytes] = {}
        #: events_per_write: (chat, ids, options) -> (the whole response with a placeholder id, where each write ends)
        self._rendered: dict[tuple, tuple[bytes, bytes, list[int]]] = {}

    # --- connections ------------------------------------------------------------------------------
    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        self.stats["connections"] += 1
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only for sockets it made with proto=IPPROTO_TCP, not for ones accepted on
            # a socket from socket.create_server (--processes): Nagle would hold each token ~40 ms
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            try:  # a TLS ClientHello on the plain port: answer 400 and close, as HTTP servers (h11) do
                first = await reader.readexactly(1)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if first == b"\x16":
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            while True:
                try:
                    head = first + await reader.readuntil(b"\r\n\r\n")
                    first = b""
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, _ = lines[0].split(" ", 2)
                except ValueError:
                    await self._send_json(writer, 400, _error("malformed request line", 400))
                    return
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", ""):
                    await self._send_json(writer, 411, _error("chunked request bodies are not supported", 411))
                    return
                length = int(headers.get("content-length") or 0)
                try:
                    body = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                _AUTH.set(headers.get("authorization", ""))  # this connection's task only
                if not await self._route(method, target.split("?", 1)[0], body, writer):
                    return
        except ConnectionError:
            return
        except asyncio.CancelledError:  # close_all: the server is going away (ended quietly: asyncio 3.11's
            return                      # stream callback logs a traceback for a cancelled handler)
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def close_all(self) -> None:
        """Drop every connection and end their handlers (a killed server)."""
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- routing ----------------------------------------------------------------------------------
    def _starting(self) -> bool:
        return time.monotonic() - self._started < self.options.startup_delay_s

    async def _route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        self.stats["http_requests"] += 1
        if self._starting():
            self.stats["starting_503"] += 1
            return await self._send_json(writer, 503, _error("server is starting", 503))
        prefix = self.options.path_prefix.rstrip("/")
        full = path
        if prefix:
            if not path.startswith(prefix + "/"):
                return await self._send_json(writer, 404, _error(f"no route {full}", 404))
            path = path[len(prefix):]
        if path == "/health":
            return await self._send(writer, 200, b"", "text/plain")
        if path == "/v1/models" and not self.options.no_models:
            return await self._send_json(writer, 200, {"object": "list", "data": [
                {"id": self.options.model, "object": "model", "created": 0, "owned_by": "mock"}]})
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                return await self._send_json(writer, 405, _error(f"{path} takes POST", 405))
            return await self._generate(path == "/v1/chat/completions", body, writer)
        return await self._send_json(writer, 404, _error(f"no route {full}", 404))

    async def _generate(self, chat: bool, body: bytes, writer: asyncio.StreamWriter) -> bool:
        stats = self.stats
        stats["generate_requests"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            return await self._generate_one(chat, body, writer)
        finally:
            stats["in_flight"] -= 1
            if self.options.crash_after and stats["completed"] >= self.options.crash_after:
                os._exit(1)

    async def _generate_one(self, chat: bool, body: bytes, writer: asyncio.StreamWriter) -> bool:
        opts = self.options
        try:
            req = json.loads(body)
            prompt_ids, prompt_len = _prompt(req, chat)
        except (ValueError, TypeError, KeyError) as err:
            return await self._send_json(writer, 400, _error(f"bad request body: {err}", 400))
        if opts.refuse_token_ids and not chat and isinstance(req.get("prompt"), list):
            return await self._send_json(writer, 500, _validation_error(req["prompt"]))
        if req.get("model") not in (None, opts.model):
            return await self._send_json(writer, 404, _error(f"The model `{req.get('model')}` does not exist.", 404))
        fail, malformed, drop = (self._rng.random() < opts.fail_rate, self._rng.random() < opts.malformed_rate,
                                 self._rng.random() < opts.drop_rate)
        if fail:
            self.stats["injected_500"] += 1
            return await self._send_json(writer, 500, _error("injected server error", 500))
        n = opts.output_tokens
        if req.get("max_tokens") is not None:
            n = min(n, int(req["max_tokens"]))
        ids = output_ids(prompt_ids, n, opts.vocab_size)
        with_ids = opts.token_ids and bool(req.get("return_token_ids"))
        self._next_id += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._next_id}"
        if opts.events_per_write > 0:  # every id the same width, so a rendered stream takes any of them
            rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._next_id:016d}"
        usage = {"prompt_tokens": prompt_len, "completion_tokens": n, "total_tokens": prompt_len + n}
        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            return await self._stream(writer, chat, rid, ids, with_ids, usage if include_usage else None,
                                      malformed, drop)
        if opts.first_token_delay_ms or opts.per_token_delay_ms:
            await asyncio.sleep((opts.first_token_delay_ms + opts.per_token_delay_ms * max(n - 1, 0)) / 1e3)
        if drop:
            self.stats["injected_drop"] += 1
            writer.transport.abort()
            return False
        if malformed:
            self.stats["injected_malformed"] += 1
            return await self._send(writer, 200, b'{"id": "' + rid.encode() + b'", "choices": [{"te', "application/json")
        texts = [opts.token_text or f"t{i} " for i in ids]
        text = "".join(texts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            k = opts.reasoning_tokens
            choice["message"] = {"role": "assistant", "content": "".join(texts[k:]) if k else text}
            if k:
                choice["message"][opts.reasoning_field] = "".join(texts[:k])
        else:
            choice["text"] = text
        if with_ids:
            choice["token_ids"] = ids
        self.stats["completed"] += 1
        return await self._send_json(writer, 200, {
            "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": opts.model, "choices": [choice], "usage": usage})

    async def _stream(self, writer: asyncio.StreamWriter, chat: bool, rid: str, ids: list[int], with_ids: bool,
                      usage: dict | None, malformed: bool, drop: bool) -> bool:
        opts = self.options
        if opts.events_per_write > 0 and not (malformed or drop or opts.first_token_delay_ms
                                              or opts.per_token_delay_ms):
            return await self._replay(writer, chat, rid, ids, with_ids, usage)
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
        obj = "chat.completion.chunk" if chat else "text_completion"
        prefix = (f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
                  f'"model":{_DUMPS(opts.model)},"choices":[').encode()
        events = []  # one SSE event per item
        if chat:  # like vLLM: a role-only chunk first, no content
            events.append(prefix + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
        last = len(ids) - 1
        thinking = opts.reasoning_tokens if chat else 0
        for i, tok in enumerate(ids):
            events.append(prefix + self._choice(tok, chat, with_ids, i == last, i < thinking) + b"]}\n\n")
            if i == 0 and malformed:
                self.stats["injected_malformed"] += 1
                echo = f" {_AUTH.get()}".encode() if opts.echo_key else b""
                events.append(prefix + b'{"index":0,"text":' + echo + b'\n\n')
        tail = b""
        if usage is not None:
            tail = prefix + b'],"usage":' + _DUMPS(usage).encode() + b"}\n\n"
        tail += b"data: [DONE]\n\n"
        n_first = 2 if chat else 1  # events up to the first content one
        if drop:
            self.stats["injected_drop"] += 1
            await asyncio.sleep((opts.first_token_delay_ms) / 1e3)
            writer.write(head + _chunk(b"".join(events[:n_first])))
            await writer.drain()
            writer.transport.abort()
            return False
        if not (opts.first_token_delay_ms or opts.per_token_delay_ms):  # everything in one write
            writer.write(b"".join([head, *map(_chunk, events), _chunk(tail), b"0\r\n\r\n"]))
            await writer.drain()
            self.stats["completed"] += 1
            return True
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = [head, _chunk(events.pop(0))] if chat else [head]  # what is due goes out in one write
        for i, event in enumerate(events):
            due = start + (opts.first_token_delay_ms + opts.per_token_delay_ms * i) / 1e3
            if due > loop.time():
                if pending:
                    writer.write(b"".join(pending))
                    pending = []
                await writer.drain()
                await asyncio.sleep(due - loop.time())
            pending.append(_chunk(event))
        pending.append(_chunk(tail) + b"0\r\n\r\n")
        writer.write(b"".join(pending))
        await writer.drain()
        self.stats["completed"] += 1
        return True

    async def _replay(self, writer: asyncio.StreamWriter, chat: bool, rid: str, ids: list[int], with_ids: bool,
                      usage: dict | None) -> bool:
        """events_per_write: the stream rendered once (the first time these ids are asked for), then only the
        response id put in and the events written `events_per_write` at a time (the head with the first)."""
        opts = self.options
        key = (chat, with_ids, ids[0] if ids else -1, len(ids), usage and usage["prompt_tokens"], usage is None,
               opts.token_text, opts.reasoning_tokens, opts.reasoning_field, opts.model, opts.vocab_size,
               opts.events_per_write)
        hit = self._rendered.get(key)
        if hit is None:
            placeholder = rid[:rid.index("-") + 1] + "#" * (len(rid) - rid.index("-") - 1)
            out, ends = [], []

            class _Capture:  # _stream's writes, kept instead of sent
                def write(self, data: bytes) -> None:
                    out.append(data)

                async def drain(self) -> None:
                    pass

            saved, opts.events_per_write = opts.events_per_write, 0
            try:
                await self._stream(_Capture(), chat, placeholder, ids, with_ids, usage, False, False)  # type: ignore[arg-type]
            finally:
                opts.events_per_write = saved
            self.stats["completed"] -= 1
            whole = b"".join(out)
            # cut after the head plus every `events_per_write` HTTP chunks (one SSE event each)
            body_at = whole.index(b"\r\n\r\n") + 4
            pos, count = body_at, 0
            while True:
                crlf = whole.index(b"\r\n", pos)
                size = int(whole[pos:crlf], 16)
                pos = crlf + 2 + size + 2
                if size == 0:
                    break
                count += 1
                if count % saved == 0:
                    ends.append(pos)
            if not ends or ends[-1] != len(whole):
                ends.append(len(whole))
            hit = self._rendered[key] = (whole, placeholder.encode(), ends)
            if len(self._rendered) > 4096:
                self._rendered.clear()
        whole, placeholder, ends = hit
        view = memoryview(whole.replace(placeholder, rid.encode()))
        start = 0
        for end in ends:
            writer.write(view[start:end])
            start = end
        await writer.drain()
        self.stats["completed"] += 1
        return True

    def _choice(self, tok: int, chat: bool, with_ids: bool, last: bool, reasoning: bool = False) -> bytes:
        key = (tok, chat, with_ids, self.options.token_text, reasoning)
        if not last:
            cached = self._choices.get(key)
            if cached is not None:
                return cached
        content = _DUMPS(self.options.token_text or f"t{tok} ")
        finish = '"length"' if last else "null"
        id_part = f',"token_ids":[{tok}]' if with_ids else ""
        if chat:
            field = self.options.reasoning_field if reasoning else "content"
            choice = f'{{"index":0,"delta":{{"{field}":{content}}}{id_part},"finish_reason":{finish}}}'.encode()
        else:
            choice = f'{{"index":0,"text":{content}{id_part},"finish_reason":{finish}}}'.encode()
        if not last:
            self._choices[key] = choice
        return choice

    # --- replies ----------------------------------------------------------------------------------
    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str,
                    extra_headers: str = "") -> bool:
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                     f"{extra_headers}Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode()
                     + body)
        await writer.drain()
        return True

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, obj: Any) -> bool:
        extra = ""
        if status >= 400 and self.options.echo_key:  # a leaky proxy: the credentials back in body and header
            err = obj.get("error") if isinstance(obj, dict) else None
            if isinstance(err, dict):
                err["message"] = f"{err['message']} (request had Authorization: {_AUTH.get() or 'none'})"
            extra = f"X-Echo-Authorization: {_AUTH.get()}\r\n"
        return await self._send(writer, status, _DUMPS(obj).encode(), "application/json", extra)


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _error(message: str, code: int) -> dict:
    return {"error": {"message": message, "type": "MockError", "code": code}}


def _validation_error(prompt: list) -> dict:
    """What llama-cpp-python answers for a token-id prompt: pydantic's errors, one per element, in an
    HTTP 500 error body."""
    lines = [f"{len(prompt) + 1} validation errors for CreateCompletionRequest", "prompt.str",
             f"  Input should be a valid string [type=string_type, input_value={prompt!r}, input_type=list]"]
    for i, tok in enumerate(prompt):
        lines += [f"prompt.list[str].{i}", f"  Input should be a valid string [type=string_type, "
                                           f"input_value={tok}, input_type=int]"]
    return {"error": {"message": "\n".join(lines), "type": "internal_server_error", "code": 500}}


def _prompt(req: dict, chat: bool) -> tuple[list[int], int]:
    """(prompt ids for the output seed, prompt length) from a completions or chat body."""
    if chat:
        text = " ".join(str(m.get("content") or "") for m in req["messages"])
        return [len(text)], len(text.split())
    prompt = req["prompt"]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # a batch of prompts (token ids or texts): the mock answers the first
    if isinstance(prompt, list):
        ids = [int(t) for t in prompt]
        return ids, len(ids)
    if isinstance(prompt, str):
        return [len(prompt)], len(prompt.split())
    raise TypeError(f"prompt must be text or token ids, got {type(prompt).__name__}")


class MockOpenAIServer:
    """The mock on its own event loop thread: `start()` returns the port; `stop()` drops every
    connection at once (what a killed server does to requests in flight). Bounded: both wait at most
    START_STOP_TIMEOUT_S."""

    def __init__(self, options: MockOptions | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None):
        self.options = options or MockOptions()
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.handler = _Handler(self.options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> collections.Counter:
        return self.handler.stats

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self.handler.connection, self.host, self.port, ssl=self.ssl_context))
                self.port = self._server.sockets[0].getsockname()[1]
                self.handler._started = time.monotonic()
            except OSError as err:
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="mock-openai-server", daemon=True)
        self._thread.start()
        if not ready.wait(START_STOP_TIMEOUT_S):
            raise RuntimeError(f"mock OpenAI server did not start within {START_STOP_TIMEOUT_S:g}s")
        if failure:
            raise RuntimeError(f"mock OpenAI server could not listen on {self.host}:{self.port}: {failure[0]}")
        return self.port

    def stop(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return

        async def shutdown() -> None:
            self._server.close()
            await self.handler.close_all()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(START_STOP_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_STOP_TIMEOUT_S)

    def __enter__(self) -> MockOpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[str, int, MockOptions, int, ssl.SSLContext | None]:
    p = argparse.ArgumentParser(prog="python -m tests.servers.mock_openai_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--model", default="mock-model")
    p.add_argument("--output_tokens", type=int, default=128)
    p.add_argument("--first_token_delay_ms", type=float, default=0.0)
    p.add_argument("--per_token_delay_ms", type=float, default=0.0)
    p.add_argument("--vocab_size", type=int, default=1000)
    p.add_argument("--no_token_ids", action="store_true", help="never return token ids (usage only)")
    p.add_argument("--token_text", default="", help="the text of every output token (default: 't<id> ')")
    p.add_argument("--fail_rate", type=float, default=0.0, help="fraction of requests answered HTTP 500")
    p.add_argument("--malformed_rate", type=float, default=0.0, help="fraction with a malformed chunk/body")
    p.add_argument("--drop_rate", type=float, default=0.0, help="fraction whose connection is dropped")
    p.add_argument("--startup_delay_s", type=float, default=0.0, help="answer 503 everywhere for this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reasoning_tokens", type=int, default=0,
                   help="chat: the first N output tokens are reasoning (delta.reasoning_content)")
    p.add_argument("--reasoning_field", default="reasoning_content", choices=("reasoning_content", "reasoning"))
    p.add_argument("--path_prefix", default="", help="routes hang from this prefix (e.g. /llm)")
    p.add_argument("--echo_key", action="store_true",
                   help="echo the request's Authorization header in error bodies and headers (a leaky proxy)")
    p.add_argument("--tls_cert", default="", help="serve https with this certificate (PEM; with --tls_key)")
    p.add_argument("--tls_key", default="", help="the certificate's private key (PEM)")
    p.add_argument("--refuse_token_ids", action="store_true",
                   help="answer token-id prompts HTTP 500 with a validation error, like llama-cpp-python")
    p.add_argument("--events_per_write", type=int, default=0,
                   help="> 0: streams are rendered once and replayed, this many SSE events per write (a mock that "
                        "costs a client far more per event than itself)")
    p.add_argument("--crash_after", type=int, default=0,
                   help="> 0: die at once (os._exit) when this many generate requests have completed")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the listening socket (for clients faster than one process)")
    a = p.parse_args(argv)
    for name in ("fail_rate", "malformed_rate", "drop_rate"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            p.error(f"--{name}={getattr(a, name)}: expected a fraction in [0, 1]")
    if a.events_per_write < 0:
        p.error(f"--events_per_write={a.events_per_write}: expected an integer >= 0")
    if a.processes < 1:
        p.error(f"--processes={a.processes}: expected at least 1")
    opts = MockOptions(model=a.model, output_tokens=a.output_tokens, first_token_delay_ms=a.first_token_delay_ms,
                       per_token_delay_ms=a.per_token_delay_ms, vocab_size=a.vocab_size, token_ids=not a.no_token_ids,
                       token_text=a.token_text,
                       fail_rate=a.fail_rate, malformed_rate=a.malformed_rate, drop_rate=a.drop_rate,
                       startup_delay_s=a.startup_delay_s, seed=a.seed, reasoning_tokens=a.reasoning_tokens,
                       reasoning_field=a.reasoning_field, path_prefix=a.path_prefix, echo_key=a.echo_key,
                       refuse_token_ids=a.refuse_token_ids, events_per_write=a.events_per_write,
                       crash_after=a.crash_after)
    ctx = None
    if a.tls_cert or a.tls_key:
        if not (a.tls_cert and a.tls_key):
            p.error("--tls_cert and --tls_key go together")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    return a.host, a.port, opts, a.processes, ctx


async def serve(sock: socket.socket, options: MockOptions, ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve on a listening socket until SIGINT / SIGTERM."""
    handler = _Handler(options)
    server = await asyncio.start_server(handler.connection, sock=sock, ssl=ssl_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await handler.close_all()


def _die_with_parent() -> None:
    """A forked server process ends when the one that started it does (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    host, port, options, processes, ssl_context = parse_args(argv)
    try:
        sock = socket.create_server((host, port), backlog=1024)
    except OSError as err:
        print(f"mock OpenAI server: cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return 1
    children = []
    for i in range(1, processes):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            options.seed += i  # each process its own draw of faults
            asyncio.run(serve(sock, options, ssl_context))
            os._exit(0)
        children.append(pid)
    print(sock.getsockname()[1], flush=True)
    try:
        asyncio.run(serve(sock, options, ssl_context))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
