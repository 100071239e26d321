"""The `triton_grpc` core: a Triton Inference Server serving the TensorRT-LLM backend's model, over gRPC.

One core per (server, model): `--triton_server_urls` x `--triton_num_models_per_server` (models named
`<triton_model_name>_<i>` when there are several). Each core spreads its requests over
`--triton_num_clients_per_server` tritonclient streams (`start_stream` / `async_stream_infer` with
`enable_empty_final_response=True`); a request ends at the response whose `triton_final_response`
parameter is true. Responses arrive on each stream's own thread, which delivers them directly.

Wire format (TensorRT-LLM's `tensorrt_llm` model, batch dimension 1): input_ids INT32 [1, L],
input_lengths / request_output_len / end_id / pad_id / beam_width / min_length INT32 [1, 1],
streaming BOOL [1, 1], temperature / runtime_top_p / presence_penalty / frequency_penalty FP32 [1, 1],
runtime_top_k INT32 [1, 1], random_seed UINT64 [1, 1], stop_words_list INT32 [1, 2, N]; outputs
output_ids INT32 [1, beam, T] and sequence_length INT32 [1, beam]. Optional inputs are sent only when
the model declares them (read from its metadata by the health check, which also fails on a model that
lacks a required one). `--triton_tensor_names=input_ids:INPUT_ID,...` renames tensors.

Output tokens: streamed responses carry the new tokens; a non-streamed reply is padded and is cut to
`sequence_length`. Everything from the first end_id on is dropped (the end id is not output).

Errors. A gRPC failure of the stream itself (UNAVAILABLE when the server dies, CANCELLED) fails every
request in flight on it, and the next request opens a fresh stream. A request sent in the moment
between tritonclient marking the stream dead and calling back with why fails with that same cause.
A model error for one request reaches a stream client without the request's id (Triton clears the
response it belongs to), so it cannot be pinned on one request at once: the stream is then retired
(no new requests), and once its in-flight count drops to the number of such errors, the requests
left are exactly the failed ones. That costs the failed requests some latency, never a request that
did not fail.

Cancel (a timeout, the watchdog) ends a request at once; its later responses are dropped. Where the
model declares TensorRT-LLM's `stop` input, the core also sends a request with the same id and
stop=true, on a stream kept for stops: the backend then cancels that generation (and answers the
stop request with an empty final response), so a timed-out request stops taking the server's
capacity, and its concurrency slot, held until the server ends the request, is freed early.
Without `stop`, the server finishes the generation.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmlib.config import ResolvedConfig
from llmlib.cores.base import EMPTY_TOKENS, CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, ConfigError, CoreUnavailableError

try:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise CoreUnavailableError(f"core triton_grpc needs tritonclient[grpc] ({_err}). "
                               "Install it with: pip install -e '.[triton]'") from _err

log = logging.getLogger(__name__)

#: the tensors the harness uses, by their TensorRT-LLM names: (datatype, required)
INPUTS: dict[str, tuple[str, bool]] = {
    "input_ids": ("INT32", True),
    "input_lengths": ("INT32", True),
    "request_output_len": ("INT32", True),
    "end_id": ("INT32", False),
    "pad_id": ("INT32", False),
    "streaming": ("BOOL", False),
    "beam_width": ("INT32", False),
    "temperature": ("FP32", False),
    "runtime_top_k": ("INT32", False),
    "runtime_top_p": ("FP32", False),
    "random_seed": ("UINT64", False),
    "min_length": ("INT32", False),
    "presence_penalty": ("FP32", False),
    "frequency_penalty": ("FP32", False),
    "stop_words_list": ("INT32", False),
    "stop": ("BOOL", False),
}
OUTPUTS = ("output_ids", "sequence_length")
_NP = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_}
FINAL_PARAM = "triton_final_response"
CLOSE_WAIT_S = 10.0  # stop() waits this long for each replaced stream's client to close


@dataclass(frozen=True, slots=True, kw_only=True)
class TritonSettings(CoreSettings):
    """One Triton core's server and model, or (`targets`) every rank's, resolved once."""

    url: str = ""  # host:port of the gRPC endpoint
    model: str = ""
    #: (url, model) per rank; empty: every rank is (url, model)
    targets: tuple[tuple[str, str], ...] = ()
    num_clients: int = 1
    max_concurrency: int = 512
    tensor_names: dict[str, str] | None = None  # harness name -> server name
    health_timeout_s: float = 5.0


def triton_settings(config: ResolvedConfig, rank: int | None = None) -> TritonSettings:
    """Rank `rank`'s settings; with rank None, those of every rank (`targets`)."""
    urls = list(config.triton_server_urls)
    n_models = int(config.triton_num_models_per_server)
    if not urls:
        raise ConfigError("core triton_grpc: --triton_server_urls is empty; give host:port[,host:port...]")
    if rank is not None and not 0 <= rank < len(urls) * n_models:
        raise ConfigError(f"core triton_grpc: rank {rank} but {len(urls)} server(s) x {n_models} model(s)")
    names = {str(k): str(v) for k, v in (config.triton_tensor_names or {}).items()}
    unknown = sorted(set(names) - set(INPUTS) - set(OUTPUTS))
    if unknown:
        raise ConfigError(f"--triton_tensor_names: unknown tensor(s) {', '.join(unknown)}; "
                          f"expected some of: {', '.join(list(INPUTS) + list(OUTPUTS))}")
    base = str(config.triton_model_name)
    if not base:
        raise ConfigError("--triton_model_name is empty; expected the Triton model's name (e.g. tensorrt_llm)")
    targets = tuple((_host_port(urls[r // n_models]), base if n_models == 1 else f"{base}_{r % n_models}")
                    for r in range(len(urls) * n_models))
    url, model = targets[rank or 0]
    return TritonSettings(
        url=url, model=model, targets=targets if rank is None else (),
        num_clients=int(config.triton_num_clients_per_server),
        max_concurrency=int(config.triton_max_concurrency),
        tensor_names=names,
        health_timeout_s=min(5.0, float(config.health_check_timeout_s or 5.0)),
    )


def _host_port(url: str) -> str:
    url = url.strip()
    for prefix in ("grpc://", "http://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    return url.rstrip("/")


def stop_words_tensor(stop_ids: Sequence[int]) -> np.ndarray:
    """TensorRT-LLM's stop_words_list for single-token stop words: [1, 2, N], the flat ids and
    each word's end offset."""
    ids = np.asarray(list(stop_ids), dtype=np.int32)
    offsets = np.arange(1, len(ids) + 1, dtype=np.int32)
    return np.stack([ids, offsets])[None, :, :]


def response_tokens(output_ids: np.ndarray | None, sequence_length: np.ndarray | None) -> np.ndarray:
    """The tokens of one response (first beam), cut to sequence_length when the server gives it."""
    if output_ids is None or output_ids.size == 0:
        return EMPTY_TOKENS
    ids = output_ids
    while ids.ndim > 1:  # [batch, beam, T] or [batch, T]: the first of each
        ids = ids[0]
    if sequence_length is not None and sequence_length.size:
        n = int(sequence_length.reshape(-1)[0])
        if 0 <= n < len(ids):
            ids = ids[:n]
    return ids


def cut_at_end(tokens: np.ndarray, end_id: int | None) -> np.ndarray:
    """Drop the end id and everything after it (TensorRT-LLM pads with it).

    The comparison is element-wise on the array: comparing the whole token list to the end id
    (a list == int) is always False and would keep the padding."""
    if end_id is None or tokens.size == 0:
        return tokens
    hits = np.flatnonzero(tokens == end_id)
    return tokens[:hits[0]] if hits.size else tokens


class _Track:
    __slots__ = ("parts", "first_sent", "streaming", "prompt", "end_id")

    def __init__(self, streaming: bool, prompt: np.ndarray, end_id: int | None = None):
        self.parts: list[np.ndarray] = []
        self.first_sent = False
        self.streaming = streaming
        self.prompt = prompt  # for the stop request a cancel sends
        self.end_id = end_id  # the output is cut at its first end id


class _Stream:
    """One tritonclient client with its bidirectional stream; responses come on its thread."""

    def __init__(self, core: TritonGrpcCore, index: int):
        self.core = core
        self.index = index
        self.client: Any = None
        self.in_flight: dict[str, _Track] = {}
        self.open = False
        self.retired = False  # took a model error it cannot attribute: no new requests
        self.orphan_errors: list[str] = []
        #: why the stream failed, set (under the core's lock) by its failure callback
        self.failure: str | None = None

    def start(self) -> None:
        self.client = grpcclient.InferenceServerClient(url=self.core.settings.url)
        # open before the stream starts: a connection refused can reach the callback (which closes
        # it) before start_stream returns
        self.open = True
        try:
            self.client.start_stream(callback=self._on_response)
        except Exception:
            self.open = False
            raise

    def dead(self) -> bool:
        """tritonclient refuses sends once its stream failed, a moment before it reports why to the
        callback (it clears `_active`, then calls back)."""
        state = getattr(self.client, "_stream", None)
        return state is not None and getattr(state, "_active", True) is False

    def close(self, cancel: bool) -> None:
        self.open = False
        if self.client is not None:
            try:
                self.client.stop_stream(cancel_requests=cancel)
                self.client.close()
            except Exception as err:  # closing a broken stream must not raise into stop()
                log.debug("%s: closing stream %d: %r", self.core.address, self.index, err)

    # on the stream's thread ------------------------------------------------------------------------
    def _on_response(self, result, error) -> None:
        core = self.core
        if error is not None:
            core._stream_error(self, error)
            return
        response = result.get_response()
        rid = response.id
        track = self.in_flight.get(rid)
        if track is None:  # a request already failed or cancelled: its late responses are dropped
            return
        tokens = response_tokens(result.as_numpy(core.tensor("output_ids")),
                                 result.as_numpy(core.tensor("sequence_length")))
        if tokens.size:
            track.parts.append(tokens)
            if track.streaming and not track.first_sent:
                track.first_sent = True
                core._first_token(int(rid), tokens.astype(np.uint32, copy=False))
        params = response.parameters
        if FINAL_PARAM in params and params[FINAL_PARAM].bool_param:
            core._finish(self, rid, track)


class _StopStream:
    """The stream stop requests go on. The backend finds the generation by request id whatever the
    stream, and a stop request's error must not reach the request streams, whose unattributed model
    errors are counted against their requests."""

    def __init__(self, core: TritonGrpcCore):
        self.core = core
        self.client = grpcclient.InferenceServerClient(url=core.settings.url)
        self.open = True
        self.client.start_stream(callback=self._on_response)

    def send(self, key: str, inputs: list) -> None:
        self.client.async_stream_infer(self.core.settings.model, inputs, request_id=key,
                                       enable_empty_final_response=True)

    def _on_response(self, result, error) -> None:
        if error is None:
            return  # the stop request's empty final response
        core = self.core
        core.stop_errors += 1
        if error.status() is not None:  # the stream failed: the next stop opens another
            self.open = False
        log.debug("%s: stop request failed: %s", core.address, _describe(error))

    def close(self) -> None:
        self.open = False
        try:
            self.client.stop_stream(cancel_requests=True)
            self.client.close()
        except Exception as err:
            log.debug("%s: closing the stop stream: %r", self.core.address, err)


class TritonGrpcCore(LLMCore):
    """One model on one Triton server, `--triton_server_urls` x `--triton_num_models_per_server`."""

    name = "triton_grpc"

    settings_type = TritonSettings
    settings: TritonSettings
    supports_workers = True

    def __init__(self, settings: TritonSettings, **kwargs):
        super().__init__(settings, **kwargs)
        if settings.targets:
            if not 0 <= self.rank < len(settings.targets):
                raise ConfigError(f"core {self.name}: rank {self.rank} but {len(settings.targets)} server model(s)")
            url, model = settings.targets[self.rank]
            self.settings = dataclasses.replace(settings, url=url, model=model, targets=())
        self._names = dict(self.settings.tensor_names or {})
        #: inputs the model declares (from its metadata); None until the health check reads them
        self.model_inputs: set[str] | None = None
        self._lock = threading.Lock()
        self._streams = [_Stream(self, i) for i in range(self.settings.num_clients)]
        self._retired: list[_Stream] = []  # replaced streams still draining
        self._closers: list[threading.Thread] = []  # closing replaced streams' clients
        self._next_stream = itertools.count()
        self._backlog: collections.deque[Request] = collections.deque()
        self._in_flight = 0
        self._stopping = False
        self._outputs = [grpcclient.InferRequestedOutput(self.tensor(n)) for n in OUTPUTS]
        self.stream_failures = 0
        self.model_errors = 0
        self.stops_sent = 0  # stop requests sent for cancelled requests
        self.stop_errors = 0
        self._stop_stream: _StopStream | None = None

    # --- the contract -------------------------------------------------------------------------------
    @classmethod
    def worker_settings(cls, settings: TritonSettings, index: int, workers: int) -> TritonSettings:
        """Each worker process gets its share of the requests in flight (and at least one stream)."""
        share = settings.max_concurrency // workers + (1 if index < settings.max_concurrency % workers else 0)
        return dataclasses.replace(settings, max_concurrency=max(1, share))

    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark) -> TritonSettings:
        return triton_settings(config)

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        n = len(config.triton_server_urls)
        if n == 0:
            raise ConfigError(f"core {cls.name}: --triton_server_urls is empty; give host:port[,host:port...]")
        return n * int(config.triton_num_models_per_server)

    @property
    def address(self) -> str:
        return f"grpc://{self.settings.url}/{self.settings.model}"

    def tensor(self, name: str) -> str:
        return self._names.get(name, name)

    def report(self) -> dict[str, Any]:
        return {"stream_failures": self.stream_failures, "model_errors": self.model_errors,
                "stops_sent": self.stops_sent, "stop_errors": self.stop_errors}

    def health_check(self) -> None:
        """Server live and ready, the model ready, and its inputs the ones the harness sends.

        Causes that can heal are retried by the caller: the server unreachable or not ready (it
        starts), a model still loading, a timeout. The others are final (`BackendError.final`): a model
        the server does not have or failed to load, missing inputs, and gRPC statuses that say this is
        the wrong server or request (NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED, UNAUTHENTICATED,
        PERMISSION_DENIED)."""
        s = self.settings
        timeout = s.health_timeout_s
        try:
            client = grpcclient.InferenceServerClient(url=s.url)
            try:
                if not client.is_server_ready(client_timeout=timeout):
                    raise BackendError(self.address, "server not ready")
                if not client.is_model_ready(s.model, client_timeout=timeout):
                    state, reason = _model_state(client, s.model, timeout)
                    final = state != "LOADING"
                    what = {"LOADING": "still loading", None: "not in the server's model repository"}.get(
                        state, f"not ready ({state}{': ' + reason if reason else ''})")
                    raise BackendError(self.address, f"model {s.model!r} {what} (--triton_model_name / "
                                                     "--triton_num_models_per_server)", final=final)
                meta = client.get_model_metadata(s.model, client_timeout=timeout)
            finally:
                client.close()
        except InferenceServerException as err:
            final = str(err.status() or "").rpartition(".")[2] in _FINAL_STATUSES
            raise BackendError(self.address, f"health check failed: {_describe(err)}", final=final) from None
        declared = {t.name for t in meta.inputs}
        missing = [self.tensor(n) for n, (_, required) in INPUTS.items() if required and self.tensor(n) not in declared]
        if missing:
            raise BackendError(self.address, f"model {s.model!r} lacks input(s) {', '.join(missing)} "
                               f"(it has: {', '.join(sorted(declared))}); see --triton_tensor_names", final=True)
        self.model_inputs = declared

    def _enqueue_impl(self, requests: Sequence[Request]) -> None:
        if self._stopping:
            raise BackendError(self.address, "core stopped")
        with self._lock:
            room = self.settings.max_concurrency - self._in_flight
            now, later = list(requests[:max(room, 0)]), list(requests[max(room, 0):])
            self._in_flight += len(now)
            self._backlog.extend(later)
        for req in now:
            if not self._send(req):
                self._release()

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        if request_id not in self._pending:
            return
        super().cancel(request_id, reason)
        if self.model_inputs is None or self.tensor("stop") not in self.model_inputs:
            return
        key = str(request_id)
        with self._lock:
            tracks = [s.in_flight.get(key) for s in (*self._streams, *self._retired) if s.open]
        track = next((t for t in tracks if t is not None), None)
        if track is None:
            return  # not sent yet (backlog), or already ended
        try:
            self._stopper().send(key, self._stop_inputs(track.prompt))
            self.stops_sent += 1
        except Exception as err:  # best effort: the request has ended here either way
            log.warning("%s: stop request for %s not sent: %s", self.address, key, _describe(err))

    def _stopper(self) -> _StopStream:
        with self._lock:
            if self._stop_stream is None or not self._stop_stream.open:
                self._stop_stream = _StopStream(self)
            return self._stop_stream

    def _stop_inputs(self, prompt: np.ndarray) -> list:
        """TensorRT-LLM's stop request: the required inputs (Triton checks they are present; the
        backend reads only `stop` and the request id) and stop=true."""
        ids = np.asarray(prompt, dtype=np.int32).reshape(1, -1)
        values = {"input_ids": ids, "input_lengths": _scalar(ids.shape[1], np.int32),
                  "request_output_len": _scalar(1, np.int32), "stop": _scalar(True, np.bool_)}
        inputs = []
        for name, array in values.items():
            tensor = grpcclient.InferInput(self.tensor(name), list(array.shape), INPUTS[name][0])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            backlog, self._backlog = list(self._backlog), collections.deque()
        for req in backlog:
            self._fail(req.request_id, BackendError(self.address, "core stopped with the request pending"))
        with self._lock:
            streams = self._streams + self._retired
        for stream in streams:
            stream.close(cancel=True)
        if self._stop_stream is not None:
            self._stop_stream.close()
        with self._lock:
            closers = list(self._closers)
        for closer in closers:
            closer.join(timeout=CLOSE_WAIT_S)
            if closer.is_alive():
                log.warning("%s: a replaced stream did not close in %g s", self.address, CLOSE_WAIT_S)
        super().stop()

    # --- sending --------------------------------------------------------------------------------------
    def _pick_stream(self) -> _Stream:
        """Round robin over the streams; a failed or retired one is replaced by a fresh one."""
        i = next(self._next_stream) % len(self._streams)
        with self._lock:
            stream = self._streams[i]
            if stream.retired or stream.failure is not None or (stream.client is not None and not stream.open):
                if stream.retired:
                    self._retired.append(stream)
                elif stream.client is not None:  # failed: closed now, never left to the garbage collector
                    self._close_off_thread(stream, cancel=True)
                stream = self._streams[i] = _Stream(self, i)
            if stream.client is None:
                stream.start()
            return stream

    def _send(self, req: Request) -> bool:
        """Send one request into a slot already counted. False when it was not sent (failed, or
        cancelled meanwhile): the caller frees the slot."""
        rid = req.request_id
        if rid not in self._pending:
            return False
        key = str(rid)
        stream = None
        try:
            inputs = self._inputs(req)
            stream = self._pick_stream()
            stream.in_flight[key] = _Track(bool(req.streaming), req.input_tokens, req.params.eos_token_id)
            stream.client.async_stream_infer(self.settings.model, inputs, outputs=self._outputs, request_id=key,
                                             enable_empty_final_response=True)
        except Exception as err:
            if stream is None:
                self._fail(rid, BackendError(self.address, f"could not send the request: {_describe(err)}"))
                return False
            with self._lock:
                failure = stream.failure
                if failure is None and stream.dead():
                    # the stream's failure callback is on its way and fails this request (in its
                    # in_flight already) with the cause
                    return True
            if self._take(stream, key):
                cause = failure or f"could not send the request: {_describe(err)}"
                self._fail(rid, BackendError(self.address, cause))
                return False
            return True  # the stream's failure already failed it and freed the slot
        if not stream.open and self._take(stream, key):  # the stream failed while we sent
            cause = stream.failure or "gRPC stream failed while the request was sent"
            self._fail(rid, BackendError(self.address, cause))
            return False
        return True

    def _inputs(self, req: Request) -> list:
        ids = np.asarray(req.input_tokens, dtype=np.int32).reshape(1, -1)
        params = req.params
        end_id = params.eos_token_id
        values: dict[str, np.ndarray] = {
            "input_ids": ids,
            "input_lengths": _scalar(ids.shape[1], np.int32),
            "request_output_len": _scalar(req.max_new_tokens, np.int32),
            "streaming": _scalar(bool(req.streaming), np.bool_),
            "beam_width": _scalar(1, np.int32),
        }
        if end_id is not None:
            values["end_id"] = _scalar(end_id, np.int32)
            values["pad_id"] = _scalar(end_id, np.int32)
        temperature = float(params.temperature)
        if temperature > 0:
            values["temperature"] = _scalar(temperature, np.float32)
            values["runtime_top_p"] = _scalar(float(params.top_p), np.float32)
            values["runtime_top_k"] = _scalar(int(params.top_k), np.int32)
        else:
            values["runtime_top_k"] = _scalar(1, np.int32)  # greedy
        values["random_seed"] = _scalar(int(params.seed), np.uint64)
        if params.min_new_tokens:
            values["min_length"] = _scalar(int(params.min_new_tokens), np.int32)
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(params, name):
                values[name] = _scalar(float(getattr(params, name)), np.float32)
        extra_stops = [t for t in params.stop_token_ids if t != end_id]
        if extra_stops:
            values["stop_words_list"] = stop_words_tensor(extra_stops)
        declared = self.model_inputs
        inputs = []
        for name, array in values.items():
            wire = self.tensor(name)
            if declared is not None and wire not in declared:
                continue  # an optional input this model does not take
            tensor = grpcclient.InferInput(wire, list(array.shape), INPUTS[name][0])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    # --- outcomes (on stream threads) -------------------------------------------------------------------
    def _finish(self, stream: _Stream, key: str, track: _Track) -> None:
        if not self._take(stream, key):
            return
        rid = int(key)
        if rid not in self._pending:  # cancelled or timed out while the server worked on it
            self._release()
            self._settle_orphans(stream)
            return
        parts = track.parts
        tokens = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else EMPTY_TOKENS)
        tokens = cut_at_end(tokens, track.end_id).astype(np.uint32)
        self._complete(rid, tokens, len(tokens))
        self._release()
        self._settle_orphans(stream)

    def _stream_error(self, stream: _Stream, error) -> None:
        status = error.status()
        if status is None:  # a model error for one request; Triton does not say which
            self.model_errors += 1
            stream.orphan_errors.append(_describe(error))
            stream.retired = True
            self._settle_orphans(stream)
            return
        # the stream itself failed (server gone, cancelled): everything on it fails
        if self._stopping:
            cause = "core stopped with the request pending"
        else:
            self.stream_failures += 1
            cause = f"gRPC stream failed: {_describe(error)}"
            log.warning("%s: stream %d: %s", self.address, stream.index, cause)
        with self._lock:  # a send that raised meanwhile sees the cause, or its request is taken here
            stream.open = False
            stream.failure = cause
            keys = list(stream.in_flight)
        for key in keys:
            if self._take(stream, key):
                self._end(int(key), BackendError(self.address, cause))
                self._release()

    def _settle_orphans(self, stream: _Stream) -> None:
        """On a retired stream: once only as many requests are left as model errors came, they
        are the failed ones."""
        if not stream.orphan_errors or len(stream.in_flight) > len(stream.orphan_errors):
            return
        message = stream.orphan_errors[0]
        stream.orphan_errors.clear()
        for key in list(stream.in_flight):
            if self._take(stream, key):
                self._end(int(key), BackendError(self.address, f"model error: {message}"))
                self._release()
        self._close_retired(stream)

    def _end(self, rid: int, error: BackendError) -> None:
        """Fail a request the server gave up on, unless it already ended (cancelled, timed out)."""
        if rid in self._pending:
            self._fail(rid, error)

    @staticmethod
    def _take(stream: _Stream, key: str) -> bool:
        """Remove a request from its stream; True for exactly one caller (its outcome and slot)."""
        return stream.in_flight.pop(key, None) is not None

    def _release(self) -> None:
        """One slot freed: send backlogged requests into the free slots, oldest first."""
        with self._lock:
            self._in_flight -= 1
        while True:
            with self._lock:
                if not self._backlog or self._stopping or self._in_flight >= self.settings.max_concurrency:
                    return
                req = self._backlog.popleft()
                self._in_flight += 1
            if not self._send(req):
                with self._lock:
                    self._in_flight -= 1

    def _close_retired(self, stream: _Stream) -> None:
        """Close a drained retired stream, off its own thread (closing joins that thread)."""
        with self._lock:
            if stream.in_flight or not stream.open:
                return
            stream.open = False
            if stream in self._retired:
                self._retired.remove(stream)
            self._close_off_thread(stream, cancel=False)

    def _close_off_thread(self, stream: _Stream, cancel: bool) -> None:
        """Close a stream's client on a thread of its own (under the lock): closing joins the stream's
        response thread, which may be this one; stop() waits for these. A tritonclient client left to the
        garbage collector closes itself on whatever thread collects it, its own included, and can crash
        the process there."""
        self._closers = [c for c in self._closers if c.is_alive()]
        closer = threading.Thread(target=stream.close, args=(cancel,), name=f"triton-close-{stream.index}",
                                  daemon=True)
        self._closers.append(closer)
        closer.start()


def _scalar(value: Any, dtype) -> np.ndarray:
    return np.array([[value]], dtype=dtype)


#: gRPC statuses of a health probe that retrying cannot change
_FINAL_STATUSES = frozenset({"NOT_FOUND", "INVALID_ARGUMENT", "UNIMPLEMENTED", "UNAUTHENTICATED",
                             "PERMISSION_DENIED", "FAILED_PRECONDITION"})


def _model_state(client, model: str, timeout: float) -> tuple[str | None, str]:
    """(state, reason) of `model` in the server's repository index: READY, LOADING, UNAVAILABLE, ...;
    None when the index does not list it. An index that cannot be read counts as LOADING (retried)."""
    try:
        index = client.get_model_repository_index(client_timeout=timeout)
    except InferenceServerException:
        return "LOADING", ""
    states = [(m.state, m.reason) for m in getattr(index, "models", ()) if m.name == model]
    if not states:
        return None, ""
    for state, reason in states:  # several versions: any loading one may still become ready
        if state == "LOADING":
            return state, reason
    return states[0][0] or "UNAVAILABLE", states[0][1]


def _describe(err: BaseException) -> str:
    if isinstance(err, InferenceServerException):
        status = err.status()
        text = err.message() or str(err)
        return f"{status}: {text}" if status else text
    return f"{type(err).__name__}: {err}"


__all__ = ["INPUTS", "OUTPUTS", "TritonGrpcCore", "TritonSettings", "cut_at_end", "response_tokens",
           "stop_words_tensor", "triton_settings"]
