"""The cost of the harness measuring itself: the same Server run (tiny-synthetic Interactive, the
zero-latency dummy core, a fixed target QPS) with LoadGen's per-sample trace on and off, alternating,
each run in its own process. Prints the harness process's CPU per sample, LoadGen's p99 TTFT and the
self-measurement figures of each run, and the medians per setting.

The recorder itself (one clock read and one deque append per sample) is always on; its cost against
the code before it is what `scripts/bench_spine_overhead.py` compares (run it on both checkouts).

    .venv/bin/python scripts/bench_self_measurement.py                    # 2,000 QPS, 5 s, 3 rounds
    .venv/bin/python scripts/bench_self_measurement.py --qps=500 --rounds=5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(trace: str, qps: float, duration_ms: int, results: Path) -> dict:
    cmd = [sys.executable, "-m", "llmlib", "--benchmarks=tiny-synthetic", "--scenarios=Interactive",
           "--core_type=dummy", "--dummy_zero_latency=true", f"--server_target_qps={qps}",
           f"--min_duration_ms={duration_ms}", f"--min_query_count={int(qps * duration_ms / 1000)}",
           "--warmup_queries=0", "--write_report=false", "--quiet=true", f"--loadgen_trace={trace}",
           f"--results_dir={results}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    summary = results / "local" / "tiny-synthetic" / "Interactive" / "performance" / "summary.json"
    if proc.returncode != 0 or not summary.is_file():
        raise SystemExit(f"run failed (exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    s = json.loads(summary.read_text())
    m = s["self_measurement"]
    return {"trace": trace, "verdict": s["verdict"], "cpu_us_per_sample": m["harness_cpu_us_per_sample"],
            "ttft_p99_ms": (s["loadgen"]["ttft_p99_ns"] or 0) / 1e6,
            "added_p99_ms": m["added_latency_ms"]["p99_ms"],
            "schedule_p99_ms": (m.get("schedule_delay_ms") or {}).get("p99_ms")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qps", type=float, default=2000)
    p.add_argument("--duration_ms", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-self-") as tmp:
        for i in range(args.rounds):
            for trace in ("false", "true"):
                r = run(trace, args.qps, args.duration_ms, Path(tmp) / f"{trace}{i}")
                rows.append(r)
                sched = "n/a" if r["schedule_p99_ms"] is None else f"{r['schedule_p99_ms']:.3f}"
                print(f"  trace={trace:<5} {r['verdict']:<8} CPU {r['cpu_us_per_sample']:7.1f} us/sample  "
                      f"TTFT p99 {r['ttft_p99_ms']:7.3f} ms  added p99 {r['added_p99_ms']:.3f} ms  "
                      f"schedule delay p99 {sched} ms", flush=True)
    print(f"\nmedians at {args.qps:,.0f} QPS, {args.duration_ms} ms runs:")
    for trace in ("false", "true"):
        sel = [r for r in rows if r["trace"] == trace]
        print(f"  trace={trace:<5} CPU {statistics.median(r['cpu_us_per_sample'] for r in sel):7.1f} us/sample  "
              f"TTFT p99 {statistics.median(r['ttft_p99_ms'] for r in sel):7.3f} ms  "
              f"added p99 {statistics.median(r['added_p99_ms'] for r in sel):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
