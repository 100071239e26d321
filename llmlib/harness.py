"""The LoadGen wiring: TestSettings, the SUT and QSL callbacks, one scenario run and its summary.

Results land in <results_dir>/<system>/<benchmark>/<scenario>/<mode>/ next to the resolved config.
"""

from __future__ import annotations

import collections
import json
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmlib.evaluation import (AccuracyReport, EvalOptions, evaluate_accuracy, load_tokenizer, read_accuracy_log,
                               table_from_dataset, write_results)
from llmlib.benchmarks import BenchmarkSpec, ScenarioSpec
from llmlib.compliance.guard import audit_config_for
from llmlib.config import ResolvedConfig
from llmlib.cores.base import Request
from llmlib.errors import ConfigError, FlushTimeoutError, HarnessError, RunStopped
from llmlib.expander import ExpanderSUT, parse_scaffolding
from llmlib.factory import build_server, load_benchmark_dataset, repo_root
from llmlib.generation import GenerationParams, generation_params
from llmlib.loadgen_log import parse_detail_log, summarize
from llmlib.report.loadgen_trace import schedule_delay_of
from llmlib.report.recorder import RunRecorder, self_measurement, write_run_stats
from llmlib.reporter import LoadgenReporter
from llmlib.run_control import RunControl
from llmlib.secrets import config_secrets, redact, redact_obj
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
    if (config.test_mode == "AccuracyOnly" and benchmark.accuracy_sample_count is not None
            and settings.accuracy_sample_count_override == 0):  # mlperf.conf has it for the real benchmarks
        settings.accuracy_sample_count_override = benchmark.accuracy_sample_count
    overrides = {
        "server_target_qps": config.server_target_qps if lg_scenario == "Server" else None,
        "offline_expected_qps": config.offline_expected_qps if lg_scenario == "Offline" else None,
        "single_stream_expected_latency_ns": (config.single_stream_expected_latency_ns
                                              if lg_scenario == "SingleStream" else None),
        "min_duration_ms": config.min_duration_ms,
        "max_duration_ms": config.max_duration_ms,
        "min_query_count": config.min_query_count,
        "max_query_count": config.max_query_count,
        "performance_sample_count_override": config.performance_sample_count,
    }
    for attr, value in overrides.items():
        if value == "auto":  # llmlib.report.qps.prepare chooses it before the run
            raise ConfigError(f"--{attr}=auto: the value is measured by the harness CLI before the run "
                              "(python -m llmlib); give a number here")
        if value is not None:
            setattr(settings, attr, value)
    return settings


#: A hard exit waits this long for LoadGen's issue call in progress.
HARD_EXIT_SETTLE_S = 2.0


