"""The self-contained report pages: report.html per run folder (plots embedded as data URIs, so it opens
offline from anywhere) and index.html with one pandas table of every run under a results folder.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import pandas as pd

from llmlib.report.plots import write_run_plots
from llmlib.report.run_data import RunData, find_runs, load_run

REPORT_NAME = "report.html"
INDEX_NAME = "index.html"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
.VALID, .COMPLETE { background: #d4f4d4; } .INVALID, .FAILED, .INTERRUPTED { background: #f8d0d0; }
.verdict { font-size: 1.4em; padding: 4px 12px; display: inline-block; border-radius: 4px; }
.warn { color: #a00; } img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _rows(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def _ms(ns: Any) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:,.2f} ms"


def headline_rows(run: RunData) -> list[tuple[str, Any]]:
    lg = run.loadgen
    rows: list[tuple[str, Any]] = [("LoadGen computed", lg.get("validity") or "no result")]
    for reason in lg.get("invalid_reasons") or ():
        rows.append(("reason", reason))
    s = run.summary or {}
    sps = s.get("completed_samples_per_second") if s.get("failed") else None
    rows.append(("samples/s", f"{sps or lg.get('result_samples_per_second') or 0:,.2f}"))
    tps = s.get("completed_tokens_per_second") if s.get("failed") else None
    if lg.get("result_tokens_per_second") is not None or tps is not None:
        rows.append(("tokens/s", f"{tps or lg.get('result_tokens_per_second') or 0:,.1f}"))
    if run.scenario != "Offline":
        rows += [("TTFT p99", _ms(lg.get("ttft_p99_ns"))), ("TPOT p99", _ms(lg.get("tpot_p99_ns")))]
    rows.append(("latency p99", _ms(lg.get("latency_p99_ns"))))
    if s:
        rows.append(("samples", f"issued {s.get('issued')} = completed {s.get('completed')} "
                                f"+ failed {s.get('failed')}"))
    rows.append(("output tokens counted as", run.token_counting()))
    return rows


def self_measurement_rows(run: RunData) -> list[tuple[str, Any]]:
    m = (run.summary or {}).get("self_measurement")
    if not m:
        if run.trace is not None and len(run.trace):
            sd = run.trace.schedule_delay()
            return [("schedule delay",
                     f"p50 {sd['p50_ms']:.3f} ms, p99 {sd['p99_ms']:.3f} ms, max {sd['max_ms']:.3f} ms")]
        return [("self-measurement", "not recorded (these logs were not written by this harness)")]
    from llmlib.harness import self_measurement_lines

    rows = []
    for line in self_measurement_lines(m):
        k, _, v = line.partition(":")
        rows.append((k.strip(), v.strip()))
    return rows


def write_run_report(folder: str | Path) -> Path:
    """Plots and report.html in a run folder, from the folder alone."""
    run = load_run(folder)
    plots = write_run_plots(run, run.folder)
    verdict = run.verdict
    s = run.summary or {}
    title = f"{run.benchmark} | {run.scenario} | {run.mode}"
    if s.get("core_type"):
        title += f" | core={s['core_type']}"
    warn = "".join(f'<p class="warn">{html.escape(w)}</p>'
                   for w in ((s.get("self_measurement") or {}).get("warnings") or ()))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in (s.get("notes") or ()))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="verdict {html.escape(verdict)}">{html.escape(verdict)}</div>',
        "<h2>Result</h2>", _rows(headline_rows(run)),
        "<h2>Configuration</h2>", _rows(run.config_that_matters()),
        "<h2>The harness's own cost</h2>", _rows(self_measurement_rows(run)), warn,
        f"<ul>{notes}</ul>" if notes else "",
        "<h2>Latency distributions</h2>", _img(plots[0]),
        "<h2>Throughput over time</h2>", _img(plots[1]),
        "<h2>Per-core load and completions</h2>", _img(plots[2]),
        "<h2>Errors over time</h2>", _img(plots[3]),
        "<h2>Schedule delay (LoadGen's actual issue time against its schedule)</h2>", _img(plots[4]),
    ]
    for name, heading in (("auto_qps.png", "Auto target QPS: the probes that chose it"),
                          ("peak_search.png", "Peak QPS search (every probe)")):
        if (run.folder / name).is_file():
            body += [f"<h2>{heading}</h2>", _img(run.folder / name)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    out = run.folder / REPORT_NAME
    out.write_text(page, encoding="utf-8")
    return out


def runs_table(root: Path, runs: list[RunData], *, links: bool = True) -> pd.DataFrame:
    rows = []
    for run in runs:
        lg = run.loadgen
        rel = os.path.relpath(run.folder, root)
        row = {
            "benchmark": run.benchmark, "scenario": run.scenario, "mode": run.mode,
            "core": (run.summary or {}).get("core_type", ""), "verdict": run.verdict,
            "samples/s": lg.get("result_samples_per_second"), "tokens/s": lg.get("result_tokens_per_second"),
            "target QPS": lg.get("target_qps"),
            "TTFT p99 ms": (lg.get("ttft_p99_ns") or 0) / 1e6 or None if run.scenario != "Offline" else None,
            "TPOT p99 ms": (lg.get("tpot_p99_ns") or 0) / 1e6 or None if run.scenario != "Offline" else None,
            "failed": (run.summary or {}).get("failed"),
        }
        if links:
            row["report"] = f'<a href="{html.escape(rel)}/{REPORT_NAME}">{html.escape(rel)}</a>'
        rows.append(row)
    return pd.DataFrame(rows)


def write_index(root: str | Path, runs: list[RunData]) -> Path:
    root = Path(root)
    df = runs_table(root, runs)
    table = df.to_html(index=False, escape=False, na_rep="", float_format=lambda v: f"{v:,.2f}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>runs in {html.escape(str(root))}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{len(runs)} runs in {html.escape(str(root))}</h1>"
            f"{table}</body></html>\n")
    out = root / INDEX_NAME
    out.write_text(page, encoding="utf-8")
    return out


def build(root: str | Path) -> list[Path]:
    """report.html (and plots) in every run folder under `root`, and index.html at `root` when it holds
    several runs. Returns the pages written."""
    root = Path(root)
    folders = find_runs(root)
    pages = [write_run_report(f) for f in folders]
    if folders != [root]:
        pages.append(write_index(root, [load_run(f) for f in folders]))
    return pages
