"""Tests for llmlib.config: precedence, flag-string merging, the command line, system files, ResolvedConfig.

Every resolve() gets an explicit `env` dict, so the process environment never leaks in.
"""

from __future__ import annotations

import copy
import json
import pickle
import re

import pytest

from llmlib.config import (
    FLAG_STRING_FIELDS,
    RUNTIME_FLAG_DEFAULTS,
    Configuration,
    Layer,
    ResolvedConfig,
    active_layers,
    parse_cli,
    resolve,
    system_layers,
)
from llmlib.errors import ConfigError
from llmlib.fields import FIELDS

NO_ENV: dict[str, str] = {}


def write_system(tmp_path, name: str, text: str):
    systems = tmp_path / "systems"
    systems.mkdir(parents=True, exist_ok=True)
    path = systems / f"{name}.yaml"
    path.write_text(text)
    return path


# -- precedence -----------------------------------------------------------------------------------


def test_defaults_when_nothing_is_given():
    cfg = resolve(env=NO_ENV, layers=())
    for name, field in FIELDS.items():
        if name in FLAG_STRING_FIELDS:
            continue
        assert cfg.source(name) == "default", name
    assert cfg.system_name == "local"
    assert cfg.warmup_queries == 8
    assert cfg.show_progress is True


@pytest.mark.parametrize(
    ("given", "expected_value", "expected_source"),
    [
        ({}, "local", "default"),
        ({"layers"}, "from_layer2", "layer2"),
        ({"layers", "env"}, "from_env", "env SYSTEM_NAME"),
        ({"layers", "env", "cli"}, "from_cli", "command line"),
        ({"layers", "env", "cli", "explicit"}, "from_explicit", "explicit"),
        ({"explicit", "layers"}, "from_explicit", "explicit"),
        ({"cli", "layers"}, "from_cli", "command line"),
        ({"env", "cli"}, "from_cli", "command line"),
    ],
)
def test_precedence_chain(given, expected_value, expected_source):
    layers = (
        Layer({"system_name": "from_layer1"}, "layer1"),
        Layer({"system_name": "from_layer2"}, "layer2"),
    )
    cfg = resolve(
        explicit={"system_name": "from_explicit"} if "explicit" in given else None,
        cli={"system_name": "from_cli"} if "cli" in given else None,
        env={"SYSTEM_NAME": "from_env"} if "env" in given else {},
        layers=layers if "layers" in given else (),
    )
    assert cfg.system_name == expected_value
    assert cfg.source("system_name") == expected_source


def test_later_layers_win_and_missing_keys_fall_through():
    layers = (
        Layer({"warmup_queries": 1, "dummy_seed": 11}, "first"),
        Layer({"warmup_queries": 2}, "second"),
    )
    cfg = resolve(env=NO_ENV, layers=layers)
    assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (2, "second")
    assert (cfg.dummy_seed, cfg.source("dummy_seed")) == (11, "first")
    assert cfg.source("dummy_num_cores") == "default"


def test_env_only_applies_to_fields_that_declare_a_variable():
    cfg = resolve(env={"WARMUP_QUERIES": "99", "warmup_queries": "99"}, layers=())
    assert cfg.warmup_queries == 8
    assert cfg.source("warmup_queries") == "default"


def test_resolve_reads_os_environ_only_when_env_is_not_given(monkeypatch):
    monkeypatch.setenv("SYSTEM_NAME", "from_process_env")
    assert resolve(layers=()).system_name == "from_process_env"
    assert resolve(env={}, layers=()).system_name == "local"


def test_command_line_false_overrides_layer_true():
    layer = Layer({"show_progress": True}, "sys.yaml: default")
    cfg = resolve(cli=parse_cli(["--show_progress=false"]), env=NO_ENV, layers=(layer,))
    assert cfg.show_progress is False
    assert cfg.source("show_progress") == "command line"


def test_bare_bool_flag_means_true_and_overrides_layer_false():
    assert parse_cli(["--show_progress"]) == {"show_progress": "true"}
    layer = Layer({"show_progress": False}, "sys.yaml: default")
    cfg = resolve(cli=parse_cli(["--show_progress"]), env=NO_ENV, layers=(layer,))
    assert cfg.show_progress is True
    assert cfg.source("show_progress") == "command line"


