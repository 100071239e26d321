"""`make generate_engines`: quantize a checkpoint (TensorRT-LLM's quantize.py) and build engines
(trtllm-build) as subprocesses, from the layered fields and TRTLLM_CHECKPOINT_FLAGS / TRTLLM_BUILD_FLAGS.

Each step writes, next to its output, `<step>.command.sh` (the resolved command), `<step>.config.json`
(the settings that made it, with their sources) and `<step>.log` (its output); it is skipped when its
output is complete (the files the next stage reads, checked, not just present) and was made by the same
command, unless forced. `--dry_run` prints the commands and touches nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlib.errors import ConfigError, OpsError
from llmlib.ops.flags import (BUILD_FORBIDDEN, BUILD_KEYS, QUANTIZE_FORBIDDEN, QUANTIZE_KEYS, check_flags,
                              flag_origin, to_argv)

#: --precision to quantize.py's --qformat
QFORMAT = {"fp8": "fp8", "fp4": "nvfp4", "nvfp4": "nvfp4", "int8_sq": "int8_sq", "int4_awq": "int4_awq",
           "w4a8_awq": "w4a8_awq", "int8_wo": "int8_wo", "int4_wo": "int4_wo", "fp16": "full_prec",
           "bf16": "full_prec"}
#: lines of a failed step's log shown in its error
LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One subprocess of the build: what runs, where its output goes, what makes that output complete."""

    name: str  # quantize | build
    argv: tuple[str, ...]
    output_dir: Path
    world_size: int
    rank_file: str  # rank{i}.safetensors | rank{i}.engine
    force: bool
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    needs: tuple[Path, ...] = ()  # inputs that must exist before it runs
    files: dict[Path, str] = field(default_factory=dict)  # written beside the output once it is complete

    @property
    def command_file(self) -> Path:
        return self.output_dir / f"{self.name}.command.sh"

    @property
    def config_file(self) -> Path:
        return self.output_dir / f"{self.name}.config.json"

    @property
    def log_file(self) -> Path:
        return self.output_dir / f"{self.name}.log"

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def _abs(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def quantized_dir(config, benchmark, root: Path) -> Path:
    if config.quantized_checkpoint_dir:
        return _abs(root, config.quantized_checkpoint_dir)
    tp, pp = config.tensor_parallelism, config.pipeline_parallelism
    return root / "build" / "models" / benchmark.name / f"{config.precision}-tp{tp}pp{pp}"


def engine_dir(config, benchmark, scenario: str, root: Path) -> Path:
    if config.engine_dir:
        return _abs(root, config.engine_dir)
    tp, pp = config.tensor_parallelism, config.pipeline_parallelism
    return (root / "build" / "engines" / config.system_name / benchmark.name / scenario /
            f"{config.precision}-b{config.gpu_batch_size}-tp{tp}pp{pp}")


def model_dir(config, benchmark, root: Path) -> Path:
    if config.trtllm_model_path:
        return _abs(root, config.trtllm_model_path)
    return root / "build" / "models" / benchmark.name / "hf"


def plan(config, benchmark, scenario: str, *, root: Path, env: Mapping[str, str] | None = None) -> list[Step]:
    """The steps of one (benchmark, scenario), flags checked (one-line ConfigError naming the key and
    where it came from)."""
    env = os.environ if env is None else env
    ckpt_flags = dict(config.trtllm_checkpoint_flags)
    build_flags = dict(config.trtllm_build_flags)
    check_flags(ckpt_flags, field="trtllm_checkpoint_flags", tool="quantize.py", known=QUANTIZE_KEYS,
                forbidden=QUANTIZE_FORBIDDEN, origin=flag_origin(config, "trtllm_checkpoint_flags", env))
    check_flags(build_flags, field="trtllm_build_flags", tool="trtllm-build", known=BUILD_KEYS,
                forbidden=BUILD_FORBIDDEN, origin=flag_origin(config, "trtllm_build_flags", env))
    tp, pp = config.tensor_parallelism, config.pipeline_parallelism
    world = tp * pp
    if config.num_gpus is not None and world > config.num_gpus:
        raise ConfigError(f"--tensor_parallelism={tp} x --pipeline_parallelism={pp} = {world} GPUs per engine, "
                          f"but --num_gpus={config.num_gpus}")
    ckpt = quantized_dir(config, benchmark, root)
    engine = engine_dir(config, benchmark, scenario, root)
    steps = []
    if "quantize" in config.build_steps:
        script = (_abs(root, config.trtllm_quantize_script) if config.trtllm_quantize_script else
                  _abs(root, config.trtllm_source_dir) / "examples" / "quantization" / "quantize.py")
        python = config.trtllm_python or sys.executable
        args: dict[str, Any] = {
            "model_dir": str(model_dir(config, benchmark, root)),
            "output_dir": str(ckpt),
            "dtype": config.checkpoint_dtype,
            "qformat": QFORMAT[config.precision],
            "tp_size": tp,
            "pp_size": pp,
            "calib_size": config.calib_batch_size * config.calib_max_batches,
        }
        if config.calib_dataset_path:
            args["calib_dataset"] = str(_abs(root, config.calib_dataset_path))
        args.update(ckpt_flags)
        hf_export = str(args.get("export_format", "")) == "hf"
        steps.append(Step(
            name="quantize", argv=(python, str(script), *to_argv(args)), output_dir=ckpt, world_size=world,
            rank_file="" if hf_export else "rank{}.safetensors", force=config.force_calibration,
            settings=_settings(config, ("trtllm_model_path", "quantized_checkpoint_dir", "precision",
                                        "checkpoint_dtype", "tensor_parallelism", "pipeline_parallelism",
                                        "calib_dataset_path", "calib_batch_size", "calib_max_batches",
                                        "trtllm_checkpoint_flags", "trtllm_quantize_script", "trtllm_python")),
            needs=(Path(args["model_dir"]), script)))
    if "build" in config.build_steps:
        args = {"checkpoint_dir": str(ckpt), "output_dir": str(engine), "max_batch_size": config.gpu_batch_size}
        if world > 1:
            args["workers"] = world
        args.update(build_flags)
        gen_path = _abs(root, config.llm_gen_config_path) if config.llm_gen_config_path else \
            engine / "generation_config.json"
        steps.append(Step(
            files={gen_path: json.dumps(generation_config(benchmark), indent=2) + "\n"},
            name="build", argv=(*shlex.split(config.trtllm_build_command), *to_argv(args)), output_dir=engine,
            world_size=world, rank_file="rank{}.engine", force=config.force_build_engines,
            settings=_settings(config, ("quantized_checkpoint_dir", "engine_dir", "precision", "gpu_batch_size",
                                        "tensor_parallelism", "pipeline_parallelism", "trtllm_build_flags",
                                        "trtllm_build_command", "system_name")),
            needs=() if "quantize" in config.build_steps else (ckpt,)))
    return steps


def generation_config(benchmark) -> dict[str, Any]:
    """What a run generates with (the benchmark's limits, stop tokens and sampling), written beside the
    engine (or at --llm_gen_config_path) so the engine and the settings it was built for travel together."""
    return {"benchmark": benchmark.name, "eos_token_id": benchmark.eos_token_id,
            "stop_token_ids": list(benchmark.stop_token_ids), "max_output_len": benchmark.max_output_tokens,
            "min_output_len": benchmark.min_output_tokens, **dict(benchmark.generation)}


def _settings(config, names) -> dict[str, Any]:
    return {n: {"value": config[n], "source": config.source(n)} for n in names}


# --- completeness -------------------------------------------------------------------------------------
def incomplete(step: Step) -> str | None:
    """Why the step's output is not complete (None: it is): the config.json the next stage reads must
    parse and name the same world size, and every rank's file must be there and non-empty."""
    out = step.output_dir
    cfg = out / "config.json"
    if not cfg.is_file():
        return f"{cfg} is missing"
    try:
        doc = json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        return f"{cfg} is not valid JSON ({err})"
    if not isinstance(doc, dict):
        return f"{cfg} is not a JSON object"
    mapping = doc.get("mapping") or (doc.get("pretrained_config") or {}).get("mapping") or {}
    world = mapping.get("world_size") if isinstance(mapping, dict) else None
    if step.rank_file and world is not None and world != step.world_size:
        return f"{cfg} says world_size {world}, expected {step.world_size}"
    if step.rank_file:
        for rank in range(step.world_size):
            f = out / step.rank_file.format(rank)
            if not f.is_file() or f.stat().st_size == 0:
                return f"{f} is missing or empty"
    elif not any(p.stat().st_size > 0 for p in out.glob("*.safetensors")):
        return f"no weights (*.safetensors) in {out}"
    if not step.command_file.is_file():
        return f"{step.command_file} is missing (not made by generate_engines)"
    if _recorded_command(step) != step.shell():
        return "made by another command"
    return None


def _recorded_command(step: Step) -> str:
    lines = [ln for ln in step.command_file.read_text().splitlines() if ln and not ln.startswith("#")]
    return lines[-1] if lines else ""


# --- running ------------------------------------------------------------------------------------------
def check_tensorrt_llm(steps: list[Step], env: Mapping[str, str]) -> None:
    """Before anything runs: the quantize interpreter imports tensorrt_llm, the builder is on PATH."""
    for step in steps:
        if step.name == "quantize":
            python = step.argv[0]
            probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorrt_llm') is None)"
            try:
                ok = subprocess.run([python, "-c", probe], env={**env, **step.env}, capture_output=True,
                                    timeout=120).returncode == 0
            except (OSError, subprocess.TimeoutExpired) as err:
                raise ConfigError(f"--trtllm_python={python!r}: cannot run it ({err})") from err
            if not ok:
                raise ConfigError(f"tensorrt_llm is not installed for {python} (quantize.py needs it): run inside "
                                  "TensorRT-LLM's container or set --trtllm_python; --dry_run prints the commands")
        elif step.name == "build" and shutil.which(step.argv[0], path=env.get("PATH")) is None:
            raise ConfigError(f"--trtllm_build_command: {step.argv[0]!r} is not on PATH (TensorRT-LLM is not "
                              "installed?); --dry_run prints the commands")


def check_inputs(steps: list[Step]) -> None:
    for step in steps:
        for path in step.needs:
            if not path.exists():
                what = {"quantize": "checkpoint / script", "build": "quantized checkpoint"}[step.name]
                raise ConfigError(f"{step.name}: {path} does not exist (the {what} it reads)")


def run_steps(steps: list[Step], *, dry_run: bool, out: Callable[[str], None] = print,
              env: Mapping[str, str] | None = None) -> list[str]:
    """Run (or print) each step; returns what happened to each: 'dry run', 'skipped', 'done'."""
    env = dict(os.environ if env is None else env)
    if dry_run:
        for step in steps:
            missing = [str(p) for p in step.needs if not p.exists()]
            note = f"  # note: missing now: {', '.join(missing)}" if missing else ""
            out(f"# {step.name} -> {step.output_dir}{note}\n{step.shell()}")
            for path, text in step.files.items():
                out(f"# then writes {path}:\n" + "".join(f"#   {ln}\n" for ln in text.splitlines()).rstrip("\n"))
        return ["dry run"] * len(steps)
    check_inputs(steps)
    todo = []
    for step in steps:
        why = incomplete(step) if step.output_dir.exists() else "no output yet"
        if why is None and not step.force:
            todo.append(False)
        elif why == "made by another command" and not step.force:
            raise ConfigError(f"{step.name}: {step.output_dir} holds a complete output made by another command "
                              f"(see {step.command_file}); use --force_"
                              f"{'calibration' if step.name == 'quantize' else 'build_engines'} or another folder")
        else:
            todo.append(True)
    if any(todo):
        check_tensorrt_llm([s for s, t in zip(steps, todo) if t], env)
    done = []
    for step, run in zip(steps, todo):
        if not run:
            out(f"{step.name}: {step.output_dir} is complete, skipped (force with --force_"
                f"{'calibration' if step.name == 'quantize' else 'build_engines'})")
            done.append("skipped")
        else:
            _run(step, env, out)
            done.append("done")
        for path, text in step.files.items():
            if not path.is_file() or path.read_text() != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                out(f"{step.name}: wrote {path}")
    return done


def _run(step: Step, env: Mapping[str, str], out: Callable[[str], None]) -> None:
    step.output_dir.mkdir(parents=True, exist_ok=True)
    step.command_file.unlink(missing_ok=True)  # written back only once the step has succeeded
    step.config_file.write_text(json.dumps({"step": step.name, "argv": list(step.argv), "env": step.env,
                                            "settings": step.settings}, indent=2, default=str) + "\n")
    out(f"{step.name}: {step.shell()}\n  log: {step.log_file}")
    start = time.monotonic()
    with open(step.log_file, "w") as log:
        log.write(f"# {step.shell()}\n")
        log.flush()
        try:
            rc = subprocess.run(step.argv, env={**env, **step.env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
        except OSError as err:
            raise OpsError(f"{step.name}: cannot start {step.argv[0]!r} ({err})") from err
    took = time.monotonic() - start
    if rc != 0:
        raise OpsError(f"{step.name} failed (exit code {rc}) after {took:.1f}s; last lines of {step.log_file}:\n"
                       + tail(step.log_file))
    why = incomplete_output_only(step)
    if why is not None:
        raise OpsError(f"{step.name} exited 0 but its output is not complete: {why}; last lines of "
                       f"{step.log_file}:\n" + tail(step.log_file))
    step.command_file.write_text(f"#!/bin/sh\n# written by generate_engines after {step.name} succeeded "
                                 f"in {took:.1f}s\n{step.shell()}\n")
    out(f"{step.name}: done in {took:.1f}s -> {step.output_dir}")


def incomplete_output_only(step: Step) -> str | None:
    """`incomplete` without the command record (not written yet when a step has just run)."""
    why = incomplete(step)
    return None if why is not None and step.command_file.name in why else why


def tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join("  | " + ln for ln in lines[-n:])
