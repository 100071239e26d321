"""TrtllmWorker against the fake tensorrt_llm (tests/fakes): generate_async with SamplingParams,
streamed steps, abort on cancel, engine errors, from_model, shutdown and the missing package."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import pytest

from llmlib.errors import BackendError
from scaffolding import (
    Controller, GenerationTask, NativeGenerationController, ScaffoldingLlm, StreamGenerationTask, TaskFailedError,
)
from scaffolding.workers import TaskInputError, WorkerUnavailableError
from scaffolding.workers.trtllm_worker import TrtllmWorker

pytestmark = pytest.mark.timeout(30)



@pytest.fixture
def fake(trtllm_fake):
    """The shared fake tensorrt_llm."""
    trtllm_fake.CONTROL.token_delay_s = 0.0005
    return trtllm_fake


@pytest.fixture
def llm(fake, tmp_path):
    trtllm = importlib.import_module("tensorrt_llm")
    return trtllm.LLM(model=str(tmp_path), skip_tokenizer_init=True)


def run(worker, prompt, controller=None):
    with ScaffoldingLlm(controller or NativeGenerationController(), {"generation": worker}) as llm:
        return llm.generate(prompt)


def test_generation_with_sampling_params(fake, llm):
    worker = TrtllmWorker(llm, end_id=2, default_max_tokens=5)
    ctrl = NativeGenerationController({"temperature": 0.7, "top_k": 4, "seed": 3, "stop": [9]})
    task = run(worker, [11, 12, 13], ctrl)
    assert task.output_tokens == fake.output_tokens([11, 12, 13], 5)
    assert (task.completion_tokens, task.prompt_tokens, task.finish_reason) == (5, 3, "length")
    assert task.ttft_s is None and task.latency_s > 0 and task.output_str is None
    inputs, params, streaming = llm.submitted[-1]
    assert inputs == [11, 12, 13] and streaming is False
    assert (params.max_tokens, params.temperature, params.top_k, params.seed) == (5, 0.7, 4, 3)
    assert (params.end_id, params.pad_id, params.stop_token_ids) == (2, 2, [9])


def test_text_prompts_use_the_workers_tokenizer(fake, llm, tokenizer):
    worker = TrtllmWorker(llm, tokenizer=tokenizer, end_id=2, default_max_tokens=3)
    task = run(worker, "hello there")
    ids = tokenizer.encode("hello there")
    assert llm.submitted[-1][0] == ids and task.output_tokens == fake.output_tokens(ids, 3)
    assert task.output_str == tokenizer.decode(task.output_tokens, skip_special_tokens=True)


def test_without_a_tokenizer_text_goes_to_the_llm_which_may_refuse_it(fake, llm):
    with pytest.raises(TaskFailedError, match=r"trtllm LLM .*generate_async failed: TypeError"):
        run(TrtllmWorker(llm, end_id=2), "hello")


def test_streamed_generation_task_gets_a_ttft(fake, llm):
    task = run(TrtllmWorker(llm, end_id=2, default_max_tokens=12, streaming=True), [5, 6])
    assert task.output_tokens == fake.output_tokens([5, 6], 12) and 0 < task.ttft_s <= task.latency_s
    assert llm.submitted[-1][2] is True


class Stepper(Controller):
    def __init__(self, step, max_tokens=12, cancel_at=None):
        self.step, self.max_tokens, self.cancel_at = step, max_tokens, cancel_at

    def process(self, tasks, **kwargs):
        task = StreamGenerationTask(input_tokens=[5, 6, 7], max_tokens=self.max_tokens, streaming_step=self.step)
        seen = []
        while not task.end_flag:
            yield [task]
            seen.append(len(task.output_tokens))
            if self.cancel_at is not None and len(seen) >= self.cancel_at:
                task.cancel_flag = True
        return task, seen


def test_stream_steps_bring_at_least_streaming_step_tokens(fake, llm):
    task, seen = run(TrtllmWorker(llm, end_id=2), "x", Stepper(step=3))
    gaps = [b - a for a, b in zip([0, *seen], seen)]
    assert seen[-1] == 12 and all(g >= 3 for g in gaps[:-1]) and len(seen) >= 3
    assert task.output_tokens == fake.output_tokens([5, 6, 7], 12) and task.finish_reason == "length"


def test_cancel_aborts_the_request_in_the_engine(fake, llm):
    fake.CONTROL.token_delay_s = 0.005
    task, seen = run(TrtllmWorker(llm, end_id=2), "x", Stepper(step=2, max_tokens=500, cancel_at=1))
    assert seen[0] >= 2 and seen[-1] == seen[0] and task.finish_reason == "cancelled" and task.end_flag
    deadline = time.monotonic() + 2
    while llm._engine.active() and time.monotonic() < deadline:  # the engine drops the aborted job
        time.sleep(0.01)
    assert llm._engine.active() == 0


def test_engine_errors_fail_the_task(fake, llm):
    with pytest.raises(TaskFailedError, match="generation failed: .*injected error") as info:
        run(TrtllmWorker(llm, end_id=2), [fake.ERROR_TOKEN, 1])
    assert isinstance(info.value.tasks[0].error, BackendError)
    with pytest.raises(TaskFailedError, match="generate_async failed: .*the executor failed"):
        run(TrtllmWorker(llm, end_id=2), [fake.CRASH_TOKEN, 1])
    with pytest.raises(TaskFailedError, match="generation failed"):
        run(TrtllmWorker(llm, end_id=2, streaming=True), [fake.ERROR_TOKEN, 1])


def test_without_end_id_a_tokenizer_less_llm_refuses(fake, llm):
    with pytest.raises(TaskFailedError, match="end_id"):
        run(TrtllmWorker(llm), [1, 2])


def test_unsupported_fields_are_refused(fake, llm):
    worker = TrtllmWorker(llm, end_id=2)
    with pytest.raises(TaskFailedError, match="num_logprobs=1") as info:
        run(worker, [1], NativeGenerationController({"num_logprobs": 1}))
    assert isinstance(info.value.tasks[0].error, TaskInputError)
    with pytest.raises(TaskFailedError, match="no prompt"):
        class Empty(Controller):
            def process(self, tasks, **kwargs):
                yield [GenerationTask()]

        run(worker, "x", Empty())


def test_from_model_builds_and_shutdown_releases_the_llm(fake, tmp_path):
    worker = TrtllmWorker.from_model(str(tmp_path), end_id=2, default_max_tokens=4, max_batch_size=8)
    built = fake.CONTROL.llms[-1]
    assert built.kwargs["max_batch_size"] == 8 and built.model == str(tmp_path)
    task = run(worker, [3, 4])  # ScaffoldingLlm.shutdown shuts the worker (and its LLM) down
    assert task.output_tokens == fake.output_tokens([3, 4], 4) and built.shut_down
    with pytest.raises(BackendError, match="could not create the LLM: .*extra fields not permitted"):
        TrtllmWorker.from_model(str(tmp_path), no_such_option=1)


def test_a_given_llm_is_not_shut_down(fake, llm):
    run(TrtllmWorker(llm, end_id=2), [3])
    assert not llm.shut_down


def test_missing_tensorrt_llm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as if not installed
    with pytest.raises(WorkerUnavailableError, match=r"pip install -e '\.\[trtllm\]'"):
        TrtllmWorker.from_model("/models/x")
    with pytest.raises(TypeError, match="expected a tensorrt_llm.LLM"):
        TrtllmWorker(object())
