"""Compliance runs: each benchmark x scenario x test with its official audit.config, then verified.

`python -m llmlib.compliance` (`make run_audit_harness`) runs a child `python -m llmlib` per test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmlib.compliance.guard import AUDIT_CONFIG_NAME
from llmlib.compliance.names import KNOWN_TESTS, required_tests, submission_model
from llmlib.errors import ComplianceError, ConfigError
from llmlib.factory import repo_root

#: The line LoadGen writes to mlperf_log_detail.txt when it found and applied an audit.config.
AUDIT_FOUND = "Found Audit Config file"

#: Flags run_audit_harness sets itself for each child run.
_CHILD_OWNED = ("--benchmarks", "--scenarios", "--audit_tests", "--audit_test", "--audit_config",
                "--audit_verify_only", "--test_mode")

MAX_NAMED = 20  # offending samples named per check


def inference_dir(config) -> Path:
    """The user's checkout of mlcommons/inference (--mlperf_inference_dir), checked for compliance/."""
    if not config.mlperf_inference_dir:
        raise ConfigError("--mlperf_inference_dir is not set: name a checkout of mlcommons/inference "
                          "(it holds compliance/TEST0x/audit.config and run_verification.py)")
    path = Path(config.mlperf_inference_dir).expanduser()
    if not (path / "compliance").is_dir():
        raise ConfigError(f"--mlperf_inference_dir={config.mlperf_inference_dir}: no compliance/ folder there "
                          "(expected a checkout of mlcommons/inference)")
    return path.resolve()


def official_audit_config(root: Path, test: str, model: str) -> Path:
    """compliance/<TEST>/<model>/audit.config when the test has one per model, else compliance/<TEST>/audit.config."""
    folder = root / "compliance" / test
    for path in (folder / model / AUDIT_CONFIG_NAME, folder / AUDIT_CONFIG_NAME):
        if path.is_file():
            return path
    raise ComplianceError(f"{root / 'compliance' / test}: no audit.config for {model} "
                          f"(looked in {test}/{model}/ and {test}/)")


