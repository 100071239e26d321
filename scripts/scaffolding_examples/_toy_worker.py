"""A toy in-memory "model" for the scaffolding examples: seeded answers to "What is A+B?", streaming
with cancel, Dynasor-style probes, and a reward worker. No model, no GPU: runs in milliseconds.

`make_workers(model_dir)` is the one place a real backend plugs in (see the hook below).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import zlib

from scaffolding import GenerationTask, RewardTask, StreamGenerationTask, Worker
from scaffolding.math_utils import extract_answer

QUESTION = re.compile(r"What is (-?\d+)\s*\+\s*(-?\d+)\?")
_FILLER = ("first", "add", "digits", "units", "then", "carry", "tens", "so", "check", "again")
PROBE_END = "The final answer is"


def _rng(*parts: object) -> random.Random:
    return random.Random(zlib.crc32("|".join(map(str, parts)).encode()))  # stable, unlike hash()


def make_problems(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n prompts "What is A+B?" with their answers."""
    r = random.Random(seed)
    pairs = [(r.randint(10, 99), r.randint(10, 99)) for _ in range(n)]
    return [(f"What is {a}+{b}?", a + b) for a, b in pairs]


class ToyMathWorker(Worker):
    """For "What is A+B?" it "reasons" for `reasoning_tokens` words, then says "The final answer is
    X", X right with probability `p_correct` for the (question, seed) pair. Any other prompt gets a
    canned reply. One word = one token. Handles GenerationTask and StreamGenerationTask (+cancel)."""

    name = "toy-math"

    def __init__(self, p_correct: float = 0.6, reasoning_tokens: int = 40, token_latency_s: float = 0.0):
        super().__init__()
        self.p_correct, self.reasoning_tokens, self.token_latency_s = p_correct, reasoning_tokens, token_latency_s
        self.register_task_handler(GenerationTask, self.generate)
        self.register_task_handler(StreamGenerationTask, self.stream_step)

    def _words(self, prompt: str, seed: int | None) -> list[str]:
        m = QUESTION.search(prompt)
        if m is None:
            return f"(toy model) You said: {prompt}".split()
        right = int(m.group(1)) + int(m.group(2))
        r = _rng(m.group(0), seed)
        answer = right if r.random() < self.p_correct else right + r.choice([d for d in range(-20, 21) if d])
        return [r.choice(_FILLER) for _ in range(self.reasoning_tokens)] + f"{PROBE_END} {answer}".split()

    def _probe(self, prompt: str, seed: int | None) -> list[str]:
        # a Dynasor probe: past half of the reasoning the toy model commits to its conclusion
        question = QUESTION.search(prompt)
        progress = sum(w in _FILLER for w in prompt[question.end():].split()) if question else 0
        if question is None or progress < self.reasoning_tokens // 2:
            return "hmm, not sure yet".split()
        return [self._words(question.group(0), seed)[-1]]

    @staticmethod
    def _fill(task: GenerationTask, words: list[str]) -> None:
        task.output_str = " ".join(words)
        task.output_tokens = [zlib.crc32(w.encode()) % 32_000 for w in words]
        task.completion_tokens = len(words)

    async def generate(self, task: GenerationTask) -> None:
        prompt = task.input_str or ""
        is_probe = prompt.rstrip().endswith(PROBE_END)
        words = self._probe(prompt, task.seed) if is_probe else self._words(prompt, task.seed)
        limit = min(task.max_tokens or len(words), len(words))
        await asyncio.sleep(self.token_latency_s * limit)  # stands in for decoding time
        self._fill(task, words[:limit])
        task.finish_reason = "stop" if limit == len(words) else "length"

    async def stream_step(self, task: StreamGenerationTask) -> None:
        if task.cancel_flag:  # a real backend would abort the request here
            task.end_flag, task.finish_reason = True, "cancelled"
            return
        words = self._words(task.input_str or "", task.seed)
        limit = min(task.max_tokens or len(words), len(words))
        done = min((task.request_handle or 0) + max(task.streaming_step, 1), limit)
        await asyncio.sleep(self.token_latency_s * (done - (task.request_handle or 0)))
        task.request_handle = done
        self._fill(task, words[:done])
        if done >= limit:
            task.end_flag, task.finish_reason = True, "stop" if limit == len(words) else "length"


class ToyRewardWorker(Worker):
    """Scores a candidate answer to "What is A+B?": 1.0 when right, else a seeded score below 0.5."""

    name = "toy-reward"

    def __init__(self) -> None:
        super().__init__()
        self.register_task_handler(RewardTask, self.score)

    async def score(self, task: RewardTask) -> None:
        m = QUESTION.search(task.input_str or "")
        answer = extract_answer(task.candidate)
        right = m is not None and answer is not None and float(answer) == int(m.group(1)) + int(m.group(2))
        task.score = 1.0 if right else round(_rng(task.candidate).random() * 0.5, 3)


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", default=None,
                        help="a real model (not wired in yet: see make_workers); default: the toy worker")
    parser.add_argument("--p_correct", type=float, default=0.6, help="toy worker: chance one sample is right")


def make_workers(model_dir: str | None, p_correct: float = 0.6, **toy_kwargs) -> dict[str, Worker]:
    """Workers by tag: "generation" and "reward"."""
    if model_dir is not None:
        # HOOK: build real workers here, e.g. a Worker over an llmlib core (or a TRT-LLM / OpenAI-API
        # worker) that registers GenerationTask and StreamGenerationTask handlers, and a reward-model
        # worker that registers a RewardTask handler. Return them under the same tags.
        raise SystemExit(f"--model_dir={model_dir}: real workers are not wired into the examples yet; "
                         "see the HOOK in scripts/scaffolding_examples/_toy_worker.py:make_workers")
    return {"generation": ToyMathWorker(p_correct=p_correct, **toy_kwargs), "reward": ToyRewardWorker()}
