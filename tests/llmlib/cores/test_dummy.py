"""Tests of the `dummy` core: zero-latency inline completion, the timing model (TTFT, time per
token, batch limit), output lengths, injected failures, stop, and its config errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from llmlib.cores import get_core_class
from llmlib.cores.base import Request
from llmlib.cores.dummy import DummyCore
from llmlib.errors import BackendError, ConfigError


def ds_req(ds, i: int, max_new: int = 20, streaming: bool = False, rid: int | None = None) -> Request:
    return Request(i if rid is None else rid, ds.input_tokens[i], max_new, streaming, sample_index=i)


def plain_req(rid: int, max_new: int = 8, streaming: bool = False) -> Request:
    return Request(rid, np.array([4, 5, 6], dtype=np.int32), max_new, streaming)


def test_registered_as_dummy_with_cores_from_config(make_config):
    assert get_core_class("dummy") is DummyCore
    assert DummyCore.num_cores(make_config(dummy_num_cores=3)) == 3


# --- zero-latency mode ------------------------------------------------------------------------
def test_zero_latency_completes_inline_inside_enqueue(make_dummy, recorder, small_dataset):
    core = make_dummy(recorder, dataset=small_dataset, dummy_zero_latency=True)
    core.enqueue([ds_req(small_dataset, i, streaming=bool(i % 2)) for i in range(6)])
    # no waiting at all: everything was delivered before enqueue returned, on this thread
    assert recorder.num_final == 6 and core.num_pending == 0
    assert {tid for *_r, tid in recorder.events} == {threading.get_ident()}
    kinds = [(k, rid) for k, rid, *_ in recorder.events]
    for i in range(6):
        if i % 2:
            assert kinds.index(("first", i)) < kinds.index(("complete", i))
        else:
            assert recorder.first[i] == 0
    for i in range(6):
        tokens, n, _ = recorder.completed[i]
        assert tokens.dtype == np.uint32 and len(tokens) == n
    # the first token (sinks may be given more; only the first counts) is the output's first
    first_payload = recorder.events[kinds.index(("first", 1))][2]
    assert len(first_payload) >= 1 and first_payload[0] == recorder.completed[1][0][0]


def test_output_length_from_the_dataset_capped_by_max_new_tokens(make_dummy, recorder, small_dataset):
    ds = small_dataset
    core = make_dummy(recorder, dataset=ds, dummy_zero_latency=True)
    core.enqueue([ds_req(ds, i, max_new=20) for i in range(len(ds))])
    lens = [recorder.completed[i][1] for i in range(len(ds))]
    assert lens == [min(int(ds.output_lens[i]), 20) for i in range(len(ds))]
    assert any(int(n) > 20 for n in ds.output_lens) and any(int(n) < 20 for n in ds.output_lens)


def test_output_length_without_a_sample_is_max_new_tokens(make_dummy, recorder, small_dataset):
    core = make_dummy(recorder, dataset=small_dataset, dummy_zero_latency=True)
    core.enqueue([plain_req(1, max_new=13)])
    assert recorder.completed[1][1] == 13


def test_fixed_output_length_capped_by_max_new_tokens(make_dummy, recorder, small_dataset):
    ds = small_dataset
    core = make_dummy(recorder, dataset=ds, dummy_zero_latency=True, dummy_output_len="7")
    core.enqueue([ds_req(ds, 0, max_new=20), ds_req(ds, 1, max_new=4), plain_req(100, max_new=30)])
    assert [recorder.completed[r][1] for r in (0, 1, 100)] == [7, 4, 7]


def test_outputs_are_deterministic_per_sample(make_dummy, make_recorder, small_dataset):
    ds = small_dataset
    a, b = make_recorder(), make_recorder()
    make_dummy(a, dataset=ds, dummy_zero_latency=True).enqueue([ds_req(ds, 3, max_new=30)])
    core = make_dummy(b, dataset=ds, dummy_zero_latency=True)
    core.enqueue([ds_req(ds, 3, max_new=30, rid=50)])
    core.enqueue([ds_req(ds, 3, max_new=2, rid=51)])  # the cached output, cut to this budget
    assert np.array_equal(a.completed[3][0], b.completed[50][0])
    assert np.array_equal(b.completed[51][0], a.completed[3][0][:2])


@pytest.mark.parametrize("zero_latency", [True, False])
def test_fail_rate_one_fails_everything(make_dummy, recorder, zero_latency):
    core = make_dummy(recorder, dummy_zero_latency=zero_latency, dummy_fail_rate=1.0,
                      dummy_ttft_ms=1, dummy_tpot_ms=0)
    core.enqueue([plain_req(i, streaming=bool(i % 2)) for i in range(20)])
    assert recorder.wait_final(20, timeout_s=5.0)
    assert sorted(recorder.failed) == list(range(20)) and not recorder.completed
    err = recorder.failed[0][0]
    assert isinstance(err, BackendError) and err.address == "dummy[0]" and "injected" in str(err)


def test_fail_rate_fails_about_that_fraction_deterministically(make_dummy, make_recorder):
    runs = []
    for seed in (0, 0, 1):
        rec = make_recorder()
        core = make_dummy(rec, dummy_zero_latency=True, dummy_fail_rate=0.1, dummy_seed=seed)
        core.enqueue([plain_req(i, max_new=2) for i in range(2000)])
        assert rec.num_final == 2000
        runs.append(frozenset(rec.failed))
    assert 140 <= len(runs[0]) <= 260, len(runs[0])  # ~10% of 2000
    assert runs[0] == runs[1]  # same seed, same failures
    assert runs[0] != runs[2]  # another seed, other failures


# --- timing mode --------------------------------------------------------------------------------
def test_first_token_not_before_ttft_and_final_after_the_tokens(make_dummy, recorder):
    core = make_dummy(recorder, dummy_ttft_ms=100, dummy_tpot_ms=10, dummy_output_len="5")
    t0 = time.monotonic()
    core.enqueue([plain_req(1, streaming=True), plain_req(2, streaming=False)])
    assert recorder.num_final == 0 and core.num_pending == 2  # enqueue returned at once
    assert time.monotonic() - t0 < 0.09  # before the first token is due
    assert recorder.wait_final(2, timeout_s=5.0)
    first, done = recorder.times("first"), recorder.times("complete")
    assert first[1] - t0 >= 0.099
    assert done[1] - t0 >= 0.139 and done[1] > first[1]  # then 4 more tokens at 10 ms
    assert done[2] - t0 >= 0.139 and 2 not in first  # non-streaming: no first token
    assert done[1] - t0 < 1.0  # and no wild overshoot
    assert [recorder.completed[r][1] for r in (1, 2)] == [5, 5]


def test_batch_limit_queues_requests_beyond_it(make_dummy, recorder):
    core = make_dummy(recorder, dummy_ttft_ms=80, dummy_tpot_ms=10, dummy_output_len="3",
                      dummy_max_batch_size=2)
    t0 = time.monotonic()
    core.enqueue([plain_req(i, streaming=True) for i in range(4)])
    assert recorder.wait_final(4, timeout_s=5.0)
    first, done = recorder.times("first"), recorder.times("complete")
    first_done = min(done[0], done[1])
    for late in (2, 3):
        # started only when a slot freed, so its first token comes a whole TTFT after that
        assert first[late] >= first_done + 0.075, (first[late] - t0, first_done - t0)
    assert first[0] - t0 < first_done - t0 <= first[2] - t0


def test_batch_limit_allows_that_many_at_once(make_dummy, recorder):
    core = make_dummy(recorder, dummy_ttft_ms=150, dummy_tpot_ms=0, dummy_output_len="1",
                      dummy_max_batch_size=4)
    t0 = time.monotonic()
    core.enqueue([plain_req(i) for i in range(4)])
    assert recorder.wait_final(4, timeout_s=5.0)
    done = recorder.times("complete")
    assert max(done.values()) - t0 < 0.29  # all four ran together, not two by two (0.3 s) or one by one


def test_stop_fails_pending_requests(make_dummy, recorder):
    core = make_dummy(recorder, dummy_ttft_ms=10_000, dummy_max_batch_size=1)
    core.enqueue([plain_req(i) for i in range(3)])  # one running, two waiting
    t0 = time.monotonic()
    core.stop()
    assert time.monotonic() - t0 < 1.0
    assert sorted(recorder.failed) == [0, 1, 2] and core.num_pending == 0
    assert all("stopped" in str(err) for err, _ in recorder.failed.values())
    with pytest.raises(BackendError, match="stopped"):
        core.health_check()
    core.enqueue([plain_req(9)])  # refused after stop: fails, never hangs
    assert 9 in recorder.failed


def test_health_check_passes_while_running(make_dummy, recorder):
    make_dummy(recorder, dummy_ttft_ms=1).health_check()


# --- configuration errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", ""])
def test_invalid_output_len_is_a_config_error(make_dummy, recorder, bad):
    with pytest.raises(ConfigError, match="dummy_output_len"):
        make_dummy(recorder, dummy_zero_latency=True, dummy_output_len=bad)


def test_fail_rate_above_one_is_a_config_error(make_dummy, recorder):
    with pytest.raises(ConfigError, match="dummy_fail_rate"):
        make_dummy(recorder, dummy_zero_latency=True, dummy_fail_rate=1.5)
