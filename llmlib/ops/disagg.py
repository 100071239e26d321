"""Disaggregated serving: the YAML `make generate_disagg_config` writes (router, context and generation
servers), and the two mpirun roles of `make run_llm_server` chosen by MLPERF_DISAGG_LAUNCH_TYPE.

`worker` (under `mpirun -n <instance size>`): the ranks are dealt to the servers in the YAML's order,
context servers first, tp x pp ranks each; the first rank of each server starts it on its device slice
and the others hold their slot. `leader` (under `mpirun -n 1`): waits until every worker answers, then
starts the router command (`trtllm-serve disaggregated -c <yaml>` by default) and holds it.
The instance size is ctx servers x GPUs per ctx server + gen servers x GPUs per gen server.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmlib.errors import ConfigError, OpsError
from llmlib.ops.launch import (LOCAL_HOSTS, Launcher, ServerSpec, StopSignals, check_model, check_ports_free,
                               probe, server_spec, tail)

ROLES = ("context_servers", "generation_servers")
LAUNCH_TYPE_ENV = "MLPERF_DISAGG_LAUNCH_TYPE"


@dataclass(frozen=True, slots=True)
class MpiRank:
    rank: int
    size: int
    local_rank: int
    source: str  # which variables said so ("" when not under a launcher)


def mpi_rank(env: Mapping[str, str] | None = None) -> MpiRank:
    """Rank, world size and local rank from OpenMPI's, PMI's or Slurm's variables (0 / 1 / 0 outside)."""
    env = os.environ if env is None else env
    for source, r, s, lr in (("OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                             ("PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
                             ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if r in env and s in env:
            try:
                rank, size = int(env[r]), int(env[s])
                local = int(env.get(lr, rank))
            except ValueError as err:
                raise ConfigError(f"{r}/{s}: not integers ({err})") from None
            return MpiRank(rank, size, local, source)
    return MpiRank(0, 1, 0, "")


def instance_size(doc: Mapping[str, Any]) -> int:
    """ctx servers x (tp x pp) + gen servers x (tp x pp)."""
    total = 0
    for role in ROLES:
        sec = doc[role]
        total += int(sec.get("num_instances", len(sec["urls"]))) * \
            int(sec.get("tensor_parallel_size", 1)) * int(sec.get("pipeline_parallel_size", 1))
    return total


def config_path(config) -> Path:
    if not config.trtllm_disagg_config_path:
        raise ConfigError("--trtllm_disagg_config_path (env DISAGG_CONFIG_PATH) is empty: name the "
                          "disaggregated-serving YAML to write / read")
    return Path(config.trtllm_disagg_config_path)


def build_config(config, model: str) -> dict[str, Any]:
    """The YAML as a mapping, from the disagg_* fields."""
    host = config.disagg_hostname
    port = config.disagg_router_port
    next_port = config.disagg_worker_start_port
    doc: dict[str, Any] = {"hostname": host, "port": port, "backend": config.trtllm_backend, "model": model}
    for role, prefix in zip(ROLES, ("ctx", "gen")):
        n = config[f"disagg_num_{prefix}_servers"]
        bs = config[f"disagg_{prefix}_batch_size"] or config.gpu_batch_size
        tokens = config[f"disagg_{prefix}_max_num_tokens"] or bs
        urls = []
        for _ in range(n):
            if next_port == port:
                next_port += 1
            if next_port > 65535:
                raise ConfigError(f"--disagg_worker_start_port={config.disagg_worker_start_port}: the {n} "
                                  f"{role} run past port 65535")
            urls.append(f"{host}:{next_port}")
            next_port += 1
        doc[role] = {"num_instances": n, "tensor_parallel_size": config[f"disagg_{prefix}_tp"],
                     "pipeline_parallel_size": config[f"disagg_{prefix}_pp"], "max_batch_size": bs,
                     "max_num_tokens": tokens, "urls": urls}
    return doc


def write_config(config, model: str, *, env: Mapping[str, str] | None = None, dry_run: bool = False,
                 out: Callable[[str], None] = print) -> Path | None:
    """Rank 0 writes the YAML (other ranks of an mpirun do nothing); a world size that is not the
    instance size is an error on every rank."""
    path = config_path(config)
    doc = build_config(config, model)
    size = instance_size(doc)
    me = mpi_rank(env)
    if me.source and me.size != size:
        raise ConfigError(f"MPI world size {me.size} ({me.source}) != instance size {size} = "
                          f"{_size_formula(doc)}: run it under mpirun -n {size}")
    text = (f"# disaggregated serving: router {doc['hostname']}:{doc['port']}; instance size {size} = "
            f"{_size_formula(doc)}\n" + yaml.safe_dump(doc, sort_keys=False))
    if dry_run:
        out(f"# {path} (dry run: not written)\n{text}")
        return None
    if me.rank != 0:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    out(f"wrote {path}: instance size {size} = {_size_formula(doc)}")
    return path


def _size_formula(doc) -> str:
    parts = []
    for role in ROLES:
        sec = doc[role]
        parts.append(f"{sec.get('num_instances', len(sec['urls']))} x "
                     f"{sec.get('tensor_parallel_size', 1) * sec.get('pipeline_parallel_size', 1)}")
    return " + ".join(parts)


def read_config(config) -> dict[str, Any]:
    from llmlib.cores.trtllm_disagg_core import read_disagg_config

    path = config_path(config)
    read_disagg_config(path)  # the core's checks: router, urls, num_instances
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True, slots=True)
class Slot:
    role: str
    index: int  # server index within its role
    first_rank: int
    ranks: int
    url: str


def slots(doc: Mapping[str, Any]) -> list[Slot]:
    out, rank = [], 0
    for role in ROLES:
        sec = doc[role]
        per = int(sec.get("tensor_parallel_size", 1)) * int(sec.get("pipeline_parallel_size", 1))
        for i, url in enumerate(sec["urls"]):
            out.append(Slot(role, i, rank, per, str(url)))
            rank += per
    return out


def _host_port(url: str) -> tuple[str, int]:
    bare = url.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    return host.strip("[]"), int(port)


def worker_spec(config, benchmark, scenario: str, doc: Mapping[str, Any], me: MpiRank, *, root: Path,
                gpus: int) -> tuple[Slot, ServerSpec | None]:
    """This rank's slot, and the server it starts (None: not the first rank of its server)."""
    size = instance_size(doc)
    if me.size != size:
        raise ConfigError(f"MPI world size {me.size} ({me.source or 'no MPI launcher'}) != the instance size "
                          f"{size} = {_size_formula(doc)} of {config.trtllm_disagg_config_path}: run the workers "
                          f"under mpirun -n {size}")
    slot = next(s for s in slots(doc) if s.first_rank <= me.rank < s.first_rank + s.ranks)
    if me.rank != slot.first_rank:
        return slot, None
    host, port = _host_port(slot.url)
    bind = host if host in LOCAL_HOSTS else "0.0.0.0"
    devices: tuple = ()
    if gpus:
        first = me.local_rank
        if first + slot.ranks > gpus:
            raise ConfigError(f"rank {me.rank}: its {slot.role} server needs GPUs {first}..{first + slot.ranks - 1} "
                              f"but {gpus} are visible")
        devices = tuple(range(first, first + slot.ranks))
    sec = doc[slot.role]
    log_dir = Path(config.server_log_dir)
    log_dir = log_dir if log_dir.is_absolute() else root / log_dir
    extra = {"disable_overlap_scheduler": slot.role == "context_servers",
             "cache_transceiver_config": {"backend": "default"}}
    spec = server_spec(config, benchmark, scenario, rank=me.rank, host=bind, port=port, devices=devices,
                       log_dir=log_dir, root=root, name=f"{slot.role.split('_')[0]} {slot.index}",
                       tp=int(sec.get("tensor_parallel_size", 1)), pp=int(sec.get("pipeline_parallel_size", 1)),
                       max_batch_size=sec.get("max_batch_size"), max_num_tokens=sec.get("max_num_tokens"),
                       extra=extra)
    return slot, spec


def router_spec(config, doc: Mapping[str, Any], *, root: Path) -> ServerSpec:
    path = config_path(config)
    values = {"config": str(path), "host": str(doc["hostname"]), "port": str(doc["port"])}
    try:
        argv = [part.format_map(values) for part in shlex.split(config.disagg_router_command)]
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(f"--disagg_router_command: {err!s} is not one of {{config}} {{host}} {{port}}") from None
    log_dir = Path(config.server_log_dir)
    log_dir = log_dir if log_dir.is_absolute() else root / log_dir
    return ServerSpec(name="router", argv=tuple(argv), host=str(doc["hostname"]), port=int(doc["port"]),
                      health_port=int(doc["port"]), health_path="/health", log_path=log_dir / "router.log",
                      ports=(int(doc["port"]),))


def _hold(launcher: Launcher | None, stop: StopSignals, out: Callable[[str], None]) -> int:
    while not stop.event.wait(0.5):
        gone = launcher.exited() if launcher is not None else None
        if gone is not None:
            spec, rc = gone
            out(f"error: {spec.name} ({spec.url}) exited with code {rc}; last lines of {spec.log_path}:\n"
                f"{tail(spec.log_path)}")
            return 1
    out(f"{signal.Signals(stop.signum or signal.SIGINT).name}: stopping")
    return stop.exit_code


def run_worker(config, benchmark, scenario: str, *, root: Path, gpus: int, env: Mapping[str, str] | None = None,
               out: Callable[[str], None] = print) -> int:
    me = mpi_rank(env)
    doc = read_config(config)
    slot, spec = worker_spec(config, benchmark, scenario, doc, me, root=root, gpus=gpus)
    tag = f"rank {me.rank}/{me.size}"
    if config.dry_run:
        out(f"# {tag}: {slot.role} {slot.index} ({slot.url})" + (f"\n{spec.shell()}" if spec else
                                                                  " (held by its first rank)"))
        return 0
    with StopSignals() as stop:
        if spec is None:
            out(f"{tag}: part of {slot.role} {slot.index} ({slot.url}), started by rank {slot.first_rank}")
            return _hold(None, stop, out)
        check_model(config, benchmark, scenario, root=root)
        check_ports_free([spec])
        launcher = Launcher([spec], out=lambda t: out(f"{tag}: {t}"))
        try:
            launcher.start()
            launcher.wait_ready(config.server_ready_timeout_s, stop.event)
            return _hold(launcher, stop, out)
        except OpsError as err:
            if stop.signum is not None:
                return stop.exit_code
            out(f"error: {tag}: {err}")
            return 1
        finally:
            launcher.stop()


def run_leader(config, *, root: Path, env: Mapping[str, str] | None = None,
               out: Callable[[str], None] = print) -> int:
    me = mpi_rank(env)
    if me.source and me.size != 1:
        raise ConfigError(f"MPI world size {me.size} ({me.source}): the leader runs alone, under mpirun -n 1")
    doc = read_config(config)
    router = router_spec(config, doc, root=root)
    workers = [_host_port(s.url) + (s.role, s.index) for s in slots(doc)]
    from llmlib.ops.launch import HEALTH_PATHS

    path = config.server_health_path or HEALTH_PATHS[config.server_kind]
    if config.dry_run:
        out(f"# leader: wait for {len(workers)} worker(s) (GET {path}), then\n{router.shell()}")
        return 0
    with StopSignals() as stop:
        deadline = time.monotonic() + config.server_ready_timeout_s
        waiting = list(workers)
        out(f"leader: waiting for {len(waiting)} worker(s): {', '.join(f'{h}:{p}' for h, p, _, _ in waiting)}")
        while waiting:
            waiting = [w for w in waiting if not probe(w[0], w[1], path)]
            if not waiting:
                break
            if time.monotonic() > deadline:
                names = ", ".join(f"{role.split('_')[0]} {i} ({h}:{p})" for h, p, role, i in waiting)
                out(f"error: leader: not ready within {config.server_ready_timeout_s:g}s "
                    f"(--server_ready_timeout_s): {names}")
                return 1
            if stop.event.wait(0.5):
                out(f"{signal.Signals(stop.signum).name}: stopping")
                return stop.exit_code
        out(f"leader: every worker is ready; starting the router on {router.url}")
        check_ports_free([router])
        launcher = Launcher([router], out=lambda t: out(f"leader: {t}"))
        try:
            launcher.start()
            launcher.wait_ready(max(deadline - time.monotonic(), 30.0), stop.event)
            out(f"leader: router ready on {router.url} (Ctrl-C stops it)")
            return _hold(launcher, stop, out)
        except OpsError as err:
            if stop.signum is not None:
                return stop.exit_code
            out(f"error: leader: {err}")
            return 1
        finally:
            launcher.stop()
