"""The `hf` core: a real worker process with a small random Llama, driven through the LLMServer."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmlib.benchmarks import load_benchmark  # noqa: E402
from llmlib.config import resolve  # noqa: E402
from llmlib.cores.base import Request  # noqa: E402
from llmlib.cores.hf_core import HFCore  # noqa: E402
from llmlib.errors import BackendError, ConfigError  # noqa: E402
from llmlib.server import LLMServer  # noqa: E402
from llmlib.warmup import WarmupManager  # noqa: E402
from llmlib.factory import build_core  # noqa: E402
from llmlib.generation import GenerationParams  # noqa: E402
from tests.faults.oom_model import oom_checkpoint  # noqa: E402

EOS = 2
pytestmark = pytest.mark.slow  # each test starts worker processes (torch import, model load)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30)
    path = tmp_path_factory.mktemp("randllama")
    m.save_pretrained(path)
    return path, m


class Target:
    def __init__(self):
        self.first, self.done, self.failed = {}, {}, {}

    def on_first_token(self, rid, tokens):
        if len(tokens):  # (empty: a streaming request that failed first)
            self.first[rid] = int(tokens[0])

    def on_complete(self, rid, tokens, n):
        assert rid not in self.done and rid not in self.failed
        assert tokens.dtype == np.uint32 and len(tokens) == n
        self.done[rid] = tokens.tolist()

    def on_error(self, rid, error):
        assert rid not in self.done and rid not in self.failed
        self.failed[rid] = str(error)


def make_server(model_dir, workers=1, **cli):
    cli = {"hf_model_path": str(model_dir), "hf_num_workers": str(workers), "hf_threads_per_worker": "1",
           "hf_max_batch_size": "4", **{k: str(v) for k, v in cli.items()}}
    config = resolve(cli=cli, env={}, layers=())
    server = LLMServer(policy="load_balancing", request_timeout_s=60)
    cores = [build_core(HFCore, config, load_benchmark("tiny"), None, rank=r, sink=server) for r in range(workers)]
    server.attach(cores)
    WarmupManager(server, health_timeout_s=120, backoff_s=0.1).health_check()
    return server


def prompts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 300, size=int(rng.integers(3, 30))).astype(np.int32) for _ in range(n)]


def greedy(model, prompt, max_new):
    ids = torch.tensor(prompt[None].astype(np.int64))
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=EOS, pad_token_id=0)[0, len(prompt):].tolist()
    return out[: out.index(EOS)] if EOS in out else out


def requests_for(ps, max_new=12, streaming=True, start=1):
    params = GenerationParams(max_new_tokens=max_new, eos_token_id=EOS, stop_token_ids=(EOS,))
    return [Request(start + i, p, params, streaming, i) for i, p in enumerate(ps)]


def test_two_worker_processes_match_generate(model_dir):
    path, model = model_dir
    server = make_server(path, workers=2)
    try:
        target = Target()
        ps = prompts(16)
        server.submit(requests_for(ps), target)
        server.flush(120)
        assert not target.failed
        for i, p in enumerate(ps):
            assert target.done[1 + i] == greedy(model, p, 12)
            if target.done[1 + i]:
                assert target.first[1 + i] == target.done[1 + i][0]
        stats = server.core_stats()
        assert all(s["completed"] > 0 for s in stats)  # both processes served
        assert {c.info["threads"] for c in server.cores} == {1}
    finally:
        server.stop()


def test_simulated_out_of_memory_fails_requests_not_the_run(model_dir, tmp_path):
    path, model = model_dir
    server = make_server(oom_checkpoint(path, tmp_path / "oom", every=25), hf_trust_remote_code="true")
    try:
        target = Target()
        ps = prompts(12, seed=3)
        server.submit(requests_for(ps), target)
        server.flush(120)
        assert len(target.done) + len(target.failed) == 12
        assert target.failed and target.done
        assert all("out of memory" in msg for msg in target.failed.values())
        for rid, tokens in target.done.items():
            assert tokens == greedy(model, ps[rid - 1], 12)
    finally:
        server.stop()


def test_a_killed_worker_fails_what_it_held_and_refuses_more(model_dir):
    path, _ = model_dir
    server = make_server(path)
    core = server.cores[0]
    try:
        target = Target()
        server.submit(requests_for(prompts(4), max_new=400), target)
        os.kill(core._proc.pid, signal.SIGKILL)
        server.flush(30)
        assert len(target.failed) == 4 and all("worker" in m for m in target.failed.values())
        server.submit(requests_for(prompts(1), start=100), target)
        server.flush(5)
        assert "worker" in target.failed[100]
        with pytest.raises(BackendError):
            core.health_check()
    finally:
        server.stop()


def test_health_check_says_loading_until_ready_and_stop_is_clean(model_dir):
    path, _ = model_dir
    config = resolve(cli={"hf_model_path": str(path), "hf_threads_per_worker": "1"}, env={}, layers=())
    server = LLMServer()
    core = build_core(HFCore, config, load_benchmark("tiny"), None, rank=0, sink=server)
    server.attach([core])
    with pytest.raises(BackendError, match="loading"):
        core.health_check()
    deadline = time.monotonic() + 120
    while not core._ready.is_set() and time.monotonic() < deadline:
        core._ready.wait(0.5)
    core.health_check()
    server.stop()
    assert not core._proc.is_alive()


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    config = resolve(cli={"hf_model_path": str(tmp_path)}, env={}, layers=())
    with pytest.raises(ConfigError, match="config.json"):
        build_core(HFCore, config, load_benchmark("tiny"), None, rank=0, sink=LLMServer())


class ChunkTarget(Target):
    def __init__(self):
        super().__init__()
        self.chunks: dict[int, list[list[int]]] = {}

    def on_chunk(self, rid, tokens, n):
        assert rid not in self.done and len(tokens) == n
        self.chunks.setdefault(rid, []).append(tokens.tolist())


def test_chunks_cross_the_pipe_as_the_engine_steps(model_dir):
    """Requests made with `chunks=True` get the output so far after every engine step (one token more
    each time, prefixes of the final output); the others get none; outputs stay those of `generate`."""
    path, model = model_dir
    server = make_server(path)
    try:
        target = ChunkTarget()
        ps = prompts(8, seed=5)
        reqs = requests_for(ps, max_new=16)
        for r in reqs[::2]:
            r.chunks = True
        server.submit(reqs, target)
        server.flush(120)
        assert not target.failed
        for i, p in enumerate(ps):
            rid, out = 1 + i, target.done[1 + i]
            assert out == greedy(model, p, 16)
            if i % 2:
                assert rid not in target.chunks
            else:
                assert target.chunks.get(rid, []) == [out[:k] for k in range(1, len(out) + 1)]
        assert not server.cores[0]._streams  # nothing kept after the outcomes
    finally:
        server.stop()


def test_cancel_stops_the_engines_sequence(model_dir):
    """A cancelled chunked request leaves the engine's batch at its next step: the worker answers
    "cancelled" for it long before the 480 tokens it was asked for, and never completes it."""
    path, _ = model_dir
    server = make_server(path)
    core = server.cores[0]
    late: list[tuple[int, str]] = []
    fail, complete = core._fail, core._complete
    core._fail = lambda rid, err: (late.append((rid, getattr(err, "cause", str(err)))), fail(rid, err))[1]
    core._complete = lambda rid, tokens, n: (late.append((rid, "complete")), complete(rid, tokens, n))[1]
    try:
        target = ChunkTarget()
        params = GenerationParams(max_new_tokens=480, eos_token_id=EOS, stop_token_ids=())  # (prompt + 480 < 512)
        req = Request(1, prompts(1, seed=9)[0], params, True, 0, chunks=True)
        server.submit([req], target)
        deadline = time.monotonic() + 60
        while len(target.chunks.get(1, [])) < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(target.chunks.get(1, [])) >= 3
        server.cancel(1, "test cancel")
        server.flush(10)
        assert "test cancel" in target.failed[1]
        deadline = time.monotonic() + 30
        while (1, "cancelled") not in late and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (1, "cancelled") in late and (1, "complete") not in late  # the engine dropped it
        assert len(target.chunks[1]) < 480 and server.counts.late_after_cancel == 1
    finally:
        server.stop()


@pytest.mark.loadgen
def test_dynasor_runs_through_loadgen_on_the_hf_core(model_dir, tmp_path):
    """`--scaffolding=dynasor` on `--core_type=hf` (a random Llama over math-tiny's character tokens):
    the stream task steps by 4 tokens through the chunks, so probes run beside it; every sample is
    accounted for and the streams' inter-token statistics reach the summary."""
    from llmlib.cli import resolve_for
    from llmlib.harness import run_scenario

    path, _ = model_dir
    cli = {"core_type": "hf", "hf_model_path": str(path), "hf_threads_per_worker": "1", "hf_max_batch_size": "16",
           "tokenizer_path": "char", "scaffolding": "dynasor:interval=4,certainty=2,probe_tokens=8",
           "server_target_qps": "8", "min_query_count": "48", "min_duration_ms": "500", "warmup_queries": "0",
           "show_progress": "false", "results_dir": str(tmp_path)}
    config, benchmark = resolve_for(cli, "math-tiny", "Server", env={})
    o = run_scenario(config, benchmark, "Server")
    assert o.issued >= 48 and o.issued == o.completed and o.failed == 0 and o.lost == 0, (o.errors, o.loadgen)
    assert o.scaffolding["method"] == "dynasor"
    # a probe per 4 streamed tokens: with only a first token and the whole output there would be one
    # stream step and no probe at all (at most the stream itself per sample)
    assert o.scaffolding["sub_requests_per_sample"] >= 3
    assert o.token_stats and o.token_stats["requests"] >= o.issued // 2  # (a random model may stop at once)
    text = (tmp_path / "local" / "math-tiny" / "Server" / "performance" / "summary.txt").read_text()
    assert "dynasor" in text and "inter-token latency" in text


@pytest.mark.loadgen
def test_token_stats_on_the_hf_core(tmp_path):
    """`--token_stats=true` on the project's tiny model: LoadGen's requests get their chunks through the
    worker's pipe, so the summary has inter-token figures for hf too."""
    from pathlib import Path

    from llmlib.cli import resolve_for
    from llmlib.harness import run_scenario

    cli = {"core_type": "hf", "hf_threads_per_worker": "1", "token_stats": "true", "server_target_qps": "4",
           "min_query_count": "24", "min_duration_ms": "500", "warmup_queries": "0", "show_progress": "false",
           "results_dir": str(tmp_path)}
    config, benchmark = resolve_for(cli, "tiny", "Server", env={})
    o = run_scenario(config, benchmark, "Server")
    assert o.issued >= 24 and o.issued == o.completed and o.failed == 0 and o.lost == 0, (o.errors, o.loadgen)
    t = o.token_stats
    assert t and t["requests"] >= o.issued // 2 and 0 < t["itl_p50_ms"] <= t["max_gap_p99_ms"]
    assert "inter-token latency" in (Path(o.outdir) / "summary.txt").read_text()
