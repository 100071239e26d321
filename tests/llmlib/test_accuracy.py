"""Accuracy-log parsing and scoring: the real fixture's log, malformed logs, ROUGE and the targets."""

from __future__ import annotations

import json
import numpy as np
import pytest

from llmlib.accuracy import AccuracyLogError, evaluate, read_accuracy_log, rouge_scores
from llmlib.benchmarks import load_benchmark
from llmlib.dataset import LLMDataset


class WordTokenizer:
    """Decodes token id k as word k (a stand-in for a real tokenizer at this boundary)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def write_log(path, entries):
    path.write_text(json.dumps([{"seq_id": k, "qsl_idx": i, "data": np.asarray(t, dtype="<u4").tobytes().hex().upper()}
                                for k, (i, t) in enumerate(entries)]))
    return path


def dataset(refs):
    toks = [np.asarray(r, dtype=np.uint32) for r in refs]
    return LLMDataset(name="t", input_tokens=[np.array([1], dtype=np.int32)] * len(refs),
                      input_lens=np.ones(len(refs), dtype=np.int64),
                      reference_texts=[WordTokenizer().decode(r) for r in refs], reference_tokens=toks,
                      output_lens=np.array([len(r) for r in refs], dtype=np.int64))


def test_round_trip_and_duplicates(tmp_path):
    log = write_log(tmp_path / "a.json", [(3, [5, 6, 7]), (1, []), (3, [5, 6, 7])])
    out = read_accuracy_log(log)
    assert out[3].tolist() == [5, 6, 7] and out[1].tolist() == []
    write_log(tmp_path / "b.json", [(3, [5]), (3, [6])])
    with pytest.raises(AccuracyLogError, match="qsl_idx 3 logged twice"):
        read_accuracy_log(tmp_path / "b.json")


@pytest.mark.parametrize("text, match", [("not json", "not valid JSON"), ('[{"qsl_idx": 1}]', "entry 0"),
                                         ('[{"qsl_idx": 1, "data": "ABC"}]', "entry 0"),
                                         ('[{"qsl_idx": 1, "data": "ABCD"}]', "not uint32")])
def test_malformed_logs_name_the_problem(tmp_path, text, match):
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(AccuracyLogError, match=match):
        read_accuracy_log(tmp_path / "x.json")
    with pytest.raises(AccuracyLogError, match="no accuracy log"):
        read_accuracy_log(tmp_path / "missing.json")


def test_rouge_is_100_for_identical_text_and_lower_otherwise():
    assert rouge_scores(["the cat sat"], ["the cat sat"])["rougeL"] == 100.0
    assert 0 < rouge_scores(["the cat sat"], ["the dog sat"])["rouge1"] < 100


def test_tiny_targets_pass_on_reproduction_and_fail_on_drift():
    bench = load_benchmark("tiny")
    refs = [[i, i + 1, i + 2] for i in range(10, 60, 2)]
    refs[0] = list(range(10, 10 + 32 * 25 - 2 * 24))  # make tokens/sample land near the tiny target
    ds = dataset(refs)
    exact = evaluate({i: np.asarray(r, dtype=np.uint32) for i, r in enumerate(refs)}, ds, bench, WordTokenizer())
    assert exact.metrics["rougeL"] == 100.0 and exact.metrics["exact_token_match"] == 100.0
    assert {c["name"]: c["passed"] for c in exact.checks}["rougeL"] is True
    drift = {i: np.asarray([r[0], 999, 998], dtype=np.uint32) for i, r in enumerate(refs)}
    report = evaluate(drift, ds, bench, WordTokenizer())
    assert not report.passed
    assert {c["name"]: c["passed"] for c in report.checks}["rougeL"] is False
    assert any("FAIL" in line for line in report.lines())


def test_rouge_without_a_tokenizer_is_reported_not_evaluated():
    bench = load_benchmark("tiny")
    refs = [[1, 2, 3]]
    report = evaluate({0: np.asarray([1, 2, 3], dtype=np.uint32)}, dataset(refs), bench, tokenizer=None)
    assert set(report.not_evaluated) >= {"rouge1", "rougeL"} and not report.passed
    assert any("not evaluated" in line for line in report.lines())
