"""Sandbox launcher: run as `python -I _launch.py LIMITS_JSON -- argv...`; it isolates the program
(network and PID namespaces, or blocked sockets; resource limits; never root) and runs it.

With a PID namespace the launcher forks a small init (PID 1 there) that forks the program and reaps
everything; when the program ends, or the evaluator kills that init at the deadline, the kernel
kills and reaps every process left in the namespace, so nothing outlives a sample, not even zombies.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000


def _unshare(flags: int) -> bool:
    """True when the kernel gave this process the new namespace(s) (root or user namespaces)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def _count_procs(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a shell says


def _run(limits: dict, argv: list[str], env: dict[str, str]) -> None:
    """Drop root, set the limits, exec the program (never returns)."""
    if os.getuid() == 0:  # never run generated code as root; `nobody` is also what makes RLIMIT_NPROC count
        uid = limits.get("run_as_uid", 65534)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    mem = int(limits["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize = int(limits["fsize_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nproc = _count_procs(os.getuid()) + int(limits["max_procs"])
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        sys.stderr.write(f"sandbox: cannot run {argv[0]}: {err}\n")
        os._exit(127)


def _init(limits: dict, argv: list[str], env: dict[str, str]) -> None:
    """PID 1 of the namespace: fork the program, reap every child, exit with the program's status."""
    program = os.fork()
    if program == 0:
        _run(limits, argv, env)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == program:
            os._exit(_exit_code(status))


def main() -> None:
    limits = json.loads(sys.argv[1])
    argv = sys.argv[3:]
    env = dict(os.environ)
    report = limits["report_fd"]
    no_network = limits.get("no_network", True)
    net = "netns" if no_network and limits.get("try_netns", True) and _unshare(CLONE_NEWNET) else "none"
    if no_network and net == "none":
        # No namespace: Python programs get sockets blocked by a sitecustomize on their path.
        env["PYTHONPATH"] = limits["socket_block_dir"] + os.pathsep + env.get("PYTHONPATH", "")
        net = "socket-blocked"
    if limits.get("try_pidns", True) and _unshare(CLONE_NEWPID):
        init = os.fork()
        if init == 0:
            os.close(report)
            _init(limits, argv, env)
        os.write(report, f"{net} {init}".encode())
        os.close(report)
        while True:
            try:
                _, status = os.waitpid(init, 0)
                break
            except InterruptedError:
                continue
        os._exit(_exit_code(status))
    os.write(report, f"{net} 0".encode())
    os.close(report)
    _run(limits, argv, env)


if __name__ == "__main__":
    main()
