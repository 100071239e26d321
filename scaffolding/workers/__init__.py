"""Workers running scaffolding tasks on real backends (llmlib LLMServer, OpenAI API, TensorRT-LLM,
PyTorch CPU, reward functions); each class is imported on first use, so extras stay optional."""

from __future__ import annotations

import importlib
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scaffolding.task import GenerationTask, Task

#: public name -> "module:attribute", imported lazily by __getattr__
_LAZY = {
    "LLMCoreWorker": "scaffolding.workers.llmcore_worker:LLMCoreWorker",
    "OpenAIWorker": "scaffolding.workers.openai_worker:OpenAIWorker",
    "TrtllmWorker": "scaffolding.workers.trtllm_worker:TrtllmWorker",
    "PytorchCPUWorker": "scaffolding.workers.pytorch_cpu_worker:PytorchCPUWorker",
    "RewardWorker": "scaffolding.workers.reward_worker:RewardWorker",
}

__all__ = ["TaskInputError", "WorkerUnavailableError", *_LAZY]


class TaskInputError(ValueError):
    """A task asks for something its worker cannot do (no prompt, an unsupported field...).
    The message names the task and what was expected."""


class WorkerUnavailableError(ImportError):
    """A worker's optional dependency is missing; the message names the extra to install."""


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'scaffolding.workers' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


# --- helpers the workers share ------------------------------------------------------------------------
def describe(task: Task) -> str:
    """A short name for a task in error messages: its class and the start of its prompt."""
    text = getattr(task, "input_str", None)
    if text is not None:
        shown = text if len(text) <= 40 else text[:37] + "..."
        return f"{type(task).__name__}(input_str={shown!r})"
    tokens = getattr(task, "input_tokens", None)
    if tokens is not None:
        return f"{type(task).__name__}(input_tokens of length {len(tokens)})"
    return f"{type(task).__name__}(no prompt)"


def check_supported(task: GenerationTask, worker: str, *, logprobs: bool = False) -> None:
    """Refuse fields a worker cannot honour instead of ignoring them: n != 1 (a task holds one
    output: yield n tasks instead) and, unless the worker returns them, logprobs."""
    if task.n != 1:
        raise TaskInputError(f"{describe(task)}: n={task.n}; {worker} returns one output per task "
                             "(yield n tasks instead)")
    if not logprobs and task.num_logprobs is not None:
        raise TaskInputError(f"{describe(task)}: num_logprobs={task.num_logprobs}; {worker} does not "
                             "return log-probabilities")
    max_tokens = task.max_tokens
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral)
                                   or max_tokens < 1):
        raise TaskInputError(f"{describe(task)}: max_tokens={task.max_tokens!r}; expected an integer >= 1")


def split_stops(stop: Any, task: Task) -> tuple[list[str], list[int]]:
    """A task's `stop` as (stop strings, stop token ids); an entry of another type is an error."""
    if stop is None:
        return [], []
    entries = [stop] if isinstance(stop, str) else list(stop)
    strings: list[str] = []
    ids: list[int] = []
    for entry in entries:
        if isinstance(entry, str):
            strings.append(entry)
        elif isinstance(entry, numbers.Integral) and not isinstance(entry, bool):
            ids.append(int(entry))
        else:
            raise TaskInputError(f"{describe(task)}: stop entry {entry!r}; expected strings or token ids")
    return strings, ids