def test_layer_false_overrides_default_true():
    cfg = resolve(env=NO_ENV, layers=(Layer({"show_progress": False}, "L"),))
    assert cfg.show_progress is False
    assert cfg.source("show_progress") == "L"


def test_explicit_overrides_command_line_even_when_falsy():
    cfg = resolve(
        explicit={"show_progress": False, "warmup_queries": 0},
        cli=parse_cli(["--show_progress=true", "--warmup_queries=5"]),
        env=NO_ENV,
        layers=(),
    )
    assert cfg.show_progress is False
    assert cfg.warmup_queries == 0
    assert cfg.source("show_progress") == "explicit"
    assert cfg.source("warmup_queries") == "explicit"


def test_command_line_values_are_parsed_with_their_field():
    cfg = resolve(cli={"warmup_queries": "3", "dummy_ttft_ms": "1.5"}, env=NO_ENV, layers=())
    assert cfg.warmup_queries == 3 and type(cfg.warmup_queries) is int
    assert cfg.dummy_ttft_ms == 1.5


def test_bad_values_name_their_source():
    with pytest.raises(ConfigError, match=r"^command line: --warmup_queries='lots'"):
        resolve(cli={"warmup_queries": "lots"}, env=NO_ENV, layers=())
    with pytest.raises(ConfigError, match=r"^sys\.yaml: Server: --warmup_queries"):
        resolve(env=NO_ENV, layers=(Layer({"warmup_queries": "lots"}, "sys.yaml: Server"),))
    with pytest.raises(ConfigError, match=r"^explicit: --test_mode"):
        resolve(explicit={"test_mode": "Fast"}, env=NO_ENV, layers=())


def test_unknown_explicit_or_cli_names_are_rejected():
    with pytest.raises(ConfigError, match="Did you mean: .*warmup_queries"):
        resolve(explicit={"warmup_querie": 1}, env=NO_ENV, layers=())
    with pytest.raises(ConfigError, match="Did you mean: .*core_type"):
        resolve(cli={"core_typ": "dummy"}, env=NO_ENV, layers=())


# -- Configuration contexts -----------------------------------------------------------------------


def test_nested_configurations_stack_and_unwind():
    assert active_layers() == ()
    with Configuration({"warmup_queries": 3, "dummy_seed": 5}, source="outer"):
        cfg = resolve(env=NO_ENV)
        assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (3, "outer")
        with Configuration({"warmup_queries": 4}, source="inner"):
            cfg = resolve(env=NO_ENV)
            assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (4, "inner")
            assert (cfg.dummy_seed, cfg.source("dummy_seed")) == (5, "outer")
            # The command line still wins over every active layer.
            cli_cfg = resolve(cli={"warmup_queries": "6"}, env=NO_ENV)
            assert cli_cfg.warmup_queries == 6
        cfg = resolve(env=NO_ENV)
        assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (3, "outer")
    cfg = resolve(env=NO_ENV)
    assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (8, "default")
    assert active_layers() == ()


def test_configuration_unwinds_on_error():
    with pytest.raises(RuntimeError):
        with Configuration({"warmup_queries": 3}):
            raise RuntimeError("boom")
    assert active_layers() == ()


def test_explicit_layers_argument_ignores_the_active_configuration():
    with Configuration({"warmup_queries": 3}, source="active"):
        assert resolve(env=NO_ENV, layers=()).warmup_queries == 8
        assert resolve(env=NO_ENV, layers=(Layer({"warmup_queries": 1}, "given"),)).warmup_queries == 1


def test_configuration_values_go_on_top_of_its_layers():
    conf = Configuration({"warmup_queries": 2}, source="values",
                         layers=[Layer({"warmup_queries": 1, "dummy_seed": 9}, "base")])
    assert [layer.source for layer in conf.layers] == ["base", "values"]
    with conf:
        cfg = resolve(env=NO_ENV)
    assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (2, "values")
    assert (cfg.dummy_seed, cfg.source("dummy_seed")) == (9, "base")


