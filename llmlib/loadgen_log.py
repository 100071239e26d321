"""Read LoadGen's mlperf_log_detail.txt and summarize one run (validity, throughput, TTFT/TPOT).

Keys are the ones LoadGen 5.x/6.x logs; each summary field names the key it comes from. LoadGen logs
an Interactive run as "Server": the harness scenario comes from the caller or the run's folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlib.errors import HarnessError

__all__ = [
    "DETAIL_LOG_NAME",
    "HARNESS_SCENARIOS",
    "LoadgenLogError",
    "LoadgenResult",
    "parse_detail_log",
    "run_scenario_of",
    "summarize",
]

DETAIL_LOG_NAME = "mlperf_log_detail.txt"
_PREFIX = ":::MLLOG"
# The harness's scenario names (llmlib.benchmarks.SCENARIOS) and what LoadGen logs for each.
HARNESS_SCENARIOS = {"Offline": "Offline", "Server": "Server", "Interactive": "Server", "SingleStream": "SingleStream"}


class LoadgenLogError(HarnessError):
    """A LoadGen log is missing, unreadable or not in the :::MLLOG format."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadgenResult:
    """What one LoadGen run reported. None means LoadGen did not log that value for this run."""

    # The harness scenario: Interactive for an Interactive run (LoadGen logs "Server"), else what
    # LoadGen logged. `loadgen_scenario` is always LoadGen's own effective_scenario.
    scenario: str | None
    mode: str | None  # effective_test_mode: PerformanceOnly, AccuracyOnly, ...
    validity: str | None  # result_validity: VALID / INVALID
    # Offline: result_samples_per_second. Server: result_completed_samples_per_sec (what the summary
    # prints as "Completed samples per second"); the scheduled rate is kept apart below.
    result_samples_per_second: float | None
    result_scheduled_samples_per_second: float | None  # Server: result_scheduled_samples_per_sec
    # Offline: result_tokens_per_second. Server: result_completed_tokens_per_second.
    result_tokens_per_second: float | None
    latency_p99_ns: int | None  # result_99.00_percentile_latency_ns (whole query)
    ttft_p99_ns: int | None  # result_first_token_99.00_percentile_latency_ns
    tpot_p99_ns: int | None  # result_time_per_output_token_99.00_percentile_ns
    ttft_limit_ns: int | None  # requested_server_ttft_latency (LoadGen logs no effective_ one)
    tpot_limit_ns: int | None  # requested_server_tpot_latency
    target_qps: float | None  # effective_target_qps
    query_count: int | None  # result_query_count
    # Samples in the measured queries: result_query_count x generated_samples_per_query
    # (Offline issues one query of many samples; Server one sample per query).
    completed_sample_count: int | None
    min_duration_ms: int | None  # effective_min_duration_ms
    min_query_count: int | None  # effective_min_query_count
    min_duration_met: bool | None  # result_min_duration_met
    min_queries_met: bool | None  # result_min_queries_met
    perf_constraints_met: bool | None  # result_perf_constraints_met (Server only)
    early_stopping_met: bool | None  # early_stopping_met
    early_stopping: dict[str, str] = field(default_factory=dict)  # early_stopping_<what> -> text, when not empty
    invalid_reasons: tuple[str, ...] = ()
    loadgen_scenario: str | None = None  # effective_scenario
    # SingleStream: result_90.00_percentile_latency_ns (the metric), early_stopping_latency_ss (its
    # early-stopping estimate), first-token and per-token p90 (..._90.00_percentile_...).
    latency_p90_ns: int | None = None
    early_stopping_latency_ns: int | None = None
    ttft_p90_ns: int | None = None
    tpot_p90_ns: int | None = None
    num_errors: int | None = None  # num_errors
    errors: tuple[str, ...] = ()  # "key: value" of every entry LoadGen flagged is_error
    warnings: tuple[str, ...] = ()  # same for is_warning

    @property
    def is_valid(self) -> bool:
        return self.validity == "VALID"


