"""The LoadGen wiring: TestSettings, the SUT and QSL callbacks, one scenario run and its summary.

Results land in <results_dir>/<system>/<benchmark>/<scenario>/<mode>/ next to the resolved config.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmlib.accuracy import AccuracyReport, evaluate, load_tokenizer, read_accuracy_log
from llmlib.benchmarks import BenchmarkSpec, ScenarioSpec
from llmlib.compliance.guard import audit_config_for
from llmlib.config import ResolvedConfig
from llmlib.cores.base import Request
from llmlib.errors import ConfigError, FlushTimeoutError, HarnessError
from llmlib.expander import ExpanderSUT, parse_scaffolding
from llmlib.factory import build_server, repo_root
from llmlib.generation import GenerationParams, generation_params
from llmlib.loadgen_log import parse_detail_log, summarize
from llmlib.reporter import LoadgenReporter
from llmlib.server import Progress
from llmlib.warmup import warmup_picks, warmup_shapes

log = logging.getLogger(__name__)

MODE_DIRS = {"PerformanceOnly": "performance", "AccuracyOnly": "accuracy"}


def import_loadgen():
    try:
        import mlperf_loadgen
    except ImportError as err:
        raise HarnessError("mlperf_loadgen is not installed: pip install mlcommons-loadgen "
                           "(or `make install`)") from err
    return mlperf_loadgen


def user_conf_path(config: ResolvedConfig) -> Path:
    path = Path(config.user_conf) if config.user_conf else Path(config.config_dir) / "user.conf"
    return path if path.is_absolute() else repo_root() / path


def build_test_settings(lg, config: ResolvedConfig, benchmark: BenchmarkSpec, scenario: ScenarioSpec):
    """LoadGen's built-in mlperf.conf, then user.conf, then the benchmark's limits and quick-run flags."""
    settings = lg.TestSettings()
    model, lg_scenario = scenario.loadgen_model, scenario.loadgen_scenario
    if settings.FromConfig("", model, lg_scenario, 0) != 0:
        raise ConfigError(f"LoadGen could not apply its built-in mlperf.conf for {model}.{lg_scenario}")
    conf = user_conf_path(config)
    if config.user_conf and not conf.is_file():
        raise ConfigError(f"--user_conf={config.user_conf}: no such file ({conf})")
    if conf.is_file():
        rc = settings.FromConfig(str(conf), model, lg_scenario, 1)
        if rc != 0:
            raise ConfigError(f"{conf}: LoadGen rejected this user.conf for {model}.{lg_scenario} (code {rc})")
    settings.scenario = getattr(lg.TestScenario, lg_scenario)
    settings.mode = getattr(lg.TestMode, config.test_mode)
    settings.use_token_latencies = True
    if scenario.ttft_ms is not None:
        settings.ttft_latency = int(scenario.ttft_ms * 1_000_000)
    if scenario.tpot_ms is not None:
        settings.tpot_latency = int(scenario.tpot_ms * 1_000_000)
    overrides = {
        "server_target_qps": config.server_target_qps if lg_scenario == "Server" else None,
        "offline_expected_qps": config.offline_expected_qps if lg_scenario == "Offline" else None,
        "min_duration_ms": config.min_duration_ms,
        "max_duration_ms": config.max_duration_ms,
        "min_query_count": config.min_query_count,
        "max_query_count": config.max_query_count,
        "performance_sample_count_override": config.performance_sample_count,
    }
    for attr, value in overrides.items():
        if value is not None:
            setattr(settings, attr, value)
    return settings


class LoadgenSUT:
    """LoadGen's issue/flush callbacks (a "fast" SUT: LoadGen passes sample ids and indices as
    two lists, so no QuerySample object is built per sample). Each sample becomes a request."""

    def __init__(self, server, reporter: LoadgenReporter, inputs, *, gen: GenerationParams, streaming: bool):
        self.server = server
        self.reporter = reporter
        self.inputs = inputs
        self.max_new_tokens = gen.max_new_tokens
        self.streaming = streaming
        self.min_new_tokens = gen.min_new_tokens
        self.stop_token_ids = gen.stop_token_ids
        self.sampling = gen.sampling()  # one dict shared by every request
        self.issued = 0
        self.issue_errors = 0
        self._submit_one = server.submit_one

    def issue_queries(self, ids, indices) -> None:
        self.issued += len(ids)
        try:
            if len(ids) == 1:  # Server: one sample per call
                idx = indices[0]
                self._submit_one(Request(ids[0], self.inputs[idx], self.max_new_tokens, self.streaming, idx,
                                         self.min_new_tokens, self.stop_token_ids, self.sampling), self.reporter)
                return
            inputs, max_new, streaming = self.inputs, self.max_new_tokens, self.streaming
            min_new, stops, sampling = self.min_new_tokens, self.stop_token_ids, self.sampling
            requests = [Request(rid, inputs[idx], max_new, streaming, idx, min_new, stops, sampling)
                        for rid, idx in zip(ids, indices)]
            self.server.submit(requests, self.reporter)
        except Exception as err:  # never let an exception escape into LoadGen's thread
            self.issue_errors += 1
            log.error("issue_queries failed: %r", err)
            for rid in ids:
                if not self.server.is_known(rid):
                    self.reporter.fail(rid, err, False)

    def flush_queries(self) -> None:
        """Nothing is held back: every request was handed to its core at issue."""


@dataclass
class RunOutcome:
    benchmark: str
    scenario: str
    mode: str
    core_type: str
    system: str
    outdir: str
    issued: int = 0
    completed: int = 0
    failed: int = 0
    short_outputs: int = 0
    duplicates_dropped: int = 0
    timed_out: int = 0
    output_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    run_error: str | None = None
    wall_s: float = 0.0
    loadgen: dict[str, Any] | None = None
    core_stats: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_sample: float | None = None
    tokens_per_sample_bounds: tuple[float | None, float | None] = (None, None)
    accuracy: dict[str, Any] | None = None
    accuracy_lines: list[str] = field(default_factory=list)
    scaffolding: dict[str, Any] | None = None
    scaffolding_lines: list[str] = field(default_factory=list)
    ttft_limit_ms: float | None = None
    tpot_limit_ms: float | None = None

    @property
    def lost(self) -> int:
        return self.issued - self.completed - self.failed

    @property
    def validity(self) -> str | None:
        return (self.loadgen or {}).get("validity")

    @property
    def ok(self) -> bool:
        """No request failed or went missing, and the run itself did not fail."""
        return self.failed == 0 and self.lost == 0 and self.run_error is None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(lost=self.lost, ok=self.ok, validity=self.validity)
        return d


def results_dir_for(config: ResolvedConfig, benchmark: str, scenario: str) -> Path:
    base = Path(config.results_dir)
    if not base.is_absolute():
        base = repo_root() / base
    # A compliance run (llmlib.compliance) writes <scenario>/<TEST0x>/, next to the runs it audits.
    return base / config.system_name / benchmark / scenario / (config.audit_test or MODE_DIRS[config.test_mode])


def run_scenario(config: ResolvedConfig, benchmark: BenchmarkSpec, scenario_name: str) -> RunOutcome:
    """One LoadGen test of one benchmark and scenario. Never leaves a request unaccounted for."""
    lg = import_loadgen()
    scenario = benchmark.scenario(scenario_name)
    audit_config = audit_config_for(config)
    outdir = results_dir_for(config, benchmark.name, scenario.name)
    outdir.mkdir(parents=True, exist_ok=True)
    config.write(outdir / "config.json")
    outcome = RunOutcome(benchmark=benchmark.name, scenario=scenario.name, mode=config.test_mode,
                         core_type=config.core_type, system=config.system_name, outdir=str(outdir),
                         ttft_limit_ms=scenario.ttft_ms, tpot_limit_ms=scenario.tpot_ms)
    settings = build_test_settings(lg, config, benchmark, scenario)
    gen = generation_params(config, benchmark)
    bundle = build_server(config, benchmark)
    server, dataset = bundle.server, bundle.dataset
    lg_streaming = scenario.loadgen_scenario == "Server"
    reporter = LoadgenReporter(lg, streaming=lg_streaming)
    sut_handle = qsl_handle = before = expander = None
    progress = None
    t0 = time.monotonic()
    try:
        bundle.warmup.health_check()
        if config.warmup_queries:
            n_warmup = config.warmup_queries * len(server.cores)
            shapes = warmup_shapes(dataset.input_tokens, dataset.output_lens, gen.max_new_tokens, n_warmup)
            bundle.warmup.warm_up(config.warmup_queries, *shapes, streaming=scenario.streaming,
                                  sample_indices=warmup_picks(dataset.input_tokens, n_warmup),
                                  timeout_s=max(config.request_timeout_s, 1.0) if config.request_timeout_s else 600.0)
        else:
            bundle.warmup.warm_up_cores()
        counts = server.counts
        before = (counts.completed, counts.output_tokens)
        if config.scaffolding:
            method, params = parse_scaffolding(config.scaffolding)
            tok_path = tokenizer_path_for(config, benchmark)
            expander = ExpanderSUT(server, reporter, dataset, gen=gen, method=method, params=params,
                                   tokenizer=load_tokenizer(tok_path) if tok_path is not None else None,
                                   max_parallel=config.scaffolding_max_parallel)
            sut = expander
        else:
            sut = LoadgenSUT(server, reporter, dataset.input_tokens, gen=gen, streaming=scenario.streaming)
        sut_handle = lg.ConstructFastSUT(sut.issue_queries, sut.flush_queries)
        perf_count = config.performance_sample_count or min(benchmark.performance_sample_count, len(dataset))
        qsl_handle = lg.ConstructQSL(len(dataset), perf_count, _noop, _noop)
        log_out = lg.LogOutputSettings()
        log_out.outdir = str(outdir)
        log_out.copy_summary_to_stdout = False
        log_settings = lg.LogSettings()
        log_settings.log_output = log_out
        log_settings.enable_trace = False
        if config.show_progress:
            progress = Progress(server, total=lambda: sut.issued, desc=f"{benchmark.name} {scenario.name}",
                                interval_s=config.progress_interval_s,
                                steady_state=config.show_steady_state_progress)
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings, audit_config)
        try:
            server.flush(config.flush_timeout_s)
        except FlushTimeoutError as err:
            outcome.run_error = str(err)
            server.fail_pending("still pending at the end of the run")
        outcome.issued = sut.issued
    except HarnessError as err:
        outcome.run_error = str(err)
    finally:
        if expander is not None:
            expander.close()
        if progress is not None:
            progress.close()
        if sut_handle is not None:
            lg.DestroyFastSUT(sut_handle)
        if qsl_handle is not None:
            lg.DestroyQSL(qsl_handle)
        bundle.stop()
    outcome.wall_s = time.monotonic() - t0
    if before is not None:  # the server counts under its lock; warmup is over by now
        outcome.completed = server.counts.completed - before[0]
        outcome.output_tokens = server.counts.output_tokens - before[1]
    outcome.failed = reporter.failed
    if expander is not None:  # the server counted sub-requests; LoadGen's samples are the expander's
        outcome.completed = expander.stats.completed
        outcome.output_tokens = expander.stats.answer_tokens
        outcome.scaffolding = expander.stats.report()
        outcome.scaffolding_lines = expander.stats.lines()
    outcome.short_outputs = reporter.short_outputs
    outcome.duplicates_dropped = server.counts.duplicates_dropped + sum(c.dropped_duplicates for c in server.cores)
    outcome.timed_out = server.counts.timed_out
    outcome.errors = dict(collections.Counter(server.counts.errors))
    outcome.core_stats = server.core_stats()
    if outcome.completed and config.test_mode == "AccuracyOnly":
        outcome.tokens_per_sample = outcome.output_tokens / outcome.completed
        outcome.tokens_per_sample_bounds = (benchmark.accuracy.tokens_per_sample_min,
                                            benchmark.accuracy.tokens_per_sample_max)
    if config.test_mode == "AccuracyOnly" and sut_handle is not None and outcome.run_error is None:
        try:
            report = evaluate_run(config, benchmark, dataset, outdir)
            outcome.accuracy, outcome.accuracy_lines = report.to_json(), report.lines()
        except HarnessError as err:
            outcome.accuracy_lines = [f"not evaluated: {err}"]
    detail = outdir / "mlperf_log_detail.txt"
    if detail.is_file() and sut_handle is not None:
        try:
            outcome.loadgen = asdict(summarize(parse_detail_log(detail)))
        except HarnessError as err:
            outcome.run_error = outcome.run_error or str(err)
    text = format_summary(outcome)
    (outdir / "summary.txt").write_text(text + "\n")
    (outdir / "summary.json").write_text(json.dumps(outcome.to_json(), indent=1, default=str) + "\n")
    return outcome


def tokenizer_path_for(config: ResolvedConfig, benchmark: BenchmarkSpec) -> Path | str | None:
    """--tokenizer_path, else the hf core's checkpoint, else a tokenizer saved next to the dataset."""
    if config.tokenizer_path:
        return Path(config.tokenizer_path) if config.tokenizer_path != "char" else "char"
    if config.core_type == "hf" and config.hf_model_path:
        return Path(config.hf_model_path)
    data_path = benchmark.dataset.get("path")
    if data_path:
        folder = Path(data_path) if Path(data_path).is_absolute() else repo_root() / data_path
        folder = folder if folder.is_dir() else folder.parent
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            return folder
    return None


