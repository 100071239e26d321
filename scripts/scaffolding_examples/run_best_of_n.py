"""Best-of-N with a reward model: N candidates sampled concurrently, scored by a reward worker (one
RewardTask per candidate, concurrently); the highest score wins, ties to the earliest.

    .venv/bin/python scripts/scaffolding_examples/run_best_of_n.py [--sample_num 4] [--model_dir PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `scaffolding`

from _toy_worker import add_worker_args, make_problems, make_workers  # noqa: E402

from scaffolding import ScaffoldingLlm  # noqa: E402
from scaffolding.controllers import BestOfNController, RewardController  # noqa: E402
from scaffolding.math_utils import extract_answer, numeric_equal  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_args(parser)
    parser.add_argument("--sample_num", type=int, default=4)
    parser.add_argument("--problems", type=int, default=50)
    args = parser.parse_args()
    workers = make_workers(args.model_dir, p_correct=args.p_correct)  # tags "generation" and "reward"
    problems = make_problems(args.problems, seed=1)

    controller = BestOfNController(reward_controller=RewardController(worker_tag="reward"),
                                   default_sample_num=args.sample_num)
    with ScaffoldingLlm(controller, workers) as llm:
        results = llm.generate([q for q, _ in problems])
    for task, (question, answer) in list(zip(results, problems))[:3]:
        record = task.customized_result_fields["best_of_n"]
        print(f"{question} (right: {answer}) scores={record['scores']} -> candidate {record['best_index']}: "
              f"{extract_answer(task.output_str)}")
    right = sum(numeric_equal(extract_answer(t.output_str), a) for t, (_, a) in zip(results, problems))
    subs = results[0].customized_result_fields["sub_requests"]
    print(f"best-of-{args.sample_num}: {right}/{len(problems)} right ({100 * right / len(problems):.0f}%); "
          f"one sample is right {100 * args.p_correct:.0f}% of the time; {subs} worker tasks per request")


if __name__ == "__main__":
    main()
