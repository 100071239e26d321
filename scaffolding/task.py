"""Tasks: mutable records a Controller yields and a Worker fills in.

GenerationTask carries OpenAI-style sampling fields and the results; StreamGenerationTask returns
to its controller every `streaming_step` tokens; RewardTask carries a typed score.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskStatus(enum.Enum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"


@dataclass
class Task:
    """Base of every task. `worker_tag` picks the worker; the worker sets `status` (and `error`)."""

    worker_tag: str = "generation"
    status: TaskStatus = TaskStatus.PENDING
    error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.status, self.error = TaskStatus.FAILED, error


@dataclass
class GenerationTask(Task):
    """One generation. Inputs: a prompt as text or token ids; sampling as the OpenAI API names it.
    Results are filled in by the worker."""

    input_str: str | None = None
    input_tokens: list[int] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stop: list[str] | list[int] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    num_logprobs: int | None = None
    # results
    output_str: str | None = None
    output_tokens: list[int] | None = None
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    customized_result_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create_from_prompt(cls, prompt: str | list[int], **kwargs: Any) -> GenerationTask:
        if isinstance(prompt, str):
            return cls(input_str=prompt, **kwargs)
        return cls(input_tokens=list(prompt), **kwargs)

    def sampling(self) -> dict[str, Any]:
        """The sampling fields that are set (None means: the worker's default)."""
        names = ("max_tokens", "temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class StreamGenerationTask(GenerationTask):
    """A generation that returns to its controller after at least `streaming_step` new tokens
    (0: as soon as any). The controller sets `cancel_flag` to stop it; the worker sets `end_flag`
    when generation is over. `request_handle` is the worker's own state between steps."""

    streaming_step: int = 1
    cancel_flag: bool = False
    end_flag: bool = False
    request_handle: Any = None


@dataclass
class RewardTask(Task):
    """Scores one candidate output for a prompt; the worker sets `score`."""

    input_str: str | None = None
    input_tokens: list[int] | None = None
    candidate: str | None = None
    candidate_tokens: list[int] | None = None
    score: float | None = None
    worker_tag: str = "reward"
