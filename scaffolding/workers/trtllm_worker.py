"""TrtllmWorker: generation tasks on a TensorRT-LLM LLM-API instance (`tensorrt_llm.LLM`) through
`generate_async`, streamed step by step for StreamGenerationTask; tensorrt_llm is imported lazily."""

from __future__ import annotations

import asyncio
import importlib
import numbers
import time
from typing import Any

from llmlib.errors import BackendError
from scaffolding.task import GenerationTask, StreamGenerationTask
from scaffolding.worker import Worker
from scaffolding.workers import TaskInputError, WorkerUnavailableError, check_supported, describe, split_stops

#: where tensorrt_llm comes from (pyproject optional dependency)
INSTALL_HINT = "pip install -e '.[trtllm]'"


def import_tensorrt_llm() -> Any:
    """The tensorrt_llm module, or WorkerUnavailableError naming the extra to install."""
    try:
        return importlib.import_module("tensorrt_llm")
    except ImportError as err:
        raise WorkerUnavailableError(f"TrtllmWorker needs TensorRT-LLM (tensorrt_llm could not be imported: "
                                     f"{err}). Install it with: {INSTALL_HINT}") from err


class TrtllmStream:
    """One generate_async result being consumed: the iterator and how far the task has read."""

    __slots__ = ("result", "iterator", "issued_ns", "first_ns", "final_ns", "prompt_len", "max_tokens", "done")

    def __init__(self, result: Any, issued_ns: int, prompt_len: int | None, max_tokens: int | None):
        self.result = result
        self.iterator = result.__aiter__()
        self.issued_ns = issued_ns
        self.first_ns = 0
        self.final_ns = 0
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.done = False


