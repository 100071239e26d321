"""Shared fixtures: a resolved config, the `tiny` benchmark, a small synthetic dataset,
dummy cores that are stopped after the test, a target / sink that record every call, the fake
tensorrt_llm."""

from __future__ import annotations

import collections
import importlib
import os
import sys
import threading
import time
from pathlib import Path

# Tests that run a model in this process use one CPU thread: OpenMP spinning on a shared 2-core
# machine (pytest, LoadGen, worker processes) costs far more than it gains.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

from llmlib.benchmarks import load_benchmark
from llmlib.config import resolve
from llmlib.dataset import load_dataset
from llmlib.factory import build_core


class Recorder:
    """Records outcomes: a ResponseSink, usable both as an LLMServer target and as a core's sink.

    `events` holds (kind, request_id, payload, monotonic time, thread id) in arrival order;
    `completed` / `failed` note whether a first token had come for the request before its final.
    """

    def __init__(self):
        self.events: list[tuple] = []
        self.first = collections.Counter()  # request_id -> first-token calls
        self.final = collections.Counter()  # request_id -> complete-or-fail calls
        self.completed: dict[int, tuple] = {}  # request_id -> (token_ids, n_tokens, first token before)
        self.failed: dict[int, tuple] = {}  # request_id -> (error, first token before)
        self._cond = threading.Condition()

    def _add(self, kind, rid, payload, terminal):
        with self._cond:
            self.events.append((kind, rid, payload, time.monotonic(), threading.get_ident()))
            (self.final if terminal else self.first)[rid] += 1
            self._cond.notify_all()

    def on_first_token(self, request_id, token_ids):
        self._add("first", request_id, np.array(token_ids), False)

    def on_complete(self, request_id, token_ids, n_tokens):
        with self._cond:
            first_before = self.first[request_id] > 0
            self.completed.setdefault(request_id, (np.array(token_ids), n_tokens, first_before))
        self._add("complete", request_id, (n_tokens, first_before), True)

    def on_error(self, request_id, error):
        with self._cond:
            first_before = self.first[request_id] > 0
            self.failed.setdefault(request_id, (error, first_before))
        self._add("fail", request_id, (error, first_before), True)

    # --- helpers ---
    @property
    def num_final(self) -> int:
        return sum(self.final.values())

    def wait_final(self, n: int, timeout_s: float = 5.0) -> bool:
        """Wait (on a condition) until at least `n` complete-or-fail calls arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: self.num_final >= n, timeout_s)

    def wait_idle(self, core, timeout_s: float = 5.0) -> None:
        """Wait (on a condition: a core takes a request out of flight before it calls its sink) until
        `core` has nothing in flight; raise FlushTimeoutError naming what it still has."""
        from llmlib.errors import FlushTimeoutError

        with self._cond:
            if not self._cond.wait_for(lambda: core.num_pending == 0, timeout_s):
                raise FlushTimeoutError(core.address, core.pending_ids(), timeout_s)

    def times(self, kind: str) -> dict[int, float]:
        return {rid: t for k, rid, _, t, _ in self.events if k == kind}


@pytest.fixture(scope="session")
def tiny_benchmark():
    return load_benchmark("tiny")


@pytest.fixture(scope="session")
def small_dataset():
    """40 synthetic samples: inputs of 4..32 tokens, reference outputs of 2..50 tokens."""
    return load_dataset({
        "format": "synthetic", "num_samples": 40, "seed": 3, "vocab_size": 500,
        "input_len": {"dist": "uniform", "min": 4, "max": 32},
        "output_len": {"dist": "uniform", "min": 2, "max": 50},
    })


@pytest.fixture
def make_config():
    """make_config(dummy_ttft_ms=1, ...) -> a ResolvedConfig from defaults plus these values."""

    def make(**values):
        return resolve(cli=values, env={}, layers=())

    return make


@pytest.fixture
def make_dummy(make_config, tiny_benchmark):
    """make_dummy(sink, dataset=None, rank=0, **config) -> a DummyCore, stopped after the test."""
    from llmlib.cores.dummy import DummyCore

    made = []

    def make(sink, *, dataset=None, rank=0, **values):
        core = build_core(DummyCore, make_config(**values), tiny_benchmark, dataset, rank=rank, sink=sink)
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def make_recorder():
    return Recorder


FAKES = Path(__file__).resolve().parent / "fakes"


def _trtllm_modules() -> list[str]:
    return [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]


@pytest.fixture
def trtllm_fake(monkeypatch):
    """The fake tensorrt_llm (tests/fakes) first on sys.path with its state reset; LLMs it made
    are shut down and the module forgotten after the test."""
    for name in _trtllm_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKES))
    control = importlib.import_module("tensorrt_llm._fake")
    control.reset()
    yield control
    for llm in control.CONTROL.llms:
        llm.shutdown()
    for name in _trtllm_modules():
        del sys.modules[name]
