"""`hf` core tokens/s through the harness (LoadGen Offline, LLMServer, worker process) against raw
transformers `generate` of the same model, prompts and batch size, side by side in one run.

Raw: the prompts in static batches of `--batch` (left padding, greedy, stop at EOS), one process
with all CPU threads. Harness: the same prompts as a LoadGen Offline run on the `hf` core with
`hf_max_batch_size=--batch` and the same threads. Both sides get the same OMP_NUM_THREADS, torch
thread count and OMP_WAIT_POLICY; `--repeat` pairs run alternately (raw first, then harness first),
and the ratio is taken per pair and its median reported (the machine may be shared).

    .venv/bin/python scripts/bench_hf_core.py                 # the project's tiny model, 64 prompts
    .venv/bin/python scripts/bench_hf_core.py --prompts=128 --batch=16 --model=/path/to/checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _threads() -> int:
    if os.environ.get("BENCH_HF_THREADS"):  # set by the driver for both sides
        return int(os.environ["BENCH_HF_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _prompts(n: int):
    from llmlib.benchmarks import load_benchmark
    from llmlib.factory import load_benchmark_dataset

    benchmark = load_benchmark("tiny")
    dataset = load_benchmark_dataset(benchmark)
    return benchmark, [dataset.input_tokens[i] for i in range(min(n, len(dataset)))]


def run_raw(model_path: str, n: int, batch: int, max_new: int) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(_threads())
    benchmark, prompts = _prompts(n)
    eos = benchmark.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    generated = 0
    with torch.inference_mode():
        warm = torch.tensor(np.asarray(prompts[0], dtype=np.int64)[None])
        model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, do_sample=False,
                       pad_token_id=0)
        t0 = time.perf_counter()
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            width = max(len(p) for p in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(chunk):
                ids[i, width - len(p):] = torch.from_numpy(np.asarray(p, dtype=np.int64))
                mask[i, width - len(p):] = 1
            out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=eos, pad_token_id=0)[:, width:]
            for row in out.tolist():
                generated += row.index(eos) if eos in row else len(row)
        dt = time.perf_counter() - t0
    return {"kind": "raw", "tokens": generated, "seconds": dt, "tokens_per_s": generated / dt}


def run_transformers_cb(model_path: str, n: int, batch: int, max_new: int) -> dict:
    """transformers' own continuous batching (`generate_batch`, paged attention) on the same prompts."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(_threads())
    benchmark, prompts = _prompts(n)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                 attn_implementation="paged|sdpa").eval()
    gc = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=benchmark.eos_token_id,
                          pad_token_id=0, max_batch_tokens=2048)
    inputs = [[int(t) for t in p] for p in prompts]
    model.generate_batch(inputs=inputs[:2], generation_config=gc)  # warm up
    t0 = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=gc)
    dt = time.perf_counter() - t0
    generated = 0
    for result in out.values():
        toks = list(result.generated_tokens)
        generated += toks.index(benchmark.eos_token_id) if benchmark.eos_token_id in toks else len(toks)
    return {"kind": "transformers_cb", "tokens": generated, "seconds": dt, "tokens_per_s": generated / dt}


def run_harness(model_path: str, n: int, batch: int, max_new: int, outdir: str) -> dict:
    from llmlib.cli import resolve_for
    from llmlib.harness import run_scenario

    cli = {"core_type": "hf", "hf_model_path": model_path, "hf_max_batch_size": str(batch),
           "hf_threads_per_worker": str(_threads()), "max_tokens": str(max_new),
           "performance_sample_count": str(n), "min_query_count": str(n), "min_duration_ms": "0",
           "offline_expected_qps": "1", "warmup_queries": "2", "show_progress": "false", "results_dir": outdir}
    config, benchmark = resolve_for(cli, "tiny", "Offline", env={})
    t0 = time.perf_counter()
    outcome = run_scenario(config, benchmark, "Offline")
    lg = outcome.loadgen or {}
    return {"kind": "harness", "tokens": outcome.output_tokens, "seconds": time.perf_counter() - t0,
            "tokens_per_s": lg.get("result_tokens_per_second"), "samples": outcome.issued,
            "failed": outcome.failed, "validity": lg.get("validity")}


