"""Python cost per Server sample of the harness's hot path, without LoadGen: the LoadgenSUT issue
callback through LLMServer, the zero-latency dummy core and the reporter, with LoadGen's three
calls replaced by no-ops; next to a bare callback making the same (no-op) calls.

    .venv/bin/python scripts/bench_hot_path.py [--samples=200000] [--profile] [--recorder]

--recorder attaches the run's self-measurement (llmlib/report/recorder.py) as a run does, and adds
the time its timer thread takes to fold the samples (measured by folding once at the end).
"""

from __future__ import annotations

import argparse
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
    args = p.parse_args()

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
    t0 = time.perf_counter()
    for ids, idx in samples:
        issue(ids, idx)
    harness_us = (time.perf_counter() - t0) / len(samples) * 1e6
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

    t0 = time.perf_counter()
    for ids, idx in samples:
        bare(ids, idx)
    bare_us = (time.perf_counter() - t0) / len(samples) * 1e6
    print(f"harness hot path : {harness_us:6.2f} us/sample")
    print(f"bare callback    : {bare_us:6.2f} us/sample")
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


if __name__ == "__main__":
    sys.exit(main())