class LoadgenSUT:
    """LoadGen's issue/flush callbacks (a "fast" SUT: LoadGen passes sample ids and indices as
    two lists, so no QuerySample object is built per sample). Each sample becomes a request."""

    def __init__(self, server, reporter: LoadgenReporter, inputs, *, gen: GenerationParams, streaming: bool,
                 chunks: bool = False):
        self.server = server
        self.reporter = reporter
        self.inputs = inputs
        self.params = gen  # one typed object shared by every request
        self.streaming = streaming
        self.chunks = chunks and streaming  # --token_stats: the server listens to every token
        self.issued = 0
        self.issue_errors = 0
        self._submit_one = server.submit_one
        #: held through each issue call (uncontended: LoadGen issues from one thread); a hard exit takes it
        #: for good, so the samples counted as issued and their outcomes are read in one consistent state
        self._issuing = threading.Lock()

    def hold_intake(self, timeout_s: float) -> bool:
        """Before a hard exit: wait for the issue call in progress to return, then keep LoadGen's next
        one waiting (uncounted) until the process exits. False if the call did not return in time."""
        return self._issuing.acquire(timeout=timeout_s)

    def issue_queries(self, ids, indices) -> None:
        with self._issuing:
            self.issued += len(ids)
            try:
                if len(ids) == 1:  # Server: one sample per call
                    idx = indices[0]
                    req = Request(ids[0], self.inputs[idx], self.params, self.streaming, idx)
                    if self.chunks:
                        req.chunks = True
                    self._submit_one(req, self.reporter)
                    return
                inputs, params, streaming = self.inputs, self.params, self.streaming
                requests = [Request(rid, inputs[idx], params, streaming, idx) for rid, idx in zip(ids, indices)]
                if self.chunks:
                    for req in requests:
                        req.chunks = True
                self.server.submit(requests, self.reporter)
            except Exception as err:  # never let an exception escape into LoadGen's thread
                self.issue_errors += 1
                log.error("issue_queries failed: %r", err)
                for rid in ids:
                    if not self.server.is_known(rid):
                        self.reporter.fail_sample(rid, err)

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
    late_after_cancel: int = 0  # outcomes that came for requests already cancelled (expected, dropped)
    timed_out: int = 0
    output_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error shape (ids, numbers masked) -> count
    error_examples: dict[str, str] = field(default_factory=dict)  # shape -> its first full cause
    stalls_reported: int = 0
    run_error: str | None = None
    interrupted: str | None = None  # why the run was stopped by a signal
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    loadgen: dict[str, Any] | None = None
    core_stats: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_sample: float | None = None
    tokens_per_sample_bounds: tuple[float | None, float | None] = (None, None)
    accuracy: dict[str, Any] | None = None
    accuracy_lines: list[str] = field(default_factory=list)
    scaffolding: dict[str, Any] | None = None
    scaffolding_lines: list[str] = field(default_factory=list)
    #: inter-token statistics of the requests someone listened to (--token_stats, scaffolding streams)
    token_stats: dict[str, Any] | None = None
    round_warning: str | None = None
    ttft_limit_ms: float | None = None
    tpot_limit_ms: float | None = None
    # the harness measuring itself (llmlib/report/recorder.py): added latency, schedule delay, QPS, CPU
    self_measurement: dict[str, Any] | None = None
    #: the endpoint dialect(s) that ran, the controls lost and whether that leaves the result compliant
    #: (llmlib.cores.wire.dialects.run_report); None for cores that speak no dialect
    api_dialect: dict[str, Any] | None = None

    @property
    def lost(self) -> int:
        return self.issued - self.completed - self.failed

    @property
    def validity(self) -> str | None:
        return (self.loadgen or {}).get("validity")

    @property
    def ok(self) -> bool:
        """No request failed or went missing, and the run itself did not fail or get interrupted."""
        return self.failed == 0 and self.lost == 0 and self.run_error is None and self.interrupted is None

    @property
    def verdict(self) -> str:
        """What the run is worth: INTERRUPTED, FAILED (requests failed or went missing, or the run
        itself failed), else LoadGen's own validity. Never VALID unless every request completed."""
        if self.interrupted is not None:
            return "INTERRUPTED"
        if not self.ok:
            return "FAILED"
        if self.mode == "AccuracyOnly":
            return "COMPLETE"
        return self.validity or "NO RESULT"

    @property
    def completed_fraction(self) -> float:
        return self.completed / self.issued if self.issued else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(lost=self.lost, ok=self.ok, validity=self.validity, verdict=self.verdict)
        lgr = self.loadgen or {}
        if lgr.get("result_samples_per_second") is not None and self.issued:
            # LoadGen counts a failed sample as done; these count completed samples only
            duration = self.issued / lgr["result_samples_per_second"] if lgr["result_samples_per_second"] else None
            d["completed_samples_per_second"] = self.completed / duration if duration else None
            d["completed_tokens_per_second"] = self.output_tokens / duration if duration else None
        return d


#: --loadgen_trace=auto traces runs whose expected rate is at most this many samples/s.
TRACE_AUTO_MAX_RATE = 2000.0


def expected_rate(settings, scenario: ScenarioSpec) -> float:
    """Samples per second LoadGen is set to issue: Server's target, Offline's expected QPS, SingleStream's
    1 / expected latency."""
    if scenario.loadgen_scenario == "Server":
        return float(settings.server_target_qps)
    if scenario.loadgen_scenario == "Offline":
        return float(settings.offline_expected_qps)
    latency_ns = float(getattr(settings, "single_stream_expected_latency_ns", 0) or 0)
    return 1e9 / latency_ns if latency_ns > 0 else 0.0


def trace_enabled(config: ResolvedConfig, settings, scenario: ScenarioSpec) -> bool:
    if config.loadgen_trace == "auto":
        return expected_rate(settings, scenario) <= TRACE_AUTO_MAX_RATE
    return config.loadgen_trace == "true"


def results_dir_for(config: ResolvedConfig, benchmark: str, scenario: str) -> Path:
    base = Path(config.results_dir)
    if not base.is_absolute():
        base = repo_root() / base
    # A compliance run (llmlib.compliance) writes <scenario>/<TEST0x>/, next to the runs it audits.
    return base / config.system_name / benchmark / scenario / (config.audit_test or MODE_DIRS[config.test_mode])


