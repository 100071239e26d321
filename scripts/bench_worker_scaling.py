"""Streamed tokens/s one harness sustains with the endpoint core in 0 (in-process), 1, 2, ... worker processes
(--workers_per_core), one SSE event per token, against N mock server processes; and the TTFT the workers add.

Two phases, each on its own mock (its processes started once, `--mock_processes`):

  scaling  closed loop, `--concurrency` requests in flight, for each worker count: streamed tokens/s, client
           CPU per chunk (this process and its workers, from /proc), the mock's CPU per chunk, and chunks per
           CPU-second of the process that parses the streams (the workers', else this one's): the per-worker
           figure to set against mlcommons/endpoints' ~0.83M SSE events/s per worker (docs/ENDPOINT_CLIENT.md
           there: 79.7M SSE-pkts/s at 96 workers, x86, 1-character events from pre-built responses). The mock
           replays pre-rendered streams, `--events_per_write` events per write (`--per_token_delay_ms` > 0
           instead paces every token, and the mock then costs about what the client does)
  ttft     open loop at `--qps` for `--ttft_seconds`, with and without workers, the mock pacing tokens
           (`--ttft_per_token_delay_ms`): TTFT from enqueue to the first token in the harness process (what
           LoadGen sees), p50 / p99, split into: to_loop (enqueue -> the core's loop takes it: the hop to a
           worker), write (building and writing the request), server_and_read (-> first token parsed: the
           mock, the network and the read), back (-> the sink in this process: the hop back)

    .venv/bin/python scripts/bench_worker_scaling.py [--workers 0,1,2] [--mock_processes 1] [--qps 1000]
    [--mock_args="--no_token_ids --token_text=x"]  (the shortest realistic event, next to the vLLM-shaped default)
    (16 cores: --workers=0,1,2,4,8,12 --mock_processes=4)

Runs alternate (`--repeat`), so the configurations see the same machine load; tables give medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a live process and its live children (the mock's forked server processes)."""
    total = cpu_s(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    return total + sum(cpu_s(k) for k in kids)


def start_mock(processes: int, output_tokens: int, per_token_ms: float,
               events_per_write: int = 0, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--output_tokens", str(output_tokens), "--per_token_delay_ms", str(per_token_ms),
                             "--events_per_write", str(events_per_write),
                             "--processes", str(processes), *extra], cwd=REPO, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"127.0.0.1:{port}"


from llmlib.cores.trtllm_endpoint_core import TrtllmEndpointCore  # noqa: E402


class TracedEndpointCore(TrtllmEndpointCore):
    """The endpoint core noting, per request, when its loop took it, when `_begin` returned (the request
    written when a connection was idle) and when its first token was parsed; written as JSON to
    $BENCH_TRACE_DIR/<pid>.json at stop (a worker process's clock is the parent's: CLOCK_MONOTONIC)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trace: dict[int, list[int]] = {}

    def _begin(self, req):
        t = time.perf_counter_ns()
        task = super()._begin(req)
        self._trace[req.request_id] = [t, time.perf_counter_ns(), 0]
        return task

    def _first_token(self, request_id, token_ids):
        entry = self._trace.get(request_id)
        if entry is not None:
            entry[2] = time.perf_counter_ns()
        super()._first_token(request_id, token_ids)

    def stop(self) -> None:
        super().stop()
        out = os.environ.get("BENCH_TRACE_DIR")
        if out:
            Path(out, f"{os.getpid()}-{id(self)}.json").write_text(json.dumps(self._trace))


def make_core(url: str, workers: int, concurrency: int, sink, traced: bool = False):
    from llmlib.cores.trtllm_endpoint_core import EndpointSettings
    from llmlib.serving.core_workers import WorkerPoolCore

    cls = TracedEndpointCore if traced else TrtllmEndpointCore
    settings = EndpointSettings(urls=(url,), max_concurrency=concurrency, request_timeout_s=120.0)
    if workers == 0:
        core = cls(settings, rank=0, sink=sink)
    else:
        core = WorkerPoolCore(cls, settings, rank=0, sink=sink, workers=workers)
    core.health_check()
    core.warm_up()
    return core


def pids_of(core) -> list[int]:
    return list(getattr(core, "worker_pids", []))


def scaling_run(url: str, workers: int, concurrency: int, requests: int, prompt_len: int, mock_pid: int) -> dict:
    import numpy as np

    from llmlib.cores.base import Request

    prompts = [np.arange(i, i + prompt_len, dtype=np.int32) for i in range(64)]
    state = {"next": 0, "ended": 0, "tokens": 0, "errors": 0}
    finished = threading.Event()
    lock = threading.Lock()
    core = None

    def issue() -> None:
        with lock:
            i = state["next"]
            if i >= requests:
                return
            state["next"] = i + 1
        core.enqueue([Request(i, prompts[i % 64], 1 << 20, True, i)])

    class Sink:
        def on_first_token(self, rid, tokens):
            pass

        def on_complete(self, rid, tokens, n):
            state["tokens"] += n
            self._end()

        def on_error(self, rid, err):
            state["errors"] += 1
            self._end()

        def _end(self):
            state["ended"] += 1
            if state["ended"] >= requests:
                finished.set()
            else:
                issue()

    core = make_core(url, workers, concurrency, Sink())
    pids = pids_of(core)
    p0, w0, m0 = time.process_time(), sum(cpu_s(p) for p in pids), tree_cpu_s(mock_pid)
    t0 = time.perf_counter()
    for _ in range(min(concurrency, requests)):
        issue()
    finished.wait(600)
    wall = time.perf_counter() - t0
    parent = time.process_time() - p0
    worker = sum(cpu_s(p) for p in pids) - w0
    mock = tree_cpu_s(mock_pid) - m0
    core.stop()
    chunks = max(state["tokens"], 1)
    # the process that parses the streams: the workers when there are any, else this one
    parser_cpu = worker if workers else parent
    return {"workers": workers, "tokens_per_s": state["tokens"] / wall, "requests": requests,
            "errors": state["errors"], "client_cpu_us_per_chunk": (parent + worker) / chunks * 1e6,
            "parent_cpu_us_per_chunk": parent / chunks * 1e6, "worker_cpu_us_per_chunk": worker / chunks * 1e6,
            "mock_cpu_us_per_chunk": mock / chunks * 1e6,
            "chunks_per_parser_cpu_s": chunks / parser_cpu if parser_cpu > 0 else 0.0, "wall_s": wall}


def ttft_run(url: str, workers: int, qps: float, seconds: float, concurrency: int, prompt_len: int) -> dict:
    import numpy as np

    from llmlib.cores.base import Request

    n = int(qps * seconds)
    prompts = [np.arange(i, i + prompt_len, dtype=np.int32) for i in range(64)]
    issued = [0] * n
    first = [0] * n
    errors = []
    done = threading.Event()
    count = [0]
    perf = time.perf_counter_ns

    class Sink:
        def on_first_token(self, rid, tokens):
            first[rid] = perf()

        def on_complete(self, rid, tokens, n_tokens):
            self._end()

        def on_error(self, rid, err):
            errors.append(str(err))
            self._end()

        def _end(self):
            count[0] += 1
            if count[0] >= n:
                done.set()

    import tempfile
    trace_dir = tempfile.mkdtemp(prefix="bench-trace-")
    os.environ["BENCH_TRACE_DIR"] = trace_dir
    core = make_core(url, workers, concurrency, Sink(), traced=True)
    period = 1e9 / qps
    t0 = perf()
    for i in range(n):  # open loop: each request at its scheduled time
        due = t0 + int(i * period)
        now = perf()
        if due > now:
            time.sleep((due - now) / 1e9)
        issued[i] = perf()
        core.enqueue([Request(i, prompts[i % 64], 1 << 20, True, i)])
    done.wait(120)
    core.stop()
    import shutil
    trace: dict[int, list[int]] = {}
    for f in Path(trace_dir).glob("*.json"):
        trace.update({int(k): v for k, v in json.loads(f.read_text()).items()})
    shutil.rmtree(trace_dir, ignore_errors=True)
    ttfts = np.array([(f - s) / 1e6 for f, s in zip(first, issued) if f], dtype=np.float64)
    # where the time goes: issue -> the core's loop takes it (the hop to a worker), -> written,
    # -> first token parsed (the server and the read), -> the sink in this process (the hop back)
    stages = {"to_loop": [], "write": [], "server_and_read": [], "back": []}
    for i in range(n):
        t = trace.get(i)
        if not t or not first[i] or not t[2]:
            continue
        stages["to_loop"].append((t[0] - issued[i]) / 1e6)
        stages["write"].append((t[1] - t[0]) / 1e6)
        stages["server_and_read"].append((t[2] - t[1]) / 1e6)
        stages["back"].append((first[i] - t[2]) / 1e6)
    result = {"workers": workers, "qps": qps, "requests": n, "errors": len(errors),
              "ttft_p50_ms": float(np.percentile(ttfts, 50)), "ttft_p99_ms": float(np.percentile(ttfts, 99)),
              "ttft_mean_ms": float(ttfts.mean())}
    for name, values in stages.items():
        if values:
            result[f"{name}_p50_ms"] = float(np.percentile(values, 50))
            result[f"{name}_p99_ms"] = float(np.percentile(values, 99))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="0,1,2", help="worker counts to compare (0: the core in this process)")
    p.add_argument("--mock_processes", type=int, default=1)
    p.add_argument("--output_tokens", type=int, default=128)
    p.add_argument("--per_token_delay_ms", type=float, default=0.0,
                   help="> 0: the mock paces every token (each its own write: the mock costs as much as the client)")
    p.add_argument("--events_per_write", type=int, default=8,
                   help="the mock replays pre-rendered streams, this many SSE events (one per token) per write")
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--qps", type=float, default=1000.0)
    p.add_argument("--ttft_seconds", type=float, default=5.0)
    p.add_argument("--ttft_output_tokens", type=int, default=8)
    p.add_argument("--ttft_workers", default="0,2")
    p.add_argument("--ttft_per_token_delay_ms", type=float, default=1.0,
                   help="the TTFT phase's mock paces tokens, so the first token is not the whole reply")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--phases", default="scaling,ttft")
    p.add_argument("--mock_args", default="",
                   help="more flags for the scaling phase's mock, e.g. '--no_token_ids --token_text=x' (the "
                        "shortest realistic event: 1-character text, no ids, like endpoints' benchmark)")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    phases = args.phases.split(",")
    print(f"cpus={os.cpu_count()} mock_processes={args.mock_processes}", flush=True)
    results: dict[str, list] = {"scaling": [], "ttft": []}
    if "scaling" in phases:
        mock, url = start_mock(args.mock_processes, args.output_tokens, args.per_token_delay_ms,
                               args.events_per_write, tuple(shlex.split(args.mock_args)))
        try:
            for _ in range(args.repeat):
                for w in workers:
                    r = scaling_run(url, w, args.concurrency, args.requests, args.prompt_len, mock.pid)
                    results["scaling"].append(r)
                    print(f"scaling workers={w}: {r['tokens_per_s']:>9,.0f} streamed tokens/s, client CPU "
                          f"{r['client_cpu_us_per_chunk']:.2f} us/chunk (parent {r['parent_cpu_us_per_chunk']:.2f}, "
                          f"workers {r['worker_cpu_us_per_chunk']:.2f}), mock {r['mock_cpu_us_per_chunk']:.2f} us/chunk, "
                          f"{r['chunks_per_parser_cpu_s']:,.0f} chunks per parsing CPU-second, errors {r['errors']}",
                          flush=True)
        finally:
            mock.terminate()
            mock.wait(10)
    if "ttft" in phases:
        mock, url = start_mock(args.mock_processes, args.ttft_output_tokens, args.ttft_per_token_delay_ms)
        try:
            for _ in range(args.repeat):
                for w in [int(x) for x in args.ttft_workers.split(",")]:
                    r = ttft_run(url, w, args.qps, args.ttft_seconds, args.concurrency, args.prompt_len)
                    results["ttft"].append(r)
                    print(f"ttft workers={w} at {args.qps:g} QPS: p50 {r['ttft_p50_ms']:.3f} ms, p99 "
                          f"{r['ttft_p99_ms']:.3f} ms, mean {r['ttft_mean_ms']:.3f} ms, errors {r['errors']}; "
                          + ", ".join(f"{k} p50/p99 {r.get(k + '_p50_ms', 0):.3f}/{r.get(k + '_p99_ms', 0):.3f}"
                                      for k in ("to_loop", "write", "server_and_read", "back")), flush=True)
        finally:
            mock.terminate()
            mock.wait(10)
    by_w: dict[int, list] = {}
    for r in results["scaling"]:
        by_w.setdefault(r["workers"], []).append(r["tokens_per_s"])
    if by_w:
        import statistics
        print("\n| workers | streamed tokens/s (median) | x in-process | client CPU us/chunk | parent | workers "
              "| mock | chunks per parsing CPU-s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        base = statistics.median(by_w.get(0, by_w[min(by_w)]))
        for w in sorted(by_w):
            rs = [r for r in results["scaling"] if r["workers"] == w]
            med = {k: statistics.median(r[k] for r in rs) for k in (
                "tokens_per_s", "client_cpu_us_per_chunk", "parent_cpu_us_per_chunk", "worker_cpu_us_per_chunk",
                "mock_cpu_us_per_chunk", "chunks_per_parser_cpu_s")}
            print(f"| {w} | {med['tokens_per_s']:,.0f} | {med['tokens_per_s'] / base:.2f} | "
                  f"{med['client_cpu_us_per_chunk']:.2f} | {med['parent_cpu_us_per_chunk']:.2f} | "
                  f"{med['worker_cpu_us_per_chunk']:.2f} | {med['mock_cpu_us_per_chunk']:.2f} | "
                  f"{med['chunks_per_parser_cpu_s']:,.0f} |")
    if results["ttft"]:
        print("\n| workers | TTFT p50 ms (median of runs) | TTFT p99 ms (median of runs) |")
        print("| --- | --- | --- |")
        import statistics
        for w in sorted({r["workers"] for r in results["ttft"]}):
            rs = [r for r in results["ttft"] if r["workers"] == w]
            print(f"| {w} | {statistics.median(r['ttft_p50_ms'] for r in rs):.3f} | "
                  f"{statistics.median(r['ttft_p99_ms'] for r in rs):.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
