"""Contract tests of the `trtllm_executor` core against the fake tensorrt_llm (tests/fakes): exactly one
outcome per request under mixed success / error / cancel, streaming, the ExecutorConfig built from the
runtime flags, per-rank devices, flush, stop, a broken engine, health and the missing-package error."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from llmlib.config import resolve
from llmlib.cores.base import Request
from llmlib.cores.trtllm_executor_core import TrtllmExecutorCore, _max_tokens_keyword
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
    """make_core(sink, rank=0, env=None, **cli) -> a TrtllmExecutorCore on the fake, stopped after."""
    made = []

    def make(sink, *, rank=0, env=None, **cli):
        values = {"engine_dir": str(tmp_path), "num_gpus": 1, **cli}
        config = resolve(cli=values, env=env or {}, layers=())
        core = build_core(TrtllmExecutorCore, config, tiny_benchmark, None, rank=rank, sink=sink)
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


# --- layout and configuration ------------------------------------------------------------------
def test_ranks_get_consecutive_gpu_slices_in_orchestrator_mode(make_core, recorder, fake):
    config = resolve(cli={"num_gpus": 4, "tensor_parallelism": 2}, env={}, layers=())
    assert TrtllmExecutorCore.num_cores(config) == 2
    cores = [make_core(recorder, rank=r, num_gpus=4, tensor_parallelism=2) for r in range(2)]
    tle = importlib.import_module("tensorrt_llm.bindings.executor")
    got = [e.config.parallel_config for e in fake.CONTROL.executors]
    assert [p.device_ids for p in got] == [[0, 1], [2, 3]]
    assert [c.device_ids for c in cores] == [[0, 1], [2, 3]]
    for p in got:
        assert p.communication_type == tle.CommunicationType.MPI
        assert p.communication_mode == tle.CommunicationMode.ORCHESTRATOR
        assert p.participant_ids == [0, 1]
        assert p.orchestrator_config.is_orchestrator is True
        assert p.orchestrator_config.worker_executable_path.endswith(str(Path("bin") / "executorWorker"))
    assert all(e.model_type == tle.ModelType.DECODER_ONLY for e in fake.CONTROL.executors)
    assert "rank 1" in cores[1].address and "2,3" in cores[1].address


def test_single_gpu_ranks_use_leader_mode(make_core, recorder, fake):
    config = resolve(cli={"num_gpus": 2}, env={}, layers=())
    assert TrtllmExecutorCore.num_cores(config) == 2
    for r in range(2):
        make_core(recorder, rank=r, num_gpus=2)
    tle = importlib.import_module("tensorrt_llm.bindings.executor")
    got = [e.config.parallel_config for e in fake.CONTROL.executors]
    assert [p.device_ids for p in got] == [[0], [1]]
    assert {p.communication_mode for p in got} == {tle.CommunicationMode.LEADER}


def test_gpus_that_do_not_split_into_tp_pp_groups_are_a_config_error():
    config = resolve(cli={"num_gpus": 3, "tensor_parallelism": 2}, env={}, layers=())
    with pytest.raises(ConfigError, match=r"--num_gpus=3.*--tensor_parallelism=2"):
        TrtllmExecutorCore.num_cores(config)


def test_executor_config_from_the_default_runtime_flags(make_core, recorder, fake):
    make_core(recorder)
    tle = importlib.import_module("tensorrt_llm.bindings.executor")
    ec = fake.CONTROL.executors[0].config
    assert ec.scheduler_config.capacity_scheduler_policy == tle.CapacitySchedulerPolicy.MAX_UTILIZATION
    assert ec.scheduler_config.context_chunking_policy == tle.ContextChunkingPolicy.FIRST_COME_FIRST_SERVED
    dyn = ec.scheduler_config.dynamic_batch_config
    assert (dyn.enable_batch_size_tuning, dyn.enable_max_num_tokens_tuning,
            dyn.dynamic_batch_moving_average_window) == (False, False, 128)
    assert ec.kv_cache_config.free_gpu_memory_fraction == pytest.approx(0.80)
    assert ec.kv_cache_config.enable_block_reuse is False  # the fake's default is True
    assert ec.enable_chunked_context is False
    assert ec.batching_type == tle.BatchingType.INFLIGHT
    assert ec.max_batch_size is None and ec.max_num_tokens is None
    assert ec.max_beam_width == 1


def test_executor_config_follows_runtime_flags_and_their_environment_variable(make_core, recorder, fake):
    make_core(recorder,
              trtllm_runtime_flags="batch_scheduler_policy:guaranteed_no_evict,kvcache_free_gpu_mem_frac:0.55,"
                                   "enable_chunked_context:true,use_inflight_batching:false,"
                                   "context_chunking_policy:equal_progress,max_num_tokens:4096,max_batch_size:64",
              env={"TRTLLM_RUNTIME_FLAGS": "kvcache_free_gpu_mem_frac:0.3"})
    tle = importlib.import_module("tensorrt_llm.bindings.executor")
    ec = fake.CONTROL.executors[0].config
    assert ec.scheduler_config.capacity_scheduler_policy == tle.CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    assert ec.scheduler_config.context_chunking_policy == tle.ContextChunkingPolicy.EQUAL_PROGRESS
    assert ec.kv_cache_config.free_gpu_memory_fraction == pytest.approx(0.3)  # env on top of the flag
    assert ec.kv_cache_config.enable_block_reuse is False
    assert ec.enable_chunked_context is True
    assert ec.batching_type == tle.BatchingType.STATIC
    assert (ec.max_num_tokens, ec.max_batch_size) == (4096, 64)


@pytest.mark.parametrize("flags, match", [
    ("batch_scheduler_policy:fastest", "batch_scheduler_policy:fastest"),
    ("context_chunking_policy:random", "context_chunking_policy:random"),
    ("kvcache_free_gpu_mem_frac:1.5", "kvcache_free_gpu_mem_frac"),
    ("enable_chunked_context:maybe", "enable_chunked_context"),
    ("max_num_tokens:0", "max_num_tokens"),
])
def test_bad_runtime_flags_are_config_errors_naming_the_flag(make_core, recorder, flags, match):
    with pytest.raises(ConfigError, match=match):
        make_core(recorder, trtllm_runtime_flags=flags)


def test_engine_dir_must_be_given_and_exist(make_core, recorder, tmp_path):
    with pytest.raises(ConfigError, match="--engine_dir is empty"):
        make_core(recorder, engine_dir="")
    with pytest.raises(ConfigError, match="is not a folder"):
        make_core(recorder, engine_dir=str(tmp_path / "missing"))


def test_missing_tensorrt_llm_names_the_extra(monkeypatch, tmp_path, tiny_benchmark, recorder):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import tensorrt_llm -> ImportError
    config = resolve(cli={"engine_dir": str(tmp_path), "num_gpus": 1}, env={}, layers=())
    with pytest.raises(CoreUnavailableError, match=r"pip install -e '\.\[trtllm\]'"):
        build_core(TrtllmExecutorCore, config, tiny_benchmark, None, rank=0, sink=recorder)


def test_importing_the_core_module_does_not_import_tensorrt_llm():
    code = ("import sys, llmlib.cores.trtllm_executor_core, llmlib.cores._trtllm_common; "
            "sys.exit(1 if 'tensorrt_llm' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_older_bindings_get_max_new_tokens():
    class NewRequest:
        def __init__(self, input_token_ids, max_tokens, *, streaming=False):
            pass

    class OldRequest:
        def __init__(self, input_token_ids, *, max_new_tokens=None, streaming=False):
            pass

    assert _max_tokens_keyword(SimpleNamespace(Request=NewRequest)) == "max_tokens"
    assert _max_tokens_keyword(SimpleNamespace(Request=OldRequest)) == "max_new_tokens"


# --- requests ------------------------------------------------------------------------------------
def test_executor_requests_carry_limits_sampling_and_stop_tokens(make_core, recorder, fake, tiny_benchmark):
    eos = tiny_benchmark.eos_token_id
    core = make_core(recorder)
    greedy = req(1, max_new=5, streaming=True)  # the run's params: the benchmark's (greedy) config
    sampled = req(2, max_new=7, temperature=0.7, top_p=0.9, top_k=0, seed=5, presence_penalty=0.0,
                  frequency_penalty=0.5, min_new_tokens=2, stop_token_ids=(eos, 13))
    core.enqueue([greedy, sampled])
    wait_idle(core, 5)
    sent = list(fake.CONTROL.executors[0].requests.values())
    a, b = sent
    assert a.input_token_ids == greedy.input_tokens.tolist() and all(type(t) is int for t in a.input_token_ids)
    assert (a.max_tokens, a.streaming, a.end_id, a.pad_id) == (5, True, eos, eos)
    assert a.output_config.exclude_input_from_output is True
    assert (a.sampling_config.top_k, a.sampling_config.temperature, a.sampling_config.top_p) == (1, None, None)
    assert a.stop_words is None
    assert (b.max_tokens, b.streaming) == (7, False)
    sc = b.sampling_config
    assert (sc.temperature, sc.top_p, sc.top_k, sc.seed, sc.min_tokens, sc.frequency_penalty) == \
        (pytest.approx(0.7), pytest.approx(0.9), None, 5, 2, pytest.approx(0.5))
    assert b.stop_words == [[13]]  # EOS is the end id, not a stop word


def test_exactly_one_outcome_each_under_success_error_and_cancel(make_core, make_recorder, fake):
    rec = make_recorder()
    cores = [make_core(rec, rank=r, num_gpus=2) for r in range(2)]
    requests, kinds = [], {}
    for i in range(200):
        # LoadGen ids run up to 2^64 - 1; warmup ids are negative
        rid = (2**64 - 1 - i) if i % 3 == 0 else (-1 - i if i % 3 == 1 else i)
        kind = {3: "error", 7: "cancel"}.get(i % 10, "ok")
        first = {"error": fake.ERROR_TOKEN, "cancel": fake.HOLD_TOKEN}.get(kind, 11 + i)
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
                assert rec.first[rid] == 1
            else:
                assert rec.first[rid] == 0
        else:
            error = rec.failed[rid][0]
            assert isinstance(error, BackendError)
            assert "rank" in error.address
            assert ("injected error" if kind == "error" else "cancelled by the test") in str(error)
    cancelled_on_engine = sum(len(e.cancelled) for e in fake.CONTROL.executors)
    assert cancelled_on_engine == sum(1 for k in kinds.values() if k == "cancel")


@pytest.mark.parametrize("return_all", [False, True])
def test_streamed_tokens_are_gathered_whole_in_both_response_modes(make_core, recorder, fake, return_all):
    core = make_core(recorder, trtllm_runtime_flags=f"return_all_generated_tokens:{str(return_all).lower()}")
    r = req(5, max_new=11, streaming=True)
    core.enqueue([r])
    wait_idle(core, 5)
    assert next(iter(fake.CONTROL.executors[0].requests.values())).return_all_generated_tokens is return_all
    tokens, n, _ = recorder.completed[5]
    assert tokens.tolist() == expected(r, fake) and n == 11
    (first_kind, _, first_payload, t_first, _), = [e for e in recorder.events if e[0] == "first"]
    assert first_payload[0] == tokens[0]
    assert t_first <= recorder.times("complete")[5]


def test_prompt_is_stripped_when_the_executor_includes_it(make_core, recorder, fake):
    core = make_core(recorder, trtllm_runtime_flags="exclude_input_from_output:false")
    r = req(9, max_new=4)
    core.enqueue([r])
    wait_idle(core, 5)
    assert recorder.completed[9][0].tolist() == expected(r, fake)


def test_enqueue_returns_before_any_outcome(make_core, recorder, fake):
    core = make_core(recorder)
    core.enqueue([req(i, first=fake.HOLD_TOKEN) for i in range(50)])
    assert core.num_pending == 50 and recorder.num_final == 0


# --- flush, cancel, stop ---------------------------------------------------------------------------
def test_flush_names_what_is_pending_and_cancel_releases_it(make_core, recorder, fake):
    core = make_core(recorder)
    core.enqueue([req(1, first=fake.HOLD_TOKEN), req(2, max_new=3)])
    with pytest.raises(FlushTimeoutError, match=r"1 request\(s\) still pending.*: 1$"):
        wait_idle(core, 0.2)
    core.cancel(1, "watchdog")
    wait_idle(core, 1)
    assert isinstance(recorder.failed[1][0], BackendError) and "watchdog" in str(recorder.failed[1][0])
    assert recorder.completed[2][1] == 3
    core.cancel(1, "again")  # no longer pending: nothing happens
    assert recorder.final[1] == 1


def test_stop_shuts_the_executor_down_and_fails_what_is_pending(make_core, recorder, fake):
    core = make_core(recorder)
    core.enqueue([req(i, first=fake.HOLD_TOKEN) for i in range(5)])
    core.stop()
    executor = fake.CONTROL.executors[0]
    assert executor.shut_down
    assert all(recorder.final[i] == 1 and "stopped" in str(recorder.failed[i][0]) for i in range(5))
    core.enqueue([req(7)])  # after stop: fails at once, never hangs
    assert recorder.final[7] == 1 and "stopped" in str(recorder.failed[7][0])
    with pytest.raises(BackendError, match="stopped"):
        core.health_check()
    core.stop()  # twice is harmless


def test_a_failing_engine_fails_pending_requests_and_marks_the_core_unhealthy(make_core, recorder, fake):
    core = make_core(recorder)
    core.enqueue([req(i, first=fake.HOLD_TOKEN) for i in range(4)])
    core.enqueue([req(99, first=fake.CRASH_TOKEN)])  # the executor's await_responses now raises
    assert recorder.wait_final(5, timeout_s=5), "pending requests fail instead of hanging"
    assert core.num_pending == 0
    assert all("await_responses raised" in str(recorder.failed[i][0]) for i in (0, 1, 2, 3, 99))
    with pytest.raises(BackendError, match="unhealthy"):
        core.health_check()
    core.enqueue([req(100)])
    assert recorder.final[100] == 1 and "unhealthy" in str(recorder.failed[100][0])


def test_health_check_reports_an_executor_that_cannot_take_requests(make_core, recorder, fake):
    core = make_core(recorder)
    core.health_check()
    fake.CONTROL.can_enqueue = False
    with pytest.raises(BackendError, match=r"trtllm_executor\[rank 0, gpus 0\].*cannot accept"):
        core.health_check()


def test_kv_cache_utilisation_from_iteration_stats(make_core, make_recorder, fake):
    fake.CONTROL.kv_blocks = 50
    fake.CONTROL.tokens_per_block = 4
    fake.CONTROL.token_delay_s = 0.002
    rec = make_recorder()
    seen = threading.Event()

    class Sink:
        def on_first_token(self, rid, tokens):
            seen.set()
            rec.on_first_token(rid, tokens)

        def on_complete(self, rid, tokens, n):
            rec.on_complete(rid, tokens, n)

        def on_error(self, rid, error):
            rec.on_error(rid, error)

    core = make_core(Sink())
    assert core.kv_cache_utilisation() is None  # nothing has run yet
    core.enqueue([req(i, n_in=20, max_new=40, streaming=True) for i in range(4)])
    assert seen.wait(5)
    util = core.kv_cache_utilisation()
    assert util is not None and 0.0 < util <= 1.0
    rec.wait_idle(core, 5)
    assert core.kv_cache_utilisation() is not None  # the last known value stays
    core.stop()
    assert core.kv_cache_utilisation() is None
