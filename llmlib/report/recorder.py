"""The harness measuring itself in every run: per-sample timings folded into fixed-size histograms
and time bins (bounded memory over any run length), written as run_stats.json next to the logs.

The hot path pays one clock read and one deque append per sample; a timer thread folds the queue.
"""

from __future__ import annotations

import collections
import json
import math
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RUN_STATS_NAME = "run_stats.json"

#: Log-spaced latency histogram: 1 us .. 10,000 s, 100 bins per decade (2.3% relative resolution).
HIST_MIN_NS = 1_000
HIST_DECADES = 10
HIST_PER_DECADE = 100
HIST_BINS = HIST_DECADES * HIST_PER_DECADE
#: Time bins start at this width and double (pairs merged) whenever MAX_TIME_BINS would be exceeded.
FIRST_BIN_NS = 100_000_000
MAX_TIME_BINS = 2048

# Distortion thresholds for the self-measurement warnings (see `distortion_warnings`).
ADDED_P99_FRACTION = 0.01  # harness-added latency p99 above 1% of the TTFT limit (or of the p50 latency)
SCHEDULE_P99_FRACTION = 0.01  # LoadGen issue delay p99 above 1% of the TTFT limit (or of the p50 latency)
ACHIEVED_FRACTION = 0.95  # Server: completed rate below 95% of the target
CPU_BUSY_CORES = 0.9  # the harness process used over 90% of one core (the GIL is then saturated)


