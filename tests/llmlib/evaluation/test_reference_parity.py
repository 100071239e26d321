"""Parity: the official MLPerf accuracy scripts (run in a subprocess from a temporary copy, offline)
and the project's evaluators score the same crafted logs equal, on every metric the checker gates."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import pandas as pd
import pytest

from llmlib.benchmarks import AccuracyTarget, load_benchmark
from llmlib.evaluation import EvalOptions, evaluate_files

from _evalhelpers import (LANGUAGE, REFERENCE, copy_script, encode, printed_metrics, run_reference, show_parity,
                          write_log)

pytestmark = pytest.mark.slow


def checker_patterns():
    path = REFERENCE / "tools" / "submission" / "submission_checker" / "constants.py"
    spec = importlib.util.spec_from_file_location("checker_constants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ACC_PATTERN


def checker_reads(accuracy_txt: str, acc_type: str) -> float:
    """The value the submission checker's regex for `acc_type` takes from accuracy.txt."""
    pattern = checker_patterns()[acc_type]
    for line in accuracy_txt.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    raise AssertionError(f"the checker finds no {acc_type} in:\n{accuracy_txt}")


def assert_close(ref: dict, ours: dict, keys, tol=0.01):
    for k in keys:
        assert abs(float(ref[k]) - float(ours[k])) <= tol, f"{k}: reference {ref[k]} vs project {ours[k]}"


REFS = [
    "The cat sat on the mat. It was happy. Dr. Smith arrived at 3 p.m. and left.",
    "Mr. Jones said the U.S. economy grew. Then he left! Why? Because.",
    "Résumé of the café: naïve coöperation, 東京 and Zürich — “quotes” included.",
    "The answer is 42. It was happy.",
    "Dr. Smith arrived at 3 p.m. and left. The cat sat on the mat.",
]
PREDS = [
    "It was happy. Dr. Smith arrived at 3 p.m. and left. The cat sat on the mat.",  # sentences in another order
    "Mr. Jones said the U.S. economy grew. Then he left! Why? Because.",  # identical
    "Zürich — “quotes” and 東京: café résumé.",  # unicode, partial
    "",  # empty output
    "  The cat sat.\n\nOn the mat!  ",  # whitespace and newlines
]


def rouge_log(tmp_path, tokenizer):
    # Out of order, a duplicate of sample 1 (same tokens), an EOS that decoding drops, an empty output.
    # Sample 2's last tokens are cut: its bytes may end inside a character (decoded as U+FFFD by both).
    enc = [encode(tokenizer, p) for p in PREDS]
    entries = [(4, enc[4] + [tokenizer.eos_token_id]), (1, enc[1]), (0, enc[0]), (1, enc[1]), (3, []), (2, enc[2][:-3])]
    return write_log(tmp_path / "mlperf_log_accuracy.json", entries, "<i4")


def test_llama2_70b_rouge_and_lsum_equal_the_reference(tmp_path, tokenizer_dir, tokenizer):
    ds = tmp_path / "open_orca.pkl"
    pd.DataFrame({"input": ["q"] * len(REFS), "output": REFS}).to_pickle(ds)
    log = rouge_log(tmp_path, tokenizer)
    work = copy_script(LANGUAGE / "llama2-70b", tmp_path / "ref")
    args = ["--checkpoint-path", str(tokenizer_dir), "--mlperf-accuracy-file", str(log), "--dataset-file",
            str(ds), "--dtype", "int32"]
    out = run_reference(work / "evaluate-accuracy.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    report = evaluate_files(load_benchmark("llama2-70b-99.9"), log, ds, tokenizer_dir, EvalOptions(dtype="int32"),
                            tmp_path / "ours")
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum", "tokens_per_sample", "gen_len", "gen_num", "gen_tok_len"]
    assert_close(ref, report.metrics, keys)
    assert ref["rougeLsum"] != ref["rougeL"]  # the sentence split matters on this log
    txt = (tmp_path / "ours" / "accuracy.txt").read_text()
    for acc_type, key in (("ROUGE1", "rouge1"), ("ROUGE2", "rouge2"), ("ROUGEL", "rougeL"),
                          ("TOKENS_PER_SAMPLE", "tokens_per_sample")):
        assert abs(checker_reads(txt, acc_type) - ref[key]) <= 0.01
    show_parity("llama2-70b", ref, report.metrics, keys)