def test_configuration_rejects_unknown_settings_naming_the_source():
    with pytest.raises(ConfigError) as info:
        Configuration({"show_progres": True}, source="my.yaml: default")
    message = str(info.value)
    assert message.startswith("my.yaml: default:")
    assert "show_progres" in message
    assert "Did you mean: show_progress" in message


# -- flag strings ---------------------------------------------------------------------------------


def test_runtime_flags_default_to_the_harness_defaults():
    cfg = resolve(env=NO_ENV, layers=())
    assert cfg.trtllm_runtime_flags == RUNTIME_FLAG_DEFAULTS
    assert cfg.source("trtllm_runtime_flags") == "harness defaults"
    assert cfg.trtllm_build_flags == {}
    assert cfg.source("trtllm_build_flags") == "default"


def test_runtime_flags_cli_replaces_layer_then_env_updates_per_key():
    defaults_before = dict(RUNTIME_FLAG_DEFAULTS)
    layer = Layer({"trtllm_runtime_flags": {"only_in_layer": 1, "shared": "layer"}}, "sys.yaml: Server")
    cli = parse_cli(["--trtllm_runtime_flags=shared:cli,max_num_tokens:8192,batch_scheduler_policy:guaranteed_no_evict"])
    env = {"TRTLLM_RUNTIME_FLAGS": "max_num_tokens:4096,kvcache_free_gpu_mem_frac:0.9"}
    cfg = resolve(cli=cli, env=env, layers=(layer,))
    flags = cfg.trtllm_runtime_flags
    assert "only_in_layer" not in flags  # the command line replaced the layer's value, not merged
    assert flags["shared"] == "cli"
    assert flags["max_num_tokens"] == 4096  # env wins per key
    assert flags["kvcache_free_gpu_mem_frac"] == 0.9
    assert flags["batch_scheduler_policy"] == "guaranteed_no_evict"  # cli over the harness default
    for key in ("use_inflight_batching", "dynamic_batch_moving_average_window", "exclude_input_from_output"):
        assert flags[key] == RUNTIME_FLAG_DEFAULTS[key]
    assert cfg.source("trtllm_runtime_flags") == "harness defaults < command line < env TRTLLM_RUNTIME_FLAGS"
    assert RUNTIME_FLAG_DEFAULTS == defaults_before


def test_runtime_flags_from_a_layer_merge_over_the_harness_defaults():
    layer = Layer({"trtllm_runtime_flags": "enable_chunked_context:true"}, "sys.yaml: default")
    cfg = resolve(env=NO_ENV, layers=(layer,))
    assert cfg.trtllm_runtime_flags == {**RUNTIME_FLAG_DEFAULTS, "enable_chunked_context": True}
    assert cfg.source("trtllm_runtime_flags") == "harness defaults < sys.yaml: default"


@pytest.mark.parametrize(("name", "var"), [("trtllm_build_flags", "TRTLLM_BUILD_FLAGS"),
                                           ("trtllm_checkpoint_flags", "TRTLLM_CHECKPOINT_FLAGS")])
def test_build_and_checkpoint_env_dict_updates_the_layer(name, var):
    layer = Layer({name: {"max_batch_size": 64, "use_fp8": True}}, "sys.yaml: default")
    cfg = resolve(env={var: "max_batch_size:128,extra:x"}, layers=(layer,))
    assert getattr(cfg, name) == {"max_batch_size": 128, "use_fp8": True, "extra": "x"}
    assert cfg.source(name) == f"sys.yaml: default < env {var}"


@pytest.mark.parametrize(("name", "var"), [("trtllm_build_flags", "TRTLLM_BUILD_FLAGS"),
                                           ("trtllm_checkpoint_flags", "TRTLLM_CHECKPOINT_FLAGS"),
                                           ("trtllm_runtime_flags", "TRTLLM_RUNTIME_FLAGS")])
def test_flag_env_applies_on_top_of_the_command_line_too(name, var):
    cfg = resolve(cli={name: "a:1,b:2"}, env={var: "b:3"}, layers=())
    flags = getattr(cfg, name)
    assert (flags["a"], flags["b"]) == (1, 3)