def parse_detail_log(path: str | Path) -> dict[str, Any]:
    """Key -> value of every :::MLLOG entry (the last one wins for a repeated key).

    Two extra keys hold lists of the whole entries LoadGen flagged: `errors` (metadata.is_error) and
    `warnings` (metadata.is_warning). `path` is the file or the directory holding mlperf_log_detail.txt.
    """
    log_path = Path(path)
    if log_path.is_dir():
        log_path = log_path / DETAIL_LOG_NAME
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as err:
        raise LoadgenLogError(f"LoadGen detail log not found: {log_path}") from err
    except OSError as err:
        raise LoadgenLogError(f"Cannot read LoadGen detail log {log_path}: {err}") from err

    detail: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    entries = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith(_PREFIX):
            continue
        try:
            entry = json.loads(line[len(_PREFIX) :])
        except json.JSONDecodeError as err:
            raise LoadgenLogError(
                f"{log_path}:{line_no}: expected ':::MLLOG {{json}}', the JSON does not parse: {err.msg}"
            ) from err
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise LoadgenLogError(f"{log_path}:{line_no}: expected a JSON object with a string 'key'")
        entries += 1
        detail[entry["key"]] = entry.get("value")
        metadata = entry.get("metadata") or {}
        if metadata.get("is_error"):
            errors.append(entry)
        if metadata.get("is_warning"):
            warnings.append(entry)
    if entries == 0:
        raise LoadgenLogError(f"{log_path}: no ':::MLLOG' entries; is this a LoadGen detail log?")
    detail["errors"] = errors
    detail["warnings"] = warnings
    return detail


def summarize(detail: dict[str, Any], scenario: str | None = None) -> LoadgenResult:
    """Pull the numbers a run report needs out of `parse_detail_log`'s dict.

    `scenario` is the harness scenario of the run (Interactive is logged by LoadGen as Server); it
    must agree with what LoadGen logged. None: LoadGen's own name.
    """
    logged = _str(detail.get("effective_scenario") or detail.get("requested_scenario"))
    if scenario is not None:
        if scenario not in HARNESS_SCENARIOS:
            raise LoadgenLogError(f"scenario {scenario!r}: expected one of {', '.join(HARNESS_SCENARIOS)}")
        if logged is not None and HARNESS_SCENARIOS[scenario] != logged:
            raise LoadgenLogError(f"LoadGen logs a run of scenario {scenario} as {HARNESS_SCENARIOS[scenario]}; "
                                  f"this log says {logged}")
    server = logged == "Server"
    single_stream = logged == "SingleStream"
    if server:
        samples_per_s = _float(detail.get("result_completed_samples_per_sec"))
        tokens_per_s = _float(detail.get("result_completed_tokens_per_second"))
    elif single_stream:
        samples_per_s = _float(detail.get("result_qps_with_loadgen_overhead"))
        tokens_per_s = _float(detail.get("result_completed_tokens_per_second"))
    else:
        samples_per_s = _float(detail.get("result_samples_per_second"))
        tokens_per_s = _float(detail.get("result_tokens_per_second"))

    query_count = _int(detail.get("result_query_count"))
    per_query = _int(detail.get("generated_samples_per_query"))
    completed = query_count * per_query if query_count is not None and per_query is not None else None

    early_stopping = {
        key[len("early_stopping_") :]: str(value).strip()
        for key, value in detail.items()
        if key.startswith("early_stopping_") and key != "early_stopping_met" and str(value or "").strip()
    }
    errors = tuple(_entry_text(e) for e in detail.get("errors", ()))
    warnings = tuple(_entry_text(e) for e in detail.get("warnings", ()))

    result = LoadgenResult(
        scenario=scenario or logged,
        loadgen_scenario=logged,
        latency_p90_ns=_int(detail.get("result_90.00_percentile_latency_ns")),
        early_stopping_latency_ns=_int(detail.get("early_stopping_latency_ss")) if single_stream else None,
        ttft_p90_ns=_int(detail.get("result_first_token_90.00_percentile_latency_ns")),
        tpot_p90_ns=_int(detail.get("result_time_per_output_token_90.00_percentile_ns")),
        mode=_str(detail.get("effective_test_mode") or detail.get("requested_test_mode")),
        validity=_str(detail.get("result_validity")),
        result_samples_per_second=samples_per_s,
        result_scheduled_samples_per_second=_float(detail.get("result_scheduled_samples_per_sec")),
        result_tokens_per_second=tokens_per_s,
        latency_p99_ns=_int(detail.get("result_99.00_percentile_latency_ns")),
        ttft_p99_ns=_int(detail.get("result_first_token_99.00_percentile_latency_ns")),
        tpot_p99_ns=_int(detail.get("result_time_per_output_token_99.00_percentile_ns")),
        ttft_limit_ns=_int(detail.get("requested_server_ttft_latency")),
        tpot_limit_ns=_int(detail.get("requested_server_tpot_latency")),
        target_qps=_float(detail.get("effective_target_qps")),
        query_count=query_count,
        completed_sample_count=completed,
        min_duration_ms=_int(detail.get("effective_min_duration_ms")),
        min_query_count=_int(detail.get("effective_min_query_count")),
        min_duration_met=_bool(detail.get("result_min_duration_met")),
        min_queries_met=_bool(detail.get("result_min_queries_met")),
        perf_constraints_met=_bool(detail.get("result_perf_constraints_met")),
        early_stopping_met=_bool(detail.get("early_stopping_met")),
        early_stopping=early_stopping,
        num_errors=_int(detail.get("num_errors")),
        errors=errors,
        warnings=warnings,
    )
    return _with_reasons(result, detail)


