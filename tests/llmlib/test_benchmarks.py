"""Tests for llmlib.benchmarks: the shipped benchmark files and the loader's validation.

Expected numbers are copied here as literals from LoadGen's built-in mlperf.conf and the MLPerf submission checker.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from llmlib.benchmarks import (
    ALIASES,
    CURRENT_ROUND,
    ROUNDS,
    AccuracyTarget,
    BenchmarkSpec,
    list_benchmarks,
    load_benchmark,
    parse_scenario,
)
from llmlib.errors import ConfigError, HarnessError

SHIPPED = [
    "deepseek-r1",
    "deepseek-r1-interactive",
    "gpt-oss-120b",
    "gpt-oss-120b-interactive",
    "llama2-70b-99",
    "llama2-70b-99.9",
    "llama2-70b-interactive-99",
    "llama2-70b-interactive-99.9",
    "llama3.1-405b",
    "llama3.1-405b-interactive",
    "llama3.1-8b",
    "llama3.1-8b-edge",
    "llama3.1-8b-interactive",
    "math-tiny",
    "mixtral-8x7b",
    "tiny",
    "tiny-deepseek-r1",
    "tiny-gpt-oss-120b",
    "tiny-llama3.1-8b-edge",
    "tiny-synthetic",
]
PROJECT_OWN = (  # not MLPerf benchmarks: LoadGen's mlperf.conf has no entries
    "math-tiny", "tiny", "tiny-deepseek-r1", "tiny-gpt-oss-120b", "tiny-llama3.1-8b-edge", "tiny-synthetic")

# Lines of LoadGen's built-in mlperf.conf (mlcommons-loadgen 6.0), reduced to what the YAML repeats.
# <model>.*.performance_sample_count_override
LOADGEN_PERFORMANCE_SAMPLE_COUNT = {
    "mixtral-8x7b": 15000,
    "llama2-70b": 24576,
    "llama2-70b-interactive": 24576,
    "llama3_1-405b": 8313,
    "llama3_1-405b-interactive": 8313,
    "llama3_1-8b": 13368,
    "llama3_1-8b-interactive": 13368,
    "llama3_1-8b-edge": 5000,
    "deepseek-r1": 4388,
    "deepseek-r1-interactive": 4388,
    "gpt-oss-120b": 6396,
    "gpt-oss-120b-interactive": 6396,
}
# <model>.Offline.min_query_count (the dataset size for LLMs)
LOADGEN_OFFLINE_MIN_QUERY_COUNT = {
    "llama2-70b": 24576,
    "llama3_1-405b": 8313,
    "llama3_1-8b": 13368,
    "mixtral-8x7b": 15000,
    "llama3_1-8b-edge": 5000,
    "deepseek-r1": 4388,
}
# <model>.Server.ttft_latency / tpot_latency, in ms
LOADGEN_SERVER_LATENCY_MS = {
    "llama2-70b": (2000, 200),
    "llama2-70b-interactive": (450, 40),
    "mixtral-8x7b": (2000, 200),
    "llama3_1-405b": (6000, 175),
    "llama3_1-405b-interactive": (4500, 80),
    "llama3_1-8b": (2000, 100),
    "llama3_1-8b-interactive": (500, 30),
    "deepseek-r1": (2000, 80),
    "deepseek-r1-interactive": (1500, 15),
    "gpt-oss-120b": (3000, 80),
    "gpt-oss-120b-interactive": (2000, 15),
}

# tools/submission/submission_checker/constants.py: "accuracy-target" and "accuracy-upper-limit".
CHECKER_TARGETS = {
    "llama2-70b-99": {"rouge1": 44.4312 * 0.99, "rouge2": 22.0352 * 0.99, "rougeL": 28.6162 * 0.99},
    "llama2-70b-99.9": {"rouge1": 44.4312 * 0.999, "rouge2": 22.0352 * 0.999, "rougeL": 28.6162 * 0.999},
    "mixtral-8x7b": {
        "rouge1": 45.5989 * 0.99,
        "rouge2": 23.3526 * 0.99,
        "rougeL": 30.4608 * 0.99,
        "gsm8k": 73.66 * 0.99,
        "mbxp": 60.16 * 0.99,
    },
    "llama3.1-405b": {"rougeL": 21.6666 * 0.99, "exact_match": 90.1335 * 0.99},
    "llama3.1-8b": {
        "rouge1": 38.7792 * 0.99,
        "rouge2": 15.9075 * 0.99,
        "rougeL": 24.4957 * 0.99,
        "rougeLsum": 35.793 * 0.99,
        "gen_len": 8167644 * 0.9,
    },
}
CHECKER_TOKENS_PER_SAMPLE = {
    "llama2-70b-99": (294.45 * 0.9, 294.45 * 1.1),
    "llama2-70b-99.9": (294.45 * 0.9, 294.45 * 1.1),
    "mixtral-8x7b": (144.84 * 0.9, 145.9 * 1.1),
    "llama3.1-405b": (684.68 * 0.9, 684.68 * 1.1),
}


# -- the shipped files ----------------------------------------------------------------------------


def test_list_benchmarks_is_exactly_the_shipped_set():
    assert list_benchmarks() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_benchmark_loads_and_is_consistent(name):
    spec = load_benchmark(name)
    assert isinstance(spec, BenchmarkSpec)
    assert spec.name == name
    assert spec.source.name == f"{name}.yaml" and spec.source.is_file()
    assert spec.performance_sample_count <= spec.total_sample_count
    assert 0 <= spec.min_output_tokens <= spec.max_output_tokens
    assert isinstance(spec.stop_token_ids, tuple)
    assert spec.eos_token_id not in spec.stop_token_ids
    assert spec.scenarios, "a benchmark with no scenario cannot run"
    for scenario_name, scenario in spec.scenarios.items():
        assert scenario.name == scenario_name
        if scenario_name == "Offline":
            assert scenario.loadgen_scenario == "Offline" and scenario.streaming is False
            assert scenario.ttft_ms is None and scenario.tpot_ms is None
        elif scenario_name == "SingleStream":  # token latencies measured, no TTFT/TPOT limit
            assert scenario.loadgen_scenario == "SingleStream" and scenario.streaming is True
            assert scenario.ttft_ms is None and scenario.tpot_ms is None
        else:
            assert scenario.loadgen_scenario == "Server" and scenario.streaming is True
            assert scenario.ttft_ms > 0 and scenario.tpot_ms > 0
        if scenario_name == "Interactive":
            assert scenario.loadgen_model.endswith("-interactive")
    if spec.dataset["format"] in ("pickle", "parquet", "json", "npy"):
        # real datasets go under datasets/; the tiny model's is built under build/
        assert spec.dataset["path"].startswith("build/" if "builder" in spec.dataset else "datasets/")


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in PROJECT_OWN])
def test_sample_counts_match_loadgen_mlperf_conf(name):
    spec = load_benchmark(name)
    for scenario in spec.scenarios.values():
        assert spec.performance_sample_count == LOADGEN_PERFORMANCE_SAMPLE_COUNT[scenario.loadgen_model]
    if "Offline" in spec.scenarios and spec.scenarios["Offline"].loadgen_model in LOADGEN_OFFLINE_MIN_QUERY_COUNT:
        assert spec.total_sample_count == LOADGEN_OFFLINE_MIN_QUERY_COUNT[spec.scenarios["Offline"].loadgen_model]


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in PROJECT_OWN])
def test_latency_limits_match_loadgen_mlperf_conf(name):
    spec = load_benchmark(name)
    checked = 0
    for scenario in spec.scenarios.values():
        if scenario.loadgen_scenario == "Server":
            assert (scenario.ttft_ms, scenario.tpot_ms) == LOADGEN_SERVER_LATENCY_MS[scenario.loadgen_model]
            checked += 1
    assert checked >= 1 or set(spec.scenarios) <= {"Offline", "SingleStream"}  # edge: no latency limit


@pytest.mark.parametrize("name", sorted(CHECKER_TARGETS))
def test_accuracy_floors_match_submission_checker(name):
    spec = load_benchmark(name)
    floors = {m.name: m.threshold for m in spec.accuracy.metrics}
    assert floors.keys() == CHECKER_TARGETS[name].keys()
    for metric, expected in CHECKER_TARGETS[name].items():
        assert math.isclose(floors[metric], expected, rel_tol=1e-12), metric


@pytest.mark.parametrize("name", sorted(CHECKER_TOKENS_PER_SAMPLE))
def test_tokens_per_sample_bounds_match_submission_checker(name):
    accuracy = load_benchmark(name).accuracy
    low, high = CHECKER_TOKENS_PER_SAMPLE[name]
    assert math.isclose(accuracy.tokens_per_sample_min, low, rel_tol=1e-9)
    assert math.isclose(accuracy.tokens_per_sample_max, high, rel_tol=1e-9)


def test_llama3_1_8b_bounds_gen_len_in_characters_both_ways():
    gen_len = load_benchmark("llama3.1-8b").accuracy.metric("gen_len")
    assert math.isclose(gen_len.upper_threshold, 8167644 * 1.1)
    assert load_benchmark("llama3.1-8b").accuracy.tokens_per_sample_min is None


def test_llama2_facts():
    spec = load_benchmark("llama2-70b-99")
    assert spec.loadgen_model == "llama2-70b"
    assert (spec.max_output_tokens, spec.eos_token_id) == (1024, 2)
    assert spec.dataset["path"].endswith("open_orca_gpt4_tokenized_llama.sampled_24576.pkl")
    assert spec.dataset["input_column"] == "tok_input"
    assert spec.dataset["reference_column"] == "output"
    assert list(spec.scenarios) == ["Offline", "Server", "Interactive"]
    assert spec.scenario("interactive").loadgen_model == "llama2-70b-interactive"
    assert spec.generation["do_sample"] is False


def test_variants_inherit_everything_but_what_they_change():
    base, strict = load_benchmark("llama2-70b-99"), load_benchmark("llama2-70b-99.9")
    assert strict.dataset == base.dataset and strict.scenarios == base.scenarios
    assert [m.ratio for m in strict.accuracy.metrics] == [0.999] * 3
    assert [m.reference for m in strict.accuracy.metrics] == [m.reference for m in base.accuracy.metrics]

    interactive = load_benchmark("llama2-70b-interactive-99.9")
    assert interactive.loadgen_model == "llama2-70b-interactive"
    assert list(interactive.scenarios) == ["Interactive"]
    assert interactive.accuracy.metrics == strict.accuracy.metrics


def test_mixtral_has_no_interactive_scenario():
    spec = load_benchmark("mixtral-8x7b")
    with pytest.raises(ConfigError, match=r"'mixtral-8x7b' does not support scenario 'Interactive'.*Offline, Server"):
        spec.scenario("Interactive")


def test_llama3_1_models():
    big, small = load_benchmark("llama3.1-405b"), load_benchmark("llama3.1-8b")
    assert big.eos_token_id == small.eos_token_id == 128009
    assert big.dataset["required_columns"] == ["tok_input", "gt_output", "metric"]
    assert small.max_output_tokens == 128
    assert load_benchmark("llama3.1-405b-interactive").scenario("Interactive").loadgen_model == (
        "llama3_1-405b-interactive"
    )


def test_tiny_synthetic_is_synthetic_and_small():
    spec = load_benchmark("tiny-synthetic")
    assert spec.dataset["format"] == "synthetic"
    assert spec.dataset["num_samples"] == spec.total_sample_count == 256
    assert spec.loadgen_model == "tiny-synthetic"
    assert spec.scenario("Interactive").loadgen_model == "tiny-synthetic-interactive"
    assert spec.accuracy.metrics == ()
    assert (spec.accuracy.tokens_per_sample_min, spec.accuracy.tokens_per_sample_max) == (8.0, 64.0)
    assert spec.harness == {"min_duration_ms": 2000}


def test_tiny_is_the_project_model_with_reproduction_targets():
    spec = load_benchmark("tiny")
    assert spec.dataset["format"] == "pickle" and spec.dataset["builder"] == "llmlib.tiny_model:tiny_dataset_path"
    assert spec.loadgen_model == "tiny" and spec.scenario("Interactive").loadgen_model == "tiny-interactive"
    assert {m.name: m.threshold for m in spec.accuracy.metrics} == pytest.approx(
        {"rouge1": 99.0, "rouge2": 99.0, "rougeL": 99.0})
    assert spec.accuracy.tokens_per_sample_min == pytest.approx(32.484375 * 0.99)


# -- names, aliases, scenarios --------------------------------------------------------------------


@pytest.mark.parametrize("alias, target", sorted(ALIASES.items()))
def test_aliases_resolve_to_the_canonical_benchmark(alias, target):
    assert load_benchmark(alias).name == target


def test_unknown_benchmark_suggests_close_names():
    with pytest.raises(ConfigError) as info:
        load_benchmark("llama2-7b")
    message = str(info.value)
    assert message.startswith("Unknown benchmark 'llama2-7b'. Did you mean: ")
    assert "llama2-70b" in message.split("Known:")[0]
    assert "Known: " in message and "tiny" in message.split("Known:")[1]
    assert isinstance(info.value, HarnessError)


@pytest.mark.parametrize(
    "text, expected",
    [("offline", "Offline"), ("SERVER", "Server"), (" Interactive ", "Interactive"), ("Offline", "Offline")],
)
def test_parse_scenario(text, expected):
    assert parse_scenario(text) == expected


@pytest.mark.parametrize("text", ["MultiStream", "", "offline2", None])
def test_parse_scenario_rejects_others_listing_valid_ones(text):
    with pytest.raises(ConfigError, match="Valid: Offline, Server, Interactive"):
        parse_scenario(text)


# -- loader behaviour on hand-written files --------------------------------------------------------

MINIMAL = """\
loadgen_model: m
rounds: [v6.1]
dataset: {format: npy, path: datasets/m}
total_sample_count: 10
performance_sample_count: 10
max_output_tokens: 8
min_output_tokens: 1
eos_token_id: 2
stop_token_ids: []
generation: {temperature: 0.0}
scenarios:
  Offline: {loadgen_scenario: Offline, streaming: false}
  Server: {loadgen_scenario: Server, ttft_ms: 100, tpot_ms: 10, streaming: true}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults(tmp_path):
    write(tmp_path, "m", MINIMAL)
    spec = load_benchmark("m", configs_dir=tmp_path)
    assert spec.accuracy.metrics == () and spec.harness == {}
    assert spec.scenario("server").loadgen_model == "m"
    assert spec.source == tmp_path / "m.yaml"


