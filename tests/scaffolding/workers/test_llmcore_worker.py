"""LLMCoreWorker end to end: ScaffoldingLlm -> worker -> LLMServer -> dummy cores (zero-latency and
timed), streaming steps, failures, request building, spreading over cores, a responsive loop."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from llmlib.errors import BackendError
from llmlib.generation import GenerationParams
from scaffolding import (
    Controller, GenerationTask, NativeGenerationController, ScaffoldingLlm, StreamGenerationTask, TaskFailedError,
    TaskStatus, Worker,
)
from scaffolding.workers import TaskInputError
from scaffolding.workers.llmcore_worker import LLMCoreWorker

pytestmark = pytest.mark.timeout(30)


def dummy_output(prompt: list[int], n: int) -> list[int]:
    """What a DummyCore without a dataset generates: a sequence from the prompt's last token."""
    return [((i + prompt[-1]) % 32000) + 3 for i in range(n)]


def test_generation_end_to_end_over_a_zero_latency_core(make_server, tokenizer):
    server = make_server(dummy_zero_latency=True)
    worker = LLMCoreWorker(server, tokenizer, default_max_tokens=6)
    with ScaffoldingLlm(NativeGenerationController({"max_tokens": 4}), {"generation": worker}) as llm:
        task = llm.generate([5, 6, 7])
        assert task.status is TaskStatus.SUCCESS
        assert task.output_tokens == dummy_output([5, 6, 7], 4)
        assert (task.completion_tokens, task.prompt_tokens, task.finish_reason) == (4, 3, "length")
        assert task.ttft_s is None and task.latency_s >= 0  # not streamed: no TTFT
        assert task.output_str == tokenizer.decode(task.output_tokens, skip_special_tokens=True)

        text_task = llm.generate("the quick fox")  # encoded with the tokenizer, BOS first
        ids = tokenizer.encode("the quick fox")
        assert text_task.prompt_tokens == 4 and text_task.output_tokens == dummy_output(ids, 4)
    assert server.counts.issued == server.counts.completed == 2 and server.counts.accounted


def test_finish_reason_is_stop_when_the_output_ends_early(make_server):
    server = make_server(dummy_zero_latency=True, dummy_output_len="3")
    worker = LLMCoreWorker(server, default_max_tokens=8)
    with ScaffoldingLlm(NativeGenerationController(), {"generation": worker}) as llm:
        task = llm.generate([9, 9])
    assert task.output_tokens == dummy_output([9, 9], 3) and task.finish_reason == "stop"
    assert task.output_str is None  # no tokenizer: no text


def test_timed_core_gives_ttft_and_latency_when_streaming(make_server):
    server = make_server(dummy_ttft_ms=60, dummy_tpot_ms=5)
    worker = LLMCoreWorker(server, default_max_tokens=10, streaming=True)
    with ScaffoldingLlm(NativeGenerationController(), {"generation": worker}) as llm:
        task = llm.generate([1, 2, 3])
    assert task.output_tokens == dummy_output([1, 2, 3], 10)
    assert 0.05 <= task.ttft_s < 0.5
    assert task.latency_s >= task.ttft_s + 0.04  # 9 more tokens at 5 ms


@pytest.mark.parametrize("policy", ["load_balancing", "round_robin", "token_aware"])
def test_many_tasks_are_spread_over_the_cores_by_the_server_policy(make_server, policy):
    server = make_server(n_cores=4, policy=policy, dummy_ttft_ms=20, dummy_tpot_ms=1)
    worker = LLMCoreWorker(server, default_max_tokens=8)

    class FanOut(Controller):
        def process(self, tasks, **kwargs):
            subs = [GenerationTask(input_tokens=[3, i + 10]) for i in range(10)]
            yield subs
            return [t.output_tokens for t in subs]

    with ScaffoldingLlm(FanOut(), {"generation": worker}) as llm:
        t0 = time.monotonic()
        results = llm.generate([[1], [2], [3], [4]])  # 4 requests x 10 tasks in flight at once
        elapsed = time.monotonic() - t0
    assert results == [[dummy_output([3, i + 10], 8) for i in range(10)]] * 4
    stats = server.core_stats()
    assert sum(s["completed"] for s in stats) == 40
    assert all(s["completed"] >= 5 for s in stats), stats  # every core took a share
    if policy == "round_robin":
        assert [s["completed"] for s in stats] == [10, 10, 10, 10]
    assert server.counts.accounted and server.num_pending == 0
    assert elapsed < 1.0  # concurrent: 40 sequential requests would take >= 40 x 27 ms


