"""The `trtllm_endpoint` core: one OpenAI-compatible HTTP server (trtllm-serve, vLLM, SGLang) per URL.

Requests run as owned tasks on the core's asyncio loop thread over one keep-alive connection pool
(`llmlib.http1`, a lean asyncio HTTP/1.1 client), at most `max_concurrency` in flight.

Wire format. POST <api>/completions (default /v1) with the prompt as token ids (never re-tokenized;
chat is used only when the dataset carries prompt texts). Streaming requests (Server / Interactive) use SSE with
`stream_options.include_usage`, so the first content chunk gives a real TTFT; others are one JSON reply.
`return_token_ids: true` asks for output ids (vLLM's extension: `token_ids` in each choice); servers that
do not return them give the count from `usage.completion_tokens`, and the core then delivers an empty id
array with that count. `token_sources` counts which source each completed request used
('token_ids', 'usage', or 'chunks' when a stream had neither and content chunks were counted).

Hot path. A stream costs a constant number of JSON decodes: the chunks up to the first one with content
are decoded, later ones are only checked for shape (`{...}`) and an `"error"` key; their ids, when the
server returns them, are cut out with a regex; and, when it does not, only the last chunk (the usage
chunk) is decoded. The trade-off: a later chunk that is valid-looking JSON but wrong inside (bad field
types) is not noticed, and per-chunk `finish_reason` is not read. The body arrives from the socket
straight into `StreamState.feed` (one call per read, all the events it brought checked together), and
the request's task wakes only when the response ends. A request is written in the loop callback that
takes it (`_begin`) when a concurrency slot and an idle connection are free, not one loop iteration
later in its task's first step (behind the reads of every other stream). A request made with
`chunks=True` (someone listens) also gets the output so far after every read that brought tokens.
The wire format (bodies, replies, SSE) is `llmlib.cores.wire.openai`'s, shared with scaffolding's
OpenAIWorker; `--workers_per_core` runs this core in worker processes (llmlib/serving/core_workers.py).

URLs and secrets. `--trtllm_server_urls` items are `host:port` (http) or `http[s]://host[:port][/prefix]`:
the scheme is kept (https verifies the certificate, against `--trtllm_ca_file` when given) and so is the
path prefix (`.../v1` is the API base; another prefix is put before `/v1`). The API key never goes over
plain http to a host that is not loopback unless `--allow_api_key_over_http`; every error cause the core
builds is redacted of it (`llmlib.secrets`), since servers and proxies may echo it.

Reasoning. With a reasoning parser (vLLM, SGLang) or gpt-oss's harmony channels, a chat stream carries
the thinking in `delta.reasoning_content` (or `delta.reasoning`) and the answer in `content`: the first
chunk of either kind is the first token, and both count (their ids, `usage`, or their chunks). The ids
logged are the server's for the whole generation, thinking and answer in order, as the reference
implementations log them: the deepseek-r1 and gpt-oss-120b evaluators decode the whole output and find
the answer in it themselves (the last boxed / ANSWER match; gpt-oss's `final` channel).

Faults: each failed request gets a BackendError naming the URL: connection failed (refused, unknown
host, connect timeout, TLS), connection dropped mid-request, malformed HTTP response, HTTP status >= 400
(with the server's message, once), malformed reply or SSE chunk, server error in the stream, request
timed out. A server that refuses token-id prompts gets one line naming `--trtllm_prompt_text_column`.
Health checks mark causes that cannot heal `final` (see `_health`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmlib.config import ResolvedConfig
from llmlib.cores._async_loop import AsyncLoopCore
from llmlib.cores.base import CoreInputs, CoreSettings, Request
from llmlib.errors import BackendError, ConfigError
from llmlib.http1 import (
    ConnectError,
    ConnectionDropped,
    EndpointURL,
    Exchange,
    HTTPClient,
    HTTPError,
    ProtocolError,
    RequestTimeout,
    Response,
    TLSError,
    parse_endpoint_url,
)
from llmlib.cores.wire import dialects as dialects_mod
from llmlib.cores.wire.dialects import AUTO, DIALECTS, Dialect, get_dialect, read_refusal
from llmlib.cores.wire.openai import (
    PROMPT_MUST_BE_TEXT_RE,
    ReplyError,
    StreamState,
    completion_body,
    parse_reply,
    refuses_token_ids,
    server_message,
    snippet,
)
from llmlib.secrets import read_api_key, redact
from llmlib.secrets import register as register_secret

log = logging.getLogger(__name__)

try:  # optional: about a fifth less client CPU per streamed token (one socket read each); none in bulk
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - depends on the environment
    _uvloop = None

try:  # optional: a request body (a 128-id prompt) in ~4 us instead of ~40 (json.dumps), on the TTFT path
    from msgspec.json import Encoder as _JSONEncoder

    _encode = _JSONEncoder().encode
except ImportError:  # pragma: no cover - depends on the environment
    _encode = None


def _body_bytes(obj: Any) -> bytes:
    if _encode is not None:
        try:
            return _encode(obj)
        except (TypeError, ValueError):  # a value msgspec does not take (numpy scalars): json's rules
            pass
    return json.dumps(obj).encode()



# --- settings ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSettings(CoreSettings):
    """The core's settings, from config fields where they are declared (see `endpoint_settings`)."""

    urls: tuple[str, ...] = ()  # one core per URL: host:port or http[s]://host[:port][/prefix]
    max_concurrency: int = 256  # requests in flight per URL
    model: str = ""  # empty: the first model /v1/models lists (found by health_check)
    use_chat: bool = False
    prompt_text_column: str = ""  # a dataset extra column whose texts are sent instead of token ids
    request_timeout_s: float | None = 600.0  # whole exchange of one request; None: no limit
    connect_timeout_s: float = 10.0
    health_timeout_s: float = 5.0
    return_token_ids: bool = True
    api_key: str | None = None
    #: run the loop on uvloop where it is installed (see `loop_factory`)
    use_uvloop: bool = True
    #: connections opened by `warm_up` (None: max_concurrency)
    connect_ahead: int | None = None
    #: CA bundle (PEM) for https:// servers ("": the system's CAs); certificates are always verified
    ca_file: str = ""
    #: send the API key over plain http:// to a non-loopback host
    allow_key_over_http: bool = False
    #: probe once, in the health check, whether the server takes token-id prompts (when the core sends them)
    probe_token_ids: bool = True
    #: the server family (llmlib.cores.wire.dialects), or `auto`: probed in the health check
    api_dialect: str = AUTO
    #: a tokenizer folder to detokenize prompts with when the server takes text only and no text column
    #: is given ("": none; resolved from the benchmark by `resolve_settings`)
    tokenizer_path: str = ""


