"""The `trtllm_hlapi` core: a TensorRT-LLM LLM API instance (`tensorrt_llm.LLM`) per data-parallel rank.

Requests run as tasks on the core's own asyncio event loop in a thread; the core owns and cancels them.

API surface used here, as read in NVIDIA/TensorRT-LLM (names only; nothing copied):
  tensorrt_llm/llmapi/llm.py
      LLM(model, tokenizer=None, ..., skip_tokenizer_init=False, trust_remote_code=False,
      tensor_parallel_size=1, dtype='auto', ..., **kwargs -> LlmArgs); generate_async(inputs,
      sampling_params=None, ..., streaming=False) -> RequestOutput; shutdown(); end_id must be set
      on SamplingParams when the tokenizer is skipped.
  tensorrt_llm/llmapi/llm_args.py
      LlmArgs fields pipeline_parallel_size, backend, kv_cache_config, enable_chunked_prefill,
      max_batch_size, max_num_tokens, scheduler_config; SchedulerConfig(capacity_scheduler_policy,
      context_chunking_policy, dynamic_batch_config); CapacitySchedulerPolicy.{MAX_UTILIZATION,
      GUARANTEED_NO_EVICT}; ContextChunkingPolicy; KvCacheConfig(free_gpu_memory_fraction=...,
      enable_block_reuse=...), imported as tensorrt_llm.llmapi.KvCacheConfig in the examples.
  tensorrt_llm/executor/result.py
      GenerationResult: async iteration (__aiter__/__anext__) yields itself after each streamed
      response; aresult(); finished; abort(); outputs[0].token_ids accumulates (extend) across
      responses; outputs[0].finish_reason in {'stop','length','timeout','cancelled'}. Its async
      queue exists only if an event loop is running when the result is created, so
      generate_async is called from inside this core's loop.
  tensorrt_llm/sampling_params.py
      SamplingParams(*, end_id, pad_id, max_tokens, stop_token_ids, top_k, top_p, seed,
      temperature, min_tokens, presence_penalty, frequency_penalty, detokenize, ...).
  tensorrt_llm/inputs/data.py
      prompt inputs may be a plain list of Python ints (token ids).
  examples/llm-api/llm_inference_async_streaming.py
      `async for output in llm.generate_async(prompt, sampling_params, streaming=True)`.

The LLM API has no device-id argument: each rank is built with CUDA_VISIBLE_DEVICES narrowed to its
GPUs (under a process-wide lock, restored afterwards). Worker processes the LLM spawns inherit it;
an in-process single-GPU LLM honours it only if CUDA was not initialised in this process before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from llmlib.config import ResolvedConfig
from llmlib.cores._trtllm_common import (
    chunking_policy_name,
    flag_bool,
    flag_int,
    import_trtllm,
    kv_cache_fraction,
    rank_layout,
    sampling_values,
    scheduler_policy_name,
    stop_values,
    trtllm_settings,
    TrtllmSettings,
)
from llmlib.cores._async_loop import AsyncLoopCore
from llmlib.cores.base import Request
from llmlib.errors import BackendError, ConfigError, CoreUnavailableError

log = logging.getLogger(__name__)

#: Serialises the CUDA_VISIBLE_DEVICES narrowing while an LLM is built.
_DEVICE_ENV_LOCK = threading.Lock()

#: Longest wait for the core's event loop to start.


@contextlib.contextmanager
def visible_devices(device_ids: list[int]) -> Iterator[str]:
    """Narrow CUDA_VISIBLE_DEVICES to `device_ids` (indices into what is visible now) for the
    duration; restore it after."""
    with _DEVICE_ENV_LOCK:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        if before is not None:
            visible = [d.strip() for d in before.split(",") if d.strip()]
            try:
                chosen = [visible[i] for i in device_ids]
            except IndexError:
                raise ConfigError(f"GPUs {device_ids} are not all visible (CUDA_VISIBLE_DEVICES={before})") from None
        else:
            chosen = [str(i) for i in device_ids]
        value = ",".join(chosen)
        os.environ["CUDA_VISIBLE_DEVICES"] = value
        try:
            yield value
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


class TrtllmHlapiCore(AsyncLoopCore):
    """One `tensorrt_llm.LLM` (one data-parallel rank: TP x PP GPUs)."""

    name = "trtllm_hlapi"

    settings_type = TrtllmSettings
    settings: TrtllmSettings

    def __init__(self, settings: TrtllmSettings, **kwargs):
        super().__init__(settings, **kwargs)
        cfg = settings
        layout = cfg.layout
        self.device_ids = layout.device_ids(self.rank)
        self._address = f"{self.name}[rank {self.rank}, gpus {','.join(map(str, self.device_ids))}]"
        model = cfg.model_path
        if not model:
            raise ConfigError(f"core {self.name}: --trtllm_model_path is empty; give a checkpoint folder, "
                              f"engine folder or model name")
        trtllm = import_trtllm("tensorrt_llm", self.name)
        llmapi = import_trtllm("tensorrt_llm.llmapi", self.name)
        self._SamplingParams = trtllm.SamplingParams
        llm_cls, backend_kw = _llm_class(trtllm, cfg.backend, self.name)

        flags = dict(cfg.runtime_flags or {})
        self.llm_kwargs = _llm_kwargs(llmapi, flags, layout.tensor_parallelism, layout.pipeline_parallelism)
        self.llm_kwargs.update(backend_kw)

        self._params_cache: dict[tuple, tuple[dict, Any]] = {}

        try:
            with visible_devices(self.device_ids):
                self._llm = llm_cls(model=model, **self.llm_kwargs)
        except (ConfigError, CoreUnavailableError):
            raise
        except Exception as err:
            raise BackendError(self._address, f"could not create the LLM for {model}: {err}") from err

        self._stopped = False
        try:
            self._start_loop(f"trtllm-llm-{self.rank}")
        except BackendError:
            self._shutdown_llm()
            raise

    # --- the contract ---------------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark) -> TrtllmSettings:
        return trtllm_settings(config)

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        return rank_layout(config).num_ranks

    @property
    def address(self) -> str:
        return self._address

    def health_check(self) -> None:
        self.loop_health()

    def _after_stop(self) -> None:
        self._shutdown_llm()
        self._stopped = True

    def kv_cache_utilisation(self) -> float | None:
        """Not sampled: the LLM API's statistics call blocks for up to its timeout, which the progress
        display should not do. None means unknown."""
        return None

    async def _run(self, req: Request) -> None:
        rid = req.request_id
        result = None
        try:
            result = self._llm.generate_async(np.asarray(req.input_tokens).tolist(),
                                              sampling_params=self._sampling_params(req),
                                              streaming=bool(req.streaming))
            if req.streaming:
                first_sent = False
                async for out in result:
                    if not first_sent:
                        tokens = out.outputs[0].token_ids
                        if tokens:
                            first_sent = True
                            self._first_token(rid, np.asarray(tokens, dtype=np.uint32))
            else:
                await result.aresult()
            output = result.outputs[0]
            if rid not in self._pending:  # cancelled meanwhile: its outcome was delivered
                return
            if getattr(output, "finish_reason", None) in ("cancelled", "timeout"):
                self._fail(rid, BackendError(self._address, f"request ended: {output.finish_reason}"))
                return
            tokens = np.asarray(output.token_ids, dtype=np.uint32)
            self._complete(rid, tokens, len(tokens))
        except asyncio.CancelledError:
            _abort_quietly(result)
            if rid in self._pending:
                cause = "core stopped with the request pending" if self._stopping else "cancelled"
                self._fail(rid, BackendError(self._address, cause))
            raise
        except Exception as err:
            _abort_quietly(result)
            self._fail(rid, BackendError(self._address, f"generation failed: {err!r}"))

    def _sampling_params(self, req: Request) -> Any:
        params = req.params
        key = id(params)
        hit = self._params_cache.get(key)
        if hit is not None and hit[0] is params:
            return hit[1]
        end_id, stop_tokens = stop_values(params.stop_token_ids, params.eos_token_id)
        kwargs = sampling_values(params.sampling(), params.min_new_tokens).as_kwargs()
        kwargs.update(max_tokens=int(req.max_new_tokens), end_id=end_id, pad_id=end_id, detokenize=False)
        if stop_tokens:
            kwargs["stop_token_ids"] = stop_tokens
        made = self._SamplingParams(**kwargs)
        if len(self._params_cache) > 256:
            self._params_cache.clear()
        self._params_cache[key] = (params, made)
        return made

    def _shutdown_llm(self) -> None:
        try:
            self._llm.shutdown()
        except Exception as err:
            log.warning("%s: LLM shutdown raised %r", self._address, err)


def _abort_quietly(result: Any) -> None:
    if result is None:
        return
    try:
        if not getattr(result, "finished", False):
            result.abort()
    except Exception:  # aborting is best effort; the request's outcome is decided by the caller
        pass


def _llm_class(trtllm: Any, backend: str, core: str) -> tuple[Any, dict[str, Any]]:
    """The LLM class for --trtllm_backend and the constructor keyword that selects it."""
    if backend == "pytorch":
        return trtllm.LLM, {"backend": "pytorch"}
    try:  # recent versions keep the TensorRT-engine LLM apart
        module = import_trtllm("tensorrt_llm._tensorrt_engine", core)
        return module.LLM, {}
    except CoreUnavailableError:
        return trtllm.LLM, {}  # older versions: the default LLM is the TensorRT one


def _llm_kwargs(llmapi: Any, flags: dict[str, Any], tp: int, pp: int) -> dict[str, Any]:
    """LLM constructor arguments from the runtime flags (block reuse always off)."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "kv_cache_config": llmapi.KvCacheConfig(free_gpu_memory_fraction=kv_cache_fraction(flags),
                                                enable_block_reuse=False),
        "enable_chunked_prefill": flag_bool(flags, "enable_chunked_context", False),
        "skip_tokenizer_init": True,
    }
    policy, chunking = scheduler_policy_name(flags), chunking_policy_name(flags)
    if hasattr(llmapi, "SchedulerConfig") and hasattr(llmapi, "CapacitySchedulerPolicy"):
        sched: dict[str, Any] = {"capacity_scheduler_policy": getattr(llmapi.CapacitySchedulerPolicy, policy)}
        if hasattr(llmapi, "ContextChunkingPolicy"):
            sched["context_chunking_policy"] = getattr(llmapi.ContextChunkingPolicy, chunking)
        kwargs["scheduler_config"] = llmapi.SchedulerConfig(**sched)
    for key in ("max_batch_size", "max_num_tokens"):
        value = flag_int(flags, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


__all__ = ["TrtllmHlapiCore", "visible_devices"]
