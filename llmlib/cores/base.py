"""The LLMCore contract: one backend instance, non-blocking enqueue, exactly one outcome per request.

Responses go to a ResponseSink as they happen; `flush` waits on a condition, never polls.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from llmlib.errors import BackendError, FlushTimeoutError
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
    """Where a core delivers outcomes. Called from any thread, as they happen.

    `on_first_token` may be given the output so far (or the whole output); only its first
    token counts. `on_complete` gets the whole output as a numpy uint32 array."""

    def on_first_token(self, request_id: int, token_ids: np.ndarray) -> None: ...

    def on_complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None: ...

    def on_error(self, request_id: int, error: BaseException) -> None: ...

    # optional: `on_chunk(request_id, token_ids, n_tokens)`, the output so far (token ids where the
    # backend gives them, else empty) and how many tokens it has, for requests made with `chunks=True`


class LLMCore(ABC):
    """One backend instance.

    Subclasses implement `_enqueue_impl` (must not block on the backend), `health_check`,
    and deliver outcomes with `_first_token`, `_complete` and `_fail`, which keep the
    exactly-once rule: an outcome for a request that is not pending is dropped and counted.
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
        self._pending: dict[int, Request] = {}
        self._flush_cond = threading.Condition()
        self._flushing = False
        self.dropped_duplicates = 0
        self.late_after_cancel = 0  # outcomes that arrived for requests already cancelled (expected)
        self._cancelled: set[int] = set()

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

    def flush(self, timeout_s: float) -> None:
        """Wait until nothing is pending; raise FlushTimeoutError naming what still is."""
        deadline = time.monotonic() + timeout_s
        with self._flush_cond:
            self._flushing = True
            try:
                while self._pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise FlushTimeoutError(self.address, list(self._pending), timeout_s)
                    self._flush_cond.wait(remaining)
            finally:
                self._flushing = False

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        """Stop working on a request; it still ends with one outcome (an error naming `reason`
        if nothing else). A request no longer pending is left alone."""
        if request_id in self._pending:
            self._cancelled.add(request_id)
            self._fail(request_id, BackendError(self.address, reason))

    def stop(self) -> None:
        """Release the backend. Requests still pending fail."""
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

    # --- for subclasses: deliver outcomes -------------------------------------------------------
    def _first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        if request_id in self._pending:
            self.sink.on_first_token(request_id, token_ids)

    def _chunk(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        """The output so far of a request made with `chunks=True` (only streaming cores call this)."""
        if request_id in self._pending:
            on_chunk = getattr(self.sink, "on_chunk", None)
            if on_chunk is not None:
                on_chunk(request_id, token_ids, n_tokens)

    def _complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        if self._pending.pop(request_id, None) is None:
            self._not_pending(request_id)
            return
        self.sink.on_complete(request_id, token_ids, n_tokens)
        if self._flushing and not self._pending:
            self._notify_flush()

    def _fail(self, request_id: int, error: BaseException) -> None:
        if self._pending.pop(request_id, None) is None:
            self._not_pending(request_id)
            return
        self.sink.on_error(request_id, error)
        if self._flushing and not self._pending:
            self._notify_flush()

    def _not_pending(self, request_id: int) -> None:
        """An outcome for a request that already has one: expected once after a cancel (the
        backend finishing what it was told to stop), else a duplicate."""
        try:
            self._cancelled.remove(request_id)
        except KeyError:
            self.dropped_duplicates += 1
        else:
            self.late_after_cancel += 1

    def _notify_flush(self) -> None:
        with self._flush_cond:
            self._flush_cond.notify_all()
