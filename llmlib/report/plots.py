"""The run report's plots (matplotlib, Agg backend, PNG): latency CDFs with the limits, throughput over
time, per-core load and completions, errors over time, schedule delay; and overlaid CDFs for compare.

Every plot function writes one PNG and returns its path; without data it still writes a figure that says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmlib.report.recorder import LogHistogram
from llmlib.report.run_data import RunData

PLOT_NAMES = ("latency_cdf.png", "throughput.png", "cores.png", "errors.png", "schedule_delay.png")
_DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def cdf_series(run: RunData, what: str) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(label, values ms, cumulative fraction, style) of `what` (ttft, tpot, latency) from every source the
    folder has: LoadGen's trace (per sample), the harness's histograms, LoadGen's logged percentiles."""
    out = []
    tr = run.trace
    if tr is not None and len(tr):
        vals = tr.latency_ns if what == "latency" else tr.ttft_ns if what == "ttft" else None
        if vals is not None:
            vals = np.asarray(vals, dtype=np.float64)
            vals = np.sort(vals[np.isfinite(vals)])
            if vals.size:
                out.append(("LoadGen trace (from scheduled time)", vals / 1e6, np.arange(1, vals.size + 1) / vals.size,
                            "-"))
    if run.stats:
        h = LogHistogram.from_json(run.stats["histograms"][what])
        xs, ys = h.cdf()
        if xs.size:
            out.append(("harness (from issue)", xs / 1e6, ys, "--"))
    pct = run.percentiles_ns(what)
    if pct:
        qs = sorted(pct)
        out.append(("LoadGen percentiles (detail log)", np.array([pct[q] for q in qs]) / 1e6, np.array(qs), "o"))
    return out


