"""A real Triton Inference Server (PyTriton's tritonserver, CPU) serving models shaped like TensorRT-LLM's
`tensorrt_llm` Triton model, so the triton_grpc core is tested against the real gRPC wire.

Run it with the server venv's python (`make test_servers` builds build/triton-server-venv; numpy<2 there),
never in the project venv; tests start it through tests/servers/triton.py. Prints one JSON line on stdout
when every model is ready: {"grpc_port": ..., "http_port": ..., "metrics_port": ..., "models": [...]}.

The models are decoupled (streaming) with max_batch_size > 0 and no dynamic batching, and take the inputs
of tensorrtllm_backend's all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt (names, dtypes, dims;
the sampling inputs are accepted and ignored). A request has batch size 1, as the in-flight batcher needs.
Output ids are deterministic, like tests/servers/mock_openai_server.py: id_i = 3 + (sum(prompt) + 7 i) mod
(vocab_size - 3), count min(request_output_len, --output_tokens).

- streaming=true: one response per token (output_ids [1, 1, 1], sequence_length [1, 1] = 1), then an
  empty response flagged final (PyTriton always ends a decoupled request that way; the real backend flags
  its last token response instead, so a client must accept both).
- streaming=false (or absent): one response, output_ids [1, 1, request_output_len] padded with pad_id
  (else end_id, else 0) and sequence_length [1, 1] the true count, then the empty final response.
- --eos_every K: with end_id given and sum(prompt) % K == 0, the sequence stops after --eos_at tokens,
  the last of them end_id.
- stop=true: TensorRT-LLM's cancel. The real backend cancels the generation with the same request id;
  PyTriton does not give a model the request id, so this one stops the live generations with the same
  prompt (a client sends the cancelled request's input_ids in its stop request). Those end at once
  (their empty final response), and the stop request gets an empty final response of its own.
- Faults: --fail_rate (seeded draw per request) and --fail_every K (sum(prompt) % K == 0, independent of
  arrival order) make the model raise after --fail_after_tokens tokens; the client then gets one error
  response (flagged final) carrying the message, and nothing else for that request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time

import numpy as np
import pytriton.triton
import tritonclient.grpc as grpcclient
from pytriton.client.exceptions import PyTritonClientTimeoutError
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

#: Each model is a Python backend stub process and ~2 s of start-up (4 models: ~10 s); 8 did not load in time.
MAX_MODELS = 4
#: The real in-flight batcher's usual max_batch_size; only batch size 1 is served.
MAX_BATCH_SIZE = 64
#: Longest wait for tritonserver to answer. PyTriton waits 120 s, even for a tritonserver that already
#: exited (a port taken between our pick and its bind): fail sooner, the log says why.
TRITON_START_TIMEOUT_S = 30
#: Longest wait for the models to report ready once tritonserver is up.
MODEL_READY_TIMEOUT_S = 60.0
#: How often the supervisor checks that tritonserver is still alive.
LIVENESS_PERIOD_S = 1.0
#: The message a request failed by fault injection carries (a substring clients can match).
INJECTED_FAULT = "injected fault"

#: The real model's inputs, in its order, so a client that works against TensorRT-LLM's model works here:
#: (name, dtype, dims per batch item; the batch dim is Triton's). Sampling and the rest are ignored.
INPUT_SPEC = (
    ("input_ids", np.int32, (-1,)), ("input_lengths", np.int32, (1,)), ("request_output_len", np.int32, (1,)),
    ("draft_input_ids", np.int32, (-1,)), ("draft_logits", np.float32, (-1, -1)),
    ("draft_acceptance_threshold", np.float32, (1,)), ("end_id", np.int32, (1,)), ("pad_id", np.int32, (1,)),
    ("stop_words_list", np.int32, (2, -1)), ("bad_words_list", np.int32, (2, -1)),
    ("embedding_bias", np.float32, (-1,)), ("beam_width", np.int32, (1,)), ("temperature", np.float32, (1,)),
    ("runtime_top_k", np.int32, (1,)), ("runtime_top_p", np.float32, (1,)), ("runtime_top_p_min", np.float32, (1,)),
    ("runtime_top_p_decay", np.float32, (1,)), ("runtime_top_p_reset_ids", np.int32, (1,)),
    ("len_penalty", np.float32, (1,)), ("early_stopping", np.bool_, (1,)), ("repetition_penalty", np.float32, (1,)),
    ("min_length", np.int32, (1,)), ("beam_search_diversity_rate", np.float32, (1,)),
    ("presence_penalty", np.float32, (1,)), ("frequency_penalty", np.float32, (1,)), ("random_seed", np.uint64, (1,)),
    ("return_log_probs", np.bool_, (1,)), ("return_context_logits", np.bool_, (1,)),
    ("return_generation_logits", np.bool_, (1,)), ("stop", np.bool_, (1,)), ("streaming", np.bool_, (1,)),
    ("prompt_embedding_table", np.float16, (-1, -1)), ("prompt_vocab_size", np.int32, (1,)),
    ("lora_task_id", np.uint64, (1,)), ("lora_weights", np.float16, (-1, -1)), ("lora_config", np.int32, (-1, 3)),
)
REQUIRED_INPUTS = ("input_ids", "input_lengths", "request_output_len")
INPUTS = [Tensor(name=name, dtype=dtype, shape=dims, optional=name not in REQUIRED_INPUTS)
          for name, dtype, dims in INPUT_SPEC]
#: The real model also returns log probs and logits; the harness reads these two.
OUTPUTS = [
    Tensor(name="output_ids", dtype=np.int32, shape=(-1, -1)),
    Tensor(name="sequence_length", dtype=np.int32, shape=(-1,)),
]


def output_ids(prompt_ids: np.ndarray, n: int, vocab_size: int) -> list[int]:
    """The mock OpenAI server's deterministic ids, so both emulated backends answer a prompt alike."""
    base = int(prompt_ids.sum())
    span = max(vocab_size - 3, 1)
    return [3 + (base + 7 * i) % span for i in range(n)]


