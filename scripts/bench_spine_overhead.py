"""Harness overhead: highest VALID Server target QPS through the full harness (LLMServer, the
zero-latency dummy core, the reporter) against a bare inline LoadGen SUT, side by side in one run.

Both SUTs send FirstTokenComplete and QuerySamplesComplete with n_tokens for every sample, under
the same TestSettings (the `tiny-synthetic` benchmark's Interactive scenario: TTFT 450 ms / TPOT 40 ms
limits). Each LoadGen test runs in its own process. The search climbs a QPS ladder until a run
is INVALID, then bisects. Prints a table and the ratio harness / bare.

    .venv/bin/python scripts/bench_spine_overhead.py            # about 3 minutes here
    .venv/bin/python scripts/bench_spine_overhead.py --duration_ms=2000 --start_qps=10000
    .venv/bin/python scripts/bench_spine_overhead.py --set=loadgen_trace=false   # a harness setting changed
    .venv/bin/python scripts/bench_spine_overhead.py --repos=before:/tmp/before,after:.   # checkouts side by side

`--repos` measures the harness of each named checkout (e.g. `git archive <commit> | tar -x -C /tmp/before`)
in the same run, against the same bare SUT: a before/after comparison on the same machine load.
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
sys.path.insert(0, str(REPO))


def _config(qps: float, duration_ms: int, outdir: Path, progress: bool, overrides: dict | None = None):
    from llmlib.config import resolve

    cli = {
        "benchmarks": "tiny-synthetic", "scenarios": "Interactive", "core_type": "dummy", "dummy_zero_latency": "true",
        "server_target_qps": str(qps), "min_duration_ms": str(duration_ms),
        "min_query_count": str(int(qps * duration_ms / 1000)), "warmup_queries": "0",
        "show_progress": str(progress).lower(), "results_dir": str(outdir), "request_timeout_s": "60",
        **(overrides or {}),
    }
    return resolve(cli=cli, env={}, layers=())


def run_one(kind: str, qps: float, duration_ms: int, outdir: Path, progress: bool,
            overrides: dict | None = None) -> dict:
    """One LoadGen Server test in this process; returns the parsed result."""
    kind = kind.split("@")[0]
    import numpy as np

    from llmlib.benchmarks import load_benchmark
    from llmlib.harness import build_test_settings, import_loadgen, results_dir_for, run_scenario
    from llmlib.loadgen_log import parse_detail_log, summarize

    config = _config(qps, duration_ms, outdir / kind, progress, overrides)
    benchmark = load_benchmark("tiny-synthetic")
    t0 = time.monotonic()
    if kind == "harness":
        outcome = run_scenario(config, benchmark, "Interactive")
        result = outcome.loadgen or {}
        result["lost_or_failed"] = outcome.failed + outcome.lost
    else:
        lg = import_loadgen()
        scenario = benchmark.scenario("Interactive")
        settings = build_test_settings(lg, config, benchmark, scenario)
        buf = np.arange(64, dtype=np.uint32) + 3
        ptr, first_ptr = buf.ctypes.data, buf[:1].ctypes.data
        qsr, ftc, qsc = lg.QuerySampleResponse, lg.FirstTokenComplete, lg.QuerySamplesComplete

        def issue(samples):
            for s in samples:
                ftc([qsr(s.id, first_ptr, 4, 1)])
                qsc([qsr(s.id, ptr, 4 * 36, 36)])

        sut = lg.ConstructSUT(issue, lambda: None)
        qsl = lg.ConstructQSL(benchmark.total_sample_count, benchmark.performance_sample_count,
                              lambda s: None, lambda s: None)
        out = results_dir_for(config, benchmark.name, "Interactive")
        out.mkdir(parents=True, exist_ok=True)
        log_out = lg.LogOutputSettings()
        log_out.outdir = str(out)
        log_out.copy_summary_to_stdout = False
        log_settings = lg.LogSettings()
        log_settings.log_output = log_out
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        lg.DestroySUT(sut)
        lg.DestroyQSL(qsl)
        from dataclasses import asdict

        result = asdict(summarize(parse_detail_log(out / "mlperf_log_detail.txt"), "Interactive"))
        result["lost_or_failed"] = 0
    result["wall_s"] = time.monotonic() - t0
    return result


def measure(kind: str, qps: float, args) -> dict:
    name, _, repo = kind.partition("@")
    repo_path = Path(args.repo_paths.get(repo, REPO)).resolve()
    cmd = [sys.executable, __file__, f"--one={name}", f"--qps={qps}", f"--duration_ms={args.duration_ms}",
           f"--outdir={Path(args.outdir) / (repo or 'this')}", f"--repo={repo_path}"] + \
        (["--progress"] if args.progress else []) + [f"--set={s}" for s in args.set]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(repo_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo_path)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{kind} at {qps:.0f} QPS failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(line)
    valid = r.get("validity") == "VALID" and r.get("lost_or_failed", 0) == 0
    sps = r.get("result_samples_per_second") or 0.0
    ttft = (r.get("ttft_p99_ns") or 0) / 1e6
    print(f"  {kind:<16} target {qps:>9,.0f}  completed {sps:>9,.0f}/s  p99 TTFT {ttft:>8.2f} ms  "
          f"{'VALID' if valid else 'INVALID'}", flush=True)
    return {"kind": kind, "qps": qps, "valid": valid, "completed_per_s": sps, "ttft_p99_ms": ttft}


def highest_valid(kind: str, args, rows: list) -> float:
    """Climb by `step` until INVALID, then bisect `bisect_steps` times."""
    lo, hi, qps = 0.0, None, args.start_qps
    while qps <= args.max_qps:
        r = measure(kind, qps, args)
        rows.append(r)
        if not r["valid"]:
            hi = qps
            break
        lo = qps
        qps += args.step_qps
    if hi is None:
        return lo
    for _ in range(args.bisect_steps):
        mid = round((lo + hi) / 2, -2)
        if mid <= lo or mid >= hi:
            break
        r = measure(kind, mid, args)
        rows.append(r)
        if r["valid"]:
            lo = mid
        else:
            hi = mid
    return lo


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=("harness", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--repo", default="", help=argparse.SUPPRESS)
    p.add_argument("--repos", default="", help="name:path,... checkouts whose harness is measured side by side")
    p.add_argument("--qps", type=float, help=argparse.SUPPRESS)
    p.add_argument("--duration_ms", type=int, default=3000, help="LoadGen min duration per test")
    p.add_argument("--start_qps", type=float, default=10000)
    p.add_argument("--step_qps", type=float, default=10000)
    p.add_argument("--max_qps", type=float, default=200000)
    p.add_argument("--bisect_steps", type=int, default=3)
    p.add_argument("--progress", action="store_true", help="keep the harness progress display on")
    p.add_argument("--outdir", default=str(REPO / "results" / "bench_spine"))
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a harness setting for the harness runs (repeatable), e.g. loadgen_trace=false")
    args = p.parse_args()
    overrides = dict(s.split("=", 1) for s in args.set)
    if args.one:
        if args.repo:  # the checkout under test, ahead of this script's own
            sys.path.insert(0, args.repo)
            for name in [m for m in sys.modules if m == "llmlib" or m.startswith("llmlib.")]:
                del sys.modules[name]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        r = run_one(args.one, args.qps, args.duration_ms, Path(args.outdir), args.progress, overrides)
        print(json.dumps(r, default=str))
        return 0
    args.repo_paths = dict(item.split(":", 1) for item in args.repos.split(",") if item)
    rows: list[dict] = []
    best = {}
    kinds = ["bare"] + ([f"harness@{name}" for name in args.repo_paths] or ["harness"])
    for kind in kinds:
        print(f"{kind}: climbing from {args.start_qps:,.0f} QPS in steps of {args.step_qps:,.0f}", flush=True)
        best[kind] = highest_valid(kind, args, rows)
    print()
    print(f"highest VALID target QPS  bare LoadGen SUT : {best['bare']:>10,.0f}")
    ratio = float("nan")
    for kind in kinds[1:]:
        ratio = best[kind] / best["bare"] if best["bare"] else float("nan")
        print(f"highest VALID target QPS  {kind + ' + dummy':<16} : {best[kind]:>10,.0f}   "
              f"ratio to bare {ratio:.3f} (goal >= 0.9)")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_spine_overhead.json").write_text(json.dumps({"best": best, "ratio": ratio, "runs": rows,
                                                               "duration_ms": args.duration_ms,
                                                               "settings": overrides}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
