"""What every evaluator shares: its options, its report (metrics, checks against the benchmark's
targets, the accuracy.txt the submission checker reads) and reading the dataset's table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlib.errors import DatasetError, HarnessError


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalOptions:
    """Settings of one evaluation that are not in the benchmark spec."""

    dtype: str = "uint32"  # how the accuracy log's bytes are read (--dtype)
    prm800k_path: str = ""  # openai/prm800k checkout (its grading/ package grades MATH500 answers)
    lcb_tests: str = ""  # LiveCodeBench test cases (JSON/JSONL of question_id -> tests)
    workers: int = 0  # code sandbox processes; 0: one per core
    timeout_s: float = 20.0  # wall time per program (MBXP's reference gives 20 s)
    lcb_timeout_s: int = 60  # per LiveCodeBench test case (the references run LiveCodeBench with 60)
    memory_mb: int = 2048  # address-space limit per program

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else max(os.cpu_count() or 1, 1)


@dataclass
class AccuracyReport:
    """Scores of one evaluation, the targets they were held to, and the checker's accuracy.txt."""

    evaluator: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # name, value, min, max, passed
    not_evaluated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    checker_line: str = ""  # the results line in the form the submission checker's regexes read

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
            out.append(f"{name:<18}: not evaluated ({self.metrics.get('note', 'no data for it')})")
        out.extend(f"note: {n}" for n in self.notes)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator, "metrics": self.metrics, "checks": self.checks,
                "not_evaluated": self.not_evaluated, "notes": self.notes, "per_dataset": self.per_dataset,
                "passed": self.passed}

    def accuracy_txt(self) -> str:
        """accuracy.txt as the reference scripts print it ("Results" and one dict line). The line
        `hash=<sha256 of mlperf_log_accuracy.json>` is appended by submission staging, as
        truncate_accuracy_log.py does."""
        return f"\nResults\n\n{self.checker_line}\n"


def checker_dict(values: dict[str, Any]) -> str:
    """A dict line as the reference scripts print it, with plain Python numbers (numpy 2 would print
    `np.int64(8167644)`, which the checker's `'gen_len':\\s([\\d.]+)` cannot read)."""
    import numpy as np

    return repr({k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()})


def apply_targets(report: AccuracyReport, benchmark) -> AccuracyReport:
    """Hold the report's metrics to the benchmark's accuracy targets (and tokens-per-sample bounds)."""
    for target in benchmark.accuracy.metrics:
        value = report.metrics.get(target.name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if target.name not in report.not_evaluated:
                report.not_evaluated.append(target.name)
            continue
        lo, hi = target.threshold, target.upper_threshold
        report.checks.append({"name": target.name, "value": float(value), "min": lo, "max": hi,
                              "passed": value >= lo and (hi is None or value <= hi)})
    lo, hi = benchmark.accuracy.tokens_per_sample_min, benchmark.accuracy.tokens_per_sample_max
    if (lo is not None or hi is not None) and "tokens_per_sample" in report.metrics:
        value = float(report.metrics["tokens_per_sample"])
        report.checks.append({"name": "tokens_per_sample", "value": value, "min": lo, "max": hi,
                              "passed": (lo is None or value >= lo) and (hi is None or value <= hi)})
    return report


def write_results(report: AccuracyReport, outdir: str | Path) -> tuple[Path, Path]:
    """accuracy.txt (the checker's form) and accuracy.json (the project's) into `outdir`."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    txt, js = outdir / "accuracy.txt", outdir / "accuracy.json"
    txt.write_text(report.accuracy_txt())
    js.write_text(json.dumps(report.to_json(), indent=1, default=str) + "\n")
    return txt, js


def read_table(path: str | Path):
    """The dataset table (pandas DataFrame) from a pickle, parquet or JSON file, columns as the
    reference scripts read them."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--dataset={path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
        elif suffix == ".json":
            table = pd.read_json(path)
        else:
            table = pd.read_pickle(path)
    except ImportError as err:
        raise HarnessError(f"reading {path} needs a package: pip install -e '.[accuracy]' ({err})") from err
    except Exception as err:  # noqa: BLE001 - pandas/pickle/pyarrow raise many types for a bad file
        raise DatasetError(f"--dataset={path}: cannot read it as {suffix.lstrip('.') or 'pickle'} "
                           f"({type(err).__name__}: {err})") from err
    if not isinstance(table, pd.DataFrame):
        raise DatasetError(f"--dataset={path}: expected a pandas DataFrame, got {type(table).__name__}")
    return table


def require_columns(table, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(f"{where}: the dataset has no column {', '.join(map(repr, missing))} "
                           f"(columns: {', '.join(map(str, table.columns))})")


def decode(tokenizer, tokens, *, skip_special_tokens: bool = True) -> str:
    if tokenizer is None:
        raise HarnessError("decoding outputs needs a tokenizer (--tokenizer_path)")
    return tokenizer.decode([int(t) for t in tokens], skip_special_tokens=skip_special_tokens)
