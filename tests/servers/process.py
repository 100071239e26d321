"""Test-side helper: a third-party server process on 127.0.0.1 in its own process group, its output
drained and kept, ready when it logs a given line, stopped with SIGTERM then SIGKILL.

The llama-cpp-python and `transformers serve` helpers subclass it with their command and environment.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: longest wait for a server to exit after SIGTERM, before SIGKILL
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with Server(...) as s:` starts the process, waits until it logs `ready_line`, and stops it.
    Subclasses give `name`, `ready_line`, `command()` and `env()`; `s.url` is host:port, `s.log()`
    its recent output."""

    name = "server"
    ready_line = "Uvicorn running on"

    def __init__(self, start_timeout_s: float):
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = False
        self._settled = threading.Event()  # set once the server listens or its output ends
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(self._lines)

    def start(self):
        self.port = free_port()
        self._proc = subprocess.Popen(self.command(), cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read_output, name=f"{self.name}-log", daemon=True)
        self._reader.start()
        if not self._settled.wait(self.start_timeout_s) or not self._ready:
            why = "exited" if self._settled.is_set() else f"did not listen within {self.start_timeout_s:g}s"
            self.stop()
            raise RuntimeError(f"{self.name} on port {self.port} {why}; its output:\n{self.log()}")
        return self

    def _read_output(self) -> None:
        """Drain the server's output (a full pipe would block it); note readiness and exit."""
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line.rstrip())
            if not self._ready and self.ready_line in line:
                self._ready = True
                self._settled.set()
        self._settled.set()

    def stop(self) -> int | None:
        """SIGTERM the process group, then SIGKILL it after STOP_TIMEOUT_S; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        return proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the server is its group's leader (start_new_session)
    except ProcessLookupError:
        pass
