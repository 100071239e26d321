"""Compliance runs end to end: `python -m llmlib.compliance` on the dummy core, judged by the official verifiers.

Each run is a real LoadGen test in a child process (seconds); the verifiers are the unmodified
compliance/TEST06/run_verification.py from ../shared/mlperf-reference/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from reference_files import find_reference

from llmlib.compliance.audit import check_test06, child_args, compliance_tests_for, official_audit_config
from llmlib.compliance.guard import audit_config_for
from llmlib.config import resolve
from llmlib.errors import ComplianceError, ConfigError

REPO = Path(__file__).resolve().parents[3]
REFERENCE = find_reference() or REPO.parent / "shared" / "mlperf-reference"

FAST = ["--core_type=dummy", "--show_progress=false", "--warmup_queries=0", "--dummy_ttft_ms=2",
        "--dummy_tpot_ms=0.2", f"--mlperf_inference_dir={REFERENCE}"]


def audit(tmp_path, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "llmlib.compliance", f"--results_dir={tmp_path / 'results'}",
                           *FAST, *args], cwd=cwd or tmp_path, env=env, capture_output=True, text=True, timeout=240)


def audit_configs_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("audit.config")]


def leftover_workdirs(before: set[str]) -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("audit-TEST")} - before


@pytest.fixture
def tmp_names():
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("audit-TEST")}


# --- the pure parts -------------------------------------------------------------------------------------
def entry(qsl_idx, tokens, count=None, first=None):
    hexs = b"".join(int(t).to_bytes(4, "little") for t in tokens).hex()
    e = {"seq_id": qsl_idx + 100, "qsl_idx": qsl_idx, "data": hexs,
         "token_count": len(tokens) if count is None else count}
    if first is not None:
        e["token_data"] = b"".join(int(t).to_bytes(4, "little") for t in first).hex()
    return e


def test_test06_checks_name_each_offending_sample():
    entries = [entry(0, [5, 6, 2], first=[5]), entry(1, [5, 2, 2], first=[5]), entry(2, [7, 8], count=3, first=[7]),
               entry(3, [9], first=[4]), entry(4, [], first=[]), entry(5, [1], first=[1])]
    checks = {c.name: c for c in check_test06(entries, eos_token_id=2, streaming=True)}
    assert [s.split(":")[0] for s in checks["EOS"].samples] == ["qsl_idx 1 (seq_id 101)"]
    assert [s.split(":")[0] for s in checks["sample length"].samples] == ["qsl_idx 2 (seq_id 102)"]
    assert [s.split(":")[0] for s in checks["first token"].samples] == ["qsl_idx 3 (seq_id 103)"]
    assert checks["logged samples"].passed
    offline = {c.name: c for c in check_test06(entries, eos_token_id=2, streaming=False)}
    assert offline["first token"].passed and offline["first token"].detail.startswith("skipped")


def test_required_tests_follow_the_checker():
    cfg = resolve(cli={}, env={}, layers=())
    assert compliance_tests_for(cfg, "llama2-70b-interactive-99.9") == ["TEST06"]
    assert compliance_tests_for(cfg, "gpt-oss-120b") == ["TEST07", "TEST09"]
    with pytest.raises(ConfigError, match="requires no compliance test"):
        compliance_tests_for(cfg, "llama3.1-8b-edge")
    with pytest.raises(ConfigError, match="TEST01"):
        compliance_tests_for(resolve(cli={"audit_tests": "TEST01"}, env={}, layers=()), "tiny")


def test_child_args_carry_the_users_flags_with_paths_made_absolute(tmp_path):
    (tmp_path / "model").mkdir()
    args = child_args(["--benchmarks=a,b", "--scenarios=Offline", "--audit_tests=TEST06", "--hf_model_path=model",
                       "--results_dir=out", "--tokenizer_path=missing", "--core_type=hf", "--test_mode=AccuracyOnly"],
                      "a", "Server", "TEST06", Path("/t/audit.config"), cwd=tmp_path)
    assert args == [f"--hf_model_path={tmp_path / 'model'}", "--results_dir=out", "--tokenizer_path=missing",
                    "--core_type=hf", "--benchmarks=a", "--scenarios=Server", "--test_mode=PerformanceOnly",
                    "--audit_test=TEST06", "--audit_config=/t/audit.config"]


def test_official_audit_config_is_found_per_model_or_per_test():
    per_model = REFERENCE / "compliance/TEST07/gpt-oss-120b/audit.config"
    assert official_audit_config(REFERENCE, "TEST07", "gpt-oss-120b") == per_model
    assert official_audit_config(REFERENCE, "TEST06", "tiny") == REFERENCE / "compliance/TEST06/audit.config"
    with pytest.raises(ComplianceError, match="no audit.config for tiny"):
        official_audit_config(REFERENCE, "TEST09", "tiny")


def test_a_normal_run_refuses_a_stray_audit_config(tmp_path):
    cfg = resolve(cli={}, env={}, layers=())
    assert audit_config_for(cfg, cwd=tmp_path) == "audit.config"
    (tmp_path / "audit.config").write_text("*.*.mode = 2\n")
    with pytest.raises(ConfigError, match="turn this run into a compliance run"):
        audit_config_for(cfg, cwd=tmp_path)
    with pytest.raises(ConfigError, match="needs --audit_config"):
        audit_config_for(resolve(cli={"audit_test": "TEST06"}, env={}, layers=()), cwd=tmp_path)


# --- real compliance runs ------------------------------------------------------------------------------
@pytest.mark.loadgen
def test_audit_passes_through_the_official_verifier_and_leaves_the_results_alone(tmp_path, tmp_names):
    perf = tmp_path / "results" / "local" / "tiny-synthetic" / "Server" / "performance"
    perf.mkdir(parents=True)
    (perf / "mlperf_log_summary.txt").write_text("the performance run\n")
    p = audit(tmp_path, "--benchmarks=tiny-synthetic", "--scenarios=Offline,Server")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "TEST06 tiny-synthetic Offline: PASS" in p.stdout and "TEST06 tiny-synthetic Server: PASS" in p.stdout
    for scenario in ("Offline", "Server"):
        run = tmp_path / "results" / "local" / "tiny-synthetic" / scenario / "TEST06"
        v = json.loads((run / "verification.json").read_text())
        assert v["passed"] and v["official"]["ran"] and v["official"]["passed"]
        verify = (run / "official" / "TEST06" / "verify_accuracy.txt").read_text()
        assert "TEST06 verification complete" in verify
        assert ("First token check pass: True" in verify) == (scenario == "Server")
        assert len(json.loads((run / "mlperf_log_accuracy.json").read_text())) == 100  # audit.config's target
    assert (perf / "mlperf_log_summary.txt").read_text() == "the performance run\n"
    assert sorted(os.listdir(perf)) == ["mlperf_log_summary.txt"]
    assert audit_configs_under(tmp_path, REPO) == [] and leftover_workdirs(tmp_names) == set()


@pytest.mark.loadgen
def test_a_corrupted_log_fails_naming_the_samples(tmp_path):
    p = audit(tmp_path, "--benchmarks=tiny-synthetic", "--scenarios=Server")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "results" / "local" / "tiny-synthetic" / "Server" / "TEST06"
    log_path = run / "mlperf_log_accuracy.json"
    entries = json.loads(log_path.read_text())
    e1, e2 = entries[3], entries[7]
    e1["token_count"] += 1  # a count that does not match the logged tokens
    e2["data"] += (2).to_bytes(4, "little").hex() * 2  # two EOS at the end
    e2["token_count"] += 2
    log_path.write_text(json.dumps(entries))
    p = audit(tmp_path, "--benchmarks=tiny-synthetic", "--scenarios=Server", "--audit_verify_only")
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert "TEST06 tiny-synthetic Server: FAIL" in p.stdout
    assert f"qsl_idx {e1['qsl_idx']} (seq_id {e1['seq_id']}): token_count" in p.stdout
    assert f"qsl_idx {e2['qsl_idx']} (seq_id {e2['seq_id']}): ends with 2 EOS" in p.stdout
    v = json.loads((run / "verification.json").read_text())
    assert v["official"]["ran"] and not v["official"]["passed"]  # the official verifier agrees
    verify = (run / "official" / "TEST06" / "verify_accuracy.txt").read_text()
    assert "EOS check pass: False" in verify and "Sample length check pass: False" in verify


@pytest.mark.loadgen
def test_outputs_of_0_1_and_2_tokens_pass_test06(tmp_path):
    configs = tmp_path / "configs"
    (configs / "benchmarks").mkdir(parents=True)
    spec = yaml.safe_load((REPO / "configs" / "benchmarks" / "tiny-synthetic.yaml").read_text())
    spec["dataset"]["output_len"] = {"dist": "uniform", "min": 0, "max": 2}
    (configs / "benchmarks" / "short-outputs.yaml").write_text(yaml.safe_dump(spec))
    (configs / "user.conf").write_text((REPO / "configs" / "user.conf").read_text())
    p = audit(tmp_path, f"--config_dir={configs}", "--benchmarks=short-outputs", "--scenarios=Offline,Server",
              "--audit_tests=TEST06")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for scenario in ("Offline", "Server"):
        run = tmp_path / "results" / "local" / "short-outputs" / scenario / "TEST06"
        entries = json.loads((run / "mlperf_log_accuracy.json").read_text())
        lengths = {len(bytes.fromhex(e["data"])) // 4 for e in entries}
        assert lengths == {0, 1, 2}
        assert all(int(e["token_count"]) == len(bytes.fromhex(e["data"])) // 4 for e in entries)
        assert "Sample length check pass: True" in (run / "official" / "TEST06" / "verify_accuracy.txt").read_text()
        assert json.loads((run / "verification.json").read_text())["passed"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["ok"] and summary["short_outputs"] >= sum(1 for e in entries if len(e["data"]) < 16) > 0


@pytest.mark.loadgen
def test_a_failed_run_fails_and_leaves_no_audit_config(tmp_path, tmp_names):
    p = audit(tmp_path, "--benchmarks=tiny-synthetic", "--scenarios=Offline", "--dummy_fail_rate=0.3")
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert "TEST06 tiny-synthetic Offline: FAIL" in p.stdout and "run complete          : FAIL" in p.stdout
    # a child that cannot start at all (bad value) is a FAIL too, and leaves nothing behind
    p = audit(tmp_path, "--benchmarks=tiny-synthetic", "--scenarios=Offline", "--dummy_output_len=-3")
    assert p.returncode == 1 and "did not run" in p.stdout
    # and the earlier run's logs are gone, never verified as this run's
    run = tmp_path / "results" / "local" / "tiny-synthetic" / "Offline" / "TEST06"
    assert not (run / "mlperf_log_detail.txt").exists()
    assert audit_configs_under(tmp_path, REPO) == [] and leftover_workdirs(tmp_names) == set()


def test_bad_input_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "llmlib.compliance", "--benchmarks=tiny-synthetic",
                        "--scenarios=Offline", f"--mlperf_inference_dir={tmp_path}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no compliance/ folder" in p.stderr


# --- gpt-oss-120b's TEST07 and TEST09 (per-model audit.config files) -------------------------------------------
def _gpt_oss_stand_in(tmp_path, output_len):
    """gpt-oss-120b's sample count (6,396) and LoadGen key over synthetic tokens of the given lengths."""
    configs = tmp_path / "configs"
    (configs / "benchmarks").mkdir(parents=True)
    spec = yaml.safe_load((REPO / "configs" / "benchmarks" / "tiny-synthetic.yaml").read_text())
    spec.update(loadgen_model="gpt-oss-120b", total_sample_count=6396, performance_sample_count=6396, harness={},
                max_output_tokens=2000)
    spec["dataset"].update(num_samples=6396, output_len=output_len)
    spec["scenarios"] = {"Offline": {"loadgen_scenario": "Offline", "streaming": False}}
    spec["accuracy"] = {"tokens_per_sample": {"min": 1, "max": 2000}}
    (configs / "benchmarks" / "gpt-oss-120b.yaml").write_text(yaml.safe_dump(spec))
    (configs / "user.conf").write_text("gpt-oss-120b.Offline.target_qps = 20000\n")
    return [f"--config_dir={configs}", "--benchmarks=gpt-oss-120b", "--scenarios=Offline", "--dummy_zero_latency=true"]


