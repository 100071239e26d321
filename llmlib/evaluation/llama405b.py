"""llama3.1-405b's per-sample metrics as its evaluate-accuracy.py computes them: rouge-L for the
`rouge` rows, RULER's needle exact match (`niah_em`) and QA exact match (`qa_em`) for the others."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from llmlib.errors import DatasetError, HarnessError
from llmlib.evaluation.base import AccuracyReport, EvalOptions, checker_dict, decode, require_columns
from llmlib.evaluation.logs import LogEntry, first_per_sample
from llmlib.evaluation.rouge import postprocess_text, rouge_per_sample, row_value

_UUID = re.compile(r"[\w]{8}-[\w]{4}-[\w]{4}-[\w]{4}-[\w]{12}")


def niah_em(label: str, pred: str) -> dict[str, float]:
    """Share of the uuids in the answer found in the label, as the reference computes it (it pairs
    each predicted uuid with the label uuid at the same position and counts its characters found)."""
    label_uuids, pred_uuids = _UUID.findall(label), _UUID.findall(pred)
    if not pred_uuids:
        return {"exact_match": 0.0}
    score = sum(sum(1.0 if r.lower() in p.lower() else 0.0 for r in ref) / len(ref)
                for p, ref in zip(pred_uuids, label_uuids)) / len(pred_uuids) * 100
    return {"exact_match": round(score, 2)}


def qa_em(label: str, pred: str) -> dict[str, float]:
    """100 when the text after the last "Answer: " is in the label, or any `|`-separated label entry
    (whitespace removed, lower case) is in it."""
    answer = pred
    if "Answer: " in pred:
        answer = pred[pred.rfind("Answer: ") + len("Answer: "):]
    if answer in label:
        return {"exact_match": 100.0}
    norm = re.sub(r"\s+", "", answer).lower()
    entries = [re.sub(r"\s+", "", e).lower() for e in label.split("|")]
    return {"exact_match": 100.0 if any(e in norm for e in entries) else 0.0}


def rouge_l(label: str, pred: str) -> dict[str, float]:
    return {"rougeL": 100 * rouge_per_sample([pred], [label], ("rougeL",))["rougeL"][0]}


METRICS = {"rouge": rouge_l, "niah_em": niah_em, "qa_em": qa_em}


def evaluate_llama405b(entries: list[LogEntry], table, tokenizer, benchmark, options: EvalOptions) -> AccuracyReport:
    report = AccuracyReport(evaluator="llama3.1-405b")
    require_columns(table, ["gt_output", "metric"], "llama3.1-405b")
    if tokenizer is None:
        raise HarnessError("llama3.1-405b's metrics need a tokenizer (--tokenizer_path)")
    samples, conflicting = first_per_sample(entries)
    if conflicting:
        report.notes.append(f"qsl_idx {conflicting[:10]} logged more than once with different outputs; first scored")
    targets = [str(row_value(table, "gt_output", e.qsl_idx, "llama3.1-405b")) for e in samples]
    kinds = [str(table["metric"].iloc[e.qsl_idx]) for e in samples]
    unknown = sorted(set(kinds) - set(METRICS))
    if unknown:
        raise DatasetError(f"llama3.1-405b: unknown metric {unknown[0]!r} in the dataset's `metric` column "
                           f"(expected {', '.join(METRICS)})")
    preds, targets = postprocess_text([decode(tokenizer, e.tokens) for e in samples], targets)
    per = [METRICS[k](t, p) for p, t, k in zip(preds, targets, kinds)]
    metrics: dict[str, Any] = {}
    for name in ("rougeL", "exact_match"):  # the mean of each over the rows that have it
        values = [r[name] for r in per if name in r]
        if values:
            metrics[name] = float(np.mean(values))
    gen_tok_len = sum(len(e.tokens) for e in samples)
    metrics.update(gen_len=int(sum(len(p) for p in preds)), gen_num=len(samples), gen_tok_len=int(gen_tok_len),
                   tokens_per_sample=round(gen_tok_len / len(samples), 1))
    for kind in METRICS:
        n = kinds.count(kind)
        if n:
            key = "rougeL" if kind == "rouge" else "exact_match"
            values = [r[key] for r, k in zip(per, kinds) if k == kind]
            report.per_dataset[kind] = {"samples": n, key: float(np.mean(values))}
    report.metrics = metrics
    report.checker_line = checker_dict(metrics)
    return report