def audit_settings(path: Path) -> dict[str, str]:
    """`*.*.key = value` lines of an audit.config, by key (the thresholds TEST07/TEST09 read)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip().split(".")[-1]] = value.strip()
    return out


def compliance_tests_for(config, benchmark_name: str) -> list[str]:
    """--audit_tests, else the tests the benchmark requires; unknown names are an error."""
    tests = list(config.audit_tests) or list(required_tests(benchmark_name))
    for t in tests:
        if t not in KNOWN_TESTS:
            raise ConfigError(f"--audit_tests: {t!r} is not one of the LLM compliance tests {', '.join(KNOWN_TESTS)}")
    if not tests:
        raise ConfigError(f"{benchmark_name} requires no compliance test in this round; name one with --audit_tests")
    return tests


# --- verification ---------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""
    samples: list[str] = field(default_factory=list)  # the offending samples, "qsl_idx N (seq_id M): why"


@dataclass
class Verdict:
    test: str
    benchmark: str
    scenario: str
    run_dir: str
    checks: list[CheckResult] = field(default_factory=list)
    official: dict | None = None

    @property
    def passed(self) -> bool:
        official_ok = self.official is None or self.official.get("passed", False)
        return bool(self.checks) and all(c.passed for c in self.checks) and official_ok

    def lines(self) -> list[str]:
        out = [f"{self.test} {self.benchmark} {self.scenario}: {'PASS' if self.passed else 'FAIL'}   ({self.run_dir})"]
        for c in self.checks:
            out.append(f"  {c.name:<22}: {'pass' if c.passed else 'FAIL'}  {c.detail}")
            out.extend(f"      {s}" for s in c.samples[:MAX_NAMED])
            if len(c.samples) > MAX_NAMED:
                out.append(f"      ... and {len(c.samples) - MAX_NAMED} more")
        if self.official is not None:
            out.append(f"  {'official verifier':<22}: {'pass' if self.official.get('passed') else 'FAIL'}  "
                       f"{self.official.get('detail', '')}")
        return out

    def to_json(self) -> dict:
        return {"test": self.test, "benchmark": self.benchmark, "scenario": self.scenario, "run_dir": self.run_dir,
                "passed": self.passed, "checks": [asdict(c) for c in self.checks], "official": self.official}


def _load_log(run_dir: Path) -> list[dict]:
    path = run_dir / "mlperf_log_accuracy.json"
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ComplianceError(f"{path}: no accuracy log (did the compliance run happen?)") from err
    except json.JSONDecodeError as err:
        raise ComplianceError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(entries, list):
        raise ComplianceError(f"{path}: expected a JSON list of LoadGen entries")
    return entries


def _tokens(entry: dict, key: str) -> np.ndarray:
    data = bytes.fromhex(entry.get(key) or "")
    if len(data) % 4:
        raise ValueError(f"{key} has {len(data)} bytes, not 32-bit tokens")
    return np.frombuffer(data, dtype="<i4")


def _who(entry: dict) -> str:
    return f"qsl_idx {entry.get('qsl_idx')} (seq_id {entry.get('seq_id')})"


def check_run(run_dir: Path) -> list[CheckResult]:
    """What every compliance run must show: LoadGen read audit.config, and no request failed or went missing."""
    out = []
    detail = run_dir / "mlperf_log_detail.txt"
    found = detail.is_file() and AUDIT_FOUND in detail.read_text(errors="replace")
    out.append(CheckResult("audit.config applied", found,
                           "LoadGen logged it" if found else f"no '{AUDIT_FOUND}' in {detail}"))
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        ok = bool(s.get("ok"))
        out.append(CheckResult("run complete", ok, f"issued {s.get('issued')} = completed {s.get('completed')} "
                               f"+ failed {s.get('failed')}" + ("" if ok else f"; {s.get('run_error') or 'failed'}")))
    else:
        out.append(CheckResult("run complete", False, f"no {summary}"))
    return out


def check_test06(entries: list[dict], *, eos_token_id: int, streaming: bool) -> list[CheckResult]:
    """TEST06's three checks (compliance/TEST06/README.md), per sample, naming each offender: the
    logged token_count equals the logged tokens; at most one EOS ends an output; the first token
    reported on its own (Server/Interactive) is the output's first token."""
    length, eos, first, malformed = [], [], [], []
    for e in entries:
        try:
            data = _tokens(e, "data")
            token_data = _tokens(e, "token_data") if streaming else None
            count = int(e["token_count"])
        except (KeyError, TypeError, ValueError) as err:
            malformed.append(f"{_who(e)}: {err}")
            continue
        if count != len(data):
            length.append(f"{_who(e)}: token_count {count} but {len(data)} tokens logged")
        trailing = 0
        for tok in data[::-1]:
            if tok != eos_token_id:
                break
            trailing += 1
        if trailing >= 2:
            eos.append(f"{_who(e)}: ends with {trailing} EOS tokens ({eos_token_id})")
        if streaming and len(data) and (not len(token_data) or token_data[0] != data[0]):
            got = int(token_data[0]) if len(token_data) else "none"
            first.append(f"{_who(e)}: first token reported {got}, output starts with {int(data[0])}")
    checks = [
        CheckResult("logged samples", bool(entries) and not malformed,
                    f"{len(entries)} samples" + (f", {len(malformed)} malformed" if malformed else ""), malformed),
        CheckResult("sample length", not length, f"{len(length)} with token_count != logged tokens", length),
        CheckResult("EOS", not eos, f"{len(eos)} ending with 2 or more EOS", eos),
    ]
    detail = f"{len(first)} mismatched" if streaming else "skipped (Offline)"
    checks.append(CheckResult("first token", not first, detail, first))
    return checks