def evaluate_run(config: ResolvedConfig, benchmark: BenchmarkSpec, dataset, outdir: Path) -> AccuracyReport:
    """Score mlperf_log_accuracy.json; writes accuracy.json next to it."""
    tok_path = tokenizer_path_for(config, benchmark)
    tokenizer = load_tokenizer(tok_path) if tok_path is not None else None
    report = evaluate(read_accuracy_log(outdir / "mlperf_log_accuracy.json"), dataset, benchmark, tokenizer)
    (outdir / "accuracy.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report


def _noop(_samples) -> None:
    """QSL load/unload: every sample is already in memory (loaded before timing started)."""


def _ms(ns: int | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:,.2f} ms"


def format_summary(o: RunOutcome) -> str:
    """One screen: the verdict, throughput, TTFT/TPOT p99 against the limits, the sample ledger."""
    lgr: dict[str, Any] = o.loadgen or {}
    lines = [f"=== {o.benchmark} | {o.scenario} | {o.mode} | core={o.core_type} | system={o.system} ==="]
    accuracy_mode = o.mode == "AccuracyOnly"
    if accuracy_mode:
        lines.append("LoadGen result      : AccuracyOnly run (no performance verdict); outputs in "
                     "mlperf_log_accuracy.json")
    else:
        lines.append(f"LoadGen result      : {lgr.get('validity') or 'no LoadGen result'}")
        for reason in lgr.get("invalid_reasons") or ():
            lines.append(f"  reason            : {reason}")
    if lgr and not accuracy_mode:
        sps, tps = lgr.get("result_samples_per_second"), lgr.get("result_tokens_per_second")
        lines.append(f"samples/s           : {sps:,.2f}" if sps is not None else "samples/s           : n/a")
        lines.append(f"tokens/s            : {tps:,.1f}" if tps is not None else "tokens/s            : n/a")
        if lgr.get("target_qps") is not None and o.scenario != "Offline":
            lines.append(f"target QPS          : {lgr['target_qps']:,.2f}")
    if o.scenario != "Offline" and o.mode == "PerformanceOnly":
        for name, key, limit in (("TTFT", "ttft_p99_ns", o.ttft_limit_ms), ("TPOT", "tpot_p99_ns", o.tpot_limit_ms)):
            value = lgr.get(key)
            verdict = ""
            if value is not None and limit is not None:
                verdict = "  OK" if value <= limit * 1e6 else "  OVER LIMIT"
            limit_text = f"limit {limit:,.0f} ms" if limit is not None else "no limit"
            lines.append(f"{name} p99            : {_ms(value):>14}   {limit_text}{verdict}")
    if o.tokens_per_sample is not None and not o.accuracy:
        lo, hi = o.tokens_per_sample_bounds
        inside = (lo is None or o.tokens_per_sample >= lo) and (hi is None or o.tokens_per_sample <= hi)
        bounds = f"[{'-inf' if lo is None else f'{lo:.2f}'}, {'inf' if hi is None else f'{hi:.2f}'}]"
        lines.append(f"tokens/sample       : {o.tokens_per_sample:.2f} within {bounds}: {'PASS' if inside else 'FAIL'}")
    if o.scaffolding_lines:
        lines.append("scaffolding:")
        lines.extend(f"  {line}" for line in o.scaffolding_lines)
    if o.accuracy_lines:
        verdict = "PASS" if (o.accuracy or {}).get("passed") else "FAIL or incomplete"
        lines.append(f"accuracy            : {verdict}")
        lines.extend(f"  {line}" for line in o.accuracy_lines)
        match = (o.accuracy or {}).get("metrics", {}).get("exact_token_match")
        if match is not None:
            lines.append(f"  {'exact_token_match':<18}: {match:10.4f}  % of samples identical to the reference tokens")
    lines.append(f"samples             : issued {o.issued} = completed {o.completed} + failed {o.failed}"
                 + ("" if o.lost == 0 else f"   LOST {o.lost}"))
    if o.short_outputs:
        lines.append(f"short outputs       : {o.short_outputs} with < 2 tokens (reported with their true count: LoadGen "
                     "logs an error for each and a TPOT of about 0)")
    if o.timed_out or o.duplicates_dropped:
        lines.append(f"timed out           : {o.timed_out}   duplicate responses dropped: {o.duplicates_dropped}")
    for cause, count in sorted(o.errors.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  failed x{count:<8}: {cause}")
    sources: collections.Counter = collections.Counter()
    for st in o.core_stats:
        sources.update(st.get("token_sources") or {})
    if sources:
        lines.append("output tokens from  : " + ", ".join(f"{k} x {v}" for k, v in sources.most_common())
                     + "  (server token ids / usage counts / counted stream chunks; warmup included)")
    if len(o.core_stats) > 1:
        for st in o.core_stats:
            lines.append(f"  {st['core']:<16}: completed {st['completed']}, failed {st['failed']}, "
                         f"tokens {st['output_tokens']}")
    if o.run_error:
        lines.append(f"RUN FAILED          : {o.run_error}")
    elif o.failed or o.lost:
        lines.append(f"RUN FAILED          : {o.failed} failed, {o.lost} lost")
    if o.failed:
        lines.append("note                : failed samples were completed in LoadGen with no output; "
                     "its latency figures include them")
    lines.append(f"wall time           : {o.wall_s:.1f} s")
    lines.append(f"results             : {o.outdir}")
    return "\n".join(lines)