def _opt(config: ResolvedConfig, name: str, default: Any) -> Any:
    """A field's value, or `default` when it is unset."""
    value = getattr(config, name)
    return default if value is None else value


def endpoint_settings(config: ResolvedConfig) -> EndpointSettings:
    timeout = _opt(config, "trtllm_request_timeout_s", None)
    if timeout is None:
        timeout = _opt(config, "request_timeout_s", 600.0)
    key_file = _opt(config, "openai_api_key_file", "")
    concurrency = int(_opt(config, "trtllm_max_concurrency", 256))
    dialect = str(_opt(config, "trtllm_api_dialect", AUTO))
    if dialect != AUTO:
        get_dialect(dialect)  # ConfigError naming the flag and the names
    if concurrency < 1:
        raise ConfigError(f"--trtllm_max_concurrency={concurrency}: expected at least 1")
    return EndpointSettings(
        urls=tuple(config.trtllm_server_urls),
        max_concurrency=concurrency,
        model=str(_opt(config, "trtllm_endpoint_model", "")),
        use_chat=bool(_opt(config, "trtllm_use_chat", False)),
        prompt_text_column=str(_opt(config, "trtllm_prompt_text_column", "")),
        request_timeout_s=float(timeout) if timeout else None,
        health_timeout_s=min(5.0, float(_opt(config, "health_check_timeout_s", 5.0)) or 5.0),
        return_token_ids=bool(_opt(config, "trtllm_return_token_ids", True)),
        api_key=read_api_key(key_file) if key_file else None,
        connect_ahead=_opt(config, "trtllm_connect_ahead", None),
        ca_file=str(_opt(config, "trtllm_ca_file", "")),
        allow_key_over_http=bool(_opt(config, "allow_api_key_over_http", False)),
        api_dialect=dialect,
    )


def base_url(endpoint: str) -> str:
    """`host:port` or `http[s]://host[:port][/prefix]` -> the address shown for it: scheme, host, port
    and the path prefix as given (`127.0.0.1:8000` -> `http://127.0.0.1:8000`)."""
    return endpoint_url(endpoint).address


def endpoint_url(endpoint: str) -> EndpointURL:
    """The parsed URL; ConfigError naming --trtllm_server_urls when it is malformed."""
    try:
        return parse_endpoint_url(endpoint)
    except ValueError as err:
        raise ConfigError(f"--trtllm_server_urls: {err}") from None


def check_key_transport(url: EndpointURL, settings: EndpointSettings) -> None:
    """A key goes in cleartext only to a loopback host, unless --allow_api_key_over_http says so."""
    if settings.api_key and not url.tls and not url.loopback and not settings.allow_key_over_http:
        raise ConfigError(f"--trtllm_server_urls={url.address}: the API key (--openai_api_key_file) would be "
                          f"sent in cleartext over http:// to {url.host}, which is not a loopback address; use "
                          "https://, or set --allow_api_key_over_http=true to send it anyway")


def tls_context(settings: EndpointSettings) -> ssl.SSLContext:
    """A verifying TLS context: the system's CAs, or those of --trtllm_ca_file."""
    cafile = settings.ca_file or None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"--trtllm_ca_file={settings.ca_file!r} cannot be used ({type(err).__name__}: "
                          f"{getattr(err, 'strerror', None) or err}); expected a PEM file of CA certificates") \
            from None


#: longest wait for one request of the dialect probe (auto)
PROBE_TIMEOUT_S = 120.0

#: dataset columns taken for prompt texts when none is named (a text dialect, or `auto` stepping down)
TEXT_COLUMNS = ("input", "text", "prompt", "question")


