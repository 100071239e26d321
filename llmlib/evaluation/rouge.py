"""ROUGE the way the llama2-70b / llama3.1-8b / mixtral / llama3.1-405b reference scripts score it:
texts stripped, split into sentences with nltk's punkt (for ROUGE-Lsum), rouge_score F1 with stemming."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmlib.errors import DatasetError, HarnessError
from llmlib.evaluation.base import AccuracyReport, EvalOptions, checker_dict, decode
from llmlib.evaluation.logs import LogEntry, first_per_sample
from llmlib.evaluation.punkt_data import sent_tokenize

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def postprocess_text(preds: list[str], targets: list[str]) -> tuple[list[str], list[str]]:
    """Strip, then one sentence per line (rougeLsum splits on newlines), as the references do."""
    preds = ["\n".join(sent_tokenize(p.strip())) for p in preds]
    targets = ["\n".join(sent_tokenize(t.strip())) for t in targets]
    return preds, targets


def rouge_per_sample(predictions: list[str], references: list[str],
                     types: tuple[str, ...] = ROUGE_METRICS) -> dict[str, list[float]]:
    """F1 per sample for each ROUGE type (evaluate's rouge with use_aggregator=False)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise HarnessError("ROUGE needs rouge_score: pip install -e '.[accuracy]'") from err
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    out: dict[str, list[float]] = {t: [] for t in types}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for t in types:
            out[t].append(scores[t].fmeasure)
    return out


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F1 x 100 rounded to 4 places, as the reference scripts print it."""
    per = rouge_per_sample(predictions, references)
    return {t: float(round(np.mean(v) * 100, 4)) for t, v in per.items()} if predictions else {}


def row_value(table, column: str, idx: int, where: str) -> Any:
    if idx >= len(table):
        raise DatasetError(f"{where}: qsl_idx {idx} is outside the dataset ({len(table)} rows)")
    return table[column].iloc[idx]


def evaluate_rouge(entries: list[LogEntry], table, tokenizer, benchmark, options: EvalOptions) -> AccuracyReport:
    """llama2-70b (evaluate-accuracy.py) and llama3.1-8b (evaluation.py): ROUGE-1/2/L/Lsum on the
    reference column, gen_len (characters after sentence splitting), gen_num, tokens per sample.
    For the project's own benchmarks also exact token match and answer accuracy where the data has them."""
    report = AccuracyReport(evaluator="rouge")
    samples, conflicting = first_per_sample(entries)
    if not samples:
        raise HarnessError("the accuracy log holds no samples")
    if conflicting:
        report.notes.append(f"qsl_idx {conflicting[:10]} logged more than once with different outputs; "
                            "the first is scored, as the reference does")
    ref_col = benchmark.dataset.get("reference_column", "output") if benchmark is not None else "output"
    gen_tok_len = sum(len(e.tokens) for e in samples)
    metrics: dict[str, Any] = {}
    preds = None
    if tokenizer is not None:
        preds = [decode(tokenizer, e.tokens) for e in samples]
    if preds is not None and ref_col in table.columns:
        targets = [str(row_value(table, ref_col, e.qsl_idx, "rouge")) for e in samples]
        preds, targets = postprocess_text(preds, targets)
        metrics.update(rouge_scores(preds, targets))
    elif preds is None:
        metrics["note"] = "ROUGE needs a tokenizer (--tokenizer_path)"
    elif benchmark is not None and {m.name for m in benchmark.accuracy.metrics} & set(ROUGE_METRICS):
        metrics["note"] = f"ROUGE needs the reference column {ref_col!r} in the dataset"
    if preds is not None:
        metrics["gen_len"] = int(sum(len(p) for p in preds))
    metrics["gen_num"] = len(samples)
    metrics["gen_tok_len"] = int(gen_tok_len)
    metrics["tokens_per_sample"] = round(gen_tok_len / len(samples), 1)
    report.checker_line = checker_dict({k: v for k, v in metrics.items() if k != "note"})
    tok_col = benchmark.dataset.get("reference_tokens_column") if benchmark is not None else None
    if tok_col and tok_col in table.columns:
        same = sum(1 for e in samples
                   if np.array_equal(np.asarray(row_value(table, tok_col, e.qsl_idx, "exact_token_match"),
                                                dtype=np.int64), e.tokens.astype(np.int64)))
        metrics["exact_token_match"] = round(100.0 * same / len(samples), 4)
    if "answer" in table.columns and tokenizer is not None:
        from scaffolding.math_utils import extract_answer, numeric_equal

        raw = [decode(tokenizer, e.tokens) for e in samples]
        right = 0
        for e, text in zip(samples, raw):
            got = extract_answer(text)
            right += int(got is not None and numeric_equal(got, str(row_value(table, "answer", e.qsl_idx, "answer"))))
        metrics["answer_accuracy"] = round(100.0 * right / len(samples), 4)
    report.metrics = metrics
    return report
