"""Tests for llmlib.cli: --help, --list, --print_config, error exits, and resolve_for's layering.

No LoadGen run: `_run_one` and the per-run subprocess are replaced by failures, so a test that
would start a run fails instead of hanging.
"""

from __future__ import annotations

import re
import shutil

import pytest

from llmlib import cli
from llmlib.benchmarks import default_configs_dir, list_benchmarks
from llmlib.config import parse_cli
from llmlib.cores import CORES
from llmlib.errors import ConfigError
from llmlib.fields import FIELDS

ENV_VARS = [f.env for f in FIELDS.values() if f.env]


@pytest.fixture(autouse=True)
def no_runs(monkeypatch):
    """main() reads os.environ; keep the caller's settings out and forbid starting a run."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("the CLI tried to start a run")

    monkeypatch.setattr(cli, "_run_one", forbidden)
    monkeypatch.setattr(cli.subprocess, "call", forbidden)


@pytest.fixture
def config_dir(tmp_path):
    """A config folder holding the shipped tiny benchmark and two system files."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(default_configs_dir() / "tiny.yaml", tmp_path / "benchmarks" / "tiny.yaml")
    systems = tmp_path / "systems"
    systems.mkdir()
    (systems / "box.yaml").write_text(
        "default:\n"
        "  warmup_queries: 1\n"
        "  dummy_seed: 5\n"
        "  show_progress: true\n"
        "Server:\n"
        "  warmup_queries: 2\n"
        "benchmarks:\n"
        "  tiny:\n"
        "    default:\n"
        "      dummy_num_cores: 3\n"
        "    Server:\n"
        "      warmup_queries: 4\n"
    )
    (systems / "slow.yaml").write_text("default:\n  min_duration_ms: 9000\n")
    return tmp_path


def config_lines(text: str) -> dict[str, str]:
    """`name -> line` for the lines of one --print_config block."""
    return {line.split()[0]: line for line in text.splitlines() if line and not line.startswith("#")}


# -- --help and --list ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_every_field(flag, capsys):
    assert cli.main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    for name in FIELDS:
        assert f"--{name}=" in out, name
    assert "SYSTEM_NAME" in out
    assert "TRTLLM_RUNTIME_FLAGS" in out


def test_help_of_every_field_mentions_only_flags_that_work(capsys):
    # A help line that tells the user to run `python -m llmlib --something` must name a flag
    # that main() accepts.
    accepted = {"--help", "--list"} | {f"--{name}" for name in FIELDS}
    for field in FIELDS.values():
        for flag in re.findall(r"--[a-z_]+", field.help):
            assert flag in accepted, f"help of --{field.name} mentions {flag}"