def test_flag_env_alone():
    cfg = resolve(env={"TRTLLM_CHECKPOINT_FLAGS": "kv_cache_dtype:fp8"}, layers=())
    assert cfg.trtllm_checkpoint_flags == {"kv_cache_dtype": "fp8"}
    assert cfg.source("trtllm_checkpoint_flags") == "env TRTLLM_CHECKPOINT_FLAGS"


def test_blank_flag_env_is_ignored():
    cfg = resolve(env={"TRTLLM_BUILD_FLAGS": "   "}, layers=())
    assert cfg.trtllm_build_flags == {}
    assert cfg.source("trtllm_build_flags") == "default"


@pytest.mark.parametrize("var", ["TRTLLM_RUNTIME_FLAGS", "TRTLLM_BUILD_FLAGS", "TRTLLM_CHECKPOINT_FLAGS"])
def test_malformed_flag_env_names_the_variable(var):
    with pytest.raises(ConfigError) as info:
        resolve(env={var: "a:1,oops"}, layers=())
    message = str(info.value)
    assert f"env {var}" in message
    assert "'oops'" in message


def test_malformed_cli_flag_string_names_the_command_line():
    with pytest.raises(ConfigError, match=r"^command line: --trtllm_build_flags: .*'a:1,,b:2'"):
        resolve(cli=parse_cli(["--trtllm_build_flags=a:1,,b:2"]), env=NO_ENV, layers=())


# -- parse_cli ------------------------------------------------------------------------------------


def test_parse_cli_keeps_raw_strings():
    assert parse_cli(["--warmup_queries=abc", "--trtllm_build_flags=a:1,b:c:d", "--user_conf="]) == {
        "warmup_queries": "abc",
        "trtllm_build_flags": "a:1,b:c:d",
        "user_conf": "",
    }
    assert parse_cli([]) == {}


def test_parse_cli_unknown_flag_suggests():
    with pytest.raises(ConfigError) as info:
        parse_cli(["--core_typ=dummy"])
    message = str(info.value)
    assert "'--core_typ'" in message
    assert re.search(r"Did you mean: [^?]*--core_type", message)


def test_parse_cli_value_less_non_bool_flag_errors():
    with pytest.raises(ConfigError, match=r"--warmup_queries needs a value"):
        parse_cli(["--warmup_queries"])


def test_parse_cli_flag_given_twice_errors():
    with pytest.raises(ConfigError, match=r"--show_progress given twice"):
        parse_cli(["--show_progress", "--show_progress=false"])
    with pytest.raises(ConfigError, match=r"--warmup_queries given twice"):
        parse_cli(["--warmup_queries=1", "--warmup_queries=1"])


@pytest.mark.parametrize("arg", ["core_type=dummy", "-core_type=dummy", "dummy"])
def test_parse_cli_rejects_arguments_without_dashes(arg):
    with pytest.raises(ConfigError, match=re.escape(repr(arg))):
        parse_cli([arg])


# -- system files ---------------------------------------------------------------------------------

SYSTEM_YAML = """\
default:
  warmup_queries: 1
  show_progress: true
Server:
  warmup_queries: 2
Offline:
  warmup_queries: 9
benchmarks:
  tiny:
    default:
      warmup_queries: 3
    Server:
      warmup_queries: 4
  other:
    default:
      warmup_queries: 99
"""


def test_system_layers_order_for_server(tmp_path):
    write_system(tmp_path, "box", SYSTEM_YAML)
    layers = system_layers(tmp_path, "box", "tiny", "Server", {"warmup_queries": 0})
    assert [layer.source for layer in layers] == [
        "benchmark tiny",
        "box.yaml: default",
        "box.yaml: Server",
        "box.yaml: benchmarks.tiny.default",
        "box.yaml: benchmarks.tiny.Server",
    ]
    assert [layer.values["warmup_queries"] for layer in layers] == [0, 1, 2, 3, 4]
    cfg = resolve(env=NO_ENV, layers=layers)
    assert cfg.warmup_queries == 4
    assert cfg.source("warmup_queries") == "box.yaml: benchmarks.tiny.Server"
    assert cfg.source("show_progress") == "box.yaml: default"


