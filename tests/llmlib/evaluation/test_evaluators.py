"""Evaluators without the reference scripts: the accuracy-log reader and its dtype, ROUGE and the
targets, the registry and the YAML key, accuracy.txt, offline punkt, the reasoning parsers,
LiveCodeBench against user-supplied tests, MBXP hangs, and the command line."""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from llmlib.benchmarks import AccuracyTarget, list_benchmarks, load_benchmark
from llmlib.errors import ConfigError, CoreUnavailableError
from llmlib.evaluation import (DEFAULT_EVALUATOR, EVALUATORS, AccuracyLogError, EvalOptions, evaluate_accuracy,
                               read_accuracy_log, write_results)
from llmlib.evaluation.livecodebench import grade_livecodebench, load_lcb_tests
from llmlib.evaluation.logs import LogEntry
from llmlib.evaluation.mixtral import find_number, run_mbxp
from llmlib.evaluation.punkt_data import ensure_punkt
from llmlib.evaluation.reasoning import (extract_final_section, parse_aime_answer, parse_boxed_math,
                                         parse_multiple_choice, parse_multiple_choice_harmony, prm800k_grader)
from llmlib.evaluation.rouge import rouge_scores
from llmlib.evaluation.sandbox import Limits

from _evalhelpers import LANGUAGE, REPO, encode, write_log


