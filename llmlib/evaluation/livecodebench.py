"""LiveCodeBench grading: the user's test cases (LiveCodeBench's own `code_generation_lite` rows)
run against a generated program in the sandbox; a sample passes when every test passes."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

from llmlib.errors import ConfigError
from llmlib.evaluation.sandbox import Limits, run_program

# What LiveCodeBench puts before a generated program (its testing_util's import header).
IMPORT_HEADER = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\n"
    "from io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string\nimport re\nimport datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\n"
    "import math\nimport random\nimport statistics\nimport itertools\nimport functools\nimport operator\n"
    "import io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n"
)

# Runs in the sandbox, grading one program the way LiveCodeBench's run_test does: call-based problems
# call Solution().<func_name>(*json lines) and compare JSON (tuples as lists); stdin problems unwrap a
# trailing `if __name__ == '__main__':`, wrap the code in a function (imports hoisted), feed each
# input through a patched stdin, swallow SystemExit, and compare stripped lines, else as decimals.
# Each test has `timeout` seconds (SIGALRM); the first failure ends it. The verdict is the last line.
_RUNNER = r"""
import ast, builtins, faulthandler, json, os, shutil, signal, subprocess, sys
from decimal import Decimal
from io import StringIO
from types import ModuleType
from unittest.mock import mock_open, patch

sys.set_int_max_str_digits(50000)
spec = json.load(open("tests.json", encoding="utf-8"))
out, exit_now = sys.__stdout__, os._exit
HEADER = spec["header"]


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout()


def verdict(results, error=""):
    out.write("\n" + json.dumps({"results": results, "error": error}) + "\n")
    out.flush()
    exit_now(0)


def guard():
    faulthandler.disable()
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for m in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[m] = None


def unwrap_main(code):
    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:
        pass
    return code


def as_function(code):
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        rest = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        fn = ast.FunctionDef(name="wrapped_function", args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[],
                             kw_defaults=[], defaults=[]), body=rest, decorator_list=[], lineno=-1)
        return HEADER + "\n" + ast.unparse(imports) + "\n" + ast.unparse(fn)
    except Exception:
        return code


def load(code, timeout):
    signal.alarm(timeout)
    try:
        module = ModuleType("tmp_sol", "")
        exec(code, module.__dict__)
        return module.Solution() if "class Solution" in code else module
    finally:
        signal.alarm(0)


def lines(text):
    return [line.strip() for line in text.strip().split("\n")]


def decimals(line):
    try:
        return [Decimal(x) for x in line.split()]
    except Exception:
        return None


def same_output(got, want):
    g, w = lines(got), lines(want)
    if len(g) != len(w):
        return False
    for a, b in zip(g, w):
        if a == b:
            continue
        da, db = decimals(a), decimals(b)
        if da is None or db is None or da != db:
            return False
    return True


def run_stdin(method, text):
    it = iter(text.split("\n"))
    captured = StringIO()
    with patch("builtins.open", mock_open(read_data=text)), patch("sys.stdin", StringIO(text)), \
            patch("sys.stdin.readline", lambda *a: next(it)), \
            patch("sys.stdin.readlines", lambda *a: text.split("\n")), \
            patch("sys.stdin.read", lambda *a: text), patch("sys.stdout", captured):
        try:
            method()
        except SystemExit:
            pass
    return captured.getvalue()


signal.signal(signal.SIGALRM, on_alarm)
guard()
timeout, results = spec["timeout"], []
try:
    if spec["fn_name"]:
        solution = load(HEADER + "\n\n" + spec["code"], timeout)
        method = getattr(solution, spec["fn_name"], None)
        if method is None:
            verdict([-4], "no method " + spec["fn_name"])
        for inp, want in zip(spec["inputs"], spec["outputs"]):
            args = [json.loads(line) for line in inp.split("\n")]
            signal.alarm(timeout)
            try:
                got = method(*args)
            except Timeout:
                verdict(results + [-3], "time limit exceeded")
            except Exception as e:
                verdict(results + [-4], "runtime error: " + repr(e)[:200])
            finally:
                signal.alarm(0)
            if isinstance(got, tuple):
                got = list(got)
            if got != json.loads(want):
                verdict(results + [-2], "wrong answer")
            results.append(True)
    else:
        module = load(as_function(unwrap_main(spec["code"])), timeout)
        method = getattr(module, "wrapped_function", None)
        if method is None:
            verdict([-4], "no wrapped_function")
        for inp, want in zip(spec["inputs"], spec["outputs"]):
            signal.alarm(timeout)
            try:
                got = run_stdin(method, inp)
            except Timeout:
                verdict(results + [-3], "time limit exceeded")
            except Exception as e:
                verdict(results + [-4], "runtime error: " + repr(e)[:200])
            finally:
                signal.alarm(0)
            if not same_output(got, want):
                verdict(results + [-2], "wrong answer")
            results.append(True)
