"""The `dummy` core: a simulated engine with a timing model (TTFT, time per token, batch limit).

A zero-latency mode completes inline at enqueue, to measure what the harness itself costs.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmlib.config import ResolvedConfig
from llmlib.cores.base import EMPTY_TOKENS, CoreInputs, CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, ConfigError

_FIRST, _DONE, _CHUNK = 0, 1, 2


@dataclass(frozen=True, slots=True, kw_only=True)
class DummySettings(CoreSettings):
    """The simulated engine's settings (the `--dummy_*` fields)."""

    num_cores: int = 1
    ttft_ms: float = 20.0
    tpot_ms: float = 2.0
    max_batch_size: int = 64
    output_len: int | None = None  # None: the dataset's reference lengths
    zero_latency: bool = False
    fail_rate: float = 0.0
    oracle_accuracy: float | None = None
    seed: int = 0


class DummyCore(LLMCore):
    """Simulated engine. Output tokens: the dataset's reference tokens when it has them,
    else a deterministic sequence; output length from the dataset or fixed, capped by
    the request's max_new_tokens."""

    name = "dummy"
    settings_type = DummySettings
    settings: DummySettings
    supports_workers = True  # the simulator, to measure and test the worker processes without a network

    def __init__(self, settings: DummySettings, **kwargs):
        super().__init__(settings, **kwargs)
        cfg = settings
        self.ttft_ns = int(cfg.ttft_ms * 1e6)
        self.tpot_ns = int(cfg.tpot_ms * 1e6)
        self.max_batch = cfg.max_batch_size
        self.zero_latency = cfg.zero_latency
        self.fail_rate = cfg.fail_rate
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError(f"--dummy_fail_rate={self.fail_rate} must be within 0..1")
        self._rng = random.Random(cfg.seed * 1000 + self.rank)
        self._fixed_len = cfg.output_len
        self._token_cache: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._waiting: deque[tuple[Request, np.ndarray]] = deque()
        self._events: list[tuple[int, int, int, Request, np.ndarray]] = []
        self._seq = itertools.count()
        self._active = 0
        self._stopped = False
        self._thread: threading.Thread | None = None
        if not self.zero_latency:
            self._thread = threading.Thread(target=self._engine_loop, name=f"dummy-engine-{self.rank}",
                                            daemon=True)
            self._thread.start()

    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark) -> DummySettings:
        return DummySettings(num_cores=config.dummy_num_cores, ttft_ms=config.dummy_ttft_ms,
                             tpot_ms=config.dummy_tpot_ms, max_batch_size=config.dummy_max_batch_size,
                             output_len=_parse_output_len(config.dummy_output_len),
                             zero_latency=config.dummy_zero_latency, fail_rate=config.dummy_fail_rate,
                             oracle_accuracy=config.dummy_oracle_accuracy, seed=config.dummy_seed)

    @classmethod
    def core_inputs(cls, settings: DummySettings, dataset) -> CoreInputs:
        """The reference outputs and their lengths (the simulated engine answers with them)."""
        if dataset is None:
            return CoreInputs()
        return CoreInputs(output_lens=dataset.output_lens, reference_tokens=dataset.reference_tokens)

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        return config.dummy_num_cores

    def health_check(self) -> None:
        if self._stopped:
            raise BackendError(self.address, "engine stopped")

    # --- output model --------------------------------------------------------------------------
    def _oracle_output(self, req: Request) -> np.ndarray:
        """Oracle mode: solve the prompt's arithmetic, answer right with probability p."""
        from llmlib.math_dataset import CharTokenizer, solve

        tok = CharTokenizer()
        answer = solve(tok.decode(req.input_tokens))
        seed = req.params.seed
        rng = random.Random(zlib.crc32(np.asarray(req.input_tokens).tobytes()) * 7919 + int(seed) * 104729
                            + self.settings.seed)
        if answer is None:
            text = "I cannot tell."
        elif rng.random() < self.settings.oracle_accuracy:
            text = f"Let me compute. The final answer is {answer}"
        else:
            text = f"Let me compute. The final answer is {answer + rng.choice([-1, 1]) * rng.randint(1, 20)}"
        return np.asarray(tok.encode(text)[: req.max_new_tokens], dtype=np.uint32)

    def _output_for(self, req: Request) -> np.ndarray:
        if self.settings.oracle_accuracy is not None:
            return self._oracle_output(req)
        idx = req.sample_index
        cached = self._token_cache.get(idx) if idx >= 0 else None
        if cached is None:
            ds = self.inputs
            if self._fixed_len is not None:
                n = self._fixed_len
            elif idx >= 0 and ds.output_lens is not None:
                n = int(ds.output_lens[idx])
            else:
                n = req.max_new_tokens
            if idx >= 0 and ds.reference_tokens is not None:
                ref = ds.reference_tokens[idx]
                cached = np.ascontiguousarray(ref[:n], dtype=np.uint32)
                if len(cached) < n:
                    cached = np.resize(cached if len(cached) else np.ones(1, np.uint32), n).astype(np.uint32)
            else:
                start = int(req.input_tokens[-1]) if len(req.input_tokens) else 1
                cached = ((np.arange(n, dtype=np.uint32) + np.uint32(start)) % np.uint32(32000)) + np.uint32(3)
            if idx >= 0:
                self._token_cache[idx] = cached
        if len(cached) > req.max_new_tokens:
            cached = cached[: req.max_new_tokens]
        return cached

    def _should_fail(self) -> bool:
        return self.fail_rate > 0.0 and self._rng.random() < self.fail_rate

    # --- enqueue -------------------------------------------------------------------------------
    def _enqueue_impl(self, requests: Sequence[Request]) -> None:
        if self.zero_latency:
            cache, fail_rate = self._token_cache, self.fail_rate
            for req in requests:
                rid = req.request_id
                if fail_rate and self._rng.random() < fail_rate:
                    self._fail(rid, BackendError(self.address, "injected failure"))
                    continue
                tokens = cache.get(req.sample_index)
                if tokens is None or len(tokens) > req.max_new_tokens:
                    tokens = self._output_for(req)
                if req.streaming:
                    self._first_token(rid, tokens)
                    if req.chunks:
                        for k in range(1, len(tokens) + 1):
                            self._chunk(rid, tokens[:k], k)
                self._complete(rid, tokens, len(tokens))
            return
        with self._cond:
            if self._stopped:
                raise BackendError(self.address, "engine stopped")
            for req in requests:
                self._waiting.append((req, self._output_for(req)))
            self._admit(time.monotonic_ns())
            self._cond.notify()

    def _admit(self, now: int) -> None:
        """Move waiting requests into free batch slots (caller holds the lock)."""
        while self._waiting and self._active < self.max_batch:
            req, tokens = self._waiting.popleft()
            self._active += 1
            first = now + self.ttft_ns
            done = first + self.tpot_ns * max(len(tokens) - 1, 0)
            if req.streaming and len(tokens):
                heapq.heappush(self._events, (first, next(self._seq), _FIRST, req, tokens))
                if req.chunks:  # someone listens: one chunk per token, at its time
                    for k in range(len(tokens)):
                        heapq.heappush(self._events, (first + self.tpot_ns * k, next(self._seq), _CHUNK, req,
                                                      tokens[:k + 1]))
            heapq.heappush(self._events, (done, next(self._seq), _DONE, req, tokens))

    def _engine_loop(self) -> None:
        due: list[tuple[int, int, int, Request, np.ndarray]] = []
        while True:
            with self._cond:
                while not self._stopped:
                    if self._events:
                        wait_ns = self._events[0][0] - time.monotonic_ns()
                        if wait_ns <= 0:
                            break
                        self._cond.wait(wait_ns / 1e9)
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
                now = time.monotonic_ns()
                while self._events and self._events[0][0] <= now:
                    due.append(heapq.heappop(self._events))
                finished = sum(1 for e in due if e[2] == _DONE)
                self._active -= finished
                self._admit(now)
            for _, _, kind, req, tokens in due:
                rid = req.request_id
                if kind == _FIRST:
                    self._first_token(rid, tokens)
                elif kind == _CHUNK:
                    self._chunk(rid, tokens, len(tokens))
                elif self._should_fail():
                    self._fail(rid, BackendError(self.address, "injected failure"))
                else:
                    self._complete(rid, tokens, len(tokens))
            due.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._waiting.clear()
            self._events.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        super().stop()


def _parse_output_len(text: str) -> int | None:
    if text == "dataset":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--dummy_output_len={text!r}: expected 'dataset' or an integer >= 0") from None
    if value < 0:
        raise ConfigError(f"--dummy_output_len={text!r}: expected 'dataset' or an integer >= 0")
    return value


__all__ = ["DummyCore", "EMPTY_TOKENS"]
