"""Basic generation with scaffolding: a Controller, a Worker mapped to a tag, and ScaffoldingLlm
running one prompt, a batch of prompts, and requests awaited from the caller's own asyncio loop.

    .venv/bin/python scripts/scaffolding_examples/run_basic_generation.py [--model_dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `scaffolding`

from _toy_worker import add_worker_args, make_workers  # noqa: E402

from scaffolding import NativeGenerationController, ScaffoldingLlm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_args(parser)
    args = parser.parse_args()
    workers = make_workers(args.model_dir, p_correct=args.p_correct)

    # 1. a controller (the method) and 2. workers by tag (the backends) make 3. a ScaffoldingLlm
    controller = NativeGenerationController(sampling_params={"max_tokens": 64, "temperature": 0.7})
    with ScaffoldingLlm(controller, {"generation": workers["generation"]}) as llm:
        task = llm.generate("Hello, my name is")
        print(f"one prompt   : {task.output_str!r} ({task.completion_tokens} tokens, finish={task.finish_reason})")

        batch = llm.generate(["What is 17+25?", "What is 40+2?"])  # run concurrently
        for t in batch:
            print(f"batch        : {t.input_str} -> ...{t.output_str[-24:]!r} ({t.completion_tokens} tokens)")

        async def from_asyncio():  # the caller's loop awaits the futures; scaffolding keeps its own loop
            futures = [asyncio.wrap_future(llm.generate_async(f"What is {i}+{i}?")) for i in range(1, 4)]
            return await asyncio.gather(*futures)

        for t in asyncio.run(from_asyncio()):
            print(f"asyncio      : {t.input_str} -> ...{t.output_str[-24:]!r}")


if __name__ == "__main__":
    main()
