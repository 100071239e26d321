"""Fake `tensorrt_llm.bindings.executor`: the Executor API names and keyword signatures of the real
pybind module (recent layout: Request(input_token_ids, max_tokens, *, ...)), over the simulated engine.

Like the real bindings, constructors reject unknown keywords, and KvCacheConfig's enable_block_reuse
defaults to True (so a caller that wants it off must say so).
"""

from __future__ import annotations

import collections
import enum
import threading
from datetime import timedelta
from pathlib import Path

from tensorrt_llm import _fake

__version__ = "0.0.0+fake"


class ModelType(enum.Enum):
    DECODER_ONLY = 0
    ENCODER_ONLY = 1
    ENCODER_DECODER = 2


class BatchingType(enum.Enum):
    STATIC = 0
    INFLIGHT = 1


class CapacitySchedulerPolicy(enum.Enum):
    MAX_UTILIZATION = 0
    GUARANTEED_NO_EVICT = 1


class ContextChunkingPolicy(enum.Enum):
    EQUAL_PROGRESS = 0
    FIRST_COME_FIRST_SERVED = 1


class CommunicationType(enum.Enum):
    MPI = 0


class CommunicationMode(enum.Enum):
    LEADER = 0
    ORCHESTRATOR = 1


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


class DynamicBatchConfig:
    def __init__(self, enable_batch_size_tuning: bool, enable_max_num_tokens_tuning: bool,
                 dynamic_batch_moving_average_window: int):
        self.enable_batch_size_tuning = enable_batch_size_tuning
        self.enable_max_num_tokens_tuning = enable_max_num_tokens_tuning
        self.dynamic_batch_moving_average_window = dynamic_batch_moving_average_window


class SchedulerConfig:
    def __init__(self, capacity_scheduler_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                 context_chunking_policy=None, dynamic_batch_config=None):
        self.capacity_scheduler_policy = capacity_scheduler_policy
        self.context_chunking_policy = context_chunking_policy
        self.dynamic_batch_config = dynamic_batch_config


class KvCacheConfig:
    def __init__(self, enable_block_reuse: bool = True, max_tokens=None, max_attention_window=None,
                 sink_token_length=None, free_gpu_memory_fraction=None, host_cache_size=None,
                 onboard_blocks: bool = True, cross_kv_cache_fraction=None, secondary_offload_min_priority=None,
                 event_buffer_max_size: int = 0, *, enable_partial_reuse: bool = True,
                 copy_on_partial_reuse: bool = True, use_uvm: bool = False,
                 attention_dp_events_gather_period_ms: int = 5, runtime_defaults=None):
        self.enable_block_reuse = enable_block_reuse
        self.max_tokens = max_tokens
        self.free_gpu_memory_fraction = free_gpu_memory_fraction
        self.host_cache_size = host_cache_size
        self.onboard_blocks = onboard_blocks
        self.enable_partial_reuse = enable_partial_reuse


class OrchestratorConfig:
    def __init__(self, is_orchestrator: bool = True, worker_executable_path: str = "", orch_leader_comm=None,
                 spawn_processes: bool = True):
        self.is_orchestrator = is_orchestrator
        self.worker_executable_path = worker_executable_path
        self.orch_leader_comm = orch_leader_comm
        self.spawn_processes = spawn_processes


class ParallelConfig:
    def __init__(self, communication_type=CommunicationType.MPI, communication_mode=CommunicationMode.LEADER,
                 device_ids=None, participant_ids=None, orchestrator_config=None, num_nodes=None):
        self.communication_type = communication_type
        self.communication_mode = communication_mode
        self.device_ids = device_ids
        self.participant_ids = participant_ids
        self.orchestrator_config = orchestrator_config
        self.num_nodes = num_nodes


