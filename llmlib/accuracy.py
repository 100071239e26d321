"""Accuracy of an AccuracyOnly run: LoadGen's accuracy log decoded and scored like the MLPerf
reference evaluators (ROUGE with stemming, tokens per sample, generated length), against targets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmlib.benchmarks import BenchmarkSpec
from llmlib.dataset import LLMDataset
from llmlib.errors import HarnessError

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class AccuracyLogError(HarnessError):
    """mlperf_log_accuracy.json is missing or malformed."""


def read_accuracy_log(path: str | Path) -> dict[int, np.ndarray]:
    """qsl_idx -> output token ids (LoadGen writes each response's bytes as hex; ours are uint32
    little-endian). A sample logged twice must have logged the same tokens."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise AccuracyLogError(f"{path}: no accuracy log (was the run AccuracyOnly?)") from err
    except json.JSONDecodeError as err:
        raise AccuracyLogError(f"{path}: not valid JSON ({err})") from err
    out: dict[int, np.ndarray] = {}
    for k, e in enumerate(entries):
        try:
            idx, data = int(e["qsl_idx"]), bytes.fromhex(e["data"])
        except (KeyError, TypeError, ValueError) as err:
            raise AccuracyLogError(f"{path}: entry {k} is not {{qsl_idx, data: hex}} ({err!r})") from err
        if len(data) % 4:
            raise AccuracyLogError(f"{path}: entry {k} (qsl_idx {idx}) has {len(data)} bytes, not uint32 tokens")
        tokens = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        if idx in out and not np.array_equal(out[idx], tokens):
            raise AccuracyLogError(f"{path}: qsl_idx {idx} logged twice with different outputs")
        out[idx] = tokens
    return out


@dataclass
class AccuracyReport:
    metrics: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # name, value, threshold(s), passed
    not_evaluated: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c["passed"] for c in self.checks) and not self.not_evaluated

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            lo, hi = c.get("min"), c.get("max")
            bounds = (f">= {lo:.4f}" if hi is None else f"within [{lo:.4f}, {hi:.4f}]") if lo is not None \
                else f"<= {hi:.4f}"
            out.append(f"{c['name']:<18}: {c['value']:10.4f}  {bounds}  {'PASS' if c['passed'] else 'FAIL'}")
        for name in self.not_evaluated:
            out.append(f"{name:<18}: not evaluated by this harness (use the MLPerf reference evaluator)")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "checks": self.checks, "not_evaluated": self.not_evaluated,
                "passed": self.passed}


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F1 x 100 with the Porter stemmer, as the MLPerf evaluators report it. rougeLsum
    splits summaries on newlines (the reference inserts them with nltk's punkt, which cannot be
    downloaded here)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise HarnessError("ROUGE needs rouge_score: pip install -e '.[accuracy]'") from err
    scorer = rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_METRICS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for name in ROUGE_METRICS:
            totals[name] += scores[name].fmeasure
    n = max(len(predictions), 1)
    return {name: round(100.0 * total / n, 4) for name, total in totals.items()}


def evaluate(outputs: dict[int, np.ndarray], dataset: LLMDataset, benchmark: BenchmarkSpec,
             tokenizer=None) -> AccuracyReport:
    """Score the outputs against the dataset's references and the benchmark's targets."""
    report = AccuracyReport()
    indices = sorted(outputs)
    if not indices:
        raise AccuracyLogError("the accuracy log holds no samples")
    n_tokens = sum(len(outputs[i]) for i in indices)
    report.metrics["gen_num"] = len(indices)
    report.metrics["gen_tok_len"] = n_tokens
    report.metrics["tokens_per_sample"] = round(n_tokens / len(indices), 4)
    if dataset.reference_tokens is not None:
        same = sum(1 for i in indices if np.array_equal(outputs[i], dataset.reference_tokens[i]))
        report.metrics["exact_token_match"] = round(100.0 * same / len(indices), 4)
    predictions = None
    if tokenizer is not None:
        predictions = [tokenizer.decode(outputs[i].tolist(), skip_special_tokens=True) for i in indices]
        report.metrics["gen_len"] = sum(len(p) for p in predictions)
    answers = dataset.extra.get("answer")
    if answers is not None and predictions is not None:
        from scaffolding.math_utils import extract_answer, numeric_equal

        right = 0
        for i, pred in zip(indices, predictions):
            got = extract_answer(pred)
            right += int(got is not None and numeric_equal(got, str(answers[i])))
        report.metrics["answer_accuracy"] = round(100.0 * right / len(indices), 4)
    wanted = {m.name for m in benchmark.accuracy.metrics}
    if wanted & set(ROUGE_METRICS):
        if predictions is None or dataset.reference_texts is None:
            missing = "a tokenizer (--tokenizer_path)" if predictions is None else "reference texts in the dataset"
            report.not_evaluated.extend(sorted(wanted & set(ROUGE_METRICS)))
            report.metrics["note"] = f"ROUGE needs {missing}"
        else:
            report.metrics.update(rouge_scores(predictions, [dataset.reference_texts[i] for i in indices]))
    for target in benchmark.accuracy.metrics:
        if target.name not in report.metrics or not isinstance(report.metrics[target.name], (int, float)):
            if target.name not in report.not_evaluated:
                report.not_evaluated.append(target.name)
            continue
        value = float(report.metrics[target.name])
        lo, hi = target.threshold, target.upper_threshold
        report.checks.append({"name": target.name, "value": value, "min": lo, "max": hi,
                              "passed": value >= lo and (hi is None or value <= hi)})
    lo, hi = benchmark.accuracy.tokens_per_sample_min, benchmark.accuracy.tokens_per_sample_max
    if lo is not None or hi is not None:
        value = report.metrics["tokens_per_sample"]
        report.checks.append({"name": "tokens_per_sample", "value": value, "min": lo, "max": hi,
                              "passed": (lo is None or value >= lo) and (hi is None or value <= hi)})
    return report


def load_tokenizer(path: str | Path):
    """A transformers tokenizer from a folder, or `char`: the math dataset's character tokenizer."""
    if str(path) == "char":
        from llmlib.math_dataset import CharTokenizer

        return CharTokenizer()
    try:
        from transformers import AutoTokenizer
    except ImportError as err:
        raise HarnessError("decoding outputs needs transformers: pip install -e '.[hf]'") from err
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise HarnessError(f"--tokenizer_path={path}: cannot load a tokenizer there ({err})") from err