class LogHistogram:
    """Counts of values (ns) in log-spaced bins; quantiles and a CDF within 2.3%."""

    def __init__(self, counts: np.ndarray | None = None, underflow: int = 0, maximum: int = 0, total: int = 0,
                 sum_ns: float = 0.0):
        self.counts = np.zeros(HIST_BINS, dtype=np.int64) if counts is None else counts
        self.underflow = underflow  # values below HIST_MIN_NS (counted at 0)
        self.max = maximum
        self.n = total
        self.sum = sum_ns

    def add(self, values: np.ndarray) -> None:
        values = values[values >= 0]
        if not values.size:
            return
        self.n += int(values.size)
        self.sum += float(values.sum())
        self.max = max(self.max, int(values.max()))
        small = values < HIST_MIN_NS
        self.underflow += int(small.sum())
        big = values[~small].astype(np.float64)
        if big.size:
            idx = np.floor(np.log10(big / HIST_MIN_NS) * HIST_PER_DECADE).astype(np.int64)
            np.clip(idx, 0, HIST_BINS - 1, out=idx)
            self.counts += np.bincount(idx, minlength=HIST_BINS)

    @staticmethod
    def edges_ns() -> np.ndarray:
        return HIST_MIN_NS * 10.0 ** (np.arange(HIST_BINS + 1) / HIST_PER_DECADE)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) in ns: the upper edge of the bin that holds it (never below the truth,
        at most 2.3% above it), capped at the largest value seen."""
        if self.n == 0:
            return None
        rank = max(math.ceil(q * self.n), 1)
        if rank <= self.underflow:
            return float(min(HIST_MIN_NS, self.max))
        cum = np.cumsum(self.counts) + self.underflow
        i = int(np.searchsorted(cum, rank))
        return float(min(self.edges_ns()[min(i + 1, HIST_BINS)], self.max))

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(values ns, cumulative fraction) at the upper edge of every non-empty bin."""
        if self.n == 0:
            return np.array([]), np.array([])
        edges = self.edges_ns()[1:]
        cum = (np.cumsum(self.counts) + self.underflow) / self.n
        keep = self.counts > 0
        xs, ys = np.minimum(edges[keep], self.max), cum[keep]
        if self.underflow:
            xs, ys = np.concatenate([[HIST_MIN_NS], xs]), np.concatenate([[self.underflow / self.n], ys])
        return xs, ys

    def to_json(self) -> dict[str, Any]:
        nz = np.nonzero(self.counts)[0]
        return {"n": self.n, "sum_ns": self.sum, "max_ns": self.max, "underflow": self.underflow,
                "bins": {str(int(i)): int(self.counts[i]) for i in nz}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LogHistogram:
        counts = np.zeros(HIST_BINS, dtype=np.int64)
        for i, c in (d.get("bins") or {}).items():
            counts[int(i)] = c
        return cls(counts, int(d.get("underflow", 0)), int(d.get("max_ns", 0)), int(d.get("n", 0)),
                   float(d.get("sum_ns", 0.0)))

    def summary_ms(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            v = self.quantile(q)
            out[f"{name}_ms"] = None if v is None else v / 1e6
        out["max_ms"] = self.max / 1e6 if self.n else None
        out["mean_ms"] = self.sum / self.n / 1e6 if self.n else None
        return out


class TimeBins:
    """Per-time-bin sums (issued, completed, failed, tokens, and per core completions and busy time) over
    a run of any length: when full, neighbouring bins merge and the width doubles."""

    FIELDS = ("issued", "completed", "failed", "tokens")

    def __init__(self, n_cores: int, width_ns: int = FIRST_BIN_NS, max_bins: int = MAX_TIME_BINS):
        self.width_ns = width_ns
        self.max_bins = max_bins
        self.n_cores = max(n_cores, 1)
        self.data = {k: np.zeros(0, dtype=np.int64) for k in self.FIELDS}
        self.core_completed = np.zeros((self.n_cores, 0), dtype=np.int64)
        self.core_busy_ns = np.zeros((self.n_cores, 0), dtype=np.int64)  # sum of request latencies ending in the bin

    def _grow(self, needed: int) -> None:
        while needed > self.max_bins:  # merge pairs, double the width
            for k, arr in self.data.items():
                self.data[k] = _merge_pairs(arr)
            self.core_completed = np.stack([_merge_pairs(r) for r in self.core_completed])
            self.core_busy_ns = np.stack([_merge_pairs(r) for r in self.core_busy_ns])
            self.width_ns *= 2
            needed = (needed + 1) // 2
        size = self.data["issued"].size
        if needed > size:
            for k, arr in self.data.items():
                self.data[k] = np.concatenate([arr, np.zeros(needed - size, dtype=np.int64)])
            pad = np.zeros((self.n_cores, needed - size), dtype=np.int64)
            self.core_completed = np.concatenate([self.core_completed, pad], axis=1)
            self.core_busy_ns = np.concatenate([self.core_busy_ns, pad], axis=1)

    def add(self, field: str, t_rel_ns: np.ndarray, weights: np.ndarray | None = None) -> None:
        if not t_rel_ns.size:
            return
        t = np.maximum(t_rel_ns, 0)
        self._grow(int(t.max() // self.width_ns) + 1)
        idx = t // self.width_ns
        self.data[field] += np.bincount(idx, weights=weights, minlength=self.data[field].size).astype(np.int64)

    def add_core(self, t_rel_ns: np.ndarray, cores: np.ndarray, busy_ns: np.ndarray) -> None:
        if not t_rel_ns.size:
            return
        t = np.maximum(t_rel_ns, 0)
        self._grow(int(t.max() // self.width_ns) + 1)
        idx = t // self.width_ns
        size = self.data["issued"].size
        cores = np.clip(cores, 0, self.n_cores - 1)
        flat = cores * size + idx
        self.core_completed += np.bincount(flat, minlength=self.n_cores * size).reshape(self.n_cores, size)
        self.core_busy_ns += np.bincount(flat, weights=busy_ns, minlength=self.n_cores * size).astype(
            np.int64).reshape(self.n_cores, size)

    def to_json(self) -> dict[str, Any]:
        return {"width_s": self.width_ns / 1e9, **{k: v.tolist() for k, v in self.data.items()},
                "core_completed": self.core_completed.tolist(), "core_busy_s": (self.core_busy_ns / 1e9).tolist()}


def _merge_pairs(arr: np.ndarray) -> np.ndarray:
    if arr.size % 2:
        arr = np.concatenate([arr, np.zeros(1, dtype=arr.dtype)])
    return arr.reshape(-1, 2).sum(axis=1)


class RunRecorder:
    """What the harness sees of each sample: issue, first token, the core's response, and the moment
    LoadGen's call returned. `on_complete` / `on_fail` run on the hot path (a deque append each); a
    timer thread folds the queue into histograms and time bins, so memory stays fixed."""

    def __init__(self, n_cores: int, *, clock: Callable[[], int] = time.monotonic_ns, fold_interval_s: float = 0.5):
        self.clock = clock
        self.t0 = clock()
        self._queue: collections.deque = collections.deque()
        self.on_complete = self._queue.append  # (t_issue, t_first, t_core, n_tokens, core, t_reported)
        self.on_fail = self._queue.append  # (t_issue, t_first, t_core, -1, core, t_reported)
        self.hist = {name: LogHistogram() for name in ("ttft", "tpot", "latency", "added")}
        self.bins = TimeBins(n_cores)
        self.completed = self.failed = self.tokens = 0
        self.first_issue_ns: int | None = None
        self.last_done_ns: int | None = None
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        self._cpu0 = _cpu_s()
        self._wall0 = time.monotonic()
        self.cpu_s: float | None = None
        self.wall_s: float | None = None
        self._thread = threading.Thread(target=self._loop, args=(fold_interval_s,), name="run-recorder", daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.fold()

    def fold(self) -> None:
        """Move everything queued into the histograms and bins."""
        with self._fold_lock:
            q = self._queue
            n = len(q)
            if not n:
                return
            rows = [q.popleft() for _ in range(n)]
            a = np.asarray(rows, dtype=np.int64)
            t_issue, t_first, t_core, n_tok, core, t_rep = a.T
            ok = n_tok >= 0
            self.completed += int(ok.sum())
            self.failed += int((~ok).sum())
            self.tokens += int(n_tok[ok].sum())
            first = int(t_issue.min())
            self.first_issue_ns = first if self.first_issue_ns is None else min(self.first_issue_ns, first)
            last = int(t_core.max())
            self.last_done_ns = last if self.last_done_ns is None else max(self.last_done_ns, last)
            self.hist["latency"].add((t_core - t_issue)[ok])
            self.hist["added"].add(t_rep - t_core)
            has_first = ok & (t_first > 0)
            self.hist["ttft"].add((t_first - t_issue)[has_first])
            multi = has_first & (n_tok > 1)
            self.hist["tpot"].add((t_core - t_first)[multi] // (n_tok[multi] - 1))
            b = self.bins
            b.add("issued", t_issue - self.t0)
            b.add("completed", (t_core - self.t0)[ok])
            b.add("failed", (t_core - self.t0)[~ok])
            b.add("tokens", (t_core - self.t0)[ok], weights=n_tok[ok].astype(np.float64))
            b.add_core((t_core - self.t0)[ok], core[ok], (t_core - t_issue)[ok].astype(np.float64))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.fold()
        if self.cpu_s is None:
            self.cpu_s = _cpu_s() - self._cpu0
            self.wall_s = time.monotonic() - self._wall0

    def to_json(self) -> dict[str, Any]:
        span = ((self.last_done_ns - self.first_issue_ns) / 1e9
                if self.first_issue_ns is not None and self.last_done_ns is not None else None)
        done = self.completed + self.failed
        return {
            "completed": self.completed, "failed": self.failed, "output_tokens": self.tokens,
            "span_s": span, "achieved_samples_per_s": (self.completed / span) if span else None,
            "harness_cpu_s": self.cpu_s, "harness_wall_s": self.wall_s,
            "harness_cpu_cores": (self.cpu_s / self.wall_s) if self.cpu_s is not None and self.wall_s else None,
            "harness_cpu_us_per_sample": (self.cpu_s / done * 1e6) if self.cpu_s is not None and done else None,
            "histograms": {k: h.to_json() for k, h in self.hist.items()},
            "time_bins": self.bins.to_json(),
        }


def _cpu_s() -> float:
    """CPU seconds of this process (all its threads: LoadGen's, the harness's, in-process cores')."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- the self-measurement figures of a run ------------------------------------------------------------------
def self_measurement(stats: dict[str, Any] | None, schedule: dict[str, Any] | None, loadgen: dict[str, Any] | None,
                     *, scenario: str, ttft_limit_ms: float | None) -> dict[str, Any]:
    """The figures the summary shows: added latency p50/p99, schedule delay p50/p99/max, achieved
    against target QPS, harness CPU; and warnings where they are large enough to distort the result."""
    out: dict[str, Any] = {}
    lgr = loadgen or {}
    if stats:
        added = LogHistogram.from_json(stats["histograms"]["added"]).summary_ms()
        out["added_latency_ms"] = {k: added[k] for k in ("p50_ms", "p99_ms", "max_ms")}
        out["harness_cpu_s"] = stats.get("harness_cpu_s")
        out["harness_cpu_cores"] = stats.get("harness_cpu_cores")
        out["harness_cpu_us_per_sample"] = stats.get("harness_cpu_us_per_sample")
        out["achieved_samples_per_s"] = stats.get("achieved_samples_per_s")
    if schedule:
        out["schedule_delay_ms"] = {k: schedule.get(k) for k in ("p50_ms", "p99_ms", "max_ms")}
    target = lgr.get("target_qps") if scenario in ("Server", "Interactive") else None
    out["target_qps"] = target
    # LoadGen's Poisson schedule does not hit the target exactly: what it scheduled is the fair yardstick
    out["scheduled_qps"] = lgr.get("result_scheduled_samples_per_second") if target else None
    achieved = lgr.get("result_samples_per_second") or out.get("achieved_samples_per_s")
    out["achieved_qps"] = achieved
    out["warnings"] = distortion_warnings(out, scenario=scenario, ttft_limit_ms=ttft_limit_ms, loadgen=lgr)
    return out


def distortion_warnings(m: dict[str, Any], *, scenario: str, ttft_limit_ms: float | None,
                        loadgen: dict[str, Any]) -> list[str]:
    warnings = []
    p50_lat = (loadgen.get("ttft_p99_ns") or 0) / 1e6 if scenario != "Offline" else None
    scale = ttft_limit_ms or p50_lat
    added = (m.get("added_latency_ms") or {}).get("p99_ms")
    if added is not None and scale and added > ADDED_P99_FRACTION * scale:
        warnings.append(f"harness-added latency p99 {added:.3f} ms is over {ADDED_P99_FRACTION:.0%} of "
                        f"{'the TTFT limit' if ttft_limit_ms else 'the TTFT p99'} ({scale:,.1f} ms)")
    sched = (m.get("schedule_delay_ms") or {}).get("p99_ms")
    if sched is not None and scale and scenario != "Offline" and sched > SCHEDULE_P99_FRACTION * scale:
        warnings.append(f"LoadGen issued queries late: schedule delay p99 {sched:.3f} ms is over "
                        f"{SCHEDULE_P99_FRACTION:.0%} of {'the TTFT limit' if ttft_limit_ms else 'the TTFT p99'} "
                        f"({scale:,.1f} ms)")
    target, achieved = m.get("scheduled_qps") or m.get("target_qps"), m.get("achieved_qps")
    if target and loadgen.get("completed_sample_count") and loadgen.get("latency_p99_ns"):
        # LoadGen's completed rate counts the drain after the last issue: a short run falls short by that much
        issuing_s = loadgen["completed_sample_count"] / target
        target = target * issuing_s / (issuing_s + loadgen["latency_p99_ns"] / 1e9)
    if target and achieved is not None and achieved < ACHIEVED_FRACTION * target:
        warnings.append(f"achieved {achieved:,.2f} samples/s is below {ACHIEVED_FRACTION:.0%} of the "
                        f"{target:,.2f} QPS LoadGen scheduled: the system (or the harness) did not keep up")
    cores = m.get("harness_cpu_cores")
    if cores is not None and cores > CPU_BUSY_CORES:
        warnings.append(f"the harness process used {cores:.2f} CPU cores on average: with one Python thread "
                        f"at a time, it may be what limits the run")
    return warnings


def write_run_stats(outdir: Path, stats: dict[str, Any]) -> Path:
    path = Path(outdir) / RUN_STATS_NAME
    path.write_text(json.dumps(stats, separators=(",", ":")) + "\n")
    return path


def read_run_stats(outdir: Path) -> dict[str, Any] | None:
    path = Path(outdir) / RUN_STATS_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
