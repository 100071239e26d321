"""The `hf` core: a transformers model behind the in-flight batching engine, in its own process.

Data-parallel cores are separate processes with the CPU threads split between them; the parent
talks to each over a pipe, with a sender and a receiver thread (no polling on either side). The
worker sends one message per engine step: first tokens, outputs, errors and, for requests made with
`chunks=True`, each new token (the parent keeps the output so far and hands it to the sink's on_chunk).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlib.config import ResolvedConfig
from llmlib.cores.base import CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, ConfigError, CoreUnavailableError

log = logging.getLogger(__name__)

_STOP = ("stop",)


@dataclass(frozen=True, slots=True, kw_only=True)
class HFSettings(CoreSettings):
    """The `hf` core's settings (the `--hf_*` fields)."""

    model_path: str = ""  # a transformers checkpoint folder; "": the project's tiny model
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 16
    max_num_tokens: int = 2048
    num_workers: int = 1
    threads_per_worker: int = 0  # 0: the machine's cores but one, split between the workers
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"hf dtype={self.dtype!r}: expected one of auto, float32, bfloat16, float16")
        for name in ("max_batch_size", "max_num_tokens", "num_workers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"hf {name}={getattr(self, name)!r}: expected an integer >= 1")
        if int(self.threads_per_worker) < 0:
            raise ConfigError(f"hf threads_per_worker={self.threads_per_worker!r}: expected an integer >= 0")


def resolve_model_path(model_path: str) -> Path:
    """The checkpoint folder: --hf_model_path, or the project's tiny model (built on first use)."""
    if model_path:
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"--hf_model_path={model_path}: no config.json there "
                              "(expected a transformers checkpoint folder)")
        return path
    from llmlib.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


def threads_per_worker(settings: HFSettings) -> int:
    """--hf_threads_per_worker, else the cores left after one for the harness process (LoadGen,
    the server, the pipes), split evenly between the workers."""
    if settings.threads_per_worker:
        return settings.threads_per_worker
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (cpus - 1) // settings.num_workers)


class HFCore(LLMCore):
    """One worker process running HFEngine over the model."""

    name = "hf"
    settings_type = HFSettings
    settings: HFSettings

    def __init__(self, settings: HFSettings, **kwargs):
        super().__init__(settings, **kwargs)
        try:
            import torch  # noqa: F401  (fail here, in the parent, with the install hint)
            import transformers  # noqa: F401
        except ImportError as err:
            raise CoreUnavailableError(f"core 'hf' needs torch and transformers ({err}). "
                                       "Install them with: pip install -e '.[hf]'") from err
        s = settings
        self.model_path = resolve_model_path(s.model_path)
        self.threads = threads_per_worker(s)
        worker_cfg = {
            "model_path": str(self.model_path), "device": _pick_device(s.device, self.rank),
            "dtype": s.dtype, "max_batch_size": s.max_batch_size,
            "max_num_tokens": s.max_num_tokens, "threads": self.threads,
            "trust_remote_code": s.trust_remote_code, "rank": self.rank,
        }
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_worker_main, args=(child_conn, worker_cfg), name=f"hf-worker-{self.rank}",
                                 daemon=True)
        self._proc.start()
        child_conn.close()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[int, list] = {}  # rid -> [output so far (buffer), n]: requests with chunks
        self._ready = threading.Event()
        self._dead: str | None = None
        self._stopping = False
        self.info: dict = {}
        self._send_lock = threading.Lock()
        self._sender = threading.Thread(target=self._send_loop, name=f"hf-send-{self.rank}", daemon=True)
        self._receiver = threading.Thread(target=self._recv_loop, name=f"hf-recv-{self.rank}", daemon=True)
        self._sender.start()
        self._receiver.start()

    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark) -> HFSettings:
        return HFSettings(model_path=config.hf_model_path, device=config.hf_device, dtype=config.hf_dtype,
                          max_batch_size=config.hf_max_batch_size, max_num_tokens=config.hf_max_num_tokens,
                          num_workers=config.hf_num_workers, threads_per_worker=config.hf_threads_per_worker,
                          trust_remote_code=config.hf_trust_remote_code)

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        return config.hf_num_workers

    @property
    def address(self) -> str:
        return f"hf[{self.rank}] pid {self._proc.pid}" if hasattr(self, "_proc") else f"hf[{self.rank}]"

    # --- parent side ---------------------------------------------------------------------------------
    def _enqueue_impl(self, requests: Sequence[Request]) -> None:
        if self._dead is not None:
            raise BackendError(self.address, self._dead)
        for r in requests:
            if r.chunks:
                self._streams[r.request_id] = [np.empty(max(r.max_new_tokens, 1), dtype=np.uint32), 0]
        self._outbox.put([("req", r.request_id, np.asarray(r.input_tokens, dtype=np.int32), r.params, r.streaming,
                           r.chunks) for r in requests])

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        if request_id in self._pending:
            self._outbox.put([("cancel", request_id)])  # the engine drops the sequence at its next step
            self._streams.pop(request_id, None)
            super().cancel(request_id, reason)

    @property
    def dead_cause(self) -> str | None:
        return None if self._stopping else self._dead

    def health_check(self) -> None:
        if self._dead is not None:  # a worker that exited does not come back
            raise BackendError(self.address, self._dead, final=True)
        if not self._ready.is_set():
            raise BackendError(self.address, f"model {self.model_path} still loading")

    def _send_loop(self) -> None:
        while True:
            batch = self._outbox.get()
            if batch is _STOP:
                return
            while True:  # coalesce whatever else is waiting into one pipe message
                try:
                    more = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._send(batch)
                    return
                batch.extend(more)
            self._send(batch)

    def _send(self, batch: list) -> None:
        try:
            self._conn.send(batch)
        except (OSError, ValueError) as err:
            self._die(f"worker pipe closed: {err!r}")

    def _recv_loop(self) -> None:
        while True:
            try:
                msgs = self._conn.recv()
            except (EOFError, OSError) as err:
                code = self._proc.exitcode
                self._die(f"worker process ended (exit code {code}): {err!r}" if code else
                          f"worker connection closed: {err!r}")
                return
            streams = self._streams
            for msg in msgs:
                kind = msg[0]
                if kind == "chunk":  # ("chunk", rid, n, the n-th token)
                    stream = streams.get(msg[1])
                    if stream is not None:
                        buf, n = stream[0], msg[2]
                        buf[n - 1] = msg[3]
                        stream[1] = n
                        self._chunk(msg[1], buf[:n], n)
                elif kind == "first":
                    self._first_token(msg[1], np.array([msg[2]], dtype=np.uint32))
                elif kind == "done":
                    if streams:
                        streams.pop(msg[1], None)
                    tokens = np.frombuffer(msg[2], dtype=np.uint32).copy()
                    self._complete(msg[1], tokens, len(tokens))
                elif kind == "error":
                    if streams:
                        streams.pop(msg[1], None)
                    self._fail(msg[1], BackendError(self.address, msg[2]))
                elif kind == "ready":
                    self.info = msg[1]
                    self._ready.set()
                elif kind == "fatal":
                    self._die(msg[1])
                    return
                elif kind == "stopped":
                    return

    def _die(self, why: str) -> None:
        """The worker is gone: every pending request fails, new ones are refused."""
        if self._dead is None:
            self._dead = why
            log.error("%s: %s", self.address, why)
        self._streams.clear()
        for rid in list(self._pending):
            self._fail(rid, BackendError(self.address, why))

    def stop(self) -> None:
        self._stopping = True
        if self._dead is None:
            self._outbox.put([("stop",)])
        self._outbox.put(_STOP)
        self._sender.join(timeout=5)
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._receiver.join(timeout=5)
        self._dead = self._dead or "core stopped"
        super().stop()
        self._conn.close()


