"""LLMServer: turns samples into requests, spreads them over cores by a named policy, routes outcomes.

It is the one owner of the pending requests (exactly once, flush, fail what is pending), and keeps the
per-core statistics, the request watchdog and the progress display.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmlib.cores.base import EMPTY_TOKENS, LLMCore, Request, ResponseSink
from llmlib.errors import BackendError, ConfigError, FlushTimeoutError

_log = logging.getLogger(__name__)

#: How many recent TTFT/TPOT samples the running display keeps (the reported percentiles come from
#: LoadGen's own log; these bound the harness's memory over long runs).
LATENCY_WINDOW = 4096


# --- scheduling policies ---------------------------------------------------------------------------
class Policy:
    """Picks a core index for a request of `cost` tokens from the server's pending counters."""

    name = "policy"

    def __init__(self, num_cores: int):
        self.n = num_cores
        self._next = 0

    def pick(self, pending_requests: list[int], pending_tokens: list[int], cost: int) -> int:
        raise NotImplementedError

    def _least(self, load: list[int]) -> int:
        # Ties go round robin, so idle cores share the first requests of a run.
        n, start = self.n, self._next
        best, best_load = start, load[start]
        for k in range(1, n):
            i = (start + k) % n
            if load[i] < best_load:
                best, best_load = i, load[i]
        self._next = (best + 1) % n
        return best


class RoundRobin(Policy):
    name = "round_robin"

    def pick(self, pending_requests, pending_tokens, cost):
        i = self._next
        self._next = (i + 1) % self.n
        return i


class LeastPendingRequests(Policy):
    name = "load_balancing"

    def pick(self, pending_requests, pending_tokens, cost):
        return self._least(pending_requests)


class LeastPendingTokens(Policy):
    """Token-aware: the core with the fewest pending tokens (input + max new tokens)."""

    name = "token_aware"

    def pick(self, pending_requests, pending_tokens, cost):
        return self._least(pending_tokens)


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (RoundRobin, LeastPendingRequests, LeastPendingTokens)}


def make_policy(name: str, num_cores: int) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"--traffic_distribution_policy={name!r} is not one of: {', '.join(POLICIES)}")
    return POLICIES[name](num_cores)


# --- statistics ------------------------------------------------------------------------------------
@dataclass
class ServerCounts:
    issued: int = 0
    completed: int = 0
    failed: int = 0
    duplicates_dropped: int = 0
    late_after_cancel: int = 0  # outcomes for requests already cancelled (expected, not a core fault)
    timed_out: int = 0
    output_tokens: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)

    @property
    def accounted(self) -> bool:
        return self.issued == self.completed + self.failed