def _scalar(request, name: str, default=None):
    value = request.data.get(name)
    return default if value is None else value.reshape(-1)[0].item()


class TrtllmModel:
    """One emulated `tensorrt_llm` model: an async generator PyTriton runs on its event loop, so the
    requests in flight (however many, from one stream or several) interleave without threads."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.args = args
        self._rng = random.Random(args.seed)
        #: prompt bytes -> stop events of the live generations with that prompt
        self._live: dict[bytes, list[asyncio.Event]] = {}

    async def __call__(self, requests):
        # No dynamic batching: Triton's default scheduler hands the model one request per call.
        if len(requests) != 1:
            raise ValueError(f"{self.name}: expected one request per call, got {len(requests)}")
        async for response in self._generate(requests[0]):
            yield [response]

    async def _generate(self, request):
        args = self.args
        input_ids = request.data["input_ids"]
        if _scalar(request, "stop", False):
            length = _scalar(request, "input_lengths", input_ids.shape[1])
            for stopped in self._live.get(input_ids[0, :length].tobytes(), ()):
                stopped.set()
            return  # the stop request's own empty final response
        if input_ids.shape[0] != 1:
            raise ValueError(f"{self.name}: the in-flight batcher takes batch size 1, got {input_ids.shape[0]}")
        length = _scalar(request, "input_lengths")
        if not 0 < length <= input_ids.shape[1]:
            raise ValueError(f"{self.name}: input_lengths {length} outside 1..{input_ids.shape[1]}")
        if _scalar(request, "beam_width", 1) != 1:
            raise ValueError(f"{self.name}: the engine was built with max_beam_width 1")
        requested = _scalar(request, "request_output_len")
        if requested < 1:
            raise ValueError(f"{self.name}: request_output_len must be positive, got {requested}")
        prompt = input_ids[0, :length]
        end_id = _scalar(request, "end_id")
        pad_id = _scalar(request, "pad_id", end_id if end_id is not None else 0)
        streaming = bool(_scalar(request, "streaming", False))

        n = min(requested, args.output_tokens)
        tokens = output_ids(prompt, n, args.vocab_size)
        total = int(prompt.sum())
        if end_id is not None and args.eos_every and total % args.eos_every == 0 and args.eos_at <= n:
            tokens = tokens[:args.eos_at - 1] + [end_id]
        fail = self._rng.random() < args.fail_rate or (args.fail_every and total % args.fail_every == 0)
        fail_at = min(args.fail_after_tokens, len(tokens)) if fail else None

        stopped = asyncio.Event()
        live = self._live.setdefault(prompt.tobytes(), [])
        live.append(stopped)
        try:
            if await _stopped_within(stopped, args.first_token_delay_ms):
                return
            if streaming:
                for i, token in enumerate(tokens):
                    if i == fail_at:
                        break
                    if i and await _stopped_within(stopped, args.per_token_delay_ms):
                        return
                    yield {"output_ids": np.array([[[token]]], dtype=np.int32),
                           "sequence_length": np.array([[1]], dtype=np.int32)}
            else:
                if await _stopped_within(stopped, args.per_token_delay_ms * (len(tokens) - 1)):
                    return
                if fail_at is None:
                    padded = tokens + [pad_id] * (requested - len(tokens))
                    yield {"output_ids": np.array([[padded]], dtype=np.int32),
                           "sequence_length": np.array([[len(tokens)]], dtype=np.int32)}
        finally:
            live.remove(stopped)
            if not live:
                self._live.pop(prompt.tobytes(), None)
        if fail_at is not None:
            raise RuntimeError(f"{self.name}: {INJECTED_FAULT} after {fail_at} tokens")


async def _stopped_within(stopped: asyncio.Event, ms: float) -> bool:
    """Wait `ms`; True as soon as a stop request came (at once if it already had)."""
    if stopped.is_set():
        return True
    if ms <= 0:
        return False
    try:
        await asyncio.wait_for(stopped.wait(), ms / 1000.0)
    except TimeoutError:
        return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports the kernel has free now (held open together so they differ; a small race remains)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_models_ready(grpc_port: int, models: list[str], deadline: float) -> None:
    """PyTriton only warns when a model is not ready in time; refuse to announce a server that is not."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        pending = list(models)
        while pending:
            pending = [m for m in pending if not _model_ready(client, m)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"models not ready after {MODEL_READY_TIMEOUT_S:.0f} s: {pending}")
            if pending:
                time.sleep(0.1)
    finally:
        client.close()