def test_llama2_70b_dtype_flag_is_respected(tmp_path, tokenizer_dir, tokenizer):
    ds = tmp_path / "ds.pkl"
    pd.DataFrame({"output": REFS}).to_pickle(ds)
    log = write_log(tmp_path / "log.json", [(i, encode(tokenizer, p)) for i, p in enumerate(PREDS)], "<i8")
    work = copy_script(LANGUAGE / "llama2-70b", tmp_path / "ref")
    args = ["--checkpoint-path", str(tokenizer_dir), "--mlperf-accuracy-file", str(log), "--dataset-file",
            str(ds)]  # its default: int64
    out = run_reference(work / "evaluate-accuracy.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    report = evaluate_files(load_benchmark("llama2-70b-99.9"), log, ds, tokenizer_dir, EvalOptions(dtype="int64"),
                            tmp_path / "ours")
    assert_close(ref, report.metrics, ["rouge1", "rougeLsum", "tokens_per_sample", "gen_len"])


def test_llama3_1_8b_rouge_and_gen_len_equal_the_reference(tmp_path, tokenizer_dir, tokenizer):
    ds = tmp_path / "cnn_eval.json"
    pd.DataFrame({"input": ["q"] * len(REFS), "tok_input": [[1, 2]] * len(REFS), "output": REFS}).to_json(ds)
    log = rouge_log(tmp_path, tokenizer)
    work = copy_script(LANGUAGE / "llama3.1-8b", tmp_path / "ref")
    args = ["--mlperf-accuracy-file", str(log), "--dataset-file", str(ds), "--dtype", "int32",
            "--total-sample-count", str(len(REFS))]
    out = run_reference(work / "evaluation.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    report = evaluate_files(load_benchmark("llama3.1-8b"), log, ds, tokenizer_dir, EvalOptions(dtype="int32"),
                            tmp_path / "ours")
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "gen_num"]
    assert_close(ref, report.metrics, keys)
    txt = (tmp_path / "ours" / "accuracy.txt").read_text()
    assert checker_reads(txt, "GEN_LEN") == ref["gen_len"] and checker_reads(txt, "ROUGELSUM") == ref["rougeLsum"]
    show_parity("llama3.1-8b", ref, report.metrics, keys)


def test_llama3_1_405b_per_sample_metrics_equal_the_reference(tmp_path, tokenizer_dir, tokenizer):
    u1, u2 = "123e4567-e89b-12d3-a456-426614174000", "00000000-1111-2222-3333-444444444444"
    rows = [
        ("rouge", REFS[0], PREDS[0]),
        ("rouge", REFS[2], PREDS[2]),
        ("niah_em", f"The uuid is {u1}", f"uuid {u1}"),  # found
        ("niah_em", f"{u1} and {u2}", f"{u2} then {u1}"),  # several, other order
        ("niah_em", f"{u1}", "no uuid here"),  # missing
        ("qa_em", "Zürich|Zurich", "Answer: zurich"),  # normalised entry
        ("qa_em", "the cat", "I think. Answer: the dog. Answer: the cat"),  # several answers: the last
        ("qa_em", "42", ""),  # empty output
    ]
    ds = tmp_path / "405b.pkl"
    pd.DataFrame({"metric": [r[0] for r in rows], "gt_output": [r[1] for r in rows],
                  "input": ["q"] * len(rows)}).to_pickle(ds)
    logged = [(i, encode(tokenizer, r[2], eos=i % 2 == 0)) for i, r in enumerate(rows)][::-1]
    log = write_log(tmp_path / "log.json", logged + [(0, encode(tokenizer, rows[0][2], eos=True))], "<i4")
    work = copy_script(LANGUAGE / "llama3.1-405b", tmp_path / "ref")
    args = ["--checkpoint-path", str(tokenizer_dir), "--mlperf-accuracy-file", str(log), "--dataset-file",
            str(ds), "--dtype", "int32"]
    out = run_reference(work / "evaluate-accuracy.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    report = evaluate_files(load_benchmark("llama3.1-405b"), log, ds, tokenizer_dir, EvalOptions(dtype="int32"),
                            tmp_path / "ours")
    keys = ["rougeL", "exact_match", "tokens_per_sample", "gen_len", "gen_num"]
    assert_close(ref, report.metrics, keys)
    txt = (tmp_path / "ours" / "accuracy.txt").read_text()
    assert abs(checker_reads(txt, "exact_match") - ref["exact_match"]) <= 0.01
    show_parity("llama3.1-405b", ref, report.metrics, keys)