class DetokenizedPrompts(Sequence):
    """Prompt texts made on demand by decoding the dataset's token ids with the benchmark's tokenizer
    (special tokens skipped: the server adds its own BOS). Picklable: the tokenizer is loaded again
    where the texts are used, and only the prompts asked for are decoded."""

    def __init__(self, tokens: Sequence[np.ndarray], tokenizer_path: str):
        self.tokens = tokens
        self.tokenizer_path = tokenizer_path
        self._tokenizer = None
        self._cache: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):  # type: ignore[override]
        text = self._cache.get(i)
        if text is None:
            if self._tokenizer is None:
                from llmlib.evaluation import load_tokenizer

                self._tokenizer = load_tokenizer(self.tokenizer_path)
            ids = self.tokens[i]
            text = self._cache[i] = self._tokenizer.decode(
                ids.tolist() if isinstance(ids, np.ndarray) else list(ids), skip_special_tokens=True)
        return text

    def __getstate__(self):
        return {"tokens": self.tokens, "tokenizer_path": self.tokenizer_path}

    def __setstate__(self, state):
        self.__init__(state["tokens"], state["tokenizer_path"])


def prompt_texts(dataset: Any, settings: EndpointSettings) -> list[str] | None:
    """The prompt texts the core may send instead of token ids (None: none at hand): the dataset column
    named by --trtllm_prompt_text_column, else for chat the dataset's `input_texts`; when the dialect
    may need texts (`auto`, or one that takes no token ids), a text column of the dataset (TEXT_COLUMNS)
    or, failing that, the token ids detokenized with the benchmark's tokenizer."""
    column = settings.prompt_text_column
    extra = getattr(dataset, "extra", None) or {}
    if column:
        if column not in extra:
            raise ConfigError(f"--trtllm_prompt_text_column={column!r}: the dataset has no such column (its extra "
                              f"columns: {', '.join(extra) or 'none'}); list it in the benchmark's "
                              "dataset.extra_columns")
        return extra[column]
    if settings.use_chat:
        return getattr(dataset, "input_texts", None)
    if settings.api_dialect != AUTO and DIALECTS[settings.api_dialect].token_id_prompts:
        return None
    for name in TEXT_COLUMNS:
        values = extra.get(name)
        if values and isinstance(values[0], str):
            return values
    tokens = getattr(dataset, "input_tokens", None)
    if tokens is not None and settings.tokenizer_path:
        return DetokenizedPrompts(tokens, settings.tokenizer_path)
    return None


