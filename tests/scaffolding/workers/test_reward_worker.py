"""RewardWorker: sync score functions off the loop, async ones awaited, bad scores failing the task,
and a best-of-N controller over LLMCoreWorker (dummy core) plus the reward worker."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from scaffolding import Controller, GenerationTask, RewardTask, ScaffoldingLlm, TaskFailedError
from scaffolding.workers import TaskInputError
from scaffolding.workers.llmcore_worker import LLMCoreWorker
from scaffolding.workers.reward_worker import RewardScoreError, RewardWorker

pytestmark = pytest.mark.timeout(30)


class Score(Controller):
    def __init__(self, candidates):
        self.candidates = candidates

    def process(self, tasks, **kwargs):
        rewards = [RewardTask(input_str="q", candidate=c) if isinstance(c, str) else
                   RewardTask(input_str="q", candidate_tokens=c) for c in self.candidates]
        yield rewards
        return [r.score for r in rewards]


def run(worker, controller):
    with ScaffoldingLlm(controller, {"reward": worker}) as llm:
        return llm.generate("x")


def test_sync_scores_run_off_the_loop_and_concurrently():
    threads = set()

    def slow_len(prompt, candidate):
        threads.add(threading.current_thread().name)
        time.sleep(0.2)
        return len(candidate)

    t0 = time.monotonic()
    assert run(RewardWorker(slow_len), Score(["a", "bb", "ccc", [1, 2, 3, 4]])) == [1.0, 2.0, 3.0, 4.0]
    assert time.monotonic() - t0 < 0.6  # four 0.2 s scores at once, not one after the other
    assert "scaffolding-loop" not in threads


def test_token_prompts_reach_the_score_function():
    class Tokens(Controller):
        def process(self, tasks, **kwargs):
            task = RewardTask(input_tokens=[1, 2, 3], candidate="abc")
            yield [task]
            return task.score

    assert run(RewardWorker(lambda prompt, cand: sum(prompt) + len(cand)), Tokens()) == 9.0


def test_async_scores_are_awaited_on_the_loop():
    async def score(prompt, candidate):
        await asyncio.sleep(0.01)
        assert threading.current_thread().name == "scaffolding-loop"
        return np.float32(0.25) if candidate == "a" else 2

    assert run(RewardWorker(score), Score(["a", "b"])) == [0.25, 2.0]


@pytest.mark.parametrize("value, message", [
    (float("nan"), "returned nan; expected a finite number"),
    (math.inf, "returned inf"),
    ("high", "returned 'high' \\(str\\); expected a real number"),
    (True, "returned True \\(bool\\)"),
    (None, "returned None"),
])
def test_a_score_that_is_not_a_finite_number_fails_the_task(value, message):
    def bad(prompt, candidate):
        return value

    with pytest.raises(TaskFailedError, match=message) as info:
        run(RewardWorker(bad), Score(["a"]))
    error = info.value.tasks[0].error
    assert isinstance(error, RewardScoreError) and "bad" in str(error) and "input_str='q'" in str(error)


def test_a_failing_score_function_fails_the_task_and_a_missing_candidate_is_named():
    def boom(prompt, candidate):
        raise RuntimeError("reward model down")

    with pytest.raises(TaskFailedError, match="reward model down"):
        run(RewardWorker(boom), Score(["a"]))

    class NoCandidate(Controller):
        def process(self, tasks, **kwargs):
            yield [RewardTask(input_str="q")]

    with pytest.raises(TaskFailedError, match="no candidate") as info:
        run(RewardWorker(lambda p, c: 1.0), NoCandidate())
    assert isinstance(info.value.tasks[0].error, TaskInputError)
    with pytest.raises(TypeError, match="expected a callable"):
        RewardWorker(3.0)


def test_best_of_n_over_the_server_and_the_reward_worker(make_server):
    server = make_server(n_cores=2, dummy_zero_latency=True)

    class BestOfN(Controller):
        def process(self, tasks, **kwargs):
            gens = [GenerationTask(input_tokens=[1, i], max_tokens=3) for i in range(4)]
            yield gens
            rewards = [RewardTask(input_str="q", candidate_tokens=g.output_tokens) for g in gens]
            yield rewards
            best = max(range(4), key=lambda i: rewards[i].score)
            return gens[best].output_tokens

    workers = {"generation": LLMCoreWorker(server, default_max_tokens=3),
               "reward": RewardWorker(lambda prompt, tokens: -abs(tokens[0] - 5))}
    with ScaffoldingLlm(BestOfN(), workers) as llm:
        assert llm.generate("x") == [5, 6, 7]  # the candidate whose first token is 5 (prompt [1, 2])
