"""Every setting of the harness, declared once: name, type, default, help, environment variable.

Values from the command line, the environment and YAML files are parsed by the field's kind.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from llmlib.errors import ConfigError
from llmlib.http1 import parse_endpoint_url

KINDS = ("str", "int", "float", "float_or_auto", "bool", "list", "endpoints", "urls", "flags")

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$|^[+-]?\d+[eE][+-]?\d+$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One declared setting. `kind` picks the parser; `choices` restricts str/list values."""

    name: str
    kind: str
    default: Any
    help: str
    env: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # the value must be > 0 (not just >= minimum)
    group: str = "harness"

    def parse(self, value: Any, source: str) -> Any:
        """Convert `value` (a string from a flag or the environment, or a YAML value) to this kind."""
        try:
            parsed = _PARSERS[self.kind](value)
        except ConfigError as err:
            raise ConfigError(f"{source}: --{self.name}: {err}") from err
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{source}: --{self.name}={value!r} is not a valid {_KIND_NAMES.get(self.kind, self.kind)} ({err})"
            ) from err
        if parsed is None:
            return None
        if self.choices is not None:
            items = parsed if isinstance(parsed, list) else [parsed]
            for item in items:
                if item not in self.choices:
                    raise ConfigError(
                        f"{source}: --{self.name}={item!r} is not one of: {', '.join(self.choices)}"
                    )
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            if isinstance(parsed, float) and not math.isfinite(parsed):
                raise ConfigError(f"{source}: --{self.name}={parsed} must be a finite number")
            if self.positive and not parsed > 0:
                raise ConfigError(f"{source}: --{self.name}={parsed} must be > 0")
            if self.minimum is not None and not parsed >= self.minimum:
                raise ConfigError(f"{source}: --{self.name}={parsed} must be >= {self.minimum:g}")
            if self.maximum is not None and not parsed <= self.maximum:
                bound = int(self.maximum) if float(self.maximum).is_integer() else self.maximum
                raise ConfigError(f"{source}: --{self.name}={parsed} must be <= {bound}")
        return parsed


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _parse_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip().replace("_", "")
    if not _INT_RE.match(text):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(text)


def _parse_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return float(value)


def _parse_float_or_auto(value: Any) -> float | str | None:
    """A number, or `auto` (the harness chooses the value: llmlib/report/auto_qps.py)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _parse_float(value)
    except ValueError:
        raise ValueError(f"expected a number or auto, got {value!r}") from None


def _parse_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return str(value)


def _parse_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value).split(",")]
    return [v for v in items if v]


def parse_endpoints(value: Any) -> list[str]:
    """`host:port,host:port` (a leading http:// or grpc:// is kept off); each port 1..65535."""
    out = []
    for item in _parse_list(value):
        bare = re.sub(r"^[a-z]+://", "", item).rstrip("/")
        m = _HOSTPORT_RE.match(bare)
        if not m or not 1 <= int(m.group(2)) <= 65535:
            raise ConfigError(f"endpoint {item!r} is not host:port (port 1..65535)")
        out.append(bare)
    return out


def parse_http_urls(value: Any) -> list[str]:
    """`host:port` or `http[s]://host[:port][/prefix]` items, each kept with its scheme and prefix
    (normalized: `http://h:80/v1`); bare `host:port` items stay as given (http)."""
    out = []
    for item in _parse_list(value):
        try:
            url = parse_endpoint_url(item)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        out.append(item if "://" not in item else url.address)
    return out


def parse_flag_value(text: str) -> bool | int | float | str:
    """Type one value of a flag string: true/false, then int, then float, else the string itself."""
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    return text


def parse_flag_string(value: Any) -> dict[str, Any]:
    """Parse `k1:v1,k2:v2` into a typed dict. A mapping (from YAML) passes through with keys checked."""
    if value is None:
        return {}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"flag names must be non-empty strings, got {key!r}")
        return dict(value)
    text = str(value).strip()
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"empty item in flag string {text!r} (expected k1:v1,k2:v2)")
        key, sep, raw = item.partition(":")
        key, raw = key.strip(), raw.strip()
        if not sep:
            raise ConfigError(f"item {item!r} in {text!r} has no ':' (expected key:value)")
        if not key:
            raise ConfigError(f"item {item!r} in {text!r} has an empty key (expected key:value)")
        if not raw:
            raise ConfigError(f"item {item!r} in {text!r} has an empty value (expected key:value)")
        if key in out:
            raise ConfigError(f"key {key!r} given twice in {text!r}")
        out[key] = parse_flag_value(raw)
    return out


