"""--token_stats: LoadGen's requests stream their tokens to the server, whose inter-token statistics reach
the summary; off (the default), no chunk is delivered and the summary has none."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlib.cli import resolve_for
from llmlib.cores.triton_grpc_core import TritonGrpcCore, TritonSettings
from llmlib.harness import run_scenario

pytestmark = [pytest.mark.loadgen, pytest.mark.timeout(120)]


def run(tmp_path, **overrides):
    cli = {"core_type": "dummy", "dummy_ttft_ms": "2", "dummy_tpot_ms": "1", "show_progress": "false",
           "warmup_queries": "0", "min_duration_ms": "500", "server_target_qps": "100", "min_query_count": "300",
           "results_dir": str(tmp_path), **overrides}
    config, benchmark = resolve_for(cli, "tiny-synthetic", "Server", env={})
    return run_scenario(config, benchmark, "Server")


def test_token_stats_reach_the_summary_only_when_asked(tmp_path):
    off = run(tmp_path / "off")
    assert off.ok and off.token_stats is None
    on = run(tmp_path / "on", token_stats="true")
    assert on.ok and on.issued == on.completed and on.lost == 0
    t = on.token_stats
    assert t["requests"] >= 300 and 0.5 <= t["itl_p50_ms"] <= 20  # about the simulated 1 ms per token
    assert t["max_gap_p99_ms"] >= t["itl_p50_ms"]
    text = (Path(on.outdir) / "summary.txt").read_text()
    assert "inter-token latency" in text and "inter-token" not in (Path(off.outdir) / "summary.txt").read_text()


def test_triton_workers_share_the_requests_in_flight():
    s = TritonSettings(url="h:1", model="m", max_concurrency=5)
    assert [TritonGrpcCore.worker_settings(s, i, 3).max_concurrency for i in range(3)] == [2, 2, 1]
