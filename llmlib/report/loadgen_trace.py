"""Read LoadGen's per-sample trace (mlperf_log_trace.json, written with LogSettings.enable_trace):
the scheduled time, issue delay, first-token and completion time of every sample.

LoadGen 6.0.17 writes one Chrome-trace event per line and does not always produce valid JSON (its
LogDetail events quote keys twice), so the lines that matter are read one by one. Per sample
(loadgen.cc ResponseDelegateDetailed::SampleComplete): a "Sample" begin event whose `ts` is the
query's scheduled time (us from the test start) with args issue_start_ns (issue delay) and complete_ns
(latency from the scheduled time); in Server, a "Latency" counter at the same ts (issue_delay,
issue_to_done) and, with token latencies, a "Token_Latency" counter whose issue_to_done is the first
token's time after issue.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRACE_NAME = "mlperf_log_trace.json"

_SAMPLE = re.compile(r'^\{"name":"Sample".*"ph":"b".*"ts":([0-9.]+),"args":\{"sample_seq":(\d+),"query_seq":(\d+),'
                     r'"sample_idx":(\d+),"issue_start_ns":(-?\d+),"complete_ns":(-?\d+)\}')
_TOKEN = re.compile(r'^\{"name":"Token_Latency".*"ts":([0-9.]+),"args":\{ *"issue_delay":(-?\d+),'
                    r'"issue_to_done":(-?\d+)\}')


@dataclass
class TraceSamples:
    """Per-sample arrays in LoadGen's order of completion."""

    scheduled_s: np.ndarray  # scheduled time, s from the test start
    issue_delay_ns: np.ndarray  # actual issue - scheduled
    latency_ns: np.ndarray  # completion - scheduled (what LoadGen's latency percentiles are made of)
    sample_index: np.ndarray
    ttft_ns: np.ndarray  # first token - scheduled, NaN where LoadGen traced none

    def __len__(self) -> int:
        return int(self.scheduled_s.size)

    def schedule_delay(self) -> dict[str, Any]:
        d = self.issue_delay_ns
        if not d.size:
            return {}
        return {"n": int(d.size), "p50_ms": float(np.percentile(d, 50)) / 1e6,
                "p99_ms": float(np.percentile(d, 99)) / 1e6, "max_ms": float(d.max()) / 1e6,
                "source": TRACE_NAME}


def read_trace(path: str | Path) -> TraceSamples | None:
    """The samples of a trace file (or the folder holding one); None when there is none or it is empty."""
    p = Path(path)
    if p.is_dir():
        p = p / TRACE_NAME
    if not p.is_file() or p.stat().st_size == 0:
        return None
    sched, delay, lat, idx = [], [], [], []
    first: dict[float, int] = {}
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith('{"name":"Sample"'):
                m = _SAMPLE.match(line)
                if m:
                    sched.append(float(m.group(1)))
                    idx.append(int(m.group(4)))
                    delay.append(int(m.group(5)))
                    lat.append(int(m.group(6)))
            elif line.startswith('{"name":"Token_Latency"'):
                m = _TOKEN.match(line)
                if m:
                    first[float(m.group(1))] = int(m.group(2)) + int(m.group(3))
    if not sched:
        return None
    ts = np.asarray(sched)
    ttft = np.asarray([first.get(t, np.nan) for t in sched], dtype=np.float64) if first else np.full(ts.size, np.nan)
    return TraceSamples(scheduled_s=ts / 1e6, issue_delay_ns=np.asarray(delay, dtype=np.int64),
                        latency_ns=np.asarray(lat, dtype=np.int64), sample_index=np.asarray(idx, dtype=np.int64),
                        ttft_ns=ttft)


def schedule_delay_of(outdir: str | Path) -> dict[str, Any] | None:
    """Schedule delay p50/p99/max of a run folder's trace, or None without a trace."""
    samples = read_trace(outdir)
    return samples.schedule_delay() if samples is not None and len(samples) else None


def dump(samples: TraceSamples) -> str:
    return json.dumps({"n": len(samples), **samples.schedule_delay()})