def test_system_layers_pick_only_the_scenario_and_benchmark_asked_for(tmp_path):
    write_system(tmp_path, "box", SYSTEM_YAML)
    layers = system_layers(tmp_path, "box", "tiny", "Offline")
    assert [layer.source for layer in layers] == [
        "box.yaml: default",
        "box.yaml: Offline",
        "box.yaml: benchmarks.tiny.default",
    ]
    assert resolve(env=NO_ENV, layers=layers).warmup_queries == 3
    other = system_layers(tmp_path, "box", "other", "Interactive")
    assert [layer.source for layer in other] == ["box.yaml: default", "box.yaml: benchmarks.other.default"]


def test_system_layers_command_line_and_env_beat_the_file(tmp_path):
    write_system(tmp_path, "box", SYSTEM_YAML)
    layers = system_layers(tmp_path, "box", "tiny", "Server")
    cfg = resolve(cli=parse_cli(["--show_progress=false", "--warmup_queries=7"]), env=NO_ENV, layers=layers)
    assert (cfg.show_progress, cfg.source("show_progress")) == (False, "command line")
    assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (7, "command line")


def test_system_layers_unknown_setting_names_the_file(tmp_path):
    path = write_system(tmp_path, "box", "Server:\n  warmup_querys: 1\n")
    with pytest.raises(ConfigError) as info:
        system_layers(tmp_path, "box", "tiny", "Server")
    message = str(info.value)
    assert str(path) in message
    assert "warmup_querys" in message
    assert "Did you mean: warmup_queries" in message


def test_system_layers_unknown_setting_in_a_benchmark_section_names_the_file(tmp_path):
    path = write_system(tmp_path, "box", "benchmarks:\n  tiny:\n    default:\n      bogus_knob: 1\n")
    with pytest.raises(ConfigError) as info:
        system_layers(tmp_path, "box", "tiny", "Server")
    assert str(path) in str(info.value) or "box.yaml" in str(info.value)
    assert "bogus_knob" in str(info.value)


def test_system_layers_unknown_section_names_the_file(tmp_path):
    path = write_system(tmp_path, "box", "Sever:\n  warmup_queries: 1\n")
    with pytest.raises(ConfigError) as info:
        system_layers(tmp_path, "box", "tiny", "Server")
    message = str(info.value)
    assert str(path) in message
    assert "'Sever'" in message


def test_system_layers_unknown_section_inside_a_benchmark_entry_names_the_file(tmp_path):
    # A typo in a benchmark's scenario section must not be silently ignored.
    path = write_system(tmp_path, "box", "benchmarks:\n  tiny:\n    Sever:\n      warmup_queries: 1\n")
    with pytest.raises(ConfigError) as info:
        system_layers(tmp_path, "box", "tiny", "Server")
    assert "box.yaml" in str(info.value) or str(path) in str(info.value)
    assert "Sever" in str(info.value)


@pytest.mark.parametrize("text", ["benchmarks: [tiny]\n", "benchmarks:\n  tiny: 5\n"])
def test_system_layers_malformed_benchmarks_section_is_a_config_error(tmp_path, text):
    write_system(tmp_path, "box", text)
    with pytest.raises(ConfigError, match="box.yaml"):
        system_layers(tmp_path, "box", "tiny", "Server")


@pytest.mark.parametrize("text", ["- a\n- b\n", "default: [1, 2]\n", "default: {warmup_queries: [1\n"])
def test_system_layers_malformed_file_names_the_file(tmp_path, text):
    write_system(tmp_path, "box", text)
    with pytest.raises(ConfigError, match="box.yaml"):
        system_layers(tmp_path, "box", "tiny", "Server")


def test_system_layers_benchmark_harness_section_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"benchmark tiny: harness: .*min_duration"):
        system_layers(tmp_path, "local", "tiny", "Server", {"min_duration": 5})


