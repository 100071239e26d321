"""WarmupManager: parallel health checks with exponential backoff and a deadline, then warmup queries.

Warmup requests go to a collector target, so their responses never reach LoadGen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from llmlib.cores.base import LLMCore, Request
from llmlib.errors import BackendError, HarnessError
from llmlib.server import LLMServer, next_internal_request_id

log = logging.getLogger(__name__)


class HealthCheckError(HarnessError):
    """One or more cores did not become healthy before the deadline."""

    def __init__(self, failures: dict[str, str], timeout_s: float):
        lines = "; ".join(f"{addr}: {cause}" for addr, cause in failures.items())
        super().__init__(f"{len(failures)} core(s) not healthy after {timeout_s:g}s: {lines}")
        self.failures = failures


class WarmupCollector:
    """A Target that counts warmup outcomes and signals when all have arrived."""

    def __init__(self, expected: int):
        self.expected = expected
        self.completed = 0
        self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        if expected == 0:
            self._done.set()

    def _count(self) -> None:
        if self.completed + self.failed >= self.expected:
            self._done.set()

    def first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        pass

    def complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int, first_sent: bool) -> None:
        with self._lock:
            self.completed += 1
            self._count()

    def fail(self, request_id: int, error: BaseException, first_sent: bool) -> None:
        with self._lock:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(error))
            self._count()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)


class WarmupManager:
    """Health-checks every core in parallel, then sends warmup queries through the server."""

    def __init__(self, server: LLMServer, *, health_timeout_s: float = 60.0, backoff_s: float = 0.5,
                 max_backoff_s: float = 5.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.server = server
        self.health_timeout_s = health_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._clock = clock

    def _check_one(self, core: LLMCore, deadline: float) -> str | None:
        """None when healthy; else the last failure's cause."""
        delay = self.backoff_s
        while True:
            try:
                core.health_check()
                return None
            except Exception as err:  # any failure is retried until the deadline
                cause = err.cause if isinstance(err, BackendError) else f"{type(err).__name__}: {err}"
            remaining = deadline - self._clock()
            if remaining <= 0:
                return cause
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, self.max_backoff_s)

    def health_check(self, cores: Sequence[LLMCore] | None = None) -> None:
        """Return when every core is healthy; raise HealthCheckError naming those that are not."""
        cores = list(self.server.cores if cores is None else cores)
        deadline = self._clock() + self.health_timeout_s
        # One daemon thread per core, joined against a wall-clock deadline: a probe that blocks
        # (a connect that never answers) cannot hold the run past the timeout, nor its exit.
        no_answer = f"health check did not return within {self.health_timeout_s:g}s"
        results: list[str | None] = [no_answer] * len(cores)

        def probe(i: int, core: LLMCore) -> None:
            results[i] = self._check_one(core, deadline)

        threads = [threading.Thread(target=probe, args=(i, c), name=f"health-{c.address}", daemon=True)
                   for i, c in enumerate(cores)]
        for t in threads:
            t.start()
        give_up = time.monotonic() + self.health_timeout_s + 0.1
        for t in threads:
            t.join(max(give_up - time.monotonic(), 0.0))
        failures = {core.address: cause for core, cause in zip(cores, results) if cause is not None}
        if failures:
            raise HealthCheckError(failures, self.health_timeout_s)

    def warm_up_cores(self) -> None:
        """Each core's own warm-up (e.g. connections opened ahead), before any warmup query; `warm_up`
        runs it first, and a run without warmup queries runs it alone."""
        for core in self.server.cores:
            core.warm_up()

    def warm_up(self, requests_per_core: int, inputs: Sequence[np.ndarray], max_new_tokens: Sequence[int],
                *, streaming: bool, timeout_s: float,
                sample_indices: Sequence[int] | None = None) -> WarmupCollector:
        """Send `requests_per_core` requests to every core, shaped like the dataset (inputs and
        output budgets given by the caller, e.g. from `warmup_shapes`, and the samples they come
        from, for cores that send a sample's text instead of its tokens). Waits for all of them.

        All failing is an error (the backend is not usable); some failing is logged."""
        self.warm_up_cores()
        n_cores = len(self.server.cores)
        collector = WarmupCollector(requests_per_core * n_cores)
        if requests_per_core == 0 or not len(inputs):
            return collector
        for ci in range(n_cores):
            reqs = []
            for k in range(requests_per_core):
                j = (ci + k * n_cores) % len(inputs)
                index = int(sample_indices[j]) if sample_indices is not None else -1
                reqs.append(Request(next_internal_request_id(), inputs[j], int(max_new_tokens[j]), streaming,
                                    sample_index=index))
            self.server.submit(reqs, collector, core_index=ci)
        if not collector.wait(timeout_s):
            stuck = self.server.fail_pending("warmup did not finish in time")
            log.warning("warmup: %d request(s) did not finish within %.0fs and were failed", stuck, timeout_s)
        if collector.failed == collector.expected:
            raise HarnessError(f"warmup: all {collector.expected} warmup requests failed; first errors: "
                               + "; ".join(collector.errors))
        if collector.failed:
            log.warning("warmup: %d of %d requests failed: %s", collector.failed, collector.expected,
                        "; ".join(collector.errors))
        return collector


def warmup_picks(input_tokens: Sequence[np.ndarray], count: int) -> np.ndarray:
    """The indices of `count` samples spread evenly over the input lengths, shortest to longest."""
    if count <= 0 or not len(input_tokens):
        return np.zeros(0, dtype=np.int64)
    lens = np.fromiter((len(t) for t in input_tokens), dtype=np.int64, count=len(input_tokens))
    order = np.argsort(lens, kind="stable")
    return order[np.linspace(0, len(order) - 1, num=min(count, len(order))).astype(np.int64)]


def warmup_shapes(input_tokens: Sequence[np.ndarray], output_lens: np.ndarray | None, max_output_tokens: int,
                  count: int) -> tuple[list[np.ndarray], list[int]]:
    """Pick `count` dataset samples spread evenly over the input-length distribution (shortest
    to longest), with their output lengths (or the maximum) as the warmup output budgets."""
    picks = warmup_picks(input_tokens, count)
    if not len(picks):
        return [], []
    inputs = [input_tokens[i] for i in picks]
    if output_lens is None:
        budgets = [max_output_tokens] * len(picks)
    else:
        budgets = [int(min(max(output_lens[i], 1), max_output_tokens)) for i in picks]
    return inputs, budgets
