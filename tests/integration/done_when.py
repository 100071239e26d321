"""Issue 14's "Done when" command line, run through `make run_harness` against a real server, and the checks
every such run shares: VALID, the dialect named, and the auto target reported with how it was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: LoadGen's early stopping at the 99th percentile needs at least 459 queries with none over a limit:
#: configs/user.conf asks 500 of tiny's Server runs.
MIN_QUERIES = 500


def done_when_args(url: str) -> list[str]:
    """The issue's command line, nothing else."""
    return ["--benchmarks=tiny", "--scenarios=Server", "--core_type=trtllm_endpoint", f"--trtllm_server_urls={url}"]


def run_done_when(url: str, results: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`make run_harness RUN_ARGS="<the issue's flags>"`, with this interpreter (a stand-in venv whose
    install marker is current, so make installs nothing) and the outputs in `results` (the one flag added)."""
    venv = results.parent / "venv"
    venv.mkdir(parents=True, exist_ok=True)
    marker = venv / ".installed"
    marker.touch()
    stamp = (REPO / "pyproject.toml").stat().st_mtime + 1
    os.utime(marker, (stamp, stamp))
    run_args = " ".join([*done_when_args(url), f"--results_dir={results}"])
    return subprocess.run(["make", "--no-print-directory", "run_harness", f"VENV={venv}", f"PY={sys.executable}",
                           f"RUN_ARGS={run_args}"], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def performance_dir(results: Path) -> Path:
    return results / "local" / "tiny" / "Server" / "performance"


#: A real server on a shared 2-core machine (CI's) meets the machine's noise: a stall of a few seconds
#: anywhere in a run of about 2 minutes puts more than 1% of its 500 queries over the TTFT limit, at any
#: target the probes could choose before it (seen once in CI: probes measured 8 QPS, the run at 4 QPS had a
#: TTFT p99 of 3.1 s). A run INVALID for latency alone (none failed, LoadGen's constraints missed) is run
#: once more, from new probes; a target the probes choose too high every time still fails, twice.
LATENCY_TRIES = 2


def run_until_valid(run: Callable[[Path], subprocess.CompletedProcess], tmp_path: Path
                    ) -> tuple[subprocess.CompletedProcess, Path]:
    """run(results_dir) up to LATENCY_TRIES times (tmp_path/try1, try2, ...) while it exits 0 but is INVALID
    for latency alone; (the last process, its results folder)."""
    for attempt in range(1, LATENCY_TRIES + 1):
        results = tmp_path / f"try{attempt}"
        proc = run(results)
        summary = performance_dir(results) / "summary.json"
        if proc.returncode != 0 or not summary.is_file():
            break
        s = json.loads(summary.read_text())
        latency_only = (s["validity"] != "VALID" and s["failed"] == 0 and s["lost"] == 0
                        and (s.get("loadgen") or {}).get("perf_constraints_met") is False)
        if not latency_only:
            break
        if attempt < LATENCY_TRIES:
            warnings.warn(f"run {attempt} was INVALID for latency alone (TTFT p99 "
                          f"{s['loadgen'].get('ttft_p99_ns', 0) / 1e6:.0f} ms at "
                          f"{s['loadgen'].get('target_qps')} QPS): run again", stacklevel=2)
    return proc, results


def check_auto_target(results: Path) -> dict:
    """The run is VALID with no failure, its target came from the probes (auto), and the summary (txt and
    json), config.json and auto_qps.json agree on it. Returns summary.json."""
    out = performance_dir(results)
    s = json.loads((out / "summary.json").read_text())
    text = (out / "summary.txt").read_text()
    assert s["validity"] == "VALID" and s["verdict"] == "VALID", text
    assert s["failed"] == 0 and s["lost"] == 0 and s["issued"] == s["completed"] >= MIN_QUERIES, s["errors"]
    auto = json.loads((out / "auto_qps.json").read_text())
    target = auto["target_qps"]
    assert target == auto["sustained_qps"] * auto["fraction"] and auto["fraction"] == 0.5
    assert auto["sustained_qps"] <= auto["peak_qps"] and auto["elapsed_s"] < auto["budget_s"] + 90
    assert any(p["passed"] for p in auto["probes"]) and len(list((out / "calibration").iterdir())) == len(auto["probes"])
    assert (out / "auto_qps.png").read_bytes()[:4] == b"\x89PNG"
    assert abs(s["loadgen"]["target_qps"] - target) / target < 1e-4  # LoadGen ran at the chosen target
    note = next(n for n in s["notes"] if n.startswith("target QPS"))
    assert f"target QPS {target:.4g}: auto, 50% of {auto['sustained_qps']:.4g} QPS measured in" in note
    assert f"note                : {note}" in text
    config = {row["name"]: row for row in json.loads((out / "config.json").read_text())}
    assert config["server_target_qps"]["source"].startswith("auto: 50% of"), config["server_target_qps"]
    assert f"tiny.Server.target_qps = {target:.6g}" in (out / "user.conf").read_text()
    return s