class ExecutorConfig:
    def __init__(self, max_beam_width: int = 1, scheduler_config=None, kv_cache_config=None,
                 enable_chunked_context: bool = False, normalize_log_probs: bool = True,
                 iter_stats_max_iterations: int = 1000, request_stats_max_iterations: int = 0,
                 batching_type=BatchingType.INFLIGHT, max_batch_size=None, max_num_tokens=None,
                 parallel_config=None, peft_cache_config=None, logits_post_processor_config=None,
                 decoding_config=None, use_gpu_direct_storage: bool = False, gpu_weights_percent: float = 1.0,
                 max_queue_size=None, extended_runtime_perf_knob_config=None, debug_config=None,
                 recv_poll_period_ms: int = 0, max_seq_idle_microseconds: int = 180_000_000,
                 spec_dec_config=None, guided_decoding_config=None, additional_model_outputs=None,
                 cache_transceiver_config=None, gather_generation_logits: bool = False,
                 mm_embedding_offloading: bool = False, enable_trt_overlap: bool = False,
                 fail_fast_on_attention_window_too_large: bool = False):
        self.max_beam_width = max_beam_width
        self.scheduler_config = scheduler_config if scheduler_config is not None else SchedulerConfig()
        self.kv_cache_config = kv_cache_config if kv_cache_config is not None else KvCacheConfig()
        self.enable_chunked_context = enable_chunked_context
        self.batching_type = batching_type
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.parallel_config = parallel_config
        self.iter_stats_max_iterations = iter_stats_max_iterations


class SamplingConfig:
    def __init__(self, beam_width: int = 1, *, top_k=None, top_p=None, top_p_min=None, top_p_reset_ids=None,
                 top_p_decay=None, seed=None, temperature=None, min_tokens=None, beam_search_diversity_rate=None,
                 repetition_penalty=None, presence_penalty=None, frequency_penalty=None,
                 prompt_ignore_length=None, length_penalty=None, early_stopping=None, no_repeat_ngram_size=None,
                 num_return_sequences=None, min_p=None, beam_width_array=None):
        self.beam_width = beam_width
        self.top_k = top_k
        self.top_p = top_p
        self.seed = seed
        self.temperature = temperature
        self.min_tokens = min_tokens
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty


class OutputConfig:
    def __init__(self, return_log_probs: bool = False, return_context_logits: bool = False,
                 return_generation_logits: bool = False, exclude_input_from_output: bool = False,
                 return_encoder_output: bool = False, return_perf_metrics: bool = False,
                 additional_model_outputs=None):
        self.return_log_probs = return_log_probs
        self.exclude_input_from_output = exclude_input_from_output


def _check_tokens(name: str, tokens) -> list[int]:
    # pybind's list caster takes a sequence of Python ints; be strict so the core converts.
    if not isinstance(tokens, (list, tuple)) or not all(type(t) is int for t in tokens):
        raise TypeError(f"{name}: incompatible argument, expected List[int], got {type(tokens).__name__}")
    return list(tokens)