def _model_ready(client, model: str) -> bool:
    try:
        return client.is_model_ready(model)
    except grpcclient.InferenceServerException:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = p.add_mutually_exclusive_group()
    names.add_argument("--models", default=None, help="comma-separated model names (default: tensorrt_llm)")
    names.add_argument("--num_models", type=int, default=None,
                       help="serve tensorrt_llm_0 .. tensorrt_llm_<N-1> (the harness's naming)")
    p.add_argument("--grpc_port", type=int, default=0, help="0: pick free grpc, http and metrics ports")
    p.add_argument("--output_tokens", type=int, default=128, help="most tokens a request gets")
    p.add_argument("--vocab_size", type=int, default=1000)
    p.add_argument("--first_token_delay_ms", type=float, default=0.0)
    p.add_argument("--per_token_delay_ms", type=float, default=0.0)
    p.add_argument("--eos_every", type=int, default=0, help="end early when sum(prompt) %% K == 0 (0: never)")
    p.add_argument("--eos_at", type=int, default=2, help="tokens of an early-ended sequence, end_id last")
    p.add_argument("--fail_rate", type=float, default=0.0, help="share of requests the model fails (seeded)")
    p.add_argument("--fail_every", type=int, default=0, help="fail when sum(prompt) %% K == 0 (0: never)")
    p.add_argument("--fail_after_tokens", type=int, default=0, help="tokens streamed before a failure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workspace", default=None, help="PyTriton's workspace (default: a temporary folder)")
    p.add_argument("--log_verbose", type=int, default=0, help="tritonserver's --log-verbose")
    args = p.parse_args(argv)
    if args.num_models is not None:
        if not 1 <= args.num_models <= MAX_MODELS:
            p.error(f"--num_models must be in 1..{MAX_MODELS}")
        args.models = [f"tensorrt_llm_{i}" for i in range(args.num_models)]
    else:
        args.models = [m for m in (args.models or "tensorrt_llm").split(",") if m]
        if not 1 <= len(args.models) <= MAX_MODELS:
            p.error(f"--models names 1..{MAX_MODELS} models")
    if not 1 <= args.eos_at:
        p.error("--eos_at must be at least 1")
    return args


def serve(args: argparse.Namespace) -> int:
    # stdout carries the ready line alone: tritonserver's log (which PyTriton echoes) goes to stderr.
    ready_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    if args.grpc_port:
        grpc_port, http_port, metrics_port = args.grpc_port, *_free_ports(2)
    else:
        grpc_port, http_port, metrics_port = _free_ports(3)
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=grpc_port, http_address="127.0.0.1",
                          http_port=http_port, metrics_port=metrics_port, allow_gpu_metrics=False,
                          log_verbose=args.log_verbose, exit_timeout_secs=5)
    # The Python backend stub that tritonserver starts must load this interpreter's libpython: another
    # one on the loader's path (the system's) fails with "'_thread.RLock' object has no attribute
    # '_recursion_count'". PyTriton passes our environment on to tritonserver.
    lib_dirs = [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in lib_dirs if d)
    # Tensors travel inline (base64 over PyTriton's ZeroMQ socket), not through its shared-memory tensor
    # store: for a few int32s per response that is 2.4x the responses per second, and one process fewer.
    os.environ["PYTRITON_NO_TENSORSTORE"] = "1"
    pytriton.triton.DEFAULT_TRITON_STARTUP_TIMEOUT_S = TRITON_START_TIMEOUT_S
    model_config = ModelConfig(batching=True, max_batch_size=MAX_BATCH_SIZE, batcher=None, decoupled=True)
    with tempfile.TemporaryDirectory(prefix="triton-trtllm-", dir=args.workspace) as tmp:
        # No access token: the tests may use every endpoint (statistics, repository control).
        # PyTriton creates the workspace itself (it must not exist) and copies tritonserver into it.
        triton = Triton(config=config, workspace=os.path.join(tmp, "pytriton"),
                        security_config=TritonSecurityConfig(restricted_endpoints=[]))
        try:
            for name in args.models:
                triton.bind(model_name=name, infer_func=TrtllmModel(name, args), inputs=INPUTS,
                            outputs=OUTPUTS, config=model_config, strict=False)
            try:
                triton.run()
            except PyTritonClientTimeoutError as err:
                raise SystemExit(f"tritonserver did not answer within {TRITON_START_TIMEOUT_S} s; its log above "
                                 f"says why (e.g. a port taken: 'already in use')") from err
            _wait_models_ready(grpc_port, args.models, time.monotonic() + MODEL_READY_TIMEOUT_S)
            print(json.dumps({"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
                              "models": args.models}), file=ready_out, flush=True)
            while not stop.wait(LIVENESS_PERIOD_S):
                if not triton.is_alive():
                    print("tritonserver exited unexpectedly", file=sys.stderr)
                    return 1
            return 0
        finally:
            triton.stop()


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
