"""mixtral-8x7b as its evaluate-accuracy.py scores it: ROUGE on OpenOrca rows, GSM8K answer numbers,
MBXP code run against its tests in the sandbox (evaluate_mbxp.py / mxeval), tokens per sample."""

from __future__ import annotations

import re
import shutil
from typing import Any

import numpy as np

from llmlib.errors import HarnessError
from llmlib.evaluation.base import AccuracyReport, EvalOptions, checker_dict, decode, require_columns
from llmlib.evaluation.logs import LogEntry
from llmlib.evaluation.rouge import postprocess_text, rouge_scores
from llmlib.evaluation.sandbox import Limits, run_parallel, run_program

_NUMBER = re.compile(r"-?[\d,]*\.?\d+", re.MULTILINE | re.DOTALL | re.IGNORECASE)


def find_number(text: str, delimiter: str = "The answer is") -> str:
    """The first number after the last "The answer is", else the last number, else ""."""
    if delimiter in text:
        numbers = _NUMBER.findall(text.split(delimiter)[-1])
        if numbers:
            return numbers[0]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def _try_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError, OverflowError):
        return None


def gsm8k_correct(pred_text: str, target: Any) -> bool:
    """The reference's rule: the answer number of the text before any "\\nQ:", commas removed,
    equal as floats to the target."""
    got = _try_float(find_number(pred_text.split("\nQ:")[0]).replace(",", ""))
    return got is not None and _try_float(str(target)) == got


# MBXP: the languages the reference evaluates (others are skipped, as there), how mxeval builds and
# judges each. Python: exec(prompt + completion + "\n" + test + "\n" + check(entry_point)) in a
# process under mxeval's reliability guard, passing when nothing is raised; the others: prompt +
# completion + test written to a file, compiled where needed, passing on exit status 0 (mxeval takes
# TypeScript as compiled when tsc exits 2, and so do we). Compiles get 100 s, as in mxeval.
MBXP_LANGUAGES: dict[str, dict[str, Any]] = {
    "python": {"file": "program.py", "run": ["python3", "main.py"]},
    "javascript": {"file": "main.js", "run": ["node", "main.js"]},
    "typescript": {"file": "main.ts", "compile": ["npx", "tsc", "main.ts", "--target", "es5", "--lib", "es2016"],
                   "run": ["node", "main.js"], "compile_ok": (2,)},
    "cpp": {"file": "main.cpp", "compile": ["g++", "main.cpp", "-o", "main_cpp"], "run": ["./main_cpp"]},
    "php": {"file": "main.php", "run": ["php", "main.php"]},
    "ruby": {"file": "main.rb", "run": ["ruby", "main.rb"]},
}

_PASSED = "__llmlib_mbxp_passed__"
# mxeval's check_correctness for Python: the program exec'd with empty globals (so `__name__` is
# "builtins" and a `__main__` block does not run), output swallowed, stdin unreadable, destructive
# functions disabled, any exception (SystemExit included) a failure; passing means reaching the end.
_PY_RUNNER = """import builtins, contextlib, faulthandler, io, os, shutil, subprocess, sys
_src = open("program.py", encoding="utf-8").read()
_out, _exit = sys.__stdout__, os._exit
class _WriteOnly(io.StringIO):
    def read(self, *a, **k): raise IOError
    def readline(self, *a, **k): raise IOError
    def readlines(self, *a, **k): raise IOError
    def readable(self, *a, **k): return False
faulthandler.disable()
builtins.exit = builtins.quit = builtins.help = None
os.environ["OMP_NUM_THREADS"] = "1"
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
              "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
              "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
    setattr(os, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
for _m in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[_m] = None
_stream = _WriteOnly()
try:
    with contextlib.redirect_stdout(_stream), contextlib.redirect_stderr(_stream):
        sys.stdin = _stream
        exec(_src, {})
except BaseException as _e:
    sys.__stderr__.write(f"failed: {_e}\\n")
    sys.__stderr__.flush()
    _exit(1)
_out.write("%s\\n")
_out.flush()
_exit(0)
""" % _PASSED


def mbxp_solution(lang: str, response: str) -> str:
    """evaluate_mbxp.py's clean-up: cut at the first ``` fence, per-language fixes, unescape \\_."""
    solution = response
    if "```" in solution:
        solution = solution[: solution.index("```")]
    if lang == "python":
        solution = solution.lstrip()
    elif lang == "go":
        solution = solution.replace("package main", "")
        solution = re.sub(r"^import \(\n(.+)((?:\n.+)+)\n\)", "", solution, flags=re.MULTILINE)
        solution = re.sub(r"^import \".*\"", "", solution)
        solution = re.sub(r"^func main.*^}", "", solution, flags=re.MULTILINE | re.DOTALL)
    elif lang == "scala":
        solution = solution.replace("object Main extends App {", "")
        solution = "".join(solution.splitlines(True)[:-1])
    return solution.replace("\\_", "_")


def mbxp_program(lang: str, solution: str, test: str, entry_point: str) -> str:
    """The program mxeval runs (the reference blanks the prompt: Mixtral repeats it in its answer)."""
    if lang == "python":
        return solution + "\n" + test + "\n" + f"check({entry_point})"
    return solution + test