class Request:
    def __init__(self, input_token_ids, max_tokens, *, streaming: bool = False, sampling_config=None,
                 output_config=None, end_id=None, pad_id=None, position_ids=None, bad_words=None, stop_words=None,
                 embedding_bias=None, external_draft_tokens_config=None, prompt_tuning_config=None,
                 multimodal_input=None, multimodal_embedding=None, mrope_config=None, lora_config=None,
                 lookahead_config=None, kv_cache_retention_config=None, logits_post_processor_name=None,
                 logits_post_processor=None, encoder_input_token_ids=None, client_id=None,
                 return_all_generated_tokens: bool = False, priority: float = 0.5, type=None,
                 context_phase_params=None, encoder_input_features=None, encoder_output_length=None,
                 cross_attention_mask=None, num_return_sequences: int = 1, eagle_config=None,
                 skip_cross_attn_blocks=None, guided_decoding_params=None, language_adapter_uid=None,
                 allotted_time_ms=None, cache_salt_id=None):
        self.input_token_ids = _check_tokens("input_token_ids", input_token_ids)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise TypeError(f"max_tokens: expected a non-negative int, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.streaming = streaming
        self.sampling_config = sampling_config if sampling_config is not None else SamplingConfig()
        self.output_config = output_config if output_config is not None else OutputConfig()
        self.end_id = end_id
        self.pad_id = pad_id
        self.stop_words = stop_words
        self.return_all_generated_tokens = return_all_generated_tokens


class Result:
    def __init__(self):
        self.is_final = False
        self.output_token_ids: list[list[int]] = []
        self.finish_reasons: list[FinishReason] = []
        self.sequence_index = 0
        self.is_sequence_final = False
        self.decoding_iter = 0


class Response:
    def __init__(self, request_id: int, error_msg: str | None = None, result: Result | None = None,
                 client_id=None):
        self._request_id = request_id
        self._error_msg = error_msg
        self._result = result
        self._client_id = client_id

    @property
    def request_id(self) -> int:
        return self._request_id

    @property
    def client_id(self):
        return self._client_id

    def has_error(self) -> bool:
        return self._error_msg is not None

    @property
    def error_msg(self) -> str:
        if self._error_msg is None:
            raise RuntimeError("[TensorRT-LLM][ERROR] Cannot get the error message: the response has a result")
        return self._error_msg

    @property
    def result(self) -> Result:
        if self._error_msg is not None:
            raise RuntimeError(f"[TensorRT-LLM][ERROR] Cannot get the result for a response with an error: "
                               f"{self._error_msg}")
        return self._result


class KvCacheStats:
    def __init__(self):
        self.max_num_blocks = 0
        self.free_num_blocks = 0
        self.used_num_blocks = 0
        self.tokens_per_block = 0
        self.alloc_total_blocks = 0
        self.alloc_new_blocks = 0
        self.reused_blocks = 0


class IterationStats:
    def __init__(self):
        self.timestamp = ""
        self.iter = 0
        self.num_active_requests = 0
        self.num_queued_requests = 0
        self.kv_cache_stats: KvCacheStats | None = None


class Executor:
    """One simulated executor. Besides the real methods it exposes, for tests: `model_path`,
    `model_type`, `config` (the ExecutorConfig received), `requests` (id -> Request received),
    `cancelled` (ids), `shut_down`."""

    def __init__(self, model_path, model_type, executor_config):
        path = Path(model_path)
        if not path.is_dir():
            raise RuntimeError(f"[TensorRT-LLM][ERROR] engine folder {path} does not exist")
        if not isinstance(model_type, ModelType) or not isinstance(executor_config, ExecutorConfig):
            raise TypeError("__init__(): incompatible constructor arguments")
        self.model_path = str(path)
        self.model_type = model_type
        self.config = executor_config
        self.requests: dict[int, Request] = {}
        self.cancelled: list[int] = []
        self.shut_down = False
        self._cond = threading.Condition()
        self._responses: collections.deque[Response] = collections.deque()
        self._stats: collections.deque[IterationStats] = collections.deque(maxlen=1000)
        self._crashed = False
        self._engine = _fake.Engine(f"executor-{len(_fake.CONTROL.executors)}", self._emit)
        _fake.CONTROL.executors.append(self)

    # --- real API ---
    def enqueue_request(self, request: Request) -> int:
        if not isinstance(request, Request):
            raise TypeError("enqueue_request(): incompatible function arguments")
        if self.shut_down:
            raise RuntimeError("[TensorRT-LLM][ERROR] Shutdown called, cannot enqueue requests")
        ids = request.input_token_ids
        if not ids:
            raise RuntimeError("[TensorRT-LLM][ERROR] Assertion failed: input token ids must not be empty")
        if ids[0] == _fake.CRASH_TOKEN:
            with self._cond:
                self._crashed = True
                self._cond.notify_all()
        eid = self._engine.submit(ids, request.max_tokens, payload=request)
        self.requests[eid] = request
        return eid

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        return [self.enqueue_request(r) for r in requests]

    def await_responses(self, *args, **kwargs) -> list[Response]:
        timeout, wanted = _await_args(args, kwargs)
        with self._cond:
            def ready():
                if self._crashed or self.shut_down:
                    return True
                return any(wanted is None or r.request_id in wanted for r in self._responses)
            self._cond.wait_for(ready, None if timeout is None else timeout.total_seconds())
            if self._crashed:
                raise RuntimeError("[TensorRT-LLM][ERROR] fake executor: the engine failed")
            if self.shut_down:
                raise RuntimeError("[TensorRT-LLM][ERROR] Shutdown called, cannot await responses")
            if wanted is None:
                out = list(self._responses)
                self._responses.clear()
            else:
                out = [r for r in self._responses if r.request_id in wanted]
                self._responses = collections.deque(r for r in self._responses if r.request_id not in wanted)
            return out

    def get_num_responses_ready(self, id=None) -> int:
        with self._cond:
            return sum(1 for r in self._responses if id is None or r.request_id == id)

    def cancel_request(self, id: int) -> None:
        self.cancelled.append(id)
        self._engine.cancel(id)

    def get_latest_iteration_stats(self) -> list[IterationStats]:
        with self._cond:
            out = list(self._stats)
            self._stats.clear()
            return out

    def get_latest_request_stats(self) -> list:
        return []

    def can_enqueue_requests(self) -> bool:
        return not self.shut_down and _fake.CONTROL.can_enqueue

    def shutdown(self) -> None:
        if self.shut_down:
            return
        self._engine.shutdown()
        with self._cond:
            self.shut_down = True
            self._cond.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    # --- simulation ---
    def _emit(self, job: _fake.Job, new: list[int], final: bool, reason: str, error: str | None) -> None:
        request: Request = job.payload
        if error is not None:
            response = Response(job.id, error_msg=error)
        elif request.streaming:
            tokens = list(job.produced) if request.return_all_generated_tokens else list(new)
            if not final and not tokens:
                return
            response = Response(job.id, result=_result(tokens, final, reason))
        elif final:
            tokens = list(job.produced)
            if not request.output_config.exclude_input_from_output:
                tokens = list(job.input_ids) + tokens
            response = Response(job.id, result=_result(tokens, True, reason))
        else:
            return
        with self._cond:
            self._responses.append(response)
            stats = IterationStats()
            stats.iter = self._engine.iterations
            stats.num_active_requests = self._engine.active()
            kv = KvCacheStats()
            kv.max_num_blocks = _fake.CONTROL.kv_blocks
            kv.used_num_blocks = min(self._engine.kv_used_blocks, kv.max_num_blocks)
            kv.free_num_blocks = kv.max_num_blocks - kv.used_num_blocks
            kv.tokens_per_block = _fake.CONTROL.tokens_per_block
            stats.kv_cache_stats = kv
            self._stats.append(stats)
            self._cond.notify_all()


def _result(tokens: list[int], final: bool, reason: str) -> Result:
    result = Result()
    result.is_final = final
    result.is_sequence_final = final
    result.output_token_ids = [tokens]
    result.finish_reasons = [FinishReason[reason]]
    return result


def _await_args(args: tuple, kwargs: dict) -> tuple[timedelta | None, set[int] | None]:
    """The three real overloads: (timeout=None), (id, timeout=None), (ids, timeout=None)."""
    wanted = None
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        wanted, args = {args[0]}, args[1:]
    elif args and isinstance(args[0], list):
        wanted, args = set(args[0]), args[1:]
    elif "id" in kwargs:
        wanted = {kwargs.pop("id")}
    elif "ids" in kwargs:
        wanted = set(kwargs.pop("ids"))
    timeout = args[0] if args else kwargs.pop("timeout", None)
    if kwargs:
        raise TypeError(f"await_responses(): unexpected arguments {sorted(kwargs)}")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        timeout = timedelta(seconds=timeout)
    if timeout is not None and not isinstance(timeout, timedelta):
        raise TypeError("await_responses(): timeout must be a datetime.timedelta")
    return timeout, wanted
