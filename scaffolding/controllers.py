"""Test-time-compute methods as controllers: majority vote, best-of-N with reward controllers, token
budget majority vote, Dynasor-CoT early exit by probing, and streaming with cancellation.

Every controller fills in the request's own task (output of the chosen sample, `status` SUCCESS),
returns that task, and records what it did in `task.customized_result_fields`: `sub_requests` (tasks
sent to workers) and `generated_tokens` (tokens generated for them), plus one entry named after the
method. Generation sub-controllers default to `NativeGenerationController`; each sample runs on its
own clone of the sub-controller and its own copy of the task, so nothing mutable is shared between
samples or requests (ScaffoldingLlm clones the whole controller per request).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Generator, Sequence
from typing import Any

from scaffolding.controller import Controller, NativeGenerationController, ParallelProcess, ProcessGenerator
from scaffolding.math_utils import extract_answer, numeric_equal_or_string_equal
from scaffolding.scaffolding_llm import ScaffoldingError
from scaffolding.task import GenerationTask, RewardTask, StreamGenerationTask, Task, TaskStatus
from scaffolding.task_collection import GenerationTokenCounter, with_task_collection

__all__ = [
    "HESITATION_WORDS", "BestOfNController", "DynasorCoTController", "MajorityVoteController", "PRMController",
    "RewardController", "StreamGenerationController", "TokenBudgetMajorityVoteController", "majority_vote",
]

AnswerExtractor = Callable[[str | None], "str | None"]
Equivalence = Callable[[Any, Any], bool]

#: fields a worker fills in; everything else on a GenerationTask is an input
_RESULT_FIELDS = ("output_str", "output_tokens", "finish_reason", "logprobs", "ttft_s", "latency_s",
                  "prompt_tokens", "completion_tokens")
_NOT_INPUTS = frozenset(_RESULT_FIELDS) | {"customized_result_fields", "status", "error"}
_GENERATION_INPUTS = tuple(f.name for f in dataclasses.fields(GenerationTask) if f.name not in _NOT_INPUTS)


# --- helpers ---------------------------------------------------------------------------------------
def _positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name}={value!r}; expected an integer >= 1")
    return value


def _the_task(tasks: Sequence[Task], owner: str) -> GenerationTask:
    if len(tasks) != 1 or not isinstance(tasks[0], GenerationTask):
        kinds = ", ".join(type(t).__name__ for t in tasks) or "nothing"
        raise ValueError(f"{owner}.process: expected exactly one GenerationTask, got {kinds}")
    return tasks[0]


def _input_copy(task: GenerationTask, cls: type[GenerationTask] = GenerationTask, **changes: Any) -> GenerationTask:
    """A new task with `task`'s inputs (lists copied) and no results."""
    values = {name: getattr(task, name) for name in _GENERATION_INPUTS}
    for name in ("input_tokens", "stop"):
        if values[name] is not None:
            values[name] = list(values[name])
    values.update(changes)
    return cls(**values)


def _copy_results(src: GenerationTask, dst: GenerationTask) -> None:
    for name in _RESULT_FIELDS:
        value = getattr(src, name)
        setattr(dst, name, list(value) if isinstance(value, list) else value)


def _n_tokens(task: GenerationTask) -> int:
    if task.completion_tokens is not None:
        return task.completion_tokens
    return len(task.output_tokens or ())


def _generated_tokens(task: GenerationTask) -> int:
    """Tokens generated on behalf of a task: a composite sub-controller's own count when it recorded
    one, else the task's completion tokens."""
    recorded = task.customized_result_fields.get("generated_tokens")
    return int(recorded) if recorded is not None else _n_tokens(task)


def _sub_requests(task: GenerationTask) -> int:
    return int(task.customized_result_fields.get("sub_requests", 1))


def _finish(task: GenerationTask, method: str, record: dict[str, Any], *, sub_requests: int,
            generated_tokens: int) -> GenerationTask:
    task.customized_result_fields[method] = record
    task.customized_result_fields["sub_requests"] = sub_requests
    task.customized_result_fields["generated_tokens"] = generated_tokens
    task.status, task.error = TaskStatus.SUCCESS, None
    return task


def _text_of(sample: GenerationTask, result: Any) -> str | None:
    """What a sub-controller produced: its returned task or text, else what it left on the task."""
    if isinstance(result, GenerationTask):
        return result.output_str
    if isinstance(result, str):
        return result
    return sample.output_str