def test_missing_system_file_is_an_error_with_suggestions(tmp_path):
    write_system(tmp_path, "dgx_h100", "default:\n  warmup_queries: 1\n")
    with pytest.raises(ConfigError) as info:
        system_layers(tmp_path, "dgx_h10", "tiny", "Server")
    message = str(info.value)
    assert "'dgx_h10'" in message
    assert str(tmp_path / "systems" / "dgx_h10.yaml") in message
    assert "Did you mean: dgx_h100" in message


def test_missing_system_file_without_a_systems_folder(tmp_path):
    with pytest.raises(ConfigError, match="'nowhere'"):
        system_layers(tmp_path, "nowhere", "tiny", "Server")


def test_local_system_needs_no_file(tmp_path):
    assert system_layers(tmp_path, "local", "tiny", "Server") == []
    layers = system_layers(tmp_path, "local", "tiny", "Server", {"min_duration_ms": 2000})
    assert [(dict(layer.values), layer.source) for layer in layers] == [({"min_duration_ms": 2000}, "benchmark tiny")]


def test_local_system_file_is_read_when_present(tmp_path):
    write_system(tmp_path, "local", "default:\n  warmup_queries: 2\n")
    layers = system_layers(tmp_path, "local", "tiny", "Server")
    assert [layer.source for layer in layers] == ["local.yaml: default"]


# -- ResolvedConfig -------------------------------------------------------------------------------


@pytest.fixture
def cfg() -> ResolvedConfig:
    return resolve(cli=parse_cli(["--show_progress=false"]), env={"SYSTEM_NAME": "box"},
                   layers=(Layer({"warmup_queries": 2}, "box.yaml: default"),))


def test_resolved_config_is_read_only(cfg):
    with pytest.raises(AttributeError, match="read-only"):
        cfg.warmup_queries = 5
    with pytest.raises(AttributeError):
        cfg.brand_new = 1
    with pytest.raises(TypeError):
        cfg["warmup_queries"] = 5  # type: ignore[index]
    assert cfg.warmup_queries == 2


def test_resolved_config_access(cfg):
    assert cfg["warmup_queries"] == cfg.warmup_queries == 2
    assert cfg.source("system_name") == "env SYSTEM_NAME"
    assert cfg.source("warmup_queries") == "box.yaml: default"
    assert cfg.source("show_progress") == "command line"
    assert set(cfg.as_dict()) == set(FIELDS)
    snapshot = cfg.as_dict()
    snapshot["warmup_queries"] = 100
    assert cfg.warmup_queries == 2
    with pytest.raises(AttributeError, match="Did you mean: warmup_queries"):
        cfg.warmup_querys  # noqa: B018


def test_with_values_returns_a_validated_copy(cfg):
    new = cfg.with_values(warmup_queries="5", show_progress=True)
    assert (new.warmup_queries, new.source("warmup_queries")) == (5, "explicit")
    assert (new.show_progress, new.source("show_progress")) == (True, "explicit")
    assert (cfg.warmup_queries, cfg.source("warmup_queries")) == (2, "box.yaml: default")
    assert new.system_name == "box"
    tagged = cfg.with_values(source="test", dummy_seed=3)
    assert tagged.source("dummy_seed") == "test"
    with pytest.raises(ConfigError, match=r"explicit: --warmup_queries=-1 must be >= 0"):
        cfg.with_values(warmup_queries=-1)
    with pytest.raises(ConfigError, match=r"explicit: --test_mode='Fast'"):
        cfg.with_values(test_mode="Fast")
    with pytest.raises(ConfigError, match="Did you mean: warmup_queries"):
        cfg.with_values(warmup_querys=1)


def test_write_produces_rows_with_name_value_source(cfg, tmp_path):
    path = tmp_path / "run" / "nested" / "config.json"
    cfg.write(path)
    rows = json.loads(path.read_text())
    assert [row["name"] for row in rows] == list(FIELDS)
    assert all(set(row) == {"name", "value", "source"} for row in rows)
    by_name = {row["name"]: row for row in rows}
    assert by_name["show_progress"] == {"name": "show_progress", "value": False, "source": "command line"}
    assert by_name["system_name"] == {"name": "system_name", "value": "box", "source": "env SYSTEM_NAME"}
    assert by_name["warmup_queries"]["value"] == 2
    assert by_name["trtllm_runtime_flags"]["value"] == RUNTIME_FLAG_DEFAULTS
    assert by_name["server_target_qps"]["value"] is None


