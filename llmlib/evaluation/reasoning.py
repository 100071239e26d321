"""deepseek-r1 (eval_accuracy.py) and gpt-oss-120b (eval_mlperf_accuracy.py) exact match per
sub-dataset: multiple-choice letters, boxed MATH500 answers graded by prm800k's grader, AIME integers,
LiveCodeBench code run in the sandbox against test cases the user supplies."""

from __future__ import annotations

import importlib
import os
import re
import struct
import sys
import threading
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from llmlib.errors import ConfigError, DatasetError, HarnessError
from llmlib.evaluation.base import AccuracyReport, EvalOptions, decode, require_columns
from llmlib.evaluation.livecodebench import grade_livecodebench, load_lcb_tests
from llmlib.evaluation.logs import LogEntry
from llmlib.evaluation.sandbox import run_parallel


def _isna(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict)) else False
    except (TypeError, ValueError):
        return False


def text_input(text: Any) -> str:
    return "" if text is None or _isna(text) else str(text).strip()


# ---------------------------------------------------------------------------- parsers, deepseek-r1

def parse_multiple_choice(text: str, max_option: str = "D") -> str | None:
    text = text_input(text)
    if not text:
        return None
    if text.startswith(("['", '["')) and text.endswith(("']", '"]')):
        text = text[2:-2].strip()
    text = text.replace(r"\n", "\n").replace(r"\'", "'")
    pattern = rf"\b(?:ANSWER|FINAL\s*ANSWER)\b\s*[:=]?\s*(?:\(?\s*([A-{max_option}])\s*\)?)(?:\s*$|[^A-Za-z])"
    matches = list(re.finditer(pattern, text, re.IGNORECASE))
    if matches:
        return matches[-1].group(1).upper()
    if max_option == "J":
        fallback = list(re.finditer(r"\b([A-J])\b", text, re.IGNORECASE))
        if fallback:
            return fallback[-1].group(1).upper()
    return None


