"""RewardWorker: scores RewardTasks with a user function `score_fn(prompt, candidate) -> float`,
sync (run in a thread, off the event loop) or async (awaited); a score that is not a finite number fails."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

from scaffolding.task import RewardTask
from scaffolding.worker import Worker
from scaffolding.workers import TaskInputError


class RewardScoreError(ValueError):
    """The score function returned something that is not a finite real number."""


class RewardWorker(Worker):
    """Sets `task.score = float(score_fn(prompt, candidate))`: prompt is `task.input_str`, else
    its `input_tokens`; candidate is `task.candidate`, else `task.candidate_tokens`. A sync
    function runs in `executor` (default: the loop's), so a slow reward model never stalls other
    tasks; an async one (or a sync one returning an awaitable) is awaited on the loop. A bool, a
    non-number, NaN or an infinity fails the task naming the function and the value."""

    name = "reward"

    def __init__(self, score_fn: Callable[[str | None, Any], Any], *,
                 executor: concurrent.futures.Executor | None = None):
        super().__init__()
        if not callable(score_fn):
            raise TypeError(f"RewardWorker: score_fn={score_fn!r}; expected a callable (prompt, candidate) -> float")
        self.score_fn = score_fn
        self.executor = executor
        self._is_async = inspect.iscoroutinefunction(score_fn) or inspect.iscoroutinefunction(
            getattr(score_fn, "__call__", None))
        self._fn_name = getattr(score_fn, "__qualname__", None) or type(score_fn).__name__
        self.register_task_handler(RewardTask, self.score)

    async def score(self, task: RewardTask) -> None:
        candidate = task.candidate if task.candidate is not None else task.candidate_tokens
        if candidate is None:
            raise TaskInputError(f"RewardTask(input_str={_short(task.input_str)!r}): no candidate; set candidate "
                                 "or candidate_tokens")
        prompt = task.input_str if task.input_str is not None else getattr(task, "input_tokens", None)
        if self._is_async:
            value = await self.score_fn(prompt, candidate)
        else:
            loop = asyncio.get_running_loop()
            value = await loop.run_in_executor(self.executor, self.score_fn, prompt, candidate)
            if inspect.isawaitable(value):
                value = await value
        task.score = self.check_score(value, task)

    def check_score(self, value: Any, task: RewardTask) -> float:
        where = f"{self._fn_name} on RewardTask(input_str={_short(task.input_str)!r})"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardScoreError(f"{where} returned {value!r} ({type(value).__name__}); expected a real number")
        score = float(value)
        if not math.isfinite(score):
            raise RewardScoreError(f"{where} returned {score}; expected a finite number")
        return score


def _short(text: str | None) -> str | None:
    return text if text is None or len(text) <= 40 else text[:37] + "..."


__all__ = ["RewardScoreError", "RewardWorker"]
