"""LLMServerFactory: the dataset, the cores from the registry, the LLMServer and its WarmupManager.

Everything is built and loaded here, before any timing starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from llmlib.benchmarks import BenchmarkSpec
from llmlib.config import ResolvedConfig
from llmlib.cores import get_core_class
from llmlib.dataset import LLMDataset, load_dataset
from llmlib.errors import ConfigError
from llmlib.server import LLMServer
from llmlib.warmup import WarmupManager


@dataclass
class ServerBundle:
    server: LLMServer
    dataset: LLMDataset
    warmup: WarmupManager

    def stop(self) -> None:
        self.server.stop()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def load_benchmark_dataset(benchmark: BenchmarkSpec) -> LLMDataset:
    """The benchmark's dataset, fully in memory; relative paths resolve against the repository.

    A `builder: "module:function"` key names a function that makes the file when it is missing
    (the tiny benchmark builds its model and dataset on first use)."""
    spec = dict(benchmark.dataset)
    builder = spec.pop("builder", None)
    if builder:
        path = Path(spec.get("path", ""))
        if not path.is_absolute():
            path = repo_root() / path
        if not path.exists():
            module_name, _, attr = str(builder).partition(":")
            try:
                build = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"benchmark {benchmark.name}: dataset builder {builder!r} unavailable "
                                  f"({err}); install the extra it needs (pip install -e '.[hf]')") from err
            build()
            if not path.exists():
                raise ConfigError(f"benchmark {benchmark.name}: dataset builder {builder!r} did not make {path}")
    dataset = load_dataset(spec, base_dir=repo_root(), name=benchmark.name)
    if len(dataset) < benchmark.total_sample_count:
        raise ConfigError(
            f"benchmark {benchmark.name}: dataset {dataset.source} has {len(dataset)} samples, "
            f"the benchmark needs total_sample_count={benchmark.total_sample_count}"
        )
    return dataset


def build_core(core_cls, config: ResolvedConfig, benchmark: BenchmarkSpec, dataset: LLMDataset | None, *,
               rank: int, sink):
    """One core of `core_cls` from the fields (tests and scripts; the factory resolves once for all)."""
    settings = core_cls.resolve_settings(config, benchmark)
    return core_cls(settings, rank=rank, sink=sink, inputs=core_cls.core_inputs(settings, dataset))


def workers_per_core(config: ResolvedConfig, core_cls, num_cores: int) -> int:
    """Worker processes per core from --workers_per_core (0: the cores run in this process)."""
    from llmlib.serving.core_workers import parse_workers_per_core

    value = getattr(config, "workers_per_core", "0")
    n = parse_workers_per_core(value, num_cores)
    if n and not core_cls.supports_workers:
        if str(value).strip().lower() == "auto":
            return 0
        raise ConfigError(f"--workers_per_core={value}: core {config.core_type} runs in-process or in its own "
                          "processes already; worker processes are for network cores (trtllm_endpoint, "
                          "trtllm_disagg, triton_grpc) and dummy")
    return n


def build_server(config: ResolvedConfig, benchmark: BenchmarkSpec, dataset: LLMDataset | None = None) -> ServerBundle:
    """Build the server with `core_type`'s cores (as many as the core says the workload needs)."""
    core_cls = get_core_class(config.core_type)
    if dataset is None:
        dataset = load_benchmark_dataset(benchmark)
    n = core_cls.num_cores(config)
    if n < 1:
        raise ConfigError(f"core {config.core_type}: the configuration gives {n} cores; need at least 1")
    server = LLMServer(policy=config.traffic_distribution_policy, request_timeout_s=config.request_timeout_s or 0.0,
                       max_consecutive_failures=config.max_consecutive_failures,
                       stall_warning_s=config.stall_warning_s or 0.0)
    # the fields are read once, into the core's own settings; a core gets those, its rank, the sink and
    # what the dataset must give it, and nothing else (so it can live in another process)
    settings = core_cls.resolve_settings(config, benchmark)
    inputs = core_cls.core_inputs(settings, dataset)
    workers = workers_per_core(config, core_cls, n)
    cores = []
    try:
        for rank in range(n):
            if workers:
                from llmlib.serving.core_workers import WorkerPoolCore

                cores.append(WorkerPoolCore(core_cls, settings, rank=rank, sink=server, inputs=inputs,
                                            workers=workers))
            else:
                cores.append(core_cls(settings, rank=rank, sink=server, inputs=inputs))
        server.attach(cores)
    except BaseException:
        for core in cores:
            core.stop()
        server.stop()
        raise
    warmup = WarmupManager(server, health_timeout_s=config.health_check_timeout_s,
                           backoff_s=config.health_check_backoff_s)
    return ServerBundle(server=server, dataset=dataset, warmup=warmup)