def derived_timeouts(config: ResolvedConfig, benchmark: BenchmarkSpec, scenario: ScenarioSpec,
                     settings) -> ResolvedConfig:
    """`request_timeout_s` and `stall_warning_s` from the scenario's limits where the user gave none
    (the resolved config records them as derived)."""
    values: dict[str, float] = {}
    max_out = config.max_tokens or benchmark.max_output_tokens
    if config.request_timeout_s is None:
        if scenario.loadgen_scenario == "Offline" or scenario.ttft_ms is None or scenario.tpot_ms is None:
            # requests queue by design: a request has hung when it outlives twice the expected run
            qps = max(float(getattr(settings, "offline_expected_qps", 0) or 0), 1e-9)
            samples = benchmark.total_sample_count if config.test_mode == "AccuracyOnly" else \
                max(settings.min_query_count, qps * settings.min_duration_ms / 1000)
            expected_s = max(samples / qps, settings.min_duration_ms / 1000)
            values["request_timeout_s"] = round(max(600.0, 2 * expected_s), 1)
        else:
            worst = scenario.ttft_ms / 1000 + max_out * scenario.tpot_ms / 1000
            values["request_timeout_s"] = round(max(30.0, 3 * worst), 1)
    if config.stall_warning_s is None:
        if scenario.streaming and scenario.ttft_ms is not None:
            values["stall_warning_s"] = round(max(10.0, 5 * scenario.ttft_ms / 1000), 1)
        else:
            values["stall_warning_s"] = 0.0
    return config.with_values(source="derived from the scenario's limits", **values) if values else config


def _schedule_left(settings, scenario: ScenarioSpec, config: ResolvedConfig, benchmark: BenchmarkSpec,
                   t_start: float):
    """How long LoadGen's test still runs once every sample fails at issue: Offline ends at once;
    a Server schedule issues its queries at their times until min duration and min query count
    are met (all samples in accuracy mode); SingleStream issues query after query until its min
    duration."""
    if scenario.loadgen_scenario == "Offline":
        return lambda: 0.0
    if scenario.loadgen_scenario != "Server":  # SingleStream: the next query follows the last until min duration
        total = settings.min_duration_ms / 1000 if config.test_mode != "AccuracyOnly" else 0.0
        return lambda: max(total - (time.monotonic() - t_start), 0.0)
    qps = max(float(settings.server_target_qps), 1e-9)
    if config.test_mode == "AccuracyOnly":
        total_s = benchmark.total_sample_count / qps
    else:
        total_s = max(settings.min_duration_ms / 1000, settings.min_query_count / qps)
        if settings.max_duration_ms:
            total_s = min(total_s, settings.max_duration_ms / 1000)
    return lambda: max(total_s - (time.monotonic() - t_start), 0.0)


def check_results_dir(config: ResolvedConfig) -> Path:
    """The results folder exists (made if missing) and is writable; else a one-line ConfigError."""
    base = Path(config.results_dir)
    if not base.is_absolute():
        base = repo_root() / base
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ConfigError(f"--results_dir={config.results_dir}: not a writable folder "
                          f"({err.strerror or err})") from err
    return base