def test_extends_deep_merges_child_wins_and_null_deletes(tmp_path):
    write(tmp_path, "base", MINIMAL + "harness: {a: 1, nested: {x: 1, y: 2}}\n")
    write(
        tmp_path,
        "child",
        "extends: base\nmax_output_tokens: 4\nharness: {nested: {y: 3}, b: 2}\n"
        "scenarios:\n  Offline: null\n  Server: {tpot_ms: 20}\n",
    )
    spec = load_benchmark("child", configs_dir=tmp_path)
    assert spec.max_output_tokens == 4
    assert spec.harness == {"a": 1, "nested": {"x": 1, "y": 3}, "b": 2}
    assert list(spec.scenarios) == ["Server"]
    assert (spec.scenarios["Server"].ttft_ms, spec.scenarios["Server"].tpot_ms) == (100.0, 20.0)
    assert spec.dataset == {"format": "npy", "path": "datasets/m"}


def test_lists_are_replaced_not_merged(tmp_path):
    write(tmp_path, "base", MINIMAL.replace("stop_token_ids: []", "stop_token_ids: [5, 6]"))
    write(tmp_path, "child", "extends: base\nstop_token_ids: [7]\n")
    assert load_benchmark("child", configs_dir=tmp_path).stop_token_ids == (7,)


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a", "extends: b\n")
    write(tmp_path, "b", "extends: a\n")
    with pytest.raises(ConfigError, match=r"Cycle in benchmark 'extends': a -> b -> a"):
        load_benchmark("a", configs_dir=tmp_path)