def check_test09(entries: list[dict], settings: dict[str, str]) -> list[CheckResult]:
    """TEST09: the mean output length lies within the audit.config's bounds."""
    try:
        lo, hi = float(settings["test09_min_output_tokens"]), float(settings["test09_max_output_tokens"])
    except (KeyError, ValueError) as err:
        return [CheckResult("output length bounds", False, f"audit.config has no valid TEST09 bounds ({err})")]
    lens = [len(_tokens(e, "data")) for e in entries]
    mean = sum(lens) / len(lens) if lens else 0.0
    ok = bool(lens) and lo <= mean <= hi
    return [CheckResult("mean output tokens", ok, f"{mean:.2f} over {len(lens)} samples, bounds [{lo}, {hi}]")]


def run_official_verifier(root: Path, test: str, run_dir: Path, scenario: str, audit_copy: Path, workdir: Path,
                          accuracy_script: str = "") -> dict:
    """compliance/<TEST>/run_verification.py as a subprocess in `workdir` (TEST07/09 write their
    verify_*.txt into the working directory); its submission files go to <run_dir>/official/<TEST>/."""
    script = root / "compliance" / test / "run_verification.py"
    if not script.is_file():
        return {"ran": False, "passed": True, "detail": f"not run: no {script}"}
    out_dir = run_dir / "official"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = [sys.executable, str(script), "-c", str(run_dir), "-o", str(out_dir)]
    if test == "TEST06":
        # -e is left at its default (2): the script's argparse has no type=int, so any id given on
        # the command line is a string and its EOS check would never match a token.
        cmd += ["-s", scenario]
    elif test == "TEST07":
        if not accuracy_script:
            return {"ran": False, "passed": False,
                    "detail": "not run: TEST07 needs --audit_accuracy_script (a command with {accuracy_log})"}
        cmd += ["--accuracy-script", accuracy_script, "--audit-config", str(audit_copy)]
    else:
        cmd += ["--audit-config", str(audit_copy)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=3600)
    text = proc.stdout + proc.stderr
    if test == "TEST06":
        passed = proc.returncode == 0 and "TEST06 verification complete" in text
        verify = out_dir / "TEST06" / "verify_accuracy.txt"
    else:
        name = "verify_accuracy.txt" if test == "TEST07" else "verify_output_len.txt"
        verify = out_dir / test / name
        passed = proc.returncode == 0 and verify.is_file() and "TEST PASS" in verify.read_text()
    lines = [ln for ln in text.splitlines() if re.search(r"pass|fail|error|verification", ln, re.I)]
    return {"ran": True, "passed": passed, "returncode": proc.returncode, "command": cmd,
            "detail": "; ".join(lines[-6:]) or f"exit code {proc.returncode}", "output_dir": str(out_dir / test)}


def verify(run_dir: Path, *, test: str, benchmark, scenario: str, root: Path, audit_copy: Path, workdir: Path,
           accuracy_script: str = "") -> Verdict:
    """The project's own checks, then the official verifier; writes verification.json/.txt into run_dir."""
    verdict = Verdict(test=test, benchmark=benchmark.name, scenario=scenario, run_dir=str(run_dir))
    verdict.checks = check_run(run_dir)
    try:
        entries = _load_log(run_dir)
    except ComplianceError as err:
        verdict.checks.append(CheckResult("accuracy log", False, str(err)))
        entries = None
    if entries is not None:
        if test == "TEST06":
            verdict.checks += check_test06(entries, eos_token_id=benchmark.eos_token_id,
                                           streaming=benchmark.scenario(scenario).streaming)
        elif test == "TEST09":
            verdict.checks += check_test09(entries, audit_settings(audit_copy))
        verdict.official = run_official_verifier(root, test, run_dir, scenario, audit_copy, workdir, accuracy_script)
    (run_dir / "verification.json").write_text(json.dumps(verdict.to_json(), indent=1, default=str) + "\n")
    (run_dir / "verification.txt").write_text("\n".join(verdict.lines()) + "\n")
    return verdict


# --- running ----------------------------------------------------------------------------------------------
#: Path flags the harness itself resolves against the repository, wherever it runs.
_REPO_RELATIVE = ("--results_dir", "--config_dir", "--user_conf")


