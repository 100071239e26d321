"""Streaming with cancellation: StreamGenerationTask steps back to the controller every few tokens;
StreamGenerationController cancels past a token threshold, DynasorCoTController once probes agree.

    .venv/bin/python scripts/scaffolding_examples/run_stream_cancel.py [--max_tokens_before_cancel 24]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `scaffolding`

from _toy_worker import add_worker_args, make_workers  # noqa: E402

from scaffolding import ScaffoldingLlm  # noqa: E402
from scaffolding.controllers import DynasorCoTController, StreamGenerationController  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_args(parser)
    parser.add_argument("--max_tokens_before_cancel", type=int, default=24)
    parser.add_argument("--streaming_step", type=int, default=8)
    args = parser.parse_args()
    workers = make_workers(args.model_dir, p_correct=1.0, reasoning_tokens=120)

    controller = StreamGenerationController(args.max_tokens_before_cancel, streaming_step=args.streaming_step)
    with ScaffoldingLlm(controller, {"generation": workers["generation"]}) as llm:
        for prompt, limit in (("What is 17+25?", None), ("Hi", None), ("What is 17+25?", 500)):
            kwargs = {} if limit is None else {"max_tokens_before_cancel": limit}
            task = llm.generate(prompt, **kwargs)
            print(f"stream {prompt!r} cancel at {limit or args.max_tokens_before_cancel}: "
                  f"{task.customized_result_fields['stream']} finish={task.finish_reason} "
                  f"tail=...{task.output_str[-22:]!r}")

    dynasor = DynasorCoTController(probe_interval=16, certainty_threshold=2)
    with ScaffoldingLlm(dynasor, {"generation": workers["generation"]}) as llm:
        task = llm.generate("What is 17+25?")
    record = task.customized_result_fields["dynasor"]
    print(f"dynasor: probes={record['probes']} exited_early={record['exited_early']} "
          f"stream_tokens={record['stream_tokens']} of 125, probe_tokens={record['probe_tokens']} "
          f"-> {task.output_str!r}")


if __name__ == "__main__":
    main()