class _Run:
    """One scenario run's moving parts, so that the end of the run (normal, stopped, or a hard
    exit from the run-control thread) can build the same outcome from them."""

    def __init__(self, lg, config: ResolvedConfig, benchmark: BenchmarkSpec, scenario: ScenarioSpec,
                 outcome: RunOutcome, control: RunControl):
        self.lg, self.config, self.benchmark, self.scenario = lg, config, benchmark, scenario
        self.outcome, self.control = outcome, control
        self.bundle = self.server = self.dataset = self.sut = self.expander = None
        self.reporter: LoadgenReporter | None = None
        self.before: tuple[int, int] | None = None
        self.errors_before: collections.Counter = collections.Counter()
        self.loadgen_started = self.loadgen_done = False
        self.t0 = time.monotonic()
        self._written = threading.Lock()
        self.errors_file = None
        self._errors_lock = threading.Lock()
        self.recorder: RunRecorder | None = None

    # --- what a stop does (called on the run-control thread) ------------------------------------------
    def stop(self, cause: str) -> None:
        """No new request reaches a backend; everything pending fails with `cause`; LoadGen is left
        to finish its test (Offline ends at once, a Server schedule runs on with instant failures)."""
        if self.bundle is not None:
            self.bundle.warmup.stop_event.set()
        if self.server is not None:
            self.server.stop_intake(cause)
            n = self.server.fail_pending(cause)
            if n:
                log.warning("%d pending request(s) failed: %s", n, cause)

    def hard_exit(self, why: str) -> None:
        """Write the summary from what is known, without LoadGen (which is still running or being
        torn down), before the process exits. LoadGen's issue thread is held first: a sample it is
        issuing would be counted as issued before its refusal is counted as failed."""
        o = self.outcome
        if self.control.signals:
            o.interrupted = o.interrupted or self.control.stop_reason or why
        else:  # a core lost: the run failed
            o.run_error = o.run_error or self.control.stop_reason or why
        o.notes.append(f"LoadGen did not finish ({why}): its mlperf_log_summary.txt is not written and the "
                       f"counts are the harness's own")
        sut = self.sut
        if sut is not None and not sut.hold_intake(HARD_EXIT_SETTLE_S):
            o.notes.append(f"LoadGen's issue call did not return within {HARD_EXIT_SETTLE_S:g}s: a sample it was "
                           f"issuing may show as lost")
        self.collect(loadgen_finished=False)
        self.write_summary(print_it=True)

    # --- the ledger ---------------------------------------------------------------------------------------
    def on_failure(self, request_id: int, sample_index: int, cause: str) -> None:
        """Every failed sample's full cause, one line each, into errors.txt (the summary groups them):
        the dataset sample index, LoadGen's response id, the cause."""
        fh = self.errors_file
        if fh is not None:
            with self._errors_lock:
                fh.write(f"{sample_index}\t{request_id}\t{redact(cause)}\n")

    def count(self) -> None:
        """The ledger into the outcome: issued (the SUT's count), completed and output tokens (the server's,
        or the expander's samples), failed (the reporter's)."""
        o, server, reporter, sut = self.outcome, self.server, self.reporter, self.sut
        if server is None:
            return
        if sut is not None:
            o.issued = sut.issued
        if self.before is not None:  # the server counts under its lock; warm-up is over by now
            o.completed = server.counts.completed - self.before[0]
            o.output_tokens = server.counts.output_tokens - self.before[1]
        if reporter is not None:
            o.failed = reporter.failed
            o.short_outputs = reporter.short_outputs
        if self.expander is not None:  # the server counted sub-requests; LoadGen's samples are the expander's
            o.completed = self.expander.stats.completed
            o.output_tokens = self.expander.stats.answer_tokens

    def collect(self, *, loadgen_finished: bool) -> None:
        o, server = self.outcome, self.server
        o.wall_s = time.monotonic() - self.t0
        if server is None:
            return
        self.count()
        if self.expander is not None:
            o.scaffolding = self.expander.stats.report()
            o.scaffolding_lines = self.expander.stats.lines()
        if server.itl_ns:
            o.token_stats = token_stats(server.itl_ns, server.max_gap_ns)
        o.duplicates_dropped = server.counts.duplicates_dropped
        o.late_after_cancel = server.counts.late_after_cancel
        o.timed_out = server.counts.timed_out
        o.stalls_reported = server.stalls_reported
        o.errors = dict((collections.Counter(server.counts.errors) - self.errors_before).most_common()) \
            if self.before is not None else {}
        o.error_examples = {shape: server.error_examples.get(shape, shape) for shape in o.errors}
        o.core_stats = server.core_stats()
        from llmlib.cores.wire.dialects import run_report

        o.api_dialect = run_report(o.core_stats, accuracy=o.mode == "AccuracyOnly")
        detail = Path(o.outdir) / "mlperf_log_detail.txt"
        if loadgen_finished and detail.is_file() and self.loadgen_started:
            try:
                o.loadgen = asdict(summarize(parse_detail_log(detail), self.scenario.name))
            except HarnessError as err:
                o.run_error = o.run_error or str(err)
        self.measure_self(loadgen_finished=loadgen_finished)

    def measure_self(self, *, loadgen_finished: bool) -> None:
        """run_stats.json and the self-measurement figures of the summary (never fails the run)."""
        o, rec = self.outcome, self.recorder
        if rec is None:
            return
        try:
            if not loadgen_finished:
                rec.close()
            stats = rec.to_json()
            write_run_stats(Path(o.outdir), stats)
            schedule = schedule_delay_of(o.outdir) if loadgen_finished else None
            o.self_measurement = self_measurement(stats, schedule, o.loadgen, scenario=o.scenario,
                                                  ttft_limit_ms=o.ttft_limit_ms)
        except (OSError, ValueError) as err:
            o.notes.append(f"self-measurement not written: {err}")

    def write_summary(self, *, print_it: bool = False) -> None:
        """summary.txt and summary.json, once (a hard exit and the normal end may race)."""
        if not self._written.acquire(blocking=False):
            return
        if self.errors_file is not None:
            with self._errors_lock:
                self.errors_file.flush()
        outdir = Path(self.outcome.outdir)
        if not outdir.is_dir():  # stopped while the dataset or the cores were being built
            self.outcome.notes.append("stopped before the run began: no results folder was made")
            print_it = True
        text = redact(format_summary(self.outcome))  # server bodies quoted in causes may echo a key
        if outdir.is_dir():
            (outdir / "summary.txt").write_text(text + "\n")
            (outdir / "summary.json").write_text(json.dumps(redact_obj(self.outcome.to_json()), indent=1,
                                                            default=str) + "\n")
        if print_it:
            print("\n" + text, flush=True)


