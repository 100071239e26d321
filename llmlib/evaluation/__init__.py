"""Accuracy evaluators equal to the MLPerf reference scripts, keyed by name, and the code sandbox.

A benchmark YAML names its evaluator (`accuracy: {evaluator: NAME}`, default `rouge`); each one takes
(accuracy log entries, dataset table, tokenizer, benchmark spec, options) and needs no harness.
"""

from __future__ import annotations

from pathlib import Path

from llmlib.errors import HarnessError
from llmlib.evaluation.base import (AccuracyReport, EvalOptions, apply_targets, read_table,
                                    write_results)
from llmlib.evaluation.logs import AccuracyLogError, LogEntry, read_accuracy_log
from llmlib.registry import Registry

__all__ = [
    "DEFAULT_EVALUATOR",
    "EVALUATORS",
    "AccuracyLogError",
    "AccuracyReport",
    "EvalOptions",
    "LogEntry",
    "evaluate_accuracy",
    "evaluate_files",
    "load_tokenizer",
    "read_accuracy_log",
    "read_table",
    "table_from_dataset",
    "write_results",
]

EVALUATORS = Registry("evaluator")
DEFAULT_EVALUATOR = "rouge"  # a benchmark whose YAML names none (the ROUGE family, the project's own)
EVALUATORS.register("rouge", "llmlib.evaluation.rouge:evaluate_rouge", extra="accuracy")
EVALUATORS.register("mixtral-8x7b", "llmlib.evaluation.mixtral:evaluate_mixtral", extra="accuracy")
EVALUATORS.register("llama3.1-405b", "llmlib.evaluation.llama405b:evaluate_llama405b", extra="accuracy")
EVALUATORS.register("deepseek-r1", "llmlib.evaluation.reasoning:evaluate_deepseek_r1", extra="accuracy")
EVALUATORS.register("gpt-oss-120b", "llmlib.evaluation.reasoning:evaluate_gpt_oss", extra="accuracy")


def evaluate_accuracy(entries: list[LogEntry], table, tokenizer, benchmark,
                      options: EvalOptions | None = None, *, evaluator: str | None = None) -> AccuracyReport:
    """Score the log with the benchmark's evaluator and hold the result to its targets."""
    name = evaluator or benchmark.accuracy.evaluator or DEFAULT_EVALUATOR
    func = EVALUATORS.get(name)
    if not entries:
        raise AccuracyLogError("the accuracy log holds no samples")
    report = func(entries, table, tokenizer, benchmark, options or EvalOptions())
    report.evaluator = name
    return apply_targets(report, benchmark)


def evaluate_files(benchmark, log_path: str | Path, dataset_path: str | Path, tokenizer_path: str | Path | None,
                   options: EvalOptions | None = None, outdir: str | Path | None = None) -> AccuracyReport:
    """Evaluate a log another harness wrote: read it, the table and the tokenizer, score, and write
    accuracy.txt / accuracy.json into `outdir` (default: the log's folder)."""
    options = options or EvalOptions()
    entries = read_accuracy_log(log_path, options.dtype)
    table = read_table(dataset_path)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
    report = evaluate_accuracy(entries, table, tokenizer, benchmark, options)
    write_results(report, outdir or Path(log_path).parent)
    return report


def table_from_dataset(benchmark, dataset):
    """The dataset's table for an evaluator: the benchmark's pickle/parquet file when it has one,
    else the loaded dataset's reference columns (synthetic and generated formats)."""
    import pandas as pd

    spec = benchmark.dataset
    path = spec.get("path")
    if path and spec.get("format") in ("pickle", "parquet"):
        from llmlib.factory import repo_root

        file = Path(path) if Path(path).is_absolute() else repo_root() / path
        if file.is_file():
            return read_table(file)
    columns: dict[str, list] = {}
    if dataset.reference_texts is not None:
        columns[spec.get("reference_column", "output")] = list(dataset.reference_texts)
    if dataset.reference_tokens is not None:
        columns[spec.get("reference_tokens_column", "tok_output")] = list(dataset.reference_tokens)
    for key, values in dataset.extra.items():
        columns.setdefault(key, list(values))
    return pd.DataFrame(columns, index=range(len(dataset)))


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