def _forward_counting(gen: ProcessGenerator, counter: list[int]) -> ProcessGenerator:
    """`yield from gen`, adding the number of tasks of each list it yields to counter[0]."""
    error: BaseException | None = None
    while True:
        try:
            item = gen.throw(error) if error is not None else gen.send(None)
        except StopIteration as stop:
            return stop.value
        error = None
        if isinstance(item, (list, tuple)):
            counter[0] += len(item)
        try:
            yield item
        except Exception as err:  # a failed task: let the inner controller handle it or re-raise
            error = err


def majority_vote(answers: Sequence[str | None], equivalence: Equivalence = numeric_equal_or_string_equal
                  ) -> tuple[int | None, dict[str, int]]:
    """Group equivalent answers (None is no vote); the biggest group wins, ties to the group whose
    first answer came earliest. Returns (index of the first answer of the winning group, votes by
    each group's first answer); (None, {}) when no answer parsed."""
    groups: list[tuple[str, int, int]] = []  # (representative, first index, votes)
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for g, (rep, first, votes) in enumerate(groups):
            if equivalence(rep, answer):
                groups[g] = (rep, first, votes + 1)
                break
        else:
            groups.append((answer, i, 1))
    if not groups:
        return None, {}
    best = max(groups, key=lambda g: (g[2], -g[1]))
    votes: dict[str, int] = {}
    for rep, _, count in groups:
        votes[rep] = votes.get(rep, 0) + count
    return best[1], votes


class _Sampling:
    """Runs a generation sub-controller N times concurrently, each clone on its own copy of the task
    with its own seed (base seed: the task's, else `base_seed`)."""

    def __init__(self, generation_controller: Controller | None, base_seed: int):
        self.generation_controller = generation_controller or NativeGenerationController()
        self.base_seed = base_seed

    def sample(self, task: GenerationTask, n: int, first_index: int, kwargs: dict[str, Any]
               ) -> Generator[Any, None, tuple[list[GenerationTask], list[Any]]]:
        base = task.seed if task.seed is not None else self.base_seed
        samples = [_input_copy(task, seed=base + first_index + i) for i in range(n)]
        pp = ParallelProcess([self.generation_controller.clone() for _ in samples], [[s] for s in samples],
                             [dict(kwargs) for _ in samples])
        yield pp
        return samples, list(pp.results)


# --- majority vote ---------------------------------------------------------------------------------
class MajorityVoteController(Controller):
    """Samples `sample_num` answers concurrently and returns the sample whose answer won the vote.

    Per-request kwarg `sample_num` overrides `default_sample_num`; other kwargs reach the generation
    sub-controller. Records `majority_vote = {answers, votes, winner, winner_index, samples}`. When
    no answer parses, the first sample's output is returned with `winner=None`."""

    def __init__(self, generation_controller: Controller | None = None, default_sample_num: int = 8, *,
                 answer_extractor: AnswerExtractor = extract_answer,
                 equivalence: Equivalence = numeric_equal_or_string_equal, base_seed: int = 0):
        self.default_sample_num = _positive_int("default_sample_num", default_sample_num, type(self).__name__)
        self.sampling = _Sampling(generation_controller, base_seed)
        self.answer_extractor = answer_extractor
        self.equivalence = equivalence

    @property
    def generation_controller(self) -> Controller:
        return self.sampling.generation_controller

    def process(self, tasks: list[Task], sample_num: int | None = None, **kwargs: Any) -> ProcessGenerator:
        task = _the_task(tasks, type(self).__name__)
        n = _positive_int("sample_num", self.default_sample_num if sample_num is None else sample_num,
                          type(self).__name__)
        samples, results = yield from self.sampling.sample(task, n, 0, kwargs)
        return self._vote(task, samples, results, "majority_vote", {})

    def _vote(self, task: GenerationTask, samples: list[GenerationTask], results: list[Any], method: str,
              extra: dict[str, Any]) -> GenerationTask:
        answers = [self.answer_extractor(_text_of(s, r)) for s, r in zip(samples, results)]
        winner_index, votes = majority_vote(answers, self.equivalence)
        chosen = 0 if winner_index is None else winner_index
        _copy_results(samples[chosen], task)
        if isinstance(results[chosen], str) and samples[chosen].output_str is None:
            task.output_str = results[chosen]
        record = {"answers": answers, "votes": votes,
                  "winner": None if winner_index is None else answers[winner_index],
                  "winner_index": winner_index, "samples": len(samples), **extra}
        return _finish(task, method, record, sub_requests=sum(_sub_requests(s) for s in samples),
                       generated_tokens=sum(_generated_tokens(s) for s in samples))


