"""The LLMCore contract and the one outcome protocol: a backend instance with a non-blocking enqueue
that delivers each request's outcomes to a ResponseSink as they happen.

Which requests are pending, exactly once and flush belong to the LLMServer (llmlib/server.py); a
core keeps only what its backend has in flight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from llmlib.errors import BackendError
from llmlib.generation import GenerationParams, limit

if TYPE_CHECKING:
    from llmlib.benchmarks import BenchmarkSpec
    from llmlib.config import ResolvedConfig

EMPTY_TOKENS = np.zeros(0, dtype=np.uint32)


class Request:
    """One generation request. `request_id` is unique among requests in flight; `params` are its
    typed generation parameters (output limits, stop tokens, sampling), usually the run's one
    shared object. An int `params` is shorthand for `GenerationParams(max_new_tokens=n)` (greedy,
    no stop tokens). `chunks`: someone listens to the tokens as they come (a streaming core then
    calls the sink's `on_chunk`); LoadGen's requests leave it off and pay nothing for it.
    Requests pickle (a core may live in another process)."""

    __slots__ = ("request_id", "input_tokens", "params", "streaming", "sample_index", "chunks", "max_new_tokens")

    def __init__(self, request_id: int, input_tokens: np.ndarray, params: GenerationParams | int,
                 streaming: bool, sample_index: int = -1, *, chunks: bool = False):
        self.request_id = request_id
        self.input_tokens = input_tokens
        if params.__class__ is not GenerationParams:
            params = limit(int(params))
        self.params = params
        self.max_new_tokens = params.max_new_tokens  # (read on the hot path: a plain slot, not a property)
        self.streaming = streaming
        self.sample_index = sample_index
        self.chunks = chunks

    @property
    def min_new_tokens(self) -> int:
        return self.params.min_new_tokens

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.params.stop_token_ids

    def __getstate__(self):
        return (self.request_id, self.input_tokens, self.params, self.streaming, self.sample_index, self.chunks)

    def __setstate__(self, state) -> None:
        (self.request_id, self.input_tokens, self.params, self.streaming, self.sample_index,
         self.chunks) = state
        self.max_new_tokens = self.params.max_new_tokens

    def __repr__(self) -> str:
        return (f"Request(id={self.request_id}, sample={self.sample_index}, "
                f"input_len={len(self.input_tokens)}, max_new_tokens={self.max_new_tokens})")


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreSettings:
    """Base of every core's settings: a frozen, picklable dataclass declared next to its core and
    resolved from the fields once, by the core's `resolve_settings`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreInputs:
    """What the dataset must give a core, beside its settings (picklable): prompt texts for a
    server that takes no token ids; reference outputs and lengths for the simulated engine."""

    prompt_texts: Sequence[str] | None = None
    output_lens: np.ndarray | None = None
    reference_tokens: Sequence[np.ndarray] | None = None


NO_INPUTS = CoreInputs()


class ResponseSink(Protocol):
    """The one outcome protocol: where a request's outcomes go. A core delivers to a sink (usually
    the LLMServer); the server delivers to each request's target (LoadGen's reporter, warm-up's
    collector, scaffolding's per-request outcome), which is a sink too, so anything a core can be
    given a target can be given, and the other way round. Called from any thread, as outcomes happen.

    - `on_first_token(request_id, token_ids)`: the output so far, or the whole output; only its
      first token counts. Empty when a streaming request failed before any token.
    - `on_complete(request_id, token_ids, n_tokens)`: the whole output (numpy uint32) and its count.
    - `on_error(request_id, error)`: the request failed; a failure is its one final outcome.
    - optional `on_chunk(request_id, token_ids, n_tokens)`: the output so far (token ids where the
      backend gives them, else empty) and its count, for requests made with `chunks=True`.

    What a core guarantees: exactly one final outcome (`on_complete` or `on_error`) per enqueued
    request, delivered in order with its first token and chunks. A core does not filter: a
    duplicate or an outcome after a cancel reaches the sink as it is.

    What the LLMServer guarantees its targets: exactly one final outcome per submitted request
    (duplicates and outcomes after a cancel are dropped and counted, `duplicates_dropped` and
    `late_after_cancel`), and for a request with `streaming=True` exactly one `on_first_token`
    before it, whatever the core did: one the core sent late or twice is dropped, and one it never
    sent is made at the end from the output (before `on_complete`) or empty (before `on_error`).
    So LoadGen's reporter sends FirstTokenComplete for every streaming sample without keeping any
    state of its own.
    """

    def on_first_token(self, request_id: int, token_ids: np.ndarray) -> None: ...

    def on_complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None: ...

    def on_error(self, request_id: int, error: BaseException) -> None: ...


class LLMCore(ABC):
    """One backend instance.

    Subclasses implement `_enqueue_impl` (must not block on the backend), `health_check`,
    and deliver outcomes with `_first_token`, `_chunk`, `_complete` and `_fail`. `_pending` is
    what the backend has in flight (request id -> Request): `_complete` and `_fail` take a request
    out of it and pass the outcome on unfiltered; a core consults it to skip work on a request
    that was cancelled meanwhile, and fails what is in it when its backend dies or it stops. The
    exactly-once rule is kept by the LLMServer, the one owner of the pending requests.
    """

    #: the registry name
    name: str = "base"
    #: the settings dataclass this core is built from (declared next to it)
    settings_type: ClassVar[type[CoreSettings]] = CoreSettings
    #: whether `--workers_per_core` may run this core's requests in worker processes (network cores)
    supports_workers: ClassVar[bool] = False

    def __init__(self, settings: CoreSettings, *, rank: int, sink: ResponseSink, inputs: CoreInputs = NO_INPUTS):
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"core {self.name}: settings must be {self.settings_type.__name__}, "
                            f"got {type(settings).__name__}")
        self.settings = settings
        self.inputs = inputs
        self.rank = rank
        self.sink = sink
        self._pending: dict[int, Request] = {}  # what the backend has in flight

    # --- the contract -----------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark: BenchmarkSpec) -> CoreSettings:
        """This core's settings from the resolved fields (the only place a core reads them)."""
        return cls.settings_type()

    @classmethod
    def worker_settings(cls, settings: CoreSettings, index: int, workers: int) -> CoreSettings:
        """The settings of worker process `index` of `workers` that share this core (e.g. each with its
        share of the connections)."""
        return settings

    @classmethod
    def core_inputs(cls, settings: CoreSettings, dataset: Any) -> CoreInputs:
        """What this core needs from the dataset (nothing, for a core that sends token ids)."""
        return NO_INPUTS

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        """How many instances of this core the workload needs (data-parallel ranks, URLs...)."""
        return 1

    @property
    def address(self) -> str:
        """Names this backend instance in errors and statistics."""
        return f"{self.name}[{self.rank}]"

    def enqueue(self, requests: Sequence[Request]) -> None:
        """Hand requests to the backend and return at once."""
        pending = self._pending
        for req in requests:
            pending[req.request_id] = req
        try:
            self._enqueue_impl(requests)
        except Exception as err:  # a core bug or a refused submit fails these requests, not the run
            for req in requests:
                self._fail(req.request_id, BackendError(self.address, f"enqueue failed: {err!r}"))

    @abstractmethod
    def _enqueue_impl(self, requests: Sequence[Request]) -> None: ...

    @abstractmethod
    def health_check(self) -> None:
        """Return if the backend is ready; raise BackendError with the address and cause if not."""

    def warm_up(self) -> None:
        """Backend-specific warmup beyond the WarmupManager's queries (optional)."""

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        """Stop working on a request: it leaves the in-flight table with an error naming `reason`
        (subclasses then stop the backend's work on it). A request not in flight is left alone; what
        the backend still delivers for it is passed on, for the server to drop and count."""
        if request_id in self._pending:
            self._fail(request_id, BackendError(self.address, reason))

    def stop(self) -> None:
        """Release the backend. Requests still in flight fail."""
        for rid in list(self._pending):
            self._fail(rid, BackendError(self.address, "core stopped with the request pending"))

    def report(self) -> dict[str, Any]:
        """Backend-specific facts for the run report (e.g. where output token counts came from)."""
        return {}

    @property
    def dead_cause(self) -> str | None:
        """Why this core can no longer serve any request (its worker exited...), or None. The
        server ends the run early when a core reports this."""
        return None

    def kv_cache_utilisation(self) -> float | None:
        """Fraction of the backend's KV cache in use, where the backend reports it (progress display)."""
        return None

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def pending_ids(self) -> list[int]:
        return list(self._pending)

    # --- for subclasses: deliver outcomes (unfiltered: the server keeps exactly once) -----------------
    def _first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        self.sink.on_first_token(request_id, token_ids)

    def _chunk(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        """The output so far of a request made with `chunks=True` (only streaming cores call this)."""
        on_chunk = getattr(self.sink, "on_chunk", None)
        if on_chunk is not None:
            on_chunk(request_id, token_ids, n_tokens)

    def _complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        self._pending.pop(request_id, None)
        self.sink.on_complete(request_id, token_ids, n_tokens)

    def _fail(self, request_id: int, error: BaseException) -> None:
        self._pending.pop(request_id, None)
        self.sink.on_error(request_id, error)
