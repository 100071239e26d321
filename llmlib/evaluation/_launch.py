"""Sandbox launcher: run as `python -m llmlib.evaluation._launch LIMITS_JSON -- argv...`; it isolates
itself (network namespace or blocked sockets, resource limits, no root), then execs the program."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNET = 0x40000000


def _unshare_net() -> bool:
    """A fresh network namespace (only a downed loopback): no network at all. Needs root or
    user namespaces; False when the kernel refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_NEWNET) == 0
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


def main() -> None:
    limits = json.loads(sys.argv[1])
    argv = sys.argv[3:]
    env = dict(os.environ)
    want_ns = limits.get("no_network", True) and limits.get("try_netns", True)
    net = "netns" if want_ns and _unshare_net() else "none"
    if limits.get("no_network", True) and net == "none":
        # No namespace: Python programs get sockets blocked by a sitecustomize on their path.
        env["PYTHONPATH"] = limits["socket_block_dir"] + os.pathsep + env.get("PYTHONPATH", "")
        net = "socket-blocked"
    uid = os.getuid()
    if uid == 0:  # never run generated code as root; `nobody` is also what makes RLIMIT_NPROC count
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
    os.write(limits["report_fd"], net.encode())
    os.close(limits["report_fd"])
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        sys.stderr.write(f"sandbox: cannot run {argv[0]}: {err}\n")
        os._exit(127)


if __name__ == "__main__":
    main()
