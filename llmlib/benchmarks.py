"""Benchmark definitions: load configs/benchmarks/<name>.yaml into typed, validated specs.

A benchmark file is data (model key, dataset, limits, scenarios, accuracy targets, MLPerf rounds);
`extends` keeps variants short and `test_modes` holds what an AccuracyOnly run does differently.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmlib.dataset import FORMATS
from llmlib.errors import ConfigError

__all__ = [
    "ALIASES",
    "CURRENT_ROUND",
    "ROUNDS",
    "SCENARIOS",
    "TEST_MODES",
    "AccuracySpec",
    "AccuracyTarget",
    "BenchmarkSpec",
    "ScenarioSpec",
    "default_configs_dir",
    "list_benchmarks",
    "load_benchmark",
    "parse_scenario",
]

# Harness scenario names. Interactive is LoadGen's Server scenario run with the `<model>-interactive` key;
# SingleStream is LoadGen's SingleStream (one query at a time, p90 latency), the edge scenario.
SCENARIOS: tuple[str, ...] = ("Offline", "Server", "Interactive", "SingleStream")
LOADGEN_SCENARIOS: tuple[str, ...] = ("Offline", "Server", "SingleStream")
TEST_MODES: tuple[str, ...] = ("PerformanceOnly", "AccuracyOnly")

# MLPerf Inference rounds the project knows (the submission checker's versions), oldest first.
ROUNDS: tuple[str, ...] = ("v5.0", "v5.1", "v6.0", "v6.1")
CURRENT_ROUND = "v6.1"
ALL_ROUNDS = "all"  # `rounds: all`: the project's own stand-ins, which belong to every round
DATASET_FORMATS: tuple[str, ...] = FORMATS

# Short names people type, mapped to the benchmark file they mean.
ALIASES: dict[str, str] = {
    "llama2-70b": "llama2-70b-99",
    "llama2-70b-interactive": "llama2-70b-interactive-99",
}

_TOP_LEVEL_KEYS = frozenset(
    {
        "extends",
        "description",
        "loadgen_model",
        "dataset",
        "total_sample_count",
        "performance_sample_count",
        "max_output_tokens",
        "min_output_tokens",
        "eos_token_id",
        "stop_token_ids",
        "generation",
        "scenarios",
        "accuracy",
        "harness",
        "rounds",
        "submission_model",
        "accuracy_sample_count",
        "test_modes",
    }
)
# What a `test_modes.<mode>` section may change (merged over the benchmark for runs in that mode).
_TEST_MODE_KEYS = frozenset(
    {"dataset", "total_sample_count", "performance_sample_count", "max_output_tokens", "min_output_tokens",
     "generation"}
)
_SCENARIO_KEYS = frozenset({"loadgen_scenario", "loadgen_model", "ttft_ms", "tpot_ms", "streaming"})
_ACCURACY_KEYS = frozenset({"ratio", "metrics", "tokens_per_sample", "evaluator"})
_METRIC_KEYS = frozenset({"name", "reference", "ratio", "max_ratio"})
_TOKENS_KEYS = frozenset({"reference", "min_ratio", "max_ratio", "min", "max"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioSpec:
    """One scenario a benchmark supports, and how LoadGen runs it."""

    name: str  # harness name: Offline, Server, Interactive or SingleStream
    loadgen_scenario: str  # what LoadGen runs: Offline, Server or SingleStream
    loadgen_model: str  # the model key LoadGen reads mlperf.conf / user.conf with
    ttft_ms: float | None  # time-to-first-token limit (p99); None for Offline
    tpot_ms: float | None  # time-per-output-token limit (p99); None for Offline
    streaming: bool  # whether the first token is reported on its own (FirstTokenComplete)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccuracyTarget:
    """A metric that must reach `reference * ratio` (and stay under `reference * max_ratio` when given)."""

    name: str
    reference: float
    ratio: float
    max_ratio: float | None = None

    @property
    def threshold(self) -> float:
        return self.reference * self.ratio

    @property
    def upper_threshold(self) -> float | None:
        return None if self.max_ratio is None else self.reference * self.max_ratio


@dataclass(frozen=True, slots=True, kw_only=True)
class AccuracySpec:
    """Accuracy targets of a benchmark: metric floors and the bounds on mean output tokens per sample."""

    metrics: tuple[AccuracyTarget, ...] = ()
    tokens_per_sample_min: float | None = None
    tokens_per_sample_max: float | None = None
    evaluator: str | None = None  # the scorer (llmlib.evaluation) by name; None: the ROUGE-family default

    def metric(self, name: str) -> AccuracyTarget:
        for target in self.metrics:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.metrics) or "none"
        raise ConfigError(f"No accuracy metric '{name}'. Known: {known}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchmarkSpec:
    """A resolved, validated benchmark definition (after `extends`)."""

    name: str
    loadgen_model: str
    dataset: dict[str, Any]
    total_sample_count: int
    performance_sample_count: int
    max_output_tokens: int
    min_output_tokens: int
    eos_token_id: int
    stop_token_ids: tuple[int, ...]
    generation: dict[str, Any]
    scenarios: dict[str, ScenarioSpec]
    accuracy: AccuracySpec
    harness: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: Path
    rounds: tuple[str, ...] = ROUNDS  # MLPerf rounds the benchmark belongs to, oldest first
    every_round: bool = False  # `rounds: all`: the project's own stand-ins (and any later round)
    submission_model: str = ""  # its name in a submission tree (the checker's model); "" = `name`
    accuracy_sample_count: int | None = None  # samples an AccuracyOnly run scores; None = total_sample_count
    test_modes: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw per-mode overrides
    test_mode: str | None = None  # the mode whose overrides are applied (for_mode), None: none applied
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the resolved YAML mapping

    def in_round(self, round_name: str) -> bool:
        return self.every_round or round_name in self.rounds

    def for_mode(self, test_mode: str) -> BenchmarkSpec:
        """The benchmark as a run in `test_mode` sees it: its `test_modes.<mode>` section merged over it
        (gpt-oss-120b's AccuracyOnly runs use another dataset, output limit and reasoning effort)."""
        if test_mode not in TEST_MODES:
            raise ConfigError(f"Unknown test mode {test_mode!r}. Valid: {', '.join(TEST_MODES)}")
        if self.test_mode is not None:
            if self.test_mode != test_mode:
                raise ConfigError(f"benchmark {self.name}: already resolved for {self.test_mode}, not {test_mode}")
            return self
        override = self.test_modes.get(test_mode)
        if not override:
            return dataclasses.replace(self, test_mode=test_mode)
        raw = _deep_merge(self.raw, override)
        try:
            spec = _build_spec(self.name, self.source, raw, (self.name,))
        except ConfigError as err:
            raise ConfigError(f"{err} (with test_modes.{test_mode} applied)") from err
        return dataclasses.replace(spec, test_mode=test_mode)

    def scenario(self, name: str) -> ScenarioSpec:
        """The scenario spec for `name` (case-insensitive), or a ConfigError naming what is supported."""
        canonical = parse_scenario(name)
        try:
            return self.scenarios[canonical]
        except KeyError:
            supported = ", ".join(self.scenarios) or "none"
            raise ConfigError(
                f"Benchmark '{self.name}' does not support scenario '{canonical}'. Supported: {supported}"
            ) from None


def parse_scenario(text: str) -> str:
    """Map 'offline' / 'SERVER' / ' interactive ' to the canonical scenario name."""
    if isinstance(text, str):
        wanted = text.strip().lower()
        for name in SCENARIOS:
            if name.lower() == wanted:
                return name
    raise ConfigError(f"Unknown scenario {text!r}. Valid: {', '.join(SCENARIOS)}")


def default_configs_dir() -> Path:
    """The repository's configs/benchmarks, found relative to this package."""
    return Path(__file__).resolve().parent.parent / "configs" / "benchmarks"


def list_benchmarks(configs_dir: Path | None = None) -> list[str]:
    """Names of the benchmark files in `configs_dir`, sorted."""
    directory = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    if not directory.is_dir():
        raise ConfigError(f"Benchmark config directory {directory} does not exist")
    return sorted(p.stem for p in directory.glob("*.yaml") if p.is_file())


def load_benchmark(name: str, configs_dir: Path | None = None) -> BenchmarkSpec:
    """Load, resolve `extends` and validate benchmark `name` (an alias is accepted)."""
    directory = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    known = list_benchmarks(directory)
    canonical = _resolve_name(name, known, directory)
    raw, chain = _load_resolved(canonical, directory, known, ())
    spec = _build_spec(canonical, directory / f"{canonical}.yaml", raw, chain)
    for mode in spec.test_modes:
        spec.for_mode(mode)  # a mode's overrides are validated now, not when a run first uses them
    return spec


# -- loading ------------------------------------------------------------------------------------


def _resolve_name(name: str, known: list[str], directory: Path) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"Benchmark name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name in known:
        return name
    target = ALIASES.get(name)
    if target is not None and target in known:
        return target
    candidates = known + [a for a, t in ALIASES.items() if t in known]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown benchmark '{name}'.{hint} Known: {', '.join(known) or f'none (no *.yaml in {directory})'}"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"Cannot read benchmark file {path}: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of benchmark keys, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}. Allowed: {', '.join(sorted(_TOP_LEVEL_KEYS))}"
        )
    return data