except BaseException as e:
    verdict([-4], "error during testing: " + repr(e)[:200])
verdict(results)
"""


def _decode_cases(value: Any, where: str) -> list[dict[str, Any]]:
    """Test cases as a list of {input, output, testtype}: a list, a JSON string, or LiveCodeBench's
    compressed form (base64 of zlib of a pickled JSON string)."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            try:
                # LiveCodeBench's own encoding of private tests; the file is the user's dataset.
                return json.loads(pickle.loads(zlib.decompress(base64.b64decode(value.encode("utf-8")))))
            except Exception as err:  # noqa: BLE001 - many codec errors; one message
                raise ConfigError(f"{where}: test cases are neither JSON nor LiveCodeBench's compressed form") from err
    raise ConfigError(f"{where}: test cases must be a list or a string, got {type(value).__name__}")


def load_lcb_tests(path: str | Path) -> dict[str, dict[str, Any]]:
    """question_id -> {"tests": [...], "func_name": str|None} from a JSON list / JSONL file of
    LiveCodeBench rows (question_id, public_test_cases, private_test_cases, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--lcb_tests={path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ConfigError(f"--lcb_tests={path}: not JSON or JSON lines ({err})") from err
    out: dict[str, dict[str, Any]] = {}
    for k, row in enumerate(rows):
        where = f"--lcb_tests={path}: row {k}"
        if not isinstance(row, dict) or "question_id" not in row:
            raise ConfigError(f"{where}: expected an object with question_id and test cases")
        tests = _decode_cases(row.get("public_test_cases"), where) + _decode_cases(row.get("private_test_cases"), where)
        meta = row.get("metadata") or {}
        if isinstance(meta, str):
            meta = json.loads(meta or "{}")
        for t in tests:
            if not isinstance(t, dict) or "input" not in t or "output" not in t:
                raise ConfigError(f"{where}: a test case is not {{input, output, testtype}}")
        out[str(row["question_id"])] = {"tests": tests, "func_name": meta.get("func_name")}
    return out


def grade_livecodebench(code: str, problem: dict[str, Any] | None, options) -> tuple[bool, str]:
    """Run every test case of the problem against the code in one sandboxed process, as
    LiveCodeBench does: (all passed, why not)."""
    if not code:
        return False, "no code"
    if problem is None:
        return False, "no test cases for this question_id"
    tests = problem["tests"]
    if not tests:
        return False, "the problem has no test cases"
    call = any(t.get("testtype") == "functional" for t in tests)
    if call and not problem.get("func_name"):
        return False, "functional tests without metadata.func_name"
    timeout = int(options.lcb_timeout_s)
    spec = {"code": code, "fn_name": problem["func_name"] if call else None, "header": IMPORT_HEADER,
            "inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests], "timeout": timeout}
    # LiveCodeBench's own global deadline for a program: (timeout + 1) per test + 5 s.
    limits = Limits(timeout_s=(timeout + 1) * len(tests) + 5, memory_mb=max(options.memory_mb, 4096))
    result = run_program(["python3", "runner.py"], {"runner.py": _RUNNER, "tests.json": json.dumps(spec)},
                         limits=limits)
    if result.timed_out:
        return False, "global timeout"
    try:
        verdict = json.loads(result.stdout.strip().splitlines()[-1])
        results = verdict["results"]
    except (IndexError, ValueError, KeyError, TypeError):
        return False, f"no verdict (exit {result.returncode}): {result.stderr.strip()[-200:]}"
    passed = len(results) == len(tests) and all(r is True for r in results)
    return passed, "all tests passed" if passed else f"test {len(results) - 1}: {verdict['error']}"