class TrtllmWorker(Worker):
    """Runs GenerationTask and StreamGenerationTask on `llm` (a tensorrt_llm.LLM, or anything with
    its `generate_async(inputs, sampling_params=..., streaming=...)`).

    - Prompts: `input_tokens` are sent as token ids; `input_str` is encoded with `tokenizer` when
      given, else sent as text (the LLM then needs its own tokenizer).
    - Sampling: the task's fields go into `SamplingParams` under the same names (`stop` strings
      as `stop`, token ids as `stop_token_ids`); unset fields take TensorRT-LLM's defaults, except
      `max_tokens` (`default_max_tokens`) and `end_id` / `pad_id` (given here, required when the
      LLM skips its tokenizer).
    - Results: output_tokens, output_str (the worker's tokenizer, else the LLM's detokenized
      text), completion_tokens, prompt_tokens, finish_reason, ttft_s (streamed only), latency_s.
      A request the engine ends as 'cancelled' or 'timeout' without being asked fails the task.

    A StreamGenerationTask step returns after `streaming_step` (at least 1) more tokens or the
    end; `cancel_flag` aborts the request in the engine and ends the task ('cancelled').
    """

    name = "trtllm"

    def __init__(self, llm: Any, *, tokenizer: Any = None, default_max_tokens: int = 256,
                 end_id: int | None = None, pad_id: int | None = None, streaming: bool = False,
                 owns_llm: bool = False):
        super().__init__()
        if not callable(getattr(llm, "generate_async", None)):
            raise TypeError(f"TrtllmWorker: llm={llm!r}; expected a tensorrt_llm.LLM (with generate_async)")
        if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, numbers.Integral) \
                or default_max_tokens < 1:
            raise ValueError(f"TrtllmWorker: default_max_tokens={default_max_tokens!r}; expected an integer >= 1")
        self.llm = llm
        self.tokenizer = tokenizer
        self.default_max_tokens = int(default_max_tokens)
        self.end_id = end_id
        self.pad_id = pad_id if pad_id is not None else end_id
        self.streaming = bool(streaming)
        self.owns_llm = owns_llm
        self._sampling_params_cls: Any = None  # tensorrt_llm.SamplingParams, imported on first use
        self.address = f"trtllm LLM {getattr(llm, 'model', type(llm).__name__)}"
        self.register_task_handler(GenerationTask, self.generate)
        self.register_task_handler(StreamGenerationTask, self.stream_step)

    @classmethod
    def from_model(cls, model_path: str, *, tokenizer: Any = None, default_max_tokens: int = 256,
                   end_id: int | None = None, pad_id: int | None = None, streaming: bool = False,
                   **llm_kwargs: Any) -> TrtllmWorker:
        """Build `tensorrt_llm.LLM(model=model_path, **llm_kwargs)` and a worker that owns it
        (shutdown() shuts the LLM down)."""
        trtllm = import_tensorrt_llm()
        try:
            llm = trtllm.LLM(model=model_path, **llm_kwargs)
        except Exception as err:
            raise BackendError(f"trtllm LLM {model_path}", f"could not create the LLM: {err}") from err
        return cls(llm, tokenizer=tokenizer, default_max_tokens=default_max_tokens, end_id=end_id, pad_id=pad_id,
                   streaming=streaming, owns_llm=True)

    # --- requests -----------------------------------------------------------------------------------
    def _sampling_params(self, task: GenerationTask) -> tuple[Any, int]:
        check_supported(task, "TrtllmWorker")
        cls = self._sampling_params_cls
        if cls is None:
            cls = self._sampling_params_cls = import_tensorrt_llm().SamplingParams
        max_tokens = int(task.max_tokens if task.max_tokens is not None else self.default_max_tokens)
        kwargs: dict[str, Any] = {"max_tokens": max_tokens}
        for name in ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty"):
            value = getattr(task, name)
            if value is not None:
                kwargs[name] = value
        strings, ids = split_stops(task.stop, task)
        if strings:
            kwargs["stop"] = strings
        if ids:
            kwargs["stop_token_ids"] = ids
        if self.end_id is not None:
            kwargs["end_id"] = self.end_id
            kwargs["pad_id"] = self.pad_id
        try:
            return cls(**kwargs), max_tokens
        except (TypeError, ValueError) as err:
            raise TaskInputError(f"{describe(task)}: TensorRT-LLM refused the sampling parameters {kwargs}: "
                                 f"{err}") from err

    def _inputs(self, task: GenerationTask) -> tuple[list[int] | str, int | None]:
        if task.input_tokens is not None:
            ids = list(task.input_tokens)
            if not ids or not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0
                                  for t in ids):
                raise TaskInputError(f"{describe(task)}: input_tokens must be a non-empty list of token ids")
            return [int(t) for t in ids], len(ids)
        if task.input_str is not None:
            if self.tokenizer is not None:
                ids = [int(t) for t in self.tokenizer.encode(task.input_str)]
                return ids, len(ids)
            return task.input_str, None
        raise TaskInputError(f"{describe(task)}: no prompt; set input_str or input_tokens")

    def _start(self, task: GenerationTask, *, streaming: bool) -> TrtllmStream:
        inputs, prompt_len = self._inputs(task)
        params, max_tokens = self._sampling_params(task)
        issued = time.monotonic_ns()
        try:  # called on the running loop: the result's async queue binds to it
            result = self.llm.generate_async(inputs, sampling_params=params, streaming=streaming)
        except Exception as err:
            raise BackendError(self.address, f"generate_async failed: {err!r}") from err
        return TrtllmStream(result, issued, prompt_len, max_tokens)

    # --- handlers -----------------------------------------------------------------------------------------
    async def generate(self, task: GenerationTask) -> None:
        stream = self._start(task, streaming=self.streaming)
        if self.streaming:
            await self._advance(stream, None)
        else:
            try:
                await stream.result.aresult()
            except asyncio.CancelledError:  # the caller gave up (shutdown): stop the engine's work too
                _abort(stream.result)
                raise
            except Exception as err:
                raise BackendError(self.address, f"generation failed: {err!r}") from err
            stream.final_ns = time.monotonic_ns()
            stream.done = True
        self._fill(task, stream)
        self._check_finish(stream)

    async def stream_step(self, task: StreamGenerationTask) -> None:
        stream: TrtllmStream | None = task.request_handle
        if stream is None:
            if task.cancel_flag:  # cancelled before it started: nothing is sent
                task.output_tokens, task.completion_tokens = [], 0
                task.finish_reason, task.end_flag = "cancelled", True
                return
            stream = self._start(task, streaming=True)
            task.request_handle = stream
        elif task.cancel_flag:
            if not stream.done:
                _abort(stream.result)
                stream.done = True
                stream.final_ns = time.monotonic_ns()
            self._fill(task, stream)
            task.finish_reason = "cancelled"
            task.end_flag = True
            return
        await self._advance(stream, len(task.output_tokens or ()) + max(task.streaming_step, 1))
        self._fill(task, stream)
        task.end_flag = stream.done
        if stream.done:
            self._check_finish(stream)

    async def _advance(self, stream: TrtllmStream, until: int | None) -> None:
        """Consume streamed updates until `until` tokens are out (None: to the end)."""
        try:
            while not stream.done:
                try:
                    out = await stream.iterator.__anext__()
                except StopAsyncIteration:
                    stream.done = True
                    break
                n = len(out.outputs[0].token_ids)
                if n and not stream.first_ns:
                    stream.first_ns = time.monotonic_ns()
                if getattr(out, "finished", False):
                    stream.done = True
                elif until is not None and n >= until:
                    return
        except asyncio.CancelledError:  # the caller gave up (shutdown): stop the engine's work too
            stream.done = True
            _abort(stream.result)
            raise
        except Exception as err:
            stream.done = True
            _abort(stream.result)
            raise BackendError(self.address, f"generation failed: {err!r}") from err
        stream.final_ns = time.monotonic_ns()

    def _fill(self, task: GenerationTask, stream: TrtllmStream) -> None:
        output = stream.result.outputs[0]
        tokens = [int(t) for t in output.token_ids]
        task.output_tokens = tokens
        task.completion_tokens = len(tokens)
        prompt_ids = getattr(stream.result, "prompt_token_ids", None)
        task.prompt_tokens = stream.prompt_len if stream.prompt_len is not None else (
            len(prompt_ids) if prompt_ids is not None else None)
        if self.tokenizer is not None:
            task.output_str = self.tokenizer.decode(tokens, skip_special_tokens=True)
        else:
            task.output_str = getattr(output, "text", None) or None
        task.finish_reason = getattr(output, "finish_reason", None) if stream.done else None
        if stream.done and task.finish_reason is None:
            task.finish_reason = "length" if len(tokens) >= stream.max_tokens else "stop"
        task.ttft_s = (stream.first_ns - stream.issued_ns) / 1e9 if stream.first_ns else None
        task.latency_s = (stream.final_ns - stream.issued_ns) / 1e9 if stream.final_ns else None

    def _check_finish(self, stream: TrtllmStream) -> None:
        reason = getattr(stream.result.outputs[0], "finish_reason", None)
        if reason in ("cancelled", "timeout"):
            raise BackendError(self.address, f"the request ended '{reason}' in the engine")

    async def shutdown(self) -> None:
        if self.owns_llm:
            await asyncio.get_running_loop().run_in_executor(None, self.llm.shutdown)


def _abort(result: Any) -> None:
    try:
        if not getattr(result, "finished", False):
            result.abort()
    except Exception:  # best effort: the task's outcome is decided by the caller
        pass


__all__ = ["TrtllmStream", "TrtllmWorker", "import_tensorrt_llm"]
