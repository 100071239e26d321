"""Runs generated code (MBXP, LiveCodeBench) safely: each program in its own process and scratch
folder, with wall-time, CPU, memory, file-size and process-count limits and no network, many at once.

Isolation (see `_launch.py`): a fresh network namespace when the kernel allows (`network: netns`),
else socket creation blocked for Python programs (`socket-blocked`); a PID namespace whose init is
killed at the deadline, taking every process of the program with it (else the program's process
group is killed at the deadline and after it ends); generated code never runs as root (root drops
to `nobody`, so RLIMIT_NPROC counts). A hang or a fork bomb fails only its own sample. The scratch
folder is removed afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TypeVar

_LAUNCHER = str(Path(__file__).with_name("_launch.py"))
_SOCKET_BLOCK = """\
import socket as _s
def _blocked(*a, **k):
    raise PermissionError("network access is disabled in the evaluation sandbox")
_s.socket = _blocked
_s.create_connection = _blocked
_s.socketpair = _blocked
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-program limits."""

    timeout_s: float = 20.0
    memory_mb: int = 2048
    max_procs: int = 32
    fsize_mb: int = 64
    no_network: bool = True
    try_netns: bool = True  # False: skip the namespace and use the socket block (tests of the fallback)
    try_pidns: bool = True  # False: no PID namespace; the process group kill alone (tests of the fallback)


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one program ended."""

    returncode: int | None  # None when killed at the deadline
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    network: str  # netns | socket-blocked | none
    scratch: str = field(default="", compare=False)  # the folder it ran in (gone by now)
    pid_namespace: bool = False  # ran under its own init: nothing it started can outlive it
    compiled: bool = True  # False: the compile step failed and the program never ran

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.compiled


def _socket_block_dir() -> str:
    d = Path(tempfile.gettempdir()) / f"llmlib-sandbox-site-{os.getuid()}"
    site = d / "sitecustomize.py"
    if not site.is_file() or site.read_text() != _SOCKET_BLOCK:
        d.mkdir(mode=0o755, exist_ok=True)
        tmp = d / f".sitecustomize.{os.getpid()}"
        tmp.write_text(_SOCKET_BLOCK)
        tmp.chmod(0o644)
        tmp.replace(site)
    return str(d)


def run_program(argv: list[str], files: dict[str, str] | None = None, *, stdin: str = "",
                limits: Limits = Limits(), compile_argv: list[str] | None = None,
                compile_ok: tuple[int, ...] = (0,), compile_timeout_s: float = 100.0) -> RunResult:
    """Write `files` into a fresh scratch folder, optionally compile (success: an exit status in
    `compile_ok`), run `argv` there under the limits, and return how it ended. Never raises for
    anything the program does."""
    scratch = tempfile.mkdtemp(prefix="llmlib-sandbox-")
    private = tempfile.mkdtemp(prefix="llmlib-sandbox-out-")  # 0700: the program cannot reach it
    try:
        for name, text in (files or {}).items():
            (Path(scratch) / name).write_text(text, encoding="utf-8")
        if os.getuid() == 0:
            for p in [scratch, *[str(Path(scratch) / n) for n in (files or {})]]:
                os.chown(p, 65534, 65534)
        if compile_argv:
            built = _run_limited(compile_argv, scratch, private, "", limits, wall=compile_timeout_s)
            if built.timed_out or built.returncode not in compile_ok:
                return dataclasses.replace(built, compiled=False)
        return _run_limited(argv, scratch, private, stdin, limits, wall=limits.timeout_s)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def _run_limited(argv: list[str], cwd: str, private: str, stdin: str, limits: Limits, *, wall: float) -> RunResult:
    out_path, err_path, in_path = (os.path.join(private, n) for n in ("stdout", "stderr", "stdin"))
    Path(in_path).write_text(stdin, encoding="utf-8")
    report_r, report_w = os.pipe()
    spec = {"memory_mb": limits.memory_mb, "cpu_s": int(wall) + 1, "fsize_mb": limits.fsize_mb,
            "max_procs": limits.max_procs, "no_network": limits.no_network,
            "try_netns": limits.try_netns, "try_pidns": limits.try_pidns, "report_fd": report_w,
            "socket_block_dir": _socket_block_dir()}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    t0 = time.monotonic()
    timed_out = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err, open(in_path, "rb") as inp:
        try:
            proc = subprocess.Popen([sys.executable, "-I", _LAUNCHER, json.dumps(spec), "--", *argv], cwd=cwd,
                                    stdin=inp, stdout=out, stderr=err, env=env, start_new_session=True,
                                    pass_fds=(report_w,))
        except OSError as e:
            os.close(report_r)
            os.close(report_w)
            return RunResult(None, "", f"sandbox: cannot start ({e})", False, 0.0, "none", cwd)
        os.close(report_w)
        with os.fdopen(report_r, "rb") as r:  # the launcher writes "<network> <init pid or 0>", then closes it
            words = r.read().decode().split()
        network = words[0] if words else "none"
        init_pid = int(words[1]) if len(words) > 1 else 0
        try:
            rc = proc.wait(timeout=wall)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
            if init_pid:  # the namespace's init: killing it kills and reaps everything inside
                try:
                    os.kill(init_pid, signal.SIGKILL)
                    proc.wait(timeout=5)  # the launcher reaps its init and exits: no zombie is left
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        finally:
            _kill_group(proc)
    wall_s = time.monotonic() - t0
    read = lambda p: Path(p).read_bytes()[: 1 << 20].decode("utf-8", errors="replace")  # noqa: E731
    return RunResult(rc, read(out_path), read(err_path), timed_out, wall_s, network, cwd, init_pid > 0)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process in the program's group (children, grandchildren, a fork bomb) and reap
    the leader. The kernel creates no child for a process with SIGKILL pending, so a bomb cannot
    outgrow the signal; the repeats catch members still being torn down (orphans go to init)."""
    for _ in range(100):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        if proc.poll() is None:
            proc.wait()
    if proc.poll() is None:
        proc.wait()


T = TypeVar("T")
R = TypeVar("R")


def run_parallel(func: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """`func` over items, `workers` at a time (each call waits on its own sandboxed process, so
    threads are enough to keep every core busy); results in input order."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return list(pool.map(func, items))
