"""Command line: `python -m llmlib --benchmarks=B --scenarios=S --core_type=C ...` (what
`make run_harness RUN_ARGS=...` calls). Runs every benchmark x scenario and prints the summaries."""

from __future__ import annotations

import json
import logging
import os
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
from llmlib.secrets import install_log_filter

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
        print("benchmarks:", ", ".join(list_benchmarks()))
        print("cores:     ", ", ".join(CORES.names()))
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

    if len(resolved) == 1:
        config, benchmark, scenario = resolved[0]
        return _run_one(config, benchmark, scenario)
    # LoadGen keeps process-wide state (it flags a second user.conf load in one process as
    # "Multiple conf files are used"), so each benchmark x scenario runs in its own process.
    rows = []
    for config, benchmark, scenario in resolved:
        child = [a for a in argv if a.partition("=")[0] not in ("--benchmarks", "--scenarios")]
        child += [f"--benchmarks={benchmark.name}", f"--scenarios={scenario}"]
        rc = subprocess.call([sys.executable, "-m", "llmlib", *child])
        rows.append((benchmark.name, scenario, config, rc))
    from llmlib.harness import results_dir_for

    print("\n" + "=" * 72)
    worst = 0
    for name, scenario, config, rc in rows:
        summary = results_dir_for(config, name, scenario) / "summary.json"
        worst = max(worst, rc)
        if rc == 2 or not summary.is_file():
            print(f"{name:<28} {scenario:<12} did not run (exit code {rc})")
            continue
        o = json.loads(summary.read_text())
        print(f"{name:<28} {scenario:<12} {o['mode']:<16} {o['validity'] or '-':<8} issued {o['issued']} = "
              f"completed {o['completed']} + failed {o['failed']}  [{'ok' if o['ok'] else 'FAILED'}]")
    return worst


def _run_one(config, benchmark, scenario: str) -> int:
    from llmlib.harness import format_summary, run_scenario

    try:
        outcome = run_scenario(config, benchmark, scenario)
    except HarnessError as err:
        print(f"error: {benchmark.name} {scenario}: {err}", file=sys.stderr)
        return 2
    print("\n" + format_summary(outcome), flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
