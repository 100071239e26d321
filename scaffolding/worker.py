"""Worker: executes tasks through a per-instance handler table, dispatched by the task's class
hierarchy. A handler that raises marks the task FAILED with the error; it never returns None."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from scaffolding.task import Task, TaskStatus

Handler = Callable[[Task], Awaitable[None]]


class TaskNotSupportedError(TypeError):
    """A task was routed to a worker that has no handler for its type."""


class Worker:
    """Base worker. Register handlers per instance: `self.register_task_handler(GenerationTask, fn)`
    where `fn` is an async function filling the task in. The most specific registered class in the
    task's MRO wins (a StreamGenerationTask falls back to a GenerationTask handler)."""

    name = "worker"

    def __init__(self) -> None:
        self.task_handlers: dict[type, Handler] = {}

    def register_task_handler(self, task_cls: type, handler: Handler) -> None:
        self.task_handlers[task_cls] = handler

    def handler_for(self, task: Task) -> Handler:
        for cls in type(task).__mro__:
            handler = self.task_handlers.get(cls)
            if handler is not None:
                return handler
        known = ", ".join(sorted(c.__name__ for c in self.task_handlers)) or "none"
        raise TaskNotSupportedError(f"worker {self.name!r} ({type(self).__name__}) cannot run "
                                    f"{type(task).__name__} (it handles: {known})")

    async def run_task(self, task: Task) -> TaskStatus:
        """Run one task; the outcome is on the task (status, error, results) and returned."""
        try:
            handler = self.handler_for(task)
            await handler(task)
        except Exception as err:  # a failing backend fails the task, the caller sees the error
            task.fail(err)
            return task.status
        if task.status is TaskStatus.PENDING:
            task.status = TaskStatus.SUCCESS
        return task.status

    async def shutdown(self) -> None:
        """Release the backend (override when there is one)."""
