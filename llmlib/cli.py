"""Command line: `python -m llmlib --benchmarks=B --scenarios=S --core_type=C ...` (what
`make run_harness RUN_ARGS=...` calls). Runs every benchmark x scenario and prints the summaries."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from llmlib.benchmarks import list_benchmarks, load_benchmark, parse_scenario
from llmlib.config import Configuration, parse_cli, resolve, system_layers
from llmlib.cores import CORES
from llmlib.errors import HarnessError
from llmlib.factory import repo_root
from llmlib.fields import FIELDS
from llmlib.secrets import install_log_filter, redact

USAGE = """usage: python -m llmlib [--name=value ...]
       python -m llmlib --help | --list

Runs MLPerf LoadGen for each benchmark x scenario and prints a summary per run.
Precedence of a setting, highest first: command line > environment > configs/systems/<system>.yaml
(default < scenario < benchmark < benchmark.scenario) > the benchmark's `harness:` section > default.
"""


def help_text() -> str:
    lines = [USAGE]
    group = None
    for f in FIELDS.values():
        if f.group != group:
            group = f.group
            lines.append(f"\n[{group}]")
        env = f" (env {f.env})" if f.env else ""
        choices = f" {{{','.join(f.choices)}}}" if f.choices else ""
        lines.append(f"  --{f.name}={f.kind}{choices}  default {f.default!r}{env}\n      {f.help}")
    return "\n".join(lines)


def list_text(base) -> str:
    """Every benchmark with its MLPerf rounds and scenarios (those outside --round marked), and the cores."""
    config_dir = Path(base.config_dir) if os.path.isabs(base.config_dir) else repo_root() / base.config_dir
    rows = []
    for name in list_benchmarks(config_dir / "benchmarks"):
        spec = load_benchmark(name, configs_dir=config_dir / "benchmarks")
        rounds = "all" if spec.every_round else " ".join(spec.rounds)
        mark = " " if spec.in_round(base.round) else "*"
        rows.append(f"{mark} {name:<28} {rounds:<22} {', '.join(spec.scenarios)}")
    head = f"  {'benchmark':<28} {'rounds':<22} scenarios"
    foot = f"(* = not in {base.round}, the round --round picks; it runs with a warning)"
    return "\n".join([head, *rows, foot, "", "cores: " + ", ".join(CORES.names())])


def resolve_for(cli: dict, benchmark_name: str, scenario: str, env=None):
    """Resolve the configuration of one (benchmark, scenario): reads the benchmark's and the
    system's YAML layers, the command line and the environment. Returns (config, benchmark)."""
    base = resolve(cli=cli, env=env, layers=())
    config_dir = base.config_dir if os.path.isabs(base.config_dir) else str(repo_root() / base.config_dir)
    benchmark = load_benchmark(benchmark_name, configs_dir=Path(config_dir) / "benchmarks")
    benchmark.scenario(scenario)  # fails early, naming the supported scenarios
    layers = system_layers(config_dir, base.system_name, benchmark.name, scenario, benchmark.harness)
    with Configuration(layers=layers):
        core_type = resolve(cli=cli, env=env).core_type
    layers = system_layers(config_dir, base.system_name, benchmark.name, scenario, benchmark.harness, core_type)
    with Configuration(layers=layers):
        return resolve(cli=cli, env=env), benchmark


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    if "--list" in argv:
        try:
            print(list_text(resolve(cli=parse_cli([a for a in argv if a != "--list"]), layers=())))
        except HarnessError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_filter()  # no API key in any log line, whatever a server echoes
    try:
        cli = parse_cli(argv)
        base = resolve(cli=cli, layers=())
        runs = [(b, parse_scenario(s)) for b in base.benchmarks for s in base.scenarios]
        if not runs:
            raise HarnessError("nothing to run: --benchmarks and --scenarios must not be empty")
        resolved = [resolve_for(cli, b, s) + (s,) for b, s in runs]
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if base.print_config:
        for config, benchmark, scenario in resolved:
            print(f"# {benchmark.name} / {scenario}\n{config.format()}\n")
        return 0

    from llmlib.harness import check_results_dir

    try:
        for config, _, _ in resolved:
            check_results_dir(config)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(resolved) == 1:
        config, benchmark, scenario = resolved[0]
        return _run_one(config, benchmark, scenario)
    return _run_each_in_a_process(argv, resolved)


