"""Test-side helper: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, from the
venv `make test_servers` builds) serving a GGUF model on 127.0.0.1, started and stopped by the tests.

The server is a real third-party one; the settings here only make it deterministic and fit for a
benchmark: one request at a time is its design, so a stream is not cut short when the next request
arrives (`--interrupt_requests false`), and no repetition penalty is applied (its sampler applies one
over the last 64 tokens by default, which the OpenAI API has no field to turn off).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / "build" / "llamacpp-server-venv"
#: the name /v1/models lists for the model
MODEL_ALIAS = "tiny-llama"
#: longest wait for the server to load the model and listen
START_TIMEOUT_S = 60.0
#: longest wait for the server to exit after SIGTERM, before SIGKILL
STOP_TIMEOUT_S = 10.0
#: the line uvicorn logs once the socket listens
_READY_LINE = "Uvicorn running on"


def server_python() -> Path:
    """The server venv's interpreter; a missing venv FAILS the test (CI must build it)."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"llama-cpp-python's server is not installed: {python} is missing. "
                    "Build it with `make test_servers` (scripts/setup_llamacpp_server_env.sh).", pytrace=False)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    n_ctx: int = 1024
    n_threads: int = 1
    seed: int = 0
    start_timeout_s: float = START_TIMEOUT_S


def server_command(python: Path, model: Path, port: int, options: ServerOptions) -> list[str]:
    """The command line of one server; every setting that changes outputs or timing is explicit."""
    args = {
        "model": str(model),
        "model_alias": MODEL_ALIAS,
        "host": "127.0.0.1",
        "port": port,
        "n_ctx": options.n_ctx,
        "n_threads": options.n_threads,
        "n_threads_batch": options.n_threads,
        "seed": options.seed,
        "n_gpu_layers": 0,
        "interrupt_requests": "false",
        "last_n_tokens_size": 0,  # no repetition penalty window: greedy decoding stays greedy
        "logits_all": "false",  # logits of the last position only (no logprobs needed)
        "cache": "false",
        "verbose": "false",
    }
    return [str(python), "-m", "llama_cpp.server", *(f"--{k}={v}" for k, v in args.items())]


def _server_env() -> dict[str, str]:
    """A minimal environment: the server reads its settings from environment variables too (MODEL,
    PORT, API_KEY, ...), so nothing of the caller's may leak in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LlamaCppServer:
    """One server process in its own process group; `with LlamaCppServer(model) as s:` starts it,
    waits until it listens, and stops it. `s.url` is host:port; `s.log()` its recent output."""

    def __init__(self, model: Path, options: ServerOptions | None = None):
        self.model = Path(model)
        self.options = options or ServerOptions()
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = False
        self._settled = threading.Event()  # set once the server listens or its output ends
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(self._lines)

    def start(self) -> LlamaCppServer:
        python = server_python()
        self.port = free_port()
        self._proc = subprocess.Popen(
            server_command(python, self.model, self.port, self.options), cwd=REPO, env=_server_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read_output, name="llamacpp-server-log", daemon=True)
        self._reader.start()
        self._wait_ready()
        return self

    def _read_output(self) -> None:
        """Drain the server's output (a full pipe would block it); note readiness and exit."""
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line.rstrip())
            if not self._ready and _READY_LINE in line:
                self._ready = True
                self._settled.set()
        self._settled.set()

    def _wait_ready(self) -> None:
        if not self._settled.wait(self.options.start_timeout_s) or not self._ready:
            why = "exited" if self._settled.is_set() else f"did not listen within {self.options.start_timeout_s:g}s"
            self.stop()
            raise RuntimeError(f"llama-cpp-python server on port {self.port} {why}; its output:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM the process group, then SIGKILL it after STOP_TIMEOUT_S; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        return proc.returncode

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the server is its group's leader (start_new_session)
    except ProcessLookupError:
        pass
