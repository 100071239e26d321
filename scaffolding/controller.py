"""Controller: a method of test-time compute written as a generator that yields work.

`process(tasks, **kwargs)` yields lists of tasks (run concurrently) or a ParallelProcess of
sub-controllers, composes with `yield from`, and returns its result.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from scaffolding.task import GenerationTask, Task

#: a controller's process(): yields list[Task] or ParallelProcess, returns the result
ProcessGenerator = Generator[Any, None, Any]


@dataclass
class ParallelProcess:
    """Run sub-controllers concurrently: `controllers[i].process(tasks_list[i], **kwargs_list[i])`.
    The yielding controller resumes when all have finished; each sub-controller's return value is
    in `results`, in order."""

    controllers: Sequence[Controller]
    tasks_list: Sequence[Sequence[Task]]
    kwargs_list: Sequence[dict[str, Any]] | None = None
    results: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.controllers) != len(self.tasks_list):
            raise ValueError(f"ParallelProcess: {len(self.controllers)} controllers but "
                             f"{len(self.tasks_list)} task lists")
        if self.kwargs_list is None:
            self.kwargs_list = [{} for _ in self.controllers]
        elif len(self.kwargs_list) != len(self.controllers):
            raise ValueError("ParallelProcess: kwargs_list must have one entry per controller")


class Controller:
    """Base controller. Subclasses override `process`. Each request runs on its own clone
    (`clone()`), so per-request state may live on `self`."""

    def clone(self) -> Controller:
        return copy.deepcopy(self)

    def generate(self, prompt: str | list[int], **kwargs: Any) -> ProcessGenerator:
        """Entry point ScaffoldingLlm calls per request: wraps the prompt in a GenerationTask and
        runs `process` on it; returns whatever process returns (default: the task)."""
        task = GenerationTask.create_from_prompt(prompt)
        result = yield from self.process([task], **kwargs)
        return task if result is None else result

    def process(self, tasks: list[Task], **kwargs: Any) -> ProcessGenerator:
        raise NotImplementedError(f"{type(self).__name__}.process")
        yield  # pragma: no cover - makes this a generator


class NativeGenerationController(Controller):
    """One generation per task, with default sampling settings applied where the task has none."""

    def __init__(self, sampling_params: dict[str, Any] | None = None, worker_tag: str = "generation"):
        self.sampling_params = dict(sampling_params or {})
        self.worker_tag = worker_tag

    def process(self, tasks: list[Task], **kwargs: Any) -> ProcessGenerator:
        for task in tasks:
            task.worker_tag = self.worker_tag
            for name, value in self.sampling_params.items():
                if getattr(task, name, None) is None:  # a value set on the task wins
                    setattr(task, name, value)
        yield list(tasks)
