"""Ops for real: `run_llm_server` starting llama-cpp-python servers (stopped by Ctrl-C with nothing left),
and the disaggregated flow under OpenMPI on loopback: generate_disagg_config under mpirun, llama.cpp
workers under `MLPERF_DISAGG_LAUNCH_TYPE=worker mpirun -n 2`, the leader under `mpirun -n 1` starting a
stand-in router (the `disagg_router` fixture's command), and the harness's trtllm_disagg core driving it
to a VALID LoadGen run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from llmlib.tiny_gguf import ensure_tiny_gguf
from tests.servers.llamacpp import server_python

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_ports(n: int) -> int:
    """The first of n consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no run of free ports")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line holds `marker` (the test's own folder): what the flow left behind."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and _alive(int(entry.name)):
            out.append(int(entry.name))
    return out


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    if os.geteuid() == 0:  # OpenMPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _start(argv, log: Path, **env) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen(argv, cwd=REPO, env=_env(**env), stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_for(log: Path, needle: str, procs, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if needle in text:
            return text
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in {log}:\n" + (log.read_text() if log.exists() else ""))


def _ctrl_c(proc: subprocess.Popen, timeout_s: float = 40) -> int:
    """SIGINT to the process group, as a terminal's Ctrl-C; SIGKILL if it does not end."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise


@pytest.fixture(scope="module")
def gguf() -> Path:
    server_python()  # fails the test when `make test_servers` did not build the server venv
    return ensure_tiny_gguf()


@pytest.fixture(scope="module")
def mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        pytest.fail("mpirun is missing: `make test_servers` installs OpenMPI (scripts/setup_openmpi.sh)", pytrace=False)
    return path


@pytest.fixture
def disagg_router() -> str:
    """The router command the leader starts: the stand-in for `trtllm-serve disaggregated`."""
    return f"{sys.executable} -m tests.servers.disagg_router --config {{config}} --host {{host}} --port {{port}}"


def test_run_llm_server_starts_llama_cpp_servers_and_ctrl_c_stops_them(gguf, tmp_path):
    base = free_ports(2)
    urls = f"127.0.0.1:{base},127.0.0.1:{base + 1}"
    log = tmp_path / "launcher.out"
    proc = _start([sys.executable, "-m", "llmlib.ops", "run_llm_server", "--benchmarks=tiny", "--scenarios=Offline",
                   "--server_kind=llama-cpp", f"--trtllm_server_urls={urls}", f"--server_log_dir={tmp_path}",
                   f"--trtllm_model_path={gguf}", "--server_ready_timeout_s=120"], log)
    try:
        text = _wait_for(log, "all 2 server(s) ready", [proc], 150)
        pids = [int(ln.split("pid ")[1].split()[0]) for ln in text.splitlines() if ": pid " in ln]
        for port in (base, base + 1):
            body = json.dumps({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"Content-Type": "application/json"})
            with _DIRECT.open(req, timeout=60) as resp:
                assert resp.status == 200 and json.loads(resp.read())["usage"]["completion_tokens"] >= 1
    finally:
        rc = _ctrl_c(proc)
    assert rc == 130, log.read_text()
    assert "SIGINT: stopped 2 server(s)" in log.read_text()
    assert len(pids) == 2 and not any(_alive(p) for p in pids)
    assert "llama_cpp.server" in (tmp_path / "server_0.log").read_text().splitlines()[0]


def test_disaggregated_flow_under_mpirun_to_a_valid_run(gguf, mpirun, disagg_router, tmp_path):
    base = free_ports(3)
    yaml_path = tmp_path / "disagg.yaml"
    args = ["--benchmarks=tiny", "--scenarios=Offline", "--core_type=trtllm_disagg",
            f"--trtllm_disagg_config_path={yaml_path}", "--server_kind=llama-cpp", f"--trtllm_model_path={gguf}",
            "--disagg_hostname=127.0.0.1", f"--disagg_router_port={base}", f"--disagg_worker_start_port={base + 1}",
            f"--server_log_dir={tmp_path / 'logs'}", "--server_ready_timeout_s=150"]
    ops = [sys.executable, "-m", "llmlib.ops"]
    # 1. the YAML, under mpirun -n <instance size>; a wrong world size is refused in one line
    gen = subprocess.run([mpirun, "-n", "2", "--oversubscribe", *ops, "generate_disagg_config", *args], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert "instance size 2 = 1 x 1 + 1 x 1" in gen.stdout and yaml_path.is_file()
    wrong = subprocess.run([mpirun, "-n", "3", "--oversubscribe", *ops, "run_llm_server", *args], cwd=REPO,
                           env=_env(MLPERF_DISAGG_LAUNCH_TYPE="worker"), capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "MPI world size 3 (OpenMPI) != the instance size 2" in wrong.stderr
    # 2. workers, 3. the leader (which waits for them), in the background
    workers = _start([mpirun, "-n", "2", "--oversubscribe", *ops, "run_llm_server", *args], tmp_path / "workers.out",
                     MLPERF_DISAGG_LAUNCH_TYPE="worker")
    leader = _start([mpirun, "-n", "1", *ops, "run_llm_server", *args, f"--disagg_router_command={disagg_router}"],
                    tmp_path / "leader.out", MLPERF_DISAGG_LAUNCH_TYPE="leader")
    try:
        _wait_for(tmp_path / "leader.out", "router ready", [workers, leader], 200)
        # 4. the harness drives the router
        run = subprocess.run([sys.executable, "-m", "llmlib", *[a for a in args if not a.startswith(("--server_",
                              "--disagg_", "--trtllm_model_path"))],
                              f"--results_dir={tmp_path / 'results'}", "--show_progress=false",
                              "--trtllm_prompt_text_column=input", "--offline_expected_qps=20",
                              "--min_duration_ms=3000", "--min_query_count=40", "--warmup_queries=2"],
                             cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        with _DIRECT.open(f"http://127.0.0.1:{base}/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
    finally:
        rc_leader = _ctrl_c(leader)
        rc_workers = _ctrl_c(workers)
    s = json.loads((tmp_path / "results" / "local" / "tiny" / "Offline" / "performance" / "summary.json").read_text())
    assert s["core_type"] == "trtllm_disagg" and s["validity"] == "VALID", s["loadgen"]
    assert s["failed"] == 0 and s["issued"] == s["completed"] > 0
    assert stats["ctx"] == stats["gen"] >= s["completed"]  # every request went through both pools
    assert "rank 0/2: context 0: ready" in (tmp_path / "workers.out").read_text()
    assert "rank 1/2: generation 0: ready" in (tmp_path / "workers.out").read_text()
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(tmp_path)) == [], (rc_leader, rc_workers)


def test_launch_servers_with_a_real_tritonserver_to_a_valid_run(tmp_path):
    """run_harness --launch_servers starting the tests' tritonserver (PyTriton's, emulating the TensorRT-LLM
    backend) as a custom command, ready by gRPC ModelReady, driven by the triton_grpc core, then stopped:
    nothing of it (tritonserver included) is left."""
    from tests.servers.triton import SERVER_SCRIPT, SERVER_VENV

    python = SERVER_VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{python} is missing: build it with `make test_servers`", pytrace=False)
    port = free_ports(1)
    ws = Path(tempfile.mkdtemp(prefix="ops-tr-", dir="/tmp"))  # short: PyTriton binds unix sockets in it
    command = (f"{python} {SERVER_SCRIPT} --grpc_port {{port}} --output_tokens 8 --first_token_delay_ms 100 "
               f"--per_token_delay_ms 150 --workspace {ws}")
    run = subprocess.run(
        [sys.executable, "-m", "llmlib", "--benchmarks=tiny-synthetic", "--scenarios=Offline",
         "--core_type=triton_grpc", "--launch_servers", "--server_kind=custom", f"--server_command={command}",
         "--server_health_path=grpc:tensorrt_llm", f"--triton_server_urls=127.0.0.1:{port}",
         "--server_ready_timeout_s=150",
         f"--server_log_dir={tmp_path / 'logs'}", f"--results_dir={tmp_path / 'results'}", "--show_progress=false",
         "--offline_expected_qps=200", "--min_duration_ms=1000", "--min_query_count=256", "--warmup_queries=2"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads((tmp_path / "results" / "local" / "tiny-synthetic" / "Offline" / "performance" /
                    "summary.json").read_text())
    assert s["core_type"] == "triton_grpc" and s["validity"] == "VALID" and s["failed"] == 0
    assert s["issued"] == s["completed"] >= 256
    assert "server 0: ready" in run.stderr
    deadline = time.monotonic() + 20
    while (_processes_mentioning(str(tmp_path)) or _processes_mentioning(str(ws))) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_mentioning(str(tmp_path)) + _processes_mentioning(str(ws))
    shutil.rmtree(ws, ignore_errors=True)
    assert left == []
