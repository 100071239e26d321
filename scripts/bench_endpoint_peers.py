"""This project's OpenAI-endpoint client against the peer benchmark clients, on the same mock server.

Each tool runs in its own process (the peers in their own venvs under build/peers/<tool>) against one
mock server process (`tests.servers.mock_openai_server`), at the same concurrency, request count, prompt length
and output length (streamed). Two phases, each on a fresh mock:

  throughput  zero-delay mock: requests/s, output tokens/s, client CPU per request
  latency     first-token delay 0, 5 ms per token: each tool's own reported TTFT and inter-token latency
              (parsed from its output files), and client CPU per request when chunks arrive one by one

Client CPU is user+sys of the tool's whole process tree (RUSAGE_CHILDREN around the run; every tool
waits for its own children). Each tool runs twice, with `--warm_requests` and with `--requests`;
CPU per request is the difference over the difference in requests, so start-up, tokenizer loading and
report writing cancel out (the total per request is shown too).

    .venv/bin/python scripts/bench_endpoint_peers.py --install          # create the peers' venvs
    .venv/bin/python scripts/bench_endpoint_peers.py [--requests 2000] [--concurrency 32]
        [--tools llmlib,aiperf,guidellm,inference-perf,genai-perf] [--phases throughput,latency]
    .venv/bin/python scripts/bench_endpoint_peers.py --tools llmlib,llmlib-uvloop ...  # only this project's client

The own client is the TrtllmEndpointCore driven by a small driver that keeps `--concurrency` requests
in flight (the next one is enqueued from the completion callback), after the core's warm-up as the
harness runs it (connections opened ahead, `--trtllm_connect_ahead`); its TTFT is enqueue -> first token
(what LoadGen sees), its inter-token latency (end - first token) / (tokens - 1), the definition the
peers use. The latency phase also reports, where a tool gives per-request times (llmlib, genai-perf),
TTFT p50 and the mean over the requests after the first `--concurrency` (those reach the mock in one
burst), and for llmlib TTFT from the moment its request was written (the core's
`send_times`, the point genai-perf times from) and the client-side queueing before it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEERS_DIR = REPO / "build" / "peers"
#: the tokenizer the peers use to make prompts (the repo's tiny model; built by scripts/build_tiny_model.py)
TOKENIZER = REPO / "build" / "tiny-llama"
#: pinned peer versions (the versions this comparison was made with)
PEERS = {
    "aiperf": ["aiperf==0.13.0"],
    "guidellm": ["guidellm==0.8.1"],
    "inference-perf": ["inference-perf==0.7.0"],
    "genai-perf": ["genai-perf==0.0.16", "perf-analyzer==2.60.0"],
}
TOOLS = ("llmlib", "llmlib-uvloop", *PEERS)
MODEL = "mock-model"


# --- the own client (runs in a child process: `--_own_client`) --------------------------------------
def own_client(url: str, requests: int, concurrency: int, prompt_len: int, output_len: int, uvloop: bool) -> dict:
    import numpy as np

    from llmlib.config import resolve
    from llmlib.cores.base import Request
    from llmlib.cores.trtllm_endpoint_core import EndpointSettings, TrtllmEndpointCore

    config = resolve(cli={"core_type": "trtllm_endpoint", "trtllm_server_urls": url}, env={}, layers=())
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 30000, prompt_len, dtype=np.int32) for _ in range(64)]
    issued: list[int] = [0] * requests
    sent: list[int] = [0] * requests
    first: list[int] = [0] * requests
    done: list[int] = [0] * requests
    ntok: list[int] = [0] * requests
    errors: list[str] = []
    finished = threading.Event()
    state = {"next": 0, "ended": 0}
    perf = time.perf_counter_ns
    core: TrtllmEndpointCore

    def issue() -> None:
        i = state["next"]
        if i >= requests:
            return
        state["next"] = i + 1
        issued[i] = perf()
        core.enqueue([Request(i, prompts[i % 64], output_len, True, sample_index=i)])

    class Sink:
        def on_first_token(self, rid, tokens):
            first[rid] = perf()

        def on_complete(self, rid, tokens, n):
            done[rid] = perf()
            sent[rid] = core.send_times.pop(rid, 0)
            ntok[rid] = n
            self._end()

        def on_error(self, rid, err):
            done[rid] = perf()
            errors.append(str(err))
            self._end()

        def _end(self):
            state["ended"] += 1
            if state["ended"] == requests:
                finished.set()
            else:
                issue()

    class ProbedCore(TrtllmEndpointCore):
        """Records when each request's bytes were written (the point genai-perf times from)."""

        send_times: dict[int, int] = {}

        def _result(self, call, r):
            if call.ex is not None and call.ex.sent_ns:
                self.send_times[call.req.request_id] = call.ex.sent_ns
            return super()._result(call, r)

    core = ProbedCore(EndpointSettings(urls=tuple(config.trtllm_server_urls), max_concurrency=concurrency,
                                       request_timeout_s=120.0, model=MODEL, use_uvloop=uvloop),
                      rank=0, sink=Sink())
    try:
        core.health_check()
        core.warm_up()  # as the harness does before the timed run: connections opened ahead
        t0 = perf()
        for _ in range(min(concurrency, requests)):
            issue()
        if not finished.wait(600):
            errors.append("timed out")
        wall = (perf() - t0) / 1e9
    finally:
        core.stop()
    ok = [i for i in range(requests) if first[i] and ntok[i]]  # in issue order
    itl = [(done[i] - first[i]) / 1e6 / (ntok[i] - 1) for i in ok if ntok[i] > 1]
    timed = [i for i in ok if sent[i]]
    return {"requests": requests, "ok": len(ok), "errors": len(errors), "first_error": errors[0] if errors else "",
            "wall_s": wall, "output_tokens": sum(ntok), "itl_ms": _mean(itl), "loop": type_of_loop(core),
            **ttft_summary([(first[i] - issued[i]) / 1e6 for i in ok], concurrency),
            **ttft_summary([(first[i] - sent[i]) / 1e6 for i in timed], concurrency, "send_ttft"),
            "queue_ms": _mean([(sent[i] - issued[i]) / 1e6 for i in timed]),
            "queue_p50_ms": _pct([(sent[i] - issued[i]) / 1e6 for i in timed], 50)}