def test_the_event_loop_stays_free_while_requests_wait(make_server):
    """A slow backend request and a quick task of another worker in the same yield: the quick one
    finishes long before the slow one, so the worker never blocked the loop."""
    server = make_server(dummy_ttft_ms=400, dummy_tpot_ms=1)

    class Quick(Worker):
        def __init__(self):
            super().__init__()
            self.register_task_handler(GenerationTask, self.run)

        async def run(self, task):
            await asyncio.sleep(0.01)
            task.finished_at = time.monotonic()

    class Both(Controller):
        def process(self, tasks, **kwargs):
            slow = GenerationTask(input_tokens=[4], max_tokens=2, worker_tag="core")
            quick = GenerationTask(input_tokens=[4], worker_tag="quick")
            t0 = time.monotonic()
            yield [slow, quick]
            return quick.finished_at - t0, time.monotonic() - t0

    workers = {"core": LLMCoreWorker(server, default_max_tokens=2), "quick": Quick()}
    with ScaffoldingLlm(Both(), workers) as llm:
        quick_s, total_s = llm.generate("x")
    assert quick_s < 0.3 and total_s >= 0.4  # the quick task did not wait for the slow one


def test_request_ids_are_negative_unique_and_never_loadgen_ids(make_server):
    worker = LLMCoreWorker(make_server(dummy_zero_latency=True), default_max_tokens=4, stop_token_ids=(2,))
    ids = [worker.build_request(GenerationTask(input_tokens=[1]), streaming=False).request_id for _ in range(50)]
    assert all(i < 0 for i in ids) and len(set(ids)) == 50


def test_request_carries_sampling_stops_and_defaults(make_server, tokenizer):
    worker = LLMCoreWorker(make_server(dummy_zero_latency=True), tokenizer, default_max_tokens=7,
                           stop_token_ids=(2,), default_sampling={"temperature": 0.5, "top_k": 4})
    tokenizer.encode("end")  # a single-token stop string
    req = worker.build_request(GenerationTask(input_tokens=[5, 6], temperature=0.9, seed=3, stop=["end", 44]),
                               streaming=True)
    assert req.input_tokens.dtype == np.int32 and req.input_tokens.tolist() == [5, 6]
    assert req.max_new_tokens == 7 and req.streaming and req.sample_index == -1
    assert req.stop_token_ids == (2, 44, tokenizer.vocab["end"])
    p = req.params  # the task's value wins over the default, the default over the run's
    assert (p.temperature, p.top_k, p.seed, p.top_p, p.min_new_tokens) == (0.9, 4, 3, 1.0, 0)
    run = GenerationParams(max_new_tokens=3, temperature=0.7, top_p=0.5, stop_token_ids=(9,), min_new_tokens=2)
    plain = LLMCoreWorker(worker.server, default_max_tokens=3, stop_token_ids=(9,), params=run).build_request(
        GenerationTask(input_tokens=[1]), streaming=False)
    assert plain.params.temperature == 0.7 and plain.params.top_p == 0.5 and plain.stop_token_ids == (9,)
    assert plain.min_new_tokens == 0  # min_new_tokens is the benchmark's, for LoadGen samples only
    bare = LLMCoreWorker(worker.server, default_max_tokens=3).build_request(GenerationTask(input_tokens=[1]),
                                                                           streaming=False)
    assert bare.params.greedy and bare.stop_token_ids == () and bare.max_new_tokens == 3


class Given(Controller):
    """Runs the task it was built with (each request on its own copy)."""

    def __init__(self, task):
        self.task = task

    def process(self, tasks, **kwargs):
        yield [self.task]
        return self.task


@pytest.mark.parametrize("task, message", [
    (GenerationTask(input_str="hello"), "no tokenizer to encode input_str"),
    (GenerationTask(), "no prompt"),
    (GenerationTask(input_tokens=[]), "no tokens"),
    (GenerationTask(input_tokens=[1.5, 2.0]), "flat list of token ids"),
    (GenerationTask(input_tokens=[1], n=3), "n=3"),
    (GenerationTask(input_tokens=[1], num_logprobs=2), "log-probabilities"),
    (GenerationTask(input_tokens=[1], max_tokens=0), "max_tokens=0"),
    (GenerationTask(input_tokens=[1], stop=["two words"]), "needs a tokenizer"),
])
def test_tasks_the_worker_cannot_run_fail_with_a_clear_error(make_server, task, message):
    worker = LLMCoreWorker(make_server(dummy_zero_latency=True), default_max_tokens=4)
    with ScaffoldingLlm(Given(task), {"generation": worker}) as llm:
        with pytest.raises(TaskFailedError, match=message) as info:
            llm.generate("ignored")
    assert isinstance(info.value.tasks[0].error, TaskInputError)
    assert worker.server.counts.issued == 0  # nothing reached the server


def test_a_multi_token_stop_string_is_refused(make_server, tokenizer):
    worker = LLMCoreWorker(make_server(dummy_zero_latency=True), tokenizer, default_max_tokens=4)
    with pytest.raises(TaskInputError, match="'two words' is 2 tokens"):
        worker.build_request(GenerationTask(input_tokens=[1], stop=["two words"]), streaming=False)


def test_backend_failures_fail_the_task_and_are_accounted(make_server):
    server = make_server(dummy_zero_latency=True, dummy_fail_rate=1.0)
    worker = LLMCoreWorker(server, default_max_tokens=4)
    with ScaffoldingLlm(NativeGenerationController(), {"generation": worker}) as llm:
        with pytest.raises(TaskFailedError, match="injected failure") as info:
            llm.generate([1, 2])
    assert isinstance(info.value.tasks[0].error, BackendError)
    assert server.counts.failed == 1 and server.counts.accounted


