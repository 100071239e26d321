"""LLMCoreWorker: generation tasks through an llmlib LLMServer (shared load balancing, every core);
outcomes reach the worker's event loop from the server's threads via call_soon_threadsafe."""

from __future__ import annotations

import asyncio
import numbers
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from llmlib.cores.base import Request
from llmlib.generation import GenerationParams
from llmlib.server import LLMServer, next_internal_request_id
from scaffolding.task import GenerationTask, StreamGenerationTask
from scaffolding.worker import Worker
from scaffolding.workers import TaskInputError, check_supported, describe, split_stops

#: sampling fields a task may leave unset for the worker's defaults (GenerationTask names)
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")
#: defaults the worker accepts: the sampling fields and stop
DEFAULT_FIELDS = (*SAMPLING_FIELDS, "stop")


class RequestOutcome:
    """The LLMServer target of one request (a ResponseSink, llmlib/cores/base.py): records first-token
    and final times (in the thread that delivers them) and resolves futures on the worker's loop.
    `first` resolves to `[first token]`, or to None when the request failed before any token (or,
    not streaming, ended without a separate first token; a streaming request always gets one from
    the server, made from the output at the end when its core sent none); `final`
    to `(output token ids, n_tokens)` or the request's error. A request made with `chunks=True`
    also gets the output so far (`tokens`, `n_tokens`) as the core streams it; `wait_tokens(n)`
    returns once at least n tokens came, or the request ended."""

    __slots__ = ("loop", "request", "first", "final", "issued_ns", "first_ns", "final_ns", "tokens", "n_tokens",
                 "_waiter", "_want")

    def __init__(self, loop: asyncio.AbstractEventLoop, request: Request):
        self.loop = loop
        self.request = request
        self.first: asyncio.Future = loop.create_future()
        self.final: asyncio.Future = loop.create_future()
        self.issued_ns = time.monotonic_ns()
        self.first_ns = 0
        self.final_ns = 0
        self.tokens: list[int] = []  # the output so far (the first token, then chunks)
        self.n_tokens = 0
        self._waiter: asyncio.Future | None = None
        self._want = 0

    # --- ResponseSink: called from the server's / cores' threads (or inline, from submit) ---
    def on_first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        now = time.monotonic_ns()
        first = [int(token_ids[0])] if len(token_ids) else None
        self._post(self._resolve_first, first, now)

    def on_chunk(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        self._post(self._resolve_chunk, np.asarray(token_ids).tolist(), int(n_tokens))

    def on_complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        now = time.monotonic_ns()
        self._post(self._resolve_final, (np.asarray(token_ids).tolist(), int(n_tokens)), None, now)

    def on_error(self, request_id: int, error: BaseException) -> None:
        self._post(self._resolve_final, None, error, time.monotonic_ns())

    def _post(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting for this outcome any more
            pass

    # --- on the loop ---
    def _resolve_first(self, first: list[int] | None, now: int) -> None:
        if not self.first.done():
            self.first_ns = now if first is not None else 0
            self.first.set_result(first)
            if first is not None and self.n_tokens == 0:
                self.tokens, self.n_tokens = list(first), 1
                self._wake()

    def _resolve_chunk(self, tokens: list[int], n_tokens: int) -> None:
        if n_tokens > self.n_tokens and not self.final.done():
            self.tokens, self.n_tokens = tokens, n_tokens
            self._wake()

    def _resolve_final(self, result: tuple[list[int], int] | None, error: BaseException | None, now: int) -> None:
        if not self.first.done():
            self.first.set_result(None)
        if self.final.done():
            return
        self.final_ns = now
        if error is not None:
            self.final.set_exception(error)
        else:
            self.final.set_result(result)
        self._wake(force=True)

    def _wake(self, force: bool = False) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (force or self.n_tokens >= self._want):
            waiter.set_result(None)

    async def wait_tokens(self, n: int) -> None:
        """Until at least `n` tokens came, or the request ended (its outcome is then in `final`)."""
        if self.final.done() or self.n_tokens >= n:
            return
        self._want = n
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def ttft_s(self) -> float | None:
        return (self.first_ns - self.issued_ns) / 1e9 if self.first_ns else None

    @property
    def latency_s(self) -> float | None:
        return (self.final_ns - self.issued_ns) / 1e9 if self.final_ns else None


class LLMCoreWorker(Worker):
    """Runs GenerationTask and StreamGenerationTask through `server` (an llmlib LLMServer whose
    cores are attached). Request ids are negative (`next_internal_request_id`), so they never
    collide with LoadGen's sample ids.

    - Prompts: `input_tokens`, else `input_str` encoded with `tokenizer` (needed then). Encoding
      and decoding run on the loop: short CPU work, no waiting.
    - `default_max_tokens` applies where a task has no max_tokens; `stop_token_ids` (e.g. EOS)
      apply to every request; a task's `stop` adds token ids, or strings that the tokenizer maps
      to exactly one token each (a core stops on tokens only).
    - `default_sampling`: values for the sampling fields (and `stop`) a task leaves
      unset, over `params` (the run's GenerationParams); with nothing set at all the request
      carries `params` itself.
    - `streaming`: whether plain GenerationTasks are sent as streaming requests (then they get a
      TTFT; otherwise `ttft_s` stays None).
    - Results: output_tokens, output_str (decoded when there is a tokenizer), completion_tokens,
      prompt_tokens, ttft_s, latency_s, finish_reason ('length' when max_tokens was reached,
      else 'stop').

    Streaming granularity: a StreamGenerationTask's request is made with `chunks=True`, so a core
    that streams (trtllm_endpoint, dummy, hf; also through worker processes) delivers the output so
    far as it comes, and each step returns after `streaming_step` more tokens. A core that gives
    only a first token and the whole output gives at most two steps. Setting `cancel_flag`
    cancels the request through LLMServer.cancel, which stops the backend's work (the endpoint core
    closes its connection); the task keeps the tokens the controller had already seen, with
    finish_reason 'cancelled'; what the backend generated by then is in
    `customized_result_fields['generated_tokens']`, and how many were cut in `['discarded_tokens']`.
    """

    name = "llmcore"

    def __init__(self, server: LLMServer, tokenizer: Any = None, *, default_max_tokens: int,
                 stop_token_ids: Iterable[int] = (), streaming: bool = False,
                 default_sampling: Mapping[str, Any] | None = None, params: GenerationParams | None = None):
        super().__init__()
        if not callable(getattr(server, "submit", None)):
            raise TypeError(f"LLMCoreWorker: server={server!r}; expected an llmlib LLMServer")
        if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, numbers.Integral) \
                or default_max_tokens < 1:
            raise ValueError(f"LLMCoreWorker: default_max_tokens={default_max_tokens!r}; expected an integer >= 1")
        stops = []
        for t in stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
                raise ValueError(f"LLMCoreWorker: stop_token_ids entry {t!r}; expected token ids (integers >= 0)")
            stops.append(int(t))
        defaults = dict(default_sampling or {})
        unknown = sorted(set(defaults) - set(DEFAULT_FIELDS))
        if unknown:
            raise ValueError(f"LLMCoreWorker: default_sampling has unknown fields {unknown}; expected some of "
                             f"{', '.join(DEFAULT_FIELDS)}")
        self.server = server
        self.tokenizer = tokenizer
        self.default_max_tokens = int(default_max_tokens)
        self.default_stop = defaults.pop("stop", None)
        self.default_sampling = {k: v for k, v in defaults.items() if v is not None}
        self.stop_token_ids = tuple(stops)
        #: the run's generation parameters, which a task's own values override
        self.base_params = params if params is not None else GenerationParams(max_new_tokens=self.default_max_tokens)
        self.streaming = bool(streaming)
        self._stop_string_ids: dict[str, int] = {}
        self.register_task_handler(GenerationTask, self.generate)
        self.register_task_handler(StreamGenerationTask, self.stream_step)

    # --- handlers ------------------------------------------------------------------------------------
    async def generate(self, task: GenerationTask) -> None:
        outcome = self._submit(task, streaming=self.streaming)
        tokens, n_tokens = await outcome.final
        self._fill(task, outcome, tokens, n_tokens)

    async def stream_step(self, task: StreamGenerationTask) -> None:
        """One step: returns once `streaming_step` (at least 1) more tokens came, or the request ended.
        Tokens come as the core streams them (chunks); a core that gives only a first token and the
        whole output gives two steps at most. `cancel_flag` stops the backend request (LLMServer.cancel):
        the task ends with the tokens the controller had seen, finish_reason 'cancelled'."""
        outcome: RequestOutcome | None = task.request_handle
        if outcome is None:
            if task.cancel_flag:  # cancelled before it started: nothing is sent
                task.output_tokens, task.completion_tokens = [], 0
                task.finish_reason, task.end_flag = "cancelled", True
                return
            outcome = self._submit(task, streaming=True, chunks=True)
            task.request_handle = outcome
        elif task.cancel_flag:
            seen = list(task.output_tokens or ())
            if not outcome.final.done():
                self.server.cancel(outcome.request.request_id, "cancelled by the controller")
            try:
                tokens, n_tokens = await outcome.final
            except Exception:  # noqa: BLE001 - the cancel's own error: the output is what was seen
                tokens, n_tokens = list(outcome.tokens), outcome.n_tokens
            self._fill(task, outcome, tokens, n_tokens)
            self._truncate(task, len(seen))
            task.customized_result_fields["generated_tokens"] = max(n_tokens, len(seen))
            task.end_flag = True
            return
        seen_n = len(task.output_tokens or ())
        await outcome.wait_tokens(seen_n + max(1, int(task.streaming_step or 1)))
        if outcome.final.done():
            tokens, n_tokens = await outcome.final  # raises the request's error
            self._fill(task, outcome, tokens, n_tokens)
            task.end_flag = True
            return
        task.output_tokens = list(outcome.tokens)
        task.completion_tokens = outcome.n_tokens
        task.prompt_tokens = len(outcome.request.input_tokens)
        task.ttft_s = outcome.ttft_s
        task.output_str = self.decode(task.output_tokens)

    # --- building requests ------------------------------------------------------------------------------
    def _submit(self, task: GenerationTask, *, streaming: bool, chunks: bool = False) -> RequestOutcome:
        request = self.build_request(task, streaming=streaming)
        request.chunks = chunks
        outcome = RequestOutcome(asyncio.get_running_loop(), request)
        self.server.submit((request,), outcome)  # never blocks: a core's enqueue returns at once
        return outcome

    def build_request(self, task: GenerationTask, *, streaming: bool) -> Request:
        """The llmlib Request for a task (TaskInputError when the task cannot be expressed)."""
        check_supported(task, "LLMCoreWorker")
        ids = self._input_ids(task)
        max_tokens = int(task.max_tokens if task.max_tokens is not None else self.default_max_tokens)
        stop_strings, stop_ids = split_stops(task.stop if task.stop is not None else self.default_stop, task)
        stops = list(self.stop_token_ids)
        for t in [*stop_ids, *(self._stop_string_id(s, task) for s in stop_strings)]:
            if t not in stops:
                stops.append(t)
        sampling = {**self.default_sampling, **task.sampling()}  # a value set on the task wins
        sampling.pop("max_tokens", None)  # the params carry it
        base = self.base_params
        if not sampling and max_tokens == base.max_new_tokens and tuple(stops) == base.stop_token_ids \
                and not base.min_new_tokens:
            params = base  # nothing set: the run's own object
        else:
            params = replace(base, max_new_tokens=max_tokens, min_new_tokens=0, stop_token_ids=tuple(stops),
                             **{k: v for k, v in sampling.items() if k in SAMPLING_FIELDS})
        return Request(next_internal_request_id(), ids, params, streaming, sample_index=-1)

    def _input_ids(self, task: GenerationTask) -> np.ndarray:
        if task.input_tokens is not None:
            arr = np.asarray(task.input_tokens)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise TaskInputError(f"{describe(task)}: input_tokens must be a flat list of token ids (integers)")
        elif task.input_str is not None:
            if self.tokenizer is None:
                raise TaskInputError(f"{describe(task)}: LLMCoreWorker has no tokenizer to encode input_str; "
                                     "give input_tokens or build the worker with a tokenizer")
            arr = np.asarray(self.tokenizer.encode(task.input_str))
        else:
            raise TaskInputError(f"{describe(task)}: no prompt; set input_str or input_tokens")
        if arr.size == 0:
            raise TaskInputError(f"{describe(task)}: the prompt has no tokens")
        if arr.min() < 0 or arr.max() > np.iinfo(np.int32).max:
            raise TaskInputError(f"{describe(task)}: input_tokens out of range (token ids are 0..2**31-1)")
        return arr.astype(np.int32, copy=False)

    def _stop_string_id(self, text: str, task: GenerationTask) -> int:
        cached = self._stop_string_ids.get(text)
        if cached is not None:
            return cached
        if self.tokenizer is None:
            raise TaskInputError(f"{describe(task)}: stop string {text!r} needs a tokenizer; LLMCoreWorker has "
                                 "none (give stop token ids instead)")
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if len(ids) != 1:
            raise TaskInputError(f"{describe(task)}: stop string {text!r} is {len(ids)} tokens {ids}; the cores "
                                 "stop on single tokens only (give token ids, or single-token strings)")
        self._stop_string_ids[text] = int(ids[0])
        return int(ids[0])

    # --- results --------------------------------------------------------------------------------------
    def _fill(self, task: GenerationTask, outcome: RequestOutcome, tokens: list[int], n_tokens: int) -> None:
        task.output_tokens = tokens
        task.completion_tokens = n_tokens
        task.prompt_tokens = len(outcome.request.input_tokens)
        task.finish_reason = "length" if n_tokens >= outcome.request.max_new_tokens else "stop"
        task.ttft_s = outcome.ttft_s
        task.latency_s = outcome.latency_s
        task.output_str = self.decode(tokens)

    def _truncate(self, task: GenerationTask, keep: int) -> None:
        tokens = task.output_tokens or []
        task.customized_result_fields["generated_tokens"] = len(tokens)
        task.customized_result_fields["discarded_tokens"] = max(len(tokens) - keep, 0)
        task.output_tokens = tokens[:keep]
        task.completion_tokens = len(task.output_tokens)
        task.output_str = self.decode(task.output_tokens)
        task.finish_reason = "cancelled"

    def decode(self, tokens: list[int]) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


__all__ = ["LLMCoreWorker", "RequestOutcome"]