_KIND_NAMES = {"float_or_auto": "number"}

_PARSERS = {
    "str": _parse_str,
    "int": _parse_int,
    "float": _parse_float,
    "float_or_auto": _parse_float_or_auto,
    "bool": lambda v: None if v is None else parse_bool(v),
    "list": _parse_list,
    "endpoints": parse_endpoints,
    "urls": parse_http_urls,
    "flags": parse_flag_string,
}

FIELDS: dict[str, Field] = {}


def declare(**kwargs: Any) -> Field:
    field = Field(**kwargs)
    if field.kind not in KINDS:
        raise ValueError(f"field {field.name}: unknown kind {field.kind!r}")
    if field.name in FIELDS:
        raise ValueError(f"field {field.name} declared twice")
    FIELDS[field.name] = field
    return field


def get_field(name: str) -> Field:
    try:
        return FIELDS[name]
    except KeyError:
        raise ConfigError(unknown_name_message("setting", name, FIELDS)) from None


def unknown_name_message(what: str, name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {what} {name!r}.{hint} Valid: {', '.join(sorted(known))}"


# --- what to run ----------------------------------------------------------------------------
declare(name="benchmarks", kind="list", default=["tiny"], group="run",
        help="Comma-separated benchmark names (configs/benchmarks/<name>.yaml).")
declare(name="scenarios", kind="list", default=["Offline", "Server"], group="run",
        help="Comma-separated scenarios: Offline, Server, Interactive, SingleStream.")
declare(name="round", kind="str", default="v6.1", group="run", choices=("v5.0", "v5.1", "v6.0", "v6.1"),
        help="MLPerf Inference round the run is for; a benchmark outside it runs with a warning "
             "(`--list` shows each benchmark's rounds).")
declare(name="test_mode", kind="str", default="PerformanceOnly", group="run",
        choices=("PerformanceOnly", "AccuracyOnly"), help="LoadGen test mode.")
declare(name="system_name", kind="str", default="local", env="SYSTEM_NAME", group="run",
        help="System whose settings apply (configs/systems/<name>.yaml); also names the results folder.")
declare(name="core_type", kind="str", default="hf", group="run",
        help="Backend core (see `python -m llmlib --list`).")
declare(name="config_dir", kind="str", default="configs", group="run",
        help="Folder holding benchmarks/, systems/ and user.conf.")
declare(name="results_dir", kind="str", default="results", group="run",
        help="Where run outputs go: <results_dir>/<system>/<benchmark>/<scenario>/<mode>/.")
declare(name="user_conf", kind="str", default="", group="run",
        help="LoadGen user.conf (default: <config_dir>/user.conf).")
declare(name="tokenizer_path", kind="str", default="", group="run",
        help="Tokenizer folder for decoding outputs (default: --hf_model_path, or a tokenizer found "
             "next to the dataset file); `char` is the math dataset's character tokenizer.")
declare(name="prm800k_path", kind="str", default="", env="PRM800K_PATH", group="run",
        help="openai/prm800k checkout whose grading/ grades MATH500 answers (deepseek-r1, gpt-oss-120b), "
             "e.g. <mlcommons/inference>/language/deepseek-r1/submodules/prm800k.")
declare(name="lcb_tests", kind="str", default="", env="LCB_TESTS", group="run",
        help="LiveCodeBench test cases (JSON/JSONL rows: question_id, public/private_test_cases, metadata) "
             "that generated code is run against in the sandbox.")
declare(name="scaffolding", kind="str", default="", group="run",
        help="Run each sample through a test-time-compute method: native, majority_vote:samples=8, "
             "token_budget:budget=512,batch=2. Empty: off.")
declare(name="scaffolding_max_parallel", kind="int", default=256, minimum=1, group="run",
        help="Samples whose controllers run at once (the rest wait their turn).")
declare(name="print_config", kind="bool", default=False, group="run",
        help="Print the resolved configuration with the source of every value, and exit.")

# --- LoadGen quick-run overrides --------------------------------------------------------------
#: LoadGen keeps durations as int64 nanoseconds (ms beyond this overflow) and counts as 64-bit
#: integers; a target QPS above a billion is a typo.
LOADGEN_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
LOADGEN_MAX_COUNT = 2**63 - 1
LOADGEN_MAX_QPS = 1e9

declare(name="server_target_qps", kind="float_or_auto", default=None, positive=True, maximum=LOADGEN_MAX_QPS,
        group="loadgen", help="Server/Interactive target QPS (overrides user.conf), or auto: a stated fraction "
                              "(--auto_qps_fraction) of the QPS the backend sustains within the limits, measured "
                              "by short probes (--auto_qps_budget_s) before the run.")
declare(name="offline_expected_qps", kind="float_or_auto", default=None, positive=True, maximum=LOADGEN_MAX_QPS,
        group="loadgen", help="Offline expected QPS (overrides user.conf), or auto: calibrated by a short probe "
                              "(as --calibrate_offline_qps=always).")
declare(name="single_stream_expected_latency_ns", kind="int", default=None, minimum=1, maximum=LOADGEN_MAX_COUNT,
        group="loadgen",
        help="SingleStream expected latency in ns (overrides mlperf.conf/user.conf target_latency): LoadGen "
             "generates about min_duration / this many queries, so a value above the real latency ends "
             "the run before min_duration (INVALID).")
declare(name="min_duration_ms", kind="int", default=None, minimum=0, maximum=LOADGEN_MAX_DURATION_MS,
        group="loadgen", help="LoadGen minimum run duration in ms (overrides mlperf.conf/user.conf).")
declare(name="max_duration_ms", kind="int", default=None, minimum=0, maximum=LOADGEN_MAX_DURATION_MS,
        group="loadgen", help="LoadGen maximum run duration in ms.")
declare(name="min_query_count", kind="int", default=None, minimum=0, maximum=LOADGEN_MAX_COUNT,
        group="loadgen", help="LoadGen minimum query count (overrides mlperf.conf/user.conf).")
declare(name="max_query_count", kind="int", default=None, minimum=0, maximum=LOADGEN_MAX_COUNT,
        group="loadgen", help="LoadGen maximum query count.")
declare(name="performance_sample_count", kind="int", default=None, minimum=1, maximum=LOADGEN_MAX_COUNT,
        group="loadgen", help="Override the performance sample count (default: the benchmark's).")

# --- LLMServer --------------------------------------------------------------------------------
declare(name="traffic_distribution_policy", kind="str", default="load_balancing", group="server",
        choices=("round_robin", "load_balancing", "token_aware"),
        help="How requests are spread over cores: round_robin, load_balancing (least pending "
             "requests) or token_aware (least pending tokens).")
declare(name="show_progress", kind="bool", default=True, group="server",
        help="Show the tqdm progress display.")
declare(name="show_steady_state_progress", kind="bool", default=True, group="server",
        help="Show steady-state tokens/s (excluding ramp-up and tail) in the progress display.")
declare(name="quiet", kind="bool", default=False, group="server",
        help="No progress display and only warnings in the log; the summary is still printed.")
declare(name="progress_interval_s", kind="float", default=0.5, minimum=0.05, group="server",
        help="Seconds between progress display refreshes.")
declare(name="request_timeout_s", kind="float", default=None, minimum=0, group="server",
        help="A request pending longer than this fails (0 = never). Default: derived from the "
             "scenario's limits, 3 x (TTFT limit + max output tokens x TPOT limit), at least 30 s; "
             "Offline: twice the expected run length, at least 600 s. Keeps a stuck backend from "
             "hanging the run.")
declare(name="stall_warning_s", kind="float", default=None, minimum=0, group="server",
        help="Warn (the run goes on) when requests have had no first token for this long (0 = never). "
             "Default: 5 x the TTFT limit, at least 10 s, in Server/Interactive; off in Offline, "
             "where requests queue by design.")
declare(name="max_consecutive_failures", kind="int", default=50, minimum=0, group="server",
        help="A core whose last N requests all failed can no longer serve: the run stops early "
             "with that cause (0 = never).")
declare(name="interrupt_grace_s", kind="float", default=20.0, minimum=0, group="server",
        help="After Ctrl-C / SIGTERM (or a core lost), how long LoadGen may take to finish its test "
             "(pending requests fail at once) before the harness exits without LoadGen's summary.")
declare(name="token_stats", kind="bool", default=False, group="server",
        help="Stream every token of Server/Interactive requests to the harness (cores that stream: "
             "trtllm_endpoint, trtllm_disagg, dummy) for per-request inter-token statistics in the summary; "
             "off, LoadGen's requests get a first token and the final output only.")
declare(name="flush_timeout_s", kind="float", default=60.0, minimum=0, group="server",
        help="How long the end-of-run flush waits for pending requests.")

# --- warmup -----------------------------------------------------------------------------------
declare(name="warmup_queries", kind="int", default=8, minimum=0, group="warmup",
        help="Warmup requests per core before the timed run (responses never reach LoadGen).")
declare(name="health_check_timeout_s", kind="float", default=60.0, minimum=0, group="warmup",
        help="Overall deadline for all cores to pass their health check.")
declare(name="warmup_timeout_s", kind="float", default=120.0, minimum=0, positive=True, group="warmup",
        help="Deadline for the warm-up requests; those still pending then fail (the run goes on).")
declare(name="health_check_backoff_s", kind="float", default=0.5, minimum=0, group="warmup",
        help="First retry delay of a failing health check; doubles each retry.")

# --- parallelism and TRT-LLM flags -------------------------------------------------------------
declare(name="tensor_parallelism", kind="int", default=1, minimum=1, group="trtllm",
        help="Tensor-parallel size.")
declare(name="pipeline_parallelism", kind="int", default=1, minimum=1, group="trtllm",
        help="Pipeline-parallel size.")
declare(name="moe_expert_parallelism", kind="int", default=None, minimum=1, group="trtllm",
        help="Expert-parallel size for MoE models.")
declare(name="trtllm_checkpoint_flags", kind="flags", default={}, env="TRTLLM_CHECKPOINT_FLAGS",
        group="trtllm", help="Quantization flags k1:v1,k2:v2 (env TRTLLM_CHECKPOINT_FLAGS applied on top).")
declare(name="trtllm_build_flags", kind="flags", default={}, env="TRTLLM_BUILD_FLAGS",
        group="trtllm", help="Engine build flags k1:v1,k2:v2 (env TRTLLM_BUILD_FLAGS applied on top).")
declare(name="trtllm_runtime_flags", kind="flags", default={}, env="TRTLLM_RUNTIME_FLAGS",
        group="trtllm", help="Runtime flags k1:v1,k2:v2 over the harness defaults (env "
                             "TRTLLM_RUNTIME_FLAGS applied on top).")
declare(name="trtllm_server_urls", kind="urls", default=[], group="endpoints",
        help="OpenAI-compatible servers, one core per URL: host:port (http) or http[s]://host[:port][/prefix] "
             "(a prefix ending in /v1 is the API base, e.g. https://gw/llm/v1; another is put before /v1).")
declare(name="triton_server_urls", kind="endpoints", default=[], group="endpoints",
        help="Triton gRPC servers, host:port,host:port.")
declare(name="triton_num_clients_per_server", kind="int", default=1, minimum=1, group="endpoints",
        help="gRPC clients (each with its own stream) per Triton server; requests are spread over them.")
declare(name="triton_num_models_per_server", kind="int", default=1, minimum=1, group="endpoints",
        help="Model copies loaded on each Triton server: one core per (server, model); with N>1 the models "
             "are named <triton_model_name>_0 .. <triton_model_name>_<N-1>.")
declare(name="triton_model_name", kind="str", default="tensorrt_llm", group="endpoints",
        help="Triton model to infer on (the TensorRT-LLM backend's model, or an ensemble with the same tensors).")
declare(name="triton_tensor_names", kind="flags", default={}, group="endpoints",
        help="Renames of the TensorRT-LLM Triton model's tensors, harness_name:server_name,... "
             "(e.g. input_ids:INPUT_ID,output_ids:OUTPUT_IDS).")
declare(name="triton_max_concurrency", kind="int", default=512, minimum=1, group="endpoints",
        help="Most requests in flight per Triton core (server x model).")
declare(name="trtllm_max_concurrency", kind="int", default=256, minimum=1, group="endpoints",
        help="Most requests in flight per OpenAI-compatible server URL (trtllm_endpoint core).")
declare(name="trtllm_connect_ahead", kind="int", default=None, minimum=0, group="endpoints",
        help="Connections each OpenAI-compatible core opens in its warm-up, before the timed run, so the "
             "first timed requests do not each wait for a connect (default: --trtllm_max_concurrency; 0: none).")
declare(name="trtllm_endpoint_model", kind="str", default="", group="endpoints",
        help="Model name sent to the server and checked against /v1/models; empty: the first it serves.")
declare(name="trtllm_use_chat", kind="bool", default=False, group="endpoints",
        help="Use /v1/chat/completions (needs prompt texts in the dataset); default /v1/completions with token ids.")
declare(name="trtllm_prompt_text_column", kind="str", default="", group="endpoints",
        help="Send the prompt as text from this dataset column (one of the benchmark's dataset.extra_columns, "
             "e.g. input) instead of token ids, for servers that take no token-id prompt (llama-cpp-python).")
declare(name="trtllm_request_timeout_s", kind="float", default=None, minimum=0, group="endpoints",
        help="Per-request HTTP deadline in seconds (default: --request_timeout_s; 0: none).")
declare(name="trtllm_return_token_ids", kind="bool", default=True, group="endpoints",
        help="Ask the server for output token ids (return_token_ids, vLLM); else counts come from usage.")
declare(name="trtllm_api_dialect", kind="str", default="auto", group="endpoints",
        choices=("auto", "vllm", "sglang", "trtllm", "tgi", "llamacpp", "openai", "transformers"),
        help="The server family's dialect (llmlib/cores/wire/dialects.py): extension fields, prompt form, "
             "stream end. auto: probed in the health check with small requests, stepping down on each refusal.")
declare(name="trtllm_disagg_config_path", kind="str", default="", env="DISAGG_CONFIG_PATH", group="endpoints",
        help="Disaggregated-serving YAML (hostname, port, context_servers, generation_servers) for the "
             "trtllm_disagg core, which drives its router.")
declare(name="openai_api_key_file", kind="str", default="", env="OPENAI_API_KEY_FILE", group="endpoints",
        help="File whose first line is the API key sent as a Bearer token (none for local servers).")
# endpoint security (trtllm_endpoint / trtllm_disagg): TLS and where a key may go
declare(name="trtllm_ca_file", kind="str", default="", env="TRTLLM_CA_FILE", group="endpoints",
        help="CA bundle (PEM) that https:// servers' certificates are verified against (default: the "
             "system's CAs). Certificates are always verified.")
declare(name="allow_api_key_over_http", kind="bool", default=False, group="endpoints",
        help="Send the API key over plain http:// to a host that is not loopback (cleartext on the "
             "network; refused unless set).")

declare(name="workers_per_core", kind="str", default="0", group="endpoints",
        help="Worker processes per network core (trtllm_endpoint, trtllm_disagg, triton_grpc; also dummy): "
             "N >= 1 runs each core's connections, stream parsing and token counting in N processes, and the "
             "LoadGen process only issues and completes; 0: in this process; auto: the machine's cores but one, "
             "split between the cores.")

# --- ops: quantize, build engines, launch servers, disaggregated serving (llmlib/ops) ---------------
declare(name="dry_run", kind="bool", default=False, group="ops",
        help="generate_engines / run_llm_server / generate_disagg_config: print the exact commands and "
             "files, touch nothing.")
declare(name="precision", kind="str", default="fp8", group="ops",
        choices=("fp8", "fp4", "nvfp4", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "fp16", "bf16"),
        help="Quantization format of the checkpoint (quantize.py's qformat; fp4 = nvfp4, fp16/bf16 = full_prec).")
declare(name="checkpoint_dtype", kind="str", default="float16", group="ops",
        choices=("auto", "float16", "bfloat16", "float32"),
        help="dtype of the parts quantization leaves unquantized (quantize.py's dtype).")
declare(name="quantized_checkpoint_dir", kind="str", default="", group="ops",
        help="Where quantization writes the checkpoint (default build/models/<benchmark>/<precision>-tp<T>pp<P>).")
declare(name="calib_dataset_path", kind="str", default="", group="ops",
        help="Calibration data folder for quantization (quantize.py's calib_dataset; empty: its default).")
declare(name="calib_batch_size", kind="int", default=1024, minimum=1, group="ops",
        help="Calibration batch size; quantize.py's calib_size = batch size x batches.")
declare(name="calib_max_batches", kind="int", default=1, minimum=1, group="ops",
        help="Calibration batches; quantize.py's calib_size = batch size x batches.")
declare(name="gpu_batch_size", kind="int", default=256, minimum=1, group="ops",
        help="Engine max batch size (trtllm-build's max_batch_size; not allowed in --trtllm_build_flags).")
declare(name="build_steps", kind="list", default=["quantize", "build"], choices=("quantize", "build"),
        group="ops", help="Steps generate_engines runs, in order.")
declare(name="force_calibration", kind="bool", default=False, group="ops",
        help="Quantize again even when a complete checkpoint exists.")
declare(name="force_build_engines", kind="bool", default=False, group="ops",
        help="Build again even when a complete engine exists.")
declare(name="trtllm_source_dir", kind="str", default="build/TRTLLM", env="TRTLLM_SOURCE_DIR", group="ops",
        help="A TensorRT-LLM source tree (for examples/quantization/quantize.py).")
declare(name="trtllm_quantize_script", kind="str", default="", env="TRTLLM_QUANTIZE_SCRIPT", group="ops",
        help="quantize.py to run (default <trtllm_source_dir>/examples/quantization/quantize.py).")
declare(name="trtllm_python", kind="str", default="", env="TRTLLM_PYTHON", group="ops",
        help="Interpreter that runs quantize.py and must import tensorrt_llm (default: this one).")
declare(name="trtllm_build_command", kind="str", default="trtllm-build", env="TRTLLM_BUILD_COMMAND", group="ops",
        help="The engine builder executable (TensorRT-LLM's trtllm-build).")
declare(name="server_kind", kind="str", default="trtllm-serve", group="ops",
        choices=("trtllm-serve", "triton", "vllm", "sglang", "llama-cpp", "custom"),
        help="What run_llm_server starts, one per data-parallel rank (custom: --server_command as a template).")
declare(name="server_command", kind="str", default="", env="SERVER_COMMAND", group="ops",
        help="The server executable and leading arguments (default per kind: trtllm-serve, tritonserver, "
             "vllm serve, python -m sglang.launch_server, python -m llama_cpp.server); with "
             "--server_kind=custom the whole command, a template of {host} {port} {rank} {model} {devices}.")
declare(name="server_host", kind="str", default="127.0.0.1", group="ops",
        help="Host the launched servers listen on when --trtllm_server_urls does not say.")
declare(name="server_base_port", kind="int", default=8000, minimum=1, maximum=65535, group="ops",
        help="Port of rank 0 when --trtllm_server_urls is empty (rank i: base + i).")
declare(name="server_health_path", kind="str", default="", group="ops",
        help="Readiness path polled on each server (default per kind: /health, /v2/health/ready for Triton, "
             "/v1/models for llama-cpp); `grpc` / `grpc:<model>`: Triton's gRPC ServerReady / ModelReady on the "
             "server's own port.")
declare(name="server_ready_timeout_s", kind="float", default=900.0, positive=True, group="ops",
        help="Deadline for every launched server to answer its readiness path.")
declare(name="server_log_dir", kind="str", default="build/logs/servers", group="ops",
        help="Where each launched server's log, command and generated options files go.")
declare(name="launch_servers", kind="bool", default=False, group="ops",
        help="run_harness starts the servers of --server_kind itself before the run and stops them after.")
declare(name="disagg_num_ctx_servers", kind="int", default=1, minimum=1, group="ops",
        help="Disaggregated serving: context (prefill) servers.")
declare(name="disagg_ctx_tp", kind="int", default=1, minimum=1, group="ops", help="Context servers' TP size.")
declare(name="disagg_ctx_pp", kind="int", default=1, minimum=1, group="ops", help="Context servers' PP size.")
declare(name="disagg_ctx_batch_size", kind="int", default=None, minimum=1, group="ops",
        help="Context servers' max batch size (default --gpu_batch_size).")
declare(name="disagg_ctx_max_num_tokens", kind="int", default=8192, minimum=1, group="ops",
        help="Context servers' max tokens per step.")
declare(name="disagg_num_gen_servers", kind="int", default=1, minimum=1, group="ops",
        help="Disaggregated serving: generation (decode) servers.")
declare(name="disagg_gen_tp", kind="int", default=1, minimum=1, group="ops", help="Generation servers' TP size.")
declare(name="disagg_gen_pp", kind="int", default=1, minimum=1, group="ops", help="Generation servers' PP size.")
declare(name="disagg_gen_batch_size", kind="int", default=None, minimum=1, group="ops",
        help="Generation servers' max batch size (default --gpu_batch_size).")
declare(name="disagg_gen_max_num_tokens", kind="int", default=None, minimum=1, group="ops",
        help="Generation servers' max tokens per step (default: their batch size).")
declare(name="disagg_hostname", kind="str", default="localhost", group="ops",
        help="Host of the router and the workers in the disaggregated YAML.")
declare(name="disagg_router_port", kind="int", default=8000, minimum=1, maximum=65535, group="ops",
        help="Port of the disaggregated router (the YAML's port).")
declare(name="disagg_worker_start_port", kind="int", default=8001, minimum=1, maximum=65535, group="ops",
        help="Port of the first context server; the others count up (context, then generation).")
declare(name="disagg_router_command", kind="str", default="trtllm-serve disaggregated -c {config} -t 1800 -r 1800",
        env="DISAGG_ROUTER_COMMAND", group="ops",
        help="The router the leader starts once every worker is up: a template of {config} {host} {port}.")

# --- dummy core --------------------------------------------------------------------------------
declare(name="dummy_num_cores", kind="int", default=1, minimum=1, group="dummy",
        help="Number of simulated engines (data-parallel cores).")
declare(name="dummy_ttft_ms", kind="float", default=20.0, minimum=0, group="dummy",
        help="Simulated time to first token (prefill) in ms.")
declare(name="dummy_tpot_ms", kind="float", default=2.0, minimum=0, group="dummy",
        help="Simulated time per output token after the first, in ms.")
declare(name="dummy_max_batch_size", kind="int", default=64, minimum=1, group="dummy",
        help="Requests a simulated engine runs at once; the rest queue.")
declare(name="dummy_output_len", kind="str", default="dataset", group="dummy",
        help="Output length: 'dataset' (reference lengths, capped by max_output_tokens) or an integer.")
declare(name="dummy_zero_latency", kind="bool", default=False, group="dummy",
        help="Complete every request inline at enqueue, for measuring harness overhead.")
declare(name="dummy_fail_rate", kind="float", default=0.0, minimum=0, group="dummy",
        help="Fraction of requests the simulated engine fails (fault injection).")
declare(name="dummy_oracle_accuracy", kind="float", default=None, minimum=0, group="dummy",
        help="Arithmetic oracle mode (the `math` dataset): answer each problem in the prompt correctly "
             "with this probability, else with a nearby wrong number; seeded per request seed.")
declare(name="dummy_seed", kind="int", default=0, group="dummy",
        help="Seed for the simulated engine's failures and tokens.")

# --- sampling (defaults: the benchmark's generation config) ----------------------------------------
declare(name="temperature", kind="float", default=None, minimum=0, group="sampling",
        help="Sampling temperature (0 = greedy). Default: the benchmark's generation config.")
declare(name="top_p", kind="float", default=None, minimum=0, group="sampling",
        help="Nucleus sampling mass. Default: the benchmark's generation config.")
declare(name="top_k", kind="int", default=None, minimum=0, group="sampling",
        help="Top-k sampling (0 = off). Default: the benchmark's generation config.")
declare(name="max_tokens", kind="int", default=None, minimum=1, group="sampling",
        help="Maximum output tokens per request. Default: the benchmark's max_output_tokens.")
declare(name="frequency_penalty", kind="float", default=None, group="sampling",
        help="OpenAI-style frequency penalty. Default: 0.")
declare(name="presence_penalty", kind="float", default=None, group="sampling",
        help="OpenAI-style presence penalty. Default: 0.")
declare(name="stop", kind="list", default=[], group="sampling",
        help="Extra stop token ids, comma-separated, on top of the benchmark's EOS and stop tokens.")
declare(name="seed", kind="int", default=0, group="sampling",
        help="Seed for sampled (non-greedy) generation.")

# --- hf core (PyTorch through transformers) ----------------------------------------------------------
declare(name="hf_model_path", kind="str", default="", group="hf",
        help="A transformers checkpoint folder (config.json, weights, tokenizer). Empty: the project's "
             "tiny model, built on first use.")
declare(name="hf_device", kind="str", default="auto", group="hf",
        help="cpu, cuda, cuda:N, or auto (CUDA when present, else CPU).")
declare(name="hf_dtype", kind="str", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
        group="hf", help="Model dtype; auto = float32 on CPU, bfloat16 on CUDA.")
declare(name="hf_max_batch_size", kind="int", default=16, minimum=1, group="hf",
        help="Sequences decoded together in one engine step (in-flight batching).")
declare(name="hf_max_num_tokens", kind="int", default=2048, minimum=1, group="hf",
        help="Most tokens one engine step processes (prefill of joining requests plus one per decoding one).")
declare(name="hf_num_workers", kind="int", default=1, minimum=1, group="hf",
        help="Data-parallel cores, each a separate process with its own copy of the model.")
declare(name="hf_threads_per_worker", kind="int", default=0, minimum=0, group="hf",
        help="CPU threads per worker process (0 = the machine's cores but one, for the harness, split "
             "evenly between workers).")
declare(name="hf_trust_remote_code", kind="bool", default=False, group="hf",
        help="Pass trust_remote_code to transformers when loading the model.")

# --- TensorRT-LLM in-process cores ---------------------------------------------------------------------
declare(name="engine_dir", kind="str", default="", group="trtllm",
        help="TensorRT-LLM engine folder (trtllm_executor core).")
declare(name="trtllm_model_path", kind="str", default="", group="trtllm",
        help="Checkpoint folder or model name for the LLM API (trtllm_hlapi core).")
declare(name="trtllm_backend", kind="str", default="pytorch", choices=("pytorch", "trt"), group="trtllm",
        help="LLM API backend (trtllm_hlapi core).")
declare(name="llm_gen_config_path", kind="str", default="", group="trtllm",
        help="generation_config.json written during engine generation.")
declare(name="num_gpus", kind="int", default=None, minimum=1, group="trtllm",
        help="GPUs to use (default: all visible). Data-parallel ranks = num_gpus / (TP x PP).")
# --- compliance runs and submission staging (llmlib/compliance/) -----------------------------------
declare(name="mlperf_inference_dir", kind="str", default="", env="MLPERF_INFERENCE_DIR", group="compliance",
        help="A checkout of mlcommons/inference (compliance/TEST0x/audit.config and run_verification.py, "
             "tools/submission/ with the checker).")
declare(name="audit_tests", kind="list", default=[], group="compliance",
        help="Compliance tests for run_audit_harness, e.g. TEST06,TEST07 (default: those the benchmark requires).")
declare(name="audit_test", kind="str", default="", group="compliance",
        help="Set by run_audit_harness for its child run: the compliance test this run is (results go to "
             "<scenario>/<TEST0x>/ instead of <scenario>/<mode>/).")
declare(name="audit_config", kind="str", default="", group="compliance",
        help="Set by run_audit_harness for its child run: the audit.config LoadGen reads (a copy in the run's "
             "own temporary working directory).")
declare(name="audit_accuracy_script", kind="str", default="", group="compliance",
        help="TEST07's accuracy command, with {accuracy_log} for the log's path (given to its run_verification.py).")
declare(name="audit_verify_only", kind="bool", default=False, group="compliance",
        help="run_audit_harness: verify the logs of earlier compliance runs again, without running LoadGen.")
declare(name="submission_dir", kind="str", default="submission", group="compliance",
        help="Where stage_submission lays out the tree (check_submission checks it).")
declare(name="submitter", kind="str", default="", group="compliance",
        help="Organization name in the submission tree (default: the system description's submitter).")
declare(name="division", kind="str", default="closed", choices=("closed", "open"), group="compliance",
        help="Submission division.")
declare(name="system_description", kind="str", default="", group="compliance",
        help="The system description YAML/JSON (default: <config_dir>/submission/<system>.yaml).")
declare(name="stage_anyway", kind="bool", default=False, group="compliance",
        help="Stage runs made with quick-run overrides (--server_target_qps, --min_duration_ms, ...) too.")

# --- report, self-measurement, QPS search (llmlib/report/) ---------------------------------------
declare(name="loadgen_trace", kind="str", default="auto", group="report", choices=("auto", "true", "false"),
        help="Let LoadGen write mlperf_log_trace.json (per-sample times: the schedule delay, the report's CDFs). "
             "auto: when the scenario's expected rate is at most 2,000 samples/s (the trace costs LoadGen "
             "~1.4 KB of formatting and writing per sample: above that it limits the rate).")
declare(name="write_report", kind="bool", default=True, group="report",
        help="Write the plots (PNG) and report.html into every run folder, and index.html for several runs.")
declare(name="find_peak_qps", kind="bool", default=False, group="report",
        help="Server/Interactive: search the highest target QPS the system sustains within the limits "
             "(short probes, bracketing then bisection), then one full-length confirming run.")
declare(name="peak_probe_ms", kind="int", default=5000, minimum=500, group="report",
        help="Length of each peak-search probe run in ms.")
declare(name="peak_tolerance", kind="float", default=0.02, minimum=0.001, maximum=0.5, group="report",
        help="Peak search: stop bisecting when the bracket is this narrow (relative: highest pass / lowest fail).")
declare(name="auto_qps_budget_s", kind="float", default=30.0, minimum=5, maximum=3600, group="report",
        help="--server_target_qps=auto: the time the probes may take (no probe starts after it).")
declare(name="auto_qps_fraction", kind="float", default=0.5, positive=True, maximum=1, group="report",
        help="--server_target_qps=auto: the target is this fraction of the QPS the probes measured the backend "
             "sustaining (short probes see a queue's p99 before it settles, and a shared machine's capacity moves).")
declare(name="calibrate_offline_qps", kind="str", default="auto", group="report", choices=("auto", "always", "never"),
        help="Offline: set the expected QPS from a short probe run (auto: when neither --offline_expected_qps "
             "nor a user.conf line sets it for the benchmark).")