def _pick_device(device: str, rank: int) -> str:
    if device != "auto":
        return device
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{rank % torch.cuda.device_count()}"
    except ImportError:
        pass
    return "cpu"


# --- worker process ---------------------------------------------------------------------------------------
def _worker_main(conn, cfg: dict) -> None:
    """Load the model, then loop: take requests from the pipe (a receiver thread), step the engine,
    send outcomes. Blocks on its own queue when idle."""
    # Ctrl-C at a terminal reaches the whole process group: the parent decides how the run ends
    # and stops this worker itself, so the worker must not die of the same keypress first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = str(cfg["threads"])
    # OpenMP threads that spin while waiting collapse throughput (30x measured here) as soon as
    # anything else wants the same cores; sleeping waiters cost little when nothing does.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        from transformers import AutoModelForCausalLM

        from llmlib.hf_engine import HFEngine, engine_request_from

        torch.set_num_threads(cfg["threads"])
        device = cfg["device"]
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg["dtype"]]
        model = AutoModelForCausalLM.from_pretrained(cfg["model_path"], dtype=dtype,
                                                     trust_remote_code=cfg["trust_remote_code"])
        model.to(device).eval()
    except Exception as err:  # noqa: BLE001 - anything here means the worker cannot serve
        try:
            conn.send([("fatal", f"loading {cfg['model_path']} failed: {err!r}")])
        finally:
            return

    out: list = []  # this step's messages: one pipe message per step, however many requests

    class PipeSink:  # the engine's outcomes (ResponseSink shape), as pipe messages
        def on_first_token(self, rid, tokens):
            out.append(("first", rid, int(tokens[0])))

        def on_chunk(self, rid, tokens, n):  # one token more per step: send only the new one
            out.append(("chunk", rid, n, int(tokens[n - 1])))

        def on_complete(self, rid, tokens, n):
            out.append(("done", rid, tokens[:n].tobytes()))

        def on_error(self, rid, error):
            out.append(("error", rid, getattr(error, "cause", None) or repr(error)))

    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def receive():
        while True:
            try:
                msgs = conn.recv()
            except (EOFError, OSError):
                inbox.put([("stop",)])
                return
            inbox.put(msgs)
            if any(m[0] == "stop" for m in msgs):
                return

    threading.Thread(target=receive, name="hf-worker-recv", daemon=True).start()
    engine = HFEngine(model, PipeSink(), max_batch_size=cfg["max_batch_size"],
                      max_num_tokens=cfg["max_num_tokens"], device=device)
    conn.send([("ready", {"device": device, "dtype": str(dtype), "threads": cfg["threads"],
                          "model": cfg["model_path"]})])
    stopping = False
    with torch.inference_mode():
        while not stopping:
            batches = [inbox.get()] if engine.idle else []  # block only when there is nothing to do
            while True:
                try:
                    batches.append(inbox.get_nowait())
                except queue.Empty:
                    break
            for msgs in batches:
                for m in msgs:
                    if m[0] == "req":
                        _, rid, ids, params, streaming, chunks = m
                        engine.add(engine_request_from(rid, ids, params, streaming, chunks))
                    elif m[0] == "cancel":
                        engine.cancel(m[1])
                    elif m[0] == "stop":
                        stopping = True
            if not stopping and not engine.idle:
                engine.step()
            if out:
                conn.send(out)
                out = []
    conn.send([("stopped",)])
