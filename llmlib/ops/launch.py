"""`make run_llm_server`: start the serving processes a core talks to (one per data-parallel rank), wait
until each answers, and stop every one of them on exit, on error and on Ctrl-C.

Each server runs in a session of its own (a terminal's Ctrl-C reaches the launcher only, which stops
them in order), and dies with the launcher even when that is killed (PR_SET_PDEATHSIG). Kinds:
trtllm-serve (with an extra-options YAML from the runtime flags), Triton with a generated TensorRT-LLM
model repository, vLLM and SGLang with the settings the MLPerf rules need (no cross-query prefix
caching), llama-cpp-python's server, and `custom` (a command template).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmlib.errors import ConfigError, OpsError
from llmlib.ops.engines import engine_dir, model_dir, quantized_dir, tail

DEFAULT_COMMANDS = {
    "trtllm-serve": "trtllm-serve",
    "triton": "tritonserver",
    "vllm": "vllm serve",
    "sglang": "python3 -m sglang.launch_server",
    "llama-cpp": "build/llamacpp-server-venv/bin/python -m llama_cpp.server",
}
HEALTH_PATHS = {"trtllm-serve": "/health", "triton": "/v2/health/ready", "vllm": "/health", "sglang": "/health",
                "llama-cpp": "/v1/models", "custom": "/health"}
GPU_KINDS = ("trtllm-serve", "triton", "vllm", "sglang")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "::")
#: Triton's HTTP (readiness) and metrics ports: the gRPC port plus these
TRITON_HTTP_OFFSET, TRITON_METRICS_OFFSET = 100, 200
#: seconds a server gets after SIGTERM before SIGKILL
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    """One serving process: its command, the port it answers on, its device slice and files."""

    name: str
    argv: tuple[str, ...]
    host: str
    port: int  # the port the harness talks to
    health_port: int
    health_path: str
    log_path: Path
    devices: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)  # written before it starts
    ports: tuple[int, ...] = ()  # every port it listens on (checked free before anything starts)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


# --- devices ------------------------------------------------------------------------------------------
def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else 0."""
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU ")) if out.returncode == 0 else 0


