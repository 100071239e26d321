"""Helpers shared by the in-process TensorRT-LLM cores: lazy import, data-parallel GPU layout,
runtime-flag checks and the per-request sampling / stop-token values.

Nothing here imports tensorrt_llm at module import time.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlib.cores.base import CoreSettings
from llmlib.errors import ConfigError, CoreUnavailableError

#: Where the in-process TensorRT-LLM cores come from (pyproject optional dependency).
INSTALL_HINT = "pip install -e '.[trtllm]'"


def import_trtllm(module: str, core: str) -> Any:
    """Import `module` (tensorrt_llm or one of its submodules) for `core`, or raise
    CoreUnavailableError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CoreUnavailableError(
            f"core {core!r} needs TensorRT-LLM ({module} could not be imported: {err}). "
            f"Install it with: {INSTALL_HINT}"
        ) from err


# --- data-parallel layout ------------------------------------------------------------------------------
def visible_gpu_count() -> int | None:
    """GPUs this process may use, without importing torch or tensorrt_llm: CUDA_VISIBLE_DEVICES
    when set, else the NVIDIA driver's /proc listing; None when neither says."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RankLayout:
    """How the GPUs are split into data-parallel ranks: each rank holds `gpus_per_rank` =
    TP x PP consecutive devices; rank r gets [r * gpus_per_rank, (r + 1) * gpus_per_rank)."""

    num_gpus: int
    tensor_parallelism: int
    pipeline_parallelism: int

    @property
    def gpus_per_rank(self) -> int:
        return self.tensor_parallelism * self.pipeline_parallelism

    @property
    def num_ranks(self) -> int:
        return self.num_gpus // self.gpus_per_rank

    def device_ids(self, rank: int) -> list[int]:
        if not 0 <= rank < self.num_ranks:
            raise ConfigError(f"data-parallel rank {rank} is outside 0..{self.num_ranks - 1} "
                              f"(--num_gpus={self.num_gpus}, TP x PP = {self.gpus_per_rank})")
        start = rank * self.gpus_per_rank
        return list(range(start, start + self.gpus_per_rank))


def rank_layout(config) -> RankLayout:
    """The layout from --num_gpus (default: all visible GPUs, else one rank's worth),
    --tensor_parallelism and --pipeline_parallelism. ConfigError if they do not divide."""
    tp, pp = int(config.tensor_parallelism), int(config.pipeline_parallelism)
    per_rank = tp * pp
    num_gpus = config.num_gpus
    if num_gpus is None:
        num_gpus = visible_gpu_count() or per_rank
        if num_gpus < per_rank:
            num_gpus = per_rank  # let the backend report the missing devices with its own message
    if num_gpus % per_rank:
        raise ConfigError(
            f"--num_gpus={num_gpus} is not a multiple of --tensor_parallelism={tp} x "
            f"--pipeline_parallelism={pp} = {per_rank}; data-parallel ranks need whole TP x PP groups"
        )
    return RankLayout(num_gpus=num_gpus, tensor_parallelism=tp, pipeline_parallelism=pp)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrtllmSettings(CoreSettings):
    """The in-process TensorRT-LLM cores' settings: the GPU layout (resolved once, in the parent),
    what to load, and the runtime flags (over the harness defaults)."""

    layout: RankLayout
    engine_dir: str = ""  # trtllm_executor
    model_path: str = ""  # trtllm_hlapi
    backend: str = "pytorch"  # trtllm_hlapi: pytorch or trt
    runtime_flags: Mapping[str, Any] = None  # type: ignore[assignment]


def trtllm_settings(config) -> TrtllmSettings:
    return TrtllmSettings(layout=rank_layout(config), engine_dir=str(config.engine_dir or ""),
                          model_path=str(config.trtllm_model_path or ""), backend=str(config.trtllm_backend),
                          runtime_flags=dict(config.trtllm_runtime_flags or {}))


# --- runtime flags ---------------------------------------------------------------------------------------
_SCHEDULER_POLICIES = {"max_util": "MAX_UTILIZATION", "max_utilization": "MAX_UTILIZATION",
                       "guaranteed_no_evict": "GUARANTEED_NO_EVICT", "no_evict": "GUARANTEED_NO_EVICT"}
_CHUNKING_POLICIES = {"first_come_first_served": "FIRST_COME_FIRST_SERVED", "fcfs": "FIRST_COME_FIRST_SERVED",
                      "equal_progress": "EQUAL_PROGRESS"}


_FLAGS = "--trtllm_runtime_flags"


def scheduler_policy_name(flags: Mapping[str, Any], where: str = _FLAGS) -> str:
    """The CapacitySchedulerPolicy member named by `batch_scheduler_policy`."""
    value = str(flags.get("batch_scheduler_policy", "max_util")).lower()
    try:
        return _SCHEDULER_POLICIES[value]
    except KeyError:
        raise ConfigError(f"{where} batch_scheduler_policy:{value}: expected one of "
                          f"{', '.join(_SCHEDULER_POLICIES)}") from None


def chunking_policy_name(flags: Mapping[str, Any], where: str = _FLAGS) -> str:
    """The ContextChunkingPolicy member named by `context_chunking_policy`."""
    value = str(flags.get("context_chunking_policy", "first_come_first_served")).lower()
    try:
        return _CHUNKING_POLICIES[value]
    except KeyError:
        raise ConfigError(f"{where} context_chunking_policy:{value}: expected one of "
                          f"{', '.join(_CHUNKING_POLICIES)}") from None


def flag_bool(flags: Mapping[str, Any], key: str, default: bool, where: str = _FLAGS) -> bool:
    value = flags.get(key, default)
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where} {key}:{value!r}: expected true or false")


def flag_int(flags: Mapping[str, Any], key: str, minimum: int = 1, where: str = _FLAGS) -> int | None:
    """An optional positive integer flag (None when absent)."""
    if key not in flags or flags[key] is None:
        return None
    value = flags[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} {key}:{value!r}: expected an integer >= {minimum}")
    return value


def kv_cache_fraction(flags: Mapping[str, Any], where: str = _FLAGS) -> float:
    value = flags.get("kvcache_free_gpu_mem_frac", 0.80)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"{where} kvcache_free_gpu_mem_frac:{value!r}: expected a "
                          f"fraction in (0, 1]")
    return float(value)


_BOOL_FLAGS = ("use_inflight_batching", "enable_batch_size_tuning", "enable_max_num_tokens_tuning",
               "enable_chunked_context", "exclude_input_from_output", "return_all_generated_tokens")
_INT_FLAGS = ("dynamic_batch_moving_average_window", "max_beam_width", "max_batch_size", "max_num_tokens")


def check_runtime_flags(flags: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Check the values of the runtime flags the harness reads, before anything starts, naming
    where each came from (`origin[key]`: the environment variable or the flag)."""
    for key in flags:
        where = origin.get(key, _FLAGS)
        one = {key: flags[key]}
        if key == "batch_scheduler_policy":
            scheduler_policy_name(one, where)
        elif key == "context_chunking_policy":
            chunking_policy_name(one, where)
        elif key == "kvcache_free_gpu_mem_frac":
            kv_cache_fraction(one, where)
        elif key in _BOOL_FLAGS:
            flag_bool(one, key, False, where)
        elif key in _INT_FLAGS:
            flag_int(one, key, 1, where)


# --- per-request generation values -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingValues:
    """Backend-neutral sampling for one request. Greedy is expressed as top_k=1 with no
    temperature / top_p (what TensorRT-LLM's samplers treat as argmax)."""

    top_k: int | None
    top_p: float | None
    temperature: float | None
    seed: int | None
    min_tokens: int | None
    presence_penalty: float | None
    frequency_penalty: float | None

    def as_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


def sampling_values(sampling: Mapping[str, Any], min_new_tokens: int) -> SamplingValues:
    """From a Request.sampling dict (GenerationParams.sampling() keys)."""
    temperature = float(sampling.get("temperature", 0.0) or 0.0)
    top_k = int(sampling.get("top_k", 0) or 0)
    top_p = float(sampling.get("top_p", 1.0) or 1.0)
    greedy = temperature == 0.0 or top_k == 1
    presence = float(sampling.get("presence_penalty", 0.0) or 0.0)
    frequency = float(sampling.get("frequency_penalty", 0.0) or 0.0)
    return SamplingValues(
        top_k=1 if greedy else (top_k or None),
        top_p=None if greedy or top_p >= 1.0 else top_p,
        temperature=None if greedy else temperature,
        seed=None if greedy else int(sampling.get("seed", 0) or 0),
        min_tokens=int(min_new_tokens) if min_new_tokens and min_new_tokens > 0 else None,
        presence_penalty=presence or None,
        frequency_penalty=frequency or None,
    )


def stop_values(stop_token_ids, eos_token_id: int | None) -> tuple[int | None, list[int]]:
    """(end_id, other stop tokens): the EOS token ends generation through end_id; the rest
    become single-token stop words."""
    stops = [int(t) for t in stop_token_ids]
    end_id = eos_token_id if eos_token_id is not None else (stops[0] if stops else None)
    return end_id, [t for t in stops if t != end_id]


__all__ = [
    "INSTALL_HINT",
    "RankLayout",
    "SamplingValues",
    "chunking_policy_name",
    "flag_bool",
    "flag_int",
    "import_trtllm",
    "kv_cache_fraction",
    "rank_layout",
    "sampling_values",
    "scheduler_policy_name",
    "stop_values",
    "visible_gpu_count",
]