class LLMServer:
    """Load-balances requests over cores and routes every outcome to its target exactly once.

    The one owner of "which requests are pending": a core delivers its outcomes unfiltered (it keeps
    only what its backend has in flight); here each request gets exactly one final outcome, a
    streaming request exactly one first token before it (see ResponseSink), and whatever comes
    after is dropped and counted (`counts.duplicates_dropped`, `counts.late_after_cancel`).
    `flush`, `cancel`, `fail_pending` and the watchdog's time-outs act on this one table.
    """

    def __init__(self, cores: Sequence[LLMCore] = (), *, policy: str = "load_balancing",
                 request_timeout_s: float = 0.0, max_consecutive_failures: int = 0,
                 stall_warning_s: float = 0.0, clock: Callable[[], int] = time.monotonic_ns):
        self.cores: list[LLMCore] = list(cores)
        self.policy_name = policy
        self._policy: Policy | None = make_policy(policy, len(self.cores)) if self.cores else None
        self._multi = len(self.cores) > 1
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._flushing = False
        # request_id -> [target, core index, issue ns, cost, first-token ns (0 = none yet), sample index,
        #                streaming]
        self._pending: dict[int, list] = {}
        self._cancelled: set[int] = set()  # cancelled here: what their cores still deliver is late, not a duplicate
        n = len(self.cores)
        self.core_pending = [0] * n
        self.core_pending_tokens = [0] * n
        self.core_completed = [0] * n
        self.core_failed = [0] * n
        self.core_tokens = [0] * n
        self.counts = ServerCounts()
        # recent latency samples for the running display (ns); appends are atomic under the GIL
        self.ttft_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        self.tpot_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        # requests someone listens to (chunks): gaps per token between chunks, and each request's longest gap
        self.itl_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        self.max_gap_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        self._chunk_state: dict[int, list[int]] = {}  # request id -> [last chunk ns, tokens then, max gap ns]
        self._first_error: str | None = None
        self.error_examples: dict[str, str] = {}  # error shape -> its first full cause
        # Intake: None while requests are accepted; else why they are refused (a stopped run).
        self._refusal: str | None = None
        # A core whose last N requests all failed, or that reports itself dead, can no longer
        # serve: `on_core_lost(cause)` is called once (the harness ends the run early).
        self.max_consecutive_failures = max_consecutive_failures
        self.core_consecutive_failures = [0] * n
        self.on_core_lost: Callable[[str], None] | None = None
        self._core_lost: str | None = None
        self.error_sink: Callable[[int, int, str], None] | None = None  # (request id, sample index, cause)
        # The run's self-measurement (llmlib/report/recorder.py): called with (t_issue, t_first, t_core,
        # n_tokens or -1 for a failure, core index, t_after_target) once per outcome; None outside a run.
        self.recorder: Callable[[tuple], None] | None = None
        self.recorder_fail: Callable[[tuple], None] | None = None
        self._timeout_ns = int(request_timeout_s * 1e9)
        self._stall_ns = int(stall_warning_s * 1e9)
        self.stalls_reported = 0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        if self._timeout_ns > 0 or self._stall_ns > 0:
            self._watchdog = threading.Thread(target=self._watchdog_loop, name="llmserver-watchdog", daemon=True)
            self._watchdog.start()

    def attach(self, cores: Sequence[LLMCore]) -> None:
        """Add the cores once built (they need this server as their sink first)."""
        if self.cores:
            raise RuntimeError("cores already attached")
        n = len(cores)
        if n == 0:
            raise ConfigError("the server needs at least one core")
        self.cores = list(cores)
        self._multi = n > 1
        self._policy = make_policy(self.policy_name, n)
        self.core_pending = [0] * n
        self.core_pending_tokens = [0] * n
        self.core_completed = [0] * n
        self.core_failed = [0] * n
        self.core_tokens = [0] * n
        self.core_consecutive_failures = [0] * n

    # --- submit ------------------------------------------------------------------------------------
    def submit_one(self, req: Request, target: ResponseSink) -> None:
        """`submit` for a single request (LoadGen's Server scenario issues one sample at a time)."""
        cost = len(req.input_tokens) + req.max_new_tokens
        with self._lock:
            refused = self._refusal is not None and self._count_refused(1)
            if not refused:
                ci = self._policy.pick(self.core_pending, self.core_pending_tokens, cost) if self._multi else 0
                self._pending[req.request_id] = [target, ci, self._clock(), cost, 0, req.sample_index, req.streaming]
                self.core_pending[ci] += 1
                self.core_pending_tokens[ci] += cost
                self.counts.issued += 1
        if refused:
            self._fail_refused((req,), target)
            return
        self.cores[ci].enqueue((req,))

    def submit(self, requests: Sequence[Request], target: ResponseSink, *, core_index: int | None = None) -> None:
        """Schedule requests (on `core_index` if given, else by the policy); every one of them
        ends in exactly one call on `target`."""
        cores = self.cores
        now = self._clock()
        pick = self._policy.pick
        pend_req, pend_tok = self.core_pending, self.core_pending_tokens
        pending = self._pending
        if len(cores) == 1 or core_index is not None:
            ci = core_index or 0
            with self._lock:
                refused = self._refusal is not None and self._count_refused(len(requests))
                for req in () if refused else requests:
                    cost = len(req.input_tokens) + req.max_new_tokens
                    pending[req.request_id] = [target, ci, now, cost, 0, req.sample_index, req.streaming]
                    pend_req[ci] += 1
                    pend_tok[ci] += cost
                if not refused:
                    self.counts.issued += len(requests)
            if refused:
                self._fail_refused(requests, target)
            else:
                cores[ci].enqueue(requests)
            return
        batches: dict[int, list[Request]] = {}
        with self._lock:
            refused = self._refusal is not None and self._count_refused(len(requests))
            for req in () if refused else requests:
                cost = len(req.input_tokens) + req.max_new_tokens
                ci = pick(pend_req, pend_tok, cost)
                pending[req.request_id] = [target, ci, now, cost, 0, req.sample_index, req.streaming]
                pend_req[ci] += 1
                pend_tok[ci] += cost
                batch = batches.get(ci)
                if batch is None:
                    batches[ci] = [req]
                else:
                    batch.append(req)
            if not refused:
                self.counts.issued += len(requests)
        if refused:
            self._fail_refused(requests, target)
            return
        for ci, batch in batches.items():
            cores[ci].enqueue(batch)

    def _count_refused(self, n: int) -> bool:
        """Count `n` requests refused because the intake is closed (called with the lock held)."""
        counts = self.counts
        counts.issued += n
        counts.failed += n
        counts.errors[mask_variable_parts(f"BackendError: {self._refusal}")] += n
        return True

    def _fail_refused(self, requests: Sequence[Request], target: ResponseSink) -> None:
        error = BackendError("harness", self._refusal or "refused")
        for req in requests:
            if self.error_sink is not None:
                self.error_sink(req.request_id, req.sample_index, error_text(error))
            if req.streaming:
                target.on_first_token(req.request_id, EMPTY_TOKENS)
            target.on_error(req.request_id, error)

    def stop_intake(self, reason: str) -> None:
        """From now on every submitted request fails at once with `reason` (a stopped run);
        together with `fail_pending` nothing reaches a backend any more."""
        with self._lock:
            self._refusal = reason

    @property
    def intake_closed(self) -> str | None:
        return self._refusal

    # --- the sink every core delivers to ------------------------------------------------------------
    def on_first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        entry = self._pending.get(request_id)
        if entry is None or entry[4]:
            if entry is not None or request_id not in self._cancelled:  # (after a cancel: its final counts)
                self.counts.duplicates_dropped += 1
            return
        now = self._clock()
        entry[4] = now
        self.ttft_ns.append(now - entry[2])
        entry[0].on_first_token(request_id, token_ids)

    def on_chunk(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        """The output so far of a request made with `chunks=True`: to its target's `on_chunk` (when it has
        one), and the gaps between chunks into the inter-token statistics."""
        entry = self._pending.get(request_id)
        if entry is None:
            return
        now = self._clock()
        state = self._chunk_state.get(request_id)
        if state is None:
            self._chunk_state[request_id] = [now, n_tokens, 0]
        elif n_tokens > state[1]:
            gap = now - state[0]
            self.itl_ns.append(gap // (n_tokens - state[1]))
            if gap > state[2]:
                state[2] = gap
            state[0], state[1] = now, n_tokens
        chunk = getattr(entry[0], "on_chunk", None)
        if chunk is not None:
            chunk(request_id, token_ids, n_tokens)

    def _end_chunks(self, request_id: int) -> None:
        state = self._chunk_state.pop(request_id, None)
        if state is not None:
            self.max_gap_ns.append(state[2])

    def on_complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        now = self._clock()
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is None:
                self._not_pending(request_id)
                return
            if self._cancelled:  # finished before its cancel took effect: what follows is a duplicate
                self._cancelled.discard(request_id)
            ci = entry[1]
            self.core_pending[ci] -= 1
            self.core_pending_tokens[ci] -= entry[3]
            self.core_consecutive_failures[ci] = 0
            self.core_completed[ci] += 1
            self.core_tokens[ci] += n_tokens
            counts = self.counts
            counts.completed += 1
            counts.output_tokens += n_tokens
            if self._flushing and not self._pending:
                self._idle.notify_all()
        t_first, target = entry[4], entry[0]
        if t_first:
            if n_tokens > 1:
                self.tpot_ns.append((now - t_first) // (n_tokens - 1))
        elif entry[6]:  # a streaming request whose core sent no first token: made here, from the output
            target.on_first_token(request_id, token_ids)
        if self._chunk_state:
            self._end_chunks(request_id)
        target.on_complete(request_id, token_ids, n_tokens)
        rec = self.recorder
        if rec is not None:
            rec((entry[2], t_first, now, n_tokens, entry[1], self._clock()))

    def on_error(self, request_id: int, error: BaseException) -> None:
        now = self._clock()
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is None:
                self._not_pending(request_id)
                return
            ci = entry[1]
            self.core_pending[ci] -= 1
            self.core_pending_tokens[ci] -= entry[3]
            self.core_failed[ci] += 1
            self.counts.failed += 1
            cause = error_text(error)
            shape = mask_variable_parts(cause)
            self.counts.errors[shape] += 1
            if shape not in self.error_examples:
                self.error_examples[shape] = cause
            if self._first_error is None:
                self._first_error = f"request {request_id}: {error}"
            if self._flushing and not self._pending:
                self._idle.notify_all()
            self.core_consecutive_failures[ci] += 1
            lost = self._check_core_lost(ci, cause)
        if self.error_sink is not None:
            self.error_sink(request_id, entry[5], cause)
        if self._chunk_state:
            self._end_chunks(request_id)
        target = entry[0]
        if entry[6] and not entry[4]:  # a streaming request gets its (empty) first token first
            target.on_first_token(request_id, EMPTY_TOKENS)
        target.on_error(request_id, error)
        rec = self.recorder_fail
        if rec is not None:
            rec((entry[2], entry[4], now, -1, ci, self._clock()))
        if lost is not None and self.on_core_lost is not None:
            self.on_core_lost(lost)

    def _not_pending(self, request_id: int) -> None:
        """(With the lock held) a final outcome for a request that already has one: expected once after
        a cancel (the backend finishing what it was told to stop), else a duplicate."""
        try:
            self._cancelled.remove(request_id)
        except KeyError:
            self.counts.duplicates_dropped += 1
        else:
            self.counts.late_after_cancel += 1

    def _check_core_lost(self, ci: int, cause: str) -> str | None:
        """Called with the lock held after a failure on core `ci`: the cause, the first time a core
        is found unable to serve (dead by its own account, or N failures in a row)."""
        if self._core_lost is not None or self._refusal is not None:
            return None
        core = self.cores[ci]
        dead = core.dead_cause
        if dead is not None:
            self._core_lost = f"core {core.address} can no longer serve: {dead}"
        elif self.max_consecutive_failures and self.core_consecutive_failures[ci] >= self.max_consecutive_failures:
            self._core_lost = (f"core {core.address} failed its last {self.core_consecutive_failures[ci]} requests "
                               f"in a row (--max_consecutive_failures); the last: {cause}")
        return self._core_lost

    # --- end of run ----------------------------------------------------------------------------------
    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def is_known(self, request_id: int) -> bool:
        """Whether the request is pending here (submitted and not yet finished)."""
        return request_id in self._pending

    def flush(self, timeout_s: float) -> None:
        """Wait until nothing is pending; raise FlushTimeoutError naming what still is."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            self._flushing = True
            try:
                while self._pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise FlushTimeoutError("LLMServer", list(self._pending), timeout_s)
                    self._idle.wait(remaining)
            finally:
                self._flushing = False

    def cancel(self, request_id: int, reason: str = "cancelled") -> bool:
        """Cancel one pending request on its core; it ends with exactly one outcome (an error
        naming `reason` unless it finished first). False if it was not pending."""
        with self._lock:
            entry = self._pending.get(request_id)
            ci = entry[1] if entry is not None else None
        return ci is not None and self._expire(request_id, ci, reason)

    def fail_pending(self, reason: str) -> int:
        """Fail every request still pending (asking its core to cancel first). Returns how many."""
        with self._lock:
            stuck = [(rid, entry[1]) for rid, entry in self._pending.items()]
        for rid, ci in stuck:
            self._expire(rid, ci, reason)
        return len(stuck)

    def _expire(self, rid: int, ci: int, reason: str) -> bool:
        """Fail a request that is still pending (its core asked to stop it first); False if it
        finished meanwhile. What its core delivers for it later is counted as late."""
        with self._lock:
            if rid not in self._pending:
                return False
            self._cancelled.add(rid)
        core = self.cores[ci]
        try:
            core.cancel(rid, reason)
        except Exception:  # a broken cancel must not stop us from failing the request ourselves
            pass
        if rid in self._pending:  # the core did not deliver an outcome: fail it here
            self.on_error(rid, BackendError(core.address, reason))
        return True

    def _watchdog_loop(self) -> None:
        shortest = min(t for t in (self._timeout_ns, self._stall_ns) if t > 0)
        interval = min(max(shortest / 1e9 / 10, 0.05), 1.0)
        next_stall_report = 0
        while not self._stop.wait(interval):
            if self._timeout_ns > 0:
                self._expire_old()
            if self._stall_ns > 0 and self._clock() >= next_stall_report and self._report_stalls():
                next_stall_report = self._clock() + self._stall_ns  # at most one warning per stall time

    def _expire_old(self) -> None:
        cutoff = self._clock() - self._timeout_ns
        expired = []
        with self._lock:
            for rid, entry in self._pending.items():  # insertion order: oldest first
                if entry[2] > cutoff:
                    break
                expired.append((rid, entry[1]))
        reason = f"timed out after {self._timeout_ns / 1e9:g}s (--request_timeout_s)"
        for rid, ci in expired:
            if self._expire(rid, ci, reason):
                self.counts.timed_out += 1

    def _report_stalls(self) -> bool:
        """Warn (the run goes on) about requests that have had no first token for the stall time.
        True if it warned."""
        now = self._clock()
        cutoff = now - self._stall_ns
        stalled, oldest = 0, None
        with self._lock:
            for rid, entry in self._pending.items():  # oldest first
                if entry[2] > cutoff:
                    break
                if not entry[4]:
                    stalled += 1
                    if oldest is None:
                        oldest = (rid, entry[1], entry[2])
        if not stalled:
            return False
        self.stalls_reported += 1
        rid, ci, t_issue = oldest
        _log.warning("%d request(s) have had no first token for over %gs (--stall_warning_s); the oldest, "
                     "request %s on %s, waits for %.0fs", stalled, self._stall_ns / 1e9, rid,
                     self.cores[ci].address, (now - t_issue) / 1e9)
        return True

    def stop(self) -> None:
        """Stop the watchdog and the cores (each fails what its backend had in flight); anything still
        pending here then fails, so every submitted request has had its one outcome; later ones are
        refused (they fail at once)."""
        with self._lock:
            if self._refusal is None:
                self._refusal = "the server was stopped"
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        for core in self.cores:
            core.stop()
        with self._lock:
            left = [(rid, entry[1]) for rid, entry in self._pending.items()]
        for rid, ci in left:
            self.on_error(rid, BackendError(self.cores[ci].address, "server stopped with the request pending"))

    # --- reporting ------------------------------------------------------------------------------------
    @property
    def first_error(self) -> str | None:
        return self._first_error

    def core_stats(self) -> list[dict[str, Any]]:
        return [
            {"core": core.address, "completed": self.core_completed[i], "failed": self.core_failed[i],
             "pending": self.core_pending[i], "output_tokens": self.core_tokens[i],
             **core.report()}
            for i, core in enumerate(self.cores)
        ]

    def latency_percentiles(self, window: int | None = None) -> dict[str, float | None]:
        """p50/p99 TTFT and TPOT in ms over the recent samples (at most LATENCY_WINDOW), or the
        last `window` of them."""
        out: dict[str, float | None] = {}
        for name, data in (("ttft", self.ttft_ns), ("tpot", self.tpot_ns)):
            recent = list(data)  # a copy: appends go on meanwhile
            arr = np.asarray(recent[-window:] if window else recent, dtype=np.float64)
            for p in (50, 99):
                out[f"{name}_p{p}_ms"] = float(np.percentile(arr, p)) / 1e6 if arr.size else None
        return out


def error_text(error: BaseException) -> str:
    """A failed request's cause as the summary shows it."""
    if isinstance(error, BackendError):
        return f"{type(error).__name__}: {error.cause}"
    return f"{type(error).__name__}: {error}"


_VARIABLE_PARTS = [
    (re.compile(r"\b(?:[a-z]+://)?(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<addr>"),
    (re.compile(r"\[[0-9a-fA-F]*:[0-9a-fA-F:]*\](?::\d+)?"), "<addr>"),
    (re.compile(r"\blocalhost:\d+\b"), "<addr>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    # the ids OpenAI-compatible servers give each request, whatever their length, and JSON "id" values
    (re.compile(r"\b(chatcmpl|cmpl|req|request|resp|run|msg|call|gen)([-_])[A-Za-z0-9]+\b"), r"\1\2<id>"),
    (re.compile(r'("(?:id|request_id|requestId)"\s*:\s*)"[^"]*"'), r'\1"<id>"'),
    # other ids with a prefix: session-8a7sdf6A9, ...
    (re.compile(r"\b([A-Za-z]+[-_])(?=[A-Za-z0-9]*\d[A-Za-z0-9]*\d)[A-Za-z0-9]{8,}\b"), r"\1<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b[0-9a-fA-F]{16,}\b"), "<hex>"),
    # a number on its own (a unit may follow), not one inside a name such as llama3.1-8b
    (re.compile(r"(?<![\w.])(?<!\w-)\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?=(?:ms|us|ns|s|B)?(?![A-Za-z0-9_]))"), "<n>"),
]


def mask_variable_parts(cause: str) -> str:
    """The shape of an error cause: addresses, ids, hex strings and numbers masked, so failures
    that differ only in a request id or a count fall into one group."""
    for pattern, repl in _VARIABLE_PARTS:
        cause = pattern.sub(repl, cause)
    return cause


class Progress:
    """tqdm display refreshed from a timer thread (never from the hot path): done/total,
    tokens/s, steady-state tokens/s over a sliding window, running p99 TTFT and TPOT.

    When stderr is not a terminal (CI logs, a pipe) it prints one plain line every `plain_every_s`
    instead of redrawing a bar with carriage returns."""

    def __init__(self, server: LLMServer, *, total: Callable[[], int] | None, desc: str, interval_s: float = 0.5,
                 steady_state: bool = True, window_s: float = 10.0, plain: bool | None = None,
                 plain_every_s: float = 10.0, stream=None):
        import sys

        from tqdm import tqdm

        self._stream = stream if stream is not None else sys.stderr
        self.plain = (not self._stream.isatty()) if plain is None else plain
        self._plain_every_ns = int(plain_every_s * 1e9)
        self._last_line_ns = 0
        self.desc = desc
        self.server = server
        self.interval_s = interval_s
        self.steady_state = steady_state
        self.window_ns = int(window_s * 1e9)
        self._total = total
        self._bar = None if self.plain else tqdm(total=None, desc=desc, unit="sample", dynamic_ncols=True,
                                                 leave=True, file=self._stream)
        self._stop = threading.Event()
        self._start_counts = (server.counts.completed + server.counts.failed, server.counts.output_tokens)
        self._t0 = time.monotonic_ns()
        self._history: collections.deque[tuple[int, int]] = collections.deque()
        self._thread = threading.Thread(target=self._loop, name="llmserver-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._refresh()

    def _refresh(self, final: bool = False) -> None:
        c = self.server.counts
        done = c.completed + c.failed - self._start_counts[0]
        tokens = c.output_tokens - self._start_counts[1]
        now = time.monotonic_ns()
        total = self._total() if self._total is not None else None
        if self._bar is not None:
            self._bar.n = done
            self._bar.total = total
        elapsed = max(now - self._t0, 1) / 1e9
        post = {"tok/s": f"{tokens / elapsed:,.0f}"}
        self._history.append((now, tokens))
        while len(self._history) > 2 and now - self._history[0][0] > self.window_ns:
            self._history.popleft()
        if self.steady_state and len(self._history) >= 2:
            t_old, k_old = self._history[0]
            post["steady tok/s"] = f"{(tokens - k_old) / max(now - t_old, 1) * 1e9:,.0f}"
        lat = self.server.latency_percentiles(window=2000)
        if lat["ttft_p99_ms"] is not None:
            post["p99 TTFT ms"] = f"{lat['ttft_p99_ms']:.1f}"
        if lat["tpot_p99_ms"] is not None:
            post["p99 TPOT ms"] = f"{lat['tpot_p99_ms']:.2f}"
        kv = [u for u in (core.kv_cache_utilisation() for core in self.server.cores) if u is not None]
        if kv:
            post["KV cache"] = f"{100 * sum(kv) / len(kv):.0f}%"
        if c.failed:
            post["failed"] = c.failed
        if self._bar is None:
            if final or now - self._last_line_ns >= self._plain_every_ns:
                self._last_line_ns = now
                head = f"{self.desc}: {done}/{total if total is not None else '?'} samples, {elapsed:,.1f} s"
                print(", ".join([head, *(f"{k} {v}" for k, v in post.items())]), file=self._stream, flush=True)
            return
        self._bar.set_postfix(post, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._refresh(final=True)
        if self._bar is not None:
            self._bar.close()


_warmup_ids = itertools.count(1)


def next_internal_request_id() -> int:
    """Ids for requests that are not LoadGen samples (warmup, probes): negative, so they can
    never collide with LoadGen's query sample ids (unsigned)."""
    return -next(_warmup_ids)
