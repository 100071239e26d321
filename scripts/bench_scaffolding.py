"""Cost of test-time compute with spare batch capacity: per-sample wall time of 8-sample majority
vote against a single generation, side by side in one run, plus the accuracy each reaches.

Backend: the dummy core's arithmetic oracle (answers right with probability --p) with a timing
model (TTFT, time per token) and a batch limit far above 8, behind the harness's LLMServer; the
scaffolding LLMCoreWorker submits to it. Samples are run one at a time so each one's wall time is
its latency. Goal: majority vote at most 1.3x the single-sample time.

    .venv/bin/python scripts/bench_scaffolding.py                  # 40 problems, p=0.5
    .venv/bin/python scripts/bench_scaffolding.py --samples=8 --problems=100 --ttft_ms=20 --tpot_ms=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(method: str, params: dict, args) -> dict:
    from llmlib.benchmarks import load_benchmark
    from llmlib.config import resolve
    from llmlib.cores.dummy import DummyCore
    from llmlib.expander import build_controller
    from llmlib.factory import build_core, load_benchmark_dataset
    from llmlib.generation import generation_params
    from llmlib.math_dataset import CharTokenizer
    from llmlib.server import LLMServer
    from scaffolding import ScaffoldingLlm
    from scaffolding.math_utils import extract_answer, numeric_equal
    from scaffolding.workers.llmcore_worker import LLMCoreWorker

    bench = load_benchmark("math-tiny")
    config = resolve(cli={"core_type": "dummy", "dummy_oracle_accuracy": str(args.p), "dummy_ttft_ms": str(args.ttft_ms),
                          "dummy_tpot_ms": str(args.tpot_ms), "dummy_max_batch_size": "256"}, env={}, layers=())
    dataset = load_benchmark_dataset(bench)
    gen = generation_params(config, bench)
    server = LLMServer(request_timeout_s=60)
    server.attach([build_core(DummyCore, config, bench, dataset, rank=0, sink=server)])
    tok = CharTokenizer()
    sampling = {k: v for k, v in gen.sampling().items() if k != "min_new_tokens"}
    sampling["max_tokens"] = gen.max_new_tokens
    worker = LLMCoreWorker(server, tok, default_max_tokens=gen.max_new_tokens, stop_token_ids=gen.stop_token_ids)
    llm = ScaffoldingLlm(build_controller(method, params, sampling), {"generation": worker})
    times, right = [], 0
    try:
        for i in range(args.problems):
            t0 = time.perf_counter()
            task = llm.generate([int(t) for t in dataset.input_tokens[i]])
            times.append(time.perf_counter() - t0)
            got = extract_answer(task.output_str or tok.decode(task.output_tokens or []))
            right += int(got is not None and numeric_equal(got, str(dataset.extra["answer"][i])))
    finally:
        llm.shutdown(shutdown_workers=False)
        server.stop()
    return {"method": method, "params": params, "mean_s": statistics.mean(times),
            "p50_s": statistics.median(times), "accuracy": 100.0 * right / args.problems}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--problems", type=int, default=40)
    p.add_argument("--p", type=float, default=0.5, help="probability the oracle answers right")
    p.add_argument("--ttft_ms", type=float, default=20.0)
    p.add_argument("--tpot_ms", type=float, default=2.0)
    args = p.parse_args()
    single = measure("native", {}, args)
    vote = measure("majority_vote", {"samples": args.samples}, args)
    ratio = vote["mean_s"] / single["mean_s"]
    for r in (single, vote):
        print(f"{r['method']:<14} {str(r['params']):<16} mean {r['mean_s'] * 1e3:8.1f} ms/sample  "
              f"p50 {r['p50_s'] * 1e3:8.1f} ms  accuracy {r['accuracy']:5.1f} %")
    print(f"wall time majority_vote:{args.samples} / single: {ratio:.3f}   (goal <= 1.3)")
    out = REPO / "results" / "bench_scaffolding.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"single": single, "vote": vote, "ratio": ratio, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
