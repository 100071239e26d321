"""Network cores spread over worker processes: the LoadGen process only issues and completes; workers
hold the connections, parse the streams and count tokens (pyzmq PUSH/PULL over ipc, msgspec msgpack).

Per sample one message goes out (the request) and at most two come back (its first token, its outcome);
a request someone listens to (`chunks=True`) also gets its token chunks back.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmlib.cores.base import NO_INPUTS, CoreInputs, CoreSettings, LLMCore, Request
from llmlib.errors import BackendError, ConfigError, CoreUnavailableError

log = logging.getLogger(__name__)

#: how long the workers may take to build their cores (connect nothing yet: the health check does)
START_TIMEOUT_S = 60.0
#: how long a control call (health check, warm-up, report, stop) waits for every worker's answer
CONTROL_TIMEOUT_S = 120.0


def parse_workers_per_core(value: str | int, num_cores: int, cpus: int | None = None) -> int:
    """`--workers_per_core`: an integer >= 0 (0 and 1: the cores run in this process), or `auto`: the
    machine's cores but one (for the LoadGen process) split between the cores, at least 1."""
    text = str(value).strip().lower()
    if text == "auto":
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, (cpus - 1) // max(1, num_cores))
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--workers_per_core={value!r}: expected an integer >= 0 or 'auto'") from None
    if n < 0:
        raise ConfigError(f"--workers_per_core={value!r}: expected an integer >= 0 or 'auto'")
    return n


def _import_modules():
    try:
        import msgspec
        import zmq
    except ImportError as err:
        raise CoreUnavailableError(f"--workers_per_core needs pyzmq and msgspec ({err}). Install them with: "
                                   "pip install -e '.[endpoint]'") from err
    return zmq, msgspec