def device_ids(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [d.strip() for d in cvd.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(visible_gpus(env))]


# --- planning -----------------------------------------------------------------------------------------
def server_addresses(config) -> list[tuple[str, int]]:
    """(host, port) per rank: --trtllm_server_urls (or --triton_server_urls for Triton), else one rank on
    --server_host:--server_base_port. Each must be this machine."""
    from llmlib.http1 import parse_endpoint_url

    triton = config.server_kind == "triton" or config.core_type == "triton_grpc"
    urls = config.triton_server_urls if triton else config.trtllm_server_urls
    name = "--triton_server_urls" if triton else "--trtllm_server_urls"
    out = []
    for item in urls:
        try:
            url = parse_endpoint_url(item if "://" in item else "http://" + item)
        except ValueError as err:
            raise ConfigError(f"{name}: {err}") from None
        host = url.host.strip("[]")
        if host not in LOCAL_HOSTS and host != socket.gethostname():
            raise ConfigError(f"{name}: {item!r} is not this machine: run_llm_server starts local servers only")
        out.append((host, url.port))
    return out or [(config.server_host, config.server_base_port)]


def plan_servers(config, benchmark, scenario: str, *, root: Path, gpus: int | None = None,
                 env: Mapping[str, str] | None = None) -> list[ServerSpec]:
    """The servers of --server_kind, one per data-parallel rank, inputs checked (one-line ConfigError)."""
    env = os.environ if env is None else env
    kind = config.server_kind
    tp, pp = config.tensor_parallelism, config.pipeline_parallelism
    per = tp * pp
    ids = device_ids(env) if gpus is None else [str(i) for i in range(gpus)]
    if config.num_gpus is not None:
        if config.num_gpus > len(ids) and kind in GPU_KINDS:
            raise ConfigError(f"--num_gpus={config.num_gpus} but {len(ids)} GPU(s) are visible")
        ids = ids[:config.num_gpus]
    addresses = server_addresses(config)
    if kind in GPU_KINDS:
        if not ids:
            raise ConfigError(f"--server_kind={kind} needs GPUs and none are visible (CUDA_VISIBLE_DEVICES / "
                              "nvidia-smi); --dry_run prints the commands")
        if len(ids) % per:
            raise ConfigError(f"--tensor_parallelism={tp} x --pipeline_parallelism={pp} = {per} GPUs per server "
                              f"does not divide the {len(ids)} GPU(s) to use")
        ranks = len(ids) // per
        if len(addresses) == 1 and ranks > 1 and not (config.trtllm_server_urls or config.triton_server_urls):
            addresses = [(addresses[0][0], addresses[0][1] + i) for i in range(ranks)]
        if len(addresses) != ranks:
            raise ConfigError(f"{len(addresses)} server URL(s) but {len(ids)} GPU(s) / ({tp} x {pp}) = {ranks} "
                              "data-parallel rank(s): give one URL per rank")
    if config.moe_expert_parallelism is not None and per % config.moe_expert_parallelism and kind in GPU_KINDS:
        raise ConfigError(f"--moe_expert_parallelism={config.moe_expert_parallelism} does not divide "
                          f"TP x PP = {per}")
    log_dir = Path(config.server_log_dir)
    log_dir = log_dir if log_dir.is_absolute() else root / log_dir
    specs = []
    for rank, (host, port) in enumerate(addresses):
        devices = tuple(int(d) if d.isdigit() else d for d in ids[rank * per:(rank + 1) * per]) \
            if kind in GPU_KINDS else ()
        specs.append(server_spec(config, benchmark, scenario, rank=rank, host=host, port=port,
                                 devices=devices, log_dir=log_dir, root=root))
    seen: dict[int, str] = {}
    for s in specs:
        for p in s.ports:
            if p in seen:
                raise ConfigError(f"port {p} is used by both {seen[p]} and {s.name}")
            seen[p] = s.name
    return specs


def runtime_options(config, *, max_batch_size: int | None = None, max_num_tokens: int | None = None) -> dict[str, Any]:
    """trtllm-serve's --extra_llm_api_options from the runtime flags. KV-cache block reuse is off: the
    MLPerf rules forbid caching across queries."""
    f = dict(config.trtllm_runtime_flags)
    policy = {"max_util": "MAX_UTILIZATION", "guaranteed_no_evict": "GUARANTEED_NO_EVICT",
              "static_batch": "STATIC_BATCH"}.get(str(f.get("batch_scheduler_policy", "max_util")).lower(),
                                                  "MAX_UTILIZATION")
    opts: dict[str, Any] = {
        "kv_cache_config": {"free_gpu_memory_fraction": float(f.get("kvcache_free_gpu_mem_frac", 0.80)),
                            "enable_block_reuse": False},
        "scheduler_config": {"capacity_scheduler_policy": policy},
        "enable_chunked_prefill": bool(f.get("enable_chunked_context", False)),
    }
    if "context_chunking_policy" in f:
        opts["scheduler_config"]["context_chunking_policy"] = {
            "first_come_first_served": "FIRST_COME_FIRST_SERVED", "equal_progress": "EQUAL_PROGRESS",
        }.get(str(f["context_chunking_policy"]).lower(), str(f["context_chunking_policy"]).upper())
    if f.get("max_beam_width"):
        opts["max_beam_width"] = f["max_beam_width"]
    bs = max_batch_size or f.get("max_batch_size") or config.gpu_batch_size
    opts["max_batch_size"] = bs
    if max_num_tokens or f.get("max_num_tokens"):
        opts["max_num_tokens"] = max_num_tokens or f.get("max_num_tokens")
    return opts


def _model(config, benchmark, scenario: str, root: Path) -> str:
    kind = config.server_kind
    if kind == "llama-cpp":
        if config.trtllm_model_path:
            return str(Path(config.trtllm_model_path))
        from llmlib.tiny_gguf import ensure_tiny_gguf

        return str(ensure_tiny_gguf())
    if kind in ("trtllm-serve", "triton") and config.trtllm_backend == "trt":
        return str(engine_dir(config, benchmark, scenario, root))
    if kind == "triton":
        return str(engine_dir(config, benchmark, scenario, root))
    if config.trtllm_model_path:
        return config.trtllm_model_path
    if config.quantized_checkpoint_dir:
        return str(quantized_dir(config, benchmark, root))
    return str(model_dir(config, benchmark, root))


def server_spec(config, benchmark, scenario: str, *, rank: int, host: str, port: int, devices: tuple,
                log_dir: Path, root: Path, name: str | None = None, tp: int | None = None, pp: int | None = None,
                max_batch_size: int | None = None, max_num_tokens: int | None = None,
                extra: Mapping[str, Any] | None = None) -> ServerSpec:
    """The command line of one server of --server_kind."""
    kind = config.server_kind
    tp = tp or config.tensor_parallelism
    pp = pp or config.pipeline_parallelism
    name = name or f"server {rank}"
    slug = name.replace(" ", "_")
    prefix = shlex.split(config.server_command or DEFAULT_COMMANDS.get(kind, ""))
    if kind == "llama-cpp" and not config.server_command and not (root / prefix[0]).exists():
        prefix = [sys.executable, "-m", "llama_cpp.server"]
    elif kind == "llama-cpp" and not config.server_command:
        prefix[0] = str(root / prefix[0])
    model = _model(config, benchmark, scenario, root)
    flags = dict(config.trtllm_runtime_flags)
    bs = max_batch_size or flags.get("max_batch_size") or config.gpu_batch_size
    files: dict[Path, str] = {}
    env: dict[str, str] = {}
    health_port = port
    ports = (port,)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    if kind == "trtllm-serve":
        opts_path = log_dir / f"{slug}.extra_llm_api_options.yaml"
        opts = runtime_options(config, max_batch_size=bs, max_num_tokens=max_num_tokens)
        opts.update(extra or {})
        files[opts_path] = yaml.safe_dump(opts, sort_keys=False)
        argv = [*prefix, model, "--host", host, "--port", str(port), "--backend", config.trtllm_backend,
                "--tp_size", str(tp), "--pp_size", str(pp), "--max_batch_size", str(bs),
                "--extra_llm_api_options", str(opts_path)]
        if config.moe_expert_parallelism:
            argv += ["--ep_size", str(config.moe_expert_parallelism)]
        if max_num_tokens or flags.get("max_num_tokens"):
            argv += ["--max_num_tokens", str(max_num_tokens or flags["max_num_tokens"])]
    elif kind == "vllm":
        argv = [*prefix, model, "--host", host, "--port", str(port), "--tensor-parallel-size", str(tp),
                "--pipeline-parallel-size", str(pp), "--max-num-seqs", str(bs),
                "--gpu-memory-utilization", str(float(flags.get("kvcache_free_gpu_mem_frac", 0.80))),
                "--no-enable-prefix-caching", "--seed", str(config.seed)]
        if max_num_tokens or flags.get("max_num_tokens"):
            argv += ["--max-num-batched-tokens", str(max_num_tokens or flags["max_num_tokens"])]
        if config.moe_expert_parallelism:
            argv += ["--enable-expert-parallel"]
    elif kind == "sglang":
        argv = [*prefix, "--model-path", model, "--host", host, "--port", str(port), "--tp-size", str(tp),
                "--pp-size", str(pp), "--max-running-requests", str(bs),
                "--mem-fraction-static", str(float(flags.get("kvcache_free_gpu_mem_frac", 0.80))),
                "--disable-radix-cache", "--random-seed", str(config.seed)]
        if max_num_tokens or flags.get("max_num_tokens"):
            argv += ["--chunked-prefill-size", str(max_num_tokens or flags["max_num_tokens"])]
        if config.moe_expert_parallelism:
            argv += ["--ep-size", str(config.moe_expert_parallelism)]
    elif kind == "triton":
        repo = log_dir / f"{slug}.model_repository"
        files.update(triton_repository(config, repo, engine=model, decoupled=scenario != "Offline",
                                       max_batch_size=bs))
        health_port, metrics = port + TRITON_HTTP_OFFSET, port + TRITON_METRICS_OFFSET
        ports = (port, health_port, metrics)
        argv = [*prefix, f"--model-repository={repo}", f"--grpc-port={port}", f"--http-port={health_port}",
                f"--metrics-port={metrics}", f"--grpc-address={host}", f"--http-address={host}",
                "--disable-auto-complete-config"]
    elif kind == "llama-cpp":
        argv = [*prefix, "--model", model, "--host", host, "--port", str(port), "--n_gpu_layers",
                "-1" if devices else "0", "--interrupt_requests", "false", "--last_n_tokens_size", "0",
                "--cache", "false", "--seed", str(config.seed), "--n_threads", "1", "--n_threads_batch", "1"]
    elif kind == "custom":
        if not config.server_command:
            raise ConfigError("--server_kind=custom needs --server_command (a template of {host} {port} "
                              "{rank} {model} {devices})")
        values = {"host": host, "port": str(port), "rank": str(rank), "model": model,
                  "devices": ",".join(str(d) for d in devices)}
        try:
            argv = [part.format_map(values) for part in shlex.split(config.server_command)]
        except (KeyError, ValueError, IndexError) as err:
            raise ConfigError(f"--server_command: {err!s} is not one of {{host}} {{port}} {{rank}} {{model}} "
                              "{devices}") from None
    else:  # declared choices make this unreachable
        raise ConfigError(f"--server_kind={kind!r} is not known")
    return ServerSpec(name=name, argv=tuple(argv), host=host, port=port, health_port=health_port,
                      health_path=config.server_health_path or HEALTH_PATHS[kind],
                      log_path=log_dir / f"{slug}.log", devices=devices, env=env, files=files, ports=ports)


def triton_repository(config, repo: Path, *, engine: str, decoupled: bool, max_batch_size: int) -> dict[Path, str]:
    """A model repository for Triton's TensorRT-LLM backend: one model per --triton_num_models_per_server,
    in-flight batching, KV-cache reuse off (no caching across queries)."""
    f = dict(config.trtllm_runtime_flags)
    names = ([config.triton_model_name] if config.triton_num_models_per_server == 1 else
             [f"{config.triton_model_name}_{i}" for i in range(config.triton_num_models_per_server)])
    out = {}
    for name in names:
        params = {
            "gpt_model_path": engine, "gpt_model_type": "inflight_fused_batching",
            "batch_scheduler_policy": "max_utilization" if str(f.get("batch_scheduler_policy", "max_util"))
            .lower() == "max_util" else "guaranteed_no_evict",
            "kv_cache_free_gpu_mem_fraction": str(float(f.get("kvcache_free_gpu_mem_frac", 0.80))),
            "enable_kv_cache_reuse": "false",
            "enable_chunked_context": str(bool(f.get("enable_chunked_context", False))).lower(),
            "exclude_input_in_output": "true",
        }
        if f.get("max_num_tokens"):
            params["max_num_tokens"] = str(f["max_num_tokens"])
        text = [f'name: "{name}"', 'backend: "tensorrtllm"', f"max_batch_size: {max_batch_size}",
                f"model_transaction_policy {{ decoupled: {str(decoupled).lower()} }}",
                "instance_group [ { count: 1, kind: KIND_CPU } ]"]
        for tensor, dtype, dims in (("input_ids", "TYPE_INT32", "[ -1 ]"), ("input_lengths", "TYPE_INT32", "[ 1 ]"),
                                    ("request_output_len", "TYPE_INT32", "[ 1 ]")):
            text.append(f'input {{ name: "{tensor}" data_type: {dtype} dims: {dims} }}')
        text.append('output { name: "output_ids" data_type: TYPE_INT32 dims: [ -1, -1 ] }')
        text.append('output { name: "sequence_length" data_type: TYPE_INT32 dims: [ -1 ] }')
        for key, value in params.items():
            text.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
        out[repo / name / "config.pbtxt"] = "\n".join(text) + "\n"
        out[repo / name / "1" / ".keep"] = ""
    return out


def check_ports_free(specs: list[ServerSpec]) -> None:
    """One-line ConfigError for the first port something already listens on."""
    for spec in specs:
        for port in spec.ports:
            host = "0.0.0.0" if spec.host in ("0.0.0.0", "localhost") else spec.host
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as err:
                    raise ConfigError(f"port {port} on {spec.host} ({spec.name}) is in use ({err.strerror})") from None


# --- running ------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child before exec: a session of its own, and SIGTERM when the launcher dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def probe(host: str, port: int, path: str, timeout_s: float = 2.0) -> bool:
    """True when GET http://host:port<path> answers 200; with the path `grpc`, when the gRPC server on
    that port says it is ready (Triton's ServerReady, through tritonclient); `grpc:<model>`, when that
    model is ready (ModelReady)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    netloc = f"[{host}]" if ":" in host else host
    if path == "grpc" or path.startswith("grpc:"):
        model = path.partition(":")[2]
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as err:
            raise ConfigError("--server_health_path=grpc needs tritonclient[grpc] (the `triton` extra)") from err
        try:
            client = grpcclient.InferenceServerClient(f"{netloc}:{port}")
            try:
                if model:
                    return bool(client.is_model_ready(model, client_timeout=timeout_s))
                return bool(client.is_server_ready(client_timeout=timeout_s))
            finally:
                client.close()
        except Exception:  # not listening yet, or not ready: tritonclient raises its own kinds
            return False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{netloc}:{port}{path}", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Launcher:
    """Starts servers, waits for them, stops them. `with Launcher(specs) as l:` stops every process on
    the way out, whatever happened."""

    def __init__(self, specs: list[ServerSpec], *, out: Callable[[str], None] | None = None,
                 env: Mapping[str, str] | None = None):
        self.specs = list(specs)
        self.procs: list[subprocess.Popen] = []
        self._out = out or (lambda text: print(text, flush=True))
        self._env = dict(os.environ if env is None else env)

    def start(self) -> Launcher:
        for spec in self.specs:
            for path, text in spec.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in self._env.items() if not k.startswith(("OMPI_", "PMI_", "PMIX_"))}
            env.update(spec.env)
            with open(spec.log_path, "w") as log:
                log.write(f"# {spec.shell()}\n")
                log.flush()
                try:
                    proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, preexec_fn=_die_with_parent)
                except OSError as err:
                    self.stop()
                    raise OpsError(f"{spec.name}: cannot start {spec.argv[0]!r} ({err})") from err
            self.procs.append(proc)
            devices = f" on devices {','.join(map(str, spec.devices))}" if spec.devices else ""
            self._out(f"{spec.name}: pid {proc.pid} listening on {spec.url}{devices}; log {spec.log_path}")
        return self

    def wait_ready(self, timeout_s: float, stop: threading.Event | None = None) -> None:
        """Until every server answers its readiness path; OpsError naming the first that exited or did
        not come up in time, with the tail of its log."""
        deadline = time.monotonic() + timeout_s
        stop = threading.Event() if stop is None else stop
        waiting = set(range(len(self.specs)))
        delay = 0.1
        while waiting:
            for i in sorted(waiting):
                spec, proc = self.specs[i], self.procs[i]
                if proc.poll() is not None:
                    raise OpsError(f"{spec.name} ({spec.url}) exited with code {proc.returncode} before it was "
                                   f"ready; last lines of {spec.log_path}:\n{tail(spec.log_path)}")
                if probe(spec.host, spec.health_port, spec.health_path):
                    waiting.discard(i)
                    self._out(f"{spec.name}: ready ({spec.url})")
            if not waiting:
                return
            if time.monotonic() >= deadline:
                spec = self.specs[min(waiting)]
                names = ", ".join(self.specs[i].name for i in sorted(waiting))
                raise OpsError(f"not ready within {timeout_s:g}s (--server_ready_timeout_s): {names}; "
                               f"GET {spec.health_path} on port {spec.health_port} never answered 200; last lines "
                               f"of {spec.log_path}:\n{tail(spec.log_path)}")
            if stop.wait(delay):  # a stop (Ctrl-C) ends the wait at once
                raise OpsError("stopped while waiting for the servers")
            delay = min(delay * 1.5, 1.0)

    def exited(self) -> tuple[ServerSpec, int] | None:
        for spec, proc in zip(self.specs, self.procs):
            if proc.poll() is not None:
                return spec, proc.returncode
        return None

    def stop(self) -> None:
        """SIGTERM every server's process group, then SIGKILL what is left after STOP_TIMEOUT_S."""
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            _signal_group(proc, signal.SIGKILL)  # the group: children the server started, too
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> Launcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class StopSignals:
    """SIGINT / SIGTERM set an event (the main thread waits on it) instead of raising, while installed."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def serve(specs: list[ServerSpec], *, timeout_s: float, out: Callable[[str], None] = print,
          ready: Callable[[], None] | None = None) -> int:
    """Start, wait, then hold the servers until Ctrl-C / SIGTERM (exit 130 / 143) or until one exits
    (exit 1); every server is stopped on the way out."""
    check_ports_free(specs)
    with StopSignals() as stop:
        launcher = Launcher(specs, out=out)
        try:
            launcher.start()
            launcher.wait_ready(timeout_s, stop.event)
            out(f"all {len(specs)} server(s) ready: {','.join(s.url for s in specs)} (Ctrl-C stops them)")
            if ready is not None:
                ready()
            while not stop.event.wait(0.5):
                gone = launcher.exited()
                if gone is not None:
                    spec, rc = gone
                    out(f"error: {spec.name} ({spec.url}) exited with code {rc}; last lines of "
                        f"{spec.log_path}:\n{tail(spec.log_path)}")
                    return 1
        except OpsError as err:
            if stop.signum is not None:
                out(f"{signal.Signals(stop.signum).name}: stopping the servers")
                return stop.exit_code
            out(f"error: {err}")
            return 1
        finally:
            launcher.stop()
        out(f"{signal.Signals(stop.signum or signal.SIGINT).name}: stopped {len(specs)} server(s)")
        return stop.exit_code


class launched_servers:
    """`with launched_servers(config, benchmark, scenario) as served:` starts the servers of --server_kind
    (run_harness --launch_servers), waits for them, yields the config pointing at them, and stops them."""

    def __init__(self, config, benchmark, scenario: str, *, out: Callable[[str], None] | None = None):
        from llmlib.factory import repo_root

        self.config, self.benchmark, self.scenario = config, benchmark, scenario
        self.specs = plan_servers(config, benchmark, scenario, root=repo_root())
        self.launcher = Launcher(self.specs, out=out or (lambda text: print(text, file=sys.stderr, flush=True)))

    def __enter__(self):
        from llmlib.factory import repo_root

        check_model(self.config, self.benchmark, self.scenario, root=repo_root())
        check_ports_free(self.specs)
        self.launcher.start()
        try:
            self.launcher.wait_ready(self.config.server_ready_timeout_s)
        except BaseException:
            self.launcher.stop()
            raise
        urls = ",".join(s.url for s in self.specs)
        triton = self.config.server_kind == "triton" or self.config.core_type == "triton_grpc"
        field = "triton_server_urls" if triton else "trtllm_server_urls"
        return self.config.with_values(source="--launch_servers", **{field: urls})

    def __exit__(self, *exc) -> None:
        self.launcher.stop()


def check_model(config, benchmark, scenario: str, *, root: Path) -> None:
    """The checkpoint / engine a server loads must be there (one-line ConfigError). A model named like a
    hub repository (org/name, not a path) is left to the server."""
    model = _model(config, benchmark, scenario, root) if config.server_kind != "custom" else ""
    if not model:
        return
    path = Path(model)
    if config.server_kind == "triton" or (config.server_kind == "trtllm-serve" and config.trtllm_backend == "trt"):
        if not (path / "config.json").is_file():
            raise ConfigError(f"engine folder {path} (--engine_dir) holds no config.json: build it with "
                              "`make generate_engines`")
        return
    looks_like_path = path.is_absolute() or model.startswith((".", "build/")) or model.count("/") != 1
    if looks_like_path and not path.exists():
        raise ConfigError(f"checkpoint {model} (--trtllm_model_path) does not exist")