@pytest.mark.loadgen
@pytest.mark.slow
def test_test09_passes_and_fails_on_the_mean_output_length(tmp_path, tmp_names):
    args = _gpt_oss_stand_in(tmp_path, {"dist": "uniform", "min": 1200, "max": 1400})
    p = audit(tmp_path, *args, "--audit_tests=TEST09")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "results" / "local" / "gpt-oss-120b" / "Offline" / "TEST09"
    assert "bounds [1150.38, 1406.02]" in p.stdout  # from compliance/TEST09/gpt-oss-120b/audit.config
    assert "TEST PASS" in (run / "official" / "TEST09" / "verify_output_len.txt").read_text()
    assert len(json.loads((run / "mlperf_log_accuracy.json").read_text())) == 6396  # every sample logged
    short = tmp_path / "short"
    short.mkdir()
    args = _gpt_oss_stand_in(short, {"dist": "fixed", "value": 100})
    p = audit(short, *args, "--audit_tests=TEST09")
    assert p.returncode == 1 and "TEST09 gpt-oss-120b Offline: FAIL" in p.stdout
    assert "mean output tokens    : FAIL  100.00 over 6396 samples" in p.stdout
    v = json.loads((short / "results/local/gpt-oss-120b/Offline/TEST09/verification.json").read_text())
    assert v["official"]["ran"] and not v["official"]["passed"]
    assert audit_configs_under(tmp_path, REPO) == [] and leftover_workdirs(tmp_names) == set()