def run_scenario_of(path: str | Path) -> str | None:
    """The harness scenario of the run whose logs are at `path` (a log file or its folder), or None.

    LoadGen cannot tell an Interactive run from a Server run, so this reads what the harness wrote:
    `summary.json` next to the log, else the nearest folder named after a scenario
    (results/<system>/<benchmark>/<scenario>/<mode>/, or a submission's <benchmark>/<scenario>/...).
    """
    folder = Path(path)
    if not folder.is_dir():
        folder = folder.parent
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            value = json.loads(summary.read_text()).get("scenario")
        except (OSError, ValueError, AttributeError):
            value = None
        if value in HARNESS_SCENARIOS:
            return value
    for part in reversed(folder.resolve().parts):
        if part in HARNESS_SCENARIOS:
            return part
    return None


def _with_reasons(result: LoadgenResult, detail: dict[str, Any]) -> LoadgenResult:
    """Why the run is INVALID, in words, from LoadGen's own flags and its result_invalid_reason."""
    reasons: list[str] = []
    if result.min_duration_met is False:
        reasons.append(f"min duration not met (min_duration_ms={result.min_duration_ms})")
    if result.min_queries_met is False:
        reasons.append(f"min query count not met (min_query_count={result.min_query_count})")
    if result.perf_constraints_met is False:
        reasons.append("performance constraints not met" + _latency_detail(result))
    if result.early_stopping_met is False:
        texts = [" ".join(v.split()) for v in result.early_stopping.values()]
        unsuccessful = [t for t in texts if "unsuccessful" in t.lower()] or texts
        reasons.append("early stopping not satisfied" + (f": {' | '.join(unsuccessful)}" if unsuccessful else ""))
    loadgen_reason = " ".join(str(detail.get("result_invalid_reason") or "").split())
    if loadgen_reason:
        reasons.append(f"LoadGen: {loadgen_reason}")
    if result.errors:
        reasons.append(f"{len(result.errors)} error(s) logged: {'; '.join(result.errors[:3])}")
    if result.validity == "INVALID" and not reasons:
        reasons.append("LoadGen marked the run INVALID without logging a reason")
    if not reasons:
        return result
    return dataclasses.replace(result, invalid_reasons=tuple(reasons))


def _latency_detail(result: LoadgenResult) -> str:
    parts = []
    for label, value, limit in (
        ("TTFT", result.ttft_p99_ns, result.ttft_limit_ns),
        ("TPOT", result.tpot_p99_ns, result.tpot_limit_ns),
    ):
        if value is not None and limit is not None and limit > 0 and value > limit:
            parts.append(f"p99 {label} {value / 1e6:.3f} ms > limit {limit / 1e6:.3f} ms")
    return f" ({'; '.join(parts)})" if parts else ""


def _entry_text(entry: Any) -> str:
    if isinstance(entry, dict):
        return f"{entry.get('key')}: {entry.get('value')}"
    return str(entry)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
