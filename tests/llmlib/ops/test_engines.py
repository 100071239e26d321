"""generate_engines: commands built from layered fields and TRTLLM_*_FLAGS, the flag checks, the
skip / complete checks, the files each step writes, and failures with the log's tail, against fake
`quantize.py` / `trtllm-build` executables written by each test (a process boundary: no TensorRT-LLM
build runs here)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmlib.errors import ConfigError, OpsError
from llmlib.ops.engines import incomplete, plan, run_steps
from llmlib.ops.flags import to_argv

REPO = Path(__file__).resolve().parents[3]
FAKES = REPO / "tests" / "fakes"  # holds a `tensorrt_llm` package that imports

#: writes what a real quantize.py leaves for trtllm-build: config.json with the mapping, rank files
FAKE_QUANTIZE = r'''
import json, os, sys
args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], True) for a in sys.argv[1:])
print("fake quantize.py", " ".join(sys.argv[1:]))
if os.environ.get("FAKE_FAIL"):
    print("calibrating... CUDA out of memory", file=sys.stderr)
    sys.exit(3)
out = args["output_dir"]
os.makedirs(out, exist_ok=True)
world = int(args["tp_size"]) * int(args["pp_size"])
json.dump({"mapping": {"world_size": world, "tp_size": int(args["tp_size"])}, "args": args},
          open(os.path.join(out, "config.json"), "w"))
for r in range(world if not os.environ.get("FAKE_SHORT") else world - 1):
    open(os.path.join(out, f"rank{r}.safetensors"), "wb").write(b"weights")
with open(os.path.join(os.path.dirname(out) or ".", "calls.txt"), "a") as f:
    f.write("quantize\n")
'''

FAKE_BUILD = r'''#!/usr/bin/env python3
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
print("fake trtllm-build", " ".join(sys.argv[1:]))
ckpt = json.load(open(os.path.join(args["checkpoint_dir"], "config.json")))
out = args["output_dir"]
os.makedirs(out, exist_ok=True)
world = ckpt["mapping"]["world_size"]
json.dump({"pretrained_config": {"mapping": {"world_size": world}}, "build_config": args},
          open(os.path.join(out, "config.json"), "w"))
for r in range(world):
    open(os.path.join(out, f"rank{r}.engine"), "wb").write(b"engine")
with open(os.path.join(os.path.dirname(out), "calls.txt"), "a") as f:
    f.write("build\n")
'''


@pytest.fixture
def fakes(tmp_path):
    """The fake tools, a source checkpoint folder, and an environment where tensorrt_llm imports."""
    quantize = tmp_path / "quantize.py"
    quantize.write_text(FAKE_QUANTIZE)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    build = bindir / "trtllm-build"
    build.write_text(FAKE_BUILD)
    build.chmod(build.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "hf-model"
    model.mkdir()
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(FAKES))
    env.pop("TRTLLM_CHECKPOINT_FLAGS", None)
    env.pop("TRTLLM_BUILD_FLAGS", None)
    return {"quantize": quantize, "model": model, "env": env, "tmp": tmp_path}


def settings(fakes, **extra):
    base = {"trtllm_quantize_script": str(fakes["quantize"]), "trtllm_model_path": str(fakes["model"]),
            "quantized_checkpoint_dir": str(fakes["tmp"] / "ckpt" / "q"),
            "engine_dir": str(fakes["tmp"] / "engines" / "e")}
    base.update(extra)
    return base


def steps_for(make_config, tiny_benchmark, fakes, env=None, **extra):
    env = fakes["env"] if env is None else env
    from llmlib.config import resolve

    config = resolve(cli=settings(fakes, **extra), env=env, layers=())
    return plan(config, tiny_benchmark, "Offline", root=REPO, env=env)


def test_commands_come_from_fields_and_env_flags_on_top(make_config, tiny_benchmark, fakes):
    env = dict(fakes["env"], TRTLLM_BUILD_FLAGS="max_num_tokens:8192,use_fused_mlp:enable",
               TRTLLM_CHECKPOINT_FLAGS="kv_cache_dtype:fp8")
    q, b = steps_for(make_config, tiny_benchmark, fakes, env=env, tensor_parallelism="2", precision="fp4",
                     calib_batch_size="64", calib_max_batches="8", gpu_batch_size="512",
                     trtllm_build_flags="max_num_tokens:2048,gemm_plugin:auto",
                     trtllm_checkpoint_flags="quantize_lm_head:true,awq_block_size:64")
    assert q.argv[1:] == (str(fakes["quantize"]), f"--model_dir={fakes['model']}",
                          f"--output_dir={fakes['tmp'] / 'ckpt' / 'q'}", "--dtype=float16", "--qformat=nvfp4",
                          "--tp_size=2", "--pp_size=1", "--calib_size=512", "--quantize_lm_head",
                          "--awq_block_size=64", "--kv_cache_dtype=fp8")
    assert b.argv == ("trtllm-build", f"--checkpoint_dir={fakes['tmp'] / 'ckpt' / 'q'}",
                      f"--output_dir={fakes['tmp'] / 'engines' / 'e'}", "--max_batch_size=512", "--workers=2",
                      "--max_num_tokens=8192", "--gemm_plugin=auto", "--use_fused_mlp=enable")
    assert b.world_size == q.world_size == 2


@pytest.mark.parametrize("field,flags,env_var,message", [
    ("trtllm_build_flags", "tensor_parallelism:2", "", "--trtllm_build_flags: 'tensor_parallelism' is not allowed "
     "in the flag string: use --tensor_parallelism"),
    ("trtllm_build_flags", "max_batch_size:64", "", "use --gpu_batch_size"),
    ("trtllm_build_flags", "", "TRTLLM_BUILD_FLAGS", "env TRTLLM_BUILD_FLAGS: 'pipeline_parallelism' is not allowed"),
    ("trtllm_build_flags", "max_num_token:8", "", "trtllm-build has no argument 'max_num_token'. Did you mean: "
     "max_num_tokens"),
    ("trtllm_checkpoint_flags", "qformat:fp8", "", "'qformat' is not allowed in the flag string: use --precision"),
    ("trtllm_checkpoint_flags", "calib_sise:4", "", "quantize.py has no argument 'calib_sise'"),
])
def test_unknown_and_forbidden_keys_are_one_line_errors(make_config, tiny_benchmark, fakes, field, flags, env_var,
                                                        message):
    env = dict(fakes["env"])
    if env_var:
        env[env_var] = "pipeline_parallelism:2"
    extra = {field: flags} if flags else {}
    with pytest.raises(ConfigError) as err:
        steps_for(make_config, tiny_benchmark, fakes, env=env, **extra)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parallel_sizes_beyond_the_gpus_are_refused(make_config, tiny_benchmark, fakes):
    with pytest.raises(ConfigError, match=r"= 4 GPUs per engine, but --num_gpus=2"):
        steps_for(make_config, tiny_benchmark, fakes, tensor_parallelism="4", num_gpus="2")


def test_dry_run_prints_and_touches_nothing(make_config, tiny_benchmark, fakes):
    steps = steps_for(make_config, tiny_benchmark, fakes)
    lines = []
    assert run_steps(steps, dry_run=True, out=lines.append, env={"PATH": "/nonexistent"}) == ["dry run"] * 2
    text = "\n".join(lines)
    assert steps[0].shell() in text and steps[1].shell() in text
    assert not (fakes["tmp"] / "ckpt").exists() and not (fakes["tmp"] / "engines").exists()


def test_runs_writes_records_then_skips_until_forced(make_config, tiny_benchmark, fakes):
    steps = steps_for(make_config, tiny_benchmark, fakes, tensor_parallelism="2")
    out = []
    assert run_steps(steps, dry_run=False, out=out.append, env=fakes["env"]) == ["done", "done"]
    for step in steps:
        assert incomplete(step) is None
        assert step.command_file.read_text().splitlines()[-1] == step.shell()
        record = json.loads(step.config_file.read_text())
        assert record["argv"] == list(step.argv) and record["settings"]["tensor_parallelism"]["value"] == 2
        assert f"fake {'quantize.py' if step.name == 'quantize' else 'trtllm-build'}" in step.log_file.read_text()
    assert (fakes["tmp"] / "engines" / "e" / "rank1.engine").is_file()
    # a second run skips both; a forced one runs the build again only
    assert run_steps(steps, dry_run=False, out=out.append, env=fakes["env"]) == ["skipped", "skipped"]
    forced = steps_for(make_config, tiny_benchmark, fakes, tensor_parallelism="2", force_build_engines="true")
    assert run_steps(forced, dry_run=False, out=out.append, env=fakes["env"]) == ["skipped", "done"]
    assert (fakes["tmp"] / "engines" / "calls.txt").read_text().split() == ["build", "build"]
    assert (fakes["tmp"] / "ckpt" / "calls.txt").read_text().split() == ["quantize"]


def test_an_output_that_is_present_but_incomplete_is_rebuilt(make_config, tiny_benchmark, fakes):
    steps = steps_for(make_config, tiny_benchmark, fakes, tensor_parallelism="2")
    run_steps(steps, dry_run=False, out=lambda _: None, env=fakes["env"])
    (fakes["tmp"] / "engines" / "e" / "rank1.engine").write_bytes(b"")  # a build killed half-way
    assert "rank1.engine is missing or empty" in incomplete(steps[1])
    assert run_steps(steps, dry_run=False, out=lambda _: None, env=fakes["env"]) == ["skipped", "done"]
    (fakes["tmp"] / "ckpt" / "q" / "config.json").write_text("{not json")
    assert "not valid JSON" in incomplete(steps[0])


def test_a_complete_output_of_other_settings_is_not_silently_reused(make_config, tiny_benchmark, fakes):
    run_steps(steps_for(make_config, tiny_benchmark, fakes), dry_run=False, out=lambda _: None, env=fakes["env"])
    other = steps_for(make_config, tiny_benchmark, fakes, trtllm_build_flags="gemm_plugin:auto")
    with pytest.raises(ConfigError, match=r"build: .* made by another command .*--force_build_engines"):
        run_steps(other, dry_run=False, out=lambda _: None, env=fakes["env"])


def test_a_failing_step_reports_its_log_tail(make_config, tiny_benchmark, fakes):
    steps = steps_for(make_config, tiny_benchmark, fakes)
    with pytest.raises(OpsError) as err:
        run_steps(steps, dry_run=False, out=lambda _: None, env=dict(fakes["env"], FAKE_FAIL="1"))
    text = str(err.value)
    assert text.startswith("quantize failed (exit code 3)") and "| calibrating... CUDA out of memory" in text
    assert str(steps[0].log_file) in text
    assert not steps[0].command_file.exists()  # not recorded as done: the next run tries again


def test_a_step_that_leaves_an_incomplete_output_fails(make_config, tiny_benchmark, fakes):
    steps = steps_for(make_config, tiny_benchmark, fakes, tensor_parallelism="2")
    with pytest.raises(OpsError, match=r"quantize exited 0 but its output is not complete: .*rank1.safetensors"):
        run_steps(steps, dry_run=False, out=lambda _: None, env=dict(fakes["env"], FAKE_SHORT="1"))


def test_missing_inputs_and_missing_tensorrt_llm_are_clear_errors(make_config, tiny_benchmark, fakes):
    missing = steps_for(make_config, tiny_benchmark, fakes, trtllm_model_path=str(fakes["tmp"] / "nope"))
    with pytest.raises(ConfigError, match=r"quantize: .*/nope does not exist \(the checkpoint / script it reads\)"):
        run_steps(missing, dry_run=False, out=lambda _: None, env=fakes["env"])
    no_trt = dict(fakes["env"], PYTHONPATH="")
    with pytest.raises(ConfigError, match=r"^tensorrt_llm is not installed for .*--dry_run prints the commands$"):
        run_steps(steps_for(make_config, tiny_benchmark, fakes), dry_run=False, out=lambda _: None, env=no_trt)
    build_only = steps_for(make_config, tiny_benchmark, fakes, build_steps="build",
                           quantized_checkpoint_dir=str(fakes["model"]))
    with pytest.raises(ConfigError, match=r"--trtllm_build_command: 'trtllm-build' is not on PATH"):
        run_steps(build_only, dry_run=False, out=lambda _: None, env=dict(fakes["env"], PATH="/usr/bin:/bin"))


def test_to_argv_store_true_and_fp4():
    assert to_argv({"a": True, "b": False, "c": None, "d": "fp4", "e": 3}) == ["--a", "--d=nvfp4", "--e=3"]


def test_make_generate_engines_dry_run_for_llama2_and_deepseek(tmp_path):
    """The command a user types (through the CLI module the Makefile calls), env flags applied."""
    env = dict(os.environ, TRTLLM_BUILD_FLAGS="max_num_tokens:8192", PYTHONPATH=str(REPO))
    env.pop("TRTLLM_CHECKPOINT_FLAGS", None)
    for bench, extra in (("llama2-70b-99.9", ["--tensor_parallelism=2"]), ("deepseek-r1", ["--precision=fp4"])):
        proc = subprocess.run([sys.executable, "-m", "llmlib.ops", "generate_engines", f"--benchmarks={bench}",
                               "--scenarios=Offline", "--dry_run", *extra], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")]
        assert len(lines) == 2 and "quantize.py" in lines[0] and lines[1].startswith("trtllm-build ")
        assert f"/build/engines/local/{bench}/Offline/" in lines[1] and "--max_num_tokens=8192" in lines[1]
    bad = subprocess.run([sys.executable, "-m", "llmlib.ops", "generate_engines", "--benchmarks=llama2-70b-99.9",
                          "--dry_run", "--trtllm_build_flags=tp_size:2"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "'tp_size' is not allowed in the flag string: use --tensor_parallelism" in bad.stderr


def test_the_generation_config_is_written_beside_the_engine_or_at_its_field(make_config, tiny_benchmark, fakes):
    steps = steps_for(make_config, tiny_benchmark, fakes)
    run_steps(steps, dry_run=False, out=lambda _: None, env=fakes["env"])
    gen = json.loads((fakes["tmp"] / "engines" / "e" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tiny_benchmark.eos_token_id and gen["benchmark"] == "tiny"
    assert gen["max_output_len"] == tiny_benchmark.max_output_tokens
    at = fakes["tmp"] / "gen" / "g.json"
    run_steps(steps_for(make_config, tiny_benchmark, fakes, llm_gen_config_path=str(at)), dry_run=False,
              out=lambda _: None, env=fakes["env"])
    assert json.loads(at.read_text()) == gen
