"""Compare two results folders (single runs or multi-benchmark runs): throughput, latency percentiles,
accuracy and verdicts side by side with deltas, printed and written (compare.txt/.csv/.html) with
overlaid CDF plots per matched run.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from llmlib.report.html import _STYLE, _img
from llmlib.report.plots import plot_overlaid_cdfs
from llmlib.report.run_data import ReportError, RunData, find_runs, load_run

_METRICS = (
    ("samples/s", lambda r: r.loadgen.get("result_samples_per_second")),
    ("tokens/s", lambda r: r.loadgen.get("result_tokens_per_second")),
    ("target QPS", lambda r: r.loadgen.get("target_qps")),
    *((f"{what} p{p} ms", (lambda w, q: lambda r: _pct_ms(r, w, q))(what, p))
      for what in ("TTFT", "TPOT", "latency") for p in ("50", "90", "99")),
)


def _pct_ms(run: RunData, what: str, p: str) -> float | None:
    v = run.percentiles_ns({"TTFT": "ttft", "TPOT": "tpot", "latency": "latency"}[what]).get(float(p) / 100)
    return None if v is None else v / 1e6


def _accuracy(run: RunData) -> dict[str, float]:
    acc = None
    path = run.folder / "accuracy.json"
    if path.is_file():
        try:
            acc = json.loads(path.read_text())
        except (OSError, ValueError):
            acc = None
    acc = acc or (run.summary or {}).get("accuracy") or {}
    metrics = acc.get("metrics") or {}
    return {f"accuracy {k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def run_key(run: RunData) -> tuple[str, str, str]:
    return (run.benchmark, run.scenario, run.mode)


def compare(a_root: str | Path, b_root: str | Path) -> pd.DataFrame:
    """One row per (benchmark, scenario, mode, metric) in either folder: A, B, delta, delta %."""
    a_runs = {run_key(r): r for r in map(load_run, find_runs(a_root))}
    b_runs = {run_key(r): r for r in map(load_run, find_runs(b_root))}
    rows = []
    for key in sorted(set(a_runs) | set(b_runs)):
        a, b = a_runs.get(key), b_runs.get(key)
        base = {"benchmark": key[0], "scenario": key[1], "mode": key[2]}
        rows.append({**base, "metric": "verdict", "A": a.verdict if a else "(missing)",
                     "B": b.verdict if b else "(missing)", "delta": "", "delta %": ""})
        names = [m for m, _ in _METRICS]
        acc_a, acc_b = (_accuracy(a) if a else {}), (_accuracy(b) if b else {})
        for name in names + sorted(set(acc_a) | set(acc_b)):
            fa = dict(_METRICS).get(name)
            va = (fa(a) if fa else acc_a.get(name)) if a else None
            vb = (fa(b) if fa else acc_b.get(name)) if b else None
            if va is None and vb is None:
                continue
            delta = vb - va if va is not None and vb is not None else None
            pct = (delta / va * 100) if delta is not None and va else None
            rows.append({**base, "metric": name, "A": va, "B": vb, "delta": delta, "delta %": pct})
    return pd.DataFrame(rows, columns=["benchmark", "scenario", "mode", "metric", "A", "B", "delta", "delta %"])


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)) or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}"
    return str(v)


def write_comparison(a_root: str | Path, b_root: str | Path, out: str | Path | None = None) -> tuple[str, Path]:
    """Print-ready text and the folder written: compare.txt, compare.csv, compare.html, one overlaid CDF PNG
    per run found in both."""
    a_root, b_root = Path(a_root), Path(b_root)
    df = compare(a_root, b_root)
    out = Path(out) if out else b_root / "compare"
    out.mkdir(parents=True, exist_ok=True)
    shown = df.copy()
    for col in ("A", "B", "delta"):
        shown[col] = shown[col].map(_fmt)
    shown["delta %"] = df["delta %"].map(lambda v: "" if v in ("", None) or pd.isna(v) else f"{v:+.1f}%")
    text = f"A = {a_root}\nB = {b_root}\n" + shown.to_string(index=False)
    (out / "compare.txt").write_text(text + "\n")
    df.to_csv(out / "compare.csv", index=False)
    a_runs = {run_key(r): r for r in map(load_run, find_runs(a_root))}
    b_runs = {run_key(r): r for r in map(load_run, find_runs(b_root))}
    images = []
    for key in sorted(set(a_runs) & set(b_runs)):
        name = "cdf_" + "_".join(k.replace("/", "_") for k in key) + ".png"
        images.append((key, plot_overlaid_cdfs(a_runs[key], b_runs[key], out / name)))
    body = [f"<h1>A = {html.escape(str(a_root))}<br>B = {html.escape(str(b_root))}</h1>",
            shown.to_html(index=False, escape=True)]
    for key, img in images:
        body += [f"<h2>{html.escape(' | '.join(key))}: A against B</h2>", _img(img)]
    (out / "compare.html").write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>compare</title>"
                                      f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    if not images:
        text += "\n(no run is in both folders: nothing to overlay)"
    return text, out


__all__ = ["ReportError", "compare", "write_comparison"]
