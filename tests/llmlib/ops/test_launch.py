"""run_llm_server: the command lines of each server kind (unit), the input checks, and the launch /
readiness / failure / shutdown machinery for real with the project's mock server (a process each)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmlib.config import resolve
from llmlib.errors import ConfigError, OpsError
from llmlib.ops.launch import Launcher, check_ports_free, plan_servers, probe

REPO = Path(__file__).resolve().parents[3]
MOCK = f"{sys.executable} -m tests.servers.mock_openai_server --host {{host}} --port {{port}}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cfg(**values):
    return resolve(cli={k: str(v) for k, v in values.items()}, env={}, layers=())


def specs(tiny_benchmark, tmp_path, gpus=0, scenario="Server", **values):
    values.setdefault("server_log_dir", str(tmp_path / "logs"))
    return plan_servers(cfg(**values), tiny_benchmark, scenario, root=REPO, gpus=gpus, env={})


def test_trtllm_serve_one_per_rank_with_device_slices_and_extra_options(tiny_benchmark, tmp_path):
    s = specs(tiny_benchmark, tmp_path, gpus=4, tensor_parallelism=2, trtllm_model_path="/m",
              trtllm_server_urls="127.0.0.1:9000,127.0.0.1:9001", moe_expert_parallelism=2,
              trtllm_runtime_flags="kvcache_free_gpu_mem_frac:0.9,max_num_tokens:4096,enable_chunked_context:true")
    assert [x.env["CUDA_VISIBLE_DEVICES"] for x in s] == ["0,1", "2,3"]
    argv = list(s[1].argv)
    assert argv[:6] == ["trtllm-serve", "/m", "--host", "127.0.0.1", "--port", "9001"]
    assert argv[argv.index("--tp_size") + 1] == "2" and argv[argv.index("--ep_size") + 1] == "2"
    assert argv[argv.index("--max_num_tokens") + 1] == "4096" and s[1].health_path == "/health"
    opts = yaml.safe_load(s[1].files[Path(argv[argv.index("--extra_llm_api_options") + 1])])
    assert opts["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": False}
    assert opts["enable_chunked_prefill"] is True and opts["max_batch_size"] == 256


def test_vllm_and_sglang_turn_prefix_caching_off(tiny_benchmark, tmp_path):
    v = specs(tiny_benchmark, tmp_path, gpus=1, server_kind="vllm", trtllm_model_path="/m")[0].argv
    assert v[:3] == ("vllm", "serve", "/m") and "--no-enable-prefix-caching" in v
    assert v[v.index("--max-num-seqs") + 1] == "256" and v[v.index("--tensor-parallel-size") + 1] == "1"
    g = specs(tiny_benchmark, tmp_path, gpus=2, server_kind="sglang", trtllm_model_path="/m",
              tensor_parallelism=2)[0].argv
    assert "--disable-radix-cache" in g and g[g.index("--tp-size") + 1] == "2"
    assert g[g.index("--model-path") + 1] == "/m"


def test_triton_gets_a_model_repository_for_the_trtllm_backend(tiny_benchmark, tmp_path):
    s = specs(tiny_benchmark, tmp_path, gpus=2, server_kind="triton", engine_dir="/engines/e",
              triton_server_urls="127.0.0.1:8001,127.0.0.1:8002", triton_num_models_per_server=2)
    assert [x.ports for x in s] == [(8001, 8101, 8201), (8002, 8102, 8202)]
    assert s[0].argv[0] == "tritonserver" and "--grpc-port=8001" in s[0].argv and s[0].health_port == 8101
    pbtxt = {p.parent.name: t for p, t in s[0].files.items() if p.name == "config.pbtxt"}
    assert set(pbtxt) == {"tensorrt_llm_0", "tensorrt_llm_1"}
    text = pbtxt["tensorrt_llm_0"]
    assert 'backend: "tensorrtllm"' in text and "decoupled: true" in text
    assert 'key: "gpt_model_path" value: { string_value: "/engines/e" }' in text
    assert 'key: "enable_kv_cache_reuse" value: { string_value: "false" }' in text


def test_llama_cpp_and_custom_commands(tiny_benchmark, tmp_path):
    s = specs(tiny_benchmark, tmp_path, server_kind="llama-cpp", trtllm_model_path="/m.gguf",
              trtllm_server_urls="127.0.0.1:7001")[0]
    assert s.argv[1:3] == ("-m", "llama_cpp.server") and s.argv[s.argv.index("--model") + 1] == "/m.gguf"
    assert s.argv[s.argv.index("--last_n_tokens_size") + 1] == "0" and s.health_path == "/v1/models"
    c = specs(tiny_benchmark, tmp_path, server_kind="custom", server_command="srv --p {port} --r {rank}",
              trtllm_server_urls="127.0.0.1:7001,127.0.0.1:7002")
    assert [x.argv for x in c] == [("srv", "--p", "7001", "--r", "0"), ("srv", "--p", "7002", "--r", "1")]


@pytest.mark.parametrize("values,gpus,message", [
    ({"tensor_parallelism": 3}, 4, "= 3 GPUs per server does not divide the 4 GPU(s)"),
    ({"trtllm_server_urls": "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"}, 2, "3 server URL(s) but 2 GPU(s) / (1 x 1) = 2"),
    ({}, 0, "--server_kind=trtllm-serve needs GPUs and none are visible"),
    ({"num_gpus": 8}, 4, "--num_gpus=8 but 4 GPU(s) are visible"),
    ({"trtllm_server_urls": "10.1.2.3:8000"}, 1, "'10.1.2.3:8000' is not this machine"),
    ({"server_kind": "custom"}, 0, "--server_kind=custom needs --server_command"),
    ({"server_kind": "custom", "server_command": "x {nope}"}, 0, "'nope' is not one of"),
    ({"tensor_parallelism": 2, "moe_expert_parallelism": 3}, 2, "--moe_expert_parallelism=3 does not divide"),
])
def test_input_checks_are_one_line(tiny_benchmark, tmp_path, values, gpus, message):
    with pytest.raises(ConfigError) as err:
        specs(tiny_benchmark, tmp_path, gpus=gpus, **values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_port_in_use_is_refused_before_anything_starts(tiny_benchmark, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = specs(tiny_benchmark, tmp_path, server_kind="custom", server_command=MOCK,
                  trtllm_server_urls=f"127.0.0.1:{free_port()},127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=rf"^port {port} on 127.0.0.1 \(server 1\) is in use"):
            check_ports_free(s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_launcher_starts_waits_and_stops_real_mock_servers(tiny_benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    urls = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    s = specs(tiny_benchmark, tmp_path, server_kind="custom", trtllm_server_urls=urls,
              server_command=MOCK + " --startup_delay_s 0.5")
    with Launcher(s, out=lambda _: None) as launcher:
        launcher.wait_ready(30)
        assert all(probe(x.host, x.port, "/health") for x in s)
        pids = [p.pid for p in launcher.procs]
    assert not any(_alive(p) for p in pids)
    assert s[0].log_path.read_text().startswith("# ")  # the command heads its log


def test_a_server_that_exits_is_named_with_its_log_tail(tiny_benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    bad = "sh -c 'if [ {rank} = 1 ]; then echo boom: cannot load model >&2; exit 3; fi; exec " + MOCK + "'"
    s = specs(tiny_benchmark, tmp_path, server_kind="custom", server_command=bad,
              trtllm_server_urls=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
    with Launcher(s, out=lambda _: None) as launcher:
        with pytest.raises(OpsError) as err:
            launcher.wait_ready(30)
        pids = [p.pid for p in launcher.procs]
    assert f"server 1 ({s[1].url}) exited with code 3 before it was ready" in str(err.value)
    assert "| boom: cannot load model" in str(err.value)
    assert not any(_alive(p) for p in pids)


def test_a_server_that_never_answers_times_out_by_name(tiny_benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    s = specs(tiny_benchmark, tmp_path, server_kind="custom", server_command="sleep 60",
              trtllm_server_urls=f"127.0.0.1:{free_port()}")
    with Launcher(s, out=lambda _: None) as launcher:
        with pytest.raises(OpsError, match=r"not ready within 1s \(--server_ready_timeout_s\): server 0; GET /health"):
            launcher.wait_ready(1)
        pid = launcher.procs[0].pid
    assert not _alive(pid)


def _run_server_cli(tmp_path, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "llmlib.ops", "run_llm_server", "--benchmarks=tiny",
                             "--scenarios=Offline", f"--server_log_dir={tmp_path}", *args], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_line(proc, needle: str, timeout_s: float = 60.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    return lines


def _server_pids(lines: list[str]) -> list[int]:
    return [int(ln.split("pid ")[1].split()[0]) for ln in lines if ": pid " in ln]


def test_cli_ctrl_c_stops_every_server(tmp_path):
    """SIGINT to the launcher's whole process group, as a terminal's Ctrl-C: exit 130, nothing left."""
    urls = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    proc = _run_server_cli(tmp_path, "--server_kind=custom", f"--server_command={MOCK}", f"--trtllm_server_urls={urls}")
    try:
        lines = _wait_line(proc, "server(s) ready")
        assert "all 2 server(s) ready" in lines[-1], "".join(lines)
        pids = _server_pids(lines)
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "SIGINT: stopped 2 server(s)" in rest
    assert not any(_alive(p) for p in pids)


def test_cli_killed_launcher_takes_its_servers_along(tmp_path):
    """Even a SIGKILLed launcher leaves no server behind (PR_SET_PDEATHSIG)."""
    proc = _run_server_cli(tmp_path, "--server_kind=custom", f"--server_command={MOCK}",
                           f"--trtllm_server_urls=127.0.0.1:{free_port()}")
    try:
        lines = _wait_line(proc, "server(s) ready")
        pids = _server_pids(lines)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pids and not any(_alive(p) for p in pids)


def test_cli_one_failing_server_exits_1_with_a_clear_message(tmp_path):
    bad = "sh -c 'if [ {rank} = 1 ]; then echo boom >&2; exit 3; fi; exec " + MOCK + "'"
    urls = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    proc = _run_server_cli(tmp_path, "--server_kind=custom", f"--server_command={bad}", f"--trtllm_server_urls={urls}")
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1, out
    assert "error: server 1" in out and "exited with code 3 before it was ready" in out and "| boom" in out
    assert not any(_alive(p) for p in _server_pids(out.splitlines()))


@pytest.mark.loadgen
@pytest.mark.timeout(180)
def test_run_harness_launch_servers_starts_and_stops_them_around_a_valid_run(tmp_path):
    """`--launch_servers`: the harness starts two mock servers, runs Offline against them, stops them."""
    urls = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "llmlib", "--benchmarks=tiny", "--scenarios=Offline", "--core_type=trtllm_endpoint",
         "--launch_servers", "--server_kind=custom", f"--server_command={MOCK} --first_token_delay_ms 1200",
         f"--trtllm_server_urls={urls}", f"--server_log_dir={tmp_path / 'logs'}", f"--results_dir={tmp_path}",
         "--show_progress=false", "--min_duration_ms=1000", "--min_query_count=16", "--offline_expected_qps=1",
         "--warmup_queries=1"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = __import__("json").loads((tmp_path / "local" / "tiny" / "Offline" / "performance" / "summary.json").read_text())
    assert s["validity"] == "VALID" and s["failed"] == 0 and s["issued"] == s["completed"] >= 16
    assert len(s["core_stats"]) == 2
    pids = [int(ln.split("pid ")[1].split()[0]) for ln in proc.stderr.splitlines() if ": pid " in ln]
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_missing_checkpoint_or_engine_folders_are_named(tiny_benchmark, tmp_path):
    from llmlib.ops.launch import check_model

    with pytest.raises(ConfigError, match=r"^checkpoint /no/such/model \(--trtllm_model_path\) does not exist$"):
        check_model(cfg(trtllm_model_path="/no/such/model"), tiny_benchmark, "Offline", root=REPO)
    check_model(cfg(trtllm_model_path="meta-llama/Llama-3.1-8B-Instruct"), tiny_benchmark, "Offline", root=REPO)
    with pytest.raises(ConfigError, match=r"engine folder .*/e \(--engine_dir\) holds no config.json: build it with"):
        check_model(cfg(server_kind="triton", engine_dir=str(tmp_path / "e")), tiny_benchmark, "Offline", root=REPO)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text("{}")
    check_model(cfg(server_kind="triton", engine_dir=str(tmp_path / "e")), tiny_benchmark, "Offline", root=REPO)
