"""Test-time-compute framework: Controller, Task, Worker, ScaffoldingLlm.

Runs in the harness as a per-sample query expander (see ../shared/DESIGN.md).
"""

from scaffolding.controller import Controller, NativeGenerationController, ParallelProcess
from scaffolding.controllers import (
    BestOfNController, DynasorCoTController, MajorityVoteController, PRMController, RewardController,
    StreamGenerationController, TokenBudgetMajorityVoteController,
)
from scaffolding.math_utils import extract_answer
from scaffolding.scaffolding_llm import ScaffoldingError, ScaffoldingLlm, TaskFailedError
from scaffolding.task import GenerationTask, RewardTask, StreamGenerationTask, Task, TaskStatus
from scaffolding.task_collection import GenerationTokenCounter, TaskCollection, TaskTimer, with_task_collection
from scaffolding.worker import TaskNotSupportedError, Worker

__all__ = [
    "BestOfNController", "DynasorCoTController", "MajorityVoteController", "PRMController", "RewardController",
    "StreamGenerationController", "TokenBudgetMajorityVoteController", "extract_answer",
    "Controller", "GenerationTask", "GenerationTokenCounter", "NativeGenerationController", "ParallelProcess",
    "RewardTask", "ScaffoldingError", "ScaffoldingLlm", "StreamGenerationTask", "Task", "TaskCollection",
    "TaskFailedError", "TaskNotSupportedError", "TaskStatus", "TaskTimer", "Worker", "with_task_collection",
]
