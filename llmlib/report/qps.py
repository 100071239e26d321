"""QPS calibration, auto target and peak search: Offline's expected QPS from a short probe, a Server /
Interactive target chosen from the capacity short bounded probes measure (--server_target_qps=auto), and
the highest target QPS the system sustains within its limits (bracketing, then bisection); each probe
a LoadGen test in its own process (LoadGen keeps process-wide state), every probe kept and plotted.

A probe passes when no request failed, LoadGen's latency constraints held (p99 TTFT/TPOT within the
limits) and the backlog (issued - finished) did not grow by more than `peak_tolerance` x the target QPS
per second: a short probe above capacity can still be VALID (its queue has no time to grow past the
limits), a full-length run would not be. The chosen values are written as a user.conf to keep.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmlib.errors import HarnessError

log = logging.getLogger(__name__)

#: Flags a probe sets itself (the user's other flags are passed on unchanged).
_PROBE_OWNED = ("--benchmarks", "--scenarios", "--results_dir", "--write_report", "--find_peak_qps",
                "--calibrate_offline_qps", "--server_target_qps", "--offline_expected_qps", "--min_duration_ms",
                "--min_query_count", "--max_query_count", "--max_duration_ms", "--quiet", "--test_mode",
                "--show_progress", "--launch_servers")
MAX_PROBES = 14
#: A probe whose backlog grows faster than this fraction of its issue rate per second did not keep up.
BACKLOG_GROWTH_LIMIT = 0.04
OFFLINE_MARGIN = 1.5  # expected QPS = probe throughput x this (LoadGen then issues enough for min duration)


class ProbeError(HarnessError):
    """A probe run did not produce a result the search can use."""


@dataclass
class Probe:
    target_qps: float
    passed: bool
    why: str
    achieved_qps: float | None
    ttft_p99_ms: float | None
    tpot_p99_ms: float | None
    backlog_growth: float | None  # backlog slope / target QPS
    folder: str
    failed: int = 0  # requests that failed (a timeout, a server error): its achieved rate is no capacity

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def launched_flags(config) -> dict[str, str]:
    """Values --launch_servers filled in (the servers' URLs): a probe uses the servers this process launched."""
    out = {"launch_servers": "false"}
    for row in config.report():
        if row["source"] == "--launch_servers" and row["value"] is not None and row["name"] != "launch_servers":
            value = row["value"]
            out[row["name"]] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out


def probe_argv(argv: Sequence[str], benchmark: str, scenario: str, results_dir: Path, **flags: Any) -> list[str]:
    """The command line of one probe: the user's flags without those the probe sets, then the probe's own."""
    own_names = {f"--{k}" for k in flags}
    keep = [a for a in argv if a.startswith("--") and a.partition("=")[0] not in _PROBE_OWNED
            and a.partition("=")[0] not in own_names]
    own = {"benchmarks": benchmark, "scenarios": scenario, "results_dir": str(results_dir), "write_report": "false",
           "find_peak_qps": "false", "calibrate_offline_qps": "never", "quiet": "true",
           "test_mode": "PerformanceOnly", **flags}
    return [sys.executable, "-m", "llmlib", *keep, *(f"--{k}={v}" for k, v in own.items())]


def run_probe(cmd: list[str], outdir: Path, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one probe process; its summary.json (with run_stats.json as `stats`). It runs in a folder of its
    own: LoadGen reads an audit.config from the working directory, and none may apply to a probe."""
    from llmlib.factory import repo_root

    workdir = outdir.parent
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)  # this checkout's llmlib, whatever the working directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root()), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s,
                          cwd=workdir, env=env)
    summary = outdir / "summary.json"
    if not summary.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise ProbeError(f"probe {' '.join(cmd[3:])} wrote no summary (exit code {proc.returncode}): {tail}")
    out = json.loads(summary.read_text())
    stats = outdir / "run_stats.json"
    out["stats"] = json.loads(stats.read_text()) if stats.is_file() else None
    return out


def backlog_growth(stats: dict[str, Any] | None) -> float | None:
    """Slope of the backlog (issued - finished, per time bin) over the issuing period (its first 10% left
    out), as a fraction of the rate LoadGen actually issued at: about 0 when the system keeps up,
    (rate - capacity) / rate above its capacity. Just below capacity a short probe still shows some
    growth (the queue has not reached its steady state), hence BACKLOG_GROWTH_LIMIT."""
    if not stats:
        return None
    tb = stats["time_bins"]
    issued = np.asarray(tb["issued"], dtype=np.float64)
    done = np.asarray(tb["completed"], dtype=np.float64) + np.asarray(tb["failed"], dtype=np.float64)
    if not issued.any():
        return None
    last = int(np.nonzero(issued)[0][-1])  # the last bin with issues is partial: left out
    first = int(np.nonzero(issued)[0][0])
    backlog = np.cumsum(issued - done)[first:last]
    if backlog.size < 8:
        return None
    rate = issued[first:last].sum() / (backlog.size * tb["width_s"])
    tail = backlog[max(backlog.size // 10, 1):]
    t = np.arange(tail.size) * tb["width_s"]
    slope = float(np.polyfit(t, tail, 1)[0])
    return slope / rate if rate else None


def growth_noise(stats: dict[str, Any] | None) -> float:
    """The backlog growth (as `backlog_growth` gives it) that Poisson arrivals alone can show in a probe:
    two standard deviations of its issued count, 2 sqrt(n) requests, over the n it issued (a probe of 21
    queries can seem to fall behind by 40%, one of 2,000 by 4%)."""
    n = float(sum((stats or {}).get("time_bins", {}).get("issued", [])))
    return 2 / math.sqrt(n) if n > 0 else math.inf


def judge_probe(summary: dict[str, Any], target_qps: float, *, noise_floor: bool = False) -> Probe:
    """Pass or fail, and why. With `noise_floor` (the auto target's short, low-count probes) a backlog grows
    only beyond what arrival noise explains (`growth_noise`)."""
    lg = summary.get("loadgen") or {}
    growth = backlog_growth(summary.get("stats"))
    limit = max(BACKLOG_GROWTH_LIMIT, growth_noise(summary.get("stats"))) if noise_floor else BACKLOG_GROWTH_LIMIT
    why = []
    if not summary.get("ok"):
        why.append(f"{summary.get('failed')} failed" if summary.get("failed") else
                   (summary.get("run_error") or "the run failed"))
    if lg.get("perf_constraints_met") is False:
        why.append("latency constraints not met")
    if growth is None:
        why.append("too short to tell whether it kept up")
    elif growth > limit:
        why.append(f"backlog grew by {growth:.1%} of the issue rate per second")
    ttft, tpot = lg.get("ttft_p99_ns"), lg.get("tpot_p99_ns")
    return Probe(target_qps=target_qps, passed=not why, why="; ".join(why) or "kept up within the limits",
                 achieved_qps=(summary.get("stats") or {}).get("achieved_samples_per_s"),
                 ttft_p99_ms=ttft / 1e6 if ttft else None, tpot_p99_ms=tpot / 1e6 if tpot else None,
                 backlog_growth=growth, folder=summary.get("outdir", ""), failed=int(summary.get("failed") or 0))


def search_peak(probe: Callable[[float], Probe], start_qps: float, *, tolerance: float,
                max_probes: int = MAX_PROBES, out_of_time: Callable[[], bool] | None = None,
                growth: float = 4.0) -> tuple[float | None, list[Probe]]:
    """Bracket (x `growth` up from a pass, /4 down from a fail), then bisect (geometric) until
    hi / lo <= 1 + tolerance.
    A failed probe's achieved rate (its capacity while backlogged) is tried first, just below and just above;
    from a pass far below the lowest failure the next probes gallop up (steps of 2, 4, 8... x tolerance).
    No probe starts once `out_of_time()` says so (the first always runs).
    Returns (the highest passing QPS or None, every probe)."""
    probes: list[Probe] = []
    lo: float | None = None
    hi: float | None = None
    guesses: list[float] = []

    def run(q: float) -> Probe:
        p = probe(q)
        probes.append(p)
        log.warning("peak search probe %d: %.3f QPS -> %s (%s)", len(probes), q, "pass" if p.passed else "fail",
                    p.why)
        return p

    q = start_qps
    step = tolerance
    while len(probes) < max_probes and not (probes and out_of_time and out_of_time()):
        p = run(q)
        if p.passed:
            lo = q if lo is None else max(lo, q)
        else:
            hi = q if hi is None else min(hi, q)
            if p.achieved_qps and p.achieved_qps < q:
                guesses = [p.achieved_qps * (1 - tolerance / 2), p.achieved_qps * (1 + tolerance)]
        if lo is not None and hi is not None and hi / lo <= 1 + tolerance:
            break
        if hi is None:
            q = q * growth
            continue
        if lo is None:
            guesses = [g for g in guesses if g < hi]
            q = guesses.pop(0) if guesses else q / 4
            if q < 1e-3:
                break
            continue
        guesses = [g for g in guesses if lo * (1 + tolerance / 4) < g < hi / (1 + tolerance / 4)]
        if guesses:
            q = guesses.pop(0)
        elif p.passed and hi / lo > 1.25:  # a pass far below the failure: gallop up from it
            step *= 2
            q = min(lo * (1 + step), math.sqrt(lo * hi))
        else:
            q = math.sqrt(lo * hi)
    return lo, probes


# --- user.conf -----------------------------------------------------------------------------------------
def conf_value(conf: Path, model: str, lg_scenario: str, key: str) -> str | None:
    """The value a LoadGen user.conf gives `key` for model.scenario (an exact line wins over a * wildcard,
    the last line over earlier ones, as LoadGen reads it), or None. Read here, not through LoadGen: a
    process that loads a user.conf twice gets LoadGen's "Multiple conf files" error in its log."""
    if not conf.is_file():
        return None
    pattern = re.compile(rf"^\s*(\*|{re.escape(model)})\.(\*|{re.escape(lg_scenario)})\.{re.escape(key)}\s*=\s*(\S+)")
    best: tuple[int, str] | None = None
    for line in conf.read_text().splitlines():
        m = pattern.match(line.split("#", 1)[0])
        if m:
            rank = (m.group(1) != "*") + (m.group(2) != "*")
            if best is None or rank >= best[0]:
                best = (rank, m.group(3))
    return best[1] if best else None


def conf_sets(conf: Path, model: str, lg_scenario: str, key: str) -> bool:
    """Whether a LoadGen user.conf sets `key` for model.scenario (or with a * wildcard)."""
    return conf_value(conf, model, lg_scenario, key) is not None


def write_user_conf(path: Path, lines: dict[str, float], comment: str, base: Path | None = None) -> Path:
    """The user.conf the run used: `base` (the user.conf it was given) then the chosen values, which LoadGen
    applies last (a later line wins), so the file alone reproduces the run's settings."""
    text = [f"# {line}" for line in comment.splitlines()]
    if base is not None and base.is_file():
        text += [f"# --- {base} ---", base.read_text().rstrip("\n"), "# --- chosen by the harness ---"]
    text += [f"{k} = {v:.6g}" for k, v in lines.items()]
    path.write_text("\n".join(text) + "\n")
    return path


# --- what the CLI calls before a run ----------------------------------------------------------------------------
def prepare(config, benchmark, scenario_name: str, argv: Sequence[str]):
    """Calibrate Offline's expected QPS, choose an auto Server/Interactive target or search the peak QPS
    when asked; returns the config the full-length run uses (with the chosen value) and lines for the
    summary."""
    from llmlib.harness import import_loadgen, results_dir_for, user_conf_path

    scenario = benchmark.scenario(scenario_name)
    outdir = results_dir_for(config, benchmark.name, scenario.name)
    notes: list[str] = []
    if config.offline_expected_qps == "auto" and scenario.loadgen_scenario != "Offline":
        config = config.with_values(source=f"{config.source('offline_expected_qps')} (auto: Offline only)",
                                    offline_expected_qps=None)
    if config.server_target_qps == "auto" and scenario.loadgen_scenario != "Server":
        config = config.with_values(source=f"{config.source('server_target_qps')} (auto: Server only)",
                                    server_target_qps=None)
    performance = config.test_mode == "PerformanceOnly" and not getattr(config, "audit_test", "")
    if config.server_target_qps == "auto" and not (performance and config.find_peak_qps):
        config, notes = _auto_target(config, benchmark, scenario, argv, outdir, performance)
    if not performance:
        if config.offline_expected_qps == "auto":
            raise ProbeError("--offline_expected_qps=auto calibrates a performance run only; give a number "
                             "for a compliance or accuracy run")
        return config, notes  # a compliance run keeps the settings of the run it audits
    if scenario.loadgen_scenario == "Offline":
        mode = config.calibrate_offline_qps
        if config.offline_expected_qps == "auto":
            mode = "always"
            config = config.with_values(source=config.source("offline_expected_qps"), offline_expected_qps=None)
        user_set = config.offline_expected_qps is not None or conf_sets(
            user_conf_path(config), scenario.loadgen_model, "Offline", "target_qps")
        if mode == "never" or (mode == "auto" and user_set):
            return config, []
        return _calibrate_offline(config, benchmark, scenario, argv, outdir)
    if scenario.loadgen_scenario == "Server" and config.find_peak_qps:
        import_loadgen()  # fails early, in one line, without it
        start = config.server_target_qps
        if start is None or start == "auto":  # the peak search replaces an auto target
            value = conf_value(user_conf_path(config), scenario.loadgen_model, "Server", "target_qps")
            fallback = AUTO_START_QPS if start == "auto" else 1.0
            try:
                start = float(value) if value is not None else fallback
            except ValueError:
                start = fallback
        return _find_peak(config, benchmark, scenario, argv, outdir, max(start, 1e-3))
    return config, notes


# --- --server_target_qps=auto --------------------------------------------------------------------------
#: The first probe's rate, and the step up from a pass: x2, not the peak search's x4 (a probe far above
#: capacity drains for long, and a server swamped that far may time requests out).
AUTO_START_QPS = 4.0
AUTO_GROWTH = 2.0
#: The bracket an auto search stops at: coarse, the target is a fraction of it anyway.
AUTO_TOLERANCE = 0.25
AUTO_MIN_QUERIES = 16  # per probe: the backlog slope and the p99s need a few arrivals
AUTO_PROBE_MS = (2000, 10000)  # probe length bounds; between them, a sixth of the budget


def auto_given(config) -> bool:
    """Whether the user asked for auto (flag, code, environment) rather than a benchmark's default."""
    source = config.source("server_target_qps")
    return source in ("command line", "explicit") or source.startswith("env")


def auto_probe_ms(budget_s: float) -> int:
    return int(min(max(budget_s * 1000 / 6, AUTO_PROBE_MS[0]), AUTO_PROBE_MS[1]))


def sustained_qps(peak_qps: float, probes: Sequence[Probe]) -> float:
    """The QPS the backend sustains: the highest probe that kept up, or less where a probe that fell behind
    completed fewer samples per second than that (its capacity while saturated: on a shared machine the
    capacity moves, and the lowest seen is the one a long run meets). A probe whose requests failed (timed
    out far above capacity) measured no capacity."""
    saturated = [p.achieved_qps for p in probes
                 if not p.passed and not p.failed and p.achieved_qps and p.achieved_qps < p.target_qps]
    return min([peak_qps, *saturated])


def auto_target_qps(sustained: float, fraction: float) -> float:
    """The target an auto run uses: `fraction` of the QPS the backend sustained within the limits."""
    if not (sustained > 0 and 0 < fraction <= 1):
        raise ValueError(f"sustained {sustained!r} and fraction {fraction!r}: expected > 0 and in (0, 1]")
    return sustained * fraction


def auto_choice(*, given: bool, performance: bool, user_conf_qps: str | None,
                performance_run_qps: str | None) -> tuple[str, float | None]:
    """Where an auto target comes from: ("user.conf", None) when the auto is a benchmark's default and
    the user.conf sets a target for it (a measured target wins over a default auto; LoadGen reads the
    line); ("performance run", qps) for a compliance or accuracy run whose performance run chose one
    (it keeps that run's settings); else ("measure", None)."""
    if not given and user_conf_qps is not None:
        return "user.conf", None
    if not performance and performance_run_qps is not None:
        try:
            qps = float(performance_run_qps)
        except ValueError:
            qps = 0.0
        if qps > 0:
            return "performance run", qps
    return "measure", None


def _auto_target(config, benchmark, scenario, argv, outdir: Path, performance: bool):
    """--server_target_qps=auto (given, or a benchmark's default): see `auto_choice`; measured by short
    probes (the peak search's, bounded by --auto_qps_budget_s and coarse), the target is
    --auto_qps_fraction of the QPS the backend sustained."""
    from llmlib.harness import results_dir_for, user_conf_path

    model = scenario.loadgen_model
    conf = user_conf_path(config)
    perf_conf = results_dir_for(config.with_values(test_mode="PerformanceOnly", audit_test=""),
                                benchmark.name, scenario.name) / "user.conf"
    user_value = conf_value(conf, model, "Server", "target_qps")
    where, qps = auto_choice(given=auto_given(config), performance=performance, user_conf_qps=user_value,
                             performance_run_qps=None if performance else conf_value(perf_conf, model, "Server",
                                                                                      "target_qps"))
    source = config.source("server_target_qps")
    if where == "user.conf":
        return (config.with_values(source=f"{source} (auto), yields to {conf.name}", server_target_qps=None),
                [f"target QPS {user_value} from {conf} (the benchmark's default auto yields to a measured target)"])
    if where == "performance run":
        return (config.with_values(source=f"auto: as the performance run chose ({perf_conf})", server_target_qps=qps),
                [f"target QPS {qps:.4g}: auto, the value the performance run chose ({perf_conf})"])
    return _measure_auto(config, benchmark, scenario, argv, outdir)


def _measure_auto(config, benchmark, scenario, argv, outdir: Path):
    import time

    from llmlib.harness import import_loadgen, results_dir_for, user_conf_path
    from llmlib.report.plots import plot_probes

    import_loadgen()  # fails early, in one line, without it
    budget_s, fraction = config.auto_qps_budget_s, config.auto_qps_fraction
    probe_ms = auto_probe_ms(budget_s)
    probe_dir = outdir / "calibration"
    shutil.rmtree(probe_dir, ignore_errors=True)
    counter = [0]
    limits = ", ".join(f"{k} p99 <= {v:g} ms" for k, v in (("TTFT", scenario.ttft_ms), ("TPOT", scenario.tpot_ms))
                       if v is not None) or "no latency limits"
    log.warning("--server_target_qps=auto: measuring the QPS %s sustains for %s %s (%s) with probes of %g s, "
                "for at most %g s", config.core_type, benchmark.name, scenario.name, limits, probe_ms / 1000,
                budget_s)
    t0 = time.monotonic()

    def probe(q: float) -> Probe:
        counter[0] += 1
        results = probe_dir / f"probe_{counter[0]:02d}_{q:.4g}qps"
        cmd = probe_argv(argv, benchmark.name, scenario.name, results, server_target_qps=f"{q:.6g}",
                         min_duration_ms=probe_ms, min_query_count=max(AUTO_MIN_QUERIES, int(q * probe_ms / 1000)),
                         **launched_flags(config))
        out = results_dir_for(config.with_values(results_dir=str(results)), benchmark.name, scenario.name)
        try:
            summary = run_probe(cmd, out, timeout_s=max(4 * budget_s, 120.0))
        except subprocess.TimeoutExpired as err:
            raise ProbeError(f"--server_target_qps=auto: the probe at {q:.4g} QPS ran past {err.timeout:g} s; "
                             f"see {results}") from err
        return judge_probe(summary, q, noise_floor=True)

    peak, probes = search_peak(probe, AUTO_START_QPS, tolerance=AUTO_TOLERANCE, growth=AUTO_GROWTH,
                               out_of_time=lambda: time.monotonic() - t0 >= budget_s)
    elapsed = time.monotonic() - t0
    outdir.mkdir(parents=True, exist_ok=True)
    record = {"target_qps": None, "peak_qps": peak, "fraction": fraction, "budget_s": budget_s,
              "elapsed_s": round(elapsed, 1), "probe_ms": probe_ms, "tolerance": AUTO_TOLERANCE,
              "probes": [p.to_json() for p in probes]}
    plot = outdir / "auto_qps.png"
    if peak is None:
        (outdir / "auto_qps.json").write_text(json.dumps(record, indent=1) + "\n")
        plot_probes(record["probes"], plot, marks=[], ttft_limit_ms=scenario.ttft_ms)
        raise ProbeError(f"--server_target_qps=auto: no probe kept up within the limits in {elapsed:.0f} s, down to "
                         f"{min(p.target_qps for p in probes):.4g} QPS ({probes[-1].why}); give --server_target_qps "
                         f"or a user.conf target; see {probe_dir}")
    sustained = sustained_qps(peak, probes)
    target = auto_target_qps(sustained, fraction)
    record.update(target_qps=target, sustained_qps=sustained)
    (outdir / "auto_qps.json").write_text(json.dumps(record, indent=1) + "\n")
    marks = [(f"kept up {peak:,.3g} QPS", peak, "tab:green")]
    if sustained < peak:
        marks.append((f"sustained {sustained:,.3g} QPS", sustained, "tab:orange"))
    plot_probes(record["probes"], plot, marks=[*marks, (f"target {target:,.3g} QPS ({fraction:.0%})", target, "tab:blue")],
                ttft_limit_ms=scenario.ttft_ms)
    measured = (f"the highest of {len(probes)} probes of {probe_ms / 1000:g} s that kept up, {limits}"
                if sustained == peak else
                f"{len(probes)} probes of {probe_ms / 1000:g} s: {peak:.4g} QPS kept up ({limits}), one that fell "
                f"behind completed only {sustained:.4g}/s")
    how = f"auto, {fraction:.0%} of {sustained:.4g} QPS measured in {elapsed:.0f} s ({measured})"
    conf = write_user_conf(outdir / "user.conf", {f"{scenario.loadgen_model}.Server.target_qps": target},
                           f"Written by the harness: target QPS {target:.4g}: {how}.\n"
                           "Keep it by copying it into your user.conf.", base=user_conf_path(config))
    line = f"target QPS {target:.4g}: {how}; kept in {conf}"
    log.warning("%s", line)
    return (config.with_values(source=f"auto: {fraction:.0%} of {sustained:.4g} QPS measured", server_target_qps=target),
            [line])


def _calibrate_offline(config, benchmark, scenario, argv, outdir: Path):
    probe_dir = outdir / "calibration"
    shutil.rmtree(probe_dir, ignore_errors=True)
    from llmlib.harness import results_dir_for, user_conf_path

    samples = min(benchmark.performance_sample_count, config.performance_sample_count or 10**9, 1024)
    probe_results = probe_dir / "probe"
    cmd = probe_argv(argv, benchmark.name, scenario.name, probe_results, offline_expected_qps=1,
                     min_duration_ms=0, min_query_count=samples, **launched_flags(config))
    probe_out = results_dir_for(config.with_values(results_dir=str(probe_results)), benchmark.name, scenario.name)
    log.warning("calibrating Offline's expected QPS with a probe of %d samples (no --offline_expected_qps, no "
                "user.conf line for %s)", samples, scenario.loadgen_model)
    summary = run_probe(cmd, probe_out)
    rate = (summary.get("loadgen") or {}).get("result_samples_per_second")
    if not summary.get("ok") or not rate:
        raise ProbeError(f"the Offline calibration probe failed ({summary.get('verdict')}): "
                         f"{summary.get('run_error') or 'no throughput'}; set --offline_expected_qps")
    qps = rate * OFFLINE_MARGIN
    outdir.mkdir(parents=True, exist_ok=True)
    conf = write_user_conf(outdir / "user.conf", {f"{scenario.loadgen_model}.Offline.target_qps": qps},
                           f"Written by the harness: Offline expected QPS = {rate:.4g} samples/s measured by a "
                           f"{samples}-sample probe x {OFFLINE_MARGIN}.\nKeep it by copying it into your user.conf.",
                           base=user_conf_path(config))
    line = (f"expected QPS {qps:,.2f} calibrated: probe of {samples} samples ran {rate:,.2f} samples/s "
            f"(x {OFFLINE_MARGIN}); kept in {conf}")
    return config.with_values(source="calibrated by a probe run", offline_expected_qps=qps), [line]


def _find_peak(config, benchmark, scenario, argv, outdir: Path, start_qps: float):
    from llmlib.harness import results_dir_for, user_conf_path
    from llmlib.report.plots import plot_probes

    search_dir = outdir / "peak_search"
    shutil.rmtree(search_dir, ignore_errors=True)
    counter = [0]
    duration_s = config.peak_probe_ms / 1000

    def probe(q: float) -> Probe:
        counter[0] += 1
        results = search_dir / f"probe_{counter[0]:02d}_{q:.4g}qps"
        cmd = probe_argv(argv, benchmark.name, scenario.name, results, server_target_qps=f"{q:.6g}",
                         min_duration_ms=config.peak_probe_ms, min_query_count=max(64, int(q * duration_s)),
                         **launched_flags(config))
        out = results_dir_for(config.with_values(results_dir=str(results)), benchmark.name, scenario.name)
        return judge_probe(run_probe(cmd, out), q)

    peak, probes = search_peak(probe, start_qps, tolerance=config.peak_tolerance)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "peak_search.json").write_text(json.dumps(
        {"peak_qps": peak, "tolerance": config.peak_tolerance, "probe_ms": config.peak_probe_ms,
         "probes": [p.to_json() for p in probes]}, indent=1) + "\n")
    plot_probes([p.to_json() for p in probes], outdir / "peak_search.png",
                marks=[(f"peak {peak:,.2f} QPS", peak, "tab:green")] if peak is not None else [],
                ttft_limit_ms=scenario.ttft_ms)
    if peak is None:
        raise ProbeError(f"peak search: no probe kept up, down to {min(p.target_qps for p in probes):.4g} QPS "
                         f"({probes[-1].why}); see {search_dir}")
    conf = write_user_conf(outdir / "user.conf", {f"{scenario.loadgen_model}.Server.target_qps": peak},
                           f"Written by the harness: the peak target QPS found by {len(probes)} probes of "
                           f"{duration_s:g} s (tolerance {config.peak_tolerance:.0%}).\n"
                           "Keep it by copying it into your user.conf.", base=user_conf_path(config))
    line = (f"peak QPS {peak:,.3f} found by {len(probes)} probes of {duration_s:g} s "
            f"(bracket within {config.peak_tolerance:.0%}); this full-length run confirms it; kept in {conf}")
    return config.with_values(source="found by --find_peak_qps", server_target_qps=peak), [line]