def plot_latency_cdfs(run: RunData, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ttft_limit, tpot_limit = run.limits_ms()
    for ax, what, title, limit in ((axes[0], "ttft", "TTFT", ttft_limit), (axes[1], "tpot", "TPOT", tpot_limit),
                                   (axes[2], "latency", "end-to-end latency", None)):
        series = cdf_series(run, what)
        if not series:
            _empty(ax, f"no {title} data\n(Offline runs report no token latencies)" if run.scenario == "Offline"
                   else f"no {title} data in this folder")
            ax.set_title(title)
            continue
        for label, xs, ys, style in series:
            if style == "o":
                ax.plot(xs, ys, "o", label=label, markersize=4)
            else:
                ax.step(xs, ys, style, where="post", label=label)
        if limit is not None:
            ax.axvline(limit, color="red", linestyle=":", label=f"limit {limit:,.0f} ms")
        ax.axhline(0.99, color="0.6", linewidth=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples")
        ax.set_title(f"{title} CDF")
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


PLOT_BINS = 80  # time bins are merged for plotting until at most this many remain


def _bins(run: RunData):
    """(bin width s, bin start times, the run's time bins merged to at most PLOT_BINS) or Nones."""
    if run.stats and run.stats.get("time_bins", {}).get("issued"):
        tb = dict(run.stats["time_bins"])
        k = max(1, -(-len(tb["issued"]) // PLOT_BINS))
        if k > 1:
            def merge(values):
                a = np.asarray(values, dtype=np.float64)
                pad = (-a.shape[-1]) % k
                a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])
                return a.reshape(*a.shape[:-1], -1, k).sum(axis=-1)
            for key in ("issued", "completed", "failed", "tokens", "core_completed", "core_busy_s"):
                tb[key] = merge(tb[key])
            tb["width_s"] = tb["width_s"] * k
        width = tb["width_s"]
        n = len(tb["issued"])
        return width, np.arange(n) * width, tb
    return None, None, None


def plot_throughput(run: RunData, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width, t, tb = _bins(run)
    if tb is not None:
        ax.step(t, np.asarray(tb["tokens"]) / width, where="post", label="output tokens/s (harness)")
        ax.set_ylabel("tokens/s")
        ax2 = ax.twinx()
        ax2.step(t, np.asarray(tb["completed"]) / width, where="post", color="tab:orange",
                 label="samples/s completed")
        if run.scenario == "Offline":  # one query: every sample is issued at the start
            ax2.plot([], [], " ", label=f"({int(np.sum(tb['issued']))} samples issued at once)")
        else:
            ax2.step(t, np.asarray(tb["issued"]) / width, where="post", color="tab:green", alpha=0.6,
                     label="samples/s issued")
        ax2.set_ylabel("samples/s")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="lower center")
        ax.set_xlabel(f"s since the timed run began ({width:g} s bins)")
    elif run.trace is not None and len(run.trace):
        done_s = run.trace.scheduled_s + run.trace.latency_ns / 1e9
        width = max(float(done_s.max()) / 100, 0.05)
        counts, edges = np.histogram(done_s, bins=np.arange(0, done_s.max() + width, width))
        ax.step(edges[:-1], counts / width, where="post", label="samples/s completed (LoadGen trace)")
        ax.set_ylabel("samples/s")
        ax.set_xlabel("s since LoadGen's start")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no per-sample timing in this folder (no run_stats.json, no mlperf_log_trace.json)")
    ax.set_title("throughput over time")
    return _save(fig, path)


def plot_cores(run: RunData, path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
    width, t, tb = _bins(run)
    if tb is not None:
        completed = np.asarray(tb["core_completed"], dtype=np.float64)
        busy = np.asarray(tb["core_busy_s"], dtype=np.float64)
        names = [st.get("core", f"core {i}") for i, st in enumerate((run.summary or {}).get("core_stats") or ())]
        for i in range(completed.shape[0]):
            label = names[i] if i < len(names) else f"core {i}"
            ax1.step(t, completed[i] / width, where="post", label=label)
            ax2.step(t, busy[i] / width, where="post", label=label)
        ax1.set_title("completions per core (samples/s)")
        ax2.set_title("load per core (mean requests in flight)")
        for ax in (ax1, ax2):
            ax.set_xlabel("s")
            if completed.shape[0] <= 12:
                ax.legend(fontsize=7)
    else:
        _empty(ax1, "no per-core data (written by the harness only)")
        _empty(ax2, "no per-core data (written by the harness only)")
    return _save(fig, path)


def plot_errors(run: RunData, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.0))
    width, t, tb = _bins(run)
    failed_total = (run.summary or {}).get("failed")
    if tb is not None:
        failed = np.asarray(tb["failed"])
        ax.step(t, failed / width, where="post", color="tab:red",
                label=f"failed samples/s ({int(failed.sum())} in all)")
        ax.set_ylim(bottom=0, top=max(1.0, float((failed / width).max()) * 1.2))
        ax.set_xlabel("s")
        ax.legend(fontsize=7)
    else:
        errs = run.loadgen.get("num_errors")
        _empty(ax, f"no per-sample errors in this folder; LoadGen num_errors={errs}, "
                   f"harness failed={failed_total}")
    ax.set_title("errors over time")
    return _save(fig, path)


def plot_schedule_delay(run: RunData, path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
    tr = run.trace
    if tr is not None and len(tr):
        delay_ms = tr.issue_delay_ns / 1e6
        ax1.plot(tr.scheduled_s, delay_ms, ".", markersize=2)
        ax1.set_xlabel("scheduled time (s)")
        ax1.set_ylabel("actual issue - scheduled (ms)")
        ax1.set_title("schedule delay over the run")
        xs = np.sort(delay_ms)
        ax2.step(np.maximum(xs, 1e-4), np.arange(1, xs.size + 1) / xs.size, where="post")
        ax2.set_xscale("log")
        ax2.set_xlabel("ms")
        ax2.set_title(f"schedule delay CDF (p99 {np.percentile(xs, 99):.3f} ms, max {xs.max():.3f} ms)")
    else:
        for ax in (ax1, ax2):
            _empty(ax, "no LoadGen trace (mlperf_log_trace.json) in this folder: the schedule delay is unknown")
    return _save(fig, path)


def write_run_plots(run: RunData, outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    return [plot_latency_cdfs(run, outdir / "latency_cdf.png"), plot_throughput(run, outdir / "throughput.png"),
            plot_cores(run, outdir / "cores.png"), plot_errors(run, outdir / "errors.png"),
            plot_schedule_delay(run, outdir / "schedule_delay.png")]


def plot_overlaid_cdfs(a: RunData, b: RunData, path: Path, labels: tuple[str, str] = ("A", "B")) -> Path:
    """TTFT, TPOT and end-to-end CDFs of two runs on the same axes (best source of each)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, what, title in zip(axes, ("ttft", "tpot", "latency"), ("TTFT", "TPOT", "end-to-end latency")):
        drawn = False
        for run, label, color in ((a, labels[0], "tab:blue"), (b, labels[1], "tab:orange")):
            series = cdf_series(run, what)
            if not series:
                continue
            name, xs, ys, style = series[0]
            if style == "o":
                ax.plot(xs, ys, "o-", color=color, label=f"{label}: {name}", markersize=4)
            else:
                ax.step(xs, ys, "-", where="post", color=color, label=f"{label}: {name}")
            drawn = True
        if not drawn:
            _empty(ax, f"no {title} data in either run")
        else:
            ax.set_xscale("log")
            ax.set_xlabel("ms")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{title} CDF")
    return _save(fig, path)


def plot_probes(probes: list[dict], path: Path, *, marks: Sequence[tuple[str, float, str]],
                ttft_limit_ms: float | None) -> Path:
    """Every probe of a peak search or of an auto target: achieved throughput and p99 TTFT against the target
    QPS; `marks` are vertical lines (label, QPS, colour): the peak found, the target chosen."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    if not probes:
        _empty(ax1, "no probes")
        _empty(ax2, "no probes")
        return _save(fig, path)
    order = sorted(probes, key=lambda p: p["target_qps"])
    q = np.array([p["target_qps"] for p in order])
    ok = np.array([bool(p["passed"]) for p in order])
    ach = np.array([p.get("achieved_qps") or np.nan for p in order], dtype=np.float64)
    ttft = np.array([p.get("ttft_p99_ms") or np.nan for p in order], dtype=np.float64)
    ax1.plot(q, q, ":", color="0.6", label="achieved = target")
    ax1.plot(q, ach, "-", color="0.5")
    ax1.plot(q[ok], ach[ok], "o", color="tab:green", label="kept up")
    ax1.plot(q[~ok], ach[~ok], "x", color="tab:red", label="did not")
    ax2.plot(q, ttft, "-", color="0.5")
    ax2.plot(q[ok], ttft[ok], "o", color="tab:green")
    ax2.plot(q[~ok], ttft[~ok], "x", color="tab:red")
    if ttft_limit_ms is not None:
        ax2.axhline(ttft_limit_ms, color="red", linestyle=":", label=f"TTFT limit {ttft_limit_ms:,.0f} ms")
    for label, qps, color in marks:
        for ax in (ax1, ax2):
            ax.axvline(qps, color=color, linestyle="--", label=label)
    ax1.set_xlabel("target QPS")
    ax1.set_ylabel("achieved samples/s")
    ax1.set_title("throughput against load (every probe)")
    ax2.set_xlabel("target QPS")
    ax2.set_ylabel("p99 TTFT (ms)")
    ax2.set_yscale("log")
    ax2.set_title("latency against load")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _save(fig, path)
