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
from llmlib.errors import BackendError, HarnessError, RunStopped
from llmlib.server import LLMServer, next_internal_request_id

log = logging.getLogger(__name__)


class HealthCheckError(HarnessError):
    """One or more cores did not become healthy before the deadline."""

    def __init__(self, failures: dict[str, str], timeout_s: float):
        lines = "; ".join(f"{addr}: {cause}" for addr, cause in failures.items())
        super().__init__(f"{len(failures)} core(s) not healthy after {timeout_s:g}s: {lines}")
        self.failures = failures


class WarmupCollector:
    """The target (a ResponseSink) of warm-up's requests: counts their outcomes and signals when all
    have arrived."""

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

    def on_first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        pass

    def on_complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        with self._lock:
            self.completed += 1
            self._count()

    def on_error(self, request_id: int, error: BaseException) -> None:
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
                 max_backoff_s: float = 5.0, sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, report_every_s: float = 5.0,
                 stop_event: threading.Event | None = None):
        self.server = server
        self.health_timeout_s = health_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.report_every_s = report_every_s
        #: set when the run is stopped (Ctrl-C, SIGTERM): waits end at once with RunStopped
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep if sleep is not None else self.stop_event.wait
        self._clock = clock

    def _check_one(self, core: LLMCore, deadline: float, last: list[str | None], i: int) -> tuple[str | None, bool]:
        """(None, False) when healthy; else the cause that ended the wait and whether it is final:
        a final one at once (it cannot heal), a retryable one at the deadline. `last[i]` holds the
        latest cause meanwhile."""
        delay = self.backoff_s
        while True:
            try:
                core.health_check()
                return None, False
            except BackendError as err:
                cause, final = err.cause, err.final
            except Exception as err:  # any other failure is retried until the deadline
                cause, final = f"{type(err).__name__}: {err}", False
            last[i] = cause
            if final:
                return f"{cause} (not retried: this cannot heal)", True
            remaining = deadline - self._clock()
            if remaining <= 0 or self.stop_event.is_set():
                return cause, False
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, self.max_backoff_s)

    def health_check(self, cores: Sequence[LLMCore] | None = None) -> None:
        """Return when every core is healthy; raise HealthCheckError naming those that are not,
        as soon as one has failed for good, or at the deadline. Says every `report_every_s`
        what it is still waiting for."""
        cores = list(self.server.cores if cores is None else cores)
        t0 = self._clock()
        deadline = t0 + self.health_timeout_s
        # One daemon thread per core, waited on against a wall-clock deadline: a probe that blocks
        # (a connect that never answers) cannot hold the run past the timeout, nor its exit.
        no_answer = f"health check did not return within {self.health_timeout_s:g}s"
        results: list[str | None] = [no_answer] * len(cores)
        last: list[str | None] = [None] * len(cores)
        done = [False] * len(cores)
        final = [False] * len(cores)
        cond = threading.Condition()

        def probe(i: int, core: LLMCore) -> None:
            result, is_final = no_answer, False
            try:
                result, is_final = self._check_one(core, deadline, last, i)
            finally:
                with cond:
                    results[i], final[i], done[i] = result, is_final, True
                    cond.notify_all()

        threads = [threading.Thread(target=probe, args=(i, c), name=f"health-{c.address}", daemon=True)
                   for i, c in enumerate(cores)]
        for t in threads:
            t.start()
        give_up = time.monotonic() + self.health_timeout_s + 0.1
        next_report = time.monotonic() + self.report_every_s
        with cond:
            while not all(done):
                if self.stop_event.is_set():
                    raise RunStopped("stopped while waiting for the backends' health checks")
                if any(final):
                    break  # one core failed for good: no point waiting for the others
                now = time.monotonic()
                if now >= give_up:
                    break
                if now >= next_report:
                    waiting = [f"{c.address} ({last[i] or 'no answer yet'})" for i, c in enumerate(cores)
                               if not done[i]]
                    log.info("health check: waiting %.0fs of %gs for %d core(s): %s", self._clock() - t0,
                             self.health_timeout_s, len(waiting), "; ".join(waiting[:4])
                             + (f" (+{len(waiting) - 4} more)" if len(waiting) > 4 else ""))
                    next_report = now + self.report_every_s
                cond.wait(min(give_up, next_report) - now + 0.01)
        if self.stop_event.is_set():
            raise RunStopped("stopped while waiting for the backends' health checks")
        failures = {core.address: (results[i] if done[i] else (last[i] or no_answer))
                    for i, core in enumerate(cores) if not done[i] or results[i] is not None}
        if failures:
            raise HealthCheckError(failures, self.health_timeout_s)

    def warm_up_cores(self) -> None:
        """Each core's own warm-up (e.g. connections opened ahead), before any warmup query; `warm_up`
        runs it first, and a run without warmup queries runs it alone."""
        for core in self.server.cores:
            core.warm_up()

    def warm_up(self, requests_per_core: int, inputs: Sequence[np.ndarray], max_new_tokens: Sequence[int],
                *, streaming: bool, timeout_s: float,
                sample_indices: Sequence[int] | None = None,
                params: GenerationParams | None = None) -> WarmupCollector:
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
                n = int(max_new_tokens[j])
                reqs.append(Request(next_internal_request_id(), inputs[j],
                                    params.with_max_new_tokens(n) if params is not None else n, streaming,
                                    sample_index=index))
            self.server.submit(reqs, collector, core_index=ci)
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while not collector.wait(min(self.report_every_s, max(deadline - time.monotonic(), 0.0))):
            if self.stop_event.is_set():
                break
            now = time.monotonic()
            if now >= deadline:
                stuck = self.server.fail_pending(f"warm-up did not finish within {timeout_s:g}s (--warmup_timeout_s)")
                log.warning("warm-up: %d request(s) did not finish within %gs and were failed", stuck, timeout_s)
                break
            log.info("warm-up: %d of %d requests done after %.0fs (deadline %gs, --warmup_timeout_s)",
                     collector.completed + collector.failed, collector.expected, now - t0, timeout_s)
        if self.stop_event.is_set():
            raise RunStopped("stopped during warm-up")
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
