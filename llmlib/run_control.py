"""Stopping a run on purpose: Ctrl-C / SIGTERM, and a core that can no longer serve.

A watcher thread does the work, so a signal is handled at once even while the main thread sits in LoadGen.

The first stop (SIGINT, SIGTERM, or `abort(cause)` from the server) runs the harness's stop
action: no new request reaches a backend, everything pending fails with the cause, and LoadGen is
left to finish its test (Offline ends at once; a Server schedule runs on, its samples failing at
issue) so that its logs and the summary are written. If the run has not finished `grace_s` after
the first stop, or a second signal arrives, the hard-exit action writes what is known, reaps the
child processes and leaves with `os._exit`, never calling LoadGen again (so it cannot crash into a
LoadGen that is being torn down).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The exit codes of a run stopped by a signal (128 + the signal number, as shells report it).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_ABORT = b"\x00"  # written into the wake-up pipe by abort(); signals write their own number


class RunControl:
    """One run's stop state. `install()` (main thread only) takes SIGINT and SIGTERM until
    `uninstall()`; `stop_reason` is None until the run is stopped."""

    def __init__(self, *, grace_s: float = 20.0, signals: bool = True, out: Callable[[str], None] | None = None):
        self.grace_s = grace_s
        self.take_signals = signals
        self.stop_reason: str | None = None
        self.exit_code: int | None = None  # set by a signal (130 / 143); an abort leaves it None
        self.signals = 0
        self._out = out or _stderr
        self._on_stop: Callable[[str], None] | None = None
        #: seconds LoadGen still needs to end its test once every sample fails at issue (a Server
        #: schedule runs on); when that is more than the grace, waiting is pointless
        self.loadgen_time_left: Callable[[], float] | None = None
        self._on_hard_exit: Callable[[str], None] | None = None
        self._abort_cause: str | None = None
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._rfd = self._wfd = -1
        self._old: dict[int, object] = {}
        self._old_wakeup = -1
        self._thread: threading.Thread | None = None

    # --- wiring --------------------------------------------------------------------------------------
    def on_stop(self, action: Callable[[str], None] | None) -> None:
        """What the first stop does (given the cause); None clears it."""
        self._on_stop = action

    def on_hard_exit(self, action: Callable[[str], None] | None) -> None:
        """What to write before a hard exit (given why); it must not call LoadGen."""
        self._on_hard_exit = action

    def install(self) -> RunControl:
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        if self.take_signals and threading.current_thread() is threading.main_thread():
            self._old_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, _record_only)
        self._thread = threading.Thread(target=self._watch, name="run-control", daemon=True)
        self._thread.start()
        return self

    def uninstall(self) -> None:
        """Give the signals back; the watcher thread ends."""
        if self._thread is None:
            return
        if self._old:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(self._old_wakeup)
            self._old.clear()
        self._finished.set()
        try:
            os.write(self._wfd, b"\xff")
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> RunControl:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    # --- from the run ----------------------------------------------------------------------------------
    def abort(self, cause: str) -> None:
        """Stop the run early because it can no longer succeed (a dead core). Non-blocking and safe
        from any thread, including a core's or LoadGen's; only the first cause counts."""
        with self._lock:
            if self._abort_cause is not None or self.stop_reason is not None:
                return
            self._abort_cause = cause
        try:
            os.write(self._wfd, _ABORT)
        except OSError:  # not installed (or already uninstalled): act here
            self._stop(cause)

    def finished(self) -> None:
        """LoadGen's test has ended: the grace timer no longer applies (a second signal still
        exits at once)."""
        self._finished.set()

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    # --- the watcher -----------------------------------------------------------------------------------
    def _watch(self) -> None:
        deadline: float | None = None
        while True:
            timeout = None
            if deadline is not None and not self._finished.is_set():
                timeout = max(deadline - time.monotonic(), 0.0)
            try:
                ready, _, _ = select.select([self._rfd], [], [], timeout)
            except (OSError, ValueError):
                return
            if not ready:  # the grace period ran out with LoadGen still running
                self._hard_exit(f"LoadGen did not finish within {self.grace_s:g}s of the stop")
                return
            try:
                data = os.read(self._rfd, 64)
            except OSError:
                return
            for byte in data:
                if byte == 0xFF:
                    return
                if byte == 0:
                    if self._stop(self._abort_cause or "aborted") and deadline is None:
                        deadline = time.monotonic() + self.grace_s
                        self._exit_if_pointless()
                    continue
                if byte not in EXIT_CODES:
                    continue
                self.signals += 1
                name = signal.Signals(byte).name
                if self.signals >= 2:
                    self._hard_exit(f"second signal ({name})")
                    return
                self.exit_code = EXIT_CODES.get(byte, 128 + byte)
                if self.stop_reason is None:
                    self._out(f"\n{name}: stopping the run: no new requests, pending ones fail as interrupted, "
                              f"LoadGen may take {self.grace_s:g}s to finish (--interrupt_grace_s). "
                              f"Press Ctrl-C again to exit at once.")
                self._stop(f"interrupted by {name}")
                if deadline is None:
                    deadline = time.monotonic() + self.grace_s
                    self._exit_if_pointless()

    def _exit_if_pointless(self) -> None:
        """A hard exit now if LoadGen's test cannot end within the grace (its Server schedule
        has longer to run); waiting would only delay the same outcome."""
        left_fn = self.loadgen_time_left
        if left_fn is None or self._finished.is_set():
            return
        try:
            left = left_fn()
        except Exception:  # an estimate only
            return
        if left > self.grace_s:
            self._hard_exit(f"LoadGen's schedule has about {left:.0f}s left, more than --interrupt_grace_s="
                            f"{self.grace_s:g}")

    def _stop(self, cause: str) -> bool:
        with self._lock:
            if self.stop_reason is not None:
                return False
            self.stop_reason = cause
        if self._abort_cause is not None and cause == self._abort_cause:
            self._out(f"\nstopping the run early: {cause}")
        action = self._on_stop
        if action is not None:
            try:
                action(cause)
            except Exception as err:  # the stop must go on: log and continue
                log.error("stop action failed: %r", err)
        return True

    def _hard_exit(self, why: str) -> None:
        if self.exit_code is None:  # no signal: a run that could not go on has failed
            self.exit_code = 1 if self._abort_cause is not None else 130
        self._out(f"\nexiting now: {why}")
        action = self._on_hard_exit
        if action is not None:
            try:
                action(why)
            except Exception as err:
                log.error("writing the summary before exit failed: %r", err)
        reap_children()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(self.exit_code)


def reap_children(timeout_s: float = 3.0) -> None:
    """Terminate, then kill, every child process of this one (multiprocessing workers and any
    other child), so a hard exit leaves nothing behind."""
    children = multiprocessing.active_children()
    for p in children:
        p.terminate()
    for p in children:
        p.join(timeout_s)
        if p.is_alive():
            p.kill()
            p.join(1.0)
    for pid in _child_pids():
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError, PermissionError):
            pass


def _child_pids() -> list[int]:
    """Direct children of this process (Linux: /proc/<pid>/task/*/children)."""
    pids: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{os.getpid()}/task"):
            try:
                with open(f"/proc/{os.getpid()}/task/{task}/children") as fh:
                    pids.update(int(p) for p in fh.read().split())
            except OSError:
                continue
    except OSError:
        pass
    return sorted(pids)


def _record_only(signum, frame) -> None:
    """The Python-level handler: the C-level one has already woken the watcher thread through the
    wake-up fd; raising KeyboardInterrupt here would tear through LoadGen's callbacks."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