def _run_each_in_a_process(argv: list[str], resolved: list) -> int:
    """LoadGen keeps process-wide state (it flags a second user.conf load in one process as
    "Multiple conf files are used"), so each benchmark x scenario runs in its own process.

    Each child has a process group of its own, so a Ctrl-C at the terminal reaches this process
    only, which passes it on once: the child stops its run cleanly (a second Ctrl-C, passed on
    too, makes it exit at once), and no further run starts."""
    from llmlib.harness import results_dir_for

    rows = []
    current: list[subprocess.Popen] = []
    stopped: list[int] = []

    def forward(signum, frame) -> None:
        stopped.append(signum)
        for proc in current:
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for config, benchmark, scenario in resolved:
            if stopped:
                rows.append((benchmark.name, scenario, config, None))
                continue
            child = [a for a in argv if a.partition("=")[0] not in ("--benchmarks", "--scenarios")]
            child += [f"--benchmarks={benchmark.name}", f"--scenarios={scenario}"]
            proc = subprocess.Popen([sys.executable, "-m", "llmlib", *child], start_new_session=True)
            current[:] = [proc]
            rc = proc.wait()  # a signal runs `forward` and the wait goes on (PEP 475)
            current.clear()
            rows.append((benchmark.name, scenario, config, rc))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    print("\n" + "=" * 72)
    worst = 0
    for name, scenario, config, rc in rows:
        if rc is None:
            print(f"{name:<28} {scenario:<12} not started (interrupted)")
            continue
        summary = results_dir_for(config, name, scenario) / "summary.json"
        worst = max(worst, rc)
        if rc == 2 or not summary.is_file():
            print(f"{name:<28} {scenario:<12} did not run (exit code {rc})")
            continue
        o = json.loads(summary.read_text())
        verdict = o.get("verdict") or o["validity"] or "-"
        print(f"{name:<28} {scenario:<12} {o['mode']:<16} {verdict:<11} issued {o['issued']} = "
              f"completed {o['completed']} + failed {o['failed']}  [{'ok' if o['ok'] else 'FAILED'}]")
    if stopped:
        return {signal.SIGINT: 130, signal.SIGTERM: 143}.get(stopped[0], 130)
    return worst


def _run_one(config, benchmark, scenario: str) -> int:
    """One run in this process, with Ctrl-C / SIGTERM taken by a RunControl: exit code 0 (every
    request completed), 1 (requests failed or the run failed), 2 (bad input), 130 / 143 (stopped
    by SIGINT / SIGTERM)."""
    from llmlib.harness import format_summary, run_scenario
    from llmlib.run_control import RunControl

    if config.launch_servers:  # start the servers for this run, stop them after (llmlib/ops/launch.py)
        from llmlib.ops.launch import launched_servers

        try:
            with launched_servers(config, benchmark, scenario) as served:
                served = served.with_values(source="--launch_servers", launch_servers=False)
                return _run_one(served, benchmark, scenario)
        except HarnessError as err:
            print(redact(f"error: {benchmark.name} {scenario}: --launch_servers: {err}"), file=sys.stderr)
            return 1 if type(err).__name__ == "OpsError" else 2
    control = RunControl(grace_s=config.interrupt_grace_s).install()
    try:
        try:
            outcome = run_scenario(config, benchmark, scenario, control=control)
        except HarnessError as err:
            print(redact(f"error: {benchmark.name} {scenario}: {err}"), file=sys.stderr)
            return control.exit_code or 2
        print("\n" + redact(format_summary(outcome)), flush=True)
        if control.exit_code is not None:
            return control.exit_code
        return 0 if outcome.ok else 1
    finally:
        control.uninstall()


if __name__ == "__main__":
    sys.exit(main())
