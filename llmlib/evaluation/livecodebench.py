"""LiveCodeBench grading: the user's test cases (LiveCodeBench's own `code_generation_lite` rows)
run against a generated program in the sandbox; a sample passes when every test passes."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from llmlib.errors import ConfigError
from llmlib.evaluation.sandbox import Limits, run_program

# What LiveCodeBench puts before a generated program (its testing_util import header, abridged).
IMPORT_HEADER = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\n"
    "from io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string\nimport re\nimport datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\n"
    "import math\nimport random\nimport statistics\nimport itertools\nimport functools\nimport operator\n"
    "import io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n"
)

_CALL_RUNNER = """
import json as _json, sys as _sys
_inputs = [_json.loads(_l) for _l in open("input.txt", encoding="utf-8").read().split("\\n")]
_expected = _json.loads(open("expected.txt", encoding="utf-8").read())
_got = getattr(Solution(), {fn!r})(*_inputs)
if isinstance(_got, tuple):
    _got = list(_got)
_sys.exit(0 if _got == _expected else 3)
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


def outputs_match(got: str, expected: str) -> bool:
    """Line by line after stripping; where a line differs, equal as numbers token by token."""
    g = [l.strip() for l in got.strip().split("\n")]
    e = [l.strip() for l in expected.strip().split("\n")]
    if g == e:
        return True
    if len(g) != len(e):
        return False
    for gl, el in zip(g, e):
        if gl == el:
            continue
        gt, et = gl.split(), el.split()
        if len(gt) != len(et):
            return False
        try:
            if any(Decimal(a) != Decimal(b) for a, b in zip(gt, et)):
                return False
        except InvalidOperation:
            return False
    return True


def grade_livecodebench(code: str, problem: dict[str, Any] | None, options) -> tuple[bool, str]:
    """Run every test case of the problem against the code: (all passed, why not)."""
    if not code:
        return False, "no code"
    if problem is None:
        return False, "no test cases for this question_id"
    if not problem["tests"]:
        return False, "the problem has no test cases"
    limits = Limits(timeout_s=options.timeout_s, memory_mb=options.memory_mb)
    for n, test in enumerate(problem["tests"]):
        if test.get("testtype") == "functional":
            if not problem.get("func_name"):
                return False, "functional test without metadata.func_name"
            program = IMPORT_HEADER + code + "\n" + _CALL_RUNNER.format(fn=problem["func_name"])
            result = run_program(["python3", "main.py"], {"main.py": program, "input.txt": test["input"],
                                                           "expected.txt": test["output"]}, limits=limits)
            if not result.ok:
                return False, f"test {n}: " + ("timed out" if result.timed_out else "wrong answer or error")
        else:
            result = run_program(["python3", "main.py"], {"main.py": IMPORT_HEADER + code}, stdin=test["input"],
                                 limits=limits)
            if result.timed_out:
                return False, f"test {n}: timed out"
            if result.returncode != 0:
                return False, f"test {n}: exit {result.returncode}"
            if not outputs_match(result.stdout, test["output"]):
                return False, f"test {n}: wrong answer"
    return True, "all tests passed"
