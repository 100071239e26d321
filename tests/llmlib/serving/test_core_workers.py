"""Network cores in worker processes (--workers_per_core): the same outcomes as in-process, exactly once;
a killed worker fails only its own requests with the cause; stop reaps every worker; SIGINT is the
parent's; the endpoint core through workers against the mock server."""

from __future__ import annotations

import os
import signal
import socket
import time

import numpy as np
import pytest

from llmlib.cores.base import Request
from llmlib.cores.dummy import DummyCore
from llmlib.cores.trtllm_endpoint_core import EndpointSettings, TrtllmEndpointCore
from llmlib.errors import BackendError, ConfigError
from llmlib.factory import build_server
from llmlib.generation import GenerationParams
from llmlib.server import LLMServer
from llmlib.serving.core_workers import WorkerPoolCore, parse_workers_per_core
from tests.outcomes import wait_idle
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids

pytestmark = pytest.mark.timeout(90)

PARAMS = GenerationParams(max_new_tokens=16, stop_token_ids=(2,), eos_token_id=2)


@pytest.fixture
def pools():
    made = []

    def make(core_cls, settings, sink, workers=2, inputs=None, **kw):
        extra = {"inputs": inputs} if inputs is not None else {}
        pool = WorkerPoolCore(core_cls, settings, rank=0, sink=sink, workers=workers, **extra, **kw)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.stop()
        assert not any(p.is_alive() for p in pool._procs)  # every worker reaped


def dummy_settings(make_config, tiny_benchmark, **values):
    return DummyCore.resolve_settings(make_config(**values), tiny_benchmark)


def reqs(ds, n, start=0, params=PARAMS):
    return [Request(start + i, ds.input_tokens[i % len(ds)], params, i % 2 == 0, i % len(ds)) for i in range(n)]


def test_outcomes_through_workers_equal_the_core_in_process(pools, make_config, tiny_benchmark, small_dataset,
                                                             make_recorder):
    settings = dummy_settings(make_config, tiny_benchmark, dummy_ttft_ms=1, dummy_tpot_ms=0.05)
    inputs = DummyCore.core_inputs(settings, small_dataset)
    here, there = make_recorder(), make_recorder()
    local = DummyCore(settings, rank=0, sink=here, inputs=inputs)
    pool = pools(DummyCore, settings, there, workers=2, inputs=inputs)
    pool.health_check()
    assert pool.address == "dummy[0] (2 workers)" and len(set(pool.worker_pids)) == 2
    local.enqueue(reqs(small_dataset, 300))
    pool.enqueue(reqs(small_dataset, 300))
    wait_idle(local, 20)
    wait_idle(pool, 20)
    local.stop()
    assert not there.failed and dict(there.final) == {rid: 1 for rid in range(300)}  # exactly once
    for rid in range(300):
        assert there.completed[rid][0].tolist() == here.completed[rid][0].tolist()
        assert there.completed[rid][1] == here.completed[rid][1]
    assert set(there.first) == {rid for rid in range(300) if rid % 2 == 0}  # streaming ones got a first token
    assert pool.num_pending == 0 and sum(pool._load) == 0 and not pool._owner


