"""AsyncLoopCore: an LLMCore whose requests run as tasks on a private asyncio loop in a thread.

The loop owns one task per request; submit, cancel and stop are ordered by a lock, a task that
ends without an outcome still fails its request, and a dying loop fails everything pending.

Latency. Requests from another thread reach the loop through `call_soon_threadsafe` (a wake-up);
requests enqueued on the loop thread itself (a sink callback issuing the next request) are taken at
once, not one loop iteration later. `_begin` may start a request synchronously in the callback that
takes it, before its task's first step (which waits one iteration, behind that iteration's I/O).
The GIL: the loop thread runs only while no other Python thread holds it, and a busy one gives it up
only every `sys.getswitchinterval()` (5 ms by default), which then delays every request on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence

from llmlib.cores.base import LLMCore, Request
from llmlib.errors import BackendError

log = logging.getLogger(__name__)

LOOP_START_TIMEOUT_S = 10.0
LOOP_STOP_TIMEOUT_S = 30.0


class AsyncLoopCore(LLMCore):
    """Subclasses implement `async _run(request)` (deliver one outcome, or let cancellation
    through) and may override `_loop_resources()` (an async context entered on the loop before it
    takes requests, e.g. HTTP clients) and `_after_stop()` (release the backend)."""

    #: makes the loop (e.g. uvloop.new_event_loop); None: asyncio's own. Set before `_start_loop`.
    loop_factory = None

    def _start_loop(self, thread_name: str) -> None:
        """Start the loop thread and wait until it takes requests (BackendError if it does not)."""
        self._tasks: dict[int, asyncio.Task] = {}  # touched only on the loop thread
        self._submit_lock = threading.Lock()  # orders submissions before the stop signal
        self._stopping = False
        self._fatal: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name=thread_name, daemon=True)
        self._thread.start()
        self._loop_ident = self._thread.ident
        if not ready.wait(LOOP_START_TIMEOUT_S) or self._loop is None or self._fatal:
            raise BackendError(self.address, self._fatal or
                               f"the event loop did not start within {LOOP_START_TIMEOUT_S:g}s")

    def _loop_resources(self) -> contextlib.AbstractAsyncContextManager:
        return contextlib.nullcontext()

    def _after_stop(self) -> None:
        """Called once the loop has ended on stop()."""

    async def _run(self, req: Request) -> None:
        raise NotImplementedError

    def _begin(self, req: Request) -> asyncio.Task:
        """On the loop, in the callback that takes `req`: its task, running `_run(req)`. An override may
        first start the request right here (a task's first step comes one loop iteration later, behind
        every I/O callback of that iteration); it must deliver no outcome here (errors go through the
        task), and what it starts must also be released when the task is cancelled before its first
        step, when the coroutine's body never runs (a done callback on the task)."""
        return asyncio.ensure_future(self._run(req))

    # --- the contract -------------------------------------------------------------------------------
    def loop_health(self) -> None:
        """Raise BackendError if the loop cannot take requests."""
        if self._fatal is not None:
            raise BackendError(self.address, f"unhealthy: {self._fatal}")
        if self._stopping:
            raise BackendError(self.address, "core stopped")
        if not self._thread.is_alive():
            raise BackendError(self.address, "the event loop thread is not running")

    def _enqueue_impl(self, requests: Sequence[Request]) -> None:
        batch = list(requests)
        with self._submit_lock:
            if self._stopping:
                raise BackendError(self.address, "core stopped")
            if self._fatal is not None:
                raise BackendError(self.address, f"unhealthy: {self._fatal}")
            if threading.get_ident() != self._loop_ident:
                self._loop.call_soon_threadsafe(self._spawn, batch)
                return
        # On the loop thread (a sink callback): taken now, outside the lock (a sink callback from in
        # here may enqueue again). A stop() from another thread can only set the stop event on the loop,
        # after this returns; it then cancels these tasks with the others.
        self._spawn(batch)

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        if request_id not in self._pending:
            return
        super().cancel(request_id, reason)  # the outcome first, so it carries `reason`
        with self._submit_lock:
            if not self._stopping:
                self._call_on_loop(self._abort, request_id)

    def stop(self) -> None:
        with self._submit_lock:
            already = self._stopping
            self._stopping = True
            if not already and self._stop_event is not None:
                self._call_on_loop(self._stop_event.set)
        if not already:
            self._thread.join(LOOP_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("%s: the event loop did not end in time", self.address)
            self._after_stop()
        super().stop()

    def _call_on_loop(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the core died; its requests were failed by _run_loop
            pass

    # --- the loop thread ------------------------------------------------------------------------------
    def _run_loop(self, ready: threading.Event) -> None:
        factory = self.loop_factory
        try:
            if factory is None or not hasattr(asyncio, "Runner"):  # asyncio.Runner: Python 3.11+
                asyncio.run(self._main(ready))
            else:
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(self._main(ready))
        except Exception as err:  # the loop itself broke: nothing more will be delivered from it
            self._fatal = f"event loop failed: {err!r}"
            log.error("%s: %s", self.address, self._fatal)
        finally:
            ready.set()
            if not self._stopping:  # died on its own: fail what it would have delivered
                self._fatal = self._fatal or "event loop ended unexpectedly"
                for rid in self.pending_ids():
                    self._fail(rid, BackendError(self.address, self._fatal))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        async with self._loop_resources():
            ready.set()
            await self._stop_event.wait()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, requests: list[Request]) -> None:
        """On the loop: one owned task per request."""
        for req in requests:
            rid = req.request_id
            if self._stop_event.is_set():
                self._fail(rid, BackendError(self.address, "core stopped"))
                continue
            if rid not in self._pending:  # cancelled before it reached the loop
                continue
            try:
                task = self._begin(req)
            except Exception as err:  # a core bug: the request still ends, though never inside enqueue
                self._loop.call_soon(self._fail, rid, BackendError(self.address, f"internal error: {err!r}"))
                continue
            self._tasks[rid] = task
            # A task cancelled before its first step never runs its body: forget it here, always.
            task.add_done_callback(lambda t, rid=rid: self._forget_task(rid, t))

    def _forget_task(self, request_id: int, task: asyncio.Task) -> None:
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]
        if not task.cancelled() and task.exception() is not None and request_id in self._pending:
            # a core bug: the request still ends
            self._fail(request_id, BackendError(self.address, f"internal error: {task.exception()!r}"))

    def _abort(self, request_id: int) -> None:
        """On the loop: stop a request's task (its outcome was already delivered by cancel)."""
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()