def test_list_prints_benchmarks_with_rounds_and_scenarios_and_cores(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = {line[2:].split()[0]: line for line in lines[1:] if line[:1] in (" ", "*") and line[2:3].strip()}
    assert sorted(rows) == list_benchmarks()
    core_line = next(line for line in lines if line.startswith("cores:"))
    for name in CORES.names():
        assert name in core_line
    # the current round's reasoning benchmarks, with their rounds and scenarios; not marked
    assert re.fullmatch(r"  deepseek-r1 +v5\.1 v6\.0 v6\.1 +Offline, Server, Interactive", rows["deepseek-r1"])
    assert re.fullmatch(r"  gpt-oss-120b +v6\.0 v6\.1 +Offline, Server, Interactive", rows["gpt-oss-120b"])
    assert re.fullmatch(r"  llama3\.1-8b-edge +v5\.1 v6\.0 v6\.1 +Offline, SingleStream", rows["llama3.1-8b-edge"])
    assert re.fullmatch(r"  tiny +all +Offline, Server, Interactive, SingleStream", rows["tiny"])
    # the ones that left the round are marked, and the legend says which round
    for gone in ("mixtral-8x7b", "llama3.1-405b", "llama2-70b-99"):
        assert rows[gone].startswith("* "), gone
    assert "(* = not in v6.1," in out


def test_list_marks_against_the_round_given(capsys):
    assert cli.main(["--list", "--round=v5.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line[2:].split()[0]: line for line in lines[1:] if line[:1] in (" ", "*") and line[2:3].strip()}
    assert rows["gpt-oss-120b"].startswith("* ") and rows["deepseek-r1"].startswith("* ")
    assert rows["mixtral-8x7b"].startswith("  ") and rows["tiny"].startswith("  ")


def test_list_with_an_unknown_round_exits_2(capsys):
    assert cli.main(["--list", "--round=v7.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--round='v7.0' is not one of: v5.0, v5.1, v6.0, v6.1" in err
    assert "Traceback" not in err


def test_round_field_default_is_the_current_round():
    from llmlib.benchmarks import CURRENT_ROUND, ROUNDS

    assert FIELDS["round"].default == CURRENT_ROUND and FIELDS["round"].choices == ROUNDS


# -- --print_config -------------------------------------------------------------------------------


def test_print_config_prints_sources_and_does_not_run(capsys, tmp_path):
    results = tmp_path / "results"
    rc = cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=Server", f"--results_dir={results}"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "# tiny / Server" in captured.out
    lines = config_lines(captured.out)
    assert set(lines) == set(FIELDS)
    assert lines["benchmarks"].endswith("[command line]")
    assert lines["scenarios"].endswith("[command line]")
    assert lines["core_type"].endswith("[default]")
    assert re.search(r"\s2000\s+\[benchmark tiny\]$", lines["min_duration_ms"])
    assert not results.exists()


def test_print_config_one_block_per_benchmark_and_scenario(capsys):
    assert cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=offline,Server"]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("# ")]
    assert headers == ["# tiny / Offline", "# tiny / Server"]


def test_print_config_with_a_system_file_and_command_line(config_dir, capsys):
    rc = cli.main([
        "--print_config", "--benchmarks=tiny", "--scenarios=Server", f"--config_dir={config_dir}",
        "--system_name=box", "--show_progress=false",
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = config_lines(captured.out)
    assert re.search(r"\sfalse\s+\[command line\]$", lines["show_progress"])
    assert re.search(r"\s4\s+\[box\.yaml: benchmarks\.tiny\.Server\]$", lines["warmup_queries"])
    assert re.search(r"\s3\s+\[box\.yaml: benchmarks\.tiny\.default\]$", lines["dummy_num_cores"])
    assert re.search(r"\s5\s+\[box\.yaml: default\]$", lines["dummy_seed"])


def test_print_config_bare_bool_flag(config_dir, capsys):
    (config_dir / "systems" / "quiet.yaml").write_text("default:\n  show_progress: false\n")
    rc = cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=Server", f"--config_dir={config_dir}",
                   "--system_name=quiet", "--show_progress"])
    assert rc == 0
    assert re.search(r"\strue\s+\[command line\]$", config_lines(capsys.readouterr().out)["show_progress"])


# -- error exits ----------------------------------------------------------------------------------


def test_unknown_benchmark_exits_2(capsys):
    assert cli.main(["--print_config", "--benchmarks=tinny", "--scenarios=Server"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert "Unknown benchmark 'tinny'" in captured.err
    assert "Did you mean: tiny" in captured.err


def test_unknown_scenario_exits_2(capsys):
    assert cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=Sever"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Unknown scenario 'Sever'" in captured.err
    assert "Offline, Server, Interactive, SingleStream" in captured.err


def test_unknown_flag_exits_2_with_suggestion(capsys):
    assert cli.main(["--core_typ=dummy"]) == 2
    err = capsys.readouterr().err
    assert "'--core_typ'" in err
    assert "Did you mean: --core_type" in err


def test_bad_value_exits_2_naming_the_flag(capsys):
    assert cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=Server", "--warmup_queries=lots"]) == 2
    err = capsys.readouterr().err
    assert "command line: --warmup_queries='lots'" in err


@pytest.mark.parametrize("flag, message", [
    ("--server_target_qps=0", "--server_target_qps=0.0 must be > 0"),
    ("--server_target_qps=inf", "--server_target_qps=inf must be a finite number"),
    ("--offline_expected_qps=nan", "--offline_expected_qps=nan must be a finite number"),
    ("--min_duration_ms=99999999999999999999", "--min_duration_ms=99999999999999999999 must be <= 9223372036854"),
    ("--min_query_count=-1", "--min_query_count=-1 must be >= 0"),
])
def test_loadgen_values_out_of_range_exit_2_in_one_line(flag, message, capsys):
    assert cli.main(["--benchmarks=tiny", "--scenarios=Server", flag]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_runtime_flag_from_the_environment_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("TRTLLM_RUNTIME_FLAGS", "kvcache_free_gpu_mem_frac:2")
    assert cli.main(["--benchmarks=tiny", "--scenarios=Server", "--core_type=dummy"]) == 2
    err = capsys.readouterr().err
    assert "env TRTLLM_RUNTIME_FLAGS kvcache_free_gpu_mem_frac:2: expected a fraction in (0, 1]" in err
    monkeypatch.delenv("TRTLLM_RUNTIME_FLAGS")
    assert cli.main(["--benchmarks=tiny", "--scenarios=Server", "--trtllm_runtime_flags=batch_scheduler_policy:x"]) == 2
    assert "--trtllm_runtime_flags batch_scheduler_policy:x: expected one of" in capsys.readouterr().err


def test_an_unwritable_results_folder_exits_2_before_anything_runs(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["--benchmarks=tiny", "--scenarios=Offline,Server", f"--results_dir={blocker}/results"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --results_dir={blocker}/results: not a writable folder") and err.count("\n") == 1


def test_nothing_to_run_exits_2(capsys):
    assert cli.main(["--print_config", "--benchmarks=", "--scenarios=Server"]) == 2
    assert "nothing to run" in capsys.readouterr().err


def test_missing_system_file_exits_2(config_dir, capsys):
    rc = cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=Server", f"--config_dir={config_dir}",
                   "--system_name=bx"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "system 'bx'" in err
    assert "Did you mean: box" in err


def test_system_name_from_the_environment_is_used(config_dir, capsys, monkeypatch):
    monkeypatch.setenv("SYSTEM_NAME", "box")
    assert cli.main(["--print_config", "--benchmarks=tiny", "--scenarios=Server", f"--config_dir={config_dir}"]) == 0
    lines = config_lines(capsys.readouterr().out)
    assert lines["system_name"].endswith("[env SYSTEM_NAME]")
    assert lines["warmup_queries"].endswith("[box.yaml: benchmarks.tiny.Server]")


# -- resolve_for ----------------------------------------------------------------------------------


def test_resolve_for_layers_benchmark_system_env_and_cli(config_dir):
    cli_values = parse_cli([f"--config_dir={config_dir}", "--show_progress=false"])
    config, benchmark = cli.resolve_for(cli_values, "tiny", "Server", env={"SYSTEM_NAME": "box"})
    assert benchmark.name == "tiny"
    assert (config.system_name, config.source("system_name")) == ("box", "env SYSTEM_NAME")
    assert (config.min_duration_ms, config.source("min_duration_ms")) == (2000, "benchmark tiny")
    assert (config.warmup_queries, config.source("warmup_queries")) == (4, "box.yaml: benchmarks.tiny.Server")
    assert (config.dummy_num_cores, config.source("dummy_num_cores")) == (3, "box.yaml: benchmarks.tiny.default")
    assert (config.dummy_seed, config.source("dummy_seed")) == (5, "box.yaml: default")
    assert (config.show_progress, config.source("show_progress")) == (False, "command line")


def test_resolve_for_offline_skips_the_server_sections(config_dir):
    config, _ = cli.resolve_for({"config_dir": str(config_dir)}, "tiny", "Offline", env={"SYSTEM_NAME": "box"})
    assert (config.warmup_queries, config.source("warmup_queries")) == (1, "box.yaml: default")
    assert config.dummy_num_cores == 3


def test_resolve_for_system_file_beats_the_benchmark_harness_section(config_dir):
    config, _ = cli.resolve_for({"config_dir": str(config_dir), "system_name": "slow"}, "tiny", "Server", env={})
    assert (config.min_duration_ms, config.source("min_duration_ms")) == (9000, "slow.yaml: default")
    config, _ = cli.resolve_for({"config_dir": str(config_dir), "system_name": "slow", "min_duration_ms": "10"},
                                "tiny", "Server", env={})
    assert (config.min_duration_ms, config.source("min_duration_ms")) == (10, "command line")


def test_resolve_for_leaves_no_active_configuration(config_dir):
    from llmlib.config import active_layers

    cli.resolve_for({"config_dir": str(config_dir)}, "tiny", "Server", env={"SYSTEM_NAME": "box"})
    assert active_layers() == ()


def test_resolve_for_unknown_benchmark(config_dir):
    with pytest.raises(ConfigError, match="Unknown benchmark 'nope'"):
        cli.resolve_for({"config_dir": str(config_dir)}, "nope", "Server", env={})