def test_a_killed_worker_fails_only_its_own_requests(pools, make_config, tiny_benchmark, small_dataset, recorder):
    settings = dummy_settings(make_config, tiny_benchmark, dummy_ttft_ms=1500, dummy_tpot_ms=0)
    pool = pools(DummyCore, settings, recorder, workers=2, inputs=DummyCore.core_inputs(settings, small_dataset))
    pool.enqueue(reqs(small_dataset, 40))
    victims = {rid for rid, w in pool._owner.items() if w == 0}
    assert 15 <= len(victims) <= 25  # spread over both
    os.kill(pool.worker_pids[0], signal.SIGKILL)
    assert recorder.wait_final(len(victims), 10)
    failed = set(recorder.failed)
    assert failed == victims
    for rid in victims:
        err = recorder.failed[rid][0]
        assert isinstance(err, BackendError) and f"worker process {pool.worker_pids[0]} exited" in err.cause
        assert "-9" in err.cause  # the exit code names the signal
    pool.enqueue(reqs(small_dataset, 10, start=100))  # new work goes to the surviving worker
    wait_idle(pool, 20)
    assert set(recorder.completed) == (set(range(40)) - victims) | set(range(100, 110))
    assert pool.dead_cause is None
    os.kill(pool.worker_pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pool.dead_cause is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "every worker process has exited" in pool.dead_cause
    pool.enqueue(reqs(small_dataset, 1, start=200))  # refused with the cause, never lost
    assert "every worker process has exited" in recorder.failed[200][0].cause


def test_workers_ignore_sigint_the_parent_stops_them(pools, make_config, tiny_benchmark, small_dataset, recorder):
    settings = dummy_settings(make_config, tiny_benchmark, dummy_ttft_ms=1, dummy_tpot_ms=0)
    pool = pools(DummyCore, settings, recorder, workers=2, inputs=DummyCore.core_inputs(settings, small_dataset))
    for pid in pool.worker_pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert all(p.is_alive() for p in pool._procs)
    pool.enqueue(reqs(small_dataset, 20))
    wait_idle(pool, 10)
    assert len(recorder.completed) == 20
    pool.stop()
    assert not any(p.is_alive() for p in pool._procs) and not os.path.exists(pool._dir)


def test_stop_fails_what_is_pending_and_reaps_the_workers(pools, make_config, tiny_benchmark, small_dataset,
                                                          recorder):
    settings = dummy_settings(make_config, tiny_benchmark, dummy_ttft_ms=60_000)
    pool = pools(DummyCore, settings, recorder, workers=2, inputs=DummyCore.core_inputs(settings, small_dataset))
    pool.enqueue(reqs(small_dataset, 10))
    t0 = time.monotonic()
    pool.stop()
    assert time.monotonic() - t0 < 15
    assert set(recorder.failed) == set(range(10)) and not recorder.completed
    assert not any(p.is_alive() for p in pool._procs)


def test_the_endpoint_core_through_workers_against_the_mock(pools, recorder):
    with MockOpenAIServer(MockOptions(output_tokens=12)) as mock:
        settings = EndpointSettings(urls=(mock.url,), max_concurrency=8, request_timeout_s=20.0)
        pool = pools(TrtllmEndpointCore, settings, recorder, workers=2)
        assert pool.address == f"http://{mock.url} (2 workers)"
        pool.health_check()
        pool.warm_up()
        requests = [Request(i, np.arange(i, i + 5, dtype=np.int32), 64, i % 3 != 0, i) for i in range(120)]
        pool.enqueue(requests)
        wait_idle(pool, 30)
        assert not recorder.failed
        for r in requests:
            assert recorder.completed[r.request_id][0].tolist() == output_ids(list(range(r.request_id,
                                                                                          r.request_id + 5)), 12, 1000)
        assert pool.report()["token_sources"] == {"token_ids": 120}  # merged over the workers
        assert mock.stats["max_in_flight"] <= 8  # the workers share --trtllm_max_concurrency


def test_a_health_check_failure_in_a_worker_names_the_server(pools, recorder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = EndpointSettings(urls=(f"127.0.0.1:{port}",), health_timeout_s=1.0)
    pool = pools(TrtllmEndpointCore, settings, recorder, workers=2)
    with pytest.raises(BackendError) as info:
        pool.health_check()
    assert info.value.address == f"http://127.0.0.1:{port}"


def test_endpoint_workers_share_the_connections():
    s = EndpointSettings(urls=("h:1",), max_concurrency=5, connect_ahead=3)
    shares = [TrtllmEndpointCore.worker_settings(s, i, 2) for i in range(2)]
    assert [x.max_concurrency for x in shares] == [3, 2] and [x.connect_ahead for x in shares] == [2, 1]


def test_workers_per_core_values(make_config, tiny_benchmark):
    assert parse_workers_per_core("auto", 1, cpus=16) == 15 and parse_workers_per_core("auto", 4, cpus=16) == 3
    assert parse_workers_per_core("auto", 1, cpus=1) == 1 and parse_workers_per_core("3", 2) == 3
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="--workers_per_core"):
            parse_workers_per_core(bad, 1)
    with pytest.raises(ConfigError, match="worker processes are for network cores"):
        build_server(make_config(core_type="trtllm_executor", engine_dir="/x", num_gpus=1, workers_per_core="2"),
                     tiny_benchmark)


def test_the_factory_builds_worker_pools(make_config, tiny_benchmark, recorder):
    bundle = build_server(make_config(core_type="dummy", dummy_num_cores=2, workers_per_core="1",
                                      dummy_ttft_ms=1, dummy_tpot_ms=0), tiny_benchmark)
    try:
        cores = bundle.server.cores
        assert [type(c) for c in cores] == [WorkerPoolCore] * 2 and [c.rank for c in cores] == [0, 1]
        bundle.warmup.health_check()
        ds = bundle.dataset
        bundle.server.submit([Request(i, ds.input_tokens[i], 8, True, i) for i in range(20)], recorder)
        bundle.server.flush(20)
        assert len(recorder.completed) == 20 and not recorder.failed
    finally:
        bundle.stop()
    assert not any(p.is_alive() for c in cores for p in c._procs)


def test_exactly_once_across_the_boundary_is_kept_by_the_server(pools, make_config, tiny_benchmark, small_dataset,
                                                                 recorder):
    """Cancelled and end-of-run-failed requests each end once; what the workers' cores then send back
    for them crosses the boundary and is dropped and counted at the server as late, not duplicated."""
    settings = dummy_settings(make_config, tiny_benchmark, dummy_ttft_ms=60_000)
    server = LLMServer(policy="round_robin")
    pool = pools(DummyCore, settings, server, workers=2, inputs=DummyCore.core_inputs(settings, small_dataset))
    server.attach([pool])
    server.submit(reqs(small_dataset, 20), recorder)
    for rid in range(5):
        assert server.cancel(rid, "cancelled by the test")
    assert server.fail_pending("still pending at the end of the run") == 15
    assert server.fail_pending("again") == 0 and not server.cancel(0)
    deadline = time.monotonic() + 20
    while server.counts.late_after_cancel < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.counts.late_after_cancel == 20  # each worker's own error for what it was told to stop
    assert dict(recorder.final) == {rid: 1 for rid in range(20)} and not recorder.completed
    assert all(recorder.failed[rid][1] for rid in range(0, 20, 2))  # streaming: a first token before the error
    assert "cancelled by the test" in str(recorder.failed[3][0]) and "end of the run" in str(recorder.failed[7][0])
    c = server.counts
    assert c.duplicates_dropped == 0 and c.accounted and c.failed == 20 and server.num_pending == 0