def run_scenario(config: ResolvedConfig, benchmark: BenchmarkSpec, scenario_name: str, *,
                 control: RunControl | None = None, notes: Sequence[str] = ()) -> RunOutcome:
    """One LoadGen test of one benchmark and scenario. Never leaves a request unaccounted for.

    `control` takes Ctrl-C / SIGTERM (the CLI installs one with signal handling); without one the
    run still stops early, with the same steps, when a core can no longer serve."""
    own_control = control is None
    if own_control:
        control = RunControl(grace_s=config.interrupt_grace_s, signals=False).install()
    try:
        return _run_scenario(config, benchmark, scenario_name, control, notes)
    finally:
        if own_control:
            control.uninstall()


def _run_scenario(config: ResolvedConfig, benchmark: BenchmarkSpec, scenario_name: str,
                  control: RunControl, notes: Sequence[str] = ()) -> RunOutcome:
    lg = import_loadgen()
    benchmark = benchmark.for_mode(config.test_mode)  # gpt-oss-120b: other set and limits in AccuracyOnly
    scenario = benchmark.scenario(scenario_name)
    audit_config = audit_config_for(config)
    # Everything that can be wrong with the input is found before a results folder is made.
    settings = build_test_settings(lg, config, benchmark, scenario)
    config = derived_timeouts(config, benchmark, scenario, settings)
    gen = generation_params(config, benchmark)
    config_secrets(config)  # registered for redaction before any text is written
    check_results_dir(config)
    outdir = results_dir_for(config, benchmark.name, scenario.name)
    outcome = RunOutcome(benchmark=benchmark.name, scenario=scenario.name, mode=config.test_mode,
                         core_type=config.core_type, system=config.system_name, outdir=str(outdir),
                         ttft_limit_ms=scenario.ttft_ms, tpot_limit_ms=scenario.tpot_ms,
                         round_warning=round_warning(benchmark, config.round))
    outcome.notes.extend(notes)  # QPS calibration / peak search (llmlib/report/qps.py)
    if outcome.round_warning:
        log.warning(outcome.round_warning)
    run = _Run(lg, config, benchmark, scenario, outcome, control)
    control.on_hard_exit(run.hard_exit)
    try:
        dataset = load_benchmark_dataset(benchmark)
        run.bundle = bundle = build_server(config, benchmark, dataset)
    except BaseException:
        control.on_hard_exit(None)
        raise
    run.server, run.dataset = server, dataset = bundle.server, bundle.dataset
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.txt", "summary.json", "errors.txt"):
            (outdir / stale).unlink(missing_ok=True)
        config.write(outdir / "config.json")
        run.errors_file = open(outdir / "errors.txt", "w", buffering=1 << 16)  # noqa: SIM115 (closed below)
    except OSError as err:
        bundle.stop()
        raise ConfigError(f"--results_dir: cannot write {outdir} ({err.strerror or err})") from err
    server.on_core_lost = control.abort
    control.on_stop(run.stop)
    if control.stopped:  # a signal before the hooks were in place
        run.stop(control.stop_reason)
    lg_streaming = scenario.loadgen_scenario != "Offline"  # token latencies: every sample gets a first token
    run.reporter = reporter = LoadgenReporter(lg, streaming=lg_streaming)
    sut_handle = qsl_handle = None
    progress = None
    try:
        bundle.warmup.health_check()
        if config.warmup_queries:
            n_warmup = config.warmup_queries * len(server.cores)
            shapes = warmup_shapes(dataset.input_tokens, dataset.output_lens, gen.max_new_tokens, n_warmup)
            bundle.warmup.warm_up(config.warmup_queries, *shapes, streaming=scenario.streaming,
                                  sample_indices=warmup_picks(dataset.input_tokens, n_warmup),
                                  timeout_s=config.warmup_timeout_s, params=gen)
        else:
            bundle.warmup.warm_up_cores()
        if control.stopped:
            raise RunStopped(control.stop_reason)
        counts = server.counts
        run.before = (counts.completed, counts.output_tokens)
        run.errors_before = collections.Counter(counts.errors)  # warm-up failures are not the run's
        server.error_sink = run.on_failure
        if config.scaffolding:
            method, params = parse_scaffolding(config.scaffolding)
            tok_path = tokenizer_path_for(config, benchmark)
            run.expander = ExpanderSUT(server, reporter, dataset, gen=gen, method=method, params=params,
                                       tokenizer=load_tokenizer(tok_path) if tok_path is not None else None,
                                       max_parallel=config.scaffolding_max_parallel)
            sut = run.expander
        else:
            sut = LoadgenSUT(server, reporter, dataset.input_tokens, gen=gen, streaming=scenario.streaming,
                             chunks=bool(config.token_stats))
        run.sut = sut
        sut_handle = lg.ConstructFastSUT(sut.issue_queries, sut.flush_queries)
        perf_count = config.performance_sample_count or min(benchmark.performance_sample_count, len(dataset))
        qsl_handle = lg.ConstructQSL(len(dataset), perf_count, _noop, _noop)
        log_out = lg.LogOutputSettings()
        log_out.outdir = str(outdir)
        log_out.copy_summary_to_stdout = False
        log_settings = lg.LogSettings()
        log_settings.log_output = log_out
        log_settings.enable_trace = trace_enabled(config, settings, scenario)  # per-sample schedule delay
        if config.show_progress and not config.quiet:
            progress = Progress(server, total=lambda: sut.issued, desc=f"{benchmark.name} {scenario.name}",
                                interval_s=config.progress_interval_s,
                                steady_state=config.show_steady_state_progress)
        run.recorder = RunRecorder(len(server.cores))
        server.recorder, server.recorder_fail = run.recorder.on_complete, run.recorder.on_fail
        run.loadgen_started = True
        control.loadgen_time_left = _schedule_left(settings, scenario, config, benchmark, time.monotonic())
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings, audit_config)
        control.finished()
        run.loadgen_done = True
        try:
            server.flush(config.flush_timeout_s)
        except FlushTimeoutError as err:
            outcome.run_error = str(err)
            server.fail_pending("still pending at the end of the run")
    except RunStopped as err:
        if not control.stopped:
            outcome.run_error = str(err)
    except HarnessError as err:
        outcome.run_error = str(err)
    finally:
        # Nothing may reach LoadGen once its SUT is destroyed: close the reporter first.
        reporter.close()
        if run.expander is not None:
            run.expander.close()
        if progress is not None:
            progress.close()
        if sut_handle is not None:
            lg.DestroyFastSUT(sut_handle)
        if qsl_handle is not None:
            lg.DestroyQSL(qsl_handle)
        server.on_core_lost = None
        server.recorder = server.recorder_fail = None
        if run.recorder is not None:
            run.recorder.close()
        control.on_stop(None)
        control.loadgen_time_left = None
        bundle.stop()
    if control.stopped:
        if control.exit_code is not None:
            outcome.interrupted = control.stop_reason
        else:
            outcome.run_error = outcome.run_error or control.stop_reason
    run.collect(loadgen_finished=run.loadgen_done)
    if control.stopped and not run.loadgen_started:
        outcome.notes.append("stopped before LoadGen's test began: no LoadGen logs")
    if outcome.completed and config.test_mode == "AccuracyOnly":
        outcome.tokens_per_sample = outcome.output_tokens / outcome.completed
        outcome.tokens_per_sample_bounds = (benchmark.accuracy.tokens_per_sample_min,
                                            benchmark.accuracy.tokens_per_sample_max)
    if config.test_mode == "AccuracyOnly" and run.loadgen_done and outcome.run_error is None \
            and outcome.interrupted is None:
        try:
            report = evaluate_run(config, benchmark, dataset, outdir)
            outcome.accuracy, outcome.accuracy_lines = report.to_json(), report.lines()
        except HarnessError as err:
            outcome.accuracy_lines = [f"not evaluated: {err}"]
    run.write_summary()
    control.on_hard_exit(None)
    with run._errors_lock:
        run.errors_file.close()
        run.errors_file = None
    return outcome