def test_extends_unknown_parent_names_the_file(tmp_path):
    path = write(tmp_path, "a", "extends: nope\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}.*'extends'.*Unknown benchmark 'nope'"):
        load_benchmark("a", configs_dir=tmp_path)


def test_unknown_top_level_key_is_an_error(tmp_path):
    path = write(tmp_path, "m", MINIMAL + "max_ouput_tokens: 3\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: unknown key\(s\) max_ouput_tokens"):
        load_benchmark("m", configs_dir=tmp_path)


def test_unknown_nested_key_is_an_error(tmp_path):
    write(tmp_path, "m", MINIMAL.replace("tpot_ms: 10,", "tpot_ms: 10, tpot: 3,"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) under 'scenarios.Server': tpot"):
        load_benchmark("m", configs_dir=tmp_path)


def test_missing_required_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "m", MINIMAL.replace("eos_token_id: 2\n", ""))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: missing required key 'eos_token_id'"):
        load_benchmark("m", configs_dir=tmp_path)


def test_missing_key_in_child_names_the_extends_chain(tmp_path):
    write(tmp_path, "base", MINIMAL)
    write(tmp_path, "child", "extends: base\neos_token_id: null\n")
    with pytest.raises(ConfigError, match=r"child.yaml \(extends base\): missing required key 'eos_token_id'"):
        load_benchmark("child", configs_dir=tmp_path)