def test_mixtral_rouge_gsm8k_mbxp_equal_the_reference(tmp_path, tokenizer_dir, tokenizer):
    py_test = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    js_test = "\nif (add(1, 2) !== 3) { process.exit(1); }\n"
    rows = [
        ("OpenOrca", "o1", REFS[0], PREDS[0]),
        ("OpenOrca", "o2", REFS[1], PREDS[1]),
        ("GSM8K", "g1", "42", "Let me think. The answer is 42."),
        ("GSM8K", "g2", "5600", "It costs 5,600 dollars in total"),  # the last number, comma removed
        ("GSM8K", "g3", "7", "The answer is 8.\nQ: next question, the answer is 7"),  # text after \nQ: ignored
        ("GSM8K", "g4", "3", "no number at all"),  # missing
        ("MBXP", "python_add", py_test, "def add(a, b):\n    return a + b\n```\nmore text"),
        ("MBXP", "python_add", py_test, "def add(a, b):\n    raise ValueError('crash')\n"),
        ("MBXP", "python_add", py_test, "def add(a, b):\n    return a \\_ b\n"),  # escaped underscore: a syntax error
        # mxeval execs with empty globals: a __main__ block does not run (here it would wait for input).
        ("MBXP", "python_add", py_test,
         "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    input()\n"),
        ("MBXP", "python_add", py_test,
         "import sys\ndef add(a, b):\n    return a + b\nsys.exit(0)\n"),  # SystemExit fails the sample
        ("MBXP", "javascript_add", js_test, "function add(a, b) { return a + b; }\n```"),
        ("MBXP", "javascript_add", js_test, "function add(a, b) { return a - b; }"),
        ("MBXP", "kotlin_add", "fun main() {}", "fun add(a: Int, b: Int) = a + b"),  # not evaluated by the reference
    ]
    ds = tmp_path / "mixtral.pkl"
    pd.DataFrame({"dataset": [r[0] for r in rows], "id": [r[1] for r in rows], "gt_output": [r[2] for r in rows],
                  "input": ["q"] * len(rows)}).to_pickle(ds)
    entries = [(i, encode(tokenizer, r[3], eos=True)) for i, r in enumerate(rows)]
    log = write_log(tmp_path / "log.json", entries + [entries[2]], "<i4")  # a duplicate: gen_num counts it
    work = copy_script(LANGUAGE / "mixtral-8x7b", tmp_path / "ref")
    args = ["--checkpoint-path", str(tokenizer_dir), "--mlperf-accuracy-file", str(log), "--dataset-file",
            str(ds), "--dtype", "int32", "--n_workers", "2"]
    out = run_reference(work / "evaluate-accuracy.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    report = evaluate_files(load_benchmark("mixtral-8x7b"), log, ds, tokenizer_dir,
                            EvalOptions(dtype="int32", workers=2), tmp_path / "ours")
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum", "gsm8k", "mbxp", "tokens_per_sample", "gen_len", "gen_num"]
    assert_close(ref, report.metrics, keys)
    assert 0 < ref["mbxp"] < 100 and 0 < ref["gsm8k"] < 100
    txt = (tmp_path / "ours" / "accuracy.txt").read_text()
    gated = (("gsm8k_accuracy", "gsm8k"), ("mbxp_accuracy", "mbxp"), ("TOKENS_PER_SAMPLE", "tokens_per_sample"))
    for acc_type, key in gated:
        assert abs(checker_reads(txt, acc_type) - ref[key]) <= 0.01
    show_parity("mixtral-8x7b", ref, report.metrics, keys)


def reasoning_spec(evaluator: str):
    base = load_benchmark("llama3.1-405b")
    acc = dataclasses.replace(base.accuracy, evaluator=evaluator, tokens_per_sample_min=None,
                              tokens_per_sample_max=None,
                              metrics=(AccuracyTarget(name="exact_match", reference=80.0, ratio=0.99),))
    return dataclasses.replace(base, name=evaluator, accuracy=acc)


DS_ROWS = [
    ("gpqa", "B", "Reasoning... ANSWER: B"),
    ("gpqa", "C", "First ANSWER: A, then FINAL ANSWER: (C)"),  # several answers: the last
    ("gpqa", "D", "I cannot decide."),  # missing
    ("mmlu_pro", "J", "The options... so it is J"),  # MMLU-Pro fallback: a standalone letter
    ("mmlu_pro", "E", "ANSWER: K"),  # out of range
    ("math500", "\\frac{1}{2}", "so \\boxed{0.5}"),  # graded equal by prm800k
    ("math500", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}} and finally \\boxed{\\dfrac{1}{2}}"),
    ("math500", "3", "\\boxed{3"),  # malformed: unclosed
    ("math500", "\\sqrt{2}", "\\boxed{\\sqrt2}"),
    ("aime", "17", "... \\boxed{17}"),
    ("aime", "204", "Answer: 204"),
    ("aime", "5", "\\boxed{1000}"),  # out of range
    ("livecodebench", "lcb_q1", "```python\nprint(input())\n```"),
    ("gpqa", "A", "Résumé: 東京 — ANSWER: a"),  # unicode, lower case
]