class TokenBudgetMajorityVoteController(MajorityVoteController):
    """Majority vote that keeps sampling, `batch` samples at a time (concurrently), until the tokens
    generated reach `token_budget` (per-request kwarg `token_budget` overrides). The budget is
    checked before each batch, so the spend ends at most one batch past it. Records
    `token_budget_majority_vote = {..., token_budget, tokens, batches, stopped}`."""

    def __init__(self, generation_controller: Controller | None = None, token_budget: int = 4096, batch: int = 2, *,
                 max_samples: int | None = None, answer_extractor: AnswerExtractor = extract_answer,
                 equivalence: Equivalence = numeric_equal_or_string_equal, base_seed: int = 0):
        super().__init__(generation_controller, batch, answer_extractor=answer_extractor, equivalence=equivalence,
                         base_seed=base_seed)
        name = type(self).__name__
        self.token_budget = _positive_int("token_budget", token_budget, name)
        self.batch = _positive_int("batch", batch, name)
        self.max_samples = None if max_samples is None else _positive_int("max_samples", max_samples, name)

    @with_task_collection("generation_tokens", GenerationTokenCounter)
    def process(self, tasks: list[Task], token_budget: int | None = None, **kwargs: Any) -> ProcessGenerator:
        task = _the_task(tasks, type(self).__name__)
        budget = _positive_int("token_budget", self.token_budget if token_budget is None else token_budget,
                               type(self).__name__)
        kwargs.pop("sample_num", None)  # the budget decides how many samples
        counter: GenerationTokenCounter = self.task_collections["generation_tokens"]
        samples: list[GenerationTask] = []
        results: list[Any] = []
        uncounted = 0  # tokens composite sub-controllers generated in tasks the counter never saw
        batches, stopped = 0, "budget"
        while counter.generation_token_count + uncounted < budget:
            if self.max_samples is not None and len(samples) >= self.max_samples:
                stopped = "max_samples"
                break
            n = self.batch if self.max_samples is None else min(self.batch, self.max_samples - len(samples))
            before = counter.generation_token_count + uncounted
            new, new_results = yield from self.sampling.sample(task, n, len(samples), kwargs)
            batches += 1
            samples += new
            results += new_results
            uncounted += sum(max(_generated_tokens(s) - _n_tokens(s), 0) for s in new)
            if counter.generation_token_count + uncounted == before:
                stopped = "no_progress"  # a worker that generates nothing would otherwise loop forever
                break
        extra = {"token_budget": budget, "tokens": counter.generation_token_count + uncounted,
                 "batches": batches, "stopped": stopped}
        return self._vote(task, samples, results, "token_budget_majority_vote", extra)


# --- reward ----------------------------------------------------------------------------------------
class RewardController(Controller):
    """Scores candidates: one RewardTask per candidate to worker `worker_tag`, all in one yield (run
    concurrently). `process(candidates)` returns the scores in order; a score that is not a finite
    real number is an error naming the worker."""

    def __init__(self, worker_tag: str = "reward"):
        self.worker_tag = worker_tag

    def process(self, tasks: list[Task], **kwargs: Any) -> ProcessGenerator:
        reward_tasks = [self.reward_task(t.input_str, t.output_str, t.output_tokens) for t in tasks]
        yield reward_tasks
        return [self._score(rt, i) for i, rt in enumerate(reward_tasks)]

    def reward_task(self, prompt: str | None, candidate: str | None, tokens: list[int] | None) -> RewardTask:
        return RewardTask(input_str=prompt, candidate=candidate,
                          candidate_tokens=None if tokens is None else list(tokens), worker_tag=self.worker_tag)

    def _score(self, task: RewardTask, index: int) -> float:
        score = task.score
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise ScaffoldingError(f"{type(self).__name__}: worker {self.worker_tag!r} left RewardTask.score="
                                   f"{score!r} for candidate {index}; expected a finite real number")
        return float(score)


