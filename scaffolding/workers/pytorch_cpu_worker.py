"""PytorchCPUWorker: generation on CPU (or a GPU if asked) with a transformers checkpoint, built on
llmlib: an LLMServer over `hf` cores (worker processes with in-flight batching) and LLMCoreWorker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmlib.errors import HarnessError
from llmlib.server import LLMServer
from scaffolding.workers import WorkerUnavailableError
from scaffolding.workers.llmcore_worker import LLMCoreWorker


class PytorchCPUWorker(LLMCoreWorker):
    """The parameters of TensorRT-LLM's contributed PyTorch CPU worker, on the harness's `hf` core.

    - `model_dir`: a transformers checkpoint folder (config.json, weights, tokenizer).
    - `max_batch_size`, `max_num_tokens`: the engine's sequences per step and tokens per step.
    - `trust_remote_code`, `device` ('cpu', 'cuda', 'cuda:N', 'auto'), `dtype`.
    - Sampling defaults for tasks that leave a field unset: `temperature` (unset: greedy), `top_p`,
      `top_k`, `max_tokens`, `frequency_penalty`, `presence_penalty`, `stop` (token ids, or
      strings that are one token each).
    - `num_workers`: data-parallel worker processes (the server balances tasks over them);
      `threads_per_worker` (0: the machine's cores but one, split between workers).
    - `request_timeout_s`: a request still running after this fails (0: never).

    The model loads in worker processes; the constructor returns when they are ready (or raises,
    after `startup_timeout_s`). `shutdown()` (or `close()`) stops them.
    """

    name = "pytorch_cpu"

    def __init__(self, model_dir: str | Path, *, max_batch_size: int = 32, max_num_tokens: int = 4096,
                 trust_remote_code: bool = False, device: str = "cpu", dtype: str = "float32",
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 max_tokens: int = 256, frequency_penalty: float | None = None,
                 presence_penalty: float | None = None, stop: Sequence[str | int] | None = None,
                 num_workers: int = 1, threads_per_worker: int = 0, streaming: bool = False,
                 request_timeout_s: float = 600.0, startup_timeout_s: float = 300.0):
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"PytorchCPUWorker: model_dir={str(model_dir)!r} has no config.json; expected a "
                             "transformers checkpoint folder")
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise WorkerUnavailableError(f"PytorchCPUWorker needs torch and transformers ({err}). "
                                         "Install them with: pip install -e '.[hf]'") from err
        from llmlib.cores.hf_core import HFCore, HFSettings
        from llmlib.warmup import WarmupManager

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception as err:
            raise ValueError(f"PytorchCPUWorker: model_dir={str(model_dir)!r}: the tokenizer could not be "
                             f"loaded: {err}") from err
        # the core's own settings, nothing else: generation settings come with each request (LLMCoreWorker)
        settings = HFSettings(model_path=str(path), device=device, dtype=dtype, max_batch_size=max_batch_size,
                              max_num_tokens=max_num_tokens, trust_remote_code=trust_remote_code,
                              num_workers=num_workers, threads_per_worker=threads_per_worker)
        server = LLMServer(policy="load_balancing", request_timeout_s=request_timeout_s)
        cores: list[Any] = []
        try:
            for rank in range(num_workers):
                cores.append(HFCore(settings, rank=rank, sink=server))
            server.attach(cores)
            WarmupManager(server, health_timeout_s=startup_timeout_s, backoff_s=0.05,
                          max_backoff_s=0.5).health_check()
        except Exception:
            for core in cores:
                core.stop()
            server.stop()
            raise
        eos = getattr(tokenizer, "eos_token_id", None)
        super().__init__(server, tokenizer, default_max_tokens=max_tokens,
                         stop_token_ids=() if eos is None else (int(eos),), streaming=streaming,
                         default_sampling={"temperature": temperature, "top_p": top_p, "top_k": top_k,
                                           "frequency_penalty": frequency_penalty,
                                           "presence_penalty": presence_penalty, "stop": stop})
        self.model_dir = path
        self.device = device
        self._stopped = False
        self._stop_lock = threading.Lock()

    @property
    def info(self) -> list[dict]:
        """What each worker process reported when ready (device, dtype, threads, model)."""
        return [dict(core.info) for core in self.server.cores]

    def close(self) -> None:
        """Stop the worker processes (blocking; idempotent). Tasks still running fail."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.server.stop()
        except Exception as err:
            raise HarnessError(f"PytorchCPUWorker({self.model_dir}): stopping the worker processes failed: "
                               f"{err}") from err

    async def shutdown(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> PytorchCPUWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["PytorchCPUWorker"]