def test_deepseek_r1_exact_match_equals_the_reference(tmp_path, tokenizer_dir, tokenizer):
    ds = tmp_path / "deepseek.pkl"
    pd.DataFrame({"dataset": [r[0] for r in DS_ROWS], "gt_output": [r[1] for r in DS_ROWS],
                  "question": ["q"] * len(DS_ROWS)}).to_pickle(ds)
    entries = [(i, encode(tokenizer, r[2], eos=i % 3 == 0)) for i, r in enumerate(DS_ROWS)]
    # A later duplicate with another answer (the first counts) and a qsl_idx outside the dataset (skipped).
    log = write_log(tmp_path / "mlperf_log_accuracy.json",
                    entries[::-1] + [(1, encode(tokenizer, "ANSWER: C")), (len(DS_ROWS) + 3, [5])], "<i4")
    work = copy_script(LANGUAGE / "deepseek-r1", tmp_path / "ref")
    args = ["--input-file", str(log), "--dataset-file", str(ds)]
    out = run_reference(work / "eval_accuracy.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    options = EvalOptions(prm800k_path=str(LANGUAGE / "deepseek-r1" / "submodules" / "prm800k"), workers=2)
    report = evaluate_files(reasoning_spec("deepseek-r1"), log, ds, tokenizer_dir, options, tmp_path / "ours")
    keys = ["exact_match", "tokens_per_sample", "num-samples"]
    assert_close(ref, report.metrics, keys)
    assert 0 < ref["exact_match"] < 100
    txt = (tmp_path / "ours" / "accuracy.txt").read_text()
    assert abs(checker_reads(txt, "exact_match") - ref["exact_match"]) <= 0.01
    assert abs(checker_reads(txt, "TOKENS_PER_SAMPLE") - ref["tokens_per_sample"]) <= 0.01
    show_parity("deepseek-r1", ref, report.metrics, keys)


GPT_ROWS = [
    ("gpqa_diamond", "B",
     "<|channel|>analysis<|message|>maybe A<|end|><|start|>assistant<|channel|>final<|message|>**B**<|return|>"),
    ("gpqa_diamond", "C", "<|channel|>final 明<|message|>The Answer: C<|return|>"),  # corrupted marker
    ("gpqa_diamond", "D", "no final channel. FINAL ANSWER: (A)"),
    ("mmlu_pro", "J", "<|channel|>final<|message|>I pick option J because<|return|>"),
    ("aime25", "17", "<|channel|>final<|message|>\\boxed{17}<|return|>"),
    ("aime25", "17", "<|channel|>final<|message|>Answer: 18<|return|>"),
    ("aime25", "204", "Answer: 204"),
    ("math500", "\\frac{1}{2}", "<|channel|>final<|message|>\\boxed{\\frac12}<|return|>"),
    ("math500", "10", "\\boxed{10} \\boxed{11}"),  # several: the last
    ("gpqa_diamond", "A", "東京 <|channel|>final<|message|>A<|return|>"),
]


def test_gpt_oss_120b_weighted_exact_match_equals_the_reference(tmp_path, tokenizer_dir, tokenizer):
    ds = tmp_path / "acc_eval.parquet"
    pd.DataFrame({"dataset": [r[0] for r in GPT_ROWS], "ground_truth": [r[1] for r in GPT_ROWS],
                  "question": ["q"] * len(GPT_ROWS)}).to_parquet(ds)
    entries = [(i, encode(tokenizer, r[2])) for i, r in enumerate(GPT_ROWS)]
    # Every entry counts, duplicates too; a qsl_idx outside the dataset is skipped.
    log = write_log(tmp_path / "mlperf_log_accuracy.json", entries + [entries[4], (len(GPT_ROWS), [5])], "<i4")
    work = copy_script(LANGUAGE / "gpt-oss-120b", tmp_path / "ref")
    args = ["--mlperf-log", str(log), "--reference-data", str(ds), "--tokenizer", str(tokenizer_dir)]
    out = run_reference(work / "eval_mlperf_accuracy.py", args, tokenizer_dir, work)
    ref = printed_metrics(out)
    options = EvalOptions(prm800k_path=str(LANGUAGE / "gpt-oss-120b" / "submodules" / "prm800k"))
    report = evaluate_files(reasoning_spec("gpt-oss-120b"), log, ds, tokenizer_dir, options, tmp_path / "ours")
    assert_close(ref, report.metrics, ["exact_match"], tol=0.001)
    assert 0 < ref["exact_match"] < 100
    txt = (tmp_path / "ours" / "accuracy.txt").read_text()
    assert checker_reads(txt, "exact_match") == ref["exact_match"]
    print(f"PARITY gpt-oss-120b reference exact_match={ref['exact_match']} project={report.metrics['exact_match']}")
