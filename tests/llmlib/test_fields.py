"""Tests for llmlib.fields: parsing a setting by its kind, flag strings, endpoints, and the declared fields.

Pure functions, tested directly; no files, no environment.
"""

from __future__ import annotations

import re

import pytest

from llmlib.errors import ConfigError
from llmlib.fields import (
    FIELDS,
    KINDS,
    Field,
    declare,
    get_field,
    parse_bool,
    parse_endpoints,
    parse_flag_string,
    parse_flag_value,
)


def make_field(kind: str, **kwargs) -> Field:
    return Field(name=kwargs.pop("name", "knob"), kind=kind, default=kwargs.pop("default", None),
                 help="a test field", **kwargs)


# -- flag strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("True", True),
        ("FALSE", False),
        ("128", 128),
        ("-3", -3),
        ("0.80", 0.80),
        ("1e-3", 1e-3),
        ("2E5", 2e5),
        (".5", 0.5),
        ("max_util", "max_util"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_parse_flag_value_types(text, expected):
    value = parse_flag_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_flag_string_types_every_item():
    flags = parse_flag_string(
        "use_inflight_batching:true,enable_chunked_context:false,max_batch_size:896,"
        "kvcache_free_gpu_mem_frac:0.80,tolerance:1e-3,policy:max_util"
    )
    assert flags == {
        "use_inflight_batching": True,
        "enable_chunked_context": False,
        "max_batch_size": 896,
        "kvcache_free_gpu_mem_frac": 0.80,
        "tolerance": 1e-3,
        "policy": "max_util",
    }
    assert type(flags["max_batch_size"]) is int
    assert type(flags["kvcache_free_gpu_mem_frac"]) is float
    assert type(flags["use_inflight_batching"]) is bool


def test_parse_flag_string_keeps_colons_after_the_first():
    assert parse_flag_string("url:http://host:8000/v1,mode:a:b") == {
        "url": "http://host:8000/v1",
        "mode": "a:b",
    }


def test_parse_flag_string_strips_spaces_and_accepts_empty():
    assert parse_flag_string(" a : 1 , b : x ") == {"a": 1, "b": "x"}
    assert parse_flag_string("") == {}
    assert parse_flag_string("   ") == {}
    assert parse_flag_string(None) == {}


def test_parse_flag_string_mapping_passes_through_as_a_copy():
    source = {"a": 1, "b": "x"}
    parsed = parse_flag_string(source)
    assert parsed == source
    parsed["c"] = 2
    assert "c" not in source


@pytest.mark.parametrize(
    ("text", "offending"),
    [
        ("a:1,b", "'b'"),  # missing ':'
        ("a:1,:2", "':2'"),  # empty key
        ("a:1,b:", "'b:'"),  # empty value
        ("a:1,,b:2", "'a:1,,b:2'"),  # empty item
        ("a:1,", "'a:1,'"),  # trailing comma is an empty item
        ("a:1,a:2", "'a'"),  # duplicate key
    ],
)
def test_parse_flag_string_errors_name_the_offending_item(text, offending):
    with pytest.raises(ConfigError) as info:
        parse_flag_string(text)
    assert offending in str(info.value)


def test_parse_flag_string_error_messages_say_what_is_wrong():
    with pytest.raises(ConfigError, match=r"no ':'"):
        parse_flag_string("lonely")
    with pytest.raises(ConfigError, match=r"empty key"):
        parse_flag_string(":1")
    with pytest.raises(ConfigError, match=r"empty value"):
        parse_flag_string("a:")
    with pytest.raises(ConfigError, match=r"empty item"):
        parse_flag_string("a:1,,b:2")
    with pytest.raises(ConfigError, match=r"given twice"):
        parse_flag_string("a:1,b:2,a:3")


def test_parse_flag_string_mapping_rejects_bad_keys():
    with pytest.raises(ConfigError, match="non-empty"):
        parse_flag_string({"": 1})
    with pytest.raises(ConfigError, match="non-empty"):
        parse_flag_string({3: 1})


# -- booleans -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "on", " ON ", True, 1])
def test_parse_bool_true(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off", False, 0])
def test_parse_bool_false(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "maybe", "2", 2, "tru"])
def test_parse_bool_rejects_other_values(text):
    with pytest.raises(ValueError):
        parse_bool(text)


# -- Field.parse by kind --------------------------------------------------------------------------


def test_int_kind():
    f = make_field("int")
    assert f.parse("42", "src") == 42
    assert f.parse(" -7 ", "src") == -7
    assert f.parse("1_000", "src") == 1000
    assert f.parse(5, "src") == 5
    assert f.parse(3.0, "src") == 3
    assert f.parse(None, "src") is None
    for bad in ("4.5", "abc", "", 2.5, True):
        with pytest.raises(ConfigError):
            f.parse(bad, "src")


def test_float_kind():
    f = make_field("float")
    assert f.parse("0.25", "src") == 0.25
    assert f.parse("1e-3", "src") == 1e-3
    assert f.parse(3, "src") == 3.0
    assert isinstance(f.parse("3", "src"), float)
    assert f.parse(None, "src") is None
    for bad in ("fast", "", False):
        with pytest.raises(ConfigError):
            f.parse(bad, "src")


def test_bool_kind():
    f = make_field("bool")
    assert f.parse("false", "src") is False
    assert f.parse("true", "src") is True
    assert f.parse(False, "src") is False
    with pytest.raises(ConfigError):
        f.parse("perhaps", "src")


def test_str_kind_rejects_mappings_and_lists():
    f = make_field("str")
    assert f.parse("abc", "src") == "abc"
    assert f.parse(12, "src") == "12"
    for bad in ({"a": 1}, ["a"]):
        with pytest.raises(ConfigError):
            f.parse(bad, "src")


def test_list_kind():
    f = make_field("list")
    assert f.parse("a, b,,c ", "src") == ["a", "b", "c"]
    assert f.parse(["x", " y "], "src") == ["x", "y"]
    assert f.parse("", "src") == []
    assert f.parse(None, "src") == []


def test_flags_kind_wraps_errors_with_source_and_flag():
    f = make_field("flags", name="trtllm_build_flags")
    assert f.parse("a:1", "src") == {"a": 1}
    with pytest.raises(ConfigError) as info:
        f.parse("a:1,b", "env TRTLLM_BUILD_FLAGS")
    message = str(info.value)
    assert "env TRTLLM_BUILD_FLAGS" in message
    assert "--trtllm_build_flags" in message
    assert "'b'" in message


def test_bad_value_error_names_source_and_flag():
    with pytest.raises(ConfigError) as info:
        get_field("warmup_queries").parse("lots", "sys.yaml: default")
    message = str(info.value)
    assert message.startswith("sys.yaml: default:")
    assert "--warmup_queries" in message
    assert "'lots'" in message
    assert "int" in message


def test_choices_on_str():
    f = get_field("traffic_distribution_policy")
    assert f.parse("round_robin", "src") == "round_robin"
    with pytest.raises(ConfigError) as info:
        f.parse("random", "command line")
    message = str(info.value)
    assert "command line" in message
    assert "--traffic_distribution_policy='random'" in message
    for choice in ("round_robin", "load_balancing", "token_aware"):
        assert choice in message


def test_choices_on_list_check_every_item():
    f = make_field("list", choices=("Offline", "Server"))
    assert f.parse("Offline,Server", "src") == ["Offline", "Server"]
    with pytest.raises(ConfigError, match="'Sever'"):
        f.parse("Offline,Sever", "src")


def test_minimum():
    f = get_field("warmup_queries")  # minimum 0
    assert f.parse("0", "src") == 0
    with pytest.raises(ConfigError) as info:
        f.parse("-1", "command line")
    assert "command line" in str(info.value)
    assert "--warmup_queries=-1" in str(info.value)
    assert ">= 0" in str(info.value)

    g = get_field("progress_interval_s")  # minimum 0.05
    assert g.parse("0.05", "src") == 0.05
    with pytest.raises(ConfigError, match=">= 0.05"):
        g.parse("0.01", "src")


def test_minimum_rejects_nan():
    # NaN compares false with everything, so `nan < minimum` lets it through; a progress interval
    # or timeout of NaN is never what the user meant.
    f = get_field("progress_interval_s")
    with pytest.raises(ConfigError, match="progress_interval_s"):
        f.parse("nan", "command line")


def test_minimum_does_not_apply_to_none():
    assert get_field("server_target_qps").parse(None, "default") is None


# -- endpoints ------------------------------------------------------------------------------------


def test_endpoints_accepts_host_port_lists():
    f = get_field("triton_server_urls")
    assert f.parse("localhost:8000,10.0.0.2:8001", "src") == ["localhost:8000", "10.0.0.2:8001"]
    assert f.parse("http://node-1:8000/", "src") == ["node-1:8000"]
    assert f.parse("grpc://node-1:8001", "src") == ["node-1:8001"]
    assert f.parse("[::1]:65535", "src") == ["[::1]:65535"]
    assert f.parse("host:1", "src") == ["host:1"]
    assert f.parse("", "src") == []
    assert f.parse(["a:1", "b:2"], "src") == ["a:1", "b:2"]


@pytest.mark.parametrize("bad", ["host", "host:0", "host:70000", "host:65536", ":8000", "host:port"])
def test_endpoints_rejects(bad):
    with pytest.raises(ConfigError) as info:
        get_field("trtllm_server_urls").parse(f"good:8000,{bad}", "command line")
    message = str(info.value)
    assert "command line" in message
    assert "--trtllm_server_urls" in message
    assert repr(bad) in message


def test_http_urls_keep_scheme_and_path_prefix():
    """OpenAI-compatible server URLs keep https and a /v1 (or other) prefix; bare host:port stays as given."""
    f = get_field("trtllm_server_urls")
    assert f.parse("localhost:8000,10.0.0.2:8001", "src") == ["localhost:8000", "10.0.0.2:8001"]
    assert f.parse("HTTPS://gw.example.com/llm/v1/", "src") == ["https://gw.example.com:443/llm/v1"]
    assert f.parse("http://node-1:8000/v1,http://[::1]:9/", "src") == ["http://node-1:8000/v1", "http://[::1]:9"]


@pytest.mark.parametrize("bad, expected", [
    ("grpc://h:1", "http:// or https://"), ("https://user:pw@h/v1", "credentials in a URL"),
    ("http://h:1/v1?x=1", "query or fragment"), ("https://:443", "no host"), ("http://h:99999", "bad port")])
def test_http_urls_rejects(bad, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        get_field("trtllm_server_urls").parse(bad, "command line")
    assert "command line: --trtllm_server_urls" in str(info.value)
    assert "pw" not in str(info.value)


def test_parse_endpoints_directly():
    assert parse_endpoints("a:1,b:2") == ["a:1", "b:2"]
    with pytest.raises(ConfigError, match="port 1..65535"):
        parse_endpoints("a:0")


# -- the declared fields --------------------------------------------------------------------------


def test_every_default_parses_as_its_own_kind():
    for name, f in FIELDS.items():
        assert f.kind in KINDS, name
        parsed = f.parse(f.default, "default")
        if f.default is not None and f.kind not in ("list", "endpoints", "flags"):
            assert parsed == f.default, name


def test_every_field_has_help_and_unique_env():
    envs = [f.env for f in FIELDS.values() if f.env]
    assert len(envs) == len(set(envs))
    for name, f in FIELDS.items():
        assert f.name == name
        assert f.help.strip(), name


def test_env_variables_declared_for_the_documented_fields():
    assert get_field("system_name").env == "SYSTEM_NAME"
    assert get_field("trtllm_runtime_flags").env == "TRTLLM_RUNTIME_FLAGS"
    assert get_field("trtllm_build_flags").env == "TRTLLM_BUILD_FLAGS"
    assert get_field("trtllm_checkpoint_flags").env == "TRTLLM_CHECKPOINT_FLAGS"


def test_get_field_unknown_suggests():
    with pytest.raises(ConfigError) as info:
        get_field("warmup_querys")
    message = str(info.value)
    assert "Unknown setting 'warmup_querys'" in message
    assert re.search(r"Did you mean: [^?]*warmup_queries", message)


def test_get_field_unknown_without_close_match_has_no_hint():
    with pytest.raises(ConfigError) as info:
        get_field("zzzzzzzz")
    assert "Did you mean" not in str(info.value)


def test_declare_rejects_duplicates_and_unknown_kinds():
    before = dict(FIELDS)
    with pytest.raises(ValueError, match="declared twice"):
        declare(name="warmup_queries", kind="int", default=0, help="again")
    with pytest.raises(ValueError, match="unknown kind"):
        declare(name="_test_never_declared", kind="complex", default=0, help="x")
    assert FIELDS == before


def test_field_is_frozen():
    f = get_field("warmup_queries")
    with pytest.raises(AttributeError):
        f.default = 3  # type: ignore[misc]
    assert f.default == 8