@pytest.mark.parametrize(
    "old, new, key, expected",
    [
        ("total_sample_count: 10", "total_sample_count: ten", "total_sample_count", "an integer >= 1"),
        ("eos_token_id: 2", "eos_token_id: true", "eos_token_id", "an integer >= 0"),
        ("stop_token_ids: []", "stop_token_ids: 5", "stop_token_ids", "a list of non-negative integer"),
        ("ttft_ms: 100", "ttft_ms: -1", "scenarios.Server.ttft_ms", "a positive number"),
        ("streaming: true", "streaming: yes please", "scenarios.Server.streaming", "true or false"),
        ("format: npy", "format: csv", "dataset.format", "one of npy, pickle, parquet, json, synthetic, math"),
        ("performance_sample_count: 10", "performance_sample_count: 11", "performance_sample_count", "<= total"),
        ("generation: {temperature: 0.0}", "generation: greedy", "generation", "a mapping"),
    ],
)
def test_ill_typed_values_name_key_and_expectation(tmp_path, old, new, key, expected):
    assert old in MINIMAL
    path = write(tmp_path, "m", MINIMAL.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_benchmark("m", configs_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


def test_server_scenario_needs_latency_limits(tmp_path):
    write(tmp_path, "m", MINIMAL.replace("ttft_ms: 100, ", ""))
    with pytest.raises(ConfigError, match=r"missing required key 'scenarios.Server.ttft_ms'"):
        load_benchmark("m", configs_dir=tmp_path)


def test_scenario_names_are_checked(tmp_path):
    write(tmp_path, "m", MINIMAL.replace("  Offline:", "  MultiStream:"))
    with pytest.raises(ConfigError, match=r"'scenarios' must be keyed by Offline, Server, Interactive, SingleStream"):
        load_benchmark("m", configs_dir=tmp_path)


def test_accuracy_forms(tmp_path):
    write(
        tmp_path,
        "m",
        MINIMAL
        + "accuracy:\n  ratio: 0.99\n  metrics:\n    - {name: a, reference: 10}\n"
        + "    - {name: b, reference: 20, ratio: 0.5}\n"
        + "  tokens_per_sample: {reference: 100, min_ratio: 0.9, max_ratio: 1.1}\n",
    )
    accuracy = load_benchmark("m", configs_dir=tmp_path).accuracy
    assert accuracy.metrics == (
        AccuracyTarget(name="a", reference=10.0, ratio=0.99),
        AccuracyTarget(name="b", reference=20.0, ratio=0.5),
    )
    assert math.isclose(accuracy.metric("a").threshold, 9.9) and accuracy.metric("b").threshold == 10.0
    assert math.isclose(accuracy.tokens_per_sample_min, 90) and math.isclose(accuracy.tokens_per_sample_max, 110)
    with pytest.raises(ConfigError, match="No accuracy metric 'c'. Known: a, b"):
        accuracy.metric("c")


def test_accuracy_metric_needs_a_ratio_somewhere(tmp_path):
    write(tmp_path, "m", MINIMAL + "accuracy:\n  metrics:\n    - {name: a, reference: 10}\n")
    with pytest.raises(ConfigError, match=r"missing required key 'accuracy.metrics\[0\].ratio'"):
        load_benchmark("m", configs_dir=tmp_path)


def test_tokens_per_sample_forms_cannot_mix(tmp_path):
    write(tmp_path, "m", MINIMAL + "accuracy:\n  tokens_per_sample: {reference: 10, min_ratio: 0.9, max: 20}\n")
    with pytest.raises(ConfigError, match="not both"):
        load_benchmark("m", configs_dir=tmp_path)


def test_bad_yaml_and_non_mapping_are_config_errors(tmp_path):
    path = write(tmp_path, "m", "loadgen_model: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid YAML"):
        load_benchmark("m", configs_dir=tmp_path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: expected a mapping"):
        load_benchmark("m", configs_dir=tmp_path)


def test_spec_is_frozen():
    spec = load_benchmark("tiny")
    with pytest.raises(AttributeError):
        spec.max_output_tokens = 1  # type: ignore[misc]


# -- the shipped files against the official files, parsed here -------------------------------------
# ../shared/mlperf-reference/ holds LoadGen's mlperf.conf and the submission checker (its v6.1
# tables); every fact a benchmark file repeats from them is compared with the file itself.

_REPO = Path(__file__).resolve().parents[2]
# ../shared/ next to the main checkout; a worktree under wt/ sees it one level further up
REFERENCE = next((p for p in (_REPO.parent / "shared" / "mlperf-reference",
                              _REPO.parent.parent / "shared" / "mlperf-reference") if p.is_dir()),
                 _REPO.parent / "shared" / "mlperf-reference")
needs_reference = pytest.mark.skipif(not (REFERENCE / "loadgen" / "mlperf.conf").is_file(),
                                     reason=f"the official MLPerf files are not at {REFERENCE}")
MLPERF_BENCHMARKS = [n for n in SHIPPED if n not in PROJECT_OWN]


def mlperf_conf() -> dict[tuple[str, str, str], str]:
    """(model, scenario, key) -> value of every `model.scenario.key = value` line."""
    out = {}
    for line in (REFERENCE / "loadgen" / "mlperf.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lhs, value = (part.strip() for part in line.split("=", 1))
            model, scenario, key = lhs.split(".", 2) if lhs.count(".") >= 2 else (*lhs.split(".", 1), "")
            # model names hold dots in none of the LLM keys; scenario and key never do
            out[(model, scenario, key)] = value
    return out


def conf_value(conf, model: str, scenario: str, key: str) -> str | None:
    """LoadGen's lookup order: model.scenario, model.*, *.scenario, *.*."""
    for m, s in ((model, scenario), (model, "*"), ("*", scenario), ("*", "*")):
        if (m, s, key) in conf:
            return conf[(m, s, key)]
    return None


def checker_config(version: str = "v6.1") -> dict:
    import importlib
    import sys

    sys.path.insert(0, str(REFERENCE / "tools" / "submission"))
    try:
        return importlib.import_module("submission_checker.constants")
    finally:
        sys.path.pop(0)


CHECKER_METRIC_NAMES = {"ROUGE1": "rouge1", "ROUGE2": "rouge2", "ROUGEL": "rougeL", "ROUGELSUM": "rougeLsum",
                        "GEN_LEN": "gen_len", "exact_match": "exact_match", "gsm8k_accuracy": "gsm8k",
                        "mbxp_accuracy": "mbxp"}


def checker_pairs(entry) -> dict[str, float]:
    return {entry[i]: entry[i + 1] for i in range(0, len(entry), 2)}


def newest_checker_round(spec) -> str:
    return [r for r in spec.rounds if r in checker_config().MODEL_CONFIG][-1]


@needs_reference
@pytest.mark.parametrize("name", MLPERF_BENCHMARKS)
def test_loadgen_facts_equal_mlperf_conf(name):
    conf = mlperf_conf()
    spec = load_benchmark(name)
    for scenario in spec.scenarios.values():
        model, lg_scenario = scenario.loadgen_model, scenario.loadgen_scenario
        assert int(conf_value(conf, model, lg_scenario, "performance_sample_count_override")) == \
            spec.performance_sample_count
        assert conf_value(conf, model, lg_scenario, "use_token_latencies") == "1"
        accuracy_count = conf_value(conf, model, lg_scenario, "accuracy_sample_count_override")
        if accuracy_count is not None:
            assert spec.accuracy_sample_count == int(accuracy_count)
            assert spec.for_mode("AccuracyOnly").total_sample_count == int(accuracy_count)
        else:
            assert spec.accuracy_sample_count is None
        if lg_scenario == "Server":
            assert float(conf_value(conf, model, "Server", "ttft_latency")) == scenario.ttft_ms
            assert float(conf_value(conf, model, "Server", "tpot_latency")) == scenario.tpot_ms
        if lg_scenario == "Offline" and conf_value(conf, model, "Offline", "min_query_count") != "":
            min_queries = conf.get((model, "Offline", "min_query_count"))
            if min_queries is not None:  # the LLMs give their dataset size (gpt-oss-120b gives none)
                assert int(min_queries) == spec.total_sample_count
        if lg_scenario == "SingleStream":
            assert conf_value(conf, model, "SingleStream", "target_latency_percentile") == "90"


@needs_reference
@pytest.mark.parametrize("name", MLPERF_BENCHMARKS)
def test_facts_equal_the_submission_checker_of_their_newest_round(name):
    spec = load_benchmark(name)
    checker = checker_config()
    round_name = newest_checker_round(spec)
    cfg = checker.MODEL_CONFIG[round_name]
    model = spec.submission_model
    assert model in cfg["models"] or name in cfg["models"]
    model = model if model in cfg["models"] else name  # v5.0 named the interactive variants apart
    assert cfg["performance-sample-count"][model] == spec.performance_sample_count
    assert cfg["dataset-size"][model] == spec.total_sample_count
    assert cfg["accuracy-sample-count"].get(model) == spec.accuracy_sample_count
    floors = checker_pairs(cfg["accuracy-target"][model])
    ours = {m.name: m for m in spec.accuracy.metrics}
    expected_names = {CHECKER_METRIC_NAMES[k] for k in floors if k != "TOKENS_PER_SAMPLE"}
    assert set(ours) == expected_names
    for key, value in floors.items():
        if key == "TOKENS_PER_SAMPLE":
            assert math.isclose(spec.accuracy.tokens_per_sample_min, value, rel_tol=1e-9)
        else:
            assert math.isclose(ours[CHECKER_METRIC_NAMES[key]].threshold, value, rel_tol=1e-9), key
    uppers = checker_pairs(cfg["accuracy-upper-limit"].get(model, ()))
    for key, value in uppers.items():
        if key == "TOKENS_PER_SAMPLE":
            assert math.isclose(spec.accuracy.tokens_per_sample_max, value, rel_tol=1e-9)
        else:
            assert math.isclose(ours[CHECKER_METRIC_NAMES[key]].upper_threshold, value, rel_tol=1e-9), key
    if "TOKENS_PER_SAMPLE" not in floors:
        assert spec.accuracy.tokens_per_sample_min is None
    if "TOKENS_PER_SAMPLE" not in uppers:
        assert spec.accuracy.tokens_per_sample_max is None
    limits = checker.LLM_LATENCY_LIMITS.get(model, {})
    for scenario in spec.scenarios.values():
        if scenario.loadgen_scenario != "Server":
            continue
        key = scenario.name if model == spec.submission_model and scenario.name in limits else "Server"
        assert (limits[key]["ttft"], limits[key]["tpot"]) == (scenario.ttft_ms * 1e6, scenario.tpot_ms * 1e6)


def allowed_scenarios(cfg: dict, model: str) -> set[str]:
    out = set()
    for kind in ("required-scenarios-datacenter", "optional-scenarios-datacenter", "required-scenarios-edge",
                 "optional-scenarios-edge", "required-scenarios-datacenter-edge",
                 "optional-scenarios-datacenter-edge"):
        out |= set(cfg.get(kind, {}).get(model, ()))
    return out


@needs_reference
@pytest.mark.parametrize("name", MLPERF_BENCHMARKS)
def test_rounds_are_the_checker_versions_that_list_the_benchmark(name):
    spec = load_benchmark(name)
    expected = []
    for version, cfg in checker_config().MODEL_CONFIG.items():
        if name in cfg["models"]:
            expected.append(version)
        elif spec.submission_model != name:  # an interactive variant: the base model's Interactive scenario
            base = spec.submission_model
            if base in cfg["models"] and "Interactive" in allowed_scenarios(cfg, base):
                expected.append(version)
    assert spec.rounds == tuple(sorted(expected))
    assert not spec.every_round


@needs_reference
def test_the_current_round_has_every_checker_llm_the_project_runs():
    cfg = checker_config().MODEL_CONFIG[CURRENT_ROUND]
    ours = {}
    for name in MLPERF_BENCHMARKS:
        spec = load_benchmark(name)
        if spec.in_round(CURRENT_ROUND):
            ours.setdefault(spec.submission_model, set()).update(spec.scenarios)
    assert sorted(ours) == ["deepseek-r1", "gpt-oss-120b", "llama2-70b-99.9", "llama3.1-8b", "llama3.1-8b-edge"]
    for model, scenarios in ours.items():
        assert model in cfg["models"]
        required = set(cfg["required-scenarios-datacenter"].get(model, ())) | set(
            cfg["required-scenarios-edge"].get(model, ()))
        assert required <= scenarios, model
        assert scenarios <= allowed_scenarios(cfg, model), model


def test_current_round_and_rounds():
    assert CURRENT_ROUND == "v6.1" and ROUNDS[-1] == CURRENT_ROUND
    assert load_benchmark("mixtral-8x7b").rounds == ("v5.0", "v5.1", "v6.0")
    assert not load_benchmark("mixtral-8x7b").in_round("v6.1")
    assert load_benchmark("tiny").every_round and load_benchmark("tiny").in_round("v5.0")


def test_benchmarks_name_their_evaluator_and_the_rouge_ones_do_not():
    assert load_benchmark("deepseek-r1").accuracy.evaluator == "deepseek-r1"
    assert load_benchmark("deepseek-r1-interactive").accuracy.evaluator == "deepseek-r1"
    assert load_benchmark("gpt-oss-120b").accuracy.evaluator == "gpt-oss-120b"
    assert load_benchmark("tiny-gpt-oss-120b").accuracy.evaluator == "gpt-oss-120b"
    assert load_benchmark("mixtral-8x7b").accuracy.evaluator == "mixtral-8x7b"
    assert load_benchmark("llama3.1-405b").accuracy.evaluator == "llama3.1-405b"
    for name in ("llama2-70b-99.9", "llama3.1-8b", "llama3.1-8b-edge", "tiny"):
        assert load_benchmark(name).accuracy.evaluator is None


def test_deepseek_r1_facts():
    spec = load_benchmark("deepseek-r1")
    assert (spec.loadgen_model, spec.max_output_tokens, spec.eos_token_id) == ("deepseek-r1", 20000, 1)
    assert spec.dataset["format"] == "pickle"
    assert spec.dataset["path"].endswith("mlperf_deepseek_r1_dataset_4388_fp8_eval.pkl")
    assert spec.dataset["extra_columns"] == ["ground_truth", "dataset", "question"]
    assert spec.generation["temperature"] == 0.0
    assert spec.scenario("Interactive").loadgen_model == "deepseek-r1-interactive"
    interactive = load_benchmark("deepseek-r1-interactive")
    assert list(interactive.scenarios) == ["Interactive"] and interactive.submission_model == "deepseek-r1"


def test_gpt_oss_120b_reads_another_set_with_other_limits_in_accuracy_mode():
    spec = load_benchmark("gpt-oss-120b")
    perf, acc = spec.for_mode("PerformanceOnly"), spec.for_mode("AccuracyOnly")
    assert perf.dataset["path"].endswith("perf/perf_eval_ref.parquet") and perf.dataset["format"] == "parquet"
    assert acc.dataset["path"].endswith("acc/acc_eval_inputs.parquet") and acc.dataset["format"] == "parquet"
    assert acc.dataset["input_column"] == perf.dataset["input_column"] == ["tok_input", "input_tokens"]
    assert (perf.total_sample_count, acc.total_sample_count) == (6396, 4395)
    assert (perf.max_output_tokens, acc.max_output_tokens) == (10240, 32768)
    assert (perf.generation["reasoning_effort"], acc.generation["reasoning_effort"]) == ("low", "high")
    for mode in (perf, acc):
        assert mode.generation["temperature"] == 1.0 and mode.generation["top_p"] == 1.0
        assert mode.generation["top_k"] == 0
    assert (spec.eos_token_id, spec.stop_token_ids) == (200002, (199999, 200012))
    assert acc.for_mode("AccuracyOnly") is acc
    with pytest.raises(ConfigError, match="already resolved for AccuracyOnly"):
        acc.for_mode("PerformanceOnly")
    assert load_benchmark("gpt-oss-120b-interactive").for_mode("AccuracyOnly").max_output_tokens == 32768


def test_llama3_1_8b_edge_runs_offline_and_single_stream_on_its_5000_samples():
    spec = load_benchmark("llama3.1-8b-edge")
    assert spec.loadgen_model == "llama3_1-8b-edge" and list(spec.scenarios) == ["Offline", "SingleStream"]
    assert spec.scenario("singlestream").loadgen_scenario == "SingleStream"
    assert spec.dataset["format"] == "json" and spec.dataset["path"].endswith("sample_cnn_eval_5000.json")
    assert spec.total_sample_count == spec.performance_sample_count == 5000
    assert spec.max_output_tokens == 128


def test_stand_ins_keep_the_real_formats_under_their_own_loadgen_keys():
    for tiny, real in (("tiny-deepseek-r1", "deepseek-r1"), ("tiny-gpt-oss-120b", "gpt-oss-120b"),
                       ("tiny-llama3.1-8b-edge", "llama3.1-8b-edge")):
        t, r = load_benchmark(tiny), load_benchmark(real)
        assert t.dataset["format"] == r.dataset["format"] and t.dataset["path"].startswith("build/standins/")
        assert t.loadgen_model == tiny and t.submission_model == tiny and t.every_round
        assert list(t.scenarios) == list(r.scenarios) and t.accuracy.evaluator == r.accuracy.evaluator
        for scenario in t.scenarios.values():
            assert scenario.loadgen_model.startswith(tiny)
    acc = load_benchmark("tiny-gpt-oss-120b").for_mode("AccuracyOnly")
    assert acc.dataset["path"] == "build/standins/gpt-oss-120b/acc/acc_eval_inputs.parquet"
    assert acc.total_sample_count == acc.accuracy_sample_count == 32


def test_rounds_are_required_and_checked(tmp_path):
    write(tmp_path, "m", MINIMAL.replace("rounds: [v6.1]\n", ""))
    with pytest.raises(ConfigError, match=r"missing required key 'rounds' \(a list of MLPerf rounds from v5\.0"):
        load_benchmark("m", configs_dir=tmp_path)
    for bad in ("[v7.0]", "[]", "v6.1", "[v6.1, v6.1]", "everything"):
        write(tmp_path, "m", MINIMAL.replace("rounds: [v6.1]", f"rounds: {bad}"))
        with pytest.raises(ConfigError, match=r"key 'rounds' must be a list of MLPerf rounds"):
            load_benchmark("m", configs_dir=tmp_path)
    write(tmp_path, "m", MINIMAL.replace("rounds: [v6.1]", "rounds: [v6.1, v5.0]"))
    assert load_benchmark("m", configs_dir=tmp_path).rounds == ("v5.0", "v6.1")
    write(tmp_path, "m", MINIMAL.replace("rounds: [v6.1]", "rounds: all"))
    spec = load_benchmark("m", configs_dir=tmp_path)
    assert spec.every_round and spec.in_round("v5.0") and spec.in_round("v6.1")


def test_test_modes_merge_and_reject_what_they_cannot_change(tmp_path):
    write(tmp_path, "m", MINIMAL + "test_modes:\n  AccuracyOnly: {max_output_tokens: 6, generation: {effort: high}}\n")
    spec = load_benchmark("m", configs_dir=tmp_path)
    acc = spec.for_mode("AccuracyOnly")
    assert (spec.max_output_tokens, acc.max_output_tokens) == (8, 6)
    assert acc.generation == {"temperature": 0.0, "effort": "high"} and acc.test_mode == "AccuracyOnly"
    assert spec.for_mode("PerformanceOnly").max_output_tokens == 8
    with pytest.raises(ConfigError, match="Unknown test mode 'Accuracy'"):
        spec.for_mode("Accuracy")
    write(tmp_path, "m", MINIMAL + "test_modes:\n  AccuracyOnly: {loadgen_model: other}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) under 'test_modes.AccuracyOnly': loadgen_model"):
        load_benchmark("m", configs_dir=tmp_path)
    write(tmp_path, "m", MINIMAL + "test_modes:\n  Accuracy: {max_output_tokens: 6}\n")
    with pytest.raises(ConfigError, match=r"'test_modes' must be keyed by PerformanceOnly, AccuracyOnly"):
        load_benchmark("m", configs_dir=tmp_path)
    write(tmp_path, "m", MINIMAL + "accuracy_sample_count: 11\n")
    with pytest.raises(ConfigError, match=r"'accuracy_sample_count' must be <= total_sample_count \(10\)"):
        load_benchmark("m", configs_dir=tmp_path)


def test_single_stream_scenario_must_be_loadgen_single_stream(tmp_path):
    write(tmp_path, "m", MINIMAL + "  SingleStream: {loadgen_scenario: SingleStream, streaming: true}\n")
    assert load_benchmark("m", configs_dir=tmp_path).scenario("SingleStream").ttft_ms is None
    write(tmp_path, "m", MINIMAL + "  SingleStream: {loadgen_scenario: Offline, streaming: true}\n")
    with pytest.raises(ConfigError, match=r"'scenarios.SingleStream.loadgen_scenario' must be 'SingleStream'"):
        load_benchmark("m", configs_dir=tmp_path)
    write(tmp_path, "m", MINIMAL + "  Interactive: {loadgen_scenario: Offline, streaming: true}\n")
    with pytest.raises(ConfigError, match=r"'scenarios.Interactive.loadgen_scenario' must be 'Server'"):
        load_benchmark("m", configs_dir=tmp_path)


def test_a_test_mode_that_breaks_the_benchmark_is_an_error_at_load(tmp_path):
    write(tmp_path, "m", MINIMAL + "test_modes:\n  AccuracyOnly: {total_sample_count: 4}\n")
    with pytest.raises(ConfigError, match=r"'performance_sample_count' must be <= total_sample_count \(4\).*"
                                          r"\(with test_modes.AccuracyOnly applied\)"):
        load_benchmark("m", configs_dir=tmp_path)
