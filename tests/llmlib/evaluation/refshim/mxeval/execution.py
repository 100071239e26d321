"""mxeval.execution stand-in: python (exec'd as mxeval does), javascript and cpp programs (judged by
exit status as mxeval does)."""

import os
import subprocess
import sys
import tempfile


def _run(cmds, files, timeout):
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        try:
            for cmd in cmds:
                r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
                if r.returncode != 0:
                    return {"passed": False, "result": r.stderr}
        except subprocess.TimeoutExpired:
            return {"passed": False, "result": "timed out"}
    return {"passed": True, "result": "passed"}


# mxeval runs the Python check program with exec() and empty globals in a child process, with its
# output swallowed, stdin unreadable and exit/quit removed; any exception fails it.
_EXEC = """
import builtins, io, sys
class W(io.StringIO):
    def read(self, *a): raise IOError
    def readline(self, *a): raise IOError
src = open("check.py").read()
builtins.exit = None
builtins.quit = None
real = sys.stdout
sys.stdout = sys.stderr = sys.stdin = W()
try:
    exec(src, {})
except BaseException as e:
    sys.__stderr__.write("failed: %s" % e)
    raise SystemExit(1)
real.write("passed")
"""


def check_correctness(problem, completion, timeout, completion_id=None):
    program = problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"
    return _run([[sys.executable, "runner.py"]], {"check.py": program, "runner.py": _EXEC}, timeout)


def check_correctness_javascript(problem, completion, timeout, completion_id=None, verbose=False):
    return _run([["node", "main.js"]], {"main.js": problem["prompt"] + completion + problem["test"]}, timeout)


def check_correctness_cpp(problem, completion, timeout, completion_id=None, verbose=False):
    return _run([["g++", "main.cpp", "-o", "main_cpp"], ["./main_cpp"]],
                {"main.cpp": problem["prompt"] + completion + problem["test"]}, timeout)


def _missing(*args, **kwargs):
    raise RuntimeError("language not available in the test environment")


check_correctness_csharp = check_correctness_go = check_correctness_java = _missing
check_correctness_kotlin = check_correctness_perl = check_correctness_php = _missing
check_correctness_ruby = check_correctness_scala = check_correctness_swift = _missing
check_correctness_typescript = _missing