class WorkerPoolCore(LLMCore):
    """One core of `core_cls` whose requests run in `workers` processes, each with its own instance of the
    core (built from the same settings, split by `core_cls.worker_settings`). Requests go to the worker
    with the fewest outstanding; a worker that dies fails its own requests with the cause, the others go on.
    """

    settings_type = CoreSettings  # any core's

    def __init__(self, core_cls: type[LLMCore], settings: CoreSettings, *, rank: int, sink,
                 inputs: CoreInputs = NO_INPUTS, workers: int = 2, start_timeout_s: float = START_TIMEOUT_S):
        if not isinstance(settings, core_cls.settings_type):
            raise TypeError(f"core {core_cls.name}: settings must be {core_cls.settings_type.__name__}")
        super().__init__(settings, rank=rank, sink=sink, inputs=inputs)
        zmq, msgspec = _import_modules()
        if workers < 1:
            raise ConfigError(f"--workers_per_core={workers}: a worker pool needs at least 1 worker")
        self.core_cls = core_cls
        self.name = core_cls.name
        self.n_workers = workers
        self._zmq = zmq
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder()
        self._dir = tempfile.mkdtemp(prefix="llmlib-workers-")
        self._ctx = zmq.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.bind(f"ipc://{self._dir}/out")
        self._pushes = []
        for i in range(workers):
            push = self._ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)  # never drop, never block on a slow worker: it queues
            push.setsockopt(zmq.LINGER, 0)
            push.bind(f"ipc://{self._dir}/in{i}")
            self._pushes.append(push)
        self._send_lock = threading.Lock()
        self._owner: dict[int, int] = {}  # request id -> worker index
        self._load = [0] * workers  # outstanding requests per worker
        self._alive = [True] * workers
        self._dead: str | None = None
        self._stopping = False
        self._params_blob: dict[int, tuple[Any, bytes]] = {}  # id(params) -> (params, pickled)
        self._replies: dict[tuple[str, int, int], Any] = {}  # (kind, seq, worker) -> answer
        self._reply_cond = threading.Condition()
        self._seq = 0
        self._final_report: dict[str, Any] = {"workers": workers}
        self._address = f"{core_cls.name}[{rank}]"
        self.worker_addresses: list[str | None] = [None] * workers
        self.worker_pids: list[int] = []
        ctx = mp.get_context("spawn")
        target = f"{core_cls.__module__}:{core_cls.__qualname__}"
        self._procs = []
        try:
            for i in range(workers):
                proc = ctx.Process(target=_worker_main, name=f"{core_cls.name}-{rank}-worker-{i}", daemon=True,
                                   args=(target, settings, rank, i, workers, inputs,
                                         f"ipc://{self._dir}/in{i}", f"ipc://{self._dir}/out"))
                proc.start()
                self._procs.append(proc)
                self.worker_pids.append(proc.pid)
            self._receiver = threading.Thread(target=self._recv_loop, name=f"{core_cls.name}-{rank}-workers-recv",
                                              daemon=True)
            self._receiver.start()
            ready = self._wait_all("ready", 0, start_timeout_s)
        except BaseException:
            self._teardown()
            raise
        for i, answer in enumerate(ready):
            if answer is None or answer[0] != "ok":
                cause = answer[1] if answer else f"no answer within {start_timeout_s:g}s"
                self._teardown()
                if answer is not None and answer[2]:  # the core refused its settings: the user's error
                    raise ConfigError(cause)
                raise BackendError(self._address, f"worker {i} could not start its core: {cause}")
            self.worker_addresses[i] = answer[1]
        if self.worker_addresses[0]:
            self._address = f"{self.worker_addresses[0]} ({workers} workers)"

    # --- the contract -----------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self._address

    @property
    def dead_cause(self) -> str | None:
        return None if self._stopping else self._dead

    def _enqueue_impl(self, requests: Sequence[Request]) -> None:
        if self._dead is not None:
            raise BackendError(self.address, self._dead)
        load, alive, owner = self._load, self._alive, self._owner
        batches: dict[int, list] = {}
        for req in requests:
            w = self._pick(load, alive)
            params = req.params
            hit = self._params_blob.get(id(params))
            if hit is None or hit[0] is not params:
                if len(self._params_blob) > 1024:
                    self._params_blob.clear()
                hit = self._params_blob[id(params)] = (params, pickle.dumps(params))
            ids = req.input_tokens
            if not isinstance(ids, np.ndarray) or ids.dtype != np.int32:
                ids = np.asarray(ids, dtype=np.int32)
            owner[req.request_id] = w
            load[w] += 1
            batches.setdefault(w, []).append((req.request_id, ids.tobytes(), hit[1], req.streaming,
                                              req.sample_index, req.chunks))
        enc = self._enc
        with self._send_lock:
            for w, items in batches.items():
                self._pushes[w].send(enc.encode(("r", items)), copy=False)

    @staticmethod
    def _pick(load: list[int], alive: list[bool]) -> int:
        best, best_load = -1, 0
        for i, n in enumerate(load):
            if alive[i] and (best < 0 or n < best_load):
                best, best_load = i, n
        if best < 0:
            raise BackendError("workers", "every worker process has exited")
        return best

    def cancel(self, request_id: int, reason: str = "cancelled") -> None:
        # the request fails here first, then its worker is told: the worker's own error for it then
        # always comes after (late, counted by the server), never before the cancel's reason
        super().cancel(request_id, reason)
        w = self._owner.get(request_id)
        if w is not None and self._alive[w]:
            with self._send_lock:
                self._pushes[w].send(self._enc.encode(("c", request_id, reason)))

    def health_check(self) -> None:
        if self._dead is not None:
            raise BackendError(self.address, self._dead, final=True)
        for i, answer in enumerate(self._control("h", CONTROL_TIMEOUT_S)):
            if not self._alive[i]:
                continue
            if answer is None:
                raise BackendError(self.address, f"worker {i} did not answer its health check")
            if answer[0] != "ok":
                raise BackendError(answer[1], answer[2], final=answer[3])

    def warm_up(self) -> None:
        for i, answer in enumerate(self._control("w", CONTROL_TIMEOUT_S)):
            if answer is not None and answer[0] != "ok":
                log.warning("%s: worker %d warm-up: %s", self.address, i, answer[2])

    def report(self) -> dict[str, Any]:
        """The workers' cores' reports, merged (counts summed); after stop, the last one taken."""
        if self._stopping:
            return dict(self._final_report)
        merged: dict[str, Any] = {"workers": self.n_workers}
        for answer in self._control("x", 10.0):
            if answer is None or answer[0] != "ok":
                continue
            for key, value in pickle.loads(answer[1]).items():
                if isinstance(value, dict) and isinstance(merged.get(key, {}), dict):
                    into = merged.setdefault(key, {})
                    for k, v in value.items():
                        into[k] = into.get(k, 0) + v if isinstance(v, (int, float)) else v
                else:
                    merged.setdefault(key, value)
        return merged

    def stop(self) -> None:
        if self._stopping:
            return
        if any(self._alive):
            self._final_report = self.report()
        self._stopping = True
        if any(self._alive):
            self._control("s", 30.0)
        self._teardown()
        super().stop()  # anything still pending fails

    # --- control calls ------------------------------------------------------------------------------------
    def _control(self, kind: str, timeout_s: float) -> list:
        with self._reply_cond:
            self._seq += 1
            seq = self._seq
        msg = self._enc.encode((kind, seq))
        with self._send_lock:
            for i, push in enumerate(self._pushes):
                if self._alive[i]:
                    push.send(msg)
        return self._wait_all(kind, seq, timeout_s)

    def _wait_all(self, kind: str, seq: int, timeout_s: float) -> list:
        deadline = time.monotonic() + timeout_s
        keys = [(kind, seq, i) for i in range(self.n_workers)]
        with self._reply_cond:
            while True:
                missing = [k for k in keys if k not in self._replies and self._alive[k[2]]]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return [self._replies.pop(k, None) for k in keys]
                self._reply_cond.wait(left)

    # --- the receiver thread ---------------------------------------------------------------------------------
    def _recv_loop(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        sentinels = {p.sentinel: i for i, p in enumerate(self._procs)}
        for fd in sentinels:
            poller.register(fd, zmq.POLLIN)
        dec, pull = self._dec, self._pull
        owner, load = self._owner, self._load
        first, complete, fail = self._first_token, self._complete, self._fail
        while True:
            try:
                events = poller.poll()
            except zmq.ZMQError:
                return  # the context was closed: stopped
            for sock, _ in events:
                if sock is pull:
                    while True:
                        try:
                            raw = pull.recv(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        except zmq.ZMQError:
                            return
                        msg = dec.decode(raw.buffer)
                        kind = msg[0]
                        if kind == "f":
                            first(msg[1], np.frombuffer(msg[2], dtype=np.uint32))
                        elif kind == "d":
                            w = owner.pop(msg[1], None)
                            if w is not None:
                                load[w] -= 1
                            complete(msg[1], np.frombuffer(msg[2], dtype=np.uint32), msg[3])
                        elif kind == "k":
                            self._chunk(msg[1], np.frombuffer(msg[2], dtype=np.uint32), msg[3])
                        elif kind == "e":
                            w = owner.pop(msg[1], None)
                            if w is not None:
                                load[w] -= 1
                            fail(msg[1], BackendError(msg[2], msg[3], final=msg[4]))
                        else:  # a control answer: (kind, seq, worker, ...)
                            with self._reply_cond:
                                self._replies[(kind, msg[1], msg[2])] = tuple(msg[3:])
                                self._reply_cond.notify_all()
                elif sock in sentinels:
                    i = sentinels.pop(sock)
                    poller.unregister(sock)
                    self._worker_exited(i)
                    if not sentinels:
                        return

    def _worker_exited(self, i: int) -> None:
        """Worker `i` is gone: its requests fail with the cause; the others go on."""
        self._alive[i] = False
        with self._reply_cond:
            self._reply_cond.notify_all()
        if self._stopping:
            return
        proc = self._procs[i]
        proc.join(1)
        cause = f"worker process {proc.pid} exited (exit code {proc.exitcode})"
        log.error("%s: %s", self.address, cause)
        lost = [rid for rid, w in list(self._owner.items()) if w == i]
        for rid in lost:
            if self._owner.pop(rid, None) is not None:
                self._load[i] -= 1
            self._fail(rid, BackendError(self.worker_addresses[i] or self.address, cause))
        if not any(self._alive):
            self._dead = f"every worker process has exited (last: {cause})"
            for rid in self.pending_ids():
                self._fail(rid, BackendError(self.address, self._dead))

    def _teardown(self) -> None:
        """Reap every worker (asked to stop, else terminated, else killed), then the receiver, which ends
        when the last worker's sentinel fires, then the sockets."""
        self._stopping = True
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        receiver = getattr(self, "_receiver", None)
        if receiver is not None and receiver is not threading.current_thread():
            receiver.join(5)
        self._ctx.destroy(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)


# --- the worker process ---------------------------------------------------------------------------------------
def _worker_main(target: str, settings: CoreSettings, rank: int, index: int, n: int, inputs: CoreInputs,
                 addr_in: str, addr_out: str) -> None:
    """Build the core from its settings, then take requests from `addr_in` and send outcomes to `addr_out`."""
    # Ctrl-C reaches the whole process group: the parent decides how the run ends and stops us itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import importlib

    import msgspec
    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.setsockopt(zmq.RCVHWM, 0)
    push.setsockopt(zmq.SNDHWM, 0)
    pull.connect(addr_in)
    push.connect(addr_out)
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    lock = threading.Lock()

    def send(msg) -> None:
        data = enc.encode(msg)
        with lock:
            push.send(data)

    class Sink:  # called from the core's threads, as outcomes happen
        def on_first_token(self, rid, tokens) -> None:
            send(("f", rid, np.asarray(tokens[:1], dtype=np.uint32).tobytes()))

        def on_chunk(self, rid, tokens, n_tokens) -> None:  # only requests someone listens to
            send(("k", rid, np.asarray(tokens, dtype=np.uint32).tobytes(), int(n_tokens)))

        def on_complete(self, rid, tokens, n_tokens) -> None:
            send(("d", rid, np.asarray(tokens, dtype=np.uint32).tobytes(), int(n_tokens)))

        def on_error(self, rid, error) -> None:
            if isinstance(error, BackendError):
                send(("e", rid, error.address, error.cause, bool(error.final)))
            else:
                send(("e", rid, f"worker {index}", f"{type(error).__name__}: {error}", False))

    try:
        module, _, name = target.partition(":")
        core_cls = getattr(importlib.import_module(module), name)
        core = core_cls(core_cls.worker_settings(settings, index, n), rank=rank, sink=Sink(), inputs=inputs)
    except Exception as err:  # noqa: BLE001 - the parent reports it
        send(("ready", 0, index, "error", f"{type(err).__name__}: {err}", isinstance(err, ConfigError)))
        ctx.destroy(linger=1000)  # lingers until the message has left (at most 1 s)
        return
    send(("ready", 0, index, "ok", core.address, False))

    def control(kind: str, seq: int, fn) -> None:
        def run() -> None:
            try:
                value = fn()
            except BackendError as err:
                send((kind, seq, index, "error", err.address, err.cause, bool(err.final)))
            except Exception as err:  # noqa: BLE001
                send((kind, seq, index, "error", core.address, f"{type(err).__name__}: {err}", False))
            else:
                send((kind, seq, index, "ok", value))
        threading.Thread(target=run, name=f"worker-{index}-{kind}", daemon=True).start()

    params_of: dict[bytes, Any] = {}

    def handle(msg) -> int | None:
        """Act on one message; the stop message's sequence number when it is the stop, else None."""
        kind = msg[0]
        if kind == "r":
            reqs = []
            for rid, ids, blob, streaming, sample_index, chunks in msg[1]:
                params = params_of.get(blob)
                if params is None:
                    if len(params_of) > 1024:
                        params_of.clear()
                    params = params_of[blob] = pickle.loads(blob)
                reqs.append(Request(rid, np.frombuffer(ids, dtype=np.int32), params, streaming, sample_index,
                                    chunks=chunks))
            core.enqueue(reqs)
        elif kind == "c":
            core.cancel(msg[1], msg[2])
        elif kind == "h":
            control("h", msg[1], lambda: core.health_check())
        elif kind == "w":
            control("w", msg[1], lambda: core.warm_up())
        elif kind == "x":
            control("x", msg[1], lambda: pickle.dumps(core.report()))
        elif kind == "s":
            return msg[1]
        return None

    loop = getattr(core, "_loop", None)
    if loop is not None and loop.is_running():
        # Requests are taken on the core's own event loop (the socket's fd as a reader), so the core
        # writes each at once instead of after a cross-thread wake-up. The fd is edge-triggered: drain
        # until nothing is left.
        fd = pull.getsockopt(zmq.FD)
        stopped = threading.Event()
        stop_seq = [0]

        def drain() -> None:
            while True:
                try:
                    raw = pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                seq = handle(dec.decode(raw))
                if seq is not None:
                    loop.remove_reader(fd)
                    stop_seq[0] = seq
                    stopped.set()
                    return

        def start_reading() -> None:
            loop.add_reader(fd, drain)
            drain()  # what came before the reader was added

        loop.call_soon_threadsafe(start_reading)
        stopped.wait()
        seq = stop_seq[0]
    else:
        while True:
            seq = handle(dec.decode(pull.recv()))
            if seq is not None:
                break
    try:
        core.stop()
    finally:
        send(("s", seq, index, "ok", None))
        ctx.destroy(linger=1000)  # lingers until the answer has left (at most 1 s)


__all__ = ["WorkerPoolCore", "parse_workers_per_core"]