class WordTokenizer:
    """Decodes token id k as word k (a stand-in for a real tokenizer at this boundary)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def entries(pairs):
    return [LogEntry(k, i, np.asarray(t, dtype=np.uint32)) for k, (i, t) in enumerate(pairs)]


# ------------------------------------------------------------------------------------- the log

def test_log_round_trip_duplicates_kept_in_order(tmp_path):
    log = write_log(tmp_path / "a.json", [(3, [5, 6, 7]), (1, []), (3, [5, 6, 7])])
    out = read_accuracy_log(log)
    assert [(e.qsl_idx, e.tokens.tolist()) for e in out] == [(3, [5, 6, 7]), (1, []), (3, [5, 6, 7])]


@pytest.mark.parametrize("dtype, np_dtype", [("uint32", "<u4"), ("int32", "<i4"), ("int64", "<i8")])
def test_the_dtype_flag_reads_what_the_run_wrote(tmp_path, dtype, np_dtype):
    log = write_log(tmp_path / "a.json", [(0, [1, 70000, 3])], np_dtype)
    assert read_accuracy_log(log, dtype)[0].tokens.tolist() == [1, 70000, 3]
    if dtype == "int64":  # read as 32-bit it would be other tokens
        assert read_accuracy_log(log, "int32")[0].tokens.tolist() == [1, 0, 70000, 0, 3, 0]


@pytest.mark.parametrize("text, match", [("not json", "not valid JSON"), ('[{"qsl_idx": 1}]', "entry 0"),
                                         ('[{"qsl_idx": 1, "data": "ABC"}]', "entry 0"),
                                         ('[{"qsl_idx": 1, "data": "ABCD"}]', "not a whole number of uint32"),
                                         ('{"qsl_idx": 1}', "entry 0"), ('[{"qsl_idx": -1, "data": ""}]', "negative")])
def test_malformed_logs_name_the_problem(tmp_path, text, match):
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(AccuracyLogError, match=match):
        read_accuracy_log(tmp_path / "x.json")
    with pytest.raises(AccuracyLogError, match="no accuracy log"):
        read_accuracy_log(tmp_path / "missing.json")
    with pytest.raises(AccuracyLogError, match="--dtype='int8'"):
        read_accuracy_log(tmp_path / "x.json", "int8")


def test_conflicting_duplicates_are_scored_first_and_reported():
    bench = load_benchmark("tiny")
    table = pd.DataFrame({"output": ["w1 w2", "w3"]})
    report = evaluate_accuracy(entries([(0, [1, 2]), (1, [3]), (0, [9, 9])]), table, WordTokenizer(), bench)
    assert report.metrics["rouge1"] == 100.0 and report.metrics["gen_num"] == 2
    assert any("logged more than once" in n for n in report.notes)


# ---------------------------------------------------------------------------- ROUGE and targets

def test_rouge_is_100_for_identical_text_and_lower_otherwise():
    assert rouge_scores(["the cat sat"], ["the cat sat"])["rougeL"] == 100.0
    assert 0 < rouge_scores(["the cat sat"], ["the dog sat"])["rouge1"] < 100


def test_rouge_lsum_splits_sentences_with_punkt_not_newlines():
    ref = "The cat sat on the mat. It was happy. Dr. Smith came."
    pred = "Dr. Smith came. It was happy. The cat sat on the mat."
    scores = rouge_scores([ref_lines(pred)], [ref_lines(ref)])
    assert scores["rougeLsum"] == 100.0 and scores["rougeL"] < 100.0


def ref_lines(text):
    from llmlib.evaluation.rouge import postprocess_text

    return postprocess_text([text], [text])[0][0]


def test_tiny_targets_pass_on_reproduction_and_fail_on_drift():
    bench = load_benchmark("tiny")
    refs = [[i, i + 1, i + 2] for i in range(10, 60, 2)]
    refs[0] = list(range(10, 750))  # 812 tokens over 25 samples: 32.48 per sample, the tiny target
    table = pd.DataFrame({"output": [WordTokenizer().decode(r) for r in refs], "tok_output": refs})
    exact = evaluate_accuracy(entries(list(enumerate(refs))), table, WordTokenizer(), bench)
    assert exact.metrics["rougeL"] == 100.0 and exact.metrics["exact_token_match"] == 100.0
    assert exact.passed, exact.lines()
    drift = entries([(i, [r[0], 999, 998]) for i, r in enumerate(refs)])
    report = evaluate_accuracy(drift, table, WordTokenizer(), bench)
    assert not report.passed and {c["name"]: c["passed"] for c in report.checks}["rougeL"] is False
    assert any("FAIL" in line for line in report.lines())


def test_rouge_without_a_tokenizer_is_reported_not_evaluated():
    report = evaluate_accuracy(entries([(0, [1, 2, 3])]), pd.DataFrame({"output": ["x"]}), None, load_benchmark("tiny"))
    assert set(report.not_evaluated) >= {"rouge1", "rougeL"} and not report.passed
    assert any("not evaluated" in line and "tokenizer" in line for line in report.lines())


def test_accuracy_txt_is_what_the_checker_reads(tmp_path):
    bench = load_benchmark("llama3.1-8b")
    table = pd.DataFrame({"output": ["w1 w2. w3"]})
    report = evaluate_accuracy(entries([(0, [1, 2, 3])]), table, WordTokenizer(), bench)
    txt, js = write_results(report, tmp_path)
    text = txt.read_text()
    assert text.startswith("\nResults\n\n{'rouge1': ") and "'gen_len': 8," in text and "np." not in text
    assert json.loads(js.read_text())["evaluator"] == "rouge"
    assert "hash=" not in text  # staging appends it, as truncate_accuracy_log.py does


def test_punkt_runs_offline_from_a_folder_the_project_controls(tmp_path):
    import nltk

    root = ensure_punkt(tmp_path / "nltk")
    assert sorted(p.name for p in (root / "tokenizers" / "punkt_tab" / "english").iterdir()) == [
        "abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]
    assert nltk.data.path[0] == str(root)
    assert nltk.sent_tokenize("Dr. Smith went home. He was tired.") == ["Dr. Smith went home.", "He was tired."]


# ------------------------------------------------------------------------- registry and YAML

def test_unknown_evaluator_names_the_choices():
    with pytest.raises(CoreUnavailableError, match="Did you mean: deepseek-r1"):
        EVALUATORS.get("deepseek-r2")
    assert {"rouge", "mixtral-8x7b", "llama3.1-405b", "deepseek-r1", "gpt-oss-120b"} <= set(EVALUATORS.names())


def test_benchmarks_name_their_evaluator():
    assert load_benchmark("llama2-70b-99.9").accuracy.evaluator is None  # the default: rouge
    assert load_benchmark("mixtral-8x7b").accuracy.evaluator == "mixtral-8x7b"
    assert load_benchmark("llama3.1-405b").accuracy.evaluator == "llama3.1-405b"
    for name in list_benchmarks():  # every shipped benchmark names an evaluator that exists
        assert (load_benchmark(name).accuracy.evaluator or DEFAULT_EVALUATOR) in EVALUATORS, name


def test_an_unknown_evaluator_in_a_benchmark_is_named_with_the_choices():
    bench = load_benchmark("tiny")
    typo = dataclasses.replace(bench, accuracy=dataclasses.replace(bench.accuracy, evaluator="rogue"))
    with pytest.raises(CoreUnavailableError, match="Unknown evaluator 'rogue'. Did you mean: rouge"):
        evaluate_accuracy(entries([(0, [1])]), pd.DataFrame({"output": ["w1"]}), WordTokenizer(), typo)


# ---------------------------------------------------------------------------- reasoning parsers

@pytest.mark.parametrize("text, expected", [("ANSWER: B", "B"), ("answer: (c) because", "C"),
                                            ("ANSWER: A ... FINAL ANSWER: D", "D"), ("nothing", None), ("", None)])
def test_multiple_choice(text, expected):
    assert parse_multiple_choice(text, "D") == expected


def test_harmony_final_channel_wins_over_the_analysis():
    text = "<|channel|>analysis<|message|>ANSWER: A<|end|><|channel|>final<|message|>**C**<|return|>"
    assert extract_final_section(text) == "**C**" and parse_multiple_choice_harmony(text) == "C"


@pytest.mark.parametrize("text, expected", [("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("\\boxed{1} \\boxed{2}", "2"),
                                            ("\\boxed{3", None), ("no box", None)])
def test_boxed(text, expected):
    assert parse_boxed_math(text) == expected


@pytest.mark.parametrize("text, expected", [("\\boxed{17}", 17), ("Answer: 204", 204), ("\\boxed{1000}", None),
                                            ("Answer: 3.5", None)])
def test_aime(text, expected):
    assert parse_aime_answer(text) == expected


def test_math500_needs_the_prm800k_checkout():
    with pytest.raises(ConfigError, match="--prm800k_path"):
        prm800k_grader("")
    with pytest.raises(ConfigError, match="no grading/grader.py"):
        prm800k_grader("/nonexistent")
    grade = prm800k_grader(str(LANGUAGE / "deepseek-r1" / "submodules" / "prm800k"))
    assert grade("0.5", "\\frac{1}{2}") and not grade("0.6", "\\frac{1}{2}")


def test_the_grader_is_found_from_the_flag_the_environment_or_a_checkout(monkeypatch):
    from llmlib.evaluation.reasoning import find_prm800k

    monkeypatch.setenv("PRM800K_PATH", "/from/env")
    assert find_prm800k("/from/flag") == "/from/flag" and find_prm800k() == "/from/env"
    monkeypatch.delenv("PRM800K_PATH")
    found = find_prm800k()  # beside this repository: the MLPerf reference files' submodule
    assert found == "" or prm800k_grader(found)("1/2", "\\frac{1}{2}")


def test_gsm8k_number_rules():
    assert find_number("so 3 then The answer is 42 and 7") == "42"
    assert find_number("1,234 apples") == "1,234" and find_number("none") == ""


# ------------------------------------------------------------------------------ LiveCodeBench

def lcb_file(tmp_path, private_compressed=True):
    private = json.dumps([{"input": "5\n", "output": "10\n", "testtype": "stdin"}])
    if private_compressed:  # LiveCodeBench's own encoding of private tests
        private = base64.b64encode(zlib.compress(pickle.dumps(private))).decode()
    public = json.dumps([{"input": "2\n", "output": "4", "testtype": "stdin"}])
    rows = [{"question_id": "q_stdin", "public_test_cases": public,
             "private_test_cases": private, "metadata": "{}"},
            {"question_id": "q_call", "public_test_cases": [{"input": "[1, 2]\n3", "output": "[1, 2, 3]",
                                                            "testtype": "functional"}],
             "private_test_cases": "[]", "metadata": json.dumps({"func_name": "append"})}]
    path = tmp_path / "lcb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_livecodebench_runs_the_users_tests(tmp_path):
    tests = load_lcb_tests(lcb_file(tmp_path))
    opts = EvalOptions(lcb_timeout_s=5)
    double = "n = int(input())\nprint(n * 2)"
    assert grade_livecodebench(double, tests["q_stdin"], opts) == (True, "all tests passed")
    assert grade_livecodebench("print(4)", tests["q_stdin"], opts)[0] is False  # passes the public test only
    call = "class Solution:\n    def append(self, xs, x):\n        return xs + [x]\n"
    assert grade_livecodebench(call, tests["q_call"], opts)[0] is True
    wrong = "class Solution:\n    def append(self, xs, x):\n        return xs\n"
    assert grade_livecodebench(wrong, tests["q_call"], opts) == (False, "test 0: wrong answer")
    ok, why = grade_livecodebench("while True: pass", tests["q_stdin"], EvalOptions(lcb_timeout_s=1))
    assert not ok and "time limit exceeded" in why
    assert grade_livecodebench(double, None, opts) == (False, "no test cases for this question_id")


STDIN = {"func_name": None, "tests": [{"input": "3\n1 2\n", "output": "1.50 2\n3", "testtype": "stdin"}]}


@pytest.mark.parametrize("code, passed", [
    ("n = int(input())\na, b = map(int, input().split())\nprint(1.5, b)\nprint(n)", True),  # equal as decimals
    ("print('1.50 2')", False),  # a line missing
    ("import sys\ndef main():\n    n = int(sys.stdin.readline())\n    print('1.50 2')\n    print(n)\n"
     "if __name__ == '__main__':\n    main()", True),  # the __main__ block is unwrapped and run
    ("print('1.50 2')\nprint(3)\nimport sys\nsys.exit(1)", True),  # SystemExit is swallowed, as in LiveCodeBench
    ("print('1.50 2')\nprint(3)\nraise ValueError('late')", False),  # a runtime error fails
    ("print('1.50 2'\n", False),  # a syntax error fails
    # LiveCodeBench's sys.stdin.readline returns lines without their newline: len("3") + 2 == 3.
    ("line = __import__('sys').stdin.readline()\nprint('1.50 2')\nprint(len(line) + 2)", True),
])
def test_livecodebench_stdin_grading_follows_its_rules(code, passed):
    assert grade_livecodebench(code, STDIN, EvalOptions(lcb_timeout_s=5))[0] is passed


def test_livecodebench_call_based_takes_tuples_as_lists():
    problem = {"func_name": "pair", "tests": [{"input": "1\n\"a\"", "output": "[1, \"a\"]", "testtype": "functional"}]}
    # `List` comes from the import header LiveCodeBench puts before the code.
    code = "class Solution:\n    def pair(self, x: int, s: str) -> List:\n        return (x, s)\n"
    assert grade_livecodebench(code, problem, EvalOptions(lcb_timeout_s=5)) == (True, "all tests passed")


def test_bad_lcb_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_lcb_tests(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question_id": "q", "public_test_cases": "%%%"}')
    with pytest.raises(ConfigError, match="neither JSON nor"):
        load_lcb_tests(tmp_path / "bad.jsonl")


def reasoning_spec(evaluator):
    base = load_benchmark("llama3.1-405b")
    acc = dataclasses.replace(base.accuracy, evaluator=evaluator, tokens_per_sample_min=None,
                              tokens_per_sample_max=None,
                              metrics=(AccuracyTarget(name="exact_match", reference=50.0, ratio=1.0),))
    return dataclasses.replace(base, accuracy=acc)


def test_deepseek_r1_scores_livecodebench_with_user_tests(tmp_path, tokenizer):
    table = pd.DataFrame({"dataset": ["livecodebench", "livecodebench", "gpqa", "aime"],
                          "gt_output": ["q_stdin", "q_stdin", "B", "17"]})
    outs = ["```python\nn = int(input())\nprint(n * 2)\n```", "```python\nwhile True: pass\n```", "ANSWER: B",
            "\\boxed{16}"]
    log = entries([(i, encode(tokenizer, t)) for i, t in enumerate(outs)])
    opts = EvalOptions(lcb_tests=str(lcb_file(tmp_path)), lcb_timeout_s=1, workers=2)
    report = evaluate_accuracy(log, table, tokenizer, reasoning_spec("deepseek-r1"), opts)
    assert report.metrics["exact_match"] == 50.0 and report.passed
    assert report.per_dataset["livecodebench"] == {"correct": 1, "total": 2, "accuracy": 50.0}
    no_tests = evaluate_accuracy(log, table, tokenizer, reasoning_spec("deepseek-r1"), EvalOptions(lcb_timeout_s=1))
    assert no_tests.metrics["exact_match"] == 25.0 and any("--lcb_tests" in n for n in no_tests.notes)


def test_mbxp_hang_and_crash_fail_their_samples_only():
    test = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    limits = Limits(timeout_s=1.0, memory_mb=512)
    ok = {"lang": "python", "entry_point": "add", "test_code": test, "response": "def add(a, b):\n    return a + b\n"}
    assert run_mbxp(ok, limits) == (True, "")
    assert run_mbxp(dict(ok, response="def add(a, b):\n    while True: pass\n"), limits) == (False, "timed out")
    assert run_mbxp(dict(ok, response="import os\ndef add(a, b):\n    os.abort()\n"), limits)[0] is False
    js = {"lang": "javascript", "entry_point": "add", "test_code": "\nif (add(1,2) !== 3) process.exit(1);\n",
          "response": "function add(a, b) { return a + b; }"}
    assert run_mbxp(js, Limits(timeout_s=5.0, memory_mb=1024))[0] is True  # V8 reserves ~1 GB of address space
    # mxeval's exec: output is swallowed, exit() is gone, a __main__ block does not run.
    assert run_mbxp(dict(ok, response="def add(a, b):\n    print('noise')\n    return a + b\n"), limits) == (True, "")
    assert run_mbxp(dict(ok, response="def add(a, b):\n    return a + b\nexit(0)\n"), limits)[0] is False
    main_block = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    raise SystemExit(1)\n"
    assert run_mbxp(dict(ok, response=main_block), limits) == (True, "")
    cpp_test = "\nint main() { return add(1, 2) == 3 ? 0 : 1; }\n"
    cpp = {"lang": "cpp", "entry_point": "add", "test_code": cpp_test,
           "response": "int add(int a, int b) { return a + b; }"}
    assert run_mbxp(cpp, limits) == (True, "")
    assert run_mbxp(dict(cpp, response="int add(int a, int b) { return a + ; }"), limits) == (False, "did not compile")


# ----------------------------------------------------------------------------- command line

@pytest.mark.slow  # seconds
def test_command_line_scores_a_foreign_log(tmp_path, tokenizer_dir, tokenizer):
    ds = tmp_path / "ds.pkl"
    pd.DataFrame({"output": ["The cat sat. It was happy."]}).to_pickle(ds)
    log = write_log(tmp_path / "mlperf_log_accuracy.json", [(0, encode(tokenizer, "It was happy. The cat sat."))],
                    "<i8")
    cmd = [sys.executable, "-m", "llmlib.evaluation", "--benchmark", "llama2-70b-99.9", "--log", str(log),
           "--dataset", str(ds), "--tokenizer", str(tokenizer_dir), "--dtype", "int64", "--outdir", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # a one-sample stand-in misses tokens_per_sample: FAIL, not a crash
    assert "'rougeLsum': 100.0" in proc.stdout and (tmp_path / "o" / "accuracy.txt").is_file()
    bad = subprocess.run(cmd[:-2] + ["--dataset", str(tmp_path / "missing.pkl")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "missing.pkl: no such file" in bad.stderr and "Traceback" not in bad.stderr
