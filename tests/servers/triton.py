"""Starts and stops the real Triton Inference Server the tests use (tests/servers/triton_trtllm_server.py,
run by build/triton-server-venv's python), in its own process group so that nothing outlives a test.

    with TritonServer(num_models=2, output_tokens=12, per_token_delay_ms=0.2) as server:
        client = tritonclient.grpc.InferenceServerClient(server.url)

Options are the script's flags without dashes (`fail_rate=0.2` -> `--fail_rate 0.2`; a list for `models`).
A missing server venv is an error naming `make test_servers`, so the tests fail instead of skipping.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_VENV = REPO / "build" / "triton-server-venv"
SERVER_SCRIPT = Path(__file__).resolve().with_name("triton_trtllm_server.py")
#: Start-up is ~5 s on an idle machine (tritonserver, then one Python backend stub per model);
#: the margin is for a loaded 2-core CI box.
START_TIMEOUT_S = 120.0
#: A clean stop takes ~4-5 s: Triton unloads each model and polls its shutdown once a second.
STOP_TIMEOUT_S = 20.0
#: A model file in the copy of the model repository that tritonserver makes when PyTriton loads a model.
MODEL_COPY = re.compile(r"^(/tmp/folder[A-Za-z0-9]{6})/\d+/model\.py$")
#: How much of the server's log an error message quotes.
LOG_TAIL_CHARS = 4000


class TritonServerError(RuntimeError):
    """The test server could not be started (missing venv, a crash, no ready line in time)."""


class TritonServer:
    """One emulated TensorRT-LLM Triton server. `start()` (or `with`) returns once every model is ready."""

    def __init__(self, **options):
        self.options = options
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.models: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._tmp: Path | None = None

    @property
    def url(self) -> str:
        """The gRPC address, as tritonclient.grpc and --triton_server_urls take it."""
        if self.grpc_port is None:
            raise TritonServerError("the Triton server is not started")
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, **options) -> TritonServer:
        if self._proc is not None:
            raise TritonServerError("the Triton server is already started")
        self.options.update(options)
        python = SERVER_VENV / "bin" / "python"
        if not python.exists():
            raise TritonServerError(f"{python} is missing: run `make test_servers` to build the Triton server "
                                    f"environment (scripts/setup_triton_server_env.sh)")
        self._tmp = Path(tempfile.mkdtemp(prefix="triton-test-"))
        cmd = [str(python), str(SERVER_SCRIPT), "--workspace", str(self._tmp)]
        for name, value in self.options.items():
            cmd += [f"--{name}", ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
        # PyTriton's default workspace and caches would land in the home folder.
        env = {**os.environ, "PYTRITON_HOME": str(self._tmp)}
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                          env=env, start_new_session=True)
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self.kill)
            ready = self._read_ready_line(time.monotonic() + START_TIMEOUT_S)
            on_failure.pop_all()
        self.grpc_port, self.http_port, self.models = ready["grpc_port"], ready["http_port"], ready["models"]
        return self

    def stop(self) -> None:
        """SIGTERM (the script stops tritonserver and cleans up), SIGKILL for the group after a deadline."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL every process of the server at once (a crashed server, for the clients), then remove
        what a clean stop would have: the shared memory they mapped and Triton's copies of the models."""
        if self._proc is None:
            return
        pids = _group_pids(self._proc.pid)
        shm, model_dirs = _mapped_shm(pids), _model_copies(pids)
        if pids:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait()
        self._proc.stdout.close()
        for path in shm:
            path.unlink(missing_ok=True)
        for path in model_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._proc = None
        self.grpc_port = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def _log_path(self) -> Path:
        return self._tmp / "server.log"

    def log_tail(self) -> str:
        """The end of the server's stderr (tritonserver's log included)."""
        try:
            return self._log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def _read_ready_line(self, deadline: float) -> dict:
        out = self._proc.stdout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TritonServerError(f"the Triton server was not ready within {START_TIMEOUT_S:.0f} s; "
                                        f"its log ends:\n{self.log_tail()}")
            readable, _, _ = select.select([out], [], [], remaining)
            if not readable:
                continue
            line = out.readline()
            if not line:
                code = self._proc.wait()
                raise TritonServerError(f"the Triton server exited with code {code} before it was ready; "
                                        f"its log ends:\n{self.log_tail()}")
            try:
                return json.loads(line)
            except json.JSONDecodeError as err:
                raise TritonServerError(f"the Triton server printed {line!r}, not its ready line") from err


def _group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc: the group outlives its leader's children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _mapped_shm(pids: list[int]) -> set[Path]:
    """The /dev/shm files these processes map (Triton's Python backend region, PyTriton's tensor store)."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)  # address, perms, offset, device, inode[, path]
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                found.add(Path(fields[5].removesuffix(" (deleted)")))
    return found


def _model_copies(pids: list[int]) -> set[Path]:
    """The folders tritonserver copied the models into (/tmp/folderXXXXXX, whatever TMPDIR says), named
    by the Python backend stubs' command lines: `triton_python_backend_stub /tmp/folderAbC123/1/model.py ...`."""
    found = set()
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            match = MODEL_COPY.match(arg.decode(errors="replace"))
            if match:
                found.add(Path(match.group(1)))
    return found


@pytest.fixture
def make_triton_server():
    """make_triton_server(**options) -> a started TritonServer, stopped after the test."""
    started = []

    def make(**options) -> TritonServer:
        server = TritonServer(**options)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
