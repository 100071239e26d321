"""Task collections: hooks run before and after every yield of a controller's process, e.g. to
count generated tokens (for token budgets) or to time tasks by type."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from scaffolding.controller import ParallelProcess
from scaffolding.task import GenerationTask, Task


class TaskCollection:
    """Override `before_yield` / `after_yield`; both get the tasks of the yield (for a
    ParallelProcess: every task of every sub-controller's initial list)."""

    def before_yield(self, tasks: list[Task]) -> None:
        pass

    def after_yield(self, tasks: list[Task]) -> None:
        pass


class GenerationTokenCounter(TaskCollection):
    """Generated tokens so far across the yields of a controller (stream tasks counted by delta)."""

    def __init__(self) -> None:
        self.generation_token_count = 0
        self._seen: dict[int, int] = {}

    def before_yield(self, tasks: list[Task]) -> None:
        for t in tasks:
            if isinstance(t, GenerationTask):
                self._seen[id(t)] = _n_tokens(t)

    def after_yield(self, tasks: list[Task]) -> None:
        for t in tasks:
            if isinstance(t, GenerationTask):
                self.generation_token_count += max(_n_tokens(t) - self._seen.pop(id(t), 0), 0)


class TaskTimer(TaskCollection):
    """Wall time spent in yields, by task type (a yield of mixed types is charged to each)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start: float | None = None
        self.elapsed_s: dict[str, float] = defaultdict(float)
        self.yields = 0

    def before_yield(self, tasks: list[Task]) -> None:
        self._start = self._clock()

    def after_yield(self, tasks: list[Task]) -> None:
        dt = self._clock() - (self._start or self._clock())
        self.yields += 1
        for name in {type(t).__name__ for t in tasks}:
            self.elapsed_s[name] += dt


def _n_tokens(task: GenerationTask) -> int:
    """Tokens generated for the task, including a sub-controller's own (e.g. probes) when it says."""
    total = task.customized_result_fields.get("generated_tokens")
    if isinstance(total, int):
        return total
    if task.completion_tokens is not None:
        return task.completion_tokens
    return len(task.output_tokens or ())


def with_task_collection(name: str, factory: Callable[[], TaskCollection]):
    """Decorate a controller's `process` so a fresh collection, at `self.task_collections[name]`,
    sees every yield. Failures thrown into the process still run `after_yield`."""

    def decorator(process):
        @functools.wraps(process)
        def wrapper(self, tasks, **kwargs: Any):
            collection = factory()
            if not hasattr(self, "task_collections"):
                self.task_collections = {}
            self.task_collections[name] = collection
            gen = process(self, tasks, **kwargs)
            to_send: Any = None
            error: BaseException | None = None
            while True:
                try:
                    item = gen.throw(error) if error is not None else gen.send(to_send)
                except StopIteration as stop:
                    return stop.value
                error = None
                seen = _tasks_of(item)
                collection.before_yield(seen)
                try:
                    to_send = yield item
                except Exception as err:  # a task failure: thrown into the wrapped process
                    error = err
                collection.after_yield(seen)

        return wrapper

    return decorator


def _tasks_of(item: Any) -> list[Task]:
    if isinstance(item, ParallelProcess):
        return [t for tasks in item.tasks_list for t in tasks]
    return list(item) if isinstance(item, (list, tuple)) else []