# --- payloads (the wire format is llmlib.cores.wire.openai's) ------------------------------------------
def request_payload(*, model: str | None, prompt: list[int] | str, max_tokens: int, stream: bool,
                    sampling: dict[str, Any], stop_token_ids: Sequence[int] = (), chat: bool = False,
                    return_token_ids: bool = True, extensions: frozenset[str] | None = None,
                    stream_usage: bool = True) -> dict[str, Any]:
    """The JSON body of one harness request: greedy is temperature 0 alone; `top_k`, `min_tokens`,
    `stop_token_ids` and `return_token_ids` are the extensions vLLM / trtllm-serve / SGLang accept, sent
    only where `extensions` (the dialect's fields; None: all) has them."""
    temperature = float(sampling.get("temperature") or 0.0)
    fields: dict[str, Any] = {"temperature": temperature}
    if temperature > 0:
        fields["top_p"] = float(sampling.get("top_p") or 1.0)
        if sampling.get("top_k") and (extensions is None or "top_k" in extensions):
            fields["top_k"] = int(sampling["top_k"])
    for name in ("frequency_penalty", "presence_penalty"):
        if sampling.get(name):
            fields[name] = float(sampling[name])
    if sampling.get("seed") is not None:
        fields["seed"] = int(sampling["seed"])
    if sampling.get("min_new_tokens") and (extensions is None or "min_tokens" in extensions):
        fields["min_tokens"] = int(sampling["min_new_tokens"])
    if extensions is not None:
        if "stop_token_ids" not in extensions:
            stop_token_ids = ()
        if "return_token_ids" not in extensions:
            return_token_ids = False
    try:
        return completion_body(model=model, prompt=prompt, chat=chat, max_tokens=max_tokens, stream=stream,
                               fields=fields, stop_token_ids=stop_token_ids, return_token_ids=return_token_ids,
                               stream_usage=stream_usage)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def token_ids_refused_cause(status: int, data: bytes | str) -> str:
    """One line for a server that takes no token-id prompt, naming the setting that fixes it."""
    text = server_message(data)
    m = PROMPT_MUST_BE_TEXT_RE.search(data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
    gist = f"prompt: {m.group(1)}" if m else (text if len(text) <= 80 else text[:80] + "...")
    return (f"the server refuses token-id prompts (HTTP {status}: {gist}); send prompt texts instead with "
            "--trtllm_prompt_text_column=<a text column of the dataset, e.g. input>")



# --- the core -----------------------------------------------------------------------------------------
class _Slots:
    """The cap on requests in flight: FIFO like asyncio.Semaphore, plus a synchronous `try_take` (for a
    request started in a plain loop callback). A freed slot goes straight to the longest waiter, so a
    slot is free only while nobody waits."""

    __slots__ = ("free", "_waiters")

    def __init__(self, n: int):
        self.free = n
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def try_take(self) -> bool:
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot as it was cancelled: pass it on
                self.give()
            raise

    def give(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # a cancelled waiter is skipped
                fut.set_result(None)
                return
        self.free += 1


class _Call:
    """One request on the loop: its exchange once started, its stream parser, whether it holds a slot.
    `end()` (also the task's done callback) releases what is still held; calling it again is a no-op."""

    __slots__ = ("req", "slots", "held", "ex", "state", "error")

    def __init__(self, req: Request, slots: _Slots):
        self.req = req
        self.slots = slots
        self.held = False
        self.ex: Exchange | None = None
        self.state: StreamState | None = None
        self.error: Exception | None = None  # raised by `_begin`'s start, re-raised in the task

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.give()

    def end(self, _task: asyncio.Task | None = None) -> None:
        if self.ex is not None:
            self.ex.abort()  # a no-op once the response ended
        self.release()


class TrtllmEndpointCore(AsyncLoopCore):
    """One OpenAI-compatible server, `--trtllm_server_urls[rank]`."""

    name = "trtllm_endpoint"

    settings_type = EndpointSettings
    settings: EndpointSettings
    supports_workers = True

    def __init__(self, settings: EndpointSettings, **kwargs):
        super().__init__(settings, **kwargs)
        urls = list(settings.urls)
        if not urls:
            raise ConfigError(f"core {self.name}: --trtllm_server_urls is empty; give host:port[,host:port...]")
        if not 0 <= self.rank < len(urls):
            raise ConfigError(f"core {self.name}: rank {self.rank} but only {len(urls)} URL(s) in "
                              f"--trtllm_server_urls={','.join(urls)}")
        self.endpoint = endpoint_url(urls[self.rank])
        self.url = self.endpoint.address
        s = settings
        check_key_transport(self.endpoint, s)
        if s.api_key:
            register_secret(s.api_key)  # also when the settings were built in code
        self._ssl = tls_context(s) if self.endpoint.tls else None
        api = self.endpoint.api
        self._path = f"{api}/chat/completions" if s.use_chat else f"{api}/completions"
        self._texts = self.inputs.prompt_texts
        #: the dialect requests are built for: fixed by --trtllm_api_dialect, or (auto) the richest until
        #: the health check's probe settles it; never changed after that (not during the timed run)
        self.dialect: Dialect = self._initial_dialect()
        self._probed = s.api_dialect != AUTO
        #: prompts go as text: a text column was named, chat, or a dialect that takes no token ids
        self._send_texts = bool(s.prompt_text_column or s.use_chat or not self.dialect.token_id_prompts)
        if s.use_chat and self._texts is None:
            raise ConfigError(f"core {self.name}: --trtllm_use_chat needs prompt texts, and this dataset gives "
                              "token ids only (the harness never detokenizes); use /v1/completions")
        if self._send_texts and self._texts is None:
            raise ConfigError(f"core {self.name}: --trtllm_api_dialect={s.api_dialect} sends prompt texts, and "
                              "there are none: name a text column with --trtllm_prompt_text_column, or a "
                              "tokenizer to detokenize the prompts with --tokenizer_path")
        #: prompts go as token ids (not texts): the health check probes once that the server takes them
        self._ids_checked = self._send_texts or not s.probe_token_ids or not self._probed
        self._extensions = self.dialect.fields
        #: what the health check found worth a warning (an empty model list with a model name given...)
        self.warnings: list[str] = []
        self._owned_by: set[str] = set()
        self._sampling_of: tuple[Any, dict[str, Any]] = (None, {})  # (params, its sampling dict)
        self._streamed = False  # a streamed request was sent (for the lost-controls report)
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if s.api_key:
            self._headers["Authorization"] = f"Bearer {s.api_key}"
        #: the model sent in requests; found by health_check when not configured
        self.model: str | None = s.model or None
        self.served_models: list[str] = []
        #: which source gave each completed request's output length: token_ids / usage / chunks
        self.token_sources: collections.Counter = collections.Counter()

        self._http: HTTPClient | None = None
        self._slots = _Slots(s.max_concurrency)
        #: makes the loop (AsyncLoopCore runs it where it supports a factory): uvloop's, or None for asyncio
        self.loop_factory = _uvloop.new_event_loop if (_uvloop is not None and s.use_uvloop) else None
        self._start_loop(f"endpoint-{self.rank}")

    # --- the contract -------------------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark) -> EndpointSettings:
        """The fields, plus the benchmark's tokenizer (to detokenize prompts for a server that takes text
        only, when the dataset has no text column)."""
        settings = endpoint_settings(config)
        if settings.api_dialect == AUTO or not DIALECTS[settings.api_dialect].token_id_prompts:
            from llmlib.harness import tokenizer_path_for

            try:
                path = tokenizer_path_for(config, benchmark) if benchmark is not None else None
            except (AttributeError, TypeError):
                path = None
            if path is not None and path != "char":
                settings = dataclasses.replace(settings, tokenizer_path=str(path))
        return settings

    def _initial_dialect(self) -> Dialect:
        s = self.settings
        d = DIALECTS["vllm"] if s.api_dialect == AUTO else get_dialect(s.api_dialect)
        if not s.return_token_ids:
            d = d.without({"return_token_ids"})
        return d if s.api_dialect != AUTO else dataclasses.replace(d, name=AUTO, title="auto (not probed yet)")

    @classmethod
    def worker_settings(cls, settings: EndpointSettings, index: int, workers: int) -> EndpointSettings:
        """Each worker process gets its share of the requests in flight and of the connections opened ahead."""
        def share(n: int) -> int:
            return n // workers + (1 if index < n % workers else 0)

        ahead = settings.connect_ahead
        return dataclasses.replace(settings, max_concurrency=max(1, share(settings.max_concurrency)),
                                   connect_ahead=None if ahead is None else share(ahead))

    @classmethod
    def core_inputs(cls, settings: EndpointSettings, dataset) -> CoreInputs:
        """The prompt texts, when the server is sent texts instead of token ids."""
        return CoreInputs(prompt_texts=prompt_texts(dataset, settings))

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        """One per URL; the URLs, the CA file and where the key may go are checked here, before anything
        starts."""
        urls = list(config.trtllm_server_urls)
        if not urls:
            raise ConfigError(f"core {cls.name}: --trtllm_server_urls is empty; give host:port[,host:port...] "
                              "(one core per URL)")
        settings = endpoint_settings(config)
        for text in urls:
            url = endpoint_url(text)
            check_key_transport(url, settings)
            if url.tls:
                tls_context(settings)
        return len(urls)

    def _error(self, cause: str, *, final: bool = False) -> BackendError:
        """A BackendError naming this server, its cause redacted of every secret (a server or proxy may
        echo the key in an error body or header) and on one line."""
        return BackendError(self.url, redact(" ".join(str(cause).split())), final=final)

    @property
    def address(self) -> str:
        return self.url

    @property
    def token_source(self) -> str | None:
        """The source most completed requests used ('token_ids', 'usage', 'chunks'), None before any."""
        common = self.token_sources.most_common(1)
        return common[0][0] if common else None

    def report(self) -> dict[str, Any]:
        """Where output counts came from, the dialect that ran, and the controls it lost that matter to
        MLPerf (judged on the run's own generation parameters, once a request was sent)."""
        out: dict[str, Any] = {"token_sources": dict(self.token_sources), "api_dialect": self.dialect.name,
                               "api_dialect_detail": self.dialect.describe()}
        params = self._sampling_of[0]
        if params is not None:
            lost = dialects_mod.lost_controls(
                self.dialect, min_new_tokens=int(params.min_new_tokens or 0),
                stop_token_ids=tuple(params.stop_token_ids or ()), eos_token_id=params.eos_token_id,
                text_prompts=self._send_texts, streaming=self._streamed, sources=dict(self.token_sources))
            out["lost_controls"] = [lc.to_json() for lc in lost]
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @property
    def num_connections(self) -> int:
        """Connections open to the server now (idle or carrying a request)."""
        return self._http.num_connections if self._http is not None else 0

    def health_check(self) -> None:
        """GET /health (a 404 is allowed), then /v1/models: the configured model must be served;
        without one the first served model is used. Each call is bounded by health_timeout_s."""
        self.loop_health()
        timeout_s = self.settings.health_timeout_s
        fut = asyncio.run_coroutine_threadsafe(self._health(timeout_s), self._loop)
        try:
            served = fut.result(2 * timeout_s + 1.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise self._error(f"health check timed out after {timeout_s:g}s (no answer from the event loop)") \
                from None
        except concurrent.futures.CancelledError:  # the loop ended under it (stop)
            raise self._error("core stopped during the health check") from None
        self.served_models = served
        models = f"GET {self.endpoint.api}/models"
        if not served:
            if self.settings.model:  # a server that loads models on demand (transformers serve) lists none
                self._warn(f"{models} lists no model; sending --trtllm_endpoint_model={self.settings.model!r} "
                           "as given (a server that loads models on demand lists none)")
            elif self.settings.api_dialect == AUTO or self.dialect.empty_model_list:
                pass  # the probe below tells whether the server takes requests without a model
            else:  # a router whose workers have not registered yet: retried
                raise self._error(f"{models} lists no model (yet); --trtllm_api_dialect=auto tries requests "
                                  "without one")
        elif self.settings.model:
            if self.settings.model not in served:
                raise self._error(f"model {self.settings.model!r} is not served here; it serves: "
                                  f"{', '.join(served)} (--trtllm_endpoint_model)", final=True)
        else:
            self.model = served[0]
        if not self._probed:
            # a server's first generation can be slow (a model loaded on demand, kernels warmed up): each probe
            # request gets the request timeout (at most PROBE_TIMEOUT_S), not the health check's
            probe_s = min(self.settings.request_timeout_s or PROBE_TIMEOUT_S, PROBE_TIMEOUT_S)
            fut = asyncio.run_coroutine_threadsafe(self._probe_dialect(probe_s), self._loop)
            try:
                fut.result(12 * probe_s + 1.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                fut.cancel()
                raise self._error(f"the dialect probe (--trtllm_api_dialect=auto) got no answer within "
                                  f"{12 * probe_s:g}s") from None
            if not served and not self.model:
                self._warn(f"{models} lists no model; requests go without a model field (the server "
                           "answered the probe without one)")
        elif not self._ids_checked:
            fut = asyncio.run_coroutine_threadsafe(self._probe_token_ids(timeout_s), self._loop)
            try:
                fut.result(2 * timeout_s + 1.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                fut.cancel()  # no verdict: the timed requests will tell

    def warm_up(self) -> None:
        """Open `connect_ahead` connections (default: max_concurrency) before the timed run, so its
        first requests are written at once instead of each waiting for a connect (which showed as
        5-7 ms of TTFT on each of the first 32 requests at concurrency 32, here). Best effort: a
        server that refuses more connections leaves the rest to be opened on demand."""
        s = self.settings
        n = s.max_concurrency if s.connect_ahead is None else s.connect_ahead
        if n <= 0 or self._http is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._http.connect_ahead(n), self._loop)
        try:
            idle = fut.result(s.connect_timeout_s * 2 + 5.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, HTTPError) as err:
            fut.cancel()
            log.warning("%s: opened %d of %d connections ahead (%s); the rest open on demand", self.url,
                        self._http.num_idle, n, redact(str(err)) or "timed out")
            return
        log.debug("%s: %d connections open ahead", self.url, idle)

    async def _health(self, timeout_s: float) -> list[str]:
        """On the loop: the two GETs; the models served. Causes that can heal (refused while the server
        starts, 5xx such as 503 while it loads, a timeout, a dropped connection) are retried by the
        caller; the others are final: TLS failures, a reply that is not HTTP, 401/403 (the key), 404 on
        /v1/models (not an OpenAI-compatible server, or a wrong path prefix), other 4xx, a body that is
        not a model list."""
        health, models = f"{self.endpoint.root}/health", f"{self.endpoint.api}/models"
        try:
            r = await self._http.get(health, timeout_s=timeout_s)
            if r.status >= 400 and r.status != 404:
                raise self._status_error(f"GET {health}", r)
            r = await self._http.get(models, timeout_s=timeout_s)
        except RequestTimeout as err:
            raise self._error(f"health check timed out after {timeout_s:g}s ({type(err).__name__})") from err
        except TLSError as err:
            hint = ("; give the server's CA with --trtllm_ca_file" if err.verify and not self.settings.ca_file
                    else "")
            raise self._error(f"{err}{hint}", final=True) from err
        except ProtocolError as err:
            raise self._error(f"not an HTTP server, or not this protocol: {err}", final=True) from err
        except HTTPError as err:
            raise self._error(f"not reachable: {type(err).__name__}: {err}") from err
        if r.status >= 400:
            if r.status == 404:
                raise self._error(f"GET {models} answered HTTP 404: not an OpenAI-compatible server, or the wrong "
                                  f"path prefix in --trtllm_server_urls ({server_message(r.body)})", final=True)
            raise self._status_error(f"GET {models}", r)
        try:
            data = r.json()["data"]
            self._owned_by = {str(m.get("owned_by") or "") for m in data if isinstance(m, dict)}
            return [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._error(f"GET {models}: expected {{'data': [{{'id': ...}}]}}, got {snippet(r.body)}",
                              final=True) from None

    def _status_error(self, what: str, r: Response) -> BackendError:
        """An HTTP error status in the health check: 5xx can heal (503 while a model loads), 4xx cannot."""
        if r.status >= 500:
            return self._error(f"not ready: {what} answered HTTP {r.status}: {server_message(r.body)}")
        hint = " (the API key was refused: --openai_api_key_file)" if r.status in (401, 403) else ""
        return self._error(f"{what} answered HTTP {r.status}{hint}: {server_message(r.body)}", final=True)

    async def _probe_token_ids(self, timeout_s: float) -> None:
        """On the loop: a one-token request with a token-id prompt. A reply saying the prompt must be
        text is final, in one line naming --trtllm_prompt_text_column; any other outcome passes (the
        timed requests report their own errors)."""
        body = {"prompt": [1], "max_tokens": 1, "temperature": 0.0}
        if self.model:
            body = {"model": self.model, **body}
        try:
            r = await self._http.post(self._path, json.dumps(body).encode(), timeout_s=timeout_s)
        except HTTPError:
            return
        if refuses_token_ids(r.status, r.body):
            raise self._error(token_ids_refused_cause(r.status, r.body), final=True)
        self._ids_checked = True

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            log.warning("%s: %s", self.url, redact(text))

    def _probe_body(self, d: Dialect, texts: bool, stream: bool) -> dict[str, Any]:
        """A small greedy request in dialect `d` (2 tokens), with every extension field `d` sends."""
        body: dict[str, Any] = {"model": self.model} if self.model else {}
        if self.settings.use_chat:
            body["messages"] = [{"role": "user", "content": self._texts[0]}]
        else:
            body["prompt"] = self._texts[0] if texts else [1]
        body.update(max_tokens=2, temperature=0.0)
        values = {"return_token_ids": True, "min_tokens": 1, "stop_token_ids": [0], "top_k": 1, "ignore_eos": False}
        body.update((k, v) for k, v in values.items() if k in d.fields)
        if stream:
            body["stream"] = True
            if d.stream_options:
                body["stream_options"] = {"include_usage": True}
        return body

    async def _probe_post(self, body: dict[str, Any], timeout_s: float) -> Response:
        try:
            return await self._http.post(self._path, json.dumps(body).encode(), timeout_s=timeout_s)
        except RequestTimeout as err:
            raise self._error(f"the dialect probe timed out after {timeout_s:g}s ({type(err).__name__})") from err
        except HTTPError as err:
            raise self._error(f"the dialect probe: {type(err).__name__}: {err}") from err

    async def _probe_dialect(self, timeout_s: float) -> None:
        """On the loop (auto): small requests, richest dialect first, stepping down on each refusal a reply
        names (a field: left out; token-id prompts: texts), then one streamed request to see how streams
        end and where counts come from. Sets `self.dialect` once; refusals it cannot step past are final."""
        d = self.dialect
        texts = self._send_texts
        steps: list[str] = []
        reply: Response | None = None
        for _ in range(8):
            body = self._probe_body(d, texts, stream=False)
            r = await self._probe_post(body, timeout_s)
            if r.status < 400:
                reply = r
                break
            refusal = read_refusal(r.status, r.body, body)
            if refusal is not None and refusal.token_ids:
                if self._texts is None:
                    raise self._error(token_ids_refused_cause(r.status, r.body) + " or --tokenizer_path",
                                      final=True)
                texts = True
                steps.append("token-id prompts refused: prompt texts")
                continue
            if refusal is not None and refusal.fields:
                d = d.without(refusal.fields)
                steps.append(f"refused {', '.join(sorted(refusal.fields))}")
                continue
            if r.status >= 500 and not (d.fields or not texts):
                raise self._error(f"not ready: the dialect probe answered HTTP {r.status}: {server_message(r.body)}")
            if d.fields:  # refused for a reason it does not name: strict OpenAI fields only
                d = d.without(d.fields)
                steps.append(f"HTTP {r.status} without a named field: standard fields only")
                continue
            if not texts and self._texts is not None:
                texts = True
                steps.append(f"HTTP {r.status} with token ids: prompt texts")
                continue
            hint = " (GET /v1/models listed none: name the model with --trtllm_endpoint_model)" \
                if not self.served_models and not self.model else ""
            raise self._error(f"the server refused every dialect the probe tried ({'; '.join(steps) or 'none'}): "
                              f"HTTP {r.status}: {server_message(r.body)}{hint}; pick one with "
                              f"--trtllm_api_dialect ({', '.join(DIALECTS)})", final=r.status < 500)
        if reply is None:
            raise self._error(f"the dialect probe did not settle after {len(steps)} steps: {'; '.join(steps)}",
                              final=True)
        try:
            _, _, source = parse_reply(reply.body)
        except ReplyError as err:
            raise self._error(f"the dialect probe's reply: {err}", final=True) from None
        output_ids = source == "token_ids"
        state = StreamState()
        for _ in range(3):
            body = self._probe_body(d, texts, stream=True)
            r = await self._probe_post(body, timeout_s)
            if r.status >= 400:
                refusal = read_refusal(r.status, r.body, body)
                if refusal is not None and refusal.fields:
                    d = d.without(refusal.fields)
                    steps.append(f"refused {', '.join(sorted(refusal.fields))} in a stream")
                    continue
                raise self._error(f"the dialect probe's stream answered HTTP {r.status}: {server_message(r.body)}",
                                  final=r.status < 500)
            try:
                state.feed(r.body)
            except ReplyError as err:
                raise self._error(f"the dialect probe's stream: {err}", final=True) from None
            break
        if not state.complete():
            raise self._error("the dialect probe's stream ended with neither 'data: [DONE]' nor a last chunk "
                              "with finish_reason", final=True)
        stream_usage = b'"completion_tokens"' in r.body
        self.dialect = self._settle(d, texts=texts, output_ids=output_ids or state.ids_mode,
                                    stream_usage=stream_usage, done_marker=state.done, steps=steps)
        self._extensions = self.dialect.fields
        self._send_texts = texts
        self._probed = True
        log.info("%s: API dialect %s (%s)", self.url, self.dialect.name, "; ".join(steps) or "nothing refused")

    def _settle(self, d: Dialect, *, texts: bool, output_ids: bool, stream_usage: bool, done_marker: bool,
                steps: list[str]) -> Dialect:
        """The table's dialect that behaves as observed (prompt form, output ids, stream usage and end),
        preferring the one /v1/models' `owned_by` names, else the one sending most of the fields the server
        took; its fields are those it took of that dialect's. None: `custom`, with the fields taken."""
        owners = {"vllm": "vllm", "sglang": "sglang", "tensorrt_llm": "trtllm", "me": "llamacpp"}
        hinted = {owners[o] for o in self._owned_by if o in owners}
        fits = [c for c in DIALECTS.values()
                if c.token_id_prompts == (not texts) and c.output_ids == output_ids
                and c.stream_usage == stream_usage and c.done_marker == done_marker]
        fits.sort(key=lambda c: (c.name not in hinted, -len(c.fields & d.fields)))
        base = fits[0] if fits else None
        fields = d.fields & base.fields if base is not None else d.fields
        return Dialect(name=base.name if base is not None else "custom",
                       title=f"auto: {base.title if base is not None else 'custom'}"
                             + (f" ({'; '.join(steps)})" if steps else ""),
                       fields=fields, token_id_prompts=not texts, output_ids=output_ids, stream_usage=stream_usage,
                       done_marker=done_marker, empty_model_list=not self.served_models,
                       stream_options=d.stream_options, usage_counts_eos=base is not None and base.usage_counts_eos,
                       source="probed by --trtllm_api_dialect=auto")

    # --- the loop thread ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _loop_resources(self):
        """The connection pool, open while the loop takes requests."""
        s = self.settings
        async with HTTPClient(self.endpoint.origin, headers=self._headers, connect_timeout_s=s.connect_timeout_s,
                              max_idle=s.max_concurrency, ssl_context=self._ssl) as http:
            self._http = http
            yield

    def _begin(self, req: Request) -> asyncio.Task:
        """On the loop, as the request is taken: written right here when a slot and an idle connection
        are free; its task then only awaits the response."""
        call = _Call(req, self._slots)
        if self._slots.try_take():
            call.held = True
            try:
                self._send(call)
            except Exception as err:  # delivered by the task, never inside enqueue
                call.error = err
        task = asyncio.ensure_future(self._run(call))
        task.add_done_callback(call.end)  # cancelled before its first step, or a bug: release the slot
        return task

    def _send(self, call: _Call) -> None:
        """Start the request's exchange (written now if an idle connection is at hand)."""
        req = call.req
        on_body = None
        if req.streaming:
            rid = req.request_id
            state = call.state = StreamState()
            if req.chunks:  # someone listens: the output so far after every read that brought tokens
                seen = [0]

                def on_body(data: bytes) -> None:
                    if state.feed(data):
                        self._first_token(rid, state.first_tokens())
                    n = state.tokens_so_far()
                    if n > seen[0]:
                        seen[0] = n
                        self._chunk(rid, state.first_tokens(), n)
            else:
                def on_body(data: bytes) -> None:  # on the loop, from the socket: no task wake-up per read
                    if state.feed(data):  # (no reference to `call` here: a cycle would leave garbage for the GC)
                        self._first_token(rid, state.first_tokens())

        body = _body_bytes(self._payload(req))
        call.ex = self._http.start("POST", self._path, body, on_body=on_body,
                                   timeout_s=self.settings.request_timeout_s)

    async def _run(self, call: _Call) -> None:
        req = call.req
        rid = req.request_id
        timeout_s = self.settings.request_timeout_s
        error = None
        try:
            if call.error is not None:
                raise call.error
            if call.ex is None:  # no free slot when it was taken
                await self._slots.take()
                call.held = True
                if rid not in self._pending:  # cancelled while it waited
                    call.release()
                    return
                self._send(call)
            # the response is read to its end past [DONE], so the connection goes back to the pool
            tokens, n, source = self._result(call, await call.ex)
        except asyncio.CancelledError:
            call.end()
            if rid in self._pending:
                cause = "core stopped with the request pending" if self._stopping else "cancelled"
                self._fail(rid, self._error(cause))
            raise
        except RequestTimeout as err:
            error = f"request timed out after {timeout_s:g}s ({type(err).__name__})"
        except ReplyError as err:
            error = str(err)
        except ConnectError as err:
            error = f"connection failed: {err}"
        except ConnectionDropped as err:
            error = f"connection dropped mid-request: {err}"
        except ProtocolError as err:
            error = f"malformed HTTP response: {err}"
        except HTTPError as err:
            error = f"HTTP error: {type(err).__name__}: {err}"
        call.release()  # before the outcome: a request the sink issues from it can take this slot at once
        if error is not None:
            self._fail(rid, self._error(error))
            return
        self.token_sources[source] += 1
        self._complete(rid, tokens, n)

    def _result(self, call: _Call, r: Response) -> tuple[np.ndarray, int, str]:
        """(output ids, their count, source) of a finished response, or ReplyError."""
        if r.status >= 400:
            if not self._send_texts and refuses_token_ids(r.status, r.body) and self._texts is None:
                raise ReplyError(token_ids_refused_cause(r.status, r.body))
            refusal = read_refusal(r.status, r.body, self._payload(call.req))
            if refusal is not None:
                raise ReplyError(refusal.line(self.dialect))
            raise ReplyError(f"HTTP {r.status}: {server_message(r.body)}")
        if call.state is None:
            return parse_reply(r.body)
        if not call.state.done and not call.state.complete():
            raise ReplyError("stream ended before 'data: [DONE]' or a last chunk with finish_reason (cut short)")
        return call.state.result()

    def _payload(self, req: Request) -> dict[str, Any]:
        prompt: list[int] | str
        if self._send_texts:
            prompt = self._texts[req.sample_index]
        else:
            prompt = req.input_tokens.tolist() if isinstance(req.input_tokens, np.ndarray) else list(req.input_tokens)
        params = req.params
        cached, sampling = self._sampling_of
        if cached is not params:  # one dict per params object (the run shares one)
            sampling = params.sampling()
            self._sampling_of = (params, sampling)
        if req.streaming:
            self._streamed = True
        return request_payload(model=self.model, prompt=prompt, max_tokens=params.max_new_tokens,
                               stream=bool(req.streaming), sampling=sampling,
                               stop_token_ids=params.stop_token_ids,
                               chat=self.settings.use_chat, return_token_ids=self.dialect.output_ids,
                               extensions=self._extensions, stream_usage=self.dialect.stream_options)


__all__ = ["EndpointSettings", "StreamState", "TrtllmEndpointCore", "base_url", "check_key_transport",
           "endpoint_settings", "endpoint_url", "parse_reply", "prompt_texts", "read_api_key", "refuses_token_ids",
           "request_payload", "server_message", "tls_context"]