def profile_engine(model_path: str, n: int, batch: int, max_new: int) -> None:
    """Where an engine step spends its time: the engine alone (no LoadGen, no pipe) over the same
    prompts under cProfile, CPU seconds per phase (process CPU time, robust to a shared machine)."""
    import cProfile
    import pstats

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from llmlib.hf_engine import EngineRequest, HFEngine

    torch.set_num_threads(_threads())
    benchmark, prompts = _prompts(n)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    class Sink:
        tokens = 0

        def on_first_token(self, rid, tokens): ...

        def on_complete(self, rid, tokens, n_tokens):
            self.tokens += n_tokens

        def on_error(self, rid, error):
            raise SystemExit(f"request {rid} failed: {error}")

    def run() -> tuple[int, int]:
        sink = Sink()
        engine = HFEngine(model, sink, max_batch_size=batch)
        for i, p in enumerate(prompts):
            engine.add(EngineRequest(rid=i, input_ids=np.asarray(p, dtype=np.int32), max_new_tokens=max_new,
                                     stop_ids=frozenset({benchmark.eos_token_id}), streaming=True))
        with torch.inference_mode():
            while not engine.idle:
                engine.step()
        return sink.tokens, engine.steps

    run()  # warm up
    prof = cProfile.Profile(timer=time.process_time)
    prof.enable()
    tokens, steps = run()
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values())  # tottime over every function: the whole CPU time
    print(f"engine alone: {tokens} tokens in {steps} steps, {total:.2f} CPU s, {tokens / total:,.1f} tok per CPU s")
    phases = {"step": "step", "prefill (model + padding)": "_prefill", "decode (model)": "_decode",
              "merge joiners' cache": "_merge", "drop finished rows": "_keep", "sampling": "_sample"}
    for label, fn in phases.items():
        cum = sum(v[3] for (path, _, name), v in stats.items() if name == fn and path.endswith("hf_engine.py"))
        print(f"  {label:<28} {cum:7.2f} CPU s  {100 * cum / total:5.1f}%")
    cat = sum(v[2] for (_, _, name), v in stats.items() if name == "<built-in method torch.cat>")
    print(f"  {'torch.cat (cache growth...)':<28} {cat:7.2f} CPU s  {100 * cat / total:5.1f}%")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=("raw", "harness", "transformers_cb"), help=argparse.SUPPRESS)
    p.add_argument("--transformers_cb", action="store_true",
                   help="also measure transformers' own continuous batching (generate_batch)")
    p.add_argument("--model", default="", help="checkpoint folder (default: the project's tiny model)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max_new", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="raw/harness pairs, alternating which runs first")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both sides (default: all cores)")
    p.add_argument("--omp_wait_policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE"),
                   help="OMP_WAIT_POLICY for both sides (the hf worker's own default is PASSIVE)")
    p.add_argument("--outdir", default=str(REPO / "results" / "bench_hf"))
    p.add_argument("--profile", action="store_true", help="profile the engine alone (CPU s per phase) and exit")
    args = p.parse_args()
    if not args.model:
        from llmlib.tiny_model import ensure_tiny_model

        args.model = str(ensure_tiny_model())
    if args.profile:
        os.environ.setdefault("BENCH_HF_THREADS", str(args.threads or _threads()))
        profile_engine(args.model, args.prompts, args.batch, args.max_new)
        return 0
    if args.one:
        fn = {"raw": run_raw, "harness": run_harness, "transformers_cb": run_transformers_cb}[args.one]
        extra = (args.outdir,) if args.one == "harness" else ()
        print(json.dumps(fn(args.model, args.prompts, args.batch, args.max_new, *extra)))
        return 0
    rows = []
    kinds = ("raw", "harness") + (("transformers_cb",) if args.transformers_cb else ())
    threads = args.threads or _threads()
    # the same threads and OpenMP settings for every kind: OMP_NUM_THREADS, torch's thread count and
    # the wait policy (spinning OpenMP waiters collapse whichever side shares its cores with anything)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=args.omp_wait_policy,
               BENCH_HF_THREADS=str(threads))
    pairs: list[dict] = []
    for i in range(args.repeat):
        order = kinds if i % 2 == 0 else tuple(reversed(kinds))  # alternate which side runs first
        pair = {}
        for kind in order:
            cmd = [sys.executable, __file__, f"--one={kind}", f"--model={args.model}", f"--prompts={args.prompts}",
                   f"--batch={args.batch}", f"--max_new={args.max_new}", f"--outdir={args.outdir}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
            line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{kind} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            r = json.loads(line)
            if kind == "harness" and (r["failed"] or r["validity"] != "VALID"):
                raise SystemExit(f"harness run not clean: {r}")
            rows.append(r)
            pair[kind] = r["tokens_per_s"]
            print(f"  {kind:<8} {r['tokens']:>7} tokens  {r['tokens_per_s']:>9,.1f} tok/s"
                  + (f"  ({r['validity']}, failed {r['failed']})" if kind == "harness" else ""), flush=True)
        pair["ratio"] = pair["harness"] / pair["raw"]
        pairs.append(pair)
        print(f"  pair {i + 1}: harness / raw = {pair['ratio']:.3f}", flush=True)
    median = {k: statistics.median(p[k] for p in pairs) for k in (*kinds, "ratio")}
    print(f"\nmodel {args.model}, {args.prompts} prompts, batch {args.batch}, max_new {args.max_new}, "
          f"{threads} threads, OMP_WAIT_POLICY={args.omp_wait_policy}, load average before {_load()}")
    print(f"raw transformers generate : {median['raw']:>9,.1f} tok/s (median of {args.repeat})")
    print(f"hf core through harness   : {median['harness']:>9,.1f} tok/s (median of {args.repeat})")
    if args.transformers_cb:
        print(f"transformers generate_batch: {median['transformers_cb']:>8,.1f} tok/s (its own continuous batching)")
    print(f"ratio per pair            : {', '.join(format(p['ratio'], '.3f') for p in pairs)}")
    print(f"median ratio harness / raw: {median['ratio']:9.3f}   (goal >= 0.9)")
    Path(args.outdir).mkdir(parents=True, exist_ok=True)
    (Path(args.outdir) / "bench_hf_core.json").write_text(json.dumps(
        {"rows": rows, "pairs": pairs, "median": median, "threads": threads,
         "omp_wait_policy": args.omp_wait_policy}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
