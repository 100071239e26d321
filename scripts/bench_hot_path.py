"""Python cost per Server sample of the harness's hot path, without LoadGen: the LoadgenSUT issue
callback through LLMServer, the zero-latency dummy core and the reporter, with LoadGen's three
calls replaced by no-ops; next to a bare callback making the same (no-op) calls.

    .venv/bin/python scripts/bench_hot_path.py [--samples=200000] [--profile] [--recorder]
    .venv/bin/python scripts/bench_hot_path.py --repos=before:/tmp/before,after:. --rounds=10

--repos measures the harness of each named checkout (e.g. `git archive <commit> | tar -x -C
/tmp/before`) in its own process, alternating `--rounds` times, and prints the median and lowest
per checkout of the wall time and of the process CPU time per sample (CPU time is what to compare
on a shared machine, where other processes stretch the wall time).

--recorder attaches the run's self-measurement (llmlib/report/recorder.py) as a run does, and adds
the time its timer thread takes to fold the samples (measured by folding once at the end).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Response:
    __slots__ = ()

    def __init__(self, *args):
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--profile", action="store_true", help="also print a cProfile of 50,000 samples")
    p.add_argument("--recorder", action="store_true", help="with the self-measurement recorder attached")
    p.add_argument("--repos", default="", help="name:path,... checkouts measured alternately, each in its own process")
    p.add_argument("--rounds", type=int, default=10, help="with --repos: runs per checkout")
    p.add_argument("--repo", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repos:
        return compare(args)
    if args.repo:  # the checkout under test, ahead of this script's own
        sys.path.insert(0, args.repo)

    from llmlib.benchmarks import load_benchmark
    from llmlib.config import resolve
    from llmlib.factory import build_server
    from llmlib.generation import generation_params
    from llmlib.harness import LoadgenSUT
    from llmlib.reporter import LoadgenReporter

    lg = types.SimpleNamespace(QuerySampleResponse=_Response, FirstTokenComplete=lambda r: None,
                               QuerySamplesComplete=lambda r: None)
    config = resolve(cli={"core_type": "dummy", "dummy_zero_latency": "true", "request_timeout_s": "60"},
                     env={}, layers=())
    bench = load_benchmark("tiny-synthetic")
    bundle = build_server(config, bench)
    sut = LoadgenSUT(bundle.server, LoadgenReporter(lg, streaming=True), bundle.dataset.input_tokens,
                     gen=generation_params(config, bench), streaming=True)
    samples = [([i], [i % len(bundle.dataset)]) for i in range(args.samples)]
    issue = sut.issue_queries
    rec = None
    if args.recorder:
        from llmlib.report.recorder import RunRecorder

        rec = RunRecorder(len(bundle.server.cores), fold_interval_s=3600)  # folded below, timed
        bundle.server.recorder, bundle.server.recorder_fail = rec.on_complete, rec.on_fail
    t0, c0 = time.perf_counter(), time.process_time()
    for ids, idx in samples:
        issue(ids, idx)
    harness_us = (time.perf_counter() - t0) / len(samples) * 1e6
    harness_cpu_us = (time.process_time() - c0) / len(samples) * 1e6
    if rec is not None:
        t0 = time.perf_counter()
        rec.fold()
        fold_us = (time.perf_counter() - t0) / len(samples) * 1e6
        rec.close()
        print(f"recorder fold    : {fold_us:6.2f} us/sample (its timer thread, off the hot path)")
        bundle.server.recorder = bundle.server.recorder_fail = None

    qsr, ftc, qsc = lg.QuerySampleResponse, lg.FirstTokenComplete, lg.QuerySamplesComplete

    def bare(ids, idx):
        for i in ids:
            ftc([qsr(i, 0, 4, 1)])
            qsc([qsr(i, 0, 144, 36)])

    t0, c0 = time.perf_counter(), time.process_time()
    for ids, idx in samples:
        bare(ids, idx)
    bare_us = (time.perf_counter() - t0) / len(samples) * 1e6
    bare_cpu_us = (time.process_time() - c0) / len(samples) * 1e6
    if args.json:
        import llmlib

        print(json.dumps({"llmlib": llmlib.__file__, "harness_us": harness_us, "harness_cpu_us": harness_cpu_us, "bare_us": bare_us,
                          "bare_cpu_us": bare_cpu_us}))
        bundle.stop()
        return 0
    print(f"harness hot path : {harness_us:6.2f} us/sample  ({harness_cpu_us:6.2f} us CPU)")
    print(f"bare callback    : {bare_us:6.2f} us/sample  ({bare_cpu_us:6.2f} us CPU)")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for ids, idx in samples[:50_000]:
            issue(ids, idx)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    bundle.stop()
    return 0


def compare(args) -> int:
    """Each checkout's hot path in its own process, alternating, `args.rounds` times."""
    repos = dict(item.split(":", 1) for item in args.repos.split(",") if item)
    runs: dict[str, list[dict]] = {name: [] for name in repos}
    for _ in range(args.rounds):
        for name, path in repos.items():
            out = subprocess.run([sys.executable, __file__, f"--samples={args.samples}", "--json",
                                  f"--repo={Path(path).resolve()}"] + (["--recorder"] if args.recorder else []),
                                 capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            if not run["llmlib"].startswith(str(Path(path).resolve())):
                raise SystemExit(f"{name}: measured {run['llmlib']}, not the checkout {path}")
            runs[name].append(run)
    print(f"{args.rounds} rounds of {args.samples:,} samples, us per sample (median / lowest):")
    for name, rs in runs.items():
        cols = []
        for key in ("harness_us", "harness_cpu_us", "bare_cpu_us"):
            vals = [r[key] for r in rs]
            cols.append(f"{key} {statistics.median(vals):6.2f} / {min(vals):6.2f}")
        print(f"  {name:<10} " + "   ".join(cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
