"""Layered configuration: explicit > command line > environment > active configuration > default.

The flag-string fields then get their environment variable applied on top by dict update.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmlib.errors import ConfigError
from llmlib.fields import FIELDS, get_field, unknown_name_message

#: The harness's TensorRT-LLM runtime defaults; `trtllm_runtime_flags` and then
#: TRTLLM_RUNTIME_FLAGS are applied on top of these.
RUNTIME_FLAG_DEFAULTS: dict[str, Any] = {
    "batch_scheduler_policy": "max_util",
    "context_chunking_policy": "first_come_first_served",
    "use_inflight_batching": True,
    "enable_batch_size_tuning": False,
    "enable_max_num_tokens_tuning": False,
    "dynamic_batch_moving_average_window": 128,
    "kvcache_free_gpu_mem_frac": 0.80,
    "enable_chunked_context": False,
    "exclude_input_from_output": True,
}

#: Flag-string fields whose environment variable is applied on top by dict update
#: (rather than replacing the value like an ordinary field's variable).
FLAG_STRING_FIELDS = ("trtllm_checkpoint_flags", "trtllm_build_flags", "trtllm_runtime_flags")

SCENARIOS = ("Offline", "Server", "Interactive", "SingleStream")


@dataclass(frozen=True, slots=True)
class Layer:
    """One mapping of field values with where it came from (a file and section, or code)."""

    values: Mapping[str, Any]
    source: str


_ACTIVE: contextvars.ContextVar[tuple[Layer, ...]] = contextvars.ContextVar("llmlib_config", default=())


class Configuration:
    """The active configuration: layers of values, later layers over earlier ones.

    Use as a context manager; nested contexts add their layers on top.
    """

    def __init__(self, values: Mapping[str, Any] | None = None, *, source: str = "code",
                 layers: Iterable[Layer] = ()):
        self.layers: tuple[Layer, ...] = tuple(layers)
        if values:
            self.layers += (Layer(dict(values), source),)
        for layer in self.layers:
            for key in layer.values:
                if key not in FIELDS:
                    raise ConfigError(f"{layer.source}: {unknown_name_message('setting', key, FIELDS)}")
        self._token: contextvars.Token | None = None

    def __enter__(self) -> Configuration:
        self._token = _ACTIVE.set(_ACTIVE.get() + self.layers)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)


def active_layers() -> tuple[Layer, ...]:
    return _ACTIVE.get()


class ResolvedConfig:
    """Final values of every field for one run, each with its source. Read-only."""

    __slots__ = ("_values", "_sources")

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_sources", sources)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # slots not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(unknown_name_message("setting", name, self._values)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ResolvedConfig is read-only; resolve again with explicit values")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __reduce__(self):
        return (ResolvedConfig, (self._values, self._sources))

    def source(self, name: str) -> str:
        return self._sources[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def with_values(self, source: str = "explicit", **values: Any) -> ResolvedConfig:
        """A copy with some values replaced (validated by their fields)."""
        new_values, new_sources = dict(self._values), dict(self._sources)
        for name, value in values.items():
            new_values[name] = get_field(name).parse(value, source)
            new_sources[name] = source
        return ResolvedConfig(new_values, new_sources)

    def report(self) -> list[dict[str, Any]]:
        """Rows of name, value, source, for printing and for the run folder."""
        return [{"name": n, "value": self._values[n], "source": self._sources[n]} for n in self._values]

    def format(self) -> str:
        rows = self.report()
        width = max(len(r["name"]) for r in rows)
        lines = []
        for r in rows:
            value = json.dumps(r["value"]) if not isinstance(r["value"], str) else r["value"]
            lines.append(f"{r['name']:<{width}}  {value:<40}  [{r['source']}]")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report(), indent=1, default=str) + "\n")


def parse_cli(argv: Iterable[str]) -> dict[str, Any]:
    """Parse `--name=value` (and a bare `--name` for booleans) into raw strings per field.

    Unknown names and malformed arguments raise ConfigError. Values stay unparsed here;
    `resolve` parses them with their field so the error names the source.
    """
    out: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"command line: {arg!r} is not of the form --name=value")
        name, sep, value = arg[2:].partition("=")
        field = get_field(name) if name in FIELDS else None
        if field is None:
            raise ConfigError(f"command line: {unknown_name_message('flag', '--' + name, ['--' + f for f in FIELDS])}")
        if not sep:
            if field.kind != "bool":
                raise ConfigError(f"command line: --{name} needs a value (--{name}=...)")
            value = "true"
        if name in out:
            raise ConfigError(f"command line: --{name} given twice")
        out[name] = value
    return out


def resolve(*, explicit: Mapping[str, Any] | None = None, cli: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None,
            layers: Iterable[Layer] | None = None) -> ResolvedConfig:
    """Resolve every field. Precedence, highest first: explicit, cli, environment, layers
    (later over earlier; default: the active Configuration), field default.

    Then for the flag-string fields the environment variable is dict-updated on top, and the
    runtime flags start from RUNTIME_FLAG_DEFAULTS.
    """
    explicit = dict(explicit or {})
    cli = dict(cli or {})
    env = os.environ if env is None else env
    layers = tuple(active_layers() if layers is None else layers)
    for name in list(explicit) + list(cli):
        get_field(name)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, field in FIELDS.items():
        if name in explicit:
            value, source = explicit[name], "explicit"
        elif name in cli:
            value, source = cli[name], "command line"
        elif field.env and env.get(field.env, "") != "" and name not in FLAG_STRING_FIELDS:
            value, source = env[field.env], f"env {field.env}"
        else:
            value, source = field.default, "default"
            for layer in reversed(layers):
                if name in layer.values:
                    value, source = layer.values[name], layer.source
                    break
        values[name] = field.parse(value, source)
        sources[name] = source

    for name in FLAG_STRING_FIELDS:
        field = FIELDS[name]
        merged = dict(RUNTIME_FLAG_DEFAULTS) if name == "trtllm_runtime_flags" else {}
        merged.update(values[name])
        src = sources[name] if values[name] else ""
        if name == "trtllm_runtime_flags":
            src = "harness defaults" + (f" < {src}" if src else "")
        raw = env.get(field.env, "")
        origin = {key: f"--{name}" for key in values[name]}
        if raw.strip():
            from_env = field.parse(raw, f"env {field.env}")
            merged.update(from_env)
            origin.update({key: f"env {field.env}" for key in from_env})
            src = (src + " < " if src else "") + f"env {field.env}"
        if name == "trtllm_runtime_flags":
            from llmlib.cores._trtllm_common import check_runtime_flags

            check_runtime_flags(merged, origin)
        values[name] = merged
        sources[name] = src or "default"
    return ResolvedConfig(values, sources)


def _load_yaml(path: Path) -> Any:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err


def _check_mapping(obj: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: expected a mapping of setting: value, got {type(obj).__name__}")
    for key in obj:
        if key not in FIELDS:
            raise ConfigError(f"{where}: {unknown_name_message('setting', str(key), FIELDS)}")
    return obj


def _check_sections(obj: Any, where: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(allowed)})")
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown section {key!r} (expected {', '.join(allowed)})")
    return obj


def system_layers(config_dir: Path, system: str, benchmark: str, scenario: str,
                  benchmark_defaults: Mapping[str, Any] | None = None,
                  core_type: str | None = None) -> list[Layer]:
    """The file layers for one (system, benchmark, scenario[, core]), lowest first.

    The benchmark file's `harness:` section, then `configs/systems/<system>.yaml`: `default`,
    `<scenario>`, `cores.<core>.default`, `cores.<core>.<scenario>`, `benchmarks.<benchmark>.default`,
    `benchmarks.<benchmark>.<scenario>`, `benchmarks.<benchmark>.cores.<core>.default`,
    `benchmarks.<benchmark>.cores.<core>.<scenario>`. Core sections apply only when `core_type`
    is given (the caller resolves it first) and may not set `core_type` themselves.
    A missing system file is an error unless the system is the built-in `local`.
    """
    layers = []
    if benchmark_defaults:
        layers.append(Layer(_check_mapping(benchmark_defaults, f"benchmark {benchmark}: harness"),
                            f"benchmark {benchmark}"))
    path = Path(config_dir) / "systems" / f"{system}.yaml"
    if not path.is_file():
        if system == "local":
            return layers
        known = sorted(p.stem for p in (Path(config_dir) / "systems").glob("*.yaml"))
        raise ConfigError(f"system {system!r}: no file {path}. {unknown_name_message('system', system, known)}")
    doc = _load_yaml(path)
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _check_sections(doc, str(path), ("default", *SCENARIOS, "cores", "benchmarks"))
    name = path.name

    def add(section: Mapping[str, Any], key: str, where: str, core_section: bool = False) -> None:
        if key in section:
            values = _check_mapping(section[key], f"{path}: {where}")
            if core_section and "core_type" in values:
                raise ConfigError(f"{path}: {where}: a core's own section cannot set core_type")
            layers.append(Layer(values, f"{name}: {where}"))

    def add_cores(section: Mapping[str, Any], prefix: str) -> None:
        cores = section.get("cores") or {}
        if not isinstance(cores, Mapping):
            raise ConfigError(f"{path}: {prefix}cores: expected a mapping of core name to sections")
        for core_name, sections in cores.items():
            _check_sections(sections, f"{path}: {prefix}cores.{core_name}", ("default", *SCENARIOS))
        if core_type and core_type in cores:
            for key in ("default", scenario):
                add(cores[core_type], key, f"{prefix}cores.{core_type}.{key}", core_section=True)

    add(doc, "default", "default")
    add(doc, scenario, scenario)
    add_cores(doc, "")
    benchmarks = doc.get("benchmarks") or {}
    if not isinstance(benchmarks, Mapping):
        raise ConfigError(f"{path}: benchmarks: expected a mapping of benchmark name to sections")
    for bench_name, sections in benchmarks.items():
        if not isinstance(sections, Mapping):
            raise ConfigError(f"{path}: benchmarks.{bench_name}: expected a mapping of sections")
        _check_sections(sections, f"{path}: benchmarks.{bench_name}", ("default", *SCENARIOS, "cores"))
    bench = benchmarks.get(benchmark) or {}
    add(bench, "default", f"benchmarks.{benchmark}.default")
    add(bench, scenario, f"benchmarks.{benchmark}.{scenario}")
    add_cores(bench, f"benchmarks.{benchmark}.")
    return layers
