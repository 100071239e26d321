"""The simulated engine behind the fake tensorrt_llm, and the knobs tests turn.

Generation is deterministic (`output_tokens`); every in-flight request advances one or two tokens per
iteration, one iteration every `CONTROL.token_delay_s`. A request's first input token can ask for
misbehaviour: ERROR_TOKEN (the engine answers with an error), CRASH_TOKEN (the engine breaks: the
executor's await_responses raises; the LLM's generate_async raises), HOLD_TOKEN (never progresses
until cancelled).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ERROR_TOKEN = 999_001
CRASH_TOKEN = 999_002
HOLD_TOKEN = 999_003


@dataclass
class Control:
    """Module-wide settings and what was built (tests assert on `executors` / `llms`)."""

    token_delay_s: float = 0.0005
    can_enqueue: bool = True
    kv_blocks: int = 1000
    tokens_per_block: int = 32
    executors: list = field(default_factory=list)
    llms: list = field(default_factory=list)


CONTROL = Control()


def reset() -> None:
    CONTROL.__init__()


def output_tokens(input_ids: list[int], n: int) -> list[int]:
    """The deterministic output of a prompt: n tokens in 3..30002 (never 0, 1 or 2)."""
    base = sum(int(t) for t in input_ids[:4]) + len(input_ids)
    return [(base * 31 + 7 * i) % 30000 + 3 for i in range(n)]


@dataclass
class Job:
    id: int
    input_ids: list[int]
    target: list[int]
    payload: object = None  # what the front end (executor / LLM) keeps for the job
    produced: list[int] = field(default_factory=list)
    step: int = 0
    cancelled: bool = False
    hold: bool = False
    error: str | None = None


# emit(job, new_tokens, final, finish_reason, error_message)
Emit = Callable[[Job, list, bool, str, "str | None"], None]


class Engine:
    """In-flight batching on a background thread; `emit` is called outside the lock."""

    def __init__(self, name: str, emit: Emit):
        self._emit = emit
        self._cond = threading.Condition()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._shutdown = False
        self.iterations = 0
        self.kv_used_blocks = 0
        self._thread = threading.Thread(target=self._loop, name=f"fake-engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, input_ids: list[int], max_tokens: int, payload: object = None) -> int:
        with self._cond:
            if self._shutdown:
                raise RuntimeError("[TensorRT-LLM][ERROR] fake engine: shut down")
            job = Job(id=next(self._ids), input_ids=list(input_ids),
                      target=output_tokens(input_ids, max_tokens), payload=payload)
            first = input_ids[0] if input_ids else None
            job.hold = first == HOLD_TOKEN
            if first == ERROR_TOKEN:
                job.error = f"fake engine: injected error for request {job.id}"
            self._jobs[job.id] = job
            self._cond.notify_all()
            return job.id

    def cancel(self, job_id: int) -> None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                job.cancelled = True
                self._cond.notify_all()

    def active(self) -> int:
        with self._cond:
            return len(self._jobs)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._jobs.clear()
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _has_work(self) -> bool:
        return any(not j.hold or j.cancelled for j in self._jobs.values())

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._shutdown and not self._has_work():
                    self._cond.wait()
                if self._shutdown:
                    return
            time.sleep(CONTROL.token_delay_s)  # one simulated engine iteration
            events = []
            with self._cond:
                for job in list(self._jobs.values()):
                    if job.cancelled:
                        events.append((job, [], True, "CANCELLED", None))
                    elif job.error is not None:
                        events.append((job, [], True, "NOT_FINISHED", job.error))
                    elif job.hold:
                        continue
                    else:
                        chunk = 1 + job.step % 2
                        new = job.target[len(job.produced):len(job.produced) + chunk]
                        job.produced.extend(new)
                        job.step += 1
                        final = len(job.produced) >= len(job.target)
                        events.append((job, new, final, "LENGTH" if final else "NOT_FINISHED", None))
                    if events and events[-1][0] is job and events[-1][2]:
                        del self._jobs[job.id]
                self.iterations += 1
                per_block = CONTROL.tokens_per_block
                self.kv_used_blocks = sum(-(-(len(j.input_ids) + len(j.produced)) // per_block)
                                          for j in self._jobs.values())
            for event in events:
                self._emit(*event)