def run_mbxp(problem: dict[str, str], limits: Limits) -> tuple[bool, str]:
    """Run one MBXP problem in the sandbox: (passed, why not)."""
    lang = problem["lang"]
    how = MBXP_LANGUAGES[lang]
    tool = (how.get("compile") or how["run"])[0]
    if not tool.startswith("./") and shutil.which(tool) is None:
        return False, f"{tool} is not installed"
    program = mbxp_program(lang, mbxp_solution(lang, problem["response"]), problem["test_code"], problem["entry_point"])
    files = {how["file"]: program}
    if lang == "python":
        files["main.py"] = _PY_RUNNER
    result = run_program(how["run"], files, limits=limits, compile_argv=how.get("compile"),
                         compile_ok=how.get("compile_ok", (0,)))
    if result.timed_out:
        return False, "timed out"
    if not result.compiled:
        return False, "did not compile"
    passed = result.ok and (lang != "python" or _PASSED in result.stdout)
    return passed, "" if passed else (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]


def evaluate_mixtral(entries: list[LogEntry], table, tokenizer, benchmark, options: EvalOptions) -> AccuracyReport:
    report = AccuracyReport(evaluator="mixtral-8x7b")
    require_columns(table, ["dataset", "gt_output"], "mixtral-8x7b")
    if tokenizer is None:
        raise HarnessError("mixtral-8x7b's metrics need a tokenizer (--tokenizer_path)")
    seen: set[int] = set()
    gen_num = gen_tok_len = 0
    orca: list[tuple[str, str]] = []
    gsm: list[tuple[str, Any]] = []
    mbxp: list[dict[str, str]] = []
    for e in entries:
        gen_num += 1  # the reference counts every log entry here, duplicates included
        if e.qsl_idx in seen:
            continue
        seen.add(e.qsl_idx)
        if e.qsl_idx >= len(table):
            raise HarnessError(f"mixtral-8x7b: qsl_idx {e.qsl_idx} is outside the dataset ({len(table)} rows)")
        row = table.iloc[e.qsl_idx]
        gen_tok_len += len(e.tokens)
        text = decode(tokenizer, e.tokens)
        if row["dataset"] == "GSM8K":
            gsm.append((text, row["gt_output"]))
        elif row["dataset"] == "OpenOrca":
            orca.append((text, row["gt_output"]))
        else:
            lang, entry_point = str(row["id"]).split("_", 1)
            mbxp.append({"lang": lang, "entry_point": entry_point, "test_code": row["gt_output"], "response": text})
    metrics: dict[str, Any] = {}
    prediction_lens: list[int] = []
    if orca:
        preds, targets = postprocess_text([p for p, _ in orca], [str(t) for _, t in orca])
        metrics.update(rouge_scores(preds, targets))
        prediction_lens = [len(p) for p in preds]
    metrics["gsm8k"] = (100.0 * sum(gsm8k_correct(p, t) for p, t in gsm) / len(gsm)) if gsm else float("nan")
    metrics["mbxp"] = _mbxp_score(mbxp, options, report) if mbxp else 0
    metrics.update(gen_len=int(np.sum(prediction_lens)), gen_num=gen_num, gen_tok_len=int(gen_tok_len),
                   tokens_per_sample=round(gen_tok_len / gen_num, 1))
    if not gsm:
        report.notes.append("no GSM8K samples: the reference divides by zero here; gsm8k is reported as nan")
    report.per_dataset = {"OpenOrca": {"samples": len(orca)}, "GSM8K": {"samples": len(gsm)},
                          "MBXP": {"samples": len(mbxp)}}
    report.metrics = metrics
    report.checker_line = checker_dict(metrics)
    return report


def _mbxp_score(problems: list[dict[str, str]], options: EvalOptions, report: AccuracyReport) -> float:
    wanted = [p for p in problems if p["lang"] in MBXP_LANGUAGES]
    skipped = len(problems) - len(wanted)
    if skipped:
        report.notes.append(f"{skipped} MBXP samples in languages the reference does not evaluate were skipped")
    if not wanted:
        raise HarnessError("mixtral-8x7b: no MBXP samples in an evaluated language (the reference divides by zero)")
    limits = Limits(timeout_s=options.timeout_s, memory_mb=options.memory_mb)
    results = run_parallel(lambda p: run_mbxp(p, limits), wanted, options.n_workers())
    by_lang: dict[str, list[int]] = {}
    for p, (ok, why) in zip(wanted, results):
        by_lang.setdefault(p["lang"], [0, 0])
        by_lang[p["lang"]][0] += int(ok)
        by_lang[p["lang"]][1] += 1
        if why.endswith("is not installed") and why not in report.notes:
            report.notes.append(f"MBXP {p['lang']}: {why}; its samples fail")
    report.per_dataset["MBXP_by_language"] = {k: {"passed": v[0], "samples": v[1]} for k, v in by_lang.items()}
    return 100 * sum(ok for ok, _ in results) / len(wanted)