def round_warning(benchmark: BenchmarkSpec, round_name: str) -> str | None:
    """A warning when the benchmark is not part of the MLPerf round the run is for, else None."""
    if benchmark.in_round(round_name):
        return None
    return (f"benchmark {benchmark.name} is not part of MLPerf Inference {round_name} (--round): it belongs to "
            f"{', '.join(benchmark.rounds)}; running it anyway")


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
    """Score mlperf_log_accuracy.json with the benchmark's evaluator; writes accuracy.txt (the
    submission checker's form) and accuracy.json next to it."""
    tok_path = tokenizer_path_for(config, benchmark)
    tokenizer = load_tokenizer(tok_path) if tok_path is not None else None
    entries = read_accuracy_log(outdir / "mlperf_log_accuracy.json")
    options = EvalOptions(prm800k_path=config.prm800k_path, lcb_tests=config.lcb_tests)
    report = evaluate_accuracy(entries, table_from_dataset(benchmark, dataset), tokenizer, benchmark, options)
    write_results(report, outdir)
    return report


def _noop(_samples) -> None:
    """QSL load/unload: every sample is already in memory (loaded before timing started)."""


def _ms(ns: int | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:,.2f} ms"


def self_measurement_lines(m: dict[str, Any] | None) -> list[str]:
    """The harness's own cost in this run, and a warning where it could distort the result."""
    if not m:
        return []
    def f(v, fmt="{:,.3f}"):
        return "n/a" if v is None else fmt.format(v)
    added, sched = m.get("added_latency_ms") or {}, m.get("schedule_delay_ms") or {}
    lines = [f"harness added       : p50 {f(added.get('p50_ms'))} ms, p99 {f(added.get('p99_ms'))} ms "
             "(core response -> LoadGen call returned)"]
    if sched:
        lines.append(f"schedule delay      : p50 {f(sched.get('p50_ms'))} ms, p99 {f(sched.get('p99_ms'))} ms, "
                     f"max {f(sched.get('max_ms'))} ms (LoadGen issue - scheduled time)")
    else:
        lines.append("schedule delay      : n/a (no LoadGen trace: off above 2,000 samples/s or by "
                     "--loadgen_trace; --loadgen_trace=true turns it on)")
    qps = f"achieved {f(m.get('achieved_qps'), '{:,.2f}')} samples/s"
    if m.get("target_qps"):
        qps += f" against target {m['target_qps']:,.2f} QPS"
        sched = m.get("scheduled_qps")
        if sched and m.get("achieved_qps") is not None:
            qps += f" (LoadGen scheduled {sched:,.2f}: {m['achieved_qps'] / sched:.1%} of it)"
    lines.append(f"achieved QPS        : {qps}")
    lines.append(f"harness CPU         : {f(m.get('harness_cpu_s'), '{:,.2f}')} s "
                 f"({f(m.get('harness_cpu_cores'), '{:.2f}')} cores, "
                 f"{f(m.get('harness_cpu_us_per_sample'), '{:,.1f}')} us per sample; this process)")
    for w in m.get("warnings") or ():
        lines.append(f"WARNING (harness)   : {w}")
    return lines