def test_format_lists_every_field_with_its_source(cfg):
    text = cfg.format()
    lines = text.splitlines()
    assert len(lines) == len(FIELDS)
    assert [line.split()[0] for line in lines] == list(FIELDS)
    by_name = {line.split()[0]: line for line in lines}
    assert re.search(r"\sfalse\s+\[command line\]$", by_name["show_progress"])
    assert re.search(r"\sbox\s+\[env SYSTEM_NAME\]$", by_name["system_name"])
    assert re.search(r"\s2\s+\[box\.yaml: default\]$", by_name["warmup_queries"])
    assert re.search(r"\snull\s+\[default\]$", by_name["server_target_qps"])


def test_resolved_config_survives_pickle_and_deepcopy(cfg):
    # Configs travel to worker processes; __getattr__ must not recurse on an unset slot.
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), copy.copy(cfg)):
        assert clone.as_dict() == cfg.as_dict()
        assert clone.source("system_name") == "env SYSTEM_NAME"


CORE_YAML = """
default:
  warmup_queries: 1
cores:
  dummy:
    default: {warmup_queries: 2}
    Server: {warmup_queries: 3}
  hf:
    default: {warmup_queries: 50}
benchmarks:
  tiny:
    Server: {warmup_queries: 4}
    cores:
      dummy:
        Server: {warmup_queries: 5}
"""


def test_system_layers_core_sections_apply_only_to_their_core(tmp_path):
    write_system(tmp_path, "box", CORE_YAML)
    layers = system_layers(tmp_path, "box", "tiny", "Server", core_type="dummy")
    assert [layer.source for layer in layers] == [
        "box.yaml: default",
        "box.yaml: cores.dummy.default",
        "box.yaml: cores.dummy.Server",
        "box.yaml: benchmarks.tiny.Server",
        "box.yaml: benchmarks.tiny.cores.dummy.Server",
    ]
    assert resolve(env=NO_ENV, layers=layers).warmup_queries == 5
    hf = system_layers(tmp_path, "box", "tiny", "Offline", core_type="hf")
    assert resolve(env=NO_ENV, layers=hf).warmup_queries == 50
    # without a core, no core section applies
    assert resolve(env=NO_ENV, layers=system_layers(tmp_path, "box", "tiny", "Offline")).warmup_queries == 1


def test_a_core_section_cannot_choose_the_core(tmp_path):
    write_system(tmp_path, "box", "cores:\n  dummy:\n    default: {core_type: hf}\n")
    with pytest.raises(ConfigError, match="cannot set core_type"):
        system_layers(tmp_path, "box", "tiny", "Server", core_type="dummy")


def test_core_sections_are_checked(tmp_path):
    write_system(tmp_path, "box", "cores:\n  dummy:\n    Sever: {warmup_queries: 1}\n")
    with pytest.raises(ConfigError, match="box.yaml.*Sever"):
        system_layers(tmp_path, "box", "tiny", "Server", core_type="dummy")


def test_system_layers_take_a_single_stream_section(tmp_path):
    write_system(tmp_path, "box", "default:\n  warmup_queries: 1\nSingleStream:\n  warmup_queries: 0\n"
                                  "benchmarks:\n  tiny:\n    SingleStream:\n      hf_max_batch_size: 1\n")
    layers = system_layers(tmp_path, "box", "tiny", "SingleStream")
    assert [layer.source for layer in layers] == [
        "box.yaml: default", "box.yaml: SingleStream", "box.yaml: benchmarks.tiny.SingleStream"]
    cfg = resolve(env=NO_ENV, layers=layers)
    assert (cfg.warmup_queries, cfg.hf_max_batch_size) == (0, 1)
    write_system(tmp_path, "box", "MultiStream:\n  warmup_queries: 0\n")
    with pytest.raises(ConfigError, match=r"unknown section 'MultiStream' \(expected default, Offline, Server, "
                                          r"Interactive, SingleStream, cores, benchmarks\)"):
        system_layers(tmp_path, "box", "tiny", "Offline")