class PRMController(RewardController):
    """Process reward: splits each candidate into steps at `step_separator`, scores every prefix
    (one RewardTask per step, all concurrently) and aggregates a candidate's step scores with
    `aggregate` ("min", "last", "mean" or "prod")."""

    _AGGREGATES: dict[str, Callable[[list[float]], float]] = {
        "min": min, "last": lambda s: s[-1], "mean": lambda s: sum(s) / len(s), "prod": math.prod,
    }

    def __init__(self, worker_tag: str = "reward", step_separator: str = "\n\n", aggregate: str = "min"):
        super().__init__(worker_tag)
        if aggregate not in self._AGGREGATES:
            raise ValueError(f"PRMController: aggregate={aggregate!r}; expected one of {sorted(self._AGGREGATES)}")
        if not step_separator:
            raise ValueError("PRMController: step_separator must be a non-empty string")
        self.step_separator = step_separator
        self.aggregate = aggregate

    def steps(self, text: str | None) -> list[str]:
        parts = [p for p in (text or "").split(self.step_separator) if p.strip()]
        return parts or [text or ""]

    def process(self, tasks: list[Task], **kwargs: Any) -> ProcessGenerator:
        per_candidate: list[list[RewardTask]] = []
        for t in tasks:
            steps = self.steps(t.output_str)
            prefixes = [self.step_separator.join(steps[:j + 1]) for j in range(len(steps))]
            per_candidate.append([self.reward_task(t.input_str, p, None) for p in prefixes])
        yield [rt for rts in per_candidate for rt in rts]
        combine = self._AGGREGATES[self.aggregate]
        return [combine([self._score(rt, i) for rt in rts]) for i, rts in enumerate(per_candidate)]


class BestOfNController(Controller):
    """Samples N candidates concurrently, scores them with a reward controller and returns the best
    (ties to the earliest). Per-request kwarg `sample_num` overrides `default_sample_num`. Records
    `best_of_n = {scores, best_index, samples}`."""

    def __init__(self, generation_controller: Controller | None = None, reward_controller: Controller | None = None,
                 default_sample_num: int = 4, *, base_seed: int = 0):
        self.default_sample_num = _positive_int("default_sample_num", default_sample_num, type(self).__name__)
        self.sampling = _Sampling(generation_controller, base_seed)
        self.reward_controller = reward_controller or RewardController()

    @property
    def generation_controller(self) -> Controller:
        return self.sampling.generation_controller

    def process(self, tasks: list[Task], sample_num: int | None = None, **kwargs: Any) -> ProcessGenerator:
        task = _the_task(tasks, type(self).__name__)
        n = _positive_int("sample_num", self.default_sample_num if sample_num is None else sample_num,
                          type(self).__name__)
        samples, results = yield from self.sampling.sample(task, n, 0, kwargs)
        for s, r in zip(samples, results):
            if s.output_str is None and isinstance(r, str):
                s.output_str = r
        reward_tasks = [0]
        scores = yield from _forward_counting(self.reward_controller.clone().process(samples, **kwargs), reward_tasks)
        if len(scores) != n:
            raise ScaffoldingError(f"BestOfNController: the reward controller returned {len(scores)} scores for "
                                   f"{n} candidates")
        best = max(range(n), key=lambda i: (scores[i], -i))
        _copy_results(samples[best], task)
        return _finish(task, "best_of_n", {"scores": list(scores), "best_index": best, "samples": n},
                       sub_requests=sum(_sub_requests(s) for s in samples) + reward_tasks[0],
                       generated_tokens=sum(_generated_tokens(s) for s in samples))


# --- streaming -------------------------------------------------------------------------------------
def _stream_step(stream: StreamGenerationTask, owner: str) -> ProcessGenerator:
    """Yield the stream task once; a step that neither ends nor adds tokens is an error (it would
    otherwise loop forever)."""
    before = _n_tokens(stream)
    yield [stream]
    if not stream.end_flag and _n_tokens(stream) <= before:
        raise ScaffoldingError(f"{owner}: worker {stream.worker_tag!r} returned a stream step with no new tokens "
                               f"and no end_flag (at {before} tokens)")


def _cancel(stream: StreamGenerationTask) -> ProcessGenerator:
    """Set cancel_flag and hand the task to the worker once more so it can stop the generation."""
    stream.cancel_flag = True
    yield [stream]


