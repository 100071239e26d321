"""ScaffoldingLlm: runs a controller per request over a set of workers, on its own event loop.

Three levels of concurrency: requests (capped), sub-controllers of a ParallelProcess, and the
tasks of one yield. A failed task is thrown into its controller; unhandled, it reaches the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from scaffolding.controller import Controller, ParallelProcess
from scaffolding.task import Task, TaskStatus
from scaffolding.worker import Worker


class ScaffoldingError(RuntimeError):
    """A request could not complete."""


class TaskFailedError(ScaffoldingError):
    """One or more tasks of a yield failed; `tasks` holds them (each with its `error`)."""

    def __init__(self, tasks: Sequence[Task]):
        first = tasks[0]
        super().__init__(f"{len(tasks)} task(s) failed; first: {type(first).__name__} on worker "
                         f"{first.worker_tag!r}: {first.error!r}")
        self.tasks = list(tasks)


class ScaffoldingLlm:
    """`generate(prompts, **kwargs)` blocks; `generate_async(prompt, **kwargs)` returns a
    concurrent Future (await it with `asyncio.wrap_future`). Per-request kwargs reach the
    controller's `generate`/`process`. The event loop is private: the caller's loop, global or
    not, is never touched."""

    def __init__(self, prototype_controller: Controller, workers: Mapping[str, Worker], *,
                 max_parallel_requests: int = 64):
        if max_parallel_requests < 1:
            raise ValueError(f"max_parallel_requests={max_parallel_requests}: must be >= 1")
        self.prototype_controller = prototype_controller
        self.workers = dict(workers)
        self.max_parallel_requests = max_parallel_requests
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scaffolding-loop", daemon=True)
        self._thread.start()
        self._semaphore = asyncio.run_coroutine_threadsafe(self._make_semaphore(), self._loop).result()
        self._inflight: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self._closed = False

    async def _make_semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.max_parallel_requests)

    # --- public API --------------------------------------------------------------------------------
    def generate_async(self, prompt: str | list[int], **kwargs: Any) -> concurrent.futures.Future:
        with self._lock:
            if self._closed:
                raise ScaffoldingError("ScaffoldingLlm is shut down")
            future = asyncio.run_coroutine_threadsafe(self._run_request(prompt, kwargs), self._loop)
            self._inflight.add(future)
        future.add_done_callback(self._forget)
        return future

    def generate(self, prompts: str | list[int] | Sequence[str | list[int]], **kwargs: Any):
        """One prompt -> its result; a list of prompts -> a list of results, run concurrently.
        The first failure is raised after every request has finished."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        futures = [self.generate_async(p, **kwargs) for p in batch]
        concurrent.futures.wait(futures)
        results = [f.result() for f in futures]  # raises the first failure
        return results[0] if single else results

    def shutdown(self, *, shutdown_workers: bool = True, timeout_s: float = 60.0) -> None:
        """Wait for requests in flight, shut the workers down, stop the loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._inflight)
        concurrent.futures.wait(pending, timeout=timeout_s)
        for f in pending:
            f.cancel()
        if shutdown_workers:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown_workers(), self._loop)
            fut.result(timeout=timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=timeout_s)
        self._loop.close()

    def __enter__(self) -> ScaffoldingLlm:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --- the loop ----------------------------------------------------------------------------------
    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._inflight.discard(future)

    async def _shutdown_workers(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers.values()), return_exceptions=True)

    async def _run_request(self, prompt, kwargs: dict[str, Any]):
        async with self._semaphore:
            controller = self.prototype_controller.clone()
            return await self._drive(controller.generate(prompt, **kwargs))

    async def _drive(self, gen):
        """Advance a controller generator: run what it yields, send back None, throw failures in."""
        error: BaseException | None = None
        while True:
            try:
                item = gen.throw(error) if error is not None else gen.send(None)
            except StopIteration as stop:
                return stop.value
            error = None
            if isinstance(item, ParallelProcess):
                subs = [self._drive(c.process(list(tasks), **kw))
                        for c, tasks, kw in zip(item.controllers, item.tasks_list, item.kwargs_list)]
                results = await asyncio.gather(*subs, return_exceptions=True)
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    error = failures[0]
                else:
                    item.results = list(results)
            elif isinstance(item, (list, tuple)) and all(isinstance(t, Task) for t in item):
                await asyncio.gather(*(self._run_task(t) for t in item))
                failed = [t for t in item if t.status is TaskStatus.FAILED]
                if failed:
                    error = TaskFailedError(failed)
            else:
                error = ScaffoldingError(f"controller yielded {type(item).__name__}; expected a list of Task "
                                         "or a ParallelProcess")

    async def _run_task(self, task: Task) -> None:
        worker = self.workers.get(task.worker_tag)
        if worker is None:
            task.fail(ScaffoldingError(f"no worker for tag {task.worker_tag!r} (workers: "
                                       f"{', '.join(sorted(self.workers)) or 'none'})"))
            return
        task.status = TaskStatus.PENDING
        task.error = None
        await worker.run_task(task)