def child_args(argv: Sequence[str], benchmark: str, scenario: str, test: str, audit_copy: Path,
               cwd: Path | None = None) -> list[str]:
    """The child's command line: the user's flags, with relative paths that exist from the caller's
    working directory made absolute (the child runs elsewhere), and the run's own flags."""
    cwd = Path.cwd() if cwd is None else cwd
    keep = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in _CHILD_OWNED:
            continue
        if (sep and value and name not in _REPO_RELATIVE and name.endswith(("_path", "_dir", "_file"))
                and not Path(value).is_absolute() and (cwd / value).exists()):
            arg = f"{name}={(cwd / value).resolve()}"
        keep.append(arg)
    return keep + [f"--benchmarks={benchmark}", f"--scenarios={scenario}", "--test_mode=PerformanceOnly",
                   f"--audit_test={test}", f"--audit_config={audit_copy}"]


def audit_one(argv: Sequence[str], config, benchmark, scenario: str, test: str, *, verify_only: bool) -> Verdict:
    """One compliance run in a fresh temporary working directory holding only a copy of the
    official audit.config; the directory (and so the copy) is removed however the run ends."""
    from llmlib.harness import results_dir_for

    root = inference_dir(config)
    official = official_audit_config(root, test, submission_model(benchmark.name))
    run_config = config.with_values(source="run_audit_harness", audit_test=test, test_mode="PerformanceOnly")
    run_dir = results_dir_for(run_config, benchmark.name, scenario)
    with tempfile.TemporaryDirectory(prefix=f"audit-{test}-") as tmp:
        workdir = Path(tmp)
        audit_copy = workdir / AUDIT_CONFIG_NAME
        shutil.copyfile(official, audit_copy)
        if not verify_only:
            if run_dir.exists():  # an earlier run's logs must never be verified as this run's
                shutil.rmtree(run_dir)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([str(repo_root()), *filter(None, [env.get("PYTHONPATH")])])
            rc = subprocess.call([sys.executable, "-m", "llmlib", *child_args(argv, benchmark.name, scenario, test,
                                                                               audit_copy)], cwd=workdir, env=env)
            if rc == 2 or not (run_dir / "mlperf_log_detail.txt").is_file():
                verdict = Verdict(test=test, benchmark=benchmark.name, scenario=scenario, run_dir=str(run_dir))
                verdict.checks.append(CheckResult("run", False, f"the compliance run did not run (exit code {rc})"))
                return verdict
        elif not run_dir.is_dir():
            raise ComplianceError(f"{run_dir}: no compliance run to verify (run without --audit_verify_only first)")
        verdict = verify(run_dir, test=test, benchmark=benchmark, scenario=scenario, root=root, audit_copy=audit_copy,
                         workdir=workdir, accuracy_script=config.audit_accuracy_script)
        (run_dir / "audit_config_source.txt").write_text(f"{official}\n")
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    from llmlib.benchmarks import parse_scenario
    from llmlib.cli import resolve_for
    from llmlib.config import parse_cli, resolve
    from llmlib.errors import HarnessError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cli = parse_cli(argv)
        base = resolve(cli=cli, layers=())
        plan = []
        for b in base.benchmarks:
            for s in base.scenarios:
                config, benchmark = resolve_for(cli, b, parse_scenario(s))
                for test in compliance_tests_for(config, benchmark.name):
                    plan.append((config, benchmark, benchmark.scenario(s).name, test))
        inference_dir(base)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verdicts = []
    for config, benchmark, scenario, test in plan:
        try:
            verdicts.append(audit_one(argv, config, benchmark, scenario, test, verify_only=base.audit_verify_only))
        except HarnessError as err:
            print(f"error: {benchmark.name} {scenario} {test}: {err}", file=sys.stderr)
            return 2
    print("\n" + "=" * 72)
    for v in verdicts:
        print("\n".join(v.lines()))
    return 0 if verdicts and all(v.passed for v in verdicts) else 1
