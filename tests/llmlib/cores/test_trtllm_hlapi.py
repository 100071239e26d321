"""Contract tests of the `trtllm_hlapi` core against the fake tensorrt_llm (tests/fakes): exactly one
outcome per request under mixed success / error / cancel, streaming, the LLM arguments built from the
runtime flags, per-rank devices, the core's own event loop, flush, stop, health and the missing package."""

from __future__ import annotations

import dataclasses
import asyncio
import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from llmlib.config import resolve
from llmlib.cores.base import Request
from llmlib.cores.trtllm_hlapi_core import TrtllmHlapiCore
from llmlib.errors import BackendError, ConfigError, CoreUnavailableError, FlushTimeoutError
from llmlib.factory import build_core
from llmlib.benchmarks import load_benchmark
from llmlib.generation import generation_params
from tests.outcomes import wait_idle

pytestmark = pytest.mark.timeout(20)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake(trtllm_fake):
    """The shared fake tensorrt_llm, generating quickly."""
    trtllm_fake.CONTROL.token_delay_s = 0.0002
    return trtllm_fake


@pytest.fixture
def make_core(fake, tmp_path, tiny_benchmark):
    """make_core(sink, rank=0, **cli) -> a TrtllmHlapiCore on the fake, stopped after the test."""
    made = []

    def make(sink, *, rank=0, **cli):
        values = {"trtllm_model_path": str(tmp_path), "num_gpus": 1, **cli}
        config = resolve(cli=values, env={}, layers=())
        core = build_core(TrtllmHlapiCore, config, tiny_benchmark, None, rank=rank, sink=sink)
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


#: what the harness sends with every request of the tiny benchmark (its EOS is the end id)
RUN_PARAMS = generation_params(resolve(cli={}, env={}, layers=()), load_benchmark("tiny"))


def req(rid: int, *, first: int = 11, n_in: int = 6, max_new: int = 8, streaming: bool = False,
        **params) -> Request:
    tokens = np.array([first] + list(range(20, 20 + n_in - 1)), dtype=np.int32)
    return Request(rid, tokens, dataclasses.replace(RUN_PARAMS, max_new_tokens=max_new, **params), streaming)


def expected(request: Request, fake) -> list[int]:
    return fake.output_tokens(request.input_tokens.tolist(), request.max_new_tokens)


def settle(core: TrtllmHlapiCore) -> None:
    """Let the core's loop run what is already scheduled (abort callbacks, cancelled task steps)."""
    async def spin():
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run_coroutine_threadsafe(spin(), core._loop).result(5)


