"""The code sandbox: each program in its own process and scratch folder with limits and no network;
a crash, a hang, a memory hog or a fork bomb fails that program only, never the evaluation."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from llmlib.evaluation.sandbox import Limits, run_parallel, run_program

FAST = Limits(timeout_s=5.0, memory_mb=512, max_procs=16)


def py(code: str, limits: Limits = FAST, **kw):
    return run_program(["python3", "main.py"], {"main.py": code}, limits=limits, **kw)


def test_a_good_program_passes_and_sees_its_stdin_and_files():
    code = "import sys; print(sys.stdin.read().upper(), open('data.txt').read())"
    r = run_program(["python3", "main.py"], {"main.py": code, "data.txt": "hello"}, stdin="abc", limits=FAST)
    assert r.ok and r.stdout.split() == ["ABC", "hello"] and r.stderr == ""


def test_a_crash_fails_with_its_error():
    r = py("raise ValueError('boom')")
    assert not r.ok and r.returncode == 1 and "ValueError: boom" in r.stderr


def test_a_hang_is_killed_at_the_deadline():
    t0 = time.monotonic()
    r = py("while True: pass", Limits(timeout_s=1.0, memory_mb=512))
    assert r.timed_out and not r.ok and r.returncode is None
    assert time.monotonic() - t0 < 4


@pytest.mark.slow  # seconds
@pytest.mark.parametrize("pidns", [True, False], ids=["pid-namespace", "process-group"])
def test_a_sleeping_child_left_behind_is_killed(pidns):
    shared = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    shared.chmod(0o777)  # the program runs as another user
    try:
        code = ("import os, time\n"
                "if os.fork() == 0:\n"
                f"    open({str(shared / 'started')!r}, 'w').write('1')\n"
                f"    time.sleep(2); open({str(shared / 'alive')!r}, 'w').write('still running')\n"
                "    os._exit(0)\n"
                "time.sleep(0.5)\n"
                "print('parent done')\n")
        r = py(code, Limits(timeout_s=5.0, memory_mb=512, try_pidns=pidns))
        assert r.ok and "parent done" in r.stdout
        if pidns and os.getuid() == 0:
            assert r.pid_namespace
        time.sleep(2.5)
        assert (shared / "started").exists(), "the child never ran: the test proves nothing"
        assert not (shared / "alive").exists(), "a child outlived its program"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.slow  # seconds
@pytest.mark.parametrize("pidns", [True, False], ids=["pid-namespace", "process-group"])
def test_a_fork_bomb_fails_its_sample_and_leaves_nothing_behind(pidns):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    zombies_before = _zombies()
    t0 = time.monotonic()
    r = py(code, Limits(timeout_s=2.0, memory_mb=256, max_procs=20, try_pidns=pidns))
    assert not r.ok and r.timed_out and time.monotonic() - t0 < 15
    time.sleep(0.2)
    # Nothing of it is left running.
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith("main.py")]
    assert not left, left
    if r.pid_namespace:  # its init reaped them all: not even zombies stay (this container's PID 1 reaps none)
        assert _zombies() <= zombies_before


def _zombies() -> int:
    """Zombies of the user sandboxed programs run as (`nobody` under root), so other work on the
    machine does not move the count."""
    uid = 65534 if os.getuid() == 0 else os.getuid()
    n = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    n += Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            except (OSError, IndexError):
                pass
    return n


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_memory_beyond_the_limit_fails_the_program():
    r = py("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", Limits(timeout_s=5.0, memory_mb=256))
    assert not r.ok and "allocated" not in r.stdout and "MemoryError" in r.stderr


def test_no_network_from_inside():
    code = ("import socket\n"
            "try:\n"
            "    s = socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
            "    print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('blocked', type(e).__name__)\n"
            "import subprocess\n"
            "print(open('/proc/net/dev').read().count(':'))\n")
    r = py(code)
    assert r.ok and "CONNECTED" not in r.stdout and "blocked" in r.stdout
    assert r.network in ("netns", "socket-blocked")
    if r.network == "netns":  # a namespace of its own: only a loopback device, no route out
        assert r.stdout.strip().splitlines()[-1] == "1"


def test_without_a_namespace_python_programs_cannot_create_sockets():
    r = py("import socket\nsocket.socket()\nprint('CREATED')", Limits(timeout_s=5.0, memory_mb=512, try_netns=False))
    assert r.network == "socket-blocked" and not r.ok and "CREATED" not in r.stdout
    assert "network access is disabled in the evaluation sandbox" in r.stderr


def test_the_scratch_folder_is_removed_and_is_where_the_program_ran():
    r = py("import os; open('out.txt', 'w').write('x'); print(os.getcwd())")
    assert r.ok and r.stdout.strip() == r.scratch
    assert not Path(r.scratch).exists()


def test_generated_code_never_runs_as_root():
    r = py("import os; print(os.getuid())")
    assert r.ok and (os.getuid() != 0 or r.stdout.strip() != "0")


def test_a_missing_interpreter_fails_the_program_not_the_caller():
    r = run_program(["no-such-interpreter-xyz", "main.x"], {"main.x": ""}, limits=FAST)
    assert not r.ok and r.returncode == 127 and "cannot run" in r.stderr


@pytest.mark.slow  # seconds
def test_parallel_evaluation_survives_bad_programs_and_runs_concurrently():
    programs = ["print(1)", "raise SystemExit(3)", "while True: pass", "import time; time.sleep(1); print(2)",
                "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", "print(3)"]
    t0 = time.monotonic()
    results = run_parallel(lambda code: py(code, Limits(timeout_s=2.0, memory_mb=256, max_procs=20)), programs, 4)
    wall = time.monotonic() - t0
    assert [r.ok for r in results] == [True, False, False, True, False, True]
    assert results[2].timed_out and results[1].returncode == 3
    assert wall < 2.0 * len(programs)  # not one after the other


@pytest.mark.parametrize("timeout", [0.5])
def test_output_flood_is_capped(timeout):
    r = py("import sys\nwhile True: sys.stdout.write('x' * 65536)",
           Limits(timeout_s=timeout, memory_mb=256, fsize_mb=1))
    assert not r.ok and len(r.stdout) <= 1 << 20
