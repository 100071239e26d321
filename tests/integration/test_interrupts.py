"""Signals sent for real to a running harness (`python -m llmlib` in its own session): Ctrl-C and
SIGTERM in a run, in warm-up, twice, over several scenarios, on the dummy and the hf cores; and
a core that dies mid-run. Each checks the exit code, the files, the verdict and leftover processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.loadgen, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
DUMMY = ["--core_type=dummy", "--benchmarks=tiny-synthetic", "--show_progress=false"]


class Harness:
    """`python -m llmlib` in a session of its own (so a signal to its group is what a terminal's
    Ctrl-C does), with its console in files."""

    def __init__(self, tmp_path: Path, *args: str):
        self.results = tmp_path / "results"
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "llmlib", f"--results_dir={self.results}", *args],
                                         cwd=REPO, stdout=out, stderr=err, start_new_session=True)

    def run_dir(self, scenario: str, benchmark: str = "tiny-synthetic") -> Path:
        return self.results / "local" / benchmark / scenario / "performance"

    def wait_for(self, path: Path, timeout_s: float = 120.0, text: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if path.exists() and (text is None or text in path.read_text(errors="replace")):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"harness ended (rc {self.proc.returncode}) before {path} {text or ''}: "
                                     + self.console())
            time.sleep(0.1)
        raise AssertionError(f"{path} {text or ''} did not appear within {timeout_s}s: " + self.console())

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout_s: float = 90.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError("the harness did not exit: " + self.console()) from None

    def console(self) -> str:
        return self.out.read_text(errors="replace")[-3000:] + "\n--- stderr ---\n" + self.err.read_text(errors="replace")[-3000:]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in found:
                    found.add(k)
                    todo.append(k)
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_interrupted(run_dir: Path, *, loadgen_finished: bool) -> dict:
    s = summary(run_dir)
    assert s["verdict"] == "INTERRUPTED" and not s["ok"], s
    assert s["interrupted"].startswith("interrupted by SIG")
    assert s["issued"] == s["completed"] + s["failed"] and s["lost"] == 0
    assert "Result              : INTERRUPTED" in (run_dir / "summary.txt").read_text()
    lg_summary = run_dir / "mlperf_log_summary.txt"
    if loadgen_finished:
        assert lg_summary.stat().st_size > 0  # LoadGen finished its test and wrote its summary
    return s


def test_ctrl_c_in_offline_lets_loadgen_finish_and_exits_130(tmp_path):
    h = Harness(tmp_path, *DUMMY, "--scenarios=Offline", "--warmup_queries=0", "--offline_expected_qps=20",
                "--dummy_tpot_ms=100", "--dummy_max_batch_size=4")
    h.wait_for(h.run_dir("Offline") / "mlperf_log_detail.txt")
    time.sleep(0.5)
    h.signal_group(signal.SIGINT)
    assert h.finish() == 130, h.console()
    s = assert_interrupted(h.run_dir("Offline"), loadgen_finished=True)
    assert s["failed"] > 0 and s["errors"] == {"BackendError: interrupted by SIGINT": s["failed"]}
    assert "Traceback" not in h.err.read_text()
    errors = (h.run_dir("Offline") / "errors.txt").read_text().splitlines()
    assert len(errors) == s["failed"] and all(line.endswith("interrupted by SIGINT") for line in errors)


def test_sigterm_in_a_short_server_run_waits_for_loadgen_and_exits_143(tmp_path):
    h = Harness(tmp_path, *DUMMY, "--scenarios=Server", "--warmup_queries=0", "--server_target_qps=100",
                "--min_duration_ms=4000", "--min_query_count=100", "--interrupt_grace_s=60")
    h.wait_for(h.run_dir("Server") / "mlperf_log_detail.txt")
    time.sleep(1.0)
    h.proc.send_signal(signal.SIGTERM)  # to the harness alone, as a job scheduler does
    assert h.finish() == 143, h.console()
    s = assert_interrupted(h.run_dir("Server"), loadgen_finished=True)
    assert s["interrupted"] == "interrupted by SIGTERM"
    assert s["loadgen"] is not None  # LoadGen's detail log was read: its test ended


def test_ctrl_c_with_a_long_server_schedule_exits_at_once_with_the_harness_summary(tmp_path):
    h = Harness(tmp_path, *DUMMY, "--scenarios=Server", "--warmup_queries=0", "--server_target_qps=50",
                "--min_duration_ms=120000")
    h.wait_for(h.run_dir("Server") / "mlperf_log_detail.txt")
    time.sleep(1.0)
    t0 = time.monotonic()
    h.signal_group(signal.SIGINT)
    assert h.finish() == 130, h.console()
    assert time.monotonic() - t0 < 15  # not the two minutes LoadGen's schedule has left
    s = assert_interrupted(h.run_dir("Server"), loadgen_finished=False)
    assert any("LoadGen did not finish" in note for note in s["notes"])
    assert "schedule has about" in h.err.read_text()


def test_second_ctrl_c_exits_at_once_and_never_segfaults(tmp_path):
    h = Harness(tmp_path, *DUMMY, "--scenarios=Server", "--warmup_queries=0", "--server_target_qps=50",
                "--min_duration_ms=60000", "--interrupt_grace_s=600")
    h.wait_for(h.run_dir("Server") / "mlperf_log_detail.txt")
    time.sleep(0.5)
    h.signal_group(signal.SIGINT)
    h.wait_for(h.err, text="Press Ctrl-C again")
    time.sleep(0.5)
    assert h.proc.poll() is None  # the first Ctrl-C waits for LoadGen (grace 600 s)
    t0 = time.monotonic()
    h.signal_group(signal.SIGINT)
    assert h.finish() == 130, h.console()
    assert time.monotonic() - t0 < 10
    assert "second signal" in h.err.read_text()
    assert_interrupted(h.run_dir("Server"), loadgen_finished=False)


def test_ctrl_c_during_warm_up_writes_the_summary_without_a_traceback(tmp_path):
    h = Harness(tmp_path, *DUMMY, "--scenarios=Offline", "--warmup_queries=4", "--dummy_ttft_ms=20000")
    h.wait_for(h.run_dir("Offline") / "config.json")
    time.sleep(1.0)
    h.signal_group(signal.SIGINT)
    assert h.finish() == 130, h.console()
    s = assert_interrupted(h.run_dir("Offline"), loadgen_finished=False)
    assert s["issued"] == 0 and any("before LoadGen's test began" in n for n in s["notes"])
    assert not (h.run_dir("Offline") / "mlperf_log_detail.txt").exists()
    assert "Traceback" not in h.err.read_text()


def test_ctrl_c_over_several_scenarios_stops_the_current_one_and_starts_no_other(tmp_path):
    h = Harness(tmp_path, *DUMMY, "--scenarios=Offline,Server", "--warmup_queries=0", "--offline_expected_qps=20",
                "--dummy_tpot_ms=100", "--dummy_max_batch_size=4")
    h.wait_for(h.run_dir("Offline") / "mlperf_log_detail.txt")
    time.sleep(0.5)
    h.signal_group(signal.SIGINT)  # the terminal's Ctrl-C: the parent passes it on once
    assert h.finish() == 130, h.console()
    assert_interrupted(h.run_dir("Offline"), loadgen_finished=True)
    assert not h.run_dir("Server").exists()
    out = h.out.read_text()
    assert "INTERRUPTED" in out and "Server       not started (interrupted)" in out


@pytest.mark.slow
def test_ctrl_c_on_the_hf_core_reaps_its_workers(tmp_path):
    pytest.importorskip("torch")
    h = Harness(tmp_path, "--benchmarks=tiny", "--scenarios=Offline", "--show_progress=false",
                "--hf_num_workers=2", "--warmup_queries=0")
    run_dir = h.run_dir("Offline", "tiny")
    h.wait_for(run_dir / "mlperf_log_detail.txt", timeout_s=180)
    workers = descendants(h.proc.pid)
    assert len(workers) >= 2, workers
    h.signal_group(signal.SIGINT)  # reaches the workers too: they must not die of it first
    assert h.finish(timeout_s=120) == 130, h.console()
    s = assert_interrupted(run_dir, loadgen_finished=True)
    assert all("interrupted by SIGINT" in cause for cause in s["errors"]), s["errors"]
    deadline = time.monotonic() + 10
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(workers)


@pytest.mark.slow
def test_a_dead_hf_worker_ends_the_run_early_with_its_cause(tmp_path):
    pytest.importorskip("torch")
    h = Harness(tmp_path, "--benchmarks=tiny", "--scenarios=Server", "--show_progress=false",
                "--warmup_queries=0", "--server_target_qps=5", "--min_duration_ms=120000")
    run_dir = h.run_dir("Server", "tiny")
    h.wait_for(run_dir / "mlperf_log_detail.txt", timeout_s=180)
    time.sleep(2.0)
    worker = next(pid for pid in alive(descendants(h.proc.pid))
                  if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes())  # the model worker
    t0 = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    rc = h.finish(timeout_s=60)
    assert rc == 1, h.console()
    assert time.monotonic() - t0 < 30  # not the two minutes of LoadGen's schedule
    s = summary(run_dir)
    assert s["verdict"] == "FAILED" and s["interrupted"] is None
    assert "can no longer serve" in s["run_error"] and "worker" in s["run_error"]
    assert s["issued"] == s["completed"] + s["failed"]