def parse_boxed_math(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced; None when unclosed."""
    text = text_input(text)
    idx = text.rfind(r"\boxed{")
    if idx == -1:
        return None
    depth, start = 0, idx + 7
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[start:i].strip()
            depth -= 1
    return None


def parse_aime_answer(text: str) -> int | None:
    text = text_input(text)
    if not text:
        return None
    boxed = list(re.finditer(r"\\boxed{\s*(\d+)\s*}", text))
    if boxed:
        found = boxed[-1].group(1)
    else:
        answers = list(re.finditer(r"Answer:\s*(\d+)(?!\.)\b", text, re.IGNORECASE | re.MULTILINE))
        if not answers:
            return None
        found = answers[-1].group(1)
    value = int(found)
    return value if 0 <= value <= 999 else None


def parse_code_ds(text: str) -> str | None:
    match = re.search(r"```python(.*?)```", text_input(text), re.DOTALL)
    return match.group(1).strip() if match else None


# ------------------------------------------------------------------------- parsers, gpt-oss-120b

def extract_final_section(text: str) -> str:
    """The harmony `final` channel's content (markers may be corrupted), else the whole text."""
    text = text_input(text)
    if not text:
        return ""
    match = re.search(r"<\|channel\|>final[^<]*<\|message\|>(.*?)(?:<\|return\|>|$)", text, re.DOTALL)
    return match.group(1).strip() if match else text


def parse_multiple_choice_harmony(text: str, max_option: str = "D") -> str | None:
    text = text_input(text)
    if not text:
        return None
    final = re.sub(r"\*\*([^*]+)\*\*", r"\1", extract_final_section(text))
    if final.startswith(("['", '["')) and final.endswith(("']", '"]')):
        final = final[2:-2].strip()
    final = final.replace(r"\n", "\n").replace(r"\'", "'")
    single = re.match(rf"^[^a-zA-Z]*([A-{max_option}])(?:[^a-zA-Z]|$)", final.strip(), re.IGNORECASE)
    if single:
        return single.group(1).upper()
    answer = re.search(rf"\b(?:Answer|ANSWER)\s*[:.]?\s*([A-{max_option}])\b", final, re.IGNORECASE)
    if answer:
        return answer.group(1).upper()
    full = text.replace(r"\n", "\n").replace(r"\'", "'")
    pattern = rf"\b(?:ANSWER|FINAL\s*ANSWER)\b\s*[:=]?\s*(?:\(?\s*([A-{max_option}])\s*\)?)(?:\s*$|[^A-Za-z])"
    matches = list(re.finditer(pattern, full, re.IGNORECASE))
    if matches:
        return matches[-1].group(1).upper()
    if max_option == "J":
        fallback = list(re.finditer(rf"\b([A-{max_option}])\b", final, re.IGNORECASE))
        if fallback:
            return fallback[-1].group(1).upper()
    return None


def parse_code_harmony(text: str) -> str | None:
    text = text_input(text)
    if not text:
        return None
    final = extract_final_section(text)
    sources = [final, text] if final != text else [text]
    for source in sources:
        python = list(re.finditer(r"```python(.*?)```", source, re.DOTALL))
        if python:
            return python[-1].group(1).strip()
        plain = list(re.finditer(r"```(.*?)```", source, re.DOTALL))
        if plain:
            return re.sub(r"^(?:python|py)\s*\n", "", plain[-1].group(1).strip(), flags=re.IGNORECASE)
    return None


# ------------------------------------------------------------------------------------- graders

def evaluate_multiple_choice(parsed: str | None, ground_truth: Any, valid: str) -> bool:
    if not parsed or not ground_truth:
        return False
    return parsed.upper() in valid and parsed.upper() == str(ground_truth).upper()


def evaluate_aime(parsed: int | None, ground_truth: Any) -> bool:
    if parsed is None:
        return False
    try:
        return int(parsed) == int(ground_truth)
    except (TypeError, ValueError):
        return False


_grader_lock = threading.Lock()
_graders: dict[str, Callable[..., bool]] = {}


def prm800k_grader(path: str) -> Callable[..., bool]:
    """prm800k's grade_answer, imported from the checkout the user names (its repository root, its
    inner prm800k/ folder, or grading/'s parent) the way the reference scripts import it."""
    if not path:
        raise ConfigError("MATH500 answers are graded with openai/prm800k's grader: give its checkout with "
                          "--prm800k_path (or PRM800K_PATH), e.g. <mlcommons/inference>/language/deepseek-r1/"
                          "submodules/prm800k")
    with _grader_lock:
        if path in _graders:
            return _graders[path]
        root = Path(path)
        candidates = [root, root / "prm800k"]
        base = next((c for c in candidates if (c / "grading" / "grader.py").is_file()), None)
        if base is None:
            raise ConfigError(f"--prm800k_path={path}: no grading/grader.py there or in its prm800k/ folder")
        sys.path.insert(0, str(base))
        try:
            for name in [m for m in sys.modules if m == "grading" or m.startswith("grading.")]:
                del sys.modules[name]
            with warnings.catch_warnings():  # its regexes have invalid escapes (DeprecationWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module("grading.grader")
        except ImportError as err:
            raise HarnessError("prm800k's grader needs sympy and pylatexenc: "
                               f"pip install -e '.[accuracy]' ({err})") from err
        finally:
            sys.path.remove(str(base))
        _graders[path] = module.grade_answer
        return module.grade_answer


def find_prm800k(explicit: str = "") -> str:
    """Where prm800k's grader is: --prm800k_path, else PRM800K_PATH, else a checkout in build/prm800k,
    or in an mlcommons/inference checkout (or the MLPerf reference files) beside this repository."""
    if explicit or os.environ.get("PRM800K_PATH"):
        return explicit or os.environ["PRM800K_PATH"]
    root = Path(__file__).resolve().parents[2]
    in_reference = Path("language") / "deepseek-r1" / "submodules" / "prm800k"
    for candidate in (root / "build" / "prm800k", root.parent / "inference" / in_reference,
                      root.parent / "shared" / "mlperf-reference" / in_reference):
        if (candidate / "prm800k" / "grading" / "grader.py").is_file():
            return str(candidate)
    return ""


class _Graders:
    def __init__(self, options: EvalOptions):
        self.options = options

    def math500(self, parsed: str | None, ground_truth: Any) -> bool:
        if not parsed or not ground_truth:
            return False
        parsed = str(parsed).strip()
        if not parsed:
            return False
        grade = prm800k_grader(find_prm800k(self.options.prm800k_path))
        return bool(grade(given_answer=parsed, ground_truth=str(ground_truth)))


def evaluators(flavour: str, graders: _Graders) -> list[tuple[str, Callable, Callable | None]]:
    """(dataset key, parse, evaluate) in the reference's order; the first key contained in the
    lower-cased dataset name wins. LiveCodeBench's evaluate is None: it runs in the sandbox."""
    mc = parse_multiple_choice if flavour == "deepseek-r1" else parse_multiple_choice_harmony
    table = [
        ("gpqa", lambda t: mc(t, "D"), lambda p, g: evaluate_multiple_choice(p, g, "ABCD")),
        ("mmlu_pro", lambda t: mc(t, "J"), lambda p, g: evaluate_multiple_choice(p, g, "ABCDEFGHIJ")),
        ("math500", parse_boxed_math, graders.math500),
        ("aime", parse_aime_answer, evaluate_aime),
        ("livecodebench", parse_code_ds if flavour == "deepseek-r1" else parse_code_harmony, None),
    ]
    if flavour == "gpt-oss-120b":
        table.append(("mmlu", lambda t: mc(t, "J"), lambda p, g: evaluate_multiple_choice(p, g, "ABCDEFGHIJ")))
    return table


def pick(table, dataset: Any, where: str):
    if dataset is None or _isna(dataset) or not dataset:
        raise DatasetError(f"{where}: a sample has no dataset name")
    name = str(dataset).lower()
    for key, parse, evaluate in table:
        if key in name:
            return key, parse, evaluate
    raise DatasetError(f"{where}: no evaluator for dataset {dataset!r} (known: {', '.join(k for k, *_ in table)})")


# ------------------------------------------------------------------------------------ the runs

def _score_rows(rows: list[dict[str, Any]], flavour: str, options: EvalOptions, report: AccuracyReport) -> None:
    """Fill row['correct'] / row['extracted'] for every row (dataset, text, ground_truth)."""
    table = evaluators(flavour, _Graders(options))
    lcb: list[dict[str, Any]] = []
    for row in rows:
        key, parse, evaluate = pick(table, row["dataset"], flavour)
        row["correct"], row["extracted"] = False, None
        try:
            row["extracted"] = parse(row["text"])
        except Exception as err:  # noqa: BLE001 - the reference counts a parser failure as wrong
            row["why"] = f"parse error: {err}"
            continue
        if row["extracted"] is None or _isna(row["ground_truth"]):
            continue
        if evaluate is None:
            lcb.append(row)
            continue
        try:
            row["correct"] = bool(evaluate(row["extracted"], row["ground_truth"]))
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - a grader error fails that sample, as in the reference
            row["why"] = f"evaluation error: {type(err).__name__}: {err}"
    if lcb:
        tests = load_lcb_tests(options.lcb_tests) if options.lcb_tests else {}
        if not tests:
            report.notes.append(f"{len(lcb)} LiveCodeBench samples scored 0: no test cases given (--lcb_tests)")
        def grade(row: dict[str, Any]) -> tuple[bool, str]:  # ground truth of a LiveCodeBench row: its question_id
            return grade_livecodebench(row["extracted"], tests.get(str(row["ground_truth"])), options)

        results = run_parallel(grade, lcb, options.n_workers())
        for row, (ok, why) in zip(lcb, results):
            row["correct"], row["why"] = ok, why


def evaluate_deepseek_r1(entries: list[LogEntry], table, tokenizer, benchmark, options: EvalOptions) -> AccuracyReport:
    """eval_accuracy.py on an MLPerf log: first entry per sample, decoded without special tokens;
    exact_match = mean over samples, tokens_per_sample = mean output length."""
    report = AccuracyReport(evaluator="deepseek-r1")
    gt_col = "gt_output" if "gt_output" in table.columns else "ground_truth"
    require_columns(table, [gt_col], "deepseek-r1 (gt_output or ground_truth)")
    if "dataset" in table.columns:
        datasets = list(table["dataset"])
    elif "metric" in table.columns:
        datasets = [str(m).replace("_em", "").replace("_", "") for m in table["metric"]]
    else:
        datasets = ["unknown"] * len(table)
    if tokenizer is None:
        raise HarnessError("deepseek-r1 needs a tokenizer (--tokenizer_path)")
    seen: set[int] = set()
    rows: list[dict[str, Any]] = []
    for e in entries:
        if e.qsl_idx in seen:
            continue
        seen.add(e.qsl_idx)
        if e.qsl_idx >= len(table):
            report.notes.append(f"qsl_idx {e.qsl_idx} is outside the dataset; skipped as the reference does")
            continue
        rows.append({"qsl_idx": e.qsl_idx, "dataset": datasets[e.qsl_idx],
                     "ground_truth": table[gt_col].iloc[e.qsl_idx], "text": decode(tokenizer, e.tokens),
                     "tokens": len(e.tokens), "ids": e.tokens})
    if not rows:
        raise HarnessError("deepseek-r1: no valid predictions in the accuracy log")
    _score_rows(rows, "deepseek-r1", options, report)
    exact = sum(100.0 if r["correct"] else 0.0 for r in rows) / len(rows)
    tps = sum(r["tokens"] for r in rows) / len(rows)
    report.metrics = {"exact_match": exact, "tokens_per_sample": tps, "num-samples": len(rows), "gen_num": len(rows),
                      **_token_match(rows, table, benchmark)}
    report.per_dataset = _per_dataset(rows, lambda r: str(r["dataset"]))
    report.checker_line = repr({"exact_match": float(exact), "tokens_per_sample": float(tps), "num-samples": len(rows)})
    return report


# Final score = sum(correct / repeats) / sum(total / repeats): sets repeated in the accuracy run.
GPT_OSS_REPEATS = {"aime25": 8, "gpqa_diamond": 5, "livecodebench_v6": 3}


def evaluate_gpt_oss(entries: list[LogEntry], table, tokenizer, benchmark, options: EvalOptions) -> AccuracyReport:
    """eval_mlperf_accuracy.py: every log entry (no de-duplication), read as int32, decoded with
    special tokens (harmony channels); the score weights each dataset by its repeats."""
    report = AccuracyReport(evaluator="gpt-oss-120b")
    require_columns(table, ["dataset", "ground_truth"], "gpt-oss-120b")
    if tokenizer is None:
        raise HarnessError("gpt-oss-120b needs a tokenizer (--tokenizer_path)")
    rows: list[dict[str, Any]] = []
    for e in entries:
        if e.qsl_idx >= len(table):
            report.notes.append(f"qsl_idx {e.qsl_idx} is outside the dataset; skipped as the reference does")
            continue
        raw = e.tokens.tobytes()  # the reference unpacks the logged bytes as int32 whatever --dtype says
        ids = list(struct.unpack(f"<{len(raw) // 4}i", raw))
        dataset = table["dataset"].iloc[e.qsl_idx]
        if dataset is None or _isna(dataset) or not dataset:
            raise DatasetError("gpt-oss-120b: a sample has no dataset name")
        rows.append({"qsl_idx": e.qsl_idx, "dataset": str(dataset).lower(),
                     "ground_truth": table["ground_truth"].iloc[e.qsl_idx],
                     "text": decode(tokenizer, ids, skip_special_tokens=False), "tokens": len(ids), "ids": ids})
    if not rows:
        raise HarnessError("gpt-oss-120b: no valid predictions in the accuracy log")
    _score_rows(rows, "gpt-oss-120b", options, report)
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        stats[r["dataset"]][0] += int(r["correct"])
        stats[r["dataset"]][1] += 1
    final = sum(c / GPT_OSS_REPEATS.get(d, 1) for d, (c, _) in stats.items())
    best = sum(t / GPT_OSS_REPEATS.get(d, 1) for d, (_, t) in stats.items())
    pct = final / best * 100 if best > 0 else 0.0
    tps = sum(r["tokens"] for r in rows) / len(rows)
    report.metrics = {"exact_match": round(pct, 3), "final_score": final, "max_score": best,
                      "overall_accuracy": 100.0 * sum(c for c, _ in stats.values()) / len(rows),
                      "tokens_per_sample": tps, "num-samples": len(rows), "gen_num": len(rows),
                      **_token_match(rows, table, benchmark)}
    report.per_dataset = _per_dataset(rows, lambda r: r["dataset"])
    for d, info in report.per_dataset.items():
        info["repeats"] = GPT_OSS_REPEATS.get(d, 1)
    # The reference prints only 'exact_match' (3 decimals); the checker also bounds tokens_per_sample.
    report.checker_line = f"{{'exact_match': {pct:.3f}, 'tokens_per_sample': {tps:.1f}, 'num-samples': {len(rows)}}}"
    return report


def _token_match(rows: list[dict[str, Any]], table, benchmark) -> dict[str, float]:
    """exact_token_match: outputs equal to the dataset's reference tokens (the project's stand-ins
    carry them), not a reference metric; {} when the dataset has none."""
    column = (benchmark.dataset or {}).get("reference_tokens_column") if benchmark is not None else None
    if not column or column not in table.columns:
        return {}
    import numpy as np

    same = sum(1 for r in rows if np.array_equal(np.asarray(r["ids"], dtype=np.int64),
                                                 np.asarray(table[column].iloc[r["qsl_idx"]], dtype=np.int64)))
    return {"exact_token_match": round(100.0 * same / len(rows), 4)}


def _per_dataset(rows: list[dict[str, Any]], key: Callable[[dict], str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = out.setdefault(key(r), {"correct": 0, "total": 0})
        d["correct"] += int(r["correct"])
        d["total"] += 1
    for d in out.values():
        d["accuracy"] = 100.0 * d["correct"] / d["total"]
    return out



