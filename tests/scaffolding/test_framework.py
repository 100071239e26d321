"""The scaffolding framework: controllers, dispatch, concurrency levels, errors, task collections."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from scaffolding import (
    Controller, GenerationTask, GenerationTokenCounter, NativeGenerationController, ParallelProcess, RewardTask,
    ScaffoldingError, ScaffoldingLlm, StreamGenerationTask, TaskFailedError, TaskNotSupportedError, TaskStatus,
    TaskTimer, Worker, with_task_collection,
)


class EchoWorker(Worker):
    """Generates `max_tokens` tokens after `delay` seconds; records concurrency."""

    name = "echo"

    def __init__(self, delay=0.05, fail_on=None):
        super().__init__()
        self.delay, self.fail_on = delay, fail_on
        self.running = self.peak = self.calls = 0
        self.register_task_handler(GenerationTask, self.generate)

    async def generate(self, task):
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)  # stands in for a backend's latency
            if self.fail_on is not None and self.fail_on in (task.input_str or ""):
                raise RuntimeError(f"backend refused {task.input_str!r}")
            n = task.max_tokens or 4
            task.output_tokens = list(range(n))
            task.output_str = f"{task.input_str}:{task.seed}"
            task.completion_tokens = n
        finally:
            self.running -= 1


def test_native_generation_returns_the_task_and_applies_defaults():
    with ScaffoldingLlm(NativeGenerationController({"max_tokens": 3, "seed": 7}), {"generation": EchoWorker()}) as llm:
        task = llm.generate("hi")
        assert task.status is TaskStatus.SUCCESS and task.output_tokens == [0, 1, 2] and task.output_str == "hi:7"
        several = llm.generate(["a", "b", "c"])
        assert [t.output_str for t in several] == ["a:7", "b:7", "c:7"]


class FanOut(Controller):
    def __init__(self, n):
        self.n = n

    def process(self, tasks, **kwargs):
        subs = [GenerationTask(input_str=f"{tasks[0].input_str}{i}", max_tokens=2) for i in range(self.n)]
        yield subs  # tasks of one yield run concurrently
        tasks[0].output_str = ",".join(t.output_str for t in subs)
        return tasks[0].output_str


def test_three_levels_of_concurrency():
    worker = EchoWorker(delay=0.2)
    with ScaffoldingLlm(FanOut(4), {"generation": worker}, max_parallel_requests=3) as llm:
        t0 = time.monotonic()
        out = llm.generate(["x", "y", "z"])
        dt = time.monotonic() - t0
    assert out[0] == "x0:None,x1:None,x2:None,x3:None"
    assert worker.peak == 12  # 3 requests x 4 tasks at once
    assert dt < 1.2  # not 12 x 0.2 = 2.4 s


class Parent(Controller):
    def process(self, tasks, **kwargs):
        pp = ParallelProcess([FanOut(2), FanOut(3)], [[GenerationTask(input_str="p")], [GenerationTask(input_str="q")]])
        yield pp
        return pp.results


def test_parallel_sub_controllers_return_their_results():
    worker = EchoWorker(delay=0.2)
    with ScaffoldingLlm(Parent(), {"generation": worker}) as llm:
        results = llm.generate("ignored")
    assert results == ["p0:None,p1:None", "q0:None,q1:None,q2:None"]
    assert worker.peak == 5  # the 2 + 3 generations of both sub-controllers ran at the same time


def test_a_failed_task_reaches_the_caller_as_an_error():
    with ScaffoldingLlm(FanOut(3), {"generation": EchoWorker(fail_on="bad1")}) as llm:
        with pytest.raises(TaskFailedError, match="backend refused") as info:
            llm.generate("bad")
        assert info.value.tasks[0].status is TaskStatus.FAILED
        assert llm.generate("good").startswith("good0")  # the next request is unaffected


class Retrying(Controller):
    """Handles a failure thrown into it: retries once with another prompt."""

    def process(self, tasks, **kwargs):
        task = GenerationTask(input_str="bad", max_tokens=1)
        try:
            yield [task]
        except TaskFailedError:
            task = GenerationTask(input_str="fine", max_tokens=1)
            yield [task]
        return task.output_str


def test_a_controller_can_handle_a_failure():
    with ScaffoldingLlm(Retrying(), {"generation": EchoWorker(fail_on="bad")}) as llm:
        assert llm.generate("x") == "fine:None"


def test_a_task_no_worker_handles_gives_a_clear_error():
    class Rewarding(Controller):
        def process(self, tasks, **kwargs):
            yield [RewardTask(input_str="q", candidate="a", worker_tag="generation")]

    with ScaffoldingLlm(Rewarding(), {"generation": EchoWorker()}) as llm:
        with pytest.raises(TaskFailedError) as info:
            llm.generate("x")
    err = info.value.tasks[0].error
    assert isinstance(err, TaskNotSupportedError) and "RewardTask" in str(err) and "GenerationTask" in str(err)


def test_an_unknown_worker_tag_and_a_bad_yield_are_clear_errors():
    class Lost(Controller):
        def process(self, tasks, **kwargs):
            yield [GenerationTask(input_str="q", worker_tag="nowhere")]

    class Bad(Controller):
        def process(self, tasks, **kwargs):
            yield "not a task list"

    with ScaffoldingLlm(Lost(), {"generation": EchoWorker()}) as llm:
        with pytest.raises(TaskFailedError, match="no worker for tag 'nowhere'"):
            llm.generate("x")
    with ScaffoldingLlm(Bad(), {"generation": EchoWorker()}) as llm:
        with pytest.raises(ScaffoldingError, match="yielded str"):
            llm.generate("x")


def test_dispatch_follows_the_class_hierarchy_per_instance():
    w1, w2 = Worker(), Worker()
    calls = []

    async def gen(task):
        calls.append(type(task).__name__)

    w1.register_task_handler(GenerationTask, gen)
    assert asyncio.run(w1.run_task(StreamGenerationTask())) is TaskStatus.SUCCESS  # falls back to the parent
    assert calls == ["StreamGenerationTask"]
    t = GenerationTask()
    assert asyncio.run(w2.run_task(t)) is TaskStatus.FAILED and isinstance(t.error, TaskNotSupportedError)


def test_per_request_kwargs_and_clones():
    class Counting(Controller):
        def __init__(self):
            self.seen = []

        def process(self, tasks, tag="none", **kwargs):
            self.seen.append(tag)
            tasks[0].seed = len(self.seen)
            yield tasks
            return f"{tag}:{tasks[0].output_str}"

    proto = Counting()
    with ScaffoldingLlm(proto, {"generation": EchoWorker()}) as llm:
        a = llm.generate_async("a", tag="A")
        b = llm.generate_async("b", tag="B")
        assert (a.result(), b.result()) == ("A:a:1", "B:b:1")  # each request has a fresh clone
    assert proto.seen == []


def test_request_cap_and_the_callers_event_loop_is_untouched():
    worker = EchoWorker(delay=0.1)
    llm = ScaffoldingLlm(NativeGenerationController(), {"generation": worker}, max_parallel_requests=2)

    async def caller():
        loop = asyncio.get_running_loop()
        futures = [asyncio.wrap_future(llm.generate_async(f"p{i}")) for i in range(6)]
        results = await asyncio.gather(*futures)
        assert asyncio.get_running_loop() is loop
        return results

    results = asyncio.run(caller())
    assert len(results) == 6 and worker.peak == 2
    llm.shutdown()
    with pytest.raises(ScaffoldingError, match="shut down"):
        llm.generate_async("late")
    assert not any(t.name == "scaffolding-loop" for t in threading.enumerate())


def test_shutdown_waits_for_requests_and_shuts_workers_down():
    class Closing(EchoWorker):
        closed = False

        async def shutdown(self):
            self.closed = True

    worker = Closing(delay=0.2)
    llm = ScaffoldingLlm(NativeGenerationController(), {"generation": worker})
    fut = llm.generate_async("slow")
    llm.shutdown()
    assert fut.result().status is TaskStatus.SUCCESS and worker.closed


class Budget(Controller):
    @with_task_collection("tokens", GenerationTokenCounter)
    @with_task_collection("timer", TaskTimer)
    def process(self, tasks, budget=10, **kwargs):
        while self.task_collections["tokens"].generation_token_count < budget:
            yield [GenerationTask(input_str="s", max_tokens=3)]
        return self.task_collections["tokens"].generation_token_count


def test_task_collections_count_tokens_and_time_yields():
    with ScaffoldingLlm(Budget(), {"generation": EchoWorker(delay=0.01)}) as llm:
        assert llm.generate("x", budget=10) == 12  # four yields of 3 tokens


def test_stream_tasks_return_every_step_and_can_be_cancelled():
    class Streamer(Worker):
        def __init__(self):
            super().__init__()
            self.register_task_handler(StreamGenerationTask, self.step)

        async def step(self, task):
            produced = task.request_handle or 0
            produced += max(task.streaming_step, 1)
            task.request_handle = produced
            task.output_tokens = list(range(produced))
            if task.cancel_flag or produced >= task.max_tokens:
                task.end_flag = True

    class Watch(Controller):
        def process(self, tasks, **kwargs):
            t = StreamGenerationTask(input_str="q", max_tokens=100, streaming_step=4)
            steps = 0
            while not t.end_flag:
                yield [t]
                steps += 1
                if len(t.output_tokens) >= 12:
                    t.cancel_flag = True
            return steps, len(t.output_tokens)

    with ScaffoldingLlm(Watch(), {"generation": Streamer()}) as llm:
        assert llm.generate("x") == (4, 16)  # 3 steps to reach 12, one more to see the cancel
