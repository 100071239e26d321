"""`python -m llmlib.ops generate_engines|run_llm_server|generate_disagg_config [--name=value ...]`: the
Makefile's ops targets, reading the same settings (RUN_ARGS, environment, configs/) as run_harness."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from llmlib.errors import HarnessError

COMMANDS = ("generate_engines", "run_llm_server", "generate_disagg_config")
USAGE = (f"usage: python -m llmlib.ops {{{','.join(COMMANDS)}}} [--name=value ...]\n"
         "Settings as for `python -m llmlib` (see its --help, group [ops]).")


def _say(text: str) -> None:
    print(text, flush=True)


def _resolved(argv: list[str]):
    from llmlib.benchmarks import parse_scenario
    from llmlib.cli import resolve_for
    from llmlib.config import parse_cli, resolve

    cli = parse_cli(argv)
    base = resolve(cli=cli, layers=())
    runs = [(b, parse_scenario(s)) for b in base.benchmarks for s in base.scenarios]
    if not runs:
        raise HarnessError("nothing to do: --benchmarks and --scenarios must not be empty")
    return [resolve_for(cli, b, s) + (s,) for b, s in runs]


def generate_engines(argv: list[str]) -> int:
    from llmlib.factory import repo_root
    from llmlib.ops.engines import plan, run_steps

    root = repo_root()
    resolved = _resolved(argv)
    seen: set[str] = set()
    plans = []
    for config, benchmark, scenario in resolved:  # every input checked before anything runs
        steps = [s for s in plan(config, benchmark, scenario, root=root) if s.shell() not in seen]
        seen.update(s.shell() for s in steps)
        plans.append((config, benchmark, scenario, steps))
    for config, benchmark, scenario, steps in plans:
        _say(f"## {benchmark.name} / {scenario}" + ("" if steps else ": nothing new (same steps as above)"))
        run_steps(steps, dry_run=config.dry_run, out=_say)
    return 0


def _one_server_config(argv: list[str]):
    resolved = _resolved(argv)
    names = sorted({b.name for _, b, _ in resolved})
    if len(names) > 1:
        raise HarnessError(f"--benchmarks={','.join(names)}: run_llm_server serves one benchmark's model at a time")
    if len({s for _, _, s in resolved}) > 1:
        _say(f"note: settings of the first scenario ({resolved[0][2]}) apply to the servers")
    return resolved[0]


def run_llm_server(argv: list[str]) -> int:
    from llmlib.factory import repo_root
    from llmlib.ops import disagg
    from llmlib.ops.launch import check_model, check_ports_free, plan_servers, serve, visible_gpus

    root = repo_root()
    config, benchmark, scenario = _one_server_config(argv)
    launch_type = os.environ.get(disagg.LAUNCH_TYPE_ENV, "")
    if launch_type or config.core_type == "trtllm_disagg":
        if launch_type not in ("worker", "leader"):
            raise HarnessError(f"{disagg.LAUNCH_TYPE_ENV}={launch_type!r}: expected worker (under mpirun -n "
                               "<instance size>) or leader (under mpirun -n 1)")
        if launch_type == "leader":
            return disagg.run_leader(config, root=root, out=_say)
        return disagg.run_worker(config, benchmark, scenario, root=root, gpus=visible_gpus(), out=_say)
    # a dry run may plan for the GPUs of another machine: --num_gpus
    gpus = config.num_gpus if config.dry_run and config.num_gpus else None
    specs = plan_servers(config, benchmark, scenario, root=root, gpus=gpus)
    if config.dry_run:
        for spec in specs:
            _say(f"# {spec.name} -> {spec.url} (ready: GET {spec.health_path} on port {spec.health_port})")
            for path, text in spec.files.items():
                _say(f"# file {path}:\n" + "".join(f"#   {ln}\n" for ln in text.splitlines()))
            _say(spec.shell())
        return 0
    check_model(config, benchmark, scenario, root=root)
    check_ports_free(specs)
    return serve(specs, timeout_s=config.server_ready_timeout_s, out=_say)


def generate_disagg_config(argv: list[str]) -> int:
    from llmlib.factory import repo_root
    from llmlib.ops import disagg
    from llmlib.ops.launch import _model

    config, benchmark, scenario = _one_server_config(argv)
    first = disagg.mpi_rank().rank == 0  # the other ranks of an mpirun only check the world size
    model = _model(config, benchmark, scenario, repo_root()) if first or config.dry_run else ""
    disagg.write_config(config, model, dry_run=config.dry_run, out=_say)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        return {"generate_engines": generate_engines, "run_llm_server": run_llm_server,
                "generate_disagg_config": generate_disagg_config}[command](rest)
    except HarnessError as err:
        print(f"error: {command}: {err}", file=sys.stderr, flush=True)
        return 1 if type(err).__name__ == "OpsError" else 2


if __name__ == "__main__":
    sys.exit(main())
