"""One run folder as the report sees it: LoadGen's logs (this harness's or another's), and, where the
harness wrote them, summary.json, config.json, run_stats.json and LoadGen's per-sample trace.

Everything here is read from the folder alone, so a report can be rebuilt long after the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmlib.errors import HarnessError
from llmlib.loadgen_log import DETAIL_LOG_NAME, parse_detail_log, run_scenario_of, summarize
from llmlib.report.loadgen_trace import TraceSamples, read_trace
from llmlib.report.recorder import read_run_stats

#: Percentiles LoadGen logs for latency, first token and time per output token.
LOADGEN_PERCENTILES = ("50.00", "90.00", "95.00", "97.00", "99.00", "99.90")
_PERCENTILE_KEYS = {
    "latency": "result_{p}_percentile_latency_ns",
    "ttft": "result_first_token_{p}_percentile_latency_ns",
    "tpot": "result_time_per_output_token_{p}_percentile_ns",
}


class ReportError(HarnessError):
    """A results folder holds no run the report can read."""


@dataclass
class RunData:
    folder: Path
    detail: dict[str, Any]
    loadgen: dict[str, Any]
    summary: dict[str, Any] | None
    config: dict[str, Any]
    stats: dict[str, Any] | None
    trace: TraceSamples | None

    @property
    def scenario(self) -> str:
        return (self.summary or {}).get("scenario") or self.loadgen.get("scenario") or "?"

    @property
    def mode(self) -> str:
        return (self.summary or {}).get("mode") or self.loadgen.get("mode") or "?"

    @property
    def benchmark(self) -> str:
        if self.summary and self.summary.get("benchmark"):
            return self.summary["benchmark"]
        parts = self.folder.resolve().parts
        for i, part in enumerate(parts):  # results/<system>/<benchmark>/<scenario>/<mode>
            if part == self.scenario and i > 0:
                return parts[i - 1]
        return str(self.detail.get("sut_name") or self.folder.name)

    @property
    def verdict(self) -> str:
        if self.summary and self.summary.get("verdict"):
            return self.summary["verdict"]
        if self.mode == "AccuracyOnly":
            return "COMPLETE"
        return self.loadgen.get("validity") or "NO RESULT"

    @property
    def written_by_harness(self) -> bool:
        return self.summary is not None

    def percentiles_ns(self, what: str) -> dict[float, float]:
        """LoadGen's logged percentiles of `what` (latency, ttft, tpot): {fraction: ns}."""
        out = {}
        for p in LOADGEN_PERCENTILES:
            v = self.detail.get(_PERCENTILE_KEYS[what].format(p=p))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[float(p) / 100] = float(v)
        return out

    def limits_ms(self) -> tuple[float | None, float | None]:
        s = self.summary or {}
        ttft, tpot = s.get("ttft_limit_ms"), s.get("tpot_limit_ms")
        if ttft is None and self.loadgen.get("ttft_limit_ns") and self.loadgen.get("scenario") != "Offline":
            ttft = self.loadgen["ttft_limit_ns"] / 1e6
        if tpot is None and self.loadgen.get("tpot_limit_ns") and self.loadgen.get("scenario") != "Offline":
            tpot = self.loadgen["tpot_limit_ns"] / 1e6
        return ttft, tpot

    def token_counting(self) -> str:
        """How the output tokens LoadGen got (n_tokens) were counted."""
        if not self.summary:
            return ("reported to LoadGen by the SUT (n_tokens of QuerySamplesComplete); these logs do not say "
                    "how that harness counted them")
        sources: dict[str, int] = {}
        for st in self.summary.get("core_stats") or ():
            for k, v in (st.get("token_sources") or {}).items():
                sources[k] = sources.get(k, 0) + v
        core = self.summary.get("core_type", "?")
        short = self.summary.get("short_outputs") or 0
        text = (", ".join(f"{k} x {v}" for k, v in sorted(sources.items(), key=lambda kv: -kv[1]))
                + " (server token ids / usage counts / counted stream chunks)") if sources else \
            f"the length of the output token ids the {core} core returned"
        if short:
            text += f"; {short} outputs under 2 tokens reported as 2 so LoadGen's TPOT is defined"
        return text

    def config_that_matters(self) -> list[tuple[str, str]]:
        lg, d = self.loadgen, self.detail
        rows = [("benchmark", self.benchmark), ("scenario", self.scenario), ("mode", self.mode)]
        s = self.summary or {}
        if s:
            rows += [("core", str(s.get("core_type"))), ("system", str(s.get("system")))]
        for k in ("core_type", "traffic_distribution_policy", "dummy_num_cores", "dummy_max_batch_size",
                  "dummy_ttft_ms", "dummy_tpot_ms", "trtllm_server_urls", "trtllm_max_concurrency",
                  "hf_model_path", "max_tokens", "scaffolding"):
            if k in self.config and self.config[k] not in (None, "", [], False) and k != "core_type":
                if k.startswith("dummy_") and s.get("core_type") != "dummy":
                    continue
                rows.append((k, str(self.config[k])))
        if lg.get("target_qps") is not None:
            label = "target QPS" if self.scenario in ("Server", "Interactive") else "expected QPS"
            rows.append((label, f"{lg['target_qps']:,.2f}"))
        for key, label in (("effective_min_duration_ms", "min duration ms"), ("effective_min_query_count",
                                                                              "min query count"),
                           ("effective_performance_sample_count", "performance sample count"),
                           ("loadgen_version", "LoadGen")):
            if d.get(key) is not None:
                rows.append((label, str(d[key])))
        ttft, tpot = self.limits_ms()
        if ttft is not None:
            rows.append(("TTFT limit", f"{ttft:,.0f} ms"))
        if tpot is not None:
            rows.append(("TPOT limit", f"{tpot:,.0f} ms"))
        return rows


def load_run(folder: str | Path) -> RunData:
    folder = Path(folder)
    try:
        detail = parse_detail_log(folder)
    except HarnessError as err:
        raise ReportError(f"{folder}: not a LoadGen run folder ({err})") from err
    scenario = run_scenario_of(folder)
    try:
        lg = asdict(summarize(detail, scenario))
    except HarnessError:
        lg = asdict(summarize(detail))
    summary = _json(folder / "summary.json")
    config_rows = _json(folder / "config.json")
    config = {r["name"]: r.get("value") for r in config_rows if isinstance(r, dict) and "name" in r} \
        if isinstance(config_rows, list) else {}
    return RunData(folder=folder, detail=detail, loadgen=lg, summary=summary if isinstance(summary, dict) else None,
                   config=config, stats=read_run_stats(folder), trace=read_trace(folder))


def find_runs(root: str | Path) -> list[Path]:
    """Every folder under `root` (itself included) that holds a LoadGen detail log, sorted; probe runs of a
    peak search (under peak_search/ or calibration/) are left out."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"RESULTS={root}: no such folder")
    if (root / DETAIL_LOG_NAME).is_file():
        return [root]
    runs = [p.parent for p in root.rglob(DETAIL_LOG_NAME)
            if not {"peak_search", "calibration"} & set(p.relative_to(root).parts[:-1])]
    if not runs:
        raise ReportError(f"RESULTS={root}: no {DETAIL_LOG_NAME} under it; expected a results folder of LoadGen runs")
    return sorted(runs)


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
