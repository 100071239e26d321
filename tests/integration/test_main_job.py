"""The README's main job end to end: the tiny model on the hf core through LoadGen (about a
minute), its accuracy run, and faults inside the model that must fail requests, not the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.loadgen, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


def llmlib(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "llmlib", "--show_progress=false", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def summary(results: Path, scenario: str, mode: str = "performance") -> dict:
    return json.loads((results / "local" / "tiny" / scenario / mode / "summary.json").read_text())


def test_main_job_runs_offline_then_server_valid(tmp_path):
    proc = llmlib(f"--results_dir={tmp_path}")  # nothing else: the defaults are the main job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for scenario in ("Offline", "Server"):
        s = summary(tmp_path, scenario)
        assert s["core_type"] == "hf" and s["validity"] == "VALID", s["loadgen"]
        assert s["issued"] == s["completed"] > 0 and s["failed"] == 0
    assert proc.stdout.index("| Offline |") < proc.stdout.index("| Server |")


def test_accuracy_run_reproduces_the_references(tmp_path):
    proc = llmlib(f"--results_dir={tmp_path}", "--scenarios=Offline", "--test_mode=AccuracyOnly")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    acc = summary(tmp_path, "Offline", "accuracy")["accuracy"]
    assert acc["passed"], acc
    assert acc["metrics"]["rougeL"] >= 99.0
    assert abs(acc["metrics"]["tokens_per_sample"] / 32.484375 - 1) <= 0.01


def test_out_of_memory_inside_the_model_fails_requests_not_the_run(tmp_path):
    from llmlib.tiny_model import ensure_tiny_model
    from tests.faults.oom_model import oom_checkpoint

    model = oom_checkpoint(ensure_tiny_model(), tmp_path / "oom_model", every=9)
    proc = llmlib(f"--results_dir={tmp_path}", "--scenarios=Offline", f"--hf_model_path={model}",
                  "--hf_trust_remote_code=true", "--hf_dtype=float32",
                  "--offline_expected_qps=10", "--min_duration_ms=1000")
    assert proc.returncode == 1  # requests failed: the run is marked failed, and it finished
    s = summary(tmp_path, "Offline")
    assert s["failed"] > 0 and s["completed"] > 0 and s["lost"] == 0
    assert s["issued"] == s["completed"] + s["failed"]
    assert any("out of memory" in cause for cause in s["errors"])