def format_summary(o: RunOutcome) -> str:
    """One screen: the verdict, throughput, TTFT/TPOT p99 against the limits, the sample ledger."""
    lgr: dict[str, Any] = o.loadgen or {}
    lines = [f"=== {o.benchmark} | {o.scenario} | {o.mode} | core={o.core_type} | system={o.system} ==="]
    accuracy_mode = o.mode == "AccuracyOnly"
    lg_validity = lgr.get("validity")
    verdict = o.verdict
    if verdict in ("FAILED", "INTERRUPTED") or not accuracy_mode:
        lines.append(f"Result              : {verdict}")
    if accuracy_mode:
        lines.append("LoadGen result      : AccuracyOnly run (no performance verdict); outputs in "
                     "mlperf_log_accuracy.json")
    else:
        overruled = f"   (not the verdict: {verdict})" if lg_validity and lg_validity != verdict else ""
        lines.append(f"LoadGen computed    : {lg_validity or 'no LoadGen result'}{overruled}")
        for reason in lgr.get("invalid_reasons") or ():
            lines.append(f"  reason            : {reason}")
    if o.interrupted:
        lines.append(f"INTERRUPTED         : {o.interrupted}")
    if o.round_warning:
        lines.append(f"WARNING             : {o.round_warning}")
    if lgr and not accuracy_mode:
        sps, tps = lgr.get("result_samples_per_second"), lgr.get("result_tokens_per_second")
        if o.failed and sps and o.issued:
            duration = o.issued / sps
            lines.append(f"samples/s           : {o.completed / duration:,.2f} completed samples only "
                         f"(LoadGen: {sps:,.2f}, counting {o.failed} failed samples as done)")
            lines.append(f"tokens/s            : {o.output_tokens / duration:,.1f} from completed samples "
                         f"(LoadGen: {tps or 0:,.1f})")
        else:
            lines.append(f"samples/s           : {sps:,.2f}" if sps is not None else "samples/s           : n/a")
            lines.append(f"tokens/s            : {tps:,.1f}" if tps is not None else "tokens/s            : n/a")
        if lgr.get("target_qps") is not None and o.scenario in ("Server", "Interactive"):
            lines.append(f"target QPS          : {lgr['target_qps']:,.2f}")
    if o.scenario == "SingleStream" and o.mode == "PerformanceOnly":
        lines.append(f"latency p90         : {_ms(lgr.get('latency_p90_ns')):>14}   (the SingleStream result)")
        lines.append(f"early-stop est. p90 : {_ms(lgr.get('early_stopping_latency_ns')):>14}"
                     "   (LoadGen early_stopping_latency_ss)")
        lines.append(f"TTFT p90            : {_ms(lgr.get('ttft_p90_ns')):>14}")
        lines.append(f"TPOT p90            : {_ms(lgr.get('tpot_p90_ns')):>14}")
    elif o.scenario != "Offline" and o.mode == "PerformanceOnly":
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
    if o.token_stats:
        t = o.token_stats
        lines.append(f"inter-token latency : p50 {t['itl_p50_ms']:.3f} ms  p99 {t['itl_p99_ms']:.3f} ms   longest gap "
                     f"per request p50 {t['max_gap_p50_ms']:.3f} ms  p99 {t['max_gap_p99_ms']:.3f} ms "
                     f"({t['requests']} streamed requests, the last {t['window']} gaps)")
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
    if o.timed_out or o.duplicates_dropped or o.late_after_cancel:
        lines.append(f"timed out           : {o.timed_out}   duplicate responses dropped: {o.duplicates_dropped}"
                     + (f"   late after a cancel: {o.late_after_cancel}" if o.late_after_cancel else ""))
    if o.stalls_reported:
        lines.append(f"stall warnings      : {o.stalls_reported} (requests with no first token for --stall_warning_s)")
    groups = sorted(o.errors.items(), key=lambda kv: -kv[1])
    for shape, count in groups[:5]:
        lines.append(f"  failed x{count:<8}: {o.error_examples.get(shape, shape)}")
    if len(groups) > 5:
        lines.append(f"  ... {len(groups) - 5} more kinds of failure, {sum(c for _, c in groups[5:])} requests")
    if o.failed:
        lines.append("  every failure     : errors.txt (request id and cause)")
    sources: collections.Counter = collections.Counter()
    for st in o.core_stats:
        sources.update(st.get("token_sources") or {})
    if sources:
        lines.append("output tokens from  : " + ", ".join(f"{k} x {v}" for k, v in sources.most_common())
                     + "  (server token ids / usage counts / counted stream chunks; warmup included)")
    if o.api_dialect:
        from llmlib.cores.wire.dialects import summary_lines

        lines.extend(summary_lines(o.api_dialect))
    if len(o.core_stats) > 1:
        for st in o.core_stats:
            lines.append(f"  {st['core']:<16}: completed {st['completed']}, failed {st['failed']}, "
                         f"tokens {st['output_tokens']}")
    if o.run_error:
        lines.append(f"RUN FAILED          : {o.run_error}")
    elif o.interrupted:
        lines.append(f"RUN INTERRUPTED     : {o.failed} failed, {o.lost} lost")
    elif o.failed or o.lost:
        lines.append(f"RUN FAILED          : {o.failed} failed, {o.lost} lost")
    if o.failed:
        lines.append("note                : failed samples were completed in LoadGen with no output; "
                     "its latency figures include them")
    lines.extend(self_measurement_lines(o.self_measurement))
    for note in o.notes:
        lines.append(f"note                : {note}")
    lines.append(f"wall time           : {o.wall_s:.1f} s")
    lines.append(f"results             : {o.outdir}")
    return "\n".join(lines)


def token_stats(itl_ns, max_gap_ns) -> dict[str, Any]:
    """Inter-token latency (per token, between chunks) and each request's longest gap, in ms."""
    import numpy as np

    itl = np.asarray(itl_ns, dtype=np.float64) / 1e6
    gaps = np.asarray(max_gap_ns, dtype=np.float64) / 1e6 if len(max_gap_ns) else np.zeros(1)
    return {"itl_p50_ms": float(np.percentile(itl, 50)), "itl_p99_ms": float(np.percentile(itl, 99)),
            "max_gap_p50_ms": float(np.percentile(gaps, 50)), "max_gap_p99_ms": float(np.percentile(gaps, 99)),
            "requests": len(max_gap_ns), "window": len(itl_ns)}
