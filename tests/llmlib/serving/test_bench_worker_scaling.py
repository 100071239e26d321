"""scripts/bench_worker_scaling.py runs end to end (both phases, in-process and 1 worker, against the mock
replaying pre-rendered streams): every request completes, the CPU split and the TTFT stages are there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_scaling_script_runs_both_phases(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "scripts/bench_worker_scaling.py", "--workers", "0,1", "--requests", "300",
                           "--concurrency", "16", "--output_tokens", "40", "--repeat", "1", "--qps", "200",
                           "--ttft_seconds", "0.3", "--ttft_workers", "0,1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [r["workers"] for r in results["scaling"]] == [0, 1]
    for r in results["scaling"]:
        # (CPU times come from /proc in 10 ms ticks: 300 x 40 chunks give the worker several, the mock
        # may still read 0)
        assert r["errors"] == 0 and r["tokens_per_s"] > 0 and r["mock_cpu_us_per_chunk"] >= 0
    assert results["scaling"][1]["worker_cpu_us_per_chunk"] > 0 == results["scaling"][0]["worker_cpu_us_per_chunk"]
    for r in results["ttft"]:
        assert r["errors"] == 0 and r["requests"] == 60
        assert {"to_loop_p99_ms", "write_p99_ms", "server_and_read_p99_ms", "back_p99_ms"} <= set(r)
    assert "| workers | streamed tokens/s" in proc.stdout and not list(REPO.glob("audit.config"))
