"""The `trtllm_executor` core: a TensorRT-LLM C++ Executor (Python bindings) per data-parallel rank.

One thread per core blocks on the executor's own response queue and delivers outcomes as they arrive.

API surface used here, as read in NVIDIA/TensorRT-LLM (names only; nothing copied):
  cpp/tensorrt_llm/pybind/executor/executor.cpp
      Executor(model_path, model_type, executor_config); enqueue_request(request) -> id;
      await_responses(timeout: timedelta | None) -> list[Response]; cancel_request(id);
      get_latest_iteration_stats(); can_enqueue_requests(); shutdown().
  cpp/tensorrt_llm/pybind/executor/executorConfig.cpp (recent) and bindings.cpp (older)
      ExecutorConfig(max_beam_width, scheduler_config, kv_cache_config, enable_chunked_context,
      ..., batching_type, max_batch_size, max_num_tokens, parallel_config, ...);
      SchedulerConfig(capacity_scheduler_policy, context_chunking_policy[, dynamic_batch_config]);
      DynamicBatchConfig(enable_batch_size_tuning, enable_max_num_tokens_tuning,
      dynamic_batch_moving_average_window); KvCacheConfig(enable_block_reuse=..., ...,
      free_gpu_memory_fraction=...) -- its enable_block_reuse default is True in recent versions,
      so it is always passed as False here; ParallelConfig(communication_type, communication_mode,
      device_ids, participant_ids, orchestrator_config); OrchestratorConfig(is_orchestrator,
      worker_executable_path); enums CapacitySchedulerPolicy.{MAX_UTILIZATION,GUARANTEED_NO_EVICT},
      ContextChunkingPolicy.{FIRST_COME_FIRST_SERVED,EQUAL_PROGRESS}, CommunicationType.MPI,
      CommunicationMode.{LEADER,ORCHESTRATOR}, BatchingType.{STATIC,INFLIGHT}, ModelType.DECODER_ONLY;
      IterationStats.kv_cache_stats -> KvCacheStats.{max_num_blocks,free_num_blocks,used_num_blocks}.
  cpp/tensorrt_llm/pybind/executor/request.cpp
      Request(input_token_ids, max_tokens, *, streaming, sampling_config, output_config, end_id,
      pad_id, ..., stop_words, ..., return_all_generated_tokens, ...); older bindings take
      (input_token_ids, *, max_tokens=None, max_new_tokens=None, ...), so max_tokens is always
      passed by keyword (max_new_tokens where max_tokens is refused);
      SamplingConfig(beam_width=1, *, top_k, top_p, seed, temperature, min_tokens,
      presence_penalty, frequency_penalty, ...); OutputConfig(..., exclude_input_from_output=...);
      Response.{request_id, has_error(), error_msg, result}; Result.{is_final, output_token_ids
      (one list per beam), finish_reasons}; FinishReason.{..., TIMED_OUT, CANCELLED}.
  cpp/tensorrt_llm/batch_manager/llmRequest.cpp
      In streaming mode a response carries only the tokens generated since the previous response
      unless the request sets return_all_generated_tokens (then: all generated tokens so far);
      non-streaming responses carry the whole output (prompt included unless
      exclude_input_from_output).
  docs/source/advanced/executor.md, examples/bindings/executor/example_advanced.py
      the streaming/is_final contract, orchestrator mode with <tensorrt_llm>/bin/executorWorker.

Runtime flags read (--trtllm_runtime_flags over llmlib.config.RUNTIME_FLAG_DEFAULTS):
  batch_scheduler_policy, context_chunking_policy, kvcache_free_gpu_mem_frac, enable_chunked_context,
  use_inflight_batching, exclude_input_from_output, enable_batch_size_tuning,
  enable_max_num_tokens_tuning, dynamic_batch_moving_average_window, max_num_tokens, max_batch_size,
  max_beam_width, executor_worker_path (orchestrator mode; default <tensorrt_llm>/bin/executorWorker),
  return_all_generated_tokens (default false). KV-cache block reuse is always off (MLPerf rule).

Streamed token accounting: with return_all_generated_tokens false (the default, and what every
version does) each streamed response's tokens are appended; with it true each response replaces
what was gathered. Either way the final outcome carries the whole output as numpy uint32.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
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
from llmlib.cores.base import LLMCore, Request
from llmlib.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

#: How long one blocking await_responses call waits before the thread checks for stop.
AWAIT_TIMEOUT = timedelta(milliseconds=100)


class _Stream:
    """One request in flight on the executor: its llmlib request and the tokens gathered so far."""

    __slots__ = ("request", "tokens", "first_sent")

    def __init__(self, request: Request):
        self.request = request
        self.tokens: list[int] = []
        self.first_sent = False


def build_executor_config(tle: Any, flags: dict[str, Any], device_ids: list[int], *,
                          worker_path: str | None) -> Any:
    """An ExecutorConfig from the resolved runtime flags for one rank's devices.

    TP x PP > 1 runs the rank in orchestrator mode (worker processes spawned by the executor)."""
    policy = getattr(tle.CapacitySchedulerPolicy, scheduler_policy_name(flags))
    chunking = getattr(tle.ContextChunkingPolicy, chunking_policy_name(flags))
    window = flag_int(flags, "dynamic_batch_moving_average_window") or 128
    dynamic = None
    if hasattr(tle, "DynamicBatchConfig"):
        dynamic = tle.DynamicBatchConfig(
            flag_bool(flags, "enable_batch_size_tuning", False),
            flag_bool(flags, "enable_max_num_tokens_tuning", False),
            window,
        )
    try:
        scheduler = tle.SchedulerConfig(policy, chunking, dynamic)
    except TypeError:  # bindings without the dynamic batch config
        scheduler = tle.SchedulerConfig(policy, chunking)
    kv_cache = tle.KvCacheConfig(enable_block_reuse=False, free_gpu_memory_fraction=kv_cache_fraction(flags))
    n = len(device_ids)
    if n > 1:
        if not worker_path:
            raise ConfigError("orchestrator mode (TP x PP > 1) needs the executorWorker binary; set "
                              "--trtllm_runtime_flags executor_worker_path:<path>")
        parallel = tle.ParallelConfig(
            tle.CommunicationType.MPI, tle.CommunicationMode.ORCHESTRATOR,
            device_ids=list(device_ids), participant_ids=list(range(n)),
            orchestrator_config=tle.OrchestratorConfig(True, str(worker_path)),
        )
    else:
        parallel = tle.ParallelConfig(tle.CommunicationType.MPI, tle.CommunicationMode.LEADER,
                                      device_ids=list(device_ids))
    kwargs: dict[str, Any] = {
        "max_beam_width": flag_int(flags, "max_beam_width") or 1,
        "scheduler_config": scheduler,
        "kv_cache_config": kv_cache,
        "enable_chunked_context": flag_bool(flags, "enable_chunked_context", False),
        "batching_type": (tle.BatchingType.INFLIGHT if flag_bool(flags, "use_inflight_batching", True)
                          else tle.BatchingType.STATIC),
        "parallel_config": parallel,
    }
    for key in ("max_batch_size", "max_num_tokens"):
        value = flag_int(flags, key)
        if value is not None:
            kwargs[key] = value
    return tle.ExecutorConfig(**kwargs)


class TrtllmExecutorCore(LLMCore):
    """One TensorRT-LLM Executor (one data-parallel rank: TP x PP GPUs)."""

    name = "trtllm_executor"

    settings_type = TrtllmSettings
    settings: TrtllmSettings

    def __init__(self, settings: TrtllmSettings, **kwargs):
        super().__init__(settings, **kwargs)
        cfg = settings
        self._layout = cfg.layout
        self.device_ids = self._layout.device_ids(self.rank)
        self._address = f"{self.name}[rank {self.rank}, gpus {','.join(map(str, self.device_ids))}]"
        engine_dir = cfg.engine_dir
        if not engine_dir:
            raise ConfigError(f"core {self.name}: --engine_dir is empty; give the TensorRT-LLM engine folder")
        if not Path(engine_dir).is_dir():
            raise ConfigError(f"core {self.name}: --engine_dir={engine_dir} is not a folder")
        trtllm = import_trtllm("tensorrt_llm", self.name)
        tle = import_trtllm("tensorrt_llm.bindings.executor", self.name)
        self._tle = tle
        flags = dict(cfg.runtime_flags or {})
        self._exclude_input = flag_bool(flags, "exclude_input_from_output", True)
        self._return_all = flag_bool(flags, "return_all_generated_tokens", False)
        worker_path = flags.get("executor_worker_path")
        if worker_path is None and getattr(trtllm, "__file__", None):
            worker_path = str(Path(trtllm.__file__).parent / "bin" / "executorWorker")
        self.executor_config = build_executor_config(tle, flags, self.device_ids, worker_path=worker_path)

        self._output_config = tle.OutputConfig(exclude_input_from_output=self._exclude_input)
        self._sampling_cache: dict[tuple[int, int], tuple[dict, Any]] = {}
        self._max_tokens_kw = _max_tokens_keyword(tle)

        try:
            self._executor = tle.Executor(engine_dir, tle.ModelType.DECODER_ONLY, self.executor_config)
        except Exception as err:
            raise BackendError(self._address, f"could not create the executor from {engine_dir}: {err}") from err

        self._lock = threading.Lock()  # guards the id maps and _stopping
        self._streams: dict[int, _Stream] = {}  # executor id -> stream
        self._executor_ids: dict[int, int] = {}  # llmlib request id -> executor id
        self._stopping = False
        self._stopped = False
        self._fatal: str | None = None
        self._last_kv_util: float | None = None
        self._thread = threading.Thread(target=self._await_loop, name=f"trtllm-await-{self.rank}", daemon=True)
        self._thread.start()

    # --- the contract -------------------------------------------------------------------------
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
        if self._fatal is not None:
            raise BackendError(self._address, f"unhealthy: {self._fatal}")
        if self._stopping:
            raise BackendError(self._address, "core stopped")
        can_enqueue = getattr(self._executor, "can_enqueue_requests", None)
        if can_enqueue is not None:
            try:
                ready = can_enqueue()
            except Exception as err:
                raise BackendError(self._address, f"can_enqueue_requests raised {err!r}") from err
            if not ready:
                raise BackendError(self._address, "the executor cannot accept requests (not ready, not the "
                                                  "leader/orchestrator process, or shutting down)")

    def _enqueue_impl(self, requests: Sequence[Request]) -> None:
        if self._fatal is not None:
            raise BackendError(self._address, f"unhealthy: {self._fatal}")
        built: list[tuple[Request, Any]] = []
        for req in requests:
            try:
                built.append((req, self._executor_request(req)))
            except Exception as err:  # a malformed request fails alone
                self._fail(req.request_id, BackendError(self._address, f"bad request: {err!r}"))
        lock, executor, streams, ids = self._lock, self._executor, self._streams, self._executor_ids
        for req, ereq in built:
            # Enqueue and map under the lock, so the response thread never sees an unmapped id.
            with lock:
                if self._stopping:
                    refused: str | None = "core stopped"
                else:
                    try:
                        eid = executor.enqueue_request(ereq)
                        refused = None
                    except Exception as err:  # e.g. a prompt longer than the engine allows
                        refused = f"enqueue refused: {err}"
                    else:
                        streams[eid] = _Stream(req)
                        ids[req.request_id] = eid
            if refused is not None:
                self._fail(req.request_id, BackendError(self._address, refused))

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        with self._lock:
            eid = self._executor_ids.pop(request_id, None)
            if eid is not None:
                self._streams.pop(eid, None)
        if eid is not None:
            try:
                self._executor.cancel_request(eid)
            except Exception as err:  # the request still ends below
                log.warning("%s: cancel_request(%s) raised %r", self._address, eid, err)
        super().cancel(request_id, reason)

    def stop(self) -> None:
        with self._lock:
            already = self._stopping
            self._stopping = True
        if not already:
            self._thread.join(timeout=AWAIT_TIMEOUT.total_seconds() + 10.0)
            if self._thread.is_alive():
                log.warning("%s: the response thread did not end; shutting the executor down anyway", self._address)
            try:
                self._executor.shutdown()
            except Exception as err:
                log.warning("%s: executor shutdown raised %r", self._address, err)
            with self._lock:
                self._streams.clear()
                self._executor_ids.clear()
            self._stopped = True
        super().stop()

    # --- statistics ----------------------------------------------------------------------------
    def kv_cache_utilisation(self) -> float | None:
        """Used / max KV-cache blocks from the latest iteration statistics (None if unknown).

        get_latest_iteration_stats returns the iterations since the last call, so with no new
        iteration the last known value is returned."""
        if self._stopped:
            return None
        try:
            stats = self._executor.get_latest_iteration_stats()
        except Exception:
            return self._last_kv_util
        for it in reversed(list(stats or ())):
            kv = getattr(it, "kv_cache_stats", None)
            if kv is None:
                continue
            total = getattr(kv, "max_num_blocks", 0) or 0
            if total > 0:
                self._last_kv_util = float(kv.used_num_blocks) / float(total)
                break
        return self._last_kv_util

    # --- requests --------------------------------------------------------------------------------
    def _sampling_config(self, req: Request) -> Any:
        params = req.params
        key = id(params)
        hit = self._sampling_cache.get(key)
        if hit is not None and hit[0] is params:
            return hit[1]
        values = sampling_values(params.sampling(), params.min_new_tokens)
        made = self._tle.SamplingConfig(1, **values.as_kwargs())
        if len(self._sampling_cache) > 64:
            self._sampling_cache.clear()
        self._sampling_cache[key] = (params, made)
        return made

    def _executor_request(self, req: Request) -> Any:
        end_id, stop_tokens = stop_values(req.stop_token_ids, req.params.eos_token_id)
        kwargs: dict[str, Any] = {
            self._max_tokens_kw: int(req.max_new_tokens),
            "streaming": bool(req.streaming),
            "sampling_config": self._sampling_config(req),
            "output_config": self._output_config,
            "end_id": end_id,
            "pad_id": end_id,
        }
        if stop_tokens:
            kwargs["stop_words"] = [[t] for t in stop_tokens]
        if self._return_all and req.streaming:
            kwargs["return_all_generated_tokens"] = True
        return self._tle.Request(input_token_ids=np.asarray(req.input_tokens).tolist(), **kwargs)

    # --- the response thread -----------------------------------------------------------------------
    def _await_loop(self) -> None:
        executor = self._executor
        while not self._stopping:
            try:
                responses = executor.await_responses(AWAIT_TIMEOUT)
            except Exception as err:
                if self._stopping:
                    return
                self._die(f"await_responses raised {err!r}")
                return
            for resp in responses:
                try:
                    self._on_response(resp)
                except Exception as err:  # a malformed response fails its own request, not the thread
                    self._fail_executor_id(getattr(resp, "request_id", None), f"malformed response: {err!r}")

    def _on_response(self, resp: Any) -> None:
        eid = resp.request_id
        with self._lock:
            stream = self._streams.get(eid)
        if stream is None:  # cancelled, or already finished
            return
        rid = stream.request.request_id
        if resp.has_error():
            self._forget(eid, rid)
            self._fail(rid, BackendError(self._address, f"executor error: {resp.error_msg}"))
            return
        result = resp.result
        beams = result.output_token_ids
        new = list(beams[0]) if len(beams) else []
        req = stream.request
        if req.streaming:
            if self._return_all:
                stream.tokens = new
            else:
                stream.tokens.extend(new)
        elif not self._exclude_input:
            stream.tokens = new[len(req.input_tokens):]
        else:
            stream.tokens = new
        if req.streaming and not stream.first_sent and stream.tokens:
            stream.first_sent = True
            self._first_token(rid, np.asarray(stream.tokens, dtype=np.uint32))
        if not result.is_final:
            return
        self._forget(eid, rid)
        reason = _abnormal_finish(self._tle, result)
        if reason is not None:
            self._fail(rid, BackendError(self._address, f"request ended: {reason}"))
            return
        tokens = np.asarray(stream.tokens, dtype=np.uint32)
        self._complete(rid, tokens, len(tokens))

    def _forget(self, eid: int, rid: int) -> None:
        with self._lock:
            self._streams.pop(eid, None)
            if self._executor_ids.get(rid) == eid:
                del self._executor_ids[rid]

    def _fail_executor_id(self, eid: Any, cause: str) -> None:
        with self._lock:
            stream = self._streams.pop(eid, None) if eid is not None else None
            if stream is not None:
                self._executor_ids.pop(stream.request.request_id, None)
        if stream is not None:
            self._fail(stream.request.request_id, BackendError(self._address, cause))
        else:
            log.warning("%s: %s (executor id %s)", self._address, cause, eid)

    def _die(self, cause: str) -> None:
        """The response thread cannot go on: mark the core unhealthy and fail what is pending."""
        self._fatal = cause
        log.error("%s: %s; failing %d pending request(s)", self._address, cause, self.num_pending)
        with self._lock:
            self._streams.clear()
            self._executor_ids.clear()
        for rid in self.pending_ids():
            self._fail(rid, BackendError(self._address, cause))


def _max_tokens_keyword(tle: Any) -> str:
    """`max_tokens` (current bindings) or `max_new_tokens` (older ones that refuse max_tokens)."""
    try:
        tle.Request(input_token_ids=[1], max_tokens=1)
    except TypeError:
        return "max_new_tokens"
    return "max_tokens"


def _abnormal_finish(tle: Any, result: Any) -> str | None:
    """'cancelled' / 'timed out' when the executor ended the request itself; None otherwise."""
    reasons = getattr(result, "finish_reasons", None) or ()
    fr = getattr(tle, "FinishReason", None)
    if fr is None:
        return None
    for reason in reasons:
        if reason == getattr(fr, "CANCELLED", object()):
            return "cancelled by the executor"
        if reason == getattr(fr, "TIMED_OUT", object()):
            return "timed out in the executor"
    return None


__all__ = ["AWAIT_TIMEOUT", "TrtllmExecutorCore", "build_executor_config"]
