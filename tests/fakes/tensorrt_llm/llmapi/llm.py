"""Fake `tensorrt_llm.llmapi.llm`: LLM.generate_async returning a RequestOutput that is an async
iterator over streamed updates (outputs[0].token_ids accumulates), awaitable via aresult(), abortable.

As in the real result class, the async queue is bound to the event loop running when generate_async
is called; without a running loop, async use is refused.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from tensorrt_llm import _fake
from tensorrt_llm.sampling_params import SamplingParams

_LLM_KWARGS = frozenset({
    "pipeline_parallel_size", "backend", "kv_cache_config", "enable_chunked_prefill", "scheduler_config",
    "max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len", "max_beam_width",
})

_FINISH = {"LENGTH": "length", "CANCELLED": "cancelled", "END_ID": "stop", "STOP_WORDS": "stop",
           "TIMED_OUT": "timeout"}


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class RequestOutput:
    """The result of one generate_async call."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], streaming: bool, llm: LLM):
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("fake tensorrt_llm: no running event loop, so async operations are not "
                               "available (generate_async must be called inside the loop)") from None
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(0)]
        self._streaming = streaming
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = False
        self._aborted = False
        self._llm = llm

    @property
    def finished(self) -> bool:
        return self._done

    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        self._llm._engine.cancel(self.request_id)
        self._aborted = True

    def _push(self, item: tuple) -> None:  # called by the engine thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def _step(self) -> None:
        new, final, reason, error = await self._queue.get()
        if error is not None:
            self._done = True
            raise RuntimeError(f"Encountered an error in generation: {error}")
        out = self.outputs[0]
        out.token_ids.extend(new)
        if final:
            self._done = True
            out.finish_reason = _FINISH.get(reason, reason.lower())

    async def aresult(self) -> RequestOutput:
        while not self._done:
            await self._step()
        return self

    def __await__(self):
        return self.aresult().__await__()

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        await self._step()
        return self


class LLM:
    """Records its constructor arguments (`kwargs`) and the CUDA_VISIBLE_DEVICES it was built under
    (`visible_devices`); `shut_down` after shutdown()."""

    def __init__(self, model, tokenizer=None, tokenizer_mode="auto", skip_tokenizer_init=False,
                 trust_remote_code=False, tensor_parallel_size=1, dtype="auto", revision=None,
                 tokenizer_revision=None, **kwargs):
        unknown = set(kwargs) - _LLM_KWARGS
        if unknown:
            raise ValueError(f"LlmArgs: extra fields not permitted: {sorted(unknown)}")
        self.model = str(model)
        self.skip_tokenizer_init = skip_tokenizer_init
        self.kwargs = dict(kwargs, tensor_parallel_size=tensor_parallel_size,
                           skip_tokenizer_init=skip_tokenizer_init)
        self.visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.shut_down = False
        self.submitted: list[tuple[list[int], SamplingParams, bool]] = []
        self._engine = _fake.Engine(f"llm-{len(_fake.CONTROL.llms)}", self._emit)
        _fake.CONTROL.llms.append(self)

    def generate_async(self, inputs, sampling_params=None, lora_request=None, prompt_adapter_request=None,
                       streaming=False, queries=None, kv_cache_retention_config=None,
                       disaggregated_params=None, _postproc_params=None) -> RequestOutput:
        if self.shut_down:
            raise RuntimeError("fake LLM: generate_async after shutdown")
        if not isinstance(inputs, list) or not inputs or not all(type(t) is int for t in inputs):
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams, got {type(sampling_params)}")
        if sampling_params.end_id is None and self.skip_tokenizer_init:
            raise ValueError("tokenizer is required to reset end_id if it is None, or you can explicitly "
                             "specify the end_id for sampling_params")
        if inputs[0] == _fake.CRASH_TOKEN:
            raise RuntimeError("fake LLM: the executor failed")
        self.submitted.append((list(inputs), sampling_params, streaming))
        result = RequestOutput(0, list(inputs), streaming, self)
        result.request_id = self._engine.submit(inputs, sampling_params.max_tokens, payload={"result": result})
        return result

    def shutdown(self) -> None:
        if not self.shut_down:
            self.shut_down = True
            self._engine.shutdown()

    def _emit(self, job: _fake.Job, new: list[int], final: bool, reason: str, error: str | None) -> None:
        result: RequestOutput = job.payload["result"]
        if error is not None:
            result._push(([], True, reason, error))
        elif result._streaming:
            result._push((list(new), final, reason, None))
        elif final:  # non-streaming: one response with the whole output
            result._push((list(job.produced), True, reason, None))