def test_timed_failures_arrive_from_the_engine_thread(make_server):
    server = make_server(dummy_ttft_ms=10, dummy_tpot_ms=1, dummy_fail_rate=1.0)
    worker = LLMCoreWorker(server, default_max_tokens=4)
    with ScaffoldingLlm(NativeGenerationController(), {"generation": worker}) as llm:
        with pytest.raises(TaskFailedError, match="injected failure"):
            llm.generate([1, 2])


class Streaming(Controller):
    """Steps a StreamGenerationTask to its end; optionally cancels after the first step."""

    def __init__(self, step=1, cancel_after_first=False):
        self.step, self.cancel = step, cancel_after_first

    def process(self, tasks, **kwargs):
        task = StreamGenerationTask(input_tokens=[7, 8], max_tokens=20, streaming_step=self.step)
        seen = []
        while not task.end_flag:
            yield [task]
            seen.append((len(task.output_tokens), task.end_flag))
            if self.cancel:
                task.cancel_flag = True
        return task, seen


def test_stream_steps_come_token_by_token_on_a_streaming_core(make_server):
    server = make_server(dummy_ttft_ms=30, dummy_tpot_ms=10)  # first token at 30 ms, one every 10 ms after
    with ScaffoldingLlm(Streaming(), {"generation": LLMCoreWorker(server, default_max_tokens=4)}) as llm:
        task, seen = llm.generate("x")
    lengths = [n for n, _ in seen]
    assert seen[0] == (1, False) and seen[-1] == (20, True) and not any(end for _, end in seen[:-1])
    assert lengths == sorted(lengths) and len(seen) >= 10  # the chunks, not a first token and the whole output
    assert task.output_tokens == dummy_output([7, 8], 20) and task.finish_reason == "length"
    assert 0.02 <= task.ttft_s < task.latency_s


def test_a_larger_streaming_step_waits_for_that_many_more_tokens(make_server):
    server = make_server(dummy_ttft_ms=30, dummy_tpot_ms=2)
    with ScaffoldingLlm(Streaming(step=4), {"generation": LLMCoreWorker(server, default_max_tokens=4)}) as llm:
        task, seen = llm.generate("x")
    lengths = [n for n, _ in seen]
    assert seen[-1] == (20, True) and lengths[0] >= 4
    assert all(b - a >= 4 for a, b in zip(lengths[:-2], lengths[1:-1]))  # each step >= 4 more, but the last


def test_cancel_stops_the_backend_request_and_keeps_what_the_controller_saw(make_server):
    server = make_server(dummy_ttft_ms=30, dummy_tpot_ms=50)  # 20 tokens would take about a second
    t0 = time.monotonic()
    with ScaffoldingLlm(Streaming(cancel_after_first=True),
                        {"generation": LLMCoreWorker(server, default_max_tokens=4)}) as llm:
        task, seen = llm.generate("x")
    assert time.monotonic() - t0 < 0.6  # it did not wait for the whole output
    assert seen == [(1, False), (1, True)]
    assert task.output_tokens == dummy_output([7, 8], 1) and task.finish_reason == "cancelled"
    assert task.completion_tokens == 1
    assert 1 <= task.customized_result_fields["generated_tokens"] < 20  # the backend stopped early
    assert server.counts.failed == 1 and server.counts.accounted  # ended by the cancel, exactly once
    assert "cancelled by the controller" in next(iter(server.counts.errors))


def test_a_stream_cancelled_before_it_starts_sends_nothing(make_server):
    server = make_server(dummy_zero_latency=True)

    class CancelFirst(Controller):
        def process(self, tasks, **kwargs):
            task = StreamGenerationTask(input_tokens=[1], cancel_flag=True)
            yield [task]
            return task

    with ScaffoldingLlm(CancelFirst(), {"generation": LLMCoreWorker(server, default_max_tokens=4)}) as llm:
        task = llm.generate("x")
    assert task.end_flag and task.finish_reason == "cancelled" and task.output_tokens == []
    assert server.counts.issued == 0


def test_a_failed_stream_fails_its_step(make_server):
    server = make_server(dummy_ttft_ms=5, dummy_tpot_ms=1, dummy_fail_rate=1.0)
    with ScaffoldingLlm(Streaming(), {"generation": LLMCoreWorker(server, default_max_tokens=4)}) as llm:
        with pytest.raises(TaskFailedError, match="injected failure"):
            llm.generate("x")


def test_constructor_checks_its_arguments(make_server):
    server = make_server(dummy_zero_latency=True)
    with pytest.raises(ValueError, match="default_max_tokens=0"):
        LLMCoreWorker(server, default_max_tokens=0)
    with pytest.raises(ValueError, match="stop_token_ids entry 'x'"):
        LLMCoreWorker(server, default_max_tokens=1, stop_token_ids=["x"])
    with pytest.raises(ValueError, match="unknown fields \\['temp'\\]"):
        LLMCoreWorker(server, default_max_tokens=1, default_sampling={"temp": 1.0})
    with pytest.raises(TypeError, match="expected an llmlib LLMServer"):
        LLMCoreWorker(object(), default_max_tokens=1)