def _load_resolved(
    name: str, directory: Path, known: list[str], seen: tuple[str, ...]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Raw mapping of `name` with its `extends` chain merged in, and the chain (child first)."""
    if name in seen:
        cycle = " -> ".join(seen + (name,))
        raise ConfigError(f"Cycle in benchmark 'extends': {cycle}")
    path = directory / f"{name}.yaml"
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return _drop_nulls(data), (name,)
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: key 'extends' must be a benchmark name (string), got {parent!r}")
    try:
        parent_name = _resolve_name(parent, known, directory)
    except ConfigError as err:
        raise ConfigError(f"{path}: key 'extends': {err}") from err
    base, chain = _load_resolved(parent_name, directory, known, seen + (name,))
    return _deep_merge(base, data), (name,) + chain


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key, the child winning; anything else is replaced; a child `null` deletes."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = _drop_nulls(copy.deepcopy(value))
    return merged


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


# -- validation ---------------------------------------------------------------------------------


class _Checker:
    """Typed reads from a raw mapping; every failure names the file, the key and what was expected."""

    def __init__(self, path: Path, chain: tuple[str, ...]):
        self.path = path
        self.where = str(path) if len(chain) == 1 else f"{path} (extends {' -> '.join(chain[1:])})"

    def fail(self, key: str, expected: str, got: Any = ...) -> ConfigError:
        shown = "" if got is ... else f", got {got!r} ({type(got).__name__})"
        return ConfigError(f"{self.where}: key '{key}' must be {expected}{shown}")

    def missing(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.where}: missing required key '{key}' ({expected})")

    def get(self, data: dict[str, Any], key: str, prefix: str, expected: str, required: bool) -> Any:
        if key not in data:
            if required:
                raise self.missing(prefix + key, expected)
            return None
        return data[key]

    def string(self, data, key, prefix="", required=True) -> str | None:
        value = self.get(data, key, prefix, "a non-empty string", required)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(prefix + key, "a non-empty string", value)
        return value

    def integer(self, data, key, prefix="", required=True, minimum: int | None = None) -> int | None:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        value = self.get(data, key, prefix, expected, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self.fail(prefix + key, expected, value)
        return value

    def number(self, data, key, prefix="", required=True, positive=True) -> float | None:
        expected = "a positive number" if positive else "a number"
        value = self.get(data, key, prefix, expected, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(prefix + key, expected, value)
        if positive and value <= 0:
            raise self.fail(prefix + key, expected, value)
        return float(value)

    def boolean(self, data, key, prefix="", required=True) -> bool | None:
        value = self.get(data, key, prefix, "true or false", required)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(prefix + key, "true or false", value)
        return value

    def mapping(self, data, key, prefix="", required=True) -> dict[str, Any] | None:
        value = self.get(data, key, prefix, "a mapping", required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(prefix + key, "a mapping", value)
        return value

    def only(self, data: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            where = f" under '{prefix.rstrip('.')}'" if prefix else ""
            raise ConfigError(
                f"{self.where}: unknown key(s){where}: {', '.join(unknown)}. Allowed: {', '.join(sorted(allowed))}"
            )


def _build_spec(name: str, path: Path, raw: dict[str, Any], chain: tuple[str, ...]) -> BenchmarkSpec:
    c = _Checker(path, chain)
    loadgen_model = c.string(raw, "loadgen_model")
    dataset = _check_dataset(c, raw)
    total = c.integer(raw, "total_sample_count", minimum=1)
    perf = c.integer(raw, "performance_sample_count", minimum=1)
    if perf > total:
        raise c.fail("performance_sample_count", f"<= total_sample_count ({total})", perf)
    if dataset["format"] == "synthetic" and dataset.get("num_samples") != total:
        raise c.fail("dataset.num_samples", f"equal to total_sample_count ({total})", dataset.get("num_samples"))
    max_out = c.integer(raw, "max_output_tokens", minimum=1)
    min_out = c.integer(raw, "min_output_tokens", minimum=0)
    if min_out > max_out:
        raise c.fail("min_output_tokens", f"<= max_output_tokens ({max_out})", min_out)
    eos = c.integer(raw, "eos_token_id", minimum=0)
    stop_ids = _check_stop_ids(c, raw)
    generation = c.mapping(raw, "generation")
    harness = c.mapping(raw, "harness", required=False) or {}
    if str(harness.get("server_target_qps")).lower() == "auto" and raw.get("rounds") != ALL_ROUNDS:
        # a real benchmark's target is the submitter's, measured on the system (user.conf)
        raise c.fail("harness.server_target_qps", f"a number: auto is for the project's own (rounds: {ALL_ROUNDS})",
                     harness["server_target_qps"])
    description = c.string(raw, "description", required=False) or ""
    accuracy_count = c.integer(raw, "accuracy_sample_count", required=False, minimum=1)
    if accuracy_count is not None and accuracy_count > total:
        raise c.fail("accuracy_sample_count", f"<= total_sample_count ({total})", accuracy_count)
    return BenchmarkSpec(
        name=name,
        loadgen_model=loadgen_model,
        dataset=copy.deepcopy(dataset),
        total_sample_count=total,
        performance_sample_count=perf,
        max_output_tokens=max_out,
        min_output_tokens=min_out,
        eos_token_id=eos,
        stop_token_ids=stop_ids,
        generation=copy.deepcopy(generation),
        scenarios=_check_scenarios(c, raw, loadgen_model),
        accuracy=_check_accuracy(c, raw),
        harness=copy.deepcopy(harness),
        description=description.strip(),
        source=path,
        rounds=_check_rounds(c, raw),
        every_round=raw.get("rounds") == ALL_ROUNDS,
        submission_model=c.string(raw, "submission_model", required=False) or name,
        accuracy_sample_count=accuracy_count,
        test_modes=_check_test_modes(c, raw),
        raw=copy.deepcopy(raw),
    )


def _check_rounds(c: _Checker, raw: dict[str, Any]) -> tuple[str, ...]:
    expected = f"a list of MLPerf rounds from {', '.join(ROUNDS)}, or '{ALL_ROUNDS}'"
    if "rounds" not in raw:
        raise c.missing("rounds", expected)
    value = raw["rounds"]
    if value == ALL_ROUNDS:
        return ROUNDS
    if not isinstance(value, list) or not value or any(r not in ROUNDS for r in value) or len(set(value)) != len(value):
        raise c.fail("rounds", expected + " (each once)", value)
    return tuple(r for r in ROUNDS if r in value)  # oldest first


def _check_test_modes(c: _Checker, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    modes = c.mapping(raw, "test_modes", required=False) or {}
    for mode, body in modes.items():
        if mode not in TEST_MODES:
            raise c.fail("test_modes", f"keyed by {', '.join(TEST_MODES)}", mode)
        c.mapping(modes, mode, prefix="test_modes.")
        c.only(body, _TEST_MODE_KEYS, f"test_modes.{mode}.")
    return copy.deepcopy(modes)


def _check_dataset(c: _Checker, raw: dict[str, Any]) -> dict[str, Any]:
    dataset = c.mapping(raw, "dataset")
    fmt = dataset.get("format")
    if fmt not in DATASET_FORMATS:
        if "format" not in dataset:
            raise c.missing("dataset.format", f"one of {', '.join(DATASET_FORMATS)}")
        raise c.fail("dataset.format", f"one of {', '.join(DATASET_FORMATS)}", fmt)
    if fmt in ("pickle", "parquet", "json", "npy"):
        c.string(dataset, "path", prefix="dataset.")
    return dataset


def _check_stop_ids(c: _Checker, raw: dict[str, Any]) -> tuple[int, ...]:
    if "stop_token_ids" not in raw:
        raise c.missing("stop_token_ids", "a list of token ids, may be empty")
    value = raw["stop_token_ids"]
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise c.fail("stop_token_ids", "a list of non-negative integer token ids", value)
    return tuple(value)


def _check_scenarios(c: _Checker, raw: dict[str, Any], default_model: str) -> dict[str, ScenarioSpec]:
    scenarios = c.mapping(raw, "scenarios")
    if not scenarios:
        raise c.fail("scenarios", f"a non-empty mapping with keys from {', '.join(SCENARIOS)}", scenarios)
    specs: dict[str, ScenarioSpec] = {}
    for name in scenarios:
        if name not in SCENARIOS:
            raise c.fail("scenarios", f"keyed by {', '.join(SCENARIOS)} (exact case)", name)
    for name in SCENARIOS:  # canonical order
        if name not in scenarios:
            continue
        prefix = f"scenarios.{name}."
        body = c.mapping(scenarios, name, prefix="scenarios.")
        c.only(body, _SCENARIO_KEYS, prefix)
        lg_scenario = c.string(body, "loadgen_scenario", prefix)
        if lg_scenario not in LOADGEN_SCENARIOS:
            raise c.fail(prefix + "loadgen_scenario", f"one of {', '.join(LOADGEN_SCENARIOS)}", lg_scenario)
        wanted = "Server" if name == "Interactive" else name
        if lg_scenario != wanted:
            raise c.fail(prefix + "loadgen_scenario", f"'{wanted}' for the {name} scenario", lg_scenario)
        lg_model = c.string(body, "loadgen_model", prefix, required=False) or default_model
        latency_required = lg_scenario == "Server"
        ttft = c.number(body, "ttft_ms", prefix, required=latency_required)
        tpot = c.number(body, "tpot_ms", prefix, required=latency_required)
        streaming = c.boolean(body, "streaming", prefix)
        specs[name] = ScenarioSpec(
            name=name,
            loadgen_scenario=lg_scenario,
            loadgen_model=lg_model,
            ttft_ms=ttft,
            tpot_ms=tpot,
            streaming=streaming,
        )
    return specs


def _check_accuracy(c: _Checker, raw: dict[str, Any]) -> AccuracySpec:
    accuracy = c.mapping(raw, "accuracy", required=False)
    if accuracy is None:
        return AccuracySpec()
    c.only(accuracy, _ACCURACY_KEYS, "accuracy.")
    evaluator = c.string(accuracy, "evaluator", "accuracy.", required=False)
    default_ratio = c.number(accuracy, "ratio", "accuracy.", required=False)
    metrics_raw = accuracy.get("metrics", [])
    if not isinstance(metrics_raw, list):
        raise c.fail("accuracy.metrics", "a list of {name, reference, ratio}", metrics_raw)
    metrics: list[AccuracyTarget] = []
    for i, item in enumerate(metrics_raw):
        prefix = f"accuracy.metrics[{i}]."
        if not isinstance(item, dict):
            raise c.fail(prefix.rstrip("."), "a mapping {name, reference, ratio}", item)
        c.only(item, _METRIC_KEYS, prefix)
        metric_name = c.string(item, "name", prefix)
        if any(m.name == metric_name for m in metrics):
            raise c.fail(prefix + "name", "unique among the metrics", metric_name)
        reference = c.number(item, "reference", prefix)
        ratio = c.number(item, "ratio", prefix, required=default_ratio is None)
        max_ratio = c.number(item, "max_ratio", prefix, required=False)
        metrics.append(
            AccuracyTarget(
                name=metric_name,
                reference=reference,
                ratio=ratio if ratio is not None else default_ratio,
                max_ratio=max_ratio,
            )
        )
    low, high = _check_tokens_per_sample(c, accuracy)
    return AccuracySpec(metrics=tuple(metrics), tokens_per_sample_min=low, tokens_per_sample_max=high,
                        evaluator=evaluator)


def _check_tokens_per_sample(c: _Checker, accuracy: dict[str, Any]) -> tuple[float | None, float | None]:
    prefix = "accuracy.tokens_per_sample."
    tps = c.mapping(accuracy, "tokens_per_sample", "accuracy.", required=False)
    if tps is None:
        return None, None
    c.only(tps, _TOKENS_KEYS, prefix)
    explicit = "min" in tps or "max" in tps
    relative = "reference" in tps or "min_ratio" in tps or "max_ratio" in tps
    if explicit and relative:
        raise c.fail(
            prefix.rstrip("."), "either {reference, min_ratio, max_ratio} or explicit {min, max}, not both", tps
        )
    if explicit:
        low = c.number(tps, "min", prefix, required=False)
        high = c.number(tps, "max", prefix, required=False)
    else:
        reference = c.number(tps, "reference", prefix)
        min_ratio = c.number(tps, "min_ratio", prefix, required=False)
        max_ratio = c.number(tps, "max_ratio", prefix, required=False)
        if min_ratio is None and max_ratio is None:
            raise c.missing(prefix + "min_ratio", "at least one of min_ratio, max_ratio")
        low = None if min_ratio is None else reference * min_ratio
        high = None if max_ratio is None else reference * max_ratio
    if low is not None and high is not None and low > high:
        raise c.fail(prefix.rstrip("."), f"bounds with min <= max (min {low:g}, max {high:g})")
    return low, high