# --- layout and configuration ------------------------------------------------------------------
def test_one_llm_per_rank_built_on_its_own_gpus(make_core, recorder, fake, monkeypatch):
    config = resolve(cli={"num_gpus": 4, "tensor_parallelism": 2}, env={}, layers=())
    assert TrtllmHlapiCore.num_cores(config) == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for r in range(2):
        make_core(recorder, rank=r, num_gpus=4, tensor_parallelism=2)
    assert [llm.visible_devices for llm in fake.CONTROL.llms] == ["0,1", "2,3"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    make_core(recorder, rank=1, num_gpus=4, tensor_parallelism=2)
    assert fake.CONTROL.llms[-1].visible_devices == "6,7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"


def test_llm_arguments_from_config_and_runtime_flags(make_core, recorder, fake, tmp_path):
    make_core(recorder, num_gpus=2, tensor_parallelism=1, pipeline_parallelism=2,
              trtllm_runtime_flags="batch_scheduler_policy:guaranteed_no_evict,kvcache_free_gpu_mem_frac:0.6,"
                                   "enable_chunked_context:true,max_batch_size:32")
    llm = fake.CONTROL.llms[0]
    kw = llm.kwargs
    assert llm.model == str(tmp_path)
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"], kw["backend"]) == (1, 2, "pytorch")
    assert kw["kv_cache_config"].enable_block_reuse is False  # the fake's default is True
    assert kw["kv_cache_config"].free_gpu_memory_fraction == pytest.approx(0.6)
    assert kw["scheduler_config"].capacity_scheduler_policy.value == "GUARANTEED_NO_EVICT"
    assert kw["scheduler_config"].context_chunking_policy.value == "FIRST_COME_FIRST_SERVED"
    assert kw["enable_chunked_prefill"] is True and kw["max_batch_size"] == 32
    assert kw["skip_tokenizer_init"] is True


def test_trt_backend_uses_the_default_llm_class_without_a_backend_argument(make_core, recorder, fake):
    make_core(recorder, trtllm_backend="trt")
    assert "backend" not in fake.CONTROL.llms[0].kwargs


def test_model_path_must_be_given(make_core, recorder):
    with pytest.raises(ConfigError, match="--trtllm_model_path is empty"):
        make_core(recorder, trtllm_model_path="")


def test_bad_runtime_flag_is_a_config_error(make_core, recorder):
    with pytest.raises(ConfigError, match="batch_scheduler_policy:fastest"):
        make_core(recorder, trtllm_runtime_flags="batch_scheduler_policy:fastest")


def test_missing_tensorrt_llm_names_the_extra(monkeypatch, tmp_path, tiny_benchmark, recorder):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import tensorrt_llm -> ImportError
    config = resolve(cli={"trtllm_model_path": str(tmp_path), "num_gpus": 1}, env={}, layers=())
    with pytest.raises(CoreUnavailableError, match=r"pip install -e '\.\[trtllm\]'"):
        build_core(TrtllmHlapiCore, config, tiny_benchmark, None, rank=0, sink=recorder)


def test_importing_the_core_module_does_not_import_tensorrt_llm():
    code = ("import sys, llmlib.cores.trtllm_hlapi_core; "
            "sys.exit(1 if 'tensorrt_llm' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# --- requests ----------------------------------------------------------------------------------------
def test_sampling_params_carry_limits_sampling_and_stop_tokens(make_core, recorder, fake, tiny_benchmark):
    eos = tiny_benchmark.eos_token_id
    core = make_core(recorder)
    greedy = req(1, max_new=5, streaming=True)
    sampled = req(2, first=12, max_new=7, temperature=0.8, top_p=0.95, top_k=40, seed=3, stop_token_ids=(eos, 17))
    core.enqueue([greedy, sampled])
    wait_idle(core, 5)
    sent = {tuple(inputs): (sp, streaming) for inputs, sp, streaming in fake.CONTROL.llms[0].submitted}
    sp, streaming = sent[tuple(greedy.input_tokens.tolist())]
    assert streaming is True
    assert (sp.max_tokens, sp.end_id, sp.pad_id, sp.detokenize, sp.top_k, sp.temperature) == \
        (5, eos, eos, False, 1, None)
    sp, streaming = sent[tuple(sampled.input_tokens.tolist())]
    assert streaming is False
    assert (sp.max_tokens, sp.top_k, sp.seed) == (7, 40, 3)
    assert (sp.temperature, sp.top_p) == (pytest.approx(0.8), pytest.approx(0.95))
    assert sp.stop_token_ids == [17]


def test_exactly_one_outcome_each_under_success_error_and_cancel(make_core, make_recorder, fake):
    rec = make_recorder()
    cores = [make_core(rec, rank=r, num_gpus=2) for r in range(2)]
    requests, kinds = [], {}
    for i in range(200):
        rid = (2**64 - 1 - i) if i % 3 == 0 else (-1 - i if i % 3 == 1 else i)
        kind = {3: "error", 5: "crash", 7: "cancel"}.get(i % 10, "ok")
        first = {"error": fake.ERROR_TOKEN, "crash": fake.CRASH_TOKEN, "cancel": fake.HOLD_TOKEN}.get(kind, 11 + i)
        requests.append(req(rid, first=first, n_in=3 + i % 7, max_new=1 + i % 12, streaming=bool(i % 2)))
        kinds[rid] = kind
    for start in range(0, 200, 25):
        cores[(start // 25) % 2].enqueue(requests[start:start + 25])
    owner = {r.request_id: cores[(k // 25) % 2] for k, r in enumerate(requests)}
    for rid, kind in kinds.items():
        if kind == "cancel":
            owner[rid].cancel(rid, "cancelled by the test")
    for core in cores:
        wait_idle(core, 10)

    assert all(rec.final[rid] == 1 for rid in kinds), "every request ends exactly once"
    assert sum(rec.final.values()) == 200
    events = [(k, rid) for k, rid, *_ in rec.events]
    for r in requests:
        rid, kind = r.request_id, kinds[r.request_id]
        if kind == "ok":
            tokens, n, _ = rec.completed[rid]
            assert tokens.dtype == np.uint32 and n == len(tokens) == r.max_new_tokens
            assert tokens.tolist() == expected(r, fake)
            if r.streaming:
                assert events.index(("first", rid)) < events.index(("complete", rid))
            else:
                assert rec.first[rid] == 0
        else:
            error = rec.failed[rid][0]
            assert isinstance(error, BackendError) and "rank" in error.address
            want = {"error": "injected error", "crash": "executor failed", "cancel": "cancelled by the test"}[kind]
            assert want in str(error)
    # the cancelled requests' tasks were cancelled too (none is left running)
    for core in cores:
        settle(core)
        assert not core._tasks


def test_streaming_first_token_then_the_whole_output(make_core, recorder, fake):
    core = make_core(recorder)
    r = req(4, max_new=13, streaming=True)
    core.enqueue([r])
    wait_idle(core, 5)
    tokens, n, _ = recorder.completed[4]
    assert tokens.tolist() == expected(r, fake) and n == 13 and tokens.dtype == np.uint32
    first = [e for e in recorder.events if e[0] == "first"]
    assert len(first) == 1 and first[0][2][0] == tokens[0]
    assert first[0][3] <= recorder.times("complete")[4]


def test_each_core_runs_its_own_loop_off_the_caller_thread(make_core, make_recorder, fake):
    rec = make_recorder()
    a, b = make_core(rec, rank=0, num_gpus=2), make_core(rec, rank=1, num_gpus=2)
    assert a._loop is not b._loop
    a.enqueue([req(1, streaming=True)])
    b.enqueue([req(2)])
    wait_idle(a, 5)
    wait_idle(b, 5)
    threads = {tid for *_e, tid in rec.events}
    assert threading.get_ident() not in threads and len(threads) == 2


# --- flush, cancel, stop ---------------------------------------------------------------------------
def test_flush_names_what_is_pending_and_cancel_releases_it(make_core, recorder, fake):
    core = make_core(recorder)
    core.enqueue([req(1, first=fake.HOLD_TOKEN, streaming=True), req(2, max_new=3)])
    with pytest.raises(FlushTimeoutError, match=r"1 request\(s\) still pending.*: 1$"):
        wait_idle(core, 0.2)
    core.cancel(1, "watchdog")
    wait_idle(core, 1)
    assert "watchdog" in str(recorder.failed[1][0]) and recorder.completed[2][1] == 3
    assert recorder.final[1] == 1


def test_stop_cancels_tasks_shuts_the_llm_down_and_fails_pending(make_core, recorder, fake):
    core = make_core(recorder)
    core.enqueue([req(i, first=fake.HOLD_TOKEN, streaming=bool(i % 2)) for i in range(6)])
    core.health_check()
    core.stop()
    assert fake.CONTROL.llms[0].shut_down
    assert not core._thread.is_alive() and not core._tasks
    assert all(recorder.final[i] == 1 and "stopped" in str(recorder.failed[i][0]) for i in range(6))
    core.enqueue([req(7)])
    assert recorder.final[7] == 1 and "stopped" in str(recorder.failed[7][0])
    with pytest.raises(BackendError, match="stopped"):
        core.health_check()
    core.stop()


def test_kv_cache_utilisation_is_unknown(make_core, recorder):
    assert make_core(recorder).kv_cache_utilisation() is None