class StreamGenerationController(Controller):
    """Streams the request `streaming_step` tokens at a time and cancels once `max_tokens_before_cancel`
    tokens have arrived. The request's task gets the (partial) output with finish_reason 'cancelled',
    or the worker's own finish_reason when generation ended first. Records
    `stream = {steps, cancelled, tokens}`."""

    def __init__(self, max_tokens_before_cancel: int, streaming_step: int = 1, *, worker_tag: str = "generation",
                 sampling_params: dict[str, Any] | None = None):
        name = type(self).__name__
        self.max_tokens_before_cancel = _positive_int("max_tokens_before_cancel", max_tokens_before_cancel, name)
        if isinstance(streaming_step, bool) or not isinstance(streaming_step, int) or streaming_step < 0:
            raise ValueError(f"{name}: streaming_step={streaming_step!r}; expected an integer >= 0")
        self.streaming_step = streaming_step
        self.worker_tag = worker_tag
        self.sampling_params = dict(sampling_params or {})

    def process(self, tasks: list[Task], max_tokens_before_cancel: int | None = None,
                **kwargs: Any) -> ProcessGenerator:
        task = _the_task(tasks, type(self).__name__)
        limit = _positive_int("max_tokens_before_cancel",
                              self.max_tokens_before_cancel if max_tokens_before_cancel is None
                              else max_tokens_before_cancel, type(self).__name__)
        stream = _input_copy(task, StreamGenerationTask, worker_tag=self.worker_tag, streaming_step=self.streaming_step)
        for name, value in self.sampling_params.items():
            if getattr(stream, name) is None:
                setattr(stream, name, value)
        steps, cancelled = 0, False
        while not stream.end_flag:
            yield from _stream_step(stream, type(self).__name__)
            steps += 1
            if not stream.end_flag and _n_tokens(stream) >= limit:
                yield from _cancel(stream)
                steps += 1
                cancelled = True
                break
        _copy_results(stream, task)
        if cancelled:
            task.finish_reason = "cancelled"
        tokens = _n_tokens(stream)
        return _finish(task, "stream", {"steps": steps, "cancelled": cancelled, "tokens": tokens},
                       sub_requests=1, generated_tokens=tokens)


#: words that make a Dynasor probe's answer uncertain (the probe did not commit to an answer)
HESITATION_WORDS = ("wait", "hmm", "not sure", "however", "alternatively", "double-check", "let me", "maybe",
                    "unsure", "perhaps")


