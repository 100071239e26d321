"""Test-side helper: Hugging Face's `transformers serve` (OpenAI-compatible, from the venv `make
test_servers` builds) serving the project's tiny model from build/tiny-llama on 127.0.0.1.

A real third-party server: it takes text prompts only, refuses any field outside OpenAI's (HTTP 422),
ends its streams after a chunk with `finish_reason` and `usage` and no `[DONE]`, and lists only the
models of its hub cache on /v1/models (an empty cache folder here, so the list is empty). The model is
pinned on the command line, so requests need no `model` field.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.llamacpp import free_port

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / "build" / "transformers-serve-venv"
#: longest wait for the server to load the model and listen
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
_READY_LINE = "Uvicorn running on"


def serve_command() -> Path:
    """The venv's `transformers` command; a missing venv FAILS the test (CI must build it)."""
    command = VENV / "bin" / "transformers"
    if not command.is_file():
        pytest.fail(f"transformers serve is not installed: {command} is missing. Build it with "
                    "`make test_servers` (scripts/setup_transformers_serve_env.sh).", pytrace=False)
    return command


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    threads: int = 1
    seed: int = 0
    #: continuous batching (paged attention, `sdpa`): requests batched as they come; without it each
    #: request waits for the one before (TTFT p99 ~2.5 s at 3 requests/s here, ~70 ms with it)
    continuous_batching: bool = True
    start_timeout_s: float = START_TIMEOUT_S


class TransformersServe:
    """One `transformers serve <model>` in its own process group; `with TransformersServe(path) as s:`
    starts it, waits until it listens, and stops it. `s.url` is host:port; `s.log()` its recent output."""

    def __init__(self, model: Path, options: ServeOptions | None = None):
        self.model = Path(model)
        self.options = options or ServeOptions()
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = False
        self._settled = threading.Event()
        self._reader: threading.Thread | None = None
        self._home: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(self._lines)

    def command(self) -> list[str]:
        return [str(serve_command()), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "--device", "cpu", "--dtype", "float32", "--default-seed", str(self.options.seed),
                "--log-level", "warning",
                *(["--continuous-batching", "--attn-implementation", "sdpa"] if self.options.continuous_batching
                  else [])]

    def _env(self) -> dict[str, str]:
        """A minimal environment; an empty hub cache of its own (so /v1/models lists nothing, as on a
        fresh machine, instead of failing on a missing folder) and no network for the hub."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        assert self._home is not None
        os.makedirs(os.path.join(self._home.name, "hub"), exist_ok=True)
        env.update(HF_HOME=self._home.name, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   OMP_NUM_THREADS=str(self.options.threads), PYTHONUNBUFFERED="1")
        return env

    def start(self) -> TransformersServe:
        self.port = free_port()
        self._home = tempfile.TemporaryDirectory(prefix="hf-home-")
        self._proc = subprocess.Popen(self.command(), cwd=REPO, env=self._env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read_output, name="transformers-serve-log", daemon=True)
        self._reader.start()
        if not self._settled.wait(self.options.start_timeout_s) or not self._ready:
            why = "exited" if self._settled.is_set() else f"did not listen within {self.options.start_timeout_s:g}s"
            self.stop()
            raise RuntimeError(f"transformers serve on port {self.port} {why}; its output:\n{self.log()}")
        return self

    def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line.rstrip())
            if not self._ready and _READY_LINE in line:
                self._ready = True
                self._settled.set()
        self._settled.set()

    def stop(self) -> int | None:
        """SIGTERM the process group, then SIGKILL after STOP_TIMEOUT_S; returns the exit code."""
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
        if self._home is not None:
            self._home.cleanup()
            self._home = None
        return proc.returncode

    def __enter__(self) -> TransformersServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
