"""Test helper for cores used without an LLMServer (which owns flush): wait until a core's backend has
nothing in flight, on its recording sink's condition."""

from __future__ import annotations


def wait_idle(core, timeout_s: float = 5.0) -> None:
    """Until `core` has nothing in flight (its sink must be a tests.conftest Recorder); raise
    FlushTimeoutError naming what it still has."""
    core.sink.wait_idle(core, timeout_s)
