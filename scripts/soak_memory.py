"""Memory soak: the harness's RSS over a long Server run against a bare LoadGen SUT's, side by side.

Both run at the same time, each in its own process, under the same TestSettings (the
`tiny-synthetic` Interactive scenario at a fixed target QPS, the zero-latency dummy core for the
harness; `scripts/bench_spine_overhead.py --one=...` runs each). Every few seconds the RSS of both
is read from /proc; at the end it prints the table, each one's growth per sample after the first
minute, and the gap between them against a bound. LoadGen itself keeps per-sample state, so the
bare SUT grows too: the harness should add a constant, not a slope.

    .venv/bin/python scripts/soak_memory.py                       # 300 QPS for 180 s
    .venv/bin/python scripts/soak_memory.py --qps=300 --duration_s=900
    .venv/bin/python scripts/soak_memory.py --repo=/path/to/older/checkout   # the same soak of another commit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_bytes_per_sample(points: list[tuple[float, float]], qps: float, skip_s: float) -> float | None:
    """Least-squares growth of RSS (MB over seconds) after `skip_s`, as bytes per issued sample."""
    pts = [(t, m) for t, m in points if t >= skip_s]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mm = sum(m for _, m in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if not var:
        return None
    mb_per_s = sum((t - mt) * (m - mm) for t, m in pts) / var
    return mb_per_s * 1024 * 1024 / qps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qps", type=float, default=300.0)
    p.add_argument("--duration_s", type=float, default=180.0)
    p.add_argument("--every_s", type=float, default=5.0, help="seconds between RSS readings")
    p.add_argument("--skip_s", type=float, default=60.0, help="start-up excluded from the growth fit")
    p.add_argument("--bound_mb", type=float, default=16.0,
                   help="the largest harness - bare RSS gap accepted at the end")
    p.add_argument("--outdir", default=str(REPO / "results" / "soak_memory"))
    p.add_argument("--repo", default=str(REPO), help="the checkout whose harness is measured (compare commits)")
    args = p.parse_args()
    repo = Path(args.repo).resolve()
    spine = repo / "scripts" / "bench_spine_overhead.py"
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    procs = {}
    for kind in ("bare", "harness"):
        cmd = [sys.executable, str(spine), f"--one={kind}", f"--qps={args.qps}",
               f"--duration_ms={int(args.duration_s * 1000)}", f"--outdir={args.outdir}"]
        procs[kind] = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    t0 = time.monotonic()
    series: dict[str, list[tuple[float, float]]] = {"bare": [], "harness": []}
    print(f"{'t (s)':>7} {'bare RSS MB':>12} {'harness RSS MB':>15} {'gap MB':>8}", flush=True)
    while any(proc.poll() is None for proc in procs.values()):
        t = time.monotonic() - t0
        row = {kind: rss_mb(proc.pid) for kind, proc in procs.items() if proc.poll() is None}
        for kind, mb in row.items():
            if mb is not None:
                series[kind].append((t, mb))
        if len(row) == 2 and None not in row.values():
            print(f"{t:7.0f} {row['bare']:12.1f} {row['harness']:15.1f} {row['harness'] - row['bare']:8.1f}",
                  flush=True)
        time.sleep(args.every_s)
    results = {}
    for kind, proc in procs.items():
        out, err = proc.communicate()
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            print(f"{kind} failed (exit {proc.returncode}):\n{err[-2000:]}", file=sys.stderr)
            return 1
        results[kind] = json.loads(line)
    print()
    for kind in ("bare", "harness"):
        r, pts = results[kind], series[kind]
        slope = slope_bytes_per_sample(pts, args.qps, args.skip_s)
        print(f"{kind:<8} {r.get('validity')}, {r.get('completed_sample_count') or '?'} samples; RSS "
              f"{pts[0][1]:.1f} -> max {max(m for _, m in pts):.1f} MB; growth after {args.skip_s:g}s: "
              + (f"{slope:.1f} bytes/sample" if slope is not None else "n/a"))
    gap = max(m for _, m in series["harness"][-3:]) - max(m for _, m in series["bare"][-3:])
    ok = gap <= args.bound_mb
    print(f"harness - bare RSS at the end: {gap:.1f} MB (bound {args.bound_mb:g} MB): {'OK' if ok else 'OVER'}")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak_memory.json").write_text(json.dumps({"args": vars(args), "series": series, "gap_mb": gap,
                                                      "results": results}, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