def ttft_summary(ttfts: list[float], skip: int, name: str = "ttft") -> dict:
    """Mean, p50 and the mean after the first `skip` requests (in issue order) of per-request TTFTs, ms."""
    return {f"{name}_ms": _mean(ttfts), f"{name}_p50_ms": _pct(ttfts, 50),
            f"{name}_steady_ms": _mean(ttfts[skip:])}


def type_of_loop(core) -> str:
    loop = core._loop
    return "?" if loop is None else type(loop).__module__.split(".")[0]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


# --- the mock -----------------------------------------------------------------------------------------
class Mock:
    """The mock OpenAI server in its own process."""

    def __init__(self, *, per_token_delay_ms: float = 0.0, output_tokens: int = 128, processes: int = 1):
        cmd = [sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0", "--model", MODEL,
               "--output_tokens", str(output_tokens), "--per_token_delay_ms", str(per_token_delay_ms),
               "--vocab_size", "32000", "--processes", str(processes),
               # one token of the peers' tokenizer per output token, so that those that count tokens in the
               # text agree with `usage` (and with llmlib, which counts token ids)
               "--token_text", " the"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the mock did not start: {line!r}")
        self.port = int(line)
        self.url = f"127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds the mock (all its processes) used so far, from /proc."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in _tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += _tree(int(child))
    except OSError:
        pass
    return out


# --- running one tool -----------------------------------------------------------------------------------
@dataclass
class Run:
    """One run of one tool: what it reported and what it cost."""

    tool: str
    requests: int
    ok: bool
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the tool's process tree
    mock_cpu_s: float = 0.0
    reported: dict = field(default_factory=dict)  # req_per_s, out_tok_per_s, ttft_ms, itl_ms, completed
    extra_cpu: dict = field(default_factory=dict)  # e.g. perf_analyzer's own CPU inside genai-perf
    error: str = ""


def run_measured(cmd: list[str], *, cwd: Path, env: dict | None = None,
                 timeout_s: float = 900) -> tuple[int, float, float, str]:
    """(returncode, wall s, CPU s of the process tree, output tail). The tree's CPU is RUSAGE_CHILDREN
    around the run: every process the tool waited for is in it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            out.write(f"\n[killed after {timeout_s:g}s]")
        leftovers = _kill_group(proc.pid)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        text = out.read()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if leftovers:
        text += "\n[processes the tool left running were killed; their CPU is not counted]"
    return rc, wall, cpu, text[-6000:]


def _kill_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _venv(tool: str) -> Path:
    return PEERS_DIR / tool


def run_tool(tool: str, mock: Mock, n: int, args, workdir: Path) -> Run:
    """One run of `tool` with `n` requests against `mock`."""
    workdir.mkdir(parents=True, exist_ok=True)
    if tool.startswith("llmlib"):
        result = workdir / "own.json"
        uv = "1" if tool == "llmlib-uvloop" else "0"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_own_client", mock.url, str(n), str(args.concurrency),
               str(args.prompt_len), str(args.output_len), uv, str(result)]
        env = None
    else:
        cmd, env = PEER_COMMANDS[tool](mock.url, n, args, workdir)
    m0 = mock.cpu_s()
    rc, wall, cpu, tail = run_measured(cmd, cwd=workdir, env=env, timeout_s=args.timeout_s)
    mock_cpu = mock.cpu_s() - m0
    run = Run(tool, n, False, wall, cpu, mock_cpu)
    if rc != 0:
        run.error = f"exit {rc}: {_last_lines(tail)}"
        return run
    try:
        if tool.startswith("llmlib"):
            r = json.loads(result.read_text())
            run.reported = {"req_per_s": n / r["wall_s"], "out_tok_per_s": r["output_tokens"] / r["wall_s"],
                            "completed": r["ok"], **{k: v for k, v in r.items() if k.endswith("_ms") or k == "loop"}}
            run.error = r["first_error"]
        else:
            run.reported = PEER_PARSERS[tool](workdir)
            if tool == "genai-perf":
                run.reported.update(_genai_perf_requests(workdir, args.concurrency))
            pa = workdir / "perf_analyzer.rusage"
            if pa.exists():
                run.extra_cpu["perf_analyzer"] = sum(float(x) for x in pa.read_text().split())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        run.error = f"cannot read its results ({type(err).__name__}: {err}); output: {_last_lines(tail)}"
        return run
    run.ok = run.reported.get("completed") == n and not run.error
    if run.reported.get("completed") != n and not run.error:
        run.error = f"{run.reported.get('completed')} of {n} requests completed"
    return run


def _last_lines(text: str, n: int = 6) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-700:]


# --- the peers: commands and parsers -------------------------------------------------------------------
def _aiperf(url: str, n: int, a, wd: Path):
    cmd = [str(_venv("aiperf") / "bin" / "aiperf"), "profile", "--model", MODEL, "--url", f"http://{url}",
           "--endpoint-type", "completions", "--streaming", "--concurrency", str(a.concurrency),
           "--request-count", str(n), "--prompt-input-tokens-mean", str(a.prompt_len),
           "--prompt-input-tokens-stddev", "0", "--prompt-output-tokens-mean", str(a.output_len),
           "--prompt-output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
           "--tokenizer", str(TOKENIZER), "--output-artifact-dir", str(wd / "art"), "--ui-type", "none",
           "--no-server-metrics", "--no-gpu-telemetry", "--random-seed", "0"]
    return cmd, None


def _aiperf_parse(wd: Path) -> dict:
    d = json.loads((wd / "art" / "profile_export_aiperf.json").read_text())
    return {"req_per_s": d["request_throughput"]["avg"], "out_tok_per_s": d["output_token_throughput"]["avg"],
            "ttft_ms": d["time_to_first_token"]["avg"], "itl_ms": d["inter_token_latency"]["avg"],
            "completed": int(d["request_count"]["avg"])}


def _guidellm(url: str, n: int, a, wd: Path):
    cmd = [str(_venv("guidellm") / "bin" / "guidellm"), "run",
           "--backend", f"kind=openai_http,target=http://{url},model={MODEL},request_format=/v1/completions",
           "--profile", f"kind=concurrent,streams={a.concurrency}", "--constraint", f"kind=max_requests,count={n}",
           "--data", f"kind=synthetic_text,prompt_tokens={a.prompt_len},output_tokens={a.output_len}",
           "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER}", "--output", f"kind=json,path={wd / 'out.json'}",
           "--disable-console-interactive"]
    return cmd, None


def _guidellm_parse(wd: Path) -> dict:
    m = json.loads((wd / "out.json").read_text())["benchmarks"][0]["metrics"]
    ok = m["request_totals"]["successful"] if isinstance(m["request_totals"], dict) else None
    return {"req_per_s": m["requests_per_second"]["successful"]["mean"],
            "out_tok_per_s": m["output_tokens_per_second"]["successful"]["mean"],
            "ttft_ms": m["time_to_first_token_ms"]["successful"]["mean"],
            "itl_ms": m["inter_token_latency_ms"]["successful"]["mean"],
            "completed": ok if ok is not None else m["time_to_first_token_ms"]["successful"]["count"]}


def _inference_perf(url: str, n: int, a, wd: Path):
    cfg = {"api": {"type": "completion", "streaming": True},
           "data": {"type": "synthetic",
                    "input_distribution": {"min": a.prompt_len, "max": a.prompt_len, "mean": a.prompt_len, "std_dev": 0},
                    "output_distribution": {"min": a.output_len, "max": a.output_len, "mean": a.output_len,
                                            "std_dev": 0}},
           "load": {"type": "concurrent", "stages": [{"num_requests": n, "concurrency_level": a.concurrency}]},
           "server": {"type": "vllm", "model_name": MODEL, "base_url": f"http://{url}", "ignore_eos": True},
           "tokenizer": {"pretrained_model_name_or_path": str(TOKENIZER)},
           "report": {"request_lifecycle": {"summary": True, "per_stage": False, "per_request": False}},
           "storage": {"local_storage": {"path": str(wd / "rep")}}}
    (wd / "config.json").write_text(json.dumps(cfg))  # YAML is a superset of JSON
    return [str(_venv("inference-perf") / "bin" / "inference-perf"), "-c", str(wd / "config.json")], None


def _inference_perf_parse(wd: Path) -> dict:
    d = json.loads((wd / "rep" / "summary_lifecycle_metrics.json").read_text())
    ok = d["successes"]
    return {"req_per_s": ok["throughput"]["requests_per_sec"], "out_tok_per_s": ok["throughput"]["output_tokens_per_sec"],
            "ttft_ms": ok["latency"]["time_to_first_token"]["mean"] * 1e3,
            "itl_ms": ok["latency"]["inter_token_latency"]["mean"] * 1e3, "completed": ok["count"]}


def _genai_perf(url: str, n: int, a, wd: Path):
    venv = _venv("genai-perf")
    shim = wd / "shim"
    shim.mkdir(exist_ok=True)
    # perf_analyzer behind a shim that records its own CPU (genai-perf's Python around it is counted too)
    (shim / "perf_analyzer").write_text(
        f"#!{sys.executable}\nimport os, sys\npid = os.fork()\nif pid == 0:\n"
        f"    os.execv({str(venv / 'bin' / 'perf_analyzer')!r}, ['perf_analyzer', *sys.argv[1:]])\n"
        "_, status, ru = os.wait4(pid, 0)\n"
        f"open({str(wd / 'perf_analyzer.rusage')!r}, 'a').write(f'{{ru.ru_utime + ru.ru_stime}}\\n')\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n")
    (shim / "perf_analyzer").chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{shim}:{venv / 'bin'}:{env.get('PATH', '')}"
    libs = [str(p) for p in sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))]
    env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")])
    cmd = [str(venv / "bin" / "genai-perf"), "profile", "-m", MODEL, "--endpoint-type", "completions", "--streaming",
           "-u", url, "--concurrency", str(a.concurrency), "--request-count", str(n),
           "--synthetic-input-tokens-mean", str(a.prompt_len), "--synthetic-input-tokens-stddev", "0",
           "--output-tokens-mean", str(a.output_len), "--output-tokens-stddev", "0", "--extra-inputs",
           "ignore_eos:true", "--tokenizer", str(TOKENIZER), "--artifact-dir", str(wd / "art"), "--random-seed", "0",
           "--warmup-request-count", "0"]
    return cmd, env


def _genai_perf_parse(wd: Path) -> dict:
    d = json.loads(next((wd / "art").glob("*/profile_export_genai_perf.json")).read_text())
    return {"req_per_s": d["request_throughput"]["avg"], "out_tok_per_s": d["output_token_throughput"]["avg"],
            "ttft_ms": d["time_to_first_token"]["avg"], "itl_ms": d["inter_token_latency"]["avg"],
            "completed": int(d["request_count"]["avg"])}


def _genai_perf_requests(wd: Path, skip: int) -> dict:
    """TTFT p50 and steady mean from perf_analyzer's per-request export (timed from its send)."""
    path = next((wd / "art").glob("*/profile_export.json"), None)
    if path is None:
        return {}
    reqs = json.loads(path.read_text())["experiments"][0]["requests"]
    reqs = sorted((r for r in reqs if r.get("response_timestamps")), key=lambda r: r["timestamp"])
    return ttft_summary([(r["response_timestamps"][0] - r["timestamp"]) / 1e6 for r in reqs], skip, "send_ttft")


PEER_COMMANDS = {"aiperf": _aiperf, "guidellm": _guidellm, "inference-perf": _inference_perf, "genai-perf": _genai_perf}
PEER_PARSERS = {"aiperf": _aiperf_parse, "guidellm": _guidellm_parse, "inference-perf": _inference_perf_parse,
                "genai-perf": _genai_perf_parse}
#: executables each peer needs (checked before a run; a missing one is reported with the reason)
PEER_BINARIES = {"aiperf": ["aiperf"], "guidellm": ["guidellm"], "inference-perf": ["inference-perf"],
                 "genai-perf": ["genai-perf", "perf_analyzer"]}


# --- installing the peers -------------------------------------------------------------------------------
def _python_for(tool: str) -> str | None:
    """inference-perf needs Python >= 3.12; the others run on this one."""
    if tool != "inference-perf":
        return sys.executable if sys.prefix == sys.base_prefix else str(Path(sys.base_prefix) / "bin" / "python3")
    candidates = [shutil.which(name) for name in ("python3.13", "python3.12")]
    candidates += [str(p / "python3") for p in sorted(Path.home().glob(".pyenv/versions/3.1[23]*/bin"), reverse=True)]
    for cand in filter(None, candidates):  # a pyenv shim may exist and not run
        ok = subprocess.run([cand, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"], capture_output=True)
        if ok.returncode == 0:
            return cand
    return None


def install(tools: list[str]) -> dict:
    """Create build/peers/<tool> and pip-install the pinned versions; {tool: versions or the failure}."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    status = {}
    for tool in tools:
        if tool not in PEERS:
            continue
        venv = _venv(tool)
        py = _python_for(tool)
        if py is None:
            status[tool] = {"error": "needs Python >= 3.12 (none found: python3.12 / python3.13 / pyenv)"}
            continue
        log = PEERS_DIR / f"{tool}.install.log"
        steps = [[py, "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", "-q", *PEERS[tool]]]
        if tool == "genai-perf":
            # perf_analyzer: the perf-analyzer wheels need glibc 2.38; tritonclient 2.51 still ships the binary
            # (it needs libb64.so.0d from the OS: apt-get install libb64-0d, and the CUDA runtime library)
            steps[1] = [str(venv / "bin" / "pip"), "install", "-q", "genai-perf==0.0.16"]
            steps.append([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "tritonclient==2.51.0",
                          "nvidia-cuda-runtime-cu12==12.9.79"])
        error = ""
        with open(log, "w") as out:
            for step in steps:
                print("+", " ".join(step), flush=True)
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    error = f"failed: {' '.join(step)} (see {log.relative_to(REPO)}: {_last_lines(log.read_text(), 2)})"
                    break
        status[tool] = {"error": error} if error else {"versions": _versions(tool)}
        print(f"{tool}: {status[tool]}", flush=True)
    (PEERS_DIR / "versions.json").write_text(json.dumps(status, indent=1))
    return status


def _versions(tool: str) -> dict:
    names = {"genai-perf": ["genai-perf", "tritonclient"]}.get(tool, [tool])
    out = {}
    for name in names:
        r = subprocess.run([str(_venv(tool) / "bin" / "pip"), "show", name], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if line.startswith("Version:"):
                out[name] = line.split(":", 1)[1].strip()
    return out


def unavailable(tool: str) -> str:
    """Why `tool` cannot run here ('' if it can)."""
    if tool == "llmlib-uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "uvloop is not installed (pip install -e '.[endpoint]')"
        return ""
    if tool == "llmlib":
        return ""
    if not (TOKENIZER / "tokenizer.json").exists():
        return f"no tokenizer at {TOKENIZER.relative_to(REPO)} (scripts/build_tiny_model.py makes it)"
    for exe in PEER_BINARIES[tool]:
        if not (_venv(tool) / "bin" / exe).exists():
            return f"not installed ({_venv(tool).relative_to(REPO)}/bin/{exe} missing; run with --install)"
    if tool == "genai-perf":
        libs = sorted(_venv(tool).glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(p) for p in libs))
        r = subprocess.run(["ldd", str(_venv(tool) / "bin" / "perf_analyzer")], capture_output=True, text=True, env=env)
        missing = [ln.split()[0] for ln in r.stdout.splitlines() if "not found" in ln]
        if missing:
            return f"perf_analyzer cannot load {', '.join(missing)} (libb64.so.0d: apt-get install libb64-0d)"
    return ""


# --- the report ------------------------------------------------------------------------------------------
def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def per_request(small: Run, big: Run) -> tuple[float | None, float | None]:
    """(marginal CPU ms per request, total CPU ms per request of the big run)."""
    if not (small.ok and big.ok) or big.requests == small.requests:
        return None, (big.cpu_s / big.requests * 1e3 if big.ok else None)
    return (big.cpu_s - small.cpu_s) / (big.requests - small.requests) * 1e3, big.cpu_s / big.requests * 1e3


def report(results: dict, args, versions: dict) -> str:
    lines = []
    for phase, rows in results.items():
        delay = "zero-delay mock" if phase == "throughput" else \
            f"mock with first-token delay 0, {args.per_token_delay_ms:g} ms per token"
        n = args.requests if phase == "throughput" else args.latency_requests
        lines += ["", f"### {phase}: {delay}; concurrency {args.concurrency}, {n} requests "
                      f"(CPU/request: runs of {n} and {args.warm_requests if phase == 'throughput' else args.latency_warm_requests}), "
                      f"{args.prompt_len}-token prompts, {args.output_len} output tokens, streamed", ""]
        lines.append("| tool | version | completed | req/s | output tok/s | client CPU ms/req | (total/N) "
                     "| vs llmlib | mock CPU ms/req | TTFT ms | ITL ms |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        ours = None
        for tool, (small, big) in rows.items():
            if tool.startswith("llmlib") and big.ok and ours is None:
                ours = per_request(small, big)[0]
        for tool, (small, big) in rows.items():
            if big is None:
                lines.append(f"| {tool} | {_ver(tool, versions)} | not run: {small} | | | | | | | | |")
                continue
            marg, total = per_request(small, big)
            r = big.reported
            ratio = f"{marg / ours:.1f}x" if (marg is not None and ours) else "-"
            name = tool + (f" ({r['loop']})" if "loop" in r else "")
            status = f"{r.get('completed', 0)}/{big.requests}" if big.reported else "failed"
            lines.append(f"| {name} | {_ver(tool, versions)} | {status} | {_fmt(r.get('req_per_s'), '.0f')} "
                         f"| {_fmt(r.get('out_tok_per_s'), '.0f')} | {_fmt(marg, '.3f')} | {_fmt(total, '.3f')} "
                         f"| {ratio} | {_fmt(big.mock_cpu_s / big.requests * 1e3, '.3f')} "
                         f"| {_fmt(r.get('ttft_ms'), '.2f')} | {_fmt(r.get('itl_ms'), '.3f')} |")
            if "perf_analyzer" in big.extra_cpu and "perf_analyzer" in small.extra_cpu:
                pa = (big.extra_cpu["perf_analyzer"] - small.extra_cpu["perf_analyzer"]) / (big.requests - small.requests)
                lines.append(f"| genai-perf: perf_analyzer alone | | | | | {pa * 1e3:.3f} "
                             f"| {big.extra_cpu['perf_analyzer'] / big.requests * 1e3:.3f} | | | | |")
            for run in (small, big):
                if run.error:
                    lines.append(f"|   {tool} ({run.requests} requests) error: {run.error[:300]} |||||||||||")
        if phase == "latency":
            lines += ttft_table(rows, args.concurrency)
    lines += ["", "CPU ms/req: user+sys of the tool's process tree, (run of N - short run) / (N - short N), so "
                  "start-up, tokenizer loading and report writing cancel out; (total/N) keeps them in. TTFT and "
                  "ITL are each tool's own report (means); llmlib's: enqueue -> first token, (end - first token) / "
                  "(tokens - 1). req/s and tok/s: each tool's own figure."]
    return "\n".join(lines)


def ttft_table(rows: dict, concurrency: int) -> list[str]:
    """The latency phase's TTFT by where it is timed from: llmlib's enqueue (what LoadGen sees) and send
    (when its bytes were written), and each peer's own point (genai-perf's: just before its send)."""
    lines = ["", f"TTFT in ms by where it is timed from ('after {concurrency}': the mean over the requests after "
                 f"the first {concurrency}, which reach the mock in one burst (the peers also open their "
                 "connections then); queue: enqueue -> send):", "",
             f"| tool | timed from | mean | p50 | after {concurrency} | queue mean | queue p50 |",
             "|---|---|---|---|---|---|---|"]
    for tool, (small, big) in rows.items():
        if big is None or not big.reported:
            continue
        r = big.reported
        name = tool + (f" ({r['loop']})" if "loop" in r else "")
        if tool.startswith("llmlib"):
            lines.append(f"| {name} | enqueue | {_fmt(r.get('ttft_ms'))} | {_fmt(r.get('ttft_p50_ms'))} "
                         f"| {_fmt(r.get('ttft_steady_ms'))} | {_fmt(r.get('queue_ms'), '.3f')} "
                         f"| {_fmt(r.get('queue_p50_ms'), '.3f')} |")
            lines.append(f"| {name} | send | {_fmt(r.get('send_ttft_ms'))} | {_fmt(r.get('send_ttft_p50_ms'))} "
                         f"| {_fmt(r.get('send_ttft_steady_ms'))} | | |")
        elif "send_ttft_ms" in r:
            lines.append(f"| {name} | send (its own) | {_fmt(r.get('ttft_ms'))} | {_fmt(r.get('send_ttft_p50_ms'))} "
                         f"| {_fmt(r.get('send_ttft_steady_ms'))} | | |")
        else:
            lines.append(f"| {name} | its own | {_fmt(r.get('ttft_ms'))} | - | - | | |")
    return lines


def _ver(tool: str, versions: dict) -> str:
    if tool.startswith("llmlib"):
        return "this tree"
    v = versions.get(tool, {}).get("versions")
    return ", ".join(f"{k} {x}" for k, x in v.items()) if v else "?"


# --- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_own_client":
        url, n, c, plen, olen, uv, out = argv[1:]
        if uv == "1":
            import asyncio

            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # this driver process only
        res = own_client(url, int(n), int(c), int(plen), int(olen), uv == "1")
        Path(out).write_text(json.dumps(res))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="throughput phase: requests per tool")
    p.add_argument("--warm_requests", type=int, default=200,
                   help="throughput phase: the short run whose CPU is subtracted (start-up costs)")
    p.add_argument("--latency_requests", type=int, default=320, help="latency phase: requests per tool")
    p.add_argument("--latency_warm_requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--output_len", type=int, default=128)
    p.add_argument("--per_token_delay_ms", type=float, default=5.0, help="the latency phase's server delay")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of: {', '.join(TOOLS)}")
    p.add_argument("--phases", default="throughput,latency")
    p.add_argument("--mock_processes", type=int, default=1)
    p.add_argument("--timeout_s", type=float, default=900, help="longest run of one tool")
    p.add_argument("--install", action="store_true", help="create the peers' venvs under build/peers and exit")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        p.error(f"--tools: unknown {', '.join(bad)}; expected some of {', '.join(TOOLS)}")
    if args.install:
        status = install(tools)
        return 0 if all(not s.get("error") for s in status.values()) else 1
    versions = json.loads((PEERS_DIR / "versions.json").read_text()) if (PEERS_DIR / "versions.json").exists() else {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for phase in [x.strip() for x in args.phases.split(",") if x.strip()]:
            if phase not in ("throughput", "latency"):
                p.error(f"--phases: unknown {phase!r}; expected throughput and/or latency")
            delay = 0.0 if phase == "throughput" else args.per_token_delay_ms
            counts = (args.warm_requests, args.requests) if phase == "throughput" else \
                (args.latency_warm_requests, args.latency_requests)
            rows = results[phase] = {}
            for tool in tools:
                why = unavailable(tool)
                if why:
                    rows[tool] = (why, None)
                    print(f"[{phase}] {tool}: not run: {why}", flush=True)
                    continue
                runs = []
                for n in counts:
                    mock = Mock(per_token_delay_ms=delay, output_tokens=args.output_len, processes=args.mock_processes)
                    try:
                        runs.append(run_tool(tool, mock, n, args, Path(tmp) / phase / tool / str(n)))
                    finally:
                        mock.stop()
                    r = runs[-1]
                    print(f"[{phase}] {tool} n={n}: ok={r.ok} cpu={r.cpu_s:.2f}s wall={r.wall_s:.1f}s "
                          f"{json.dumps(r.reported)} {r.error[:300]}", flush=True)
                rows[tool] = tuple(runs)
    text = report(results, args, versions)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "args": vars(args), "versions": versions,
            "results": {ph: {t: [r.__dict__ if isinstance(r, Run) else r for r in runs] for t, runs in rows.items()}
                        for ph, rows in results.items()}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
