"""Command line: score an mlperf_log_accuracy.json that any harness wrote, as the reference does.

python -m llmlib.evaluation --benchmark B --log mlperf_log_accuracy.json --dataset FILE --tokenizer DIR
"""

from __future__ import annotations

import argparse
import sys

from llmlib.errors import HarnessError


def main(argv: list[str] | None = None) -> int:
    from llmlib.benchmarks import load_benchmark
    from llmlib.evaluation import EVALUATORS, EvalOptions, evaluate_files
    from llmlib.evaluation.logs import DTYPES

    p = argparse.ArgumentParser(prog="python -m llmlib.evaluation", description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", required=True, help="benchmark name (configs/benchmarks/<name>.yaml)")
    p.add_argument("--log", required=True, help="mlperf_log_accuracy.json")
    p.add_argument("--dataset", required=True, help="the dataset table (pickle, parquet or json)")
    p.add_argument("--tokenizer", default="", help="tokenizer folder (or `char`)")
    p.add_argument("--dtype", default="uint32", choices=sorted(DTYPES),
                   help="token dtype of the log (this harness writes uint32; the references' --dtype)")
    p.add_argument("--evaluator", default="",
                   help=f"override the benchmark's evaluator ({', '.join(EVALUATORS.names())})")
    p.add_argument("--prm800k_path", default="", help="openai/prm800k checkout (MATH500 grading)")
    p.add_argument("--lcb_tests", default="", help="LiveCodeBench test cases (JSON/JSONL rows)")
    p.add_argument("--workers", type=int, default=0, help="sandbox processes (0: one per core)")
    p.add_argument("--timeout_s", type=float, default=20.0, help="wall time per MBXP program (the reference's 20 s)")
    p.add_argument("--lcb_timeout_s", type=int, default=60,
                   help="seconds per LiveCodeBench test case (as the references)")
    p.add_argument("--outdir", default="", help="where accuracy.txt / accuracy.json go (default: next to the log)")
    args = p.parse_args(argv)
    try:
        benchmark = load_benchmark(args.benchmark)
        if args.evaluator:
            from dataclasses import replace

            EVALUATORS.get(args.evaluator)
            benchmark = replace(benchmark, accuracy=replace(benchmark.accuracy, evaluator=args.evaluator))
        options = EvalOptions(dtype=args.dtype, prm800k_path=args.prm800k_path, lcb_tests=args.lcb_tests,
                              workers=args.workers, timeout_s=args.timeout_s, lcb_timeout_s=args.lcb_timeout_s)
        report = evaluate_files(benchmark, args.log, args.dataset, args.tokenizer or None, options, args.outdir or None)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.accuracy_txt().strip())
    for line in report.lines():
        print(line)
    print("PASS" if report.passed else "FAIL or incomplete")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
