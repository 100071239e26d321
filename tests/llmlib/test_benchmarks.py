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
    AccuracyTarget,
    BenchmarkSpec,
    list_benchmarks,
    load_benchmark,
    parse_scenario,
)
from llmlib.errors import ConfigError, HarnessError

SHIPPED = [
    "llama2-70b-99",
    "llama2-70b-99.9",
    "llama2-70b-interactive-99",
    "llama2-70b-interactive-99.9",
    "llama3.1-405b",
    "llama3.1-405b-interactive",
    "llama3.1-8b",
    "llama3.1-8b-interactive",
    "math-tiny",
    "mixtral-8x7b",
    "tiny",
    "tiny-synthetic",
]
PROJECT_OWN = ("math-tiny", "tiny", "tiny-synthetic")  # not MLPerf benchmarks: LoadGen's mlperf.conf has no entries

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
}
# <model>.Offline.min_query_count (the dataset size for LLMs)
LOADGEN_OFFLINE_MIN_QUERY_COUNT = {
    "llama2-70b": 24576,
    "llama3_1-405b": 8313,
    "llama3_1-8b": 13368,
    "mixtral-8x7b": 15000,
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
        else:
            assert scenario.loadgen_scenario == "Server" and scenario.streaming is True
            assert scenario.ttft_ms > 0 and scenario.tpot_ms > 0
        if scenario_name == "Interactive":
            assert scenario.loadgen_model.endswith("-interactive")
    if spec.dataset["format"] in ("pickle", "npy"):
        # real datasets go under datasets/; the tiny model's is built under build/
        assert spec.dataset["path"].startswith("build/" if "builder" in spec.dataset else "datasets/")


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in PROJECT_OWN])
def test_sample_counts_match_loadgen_mlperf_conf(name):
    spec = load_benchmark(name)
    for scenario in spec.scenarios.values():
        assert spec.performance_sample_count == LOADGEN_PERFORMANCE_SAMPLE_COUNT[scenario.loadgen_model]
    if "Offline" in spec.scenarios:
        assert spec.total_sample_count == LOADGEN_OFFLINE_MIN_QUERY_COUNT[spec.scenarios["Offline"].loadgen_model]


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in PROJECT_OWN])
def test_latency_limits_match_loadgen_mlperf_conf(name):
    spec = load_benchmark(name)
    checked = 0
    for scenario in spec.scenarios.values():
        if scenario.loadgen_scenario == "Server":
            assert (scenario.ttft_ms, scenario.tpot_ms) == LOADGEN_SERVER_LATENCY_MS[scenario.loadgen_model]
            checked += 1
    assert checked >= 1


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


@pytest.mark.parametrize("text", ["SingleStream", "", "offline2", None])
def test_parse_scenario_rejects_others_listing_valid_ones(text):
    with pytest.raises(ConfigError, match="Valid: Offline, Server, Interactive"):
        parse_scenario(text)


# -- loader behaviour on hand-written files --------------------------------------------------------

MINIMAL = """\
loadgen_model: m
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
        ("format: npy", "format: csv", "dataset.format", "one of npy, pickle, synthetic, math"),
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
    write(tmp_path, "m", MINIMAL.replace("  Offline:", "  SingleStream:"))
    with pytest.raises(ConfigError, match=r"'scenarios' must be keyed by Offline, Server, Interactive"):
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
