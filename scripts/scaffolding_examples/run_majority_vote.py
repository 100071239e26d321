"""Majority vote (self-consistency): N samples per prompt, concurrently, with distinct seeds; the
answer most samples agree on wins. Compares 1 sample with N on generated "What is A+B?" problems.

    .venv/bin/python scripts/scaffolding_examples/run_majority_vote.py [--sample_num 8] [--model_dir PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `scaffolding`

from _toy_worker import add_worker_args, make_problems, make_workers  # noqa: E402

from scaffolding import NativeGenerationController, ScaffoldingLlm  # noqa: E402
from scaffolding.controllers import MajorityVoteController  # noqa: E402
from scaffolding.math_utils import extract_answer, numeric_equal  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_args(parser)
    parser.add_argument("--sample_num", type=int, default=8)
    parser.add_argument("--problems", type=int, default=50)
    args = parser.parse_args()
    workers = make_workers(args.model_dir, p_correct=args.p_correct)
    problems = make_problems(args.problems)
    prompts = [q for q, _ in problems]

    controller = MajorityVoteController(NativeGenerationController({"temperature": 0.8}), default_sample_num=8)
    with ScaffoldingLlm(controller, {"generation": workers["generation"]}) as llm:
        for n in (1, args.sample_num):
            t0 = time.perf_counter()
            results = llm.generate(prompts, sample_num=n)  # per-request kwarg overrides the default
            right = sum(numeric_equal(extract_answer(t.output_str), a) for t, (_, a) in zip(results, problems))
            tokens = sum(t.customized_result_fields["generated_tokens"] for t in results)
            print(f"sample_num={n}: {right}/{len(problems)} right ({100 * right / len(problems):.0f}%), "
                  f"{tokens} tokens generated, {time.perf_counter() - t0:.2f} s")
        first = results[0]
        record = first.customized_result_fields["majority_vote"]
        print(f"\n{first.input_str} answers={record['answers']}")
        print(f"votes={record['votes']} winner={record['winner']} (sample {record['winner_index']})")
        print(f"returned output: ...{first.output_str[-26:]!r}")


if __name__ == "__main__":
    main()