@pytest.mark.loadgen
def test_test07_runs_the_official_verifier_with_the_users_accuracy_command(tmp_path):
    """The accuracy command is the user's (gpt-oss-120b's evaluator needs its model's tokenizer and
    data): here a script standing in for it prints a score, and the official verifier compares it
    with compliance/TEST07/gpt-oss-120b/audit.config's threshold (60.698)."""
    args = _gpt_oss_stand_in(tmp_path, {"dist": "fixed", "value": 4})
    scorer = tmp_path / "score.py"
    scorer.write_text("import json, sys\nn = len(json.load(open(sys.argv[1])))\n"
                      "print({'exact_match': float(sys.argv[2]), 'samples': n})\n")
    p = audit(tmp_path, *args, "--audit_tests=TEST07")
    assert p.returncode == 1 and "needs --audit_accuracy_script" in p.stdout
    p = audit(tmp_path, *args, "--audit_tests=TEST07", "--audit_verify_only",
              f"--audit_accuracy_script={sys.executable} {scorer} {{accuracy_log}} 61.5")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    verify = (tmp_path / "results/local/gpt-oss-120b/Offline/TEST07/official/TEST07/verify_accuracy.txt").read_text()
    logged = int(verify.split("'samples': ")[1].split("}")[0])
    assert logged >= 990  # audit.config: min_query_count and accuracy_log_sampling_target 990
    assert "Accuracy threshold: 60.698" in verify and "TEST PASS" in verify
    p = audit(tmp_path, *args, "--audit_tests=TEST07", "--audit_verify_only",
              f"--audit_accuracy_script={sys.executable} {scorer} {{accuracy_log}} 60.0")
    assert p.returncode == 1 and "TEST07 gpt-oss-120b Offline: FAIL" in p.stdout


@pytest.mark.loadgen
@pytest.mark.slow
def test_the_tiny_model_on_the_hf_core_passes_test06(tmp_path, tmp_names):
    """The project's tiny Llama through the real hf core (a model process): its outputs end as a
    real model's do (EOS or the length limit), and the official verifier passes them."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "llmlib.compliance", f"--results_dir={tmp_path / 'results'}",
                        "--benchmarks=tiny", "--scenarios=Offline", "--show_progress=false",
                        f"--mlperf_inference_dir={REFERENCE}"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "results" / "local" / "tiny" / "Offline" / "TEST06"
    assert "TEST06 verification complete" in (run / "official" / "TEST06" / "verify_accuracy.txt").read_text()
    assert audit_configs_under(tmp_path, REPO) == [] and leftover_workdirs(tmp_names) == set()