class DynasorCoTController(Controller):
    """Dynasor-CoT: streams the reasoning `probe_interval` tokens at a time; after each step it asks
    for the answer so far (a short generation of prompt + partial output + `probe_suffix`). Once the
    last `certainty_threshold` probe answers are all parsed and equivalent, it cancels the stream.
    A probe that hesitates (says one of `hesitation_words`) counts as no answer. Otherwise the
    stream runs to its end and the answer comes from the full output (or the last probe that
    parsed). A token-id prompt is probed with token ids: give `tokenizer` (encodes the suffix once)
    or `probe_suffix_tokens`; answers are read from the probes' `output_str`.

    The request's task gets `output_str = "The final answer is X"` (the streamed output itself
    when no answer was found) and the stream's tokens. Records `dynasor = {probes, answer,
    exited_early, stream_tokens, probe_tokens, reasoning}`."""

    def __init__(self, probe_interval: int = 32, certainty_threshold: int = 3, *, max_tokens: int | None = None,
                 probe_suffix: str = "\n... Oh, I suddenly got the answer to the whole problem. The final answer is",
                 probe_max_tokens: int = 16, answer_extractor: AnswerExtractor = extract_answer,
                 equivalence: Equivalence = numeric_equal_or_string_equal, worker_tag: str = "generation",
                 hesitation_words: Sequence[str] = HESITATION_WORDS, sampling_params: dict[str, Any] | None = None,
                 probe_sampling_params: dict[str, Any] | None = None, tokenizer: Any = None,
                 probe_suffix_tokens: Sequence[int] | None = None):
        name = type(self).__name__
        if probe_suffix_tokens is None and tokenizer is not None:  # encoded once: clones never copy a tokenizer
            try:
                probe_suffix_tokens = tokenizer.encode(probe_suffix, add_special_tokens=False)
            except TypeError:
                probe_suffix_tokens = tokenizer.encode(probe_suffix)
        self.probe_suffix_tokens = None if probe_suffix_tokens is None else [int(t) for t in probe_suffix_tokens]
        self.hesitation_words = tuple(hesitation_words)
        self._hesitation = (re.compile(r"\b(?:" + "|".join(re.escape(w) for w in self.hesitation_words) + r")\b",
                                       re.IGNORECASE) if self.hesitation_words else None)
        self.probe_interval = _positive_int("probe_interval", probe_interval, name)
        self.certainty_threshold = _positive_int("certainty_threshold", certainty_threshold, name)
        self.max_tokens = None if max_tokens is None else _positive_int("max_tokens", max_tokens, name)
        self.probe_max_tokens = _positive_int("probe_max_tokens", probe_max_tokens, name)
        self.probe_suffix = probe_suffix
        self.answer_extractor = answer_extractor
        self.equivalence = equivalence
        self.worker_tag = worker_tag
        self.sampling_params = dict(sampling_params or {})
        self.probe_sampling_params = dict(probe_sampling_params or {})

    def process(self, tasks: list[Task], **kwargs: Any) -> ProcessGenerator:
        task = _the_task(tasks, type(self).__name__)
        if task.input_str is None and task.input_tokens is None:
            raise ValueError("DynasorCoTController: the task has no prompt (input_str or input_tokens)")
        if task.input_str is None and self.probe_suffix_tokens is None:
            raise ValueError("DynasorCoTController: the prompt is token ids, so probes need the suffix as token "
                             "ids: pass tokenizer= or probe_suffix_tokens=")
        stream = _input_copy(task, StreamGenerationTask, worker_tag=self.worker_tag,
                             streaming_step=self.probe_interval)
        if stream.max_tokens is None:
            stream.max_tokens = self.max_tokens
        for name, value in self.sampling_params.items():
            if getattr(stream, name) is None:
                setattr(stream, name, value)
        probes: list[str | None] = []
        probe_tokens = 0
        exited_early = False
        while not stream.end_flag:
            yield from _stream_step(stream, type(self).__name__)
            if stream.end_flag:
                break
            probe = self._probe(task, stream)
            yield [probe]
            probe_tokens += _n_tokens(probe)
            probes.append(self._probe_answer(probe.output_str or ""))
            if self._certain(probes):
                yield from _cancel(stream)
                exited_early = True
                break
        reasoning = stream.output_str
        if exited_early:
            answer = probes[-1]
        else:
            answer = self.answer_extractor(reasoning)
            if answer is None:
                answer = next((p for p in reversed(probes) if p is not None), None)
        _copy_results(stream, task)
        if answer is not None:
            task.output_str = f"The final answer is {answer}"
        if exited_early:
            task.finish_reason = "early_exit"
        stream_tokens = _n_tokens(stream)
        record = {"probes": probes, "answer": answer, "exited_early": exited_early, "stream_tokens": stream_tokens,
                  "probe_tokens": probe_tokens, "reasoning": reasoning}
        return _finish(task, "dynasor", record, sub_requests=1 + len(probes),
                       generated_tokens=stream_tokens + probe_tokens)

    def _probe(self, task: GenerationTask, stream: StreamGenerationTask) -> GenerationTask:
        """Prompt + partial output + suffix: as text for a text prompt, as token ids for a token one."""
        probe = GenerationTask(max_tokens=self.probe_max_tokens, seed=task.seed, worker_tag=self.worker_tag)
        if task.input_str is not None:
            probe.input_str = f"{task.input_str}{stream.output_str or ''}{self.probe_suffix}"
        else:
            probe.input_tokens = [*task.input_tokens, *(stream.output_tokens or ()), *self.probe_suffix_tokens]
        for name, value in {**self.sampling_params, **self.probe_sampling_params}.items():
            if name != "max_tokens" and getattr(probe, name) is None:
                setattr(probe, name, value)
        return probe

    def _probe_answer(self, continuation: str) -> str | None:
        """The answer a probe states; None when it hesitates (any of `hesitation_words`)."""
        if self._hesitation is not None and self._hesitation.search(continuation):
            return None
        return self.answer_extractor(self.probe_suffix + continuation)

    def _certain(self, probes: list[str | None]) -> bool:
        k = self.certainty_threshold
        last = probes[-k:]
        if len(last) < k or any(p is None for p in last):
            return False
        return all(self.equivalence(last[0], p) for p in last[1:])
