"""Test-time-compute controllers (scaffolding/controllers.py) against an in-memory math worker.
The fake sits at the worker boundary: seeded, deterministic, streaming with cancel, reward scoring."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from scaffolding import (
    Controller, GenerationTask, NativeGenerationController, RewardTask, ScaffoldingError, ScaffoldingLlm,
    StreamGenerationTask, TaskFailedError, TaskNotSupportedError, TaskStatus, Worker,
)
from scaffolding.controllers import (
    BestOfNController, DynasorCoTController, MajorityVoteController, PRMController, RewardController,
    StreamGenerationController, TokenBudgetMajorityVoteController, majority_vote,
)
from scaffolding.math_utils import extract_answer

REPO = Path(__file__).resolve().parents[2]
QUESTION = re.compile(r"What is (-?\d+)\+(-?\d+)\?")
FILLER = ("hmm", "carry", "then", "add", "digits", "check", "units", "tens", "sum", "wait")


def rng_for(*parts) -> random.Random:
    """A generator seeded from the parts (stable across processes, unlike hash())."""
    return random.Random(zlib.crc32("|".join(map(str, parts)).encode()))


def problems(n, seed=1234):
    r = random.Random(seed)
    return [(f"What is {a}+{b}?", a + b) for a, b in ((r.randint(10, 99), r.randint(10, 99)) for _ in range(n))]


def answer_of(task) -> int | None:
    value = extract_answer(task.output_str)
    return None if value is None else int(float(value))


class MathWorker(Worker):
    """Answers "What is A+B?" with `reasoning` filler words (one token each) and then "The final
    answer is X", X correct with probability `p` for the (question, seed) pair; wrong answers are
    scattered. Streams `streaming_step` words per step and honours cancel_flag. A prompt ending with
    "The final answer is" is a probe: past `confident_after` reasoning words it answers what the
    sample will conclude; before that (or always, in probe_mode "wander") a guess that changes with
    the progress; in probe_mode "unsure" it never states a number."""

    name = "math"

    def __init__(self, p=0.6, reasoning=40, *, probe_mode="confident", confident_after=60, fail_on=None,
                 delay=0.0, text=None):
        super().__init__()
        self.p, self.reasoning, self.probe_mode, self.confident_after = p, reasoning, probe_mode, confident_after
        self.fail_on, self.delay, self.text = fail_on, delay, text
        self.seeds: list[int | None] = []
        self.calls = Counter()
        self.cancels = 0
        self.running = self.peak = 0
        self.register_task_handler(GenerationTask, self.generate)
        self.register_task_handler(StreamGenerationTask, self.stream)

    # the "model"
    def question(self, prompt):
        m = QUESTION.search(prompt or "")
        if m is None:
            raise ValueError(f"MathWorker: not a math prompt: {prompt!r}")
        return m.group(0), int(m.group(1)) + int(m.group(2))

    def conclusion(self, prompt, seed):
        q, right = self.question(prompt)
        r = rng_for(q, seed)
        if r.random() < self.p:
            return right
        return right + r.choice([d for d in range(-30, 31) if d])

    def words(self, prompt, seed):
        if self.text is not None:  # a scripted answer per seed, kept verbatim
            text = self.text(seed)
            return text.split(" ") if text else []
        q, _ = self.question(prompt)
        r = rng_for("words", q, seed)
        return [r.choice(FILLER) for _ in range(self.reasoning)] + \
            f"The final answer is {self.conclusion(prompt, seed)}".split()

    async def _enter(self, kind, task):
        self.calls[kind] += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.delay)  # yields to the loop even at 0: lets concurrent tasks start
        if self.fail_on is not None and self.fail_on in (task.input_str or ""):
            raise RuntimeError(f"backend refused {task.input_str!r}")

    @staticmethod
    def fill(task, words):
        task.output_str = " ".join(words)
        task.output_tokens = [zlib.crc32(w.encode()) % 50_000 for w in words]
        task.completion_tokens = len(words)

    async def generate(self, task):
        try:
            await self._enter("generate", task)
            if task.input_str.rstrip().endswith("The final answer is"):
                return self.probe(task)
            self.seeds.append(task.seed)
            words = self.words(task.input_str, task.seed)
            limit = task.max_tokens or len(words)
            self.fill(task, words[:limit])
            task.finish_reason = "stop" if limit >= len(words) else "length"
        finally:
            self.running -= 1

    def probe(self, task):
        self.calls["probe"] += 1
        q, right = self.question(task.input_str)
        after = QUESTION.search(task.input_str).end()  # the partial output follows the question directly
        progress = sum(1 for w in task.input_str[after:].split() if w in FILLER)
        if self.probe_mode == "unsure":
            words = "not sure yet".split()
        elif self.probe_mode == "confident" and progress >= self.confident_after:
            words = [f"{self.conclusion(task.input_str, task.seed)}."]
        else:
            words = [f"{right + 1000 + progress}."]  # a different guess at every probe
        self.fill(task, words)
        task.finish_reason = "stop"

    async def stream(self, task):
        try:
            await self._enter("stream", task)
            if task.cancel_flag:
                self.cancels += 1
                task.end_flag, task.finish_reason = True, "cancelled"
                return
            words = self.words(task.input_str, task.seed)
            limit = min(task.max_tokens or len(words), len(words))
            done = min((task.request_handle or 0) + max(task.streaming_step, 1), limit)
            task.request_handle = done
            self.fill(task, words[:done])
            if done >= limit:
                task.end_flag = True
                task.finish_reason = "stop" if limit == len(words) else "length"
        finally:
            self.running -= 1


class RewardWorker(Worker):
    """Scores a candidate 1.0 when its answer is right, else a seeded number in [0, 0.5)."""

    name = "reward"

    def __init__(self, score=None):
        super().__init__()
        self.score, self.scored = score, 0
        self.register_task_handler(RewardTask, self.reward)

    async def reward(self, task):
        await asyncio.sleep(0)
        self.scored += 1
        if self.score is not None:
            task.score = self.score(task)
            return
        m = QUESTION.search(task.input_str)
        right = int(m.group(1)) + int(m.group(2))
        answer = extract_answer(task.candidate)
        task.score = 1.0 if answer is not None and float(answer) == right else rng_for(task.candidate).random() * 0.5


def run(controller, workers, prompts, **kwargs):
    with ScaffoldingLlm(controller, workers) as llm:
        return llm.generate(prompts, **kwargs)


def accuracy(results, answers):
    return sum(answer_of(t) == a for t, a in zip(results, answers)) / len(answers)


# --- majority vote ---------------------------------------------------------------------------------
def test_majority_vote_of_8_is_much_more_accurate_than_one_sample():
    probs = problems(100)
    prompts, answers = [q for q, _ in probs], [a for _, a in probs]
    single = accuracy(run(NativeGenerationController(), {"generation": MathWorker(p=0.6)}, prompts), answers)
    voted = accuracy(run(MajorityVoteController(default_sample_num=8), {"generation": MathWorker(p=0.6)}, prompts),
                     answers)
    assert 0.45 <= single <= 0.75  # one sample is right about 60% of the time
    assert voted >= single + 0.15, (single, voted)
    assert voted >= 0.9


def test_majority_vote_samples_concurrently_with_distinct_seeds_and_records_the_vote():
    worker = MathWorker(p=0.6, delay=0.01)
    task = run(MajorityVoteController(default_sample_num=8), {"generation": worker}, "What is 17+25?")
    assert worker.peak == 8 and sorted(worker.seeds) == list(range(8))
    record = task.customized_result_fields["majority_vote"]
    assert record["samples"] == 8 and len(record["answers"]) == 8
    assert sum(record["votes"].values()) == 8 and record["winner"] == "42"
    assert record["votes"]["42"] == max(record["votes"].values())
    assert task.status is TaskStatus.SUCCESS and answer_of(task) == 42
    assert task.output_str == " ".join(worker.words("What is 17+25?", record["winner_index"]))  # a winning sample
    assert task.customized_result_fields["sub_requests"] == 8
    assert task.customized_result_fields["generated_tokens"] == 8 * 45  # 40 reasoning + 5 answer words


def test_sample_num_per_request_and_the_tasks_own_seed():
    worker = MathWorker()
    with ScaffoldingLlm(MajorityVoteController(default_sample_num=8), {"generation": worker}) as llm:
        task = llm.generate("What is 1+2?", sample_num=3)
        assert task.customized_result_fields["majority_vote"]["samples"] == 3 and worker.seeds == [0, 1, 2]
    seeded = MathWorker()

    class Seeded(Controller):  # the request's task carries a seed: samples count up from it
        def __init__(self):
            self.inner = MajorityVoteController(default_sample_num=4)

        def process(self, tasks, **kwargs):
            tasks[0].seed = 100
            return (yield from self.inner.process(tasks, **kwargs))

    run(Seeded(), {"generation": seeded}, "What is 1+2?")
    assert sorted(seeded.seeds) == [100, 101, 102, 103]


def test_votes_group_equivalent_answers_and_ties_go_to_the_earliest_sample():
    scripted = {0: "so 7", 1: "The final answer is 1,000", 2: r"\boxed{1e3}", 3: "The final answer is 7.0"}
    worker = MathWorker(text=lambda seed: scripted[seed])
    task = run(MajorityVoteController(default_sample_num=4), {"generation": worker}, "What is 1+2?")
    record = task.customized_result_fields["majority_vote"]
    assert record["answers"] == ["7", "1,000", "1e3", "7.0"]
    assert record["votes"] == {"7": 2, "1,000": 2}  # two groups of two: a tie
    assert record["winner"] == "7" and record["winner_index"] == 0 and task.output_str == "so 7"
    assert majority_vote(["a", None, "b", "b"]) == (2, {"a": 1, "b": 2})


def test_unparseable_answers_still_give_the_first_samples_output():
    worker = MathWorker(text=lambda seed: f"I cannot say (attempt {'one two three'.split()[seed]})")
    task = run(MajorityVoteController(default_sample_num=3), {"generation": worker}, "What is 1+2?")
    assert task is not None and task.status is TaskStatus.SUCCESS
    assert task.output_str == "I cannot say (attempt one)"
    assert task.customized_result_fields["majority_vote"] == {
        "answers": [None, None, None], "votes": {}, "winner": None, "winner_index": None, "samples": 3}


def test_controllers_are_cloned_per_request_and_share_nothing():
    class Recording(NativeGenerationController):
        def __init__(self):
            super().__init__()
            self.prompts = []

        def process(self, tasks, **kwargs):
            self.prompts.append(tasks[0].input_str)
            yield from super().process(tasks, **kwargs)
            assert self.prompts == [tasks[0].input_str]  # its own clone: one sample, one prompt

    proto = MajorityVoteController(Recording(), default_sample_num=4)
    probs = problems(20, seed=7)
    results = run(proto, {"generation": MathWorker(p=1.0)}, [q for q, _ in probs])
    assert [answer_of(t) for t in results] == [a for _, a in probs]
    assert proto.generation_controller.prompts == []
    assert len({id(t) for t in results}) == 20


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="default_sample_num=0"):
        MajorityVoteController(default_sample_num=0)
    with pytest.raises(ValueError, match="sample_num=-1; expected an integer >= 1"):
        run(MajorityVoteController(), {"generation": MathWorker()}, "What is 1+2?", sample_num=-1)
    with pytest.raises(ValueError, match="aggregate='max'"):
        PRMController(aggregate="max")
    with pytest.raises(ValueError, match="token_budget=0"):
        TokenBudgetMajorityVoteController(token_budget=0)

    class Two(Controller):
        def process(self, tasks, **kwargs):
            return (yield from MajorityVoteController().process([GenerationTask(), GenerationTask()]))

    with pytest.raises(ValueError, match="exactly one GenerationTask, got GenerationTask, GenerationTask"):
        run(Two(), {"generation": MathWorker()}, "x")


# --- best of N -------------------------------------------------------------------------------------
def test_best_of_n_picks_the_highest_reward():
    probs = problems(40, seed=99)
    gen, rew = MathWorker(p=0.6), RewardWorker()
    results = run(BestOfNController(reward_controller=RewardController(), default_sample_num=4),
                  {"generation": gen, "reward": rew}, [q for q, _ in probs])
    for task in results:
        record = task.customized_result_fields["best_of_n"]
        scores = record["scores"]
        assert len(scores) == 4 and scores[record["best_index"]] == max(scores)
        assert task.output_str == " ".join(gen.words(task.input_str, record["best_index"]))
        assert task.customized_result_fields["sub_requests"] == 8  # 4 generations + 4 rewards
    assert rew.scored == 4 * 40
    assert accuracy(results, [a for _, a in probs]) >= 0.9  # right whenever any of the 4 is


def test_best_of_n_ties_go_to_the_earliest_and_prm_aggregates_steps():
    task = run(BestOfNController(default_sample_num=3), {"generation": MathWorker(), "reward": RewardWorker(
        score=lambda t: 0.5)}, "What is 3+4?")
    assert task.customized_result_fields["best_of_n"] == {"scores": [0.5, 0.5, 0.5], "best_index": 0, "samples": 3}

    texts = {0: "a\n\nb\n\nc", 1: "a\n\nx", 2: "y"}
    step_score = {"a": 0.9, "a\n\nb": 0.8, "a\n\nb\n\nc": 0.7, "a\n\nx": 0.95, "y": 0.6}
    rew = RewardWorker(score=lambda t: step_score[t.candidate])
    task = run(BestOfNController(reward_controller=PRMController(aggregate="min"), default_sample_num=3),
               {"generation": MathWorker(text=lambda s: texts[s]), "reward": rew}, "What is 3+4?")
    assert rew.scored == 3 + 2 + 1  # one RewardTask per step prefix
    assert task.customized_result_fields["best_of_n"]["scores"] == pytest.approx([0.7, 0.9, 0.6])
    assert task.customized_result_fields["best_of_n"]["best_index"] == 1


def test_a_reward_worker_that_sets_no_score_is_a_clear_error():
    with pytest.raises(ScaffoldingError, match=r"worker 'reward' left RewardTask.score=None for candidate 0"):
        run(BestOfNController(default_sample_num=2), {"generation": MathWorker(), "reward": RewardWorker(
            score=lambda t: None)}, "What is 3+4?")


def test_a_reward_task_on_a_worker_without_a_reward_handler_raises_task_not_supported():
    gen = MathWorker()
    with pytest.raises(TaskFailedError, match="TaskNotSupportedError") as info:
        run(BestOfNController(default_sample_num=2), {"generation": gen, "reward": gen}, "What is 3+4?")
    errors = [t.error for t in info.value.tasks]
    assert len(errors) == 2 and all(isinstance(e, TaskNotSupportedError) for e in errors)
    assert "RewardTask" in str(errors[0])


@pytest.mark.parametrize("controller", [
    MajorityVoteController(default_sample_num=4),
    BestOfNController(default_sample_num=4),
    TokenBudgetMajorityVoteController(token_budget=500, batch=2),
    StreamGenerationController(max_tokens_before_cancel=10, streaming_step=4),
    DynasorCoTController(probe_interval=10),
], ids=lambda c: type(c).__name__)
def test_a_failing_worker_surfaces_as_task_failed_error(controller):
    workers = {"generation": MathWorker(fail_on="13+"), "reward": RewardWorker()}
    with ScaffoldingLlm(controller, workers) as llm:
        with pytest.raises(TaskFailedError, match=r"backend refused 'What is 13\+1\?'"):
            llm.generate("What is 13+1?")
        assert llm.generate("What is 12+1?").status is TaskStatus.SUCCESS  # the next request is fine


# --- token budget ----------------------------------------------------------------------------------
@pytest.mark.parametrize("budget, batch, samples", [(1, 2, 2), (90, 2, 2), (91, 2, 4), (200, 3, 6), (450, 4, 12)])
def test_token_budget_stops_once_the_budget_is_spent(budget, batch, samples):
    worker = MathWorker(p=0.6, delay=0.005)  # every sample is 45 tokens
    task = run(TokenBudgetMajorityVoteController(token_budget=budget, batch=batch), {"generation": worker},
               "What is 20+22?")
    record = task.customized_result_fields["token_budget_majority_vote"]
    assert record["samples"] == samples == len(worker.seeds) and worker.peak == batch
    assert record["tokens"] == 45 * samples == task.customized_result_fields["generated_tokens"]
    assert record["tokens"] >= budget and record["tokens"] - budget < batch * 45  # at most one batch beyond
    assert record["batches"] == samples // batch and record["stopped"] == "budget"
    assert sorted(worker.seeds) == list(range(samples))


def test_token_budget_per_request_and_a_worker_that_generates_nothing():
    with ScaffoldingLlm(TokenBudgetMajorityVoteController(token_budget=1000), {"generation": MathWorker()}) as llm:
        task = llm.generate("What is 20+22?", token_budget=100)
        assert task.customized_result_fields["token_budget_majority_vote"]["samples"] == 4
    task = run(TokenBudgetMajorityVoteController(token_budget=100), {"generation": MathWorker(text=lambda s: "")},
               "What is 20+22?")
    record = task.customized_result_fields["token_budget_majority_vote"]
    assert record["stopped"] == "no_progress" and record["samples"] == 2 and record["winner"] is None


# --- streaming -------------------------------------------------------------------------------------
def test_dynasor_exits_early_once_the_probes_agree():
    worker = MathWorker(p=1.0, reasoning=200, confident_after=60)
    task = run(DynasorCoTController(probe_interval=20, certainty_threshold=3), {"generation": worker},
               "What is 17+25?")
    record = task.customized_result_fields["dynasor"]
    # probes at 20 and 40 words guess; from 60 on they say 42: three agree at 100
    assert record["probes"] == ["1062", "1082", "42", "42", "42"]
    assert record["exited_early"] and worker.cancels == 1 and task.finish_reason == "early_exit"
    assert task.output_str == "The final answer is 42"
    assert record["stream_tokens"] == 100 < 205  # not the full stream
    assert task.customized_result_fields["generated_tokens"] == 100 + 5 and record["probe_tokens"] == 5
    assert task.customized_result_fields["sub_requests"] == 6


@pytest.mark.parametrize("mode", ["wander", "unsure"])
def test_dynasor_runs_to_the_end_when_the_probes_never_agree(mode):
    worker = MathWorker(p=1.0, reasoning=100, probe_mode=mode)
    task = run(DynasorCoTController(probe_interval=25, certainty_threshold=2), {"generation": worker},
               "What is 17+25?")
    record = task.customized_result_fields["dynasor"]
    assert not record["exited_early"] and worker.cancels == 0
    assert record["stream_tokens"] == 105 and task.finish_reason == "stop"  # the whole stream
    assert len(record["probes"]) == 4 and len(set(record["probes"])) == (4 if mode == "wander" else 1)
    assert task.output_str == "The final answer is 42"  # from the full output
    assert record["reasoning"].endswith("The final answer is 42")


def test_dynasor_probes_a_token_prompt_with_token_ids():
    class TokenWorker(Worker):
        """Streams tokens 100, 101, ...; a probe answers 7 once it sees 4 or more streamed tokens."""

        def __init__(self):
            super().__init__()
            self.probe_inputs = []
            self.register_task_handler(GenerationTask, self.probe)
            self.register_task_handler(StreamGenerationTask, self.step)

        async def step(self, task):
            if task.cancel_flag:
                task.end_flag, task.finish_reason = True, "cancelled"
                return
            task.output_tokens = list(range(100, 100 + len(task.output_tokens or ()) + task.streaming_step))
            task.end_flag = len(task.output_tokens) >= 40

        async def probe(self, task):
            self.probe_inputs.append(task.input_tokens)
            seen = sum(t >= 100 for t in task.input_tokens)
            task.output_str, task.output_tokens = ("7" if seen >= 4 else "hmm"), [5]

    class Tok:
        def encode(self, text, add_special_tokens=True):
            assert not add_special_tokens
            return [9, 9]

    worker = TokenWorker()
    task = run(DynasorCoTController(probe_interval=2, certainty_threshold=2, tokenizer=Tok()),
               {"generation": worker}, [1, 2, 3])
    assert worker.probe_inputs[0] == [1, 2, 3, 100, 101, 9, 9]
    assert task.customized_result_fields["dynasor"]["probes"] == [None, "7", "7"]
    assert task.output_str == "The final answer is 7" and task.output_tokens == list(range(100, 106))
    with pytest.raises(ValueError, match="pass tokenizer= or probe_suffix_tokens="):
        run(DynasorCoTController(), {"generation": worker}, [1, 2, 3])


def test_majority_vote_over_dynasor_samples():
    worker = MathWorker(p=0.6, reasoning=120, confident_after=40)
    task = run(MajorityVoteController(DynasorCoTController(probe_interval=20, certainty_threshold=2),
                                      default_sample_num=5), {"generation": worker}, "What is 17+25?")
    record = task.customized_result_fields["majority_vote"]
    assert record["winner"] == "42" and task.output_str == "The final answer is 42"
    assert worker.cancels == 5  # every sample exited early
    assert task.customized_result_fields["generated_tokens"] < 5 * 125


def test_stream_cancel_stops_at_the_threshold():
    worker = MathWorker(reasoning=100)
    task = run(StreamGenerationController(max_tokens_before_cancel=30, streaming_step=8), {"generation": worker},
               "What is 1+1?")
    assert task.finish_reason == "cancelled" and worker.cancels == 1
    assert 30 <= len(task.output_tokens) < 30 + 8 and len(task.output_tokens) == 32
    assert task.output_str == " ".join(worker.words("What is 1+1?", None)[:32])
    assert task.customized_result_fields["stream"] == {"steps": 5, "cancelled": True, "tokens": 32}

    short = run(StreamGenerationController(max_tokens_before_cancel=500, streaming_step=8),
                {"generation": MathWorker(p=1.0, reasoning=10)}, "What is 1+1?")
    assert short.finish_reason == "stop" and short.output_str.endswith("The final answer is 2")


def test_a_stream_that_makes_no_progress_is_an_error_not_a_hang():
    class Stuck(Worker):
        def __init__(self):
            super().__init__()

            async def step(task):
                task.output_tokens = []

            self.register_task_handler(StreamGenerationTask, step)

    with pytest.raises(ScaffoldingError, match="no new tokens and no end_flag"):
        run(StreamGenerationController(max_tokens_before_cancel=10), {"generation": Stuck()}, "x")


# --- examples --------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", ["run_basic_generation.py", "run_majority_vote.py", "run_best_of_n.py",
                                    "run_stream_cancel.py"])
def test_examples_run(script):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "scaffolding_examples" / script)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
