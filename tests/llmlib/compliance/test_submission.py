"""Submission staging against the official tools: truncate_accuracy_log.py's output, and the checker's verdict.

The end-to-end test makes a full-count run set of a llama2-70b-99.9 stand-in on the dummy core and
asserts the exact set of complaints the official checker (v6.1) leaves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from reference_files import find_reference

from llmlib.compliance.submission import quick_run_overrides, run_checker, stage_accuracy_log

REPO = Path(__file__).resolve().parents[3]
REFERENCE = find_reference() or REPO.parent / "shared" / "mlperf-reference"
TOOLS = REFERENCE / "tools" / "submission"


def py(module, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLPERF_INFERENCE_DIR"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


# --- the accuracy log as the official tool truncates it ---------------------------------------------------
@pytest.mark.parametrize("entries", [3, 400])  # under and over the 4096-character viewable size
def test_truncated_log_and_hash_equal_truncate_accuracy_log(tmp_path, entries):
    log = json.dumps([{"seq_id": i, "qsl_idx": i, "data": f"{i:08X}" * 7} for i in range(entries)], indent=0)
    scores = "{'rouge1': 44.5, 'rouge2': 22.1, 'rougeL': 28.7, 'tokens_per_sample': 290.1}"
    src = tmp_path / "src" / "closed" / "Org" / "results" / "sys" / "llama2-70b-99.9" / "Offline" / "accuracy"
    src.mkdir(parents=True)
    (src / "mlperf_log_accuracy.json").write_text(log)
    (src / "accuracy.txt").write_text(scores + "\n")
    official = tmp_path / "official"
    p = subprocess.run([sys.executable, str(TOOLS / "truncate_accuracy_log.py"), "--input", str(tmp_path / "src"),
                        "--output", str(official), "--submitter", "Org"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    ours = tmp_path / "ours"
    stage_accuracy_log(src / "mlperf_log_accuracy.json", ours, (src / "accuracy.txt").read_text())
    theirs = official / "closed" / "Org" / "results" / "sys" / "llama2-70b-99.9" / "Offline" / "accuracy"
    for name in ("mlperf_log_accuracy.json", "accuracy.txt"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


@pytest.mark.parametrize("entries", [3, 400])
def test_test09_logs_are_truncated_as_truncate_accuracy_log_does(tmp_path, entries):
    """TEST07/TEST09 folders get the hash alone in accuracy.txt (they have no scores)."""
    log = json.dumps([{"seq_id": i, "qsl_idx": i, "data": f"{i:08X}" * 9} for i in range(entries)])
    scen = tmp_path / "src" / "closed" / "Org" / "results" / "sys" / "gpt-oss-120b" / "Offline"
    (scen / "accuracy").mkdir(parents=True)
    (scen / "accuracy" / "mlperf_log_accuracy.json").write_text("[]")
    (scen / "accuracy" / "accuracy.txt").write_text("{'exact_match': 80.0}\n")
    (scen / "TEST09" / "accuracy").mkdir(parents=True)
    (scen / "TEST09" / "accuracy" / "mlperf_log_accuracy.json").write_text(log)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "mlperf_log_accuracy.json").write_text(log)
    stage_accuracy_log(ours / "mlperf_log_accuracy.json", ours, None)  # in place, as staging does it
    official = tmp_path / "official"
    p = subprocess.run([sys.executable, str(TOOLS / "truncate_accuracy_log.py"), "--input", str(tmp_path / "src"),
                        "--output", str(official), "--submitter", "Org"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    theirs = official / "closed" / "Org" / "results" / "sys" / "gpt-oss-120b" / "Offline" / "TEST09" / "accuracy"
    for name in ("mlperf_log_accuracy.json", "accuracy.txt"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


# --- refusals -------------------------------------------------------------------------------------------------
def _run_dir(path: Path, *, ok=True, validity="VALID", sources=None):
    path.mkdir(parents=True)
    rows = [{"name": n, "value": 1, "source": s} for n, s in (sources or {}).items()]
    rows += [{"name": "user_conf", "value": "", "source": "default"}, {"name": "config_dir", "value": "configs",
                                                                       "source": "default"}]
    (path / "config.json").write_text(json.dumps(rows))
    (path / "summary.json").write_text(json.dumps({"ok": ok, "validity": validity}))
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        (path / name).write_text("x\n")
    return path


def test_quick_run_overrides_are_read_from_config_json(tmp_path):
    run = _run_dir(tmp_path / "r", sources={"min_duration_ms": "command line", "server_target_qps": "env X",
                                            "min_query_count": "configs/user.yaml [default]",
                                            "max_query_count": "default"})
    assert quick_run_overrides(run) == ["--server_target_qps=1 (env X)", "--min_duration_ms=1 (command line)"]


def stage_cli(tmp_path, *args):
    desc = tmp_path / "system.yaml"
    if not desc.exists():
        desc.write_text("submitter: TestOrg\nsystem_type: datacenter\nstatus: available\n")
    return py("llmlib.compliance.submission", "stage", f"--results_dir={tmp_path / 'results'}",
              f"--submission_dir={tmp_path / 'sub'}", f"--system_description={desc}", *args, cwd=tmp_path)


def test_staging_refuses_quick_runs_and_runs_without_accuracy_txt(tmp_path):
    base = tmp_path / "results" / "local" / "llama2-70b-99.9" / "Offline"
    _run_dir(base / "performance", sources={"min_duration_ms": "command line"})
    _run_dir(base / "accuracy")
    args = ("--benchmarks=llama2-70b-99.9", "--scenarios=Offline")
    p = stage_cli(tmp_path, *args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "quick-run overrides --min_duration_ms=1 (command line)" in p.stderr and "--stage_anyway" in p.stderr
    p = stage_cli(tmp_path, *args, "--stage_anyway")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "accuracy.txt: missing; the accuracy run must be scored first" in p.stderr
    assert not (tmp_path / "sub" / "closed" / "TestOrg" / "results").exists()


def test_staging_refuses_benchmarks_outside_the_round(tmp_path):
    p = stage_cli(tmp_path, "--benchmarks=llama2-70b-99", "--scenarios=Offline")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "llama2-70b-99: not a benchmark of MLPerf Inference v6.1" in p.stderr


def test_check_needs_a_checkout(tmp_path):
    p = py("llmlib.compliance.submission", "check", f"--submission_dir={tmp_path}", cwd=tmp_path)
    assert p.returncode == 2 and "--mlperf_inference_dir is not set" in p.stderr


def test_a_tree_without_results_is_not_accepted(tmp_path):
    """The checker says "submission looks OK" on an empty tree; check_submission does not."""
    (tmp_path / "sub" / "closed").mkdir(parents=True)
    p = py("llmlib.compliance.submission", "check", f"--submission_dir={tmp_path / 'sub'}",
           f"--mlperf_inference_dir={REFERENCE}", cwd=tmp_path)
    assert p.returncode == 1 and "REJECTED; 0 complaint(s), 0 result(s); it found no results" in p.stdout


# --- end to end: runs -> compliance -> staging -> the official checker ---------------------------------------
def _stand_in_configs(root: Path) -> Path:
    """A llama2-70b-99.9 stand-in: synthetic tokens with the real sample counts (24,576) and LoadGen key."""
    configs = root / "configs"
    (configs / "benchmarks").mkdir(parents=True)
    (configs / "submission").mkdir()
    spec = yaml.safe_load((REPO / "configs" / "benchmarks" / "tiny-synthetic.yaml").read_text())
    spec.update(loadgen_model="llama2-70b", total_sample_count=24576, performance_sample_count=24576, harness={},
                description="stand-in for llama2-70b-99.9")
    spec["dataset"].update(num_samples=24576, output_len={"dist": "uniform", "min": 2, "max": 8})
    spec["scenarios"] = {"Offline": {"loadgen_scenario": "Offline", "streaming": False},
                         "Interactive": {"loadgen_scenario": "Server", "loadgen_model": "llama2-70b-interactive",
                                         "ttft_ms": 450, "tpot_ms": 40, "streaming": True}}
    spec["accuracy"] = {"tokens_per_sample": {"min": 2, "max": 8}}
    (configs / "benchmarks" / "llama2-70b-99.9.yaml").write_text(yaml.safe_dump(spec))
    (configs / "user.conf").write_text("llama2-70b.Offline.target_qps = 20000\n"
                                       "llama2-70b-interactive.Server.target_qps = 3000\n")
    # the shipped template (configs/submission/local.yaml), with the submitter given on the command line
    shutil.copyfile(REPO / "configs" / "submission" / "local.yaml", configs / "submission" / "local.yaml")
    return configs


@pytest.mark.loadgen
@pytest.mark.slow
def test_stage_then_the_official_checker_leaves_only_the_expected_complaints(tmp_path):
    configs = _stand_in_configs(tmp_path)
    common = [f"--config_dir={configs}", f"--results_dir={tmp_path / 'results'}", "--core_type=dummy",
              "--dummy_zero_latency=true", "--show_progress=false", "--warmup_queries=0",
              "--benchmarks=llama2-70b-99.9", "--scenarios=Offline,Interactive", f"--mlperf_inference_dir={REFERENCE}"]
    # a 600 s performance run cannot fit a test: these are quick runs, staged with --stage_anyway
    assert py("llmlib", *common, "--min_duration_ms=2000", cwd=tmp_path).returncode == 0
    assert py("llmlib", *common, "--test_mode=AccuracyOnly", cwd=tmp_path).returncode == 0
    p = py("llmlib.compliance", *common, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    tps = {}
    for scenario in ("Offline", "Interactive"):
        acc = tmp_path / "results" / "local" / "llama2-70b-99.9" / scenario / "accuracy"
        # accuracy.txt: until the `evaluation` branch writes it from its scorers, the test writes the line
        # the reference evaluate-accuracy.py prints, with the stand-in's tokens per sample and ROUGE of 0
        tps[scenario] = json.loads((acc / "summary.json").read_text())["tokens_per_sample"]
        (acc / "accuracy.txt").write_text(f"{{'rouge1': 0.0, 'rouge2': 0.0, 'rougeL': 0.0, 'rougeLsum': 0.0, "
                                          f"'gen_len': 0, 'gen_num': 24576, 'tokens_per_sample': "
                                          f"{tps[scenario]:.1f}}}\n")
    sub = tmp_path / "sub"
    common.append("--submitter=TestOrg")
    p = py("llmlib.compliance.submission", "stage", *common, f"--submission_dir={sub}", cwd=tmp_path)
    assert p.returncode == 2 and "quick-run overrides --min_duration_ms=2000 (command line)" in p.stderr
    p = py("llmlib.compliance.submission", "stage", *common, f"--submission_dir={sub}", "--stage_anyway",
           cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    model = sub / "closed" / "TestOrg" / "results" / "local" / "llama2-70b-99.9"
    assert sorted(os.listdir(model)) == ["Interactive", "Offline"]  # the run folder's name, not LoadGen's "Server"
    for scenario in ("Offline", "Interactive"):
        scen = model / scenario
        assert sorted(os.listdir(scen)) == ["README.md", "TEST06", "accuracy", "harness_config.json",
                                            "measurements.json", "mlperf.conf", "performance", "user.conf"]
        assert "tokens_per_sample" in (scen / "accuracy" / "accuracy.txt").read_text()
        assert (scen / "accuracy" / "mlperf_log_accuracy.json").stat().st_size < 9000  # truncated
    system = json.loads((sub / "closed" / "TestOrg" / "systems" / "local.json").read_text())
    assert system["division"] == "closed" and system["submitter"] == "TestOrg" and system["host_processor_core_count"]

    result = run_checker(TOOLS, sub)
    expected = {"ERROR SUMMARY: submission has errors"}
    for scenario in ("Offline", "Interactive"):
        base = f"<submission>/closed/TestOrg/results/local/llama2-70b-99.9/{scenario}"
        perf, accd = f"{base}/performance/run_1/mlperf_log_detail.txt", f"{base}/accuracy/mlperf_log_detail.txt"
        expected |= {
            # the quick performance run (a 600 s run does not fit a test), and so no result from it
            f"ERROR {perf} Test duration less than 600s in user config. expected=600000, found=2000",
            f"ERROR Some performance checks Checks failed for: {perf}",
            f"ERROR NoResults {perf}",
            # the stand-in model's accuracy
            f"WARNING {accd} accuracy not met: expected=44.386769, found=0.0",
            f"WARNING {accd} accuracy not met: expected=22.013165, found=0.0",
            f"WARNING {accd} accuracy not met: expected=28.587584, found=0.0",
            f"WARNING {accd} accuracy not met: expected=265.005000, found={tps[scenario]:.1f}",
            f"ERROR Some accuracy checks Checks failed for: {accd}",
        }
    assert set(result["complaints"]) == expected, "\n".join(sorted(set(result["complaints"]) ^ expected))
    # nothing about the system description, measurements, the truncated logs or TEST06
    assert "All compliance check checks passed" in result["output"]
    p = py("llmlib.compliance.submission", "check", f"--submission_dir={sub}", f"--mlperf_inference_dir={REFERENCE}",
           cwd=tmp_path)
    assert p.returncode == 1 and "submission checker (v6.1): REJECTED" in p.stdout
