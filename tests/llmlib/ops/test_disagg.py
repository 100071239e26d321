"""Disaggregated serving: the YAML generate_disagg_config writes (read back by the trtllm_disagg core),
the instance size, MPI rank variables, the ranks dealt to servers, and the world-size checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmlib.config import resolve
from llmlib.cores.trtllm_disagg_core import read_disagg_config
from llmlib.errors import ConfigError
from llmlib.ops.disagg import (MpiRank, build_config, instance_size, mpi_rank, router_spec, run_leader, slots,
                               worker_spec, write_config)

REPO = Path(__file__).resolve().parents[3]


def cfg(tmp_path, **values):
    values.setdefault("trtllm_disagg_config_path", str(tmp_path / "disagg.yaml"))
    values.setdefault("server_log_dir", str(tmp_path / "logs"))
    return resolve(cli={k: str(v) for k, v in values.items()}, env={}, layers=())


def test_yaml_counts_every_gpu_once_and_the_core_reads_it(tmp_path):
    c = cfg(tmp_path, disagg_num_ctx_servers=2, disagg_ctx_tp=2, disagg_num_gen_servers=1, disagg_gen_tp=4,
            disagg_gen_pp=2, disagg_hostname="127.0.0.1", disagg_router_port=9000, disagg_worker_start_port=9000,
            gpu_batch_size=64, disagg_ctx_max_num_tokens=4096)
    out = []
    env = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "12"}
    path = write_config(c, "/models/x", env=env, out=out.append)
    doc = yaml.safe_load(path.read_text())
    assert instance_size(doc) == 2 * 2 + 1 * 8 == 12  # not 2 x ctx GPUs, and the gen GPUs counted
    assert doc["context_servers"] == {"num_instances": 2, "tensor_parallel_size": 2, "pipeline_parallel_size": 1,
                                      "max_batch_size": 64, "max_num_tokens": 4096,
                                      "urls": ["127.0.0.1:9001", "127.0.0.1:9002"]}  # the router's port skipped
    assert doc["generation_servers"]["urls"] == ["127.0.0.1:9003"]
    assert doc["generation_servers"]["max_num_tokens"] == 64
    assert read_disagg_config(path)["router"] == "127.0.0.1:9000"
    assert "instance size 12 = 2 x 2 + 1 x 8" in out[0]


def test_mpi_world_size_must_match_and_only_rank_0_writes(tmp_path):
    c = cfg(tmp_path, disagg_num_gen_servers=2)
    with pytest.raises(ConfigError, match=r"^MPI world size 2 \(OpenMPI\) != instance size 3 = 1 x 1 \+ 2 x 1: run "
                                          r"it under mpirun -n 3$"):
        write_config(c, "/m", env={"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    assert write_config(c, "/m", env={"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"}) is None
    assert not (tmp_path / "disagg.yaml").exists()
    lines = []
    assert write_config(c, "/m", env={}, dry_run=True, out=lines.append) is None
    assert "generation_servers:" in lines[0] and not (tmp_path / "disagg.yaml").exists()


def test_rank_variables_of_openmpi_pmi_and_slurm():
    assert mpi_rank({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) \
        == MpiRank(3, 4, 1, "OpenMPI")
    assert mpi_rank({"SLURM_PROCID": "2", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2"}).source == "Slurm"
    assert mpi_rank({"PMI_RANK": "0", "PMI_SIZE": "2"}).size == 2
    assert mpi_rank({}) == MpiRank(0, 1, 0, "")
    with pytest.raises(ConfigError, match="not integers"):
        mpi_rank({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"})


def test_ranks_are_dealt_context_first_and_the_first_rank_of_each_server_starts_it(tmp_path, tiny_benchmark):
    c = cfg(tmp_path, disagg_ctx_tp=2, disagg_num_gen_servers=2, trtllm_model_path="/m",
            disagg_hostname="127.0.0.1")
    write_config(c, "/m", env={})
    doc = yaml.safe_load((tmp_path / "disagg.yaml").read_text())
    assert [(s.role[:3], s.index, s.first_rank, s.ranks) for s in slots(doc)] == \
        [("con", 0, 0, 2), ("gen", 0, 2, 1), ("gen", 1, 3, 1)]
    me = mpi_rank({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    slot, spec = worker_spec(c, tiny_benchmark, "Offline", doc, me, root=REPO, gpus=4)
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0,1" and spec.port == 8001 and spec.name == "context 0"
    argv = list(spec.argv)
    assert argv[argv.index("--tp_size") + 1] == "2"
    opts = yaml.safe_load(next(iter(spec.files.values())))
    assert opts["disable_overlap_scheduler"] is True and opts["cache_transceiver_config"] == {"backend": "default"}
    second = mpi_rank({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    assert worker_spec(c, tiny_benchmark, "Offline", doc, second, root=REPO, gpus=4)[1] is None
    last = mpi_rank({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3"})
    slot, spec = worker_spec(c, tiny_benchmark, "Offline", doc, last, root=REPO, gpus=4)
    assert (slot.role, slot.index, spec.env["CUDA_VISIBLE_DEVICES"], spec.port) == ("generation_servers", 1, "3", 8003)
    wrong = mpi_rank({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match=r"MPI world size 2 \(OpenMPI\) != the instance size 4 = 1 x 2 \+ 2 x 1"):
        worker_spec(c, tiny_benchmark, "Offline", doc, wrong, root=REPO, gpus=4)


def test_leader_runs_alone_and_fills_the_router_template(tmp_path):
    c = cfg(tmp_path, disagg_router_command="router --c {config} --p {port} --h {host}")
    write_config(c, "/m", env={})
    doc = yaml.safe_load((tmp_path / "disagg.yaml").read_text())
    assert router_spec(c, doc, root=REPO).argv == ("router", "--c", str(tmp_path / "disagg.yaml"), "--p", "8000",
                                                   "--h", "localhost")
    assert cfg(tmp_path).disagg_router_command.startswith("trtllm-serve disaggregated -c {config}")
    with pytest.raises(ConfigError, match=r"the leader runs alone, under mpirun -n 1"):
        run_leader(c, root=REPO, env={"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})


def test_missing_yaml_path_is_named(tmp_path):
    c = resolve(cli={}, env={}, layers=())
    with pytest.raises(ConfigError, match=r"--trtllm_disagg_config_path \(env DISAGG_CONFIG_PATH\) is empty"):
        build_config(c, "/m") and write_config(c, "/m", env={})


def test_cli_launch_type_is_checked_and_worker_dry_run_prints_its_server(tmp_path):
    import os
    import subprocess
    import sys

    yaml_path = tmp_path / "d.yaml"
    base = [sys.executable, "-m", "llmlib.ops"]
    args = ["--benchmarks=tiny", "--scenarios=Offline", "--core_type=trtllm_disagg",
            f"--trtllm_disagg_config_path={yaml_path}", "--server_kind=llama-cpp", "--trtllm_model_path=/m.gguf",
            "--disagg_num_gen_servers=2"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)
    gen = subprocess.run([*base, "generate_disagg_config", *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert gen.returncode == 0 and yaml_path.is_file(), gen.stderr
    bad = subprocess.run([*base, "run_llm_server", *args], cwd=REPO, env=dict(env, MLPERF_DISAGG_LAUNCH_TYPE="boss"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "MLPERF_DISAGG_LAUNCH_TYPE='boss': expected worker" in bad.stderr
    dry = subprocess.run([*base, "run_llm_server", *args, "--dry_run"], cwd=REPO, capture_output=True, text=True,
                         env=dict(env, MLPERF_DISAGG_LAUNCH_TYPE="worker", OMPI_COMM_WORLD_RANK="2",
                                  OMPI_COMM_WORLD_SIZE="3"), timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "# rank 2/3: generation_servers 1 (localhost:8003)" in dry.stdout and "--port 8003" in dry.stdout
    alone = subprocess.run([*base, "run_llm_server", *args, "--dry_run"], cwd=REPO, capture_output=True, text=True,
                           env=dict(env, MLPERF_DISAGG_LAUNCH_TYPE="worker"), timeout=60)
    assert alone.returncode == 2 and "MPI world size 1 (no MPI launcher) != the instance size 3" in alone.stderr
