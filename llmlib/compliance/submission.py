"""Submission staging and checking: finished runs laid out as MLPerf's submission tree, then the official checker.

`python -m llmlib.compliance.submission stage|check [--name=value ...]` (make stage_submission / check_submission).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from llmlib.compliance.names import required_tests, submission_model
from llmlib.errors import ComplianceError, ConfigError, HarnessError
from llmlib.factory import repo_root

ROUND = "v6.1"
#: The LLM benchmarks of the round, as the checker names them (tools/submission/submission_checker/
#: constants.py, MODEL_CONFIG["v6.1"]["models"]); the checker crashes on names outside its list
#: (e.g. llama2-70b-99), so staging refuses them first.
ROUND_MODELS = ("llama3.1-8b", "llama3.1-8b-edge", "llama2-70b-99.9", "deepseek-r1", "gpt-oss-120b")

#: Quick-run LoadGen overrides: a run whose config.json shows one of these given on the command
#: line (or in code, or by the environment) is not a submission run.
QUICK_RUN_FIELDS = ("server_target_qps", "offline_expected_qps", "min_duration_ms", "max_duration_ms",
                    "min_query_count", "max_query_count", "performance_sample_count")

#: truncate_accuracy_log.py keeps this many characters from each end of mlperf_log_accuracy.json.
VIEWABLE_SIZE = 4096

MEASUREMENT_FIELDS = ("input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
                      "weight_transformations")


# --- accuracy logs as truncate_accuracy_log.py leaves them ------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def truncated_log_text(path: Path) -> str | None:
    """The first and last 4096 characters with "\\n\\n...\\n\\n" between, or None when the file is
    smaller than that (the official tool leaves it as it is)."""
    if path.stat().st_size < VIEWABLE_SIZE:
        return None
    text = path.read_text()
    return text[:VIEWABLE_SIZE] + "\n\n...\n\n" + text[-VIEWABLE_SIZE:]


def stage_accuracy_log(src_log: Path, dst_dir: Path, accuracy_txt: str | None) -> None:
    """Copy an accuracy log truncated, and write accuracy.txt with its sha256 (`\\nhash=...\\n` appended
    to the scores' text as it is, or alone for TEST07/TEST09), as truncate_accuracy_log.py does."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(src_log)
    text = truncated_log_text(src_log)
    dst_log = dst_dir / "mlperf_log_accuracy.json"
    if text is None:
        if not (dst_log.exists() and dst_log.samefile(src_log)):
            shutil.copyfile(src_log, dst_log)
    else:
        with open(dst_dir / "mlperf_log_accuracy.json", "w") as f:
            f.write(text)
    body = f"hash={digest}\n" if accuracy_txt is None else accuracy_txt + f"\nhash={digest}\n"
    (dst_dir / "accuracy.txt").write_text(body)


# --- the system description -------------------------------------------------------------------------------
def detect_system() -> dict[str, Any]:
    """What the machine says about itself (the user's system file overrides every field)."""
    out: dict[str, Any] = {"operating_system": f"{platform.system()} {platform.release()}",
                           "host_processor_core_count": os.cpu_count() or 0, "number_of_nodes": 1,
                           "host_processors_per_node": 1}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        if m:
            out["host_processor_model_name"] = m.group(1).strip()
        sockets = {ln.split(":")[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("physical id")}
        out["host_processors_per_node"] = max(1, len(sockets))
    except OSError:
        pass
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if m:
            out["host_memory_capacity"] = f"{int(m.group(1)) / 1024 / 1024:.0f} GB"
    except OSError:
        pass
    usage = shutil.disk_usage("/")
    out["host_storage_capacity"] = f"{usage.total / 1e9:.0f} GB"
    gpus = _nvidia_gpus()
    # The checker wants a non-empty value; a CPU-only system says "0" (the number 0 reads as empty).
    out["accelerators_per_node"] = len(gpus) if gpus else "0"
    if gpus:
        out["accelerator_model_name"] = gpus[0][0]
        out["accelerator_memory_capacity"] = gpus[0][1]
    else:
        out["accelerator_model_name"] = "N/A"
        out["accelerator_memory_capacity"] = "N/A"
    try:
        import torch  # the hf core's framework, when installed

        out["framework"] = f"PyTorch {torch.__version__}"
    except ImportError:
        pass
    return out


def _nvidia_gpus() -> list[tuple[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [tuple(x.strip() for x in ln.split(",", 1)) for ln in text.splitlines() if "," in ln]


def load_system_description(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no system description (keep one under configs/submission/<system>.yaml, "
                          "or name it with --system_description)")
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML/JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of system description fields")
    return data


def system_json(description: dict[str, Any], *, division: str, submitter: str) -> dict[str, Any]:
    """systems/<system>.json: the detected facts, the user's description over them, then division
    and submitter (the staging's own)."""
    out = detect_system()
    out.update({k: v for k, v in description.items() if k != "measurements"})
    out["division"], out["submitter"] = division, submitter
    return out


# --- the run folders --------------------------------------------------------------------------------------
def _read_config(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise ComplianceError(f"{run_dir}: no config.json (not a harness run folder)")
    return {row["name"]: row for row in json.loads(path.read_text())}


def quick_run_overrides(run_dir: Path) -> list[str]:
    """The quick-run flags this run was given outside the configuration files, as `--name=value (source)`."""
    rows = _read_config(run_dir)
    out = []
    for name in QUICK_RUN_FIELDS:
        row = rows.get(name)
        if row is None or row["value"] is None:
            continue
        src = str(row["source"])
        if src in ("command line", "explicit", "run_audit_harness") or src.startswith("env"):
            out.append(f"--{name}={row['value']} ({src})")
    return out


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ComplianceError(f"{path}: missing ({what})")
    return path


def _check_run(run_dir: Path, what: str, stage_anyway: bool) -> dict[str, dict]:
    if not run_dir.is_dir():
        raise ComplianceError(f"{run_dir}: no {what} run to stage")
    summary = json.loads(_require(run_dir / "summary.json", f"the {what} run's summary").read_text())
    if not summary.get("ok"):
        raise ComplianceError(f"{run_dir}: the {what} run failed requests or did not finish; it cannot be staged")
    overrides = quick_run_overrides(run_dir)
    if overrides and not stage_anyway:
        raise ComplianceError(f"{run_dir}: made with quick-run overrides {', '.join(overrides)}; "
                              "rerun without them, or stage it anyway with --stage_anyway")
    if what == "performance" and summary.get("validity") != "VALID" and not stage_anyway:
        raise ComplianceError(f"{run_dir}: the performance run is {summary.get('validity')}, not VALID "
                              "(--stage_anyway stages it)")
    return _read_config(run_dir)


def stage_one(config, benchmark, scenario: str, out_root: Path, *, stage_anyway: bool) -> Path:
    """One benchmark x scenario into <division>/<submitter>/results/<system>/<model>/<scenario>/."""
    from llmlib.harness import results_dir_for

    model = submission_model(benchmark.name)
    if model not in ROUND_MODELS:
        raise ComplianceError(f"{benchmark.name}: not a benchmark of MLPerf Inference {ROUND} "
                              f"(the checker knows {', '.join(ROUND_MODELS)}); it cannot be staged")
    src = results_dir_for(config.with_values(test_mode="PerformanceOnly"), benchmark.name, scenario).parent
    perf, acc = src / "performance", src / "accuracy"
    perf_config = _check_run(perf, "performance", stage_anyway)
    _check_run(acc, "accuracy", stage_anyway)
    accuracy_txt = acc / "accuracy.txt"
    if not accuracy_txt.is_file():
        raise ComplianceError(f"{accuracy_txt}: missing; the accuracy run must be scored first "
                              "(accuracy.txt in the checker's format)")
    tests = required_tests(benchmark.name)
    for test in tests:
        verdict = src / test / "verification.json"
        if not verdict.is_file():
            raise ComplianceError(f"{src / test}: no verified {test} run (make run_audit_harness first)")
        if not json.loads(verdict.read_text()).get("passed") and not stage_anyway:
            raise ComplianceError(f"{src / test}: {test} did not pass (see verification.txt there)")

    dst = out_root / "results" / config.system_name / model / scenario
    if dst.exists():
        shutil.rmtree(dst)
    run_1 = dst / "performance" / "run_1"
    run_1.mkdir(parents=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copyfile(_require(perf / name, "LoadGen's log"), run_1 / name)
    acc_dst = dst / "accuracy"
    acc_dst.mkdir()
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copyfile(_require(acc / name, "LoadGen's log"), acc_dst / name)
    stage_accuracy_log(_require(acc / "mlperf_log_accuracy.json", "the accuracy log"), acc_dst,
                       accuracy_txt.read_text())
    for test in tests:
        official = src / test / "official" / test
        if not official.is_dir():
            raise ComplianceError(f"{official}: no official verifier output ({test} needs run_verification.py's files)")
        shutil.copytree(official, dst / test)
        if test in ("TEST07", "TEST09"):
            log = dst / test / "accuracy" / "mlperf_log_accuracy.json"
            if log.is_file():
                stage_accuracy_log(log, log.parent, None)
    # measurements: user.conf, mlperf.conf, README.md, measurements.json, the resolved settings
    user_conf = Path(perf_config["user_conf"]["value"] or Path(perf_config["config_dir"]["value"]) / "user.conf")
    user_conf = user_conf if user_conf.is_absolute() else repo_root() / user_conf
    shutil.copyfile(_require(user_conf, "the run's user.conf"), dst / "user.conf")
    mlperf_conf = _mlperf_conf(config)
    if mlperf_conf is not None:
        shutil.copyfile(mlperf_conf, dst / "mlperf.conf")
    shutil.copyfile(perf / "config.json", dst / "harness_config.json")
    return dst


def _mlperf_conf(config) -> Path | None:
    if config.mlperf_inference_dir:
        path = Path(config.mlperf_inference_dir) / "loadgen" / "mlperf.conf"
        if path.is_file():
            return path
    return None


def stage(argv: Sequence[str]) -> int:
    from llmlib.benchmarks import parse_scenario
    from llmlib.cli import resolve_for
    from llmlib.config import parse_cli, resolve

    try:
        cli = parse_cli(argv)
        base = resolve(cli=cli, layers=())
        config_dir = Path(base.config_dir) if Path(base.config_dir).is_absolute() else repo_root() / base.config_dir
        desc_path = Path(base.system_description) if base.system_description else \
            config_dir / "submission" / f"{base.system_name}.yaml"
        description = load_system_description(desc_path)
        submitter = base.submitter or str(description.get("submitter") or "")
        if not submitter:
            raise ConfigError(f"no submitter: give --submitter or a `submitter:` in {desc_path}")
        out = Path(base.submission_dir)
        out = out if out.is_absolute() else repo_root() / out
        org = out / base.division / submitter
        staged = []
        for b in base.benchmarks:
            for s in base.scenarios:
                config, benchmark = resolve_for(cli, b, parse_scenario(s))
                scenario = benchmark.scenario(s).name
                dst = stage_one(config, benchmark, scenario, org, stage_anyway=base.stage_anyway)
                _write_measurements(dst, description, benchmark, config)
                staged.append((submission_model(benchmark.name), scenario, dst))
        systems = org / "systems"
        systems.mkdir(parents=True, exist_ok=True)
        (systems / f"{base.system_name}.json").write_text(
            json.dumps(system_json(description, division=base.division, submitter=submitter), indent=2) + "\n")
        # v6.1 wants the code under <submitter>/src (SRC_PATH in the checker's constants.py)
        for model in {m for m, _, _ in staged}:
            code = org / "src" / model
            code.mkdir(parents=True, exist_ok=True)
            (code / "README.md").write_text(f"# {model}\n\nRun with the llmlib harness: `make run_harness "
                                            "RUN_ARGS=\"--benchmarks=...\"` (see the project README).\n")
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for model, scenario, dst in staged:
        print(f"staged {model:<20} {scenario:<12} -> {dst}")
    print(f"submission tree: {out}")
    return 0


def _write_measurements(dst: Path, description: dict, benchmark, config) -> None:
    given = dict(description.get("measurements") or {})
    per_benchmark = given.pop(submission_model(benchmark.name), None) or {}
    fields = {"input_data_types": "int32", "retraining": "No", "weight_transformations": "No",
              "weight_data_types": "fp32", "starting_weights_filename": config.hf_model_path or benchmark.name}
    fields.update({k: v for k, v in given.items() if not isinstance(v, dict)})
    fields.update(per_benchmark)
    (dst / "measurements.json").write_text(json.dumps(fields, indent=2) + "\n")
    (dst / "README.md").write_text(
        f"# {submission_model(benchmark.name)} {dst.name}\n\n"
        f"Measured with the llmlib harness (core `{config.core_type}`), benchmark definition "
        f"`configs/benchmarks/{benchmark.name}.yaml`. `harness_config.json` holds every resolved setting "
        f"with its source; `user.conf` and `mlperf.conf` are the LoadGen settings of the run.\n")


# --- the official checker ---------------------------------------------------------------------------------
#: One complaint of the checker: "[timestamp file.py:123 ERROR] text" (or WARNING: "accuracy not met" is one).
_COMPLAINT_RE = re.compile(r"^\[[^\]]* (ERROR|WARNING)\] (.*)$")


def checker_dir(config) -> Path:
    if not config.mlperf_inference_dir:
        raise ConfigError("--mlperf_inference_dir is not set: name a checkout of mlcommons/inference "
                          "(its tools/submission/ holds the checker)")
    path = Path(config.mlperf_inference_dir) / "tools" / "submission"
    if not (path / "submission_checker" / "main.py").is_file():
        raise ConfigError(f"--mlperf_inference_dir={config.mlperf_inference_dir}: no "
                          "tools/submission/submission_checker/main.py there")
    return path


def run_checker(tools: Path, submission: Path, *, version: str = ROUND, workdir: Path | None = None,
                timeout_s: float = 1800) -> dict[str, Any]:
    """`python -m submission_checker.main --input DIR --version v6.1` from a temporary copy of
    tools/submission (it writes summary.csv into its working directory). Returns its exit code,
    its ERROR lines and its full output."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="checker-") as tmp:
        copy = Path(tmp) / "submission"
        shutil.copytree(tools, copy)
        proc = subprocess.run([sys.executable, "-m", "submission_checker.main", "--input", str(submission),
                               "--version", version, "--csv", str(Path(tmp) / "summary.csv")],
                              cwd=copy, capture_output=True, text=True, timeout=timeout_s)
        csv = (Path(tmp) / "summary.csv").read_text() if (Path(tmp) / "summary.csv").is_file() else ""
    text = proc.stdout + proc.stderr
    root = str(submission)
    complaints = []
    for ln in text.splitlines():
        m = _COMPLAINT_RE.match(ln.strip())
        if m and not (m.group(1) == "WARNING" and "skipped" in m.group(2)):
            complaints.append(f"{m.group(1)} {m.group(2).replace(root, '<submission>')}")
    errors = [c for c in complaints if c.startswith("ERROR")]
    m = re.search(r"\bResults=(\d+), NoResults=(\d+)", text)
    results = int(m.group(1)) if m else 0
    return {"returncode": proc.returncode, "errors": errors, "complaints": complaints, "output": text,
            "summary_csv": csv, "results": results}


def verdict_of(result: dict[str, Any]) -> str:
    """ACCEPTED only when the checker exits 0, complains of nothing and counted at least one result
    (on a tree with no results it says "submission looks OK")."""
    return "ACCEPTED" if result["returncode"] == 0 and not result["errors"] and result["results"] > 0 else "REJECTED"


def check(argv: Sequence[str]) -> int:
    from llmlib.config import parse_cli, resolve

    try:
        base = resolve(cli=parse_cli(argv), layers=())
        tools = checker_dir(base)
        sub = Path(base.submission_dir)
        sub = sub if sub.is_absolute() else repo_root() / sub
        if not sub.is_dir():
            raise ConfigError(f"--submission_dir={base.submission_dir}: no such folder (make stage_submission first)")
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_checker(tools, sub.resolve())
    for c in result["complaints"]:
        print(c)
    tail = [ln for ln in result["output"].splitlines() if re.search(r"Results=|SUMMARY", ln)]
    print("\n".join(tail[-8:]))
    verdict = verdict_of(result)
    why = "" if result["results"] or result["errors"] else "; it found no results"
    print(f"\nsubmission checker ({ROUND}): {verdict}; {len(result['errors'])} complaint(s), "
          f"{result['results']} result(s){why}")
    return 0 if verdict == "ACCEPTED" else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("stage", "check"):
        print("usage: python -m llmlib.compliance.submission stage|check [--name=value ...]", file=sys.stderr)
        return 2
    return stage(argv[1:]) if argv[0] == "stage" else check(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
