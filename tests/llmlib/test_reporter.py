"""Tests of llmlib.reporter against a fake LoadGen module: first-token ordering, the n_tokens
floor for short outputs, failures, array conversion and buffer addresses.

The fake `lg` copies each response's bytes during the call, as LoadGen does, so a wrong
address or a buffer freed too early shows up as wrong bytes."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from llmlib.errors import BackendError
from llmlib.reporter import LoadgenReporter, as_u32, buffer_address


class FakeLG:
    """The three LoadGen calls the reporter makes, recorded in order."""

    def __init__(self):
        self.calls: list[tuple[str, list[tuple]]] = []
        self._lock = threading.Lock()

    @staticmethod
    def QuerySampleResponse(rid, ptr, size, n_tokens):
        return rid, (ctypes.string_at(ptr, size) if size else b""), size, n_tokens

    def FirstTokenComplete(self, responses):
        with self._lock:
            self.calls.append(("FTC", list(responses)))

    def QuerySamplesComplete(self, responses):
        with self._lock:
            self.calls.append(("QSC", list(responses)))

    def kinds(self, rid=None):
        return [kind for kind, rs in self.calls for r in rs if rid is None or r[0] == rid]

    def last(self, kind):
        return [r for k, rs in self.calls if k == kind for r in rs][-1]


def u32_bytes(values) -> bytes:
    return np.asarray(values, dtype="<u4").tobytes()


@pytest.fixture
def lg():
    return FakeLG()


# --- first token ordering ----------------------------------------------------------------------------
def test_streaming_complete_without_first_token_sends_ftc_then_qsc(lg):
    rep = LoadgenReporter(lg, streaming=True)
    tokens = np.array([11, 12, 13], dtype=np.uint32)
    rep.complete_sample(5, tokens)
    assert lg.kinds() == ["FTC", "QSC"]
    assert lg.last("FTC") == (5, u32_bytes([11]), 4, 1)
    assert lg.last("QSC") == (5, u32_bytes([11, 12, 13]), 12, 3)


def test_streaming_complete_after_first_token_sends_qsc_only(lg):
    rep = LoadgenReporter(lg, streaming=True)
    tokens = np.array([21, 22], dtype=np.uint32)
    rep.on_first_token(6, tokens[:1])
    rep.on_complete(6, tokens, 2)
    assert lg.kinds() == ["FTC", "QSC"]  # one FTC, from on_first_token: on_complete never sends one
    assert lg.last("FTC") == (6, u32_bytes([21]), 4, 1)


def test_first_token_given_the_whole_output_reports_only_its_first_token(lg):
    rep = LoadgenReporter(lg, streaming=True)
    rep.on_first_token(1, np.array([7, 8, 9], dtype=np.uint32))
    rep.on_first_token(2, np.array([300, 1], dtype=np.int64))
    assert [r for _, rs in lg.calls for r in rs] == [(1, u32_bytes([7]), 4, 1), (2, u32_bytes([300]), 4, 1)]


def test_non_streaming_complete_sends_no_first_token(lg):
    rep = LoadgenReporter(lg, streaming=False)
    rep.complete_sample(1, np.array([1, 2, 3], dtype=np.uint32))
    assert lg.kinds() == ["QSC"]


def test_streaming_complete_of_an_empty_output_still_sends_ftc_first(lg):
    rep = LoadgenReporter(lg, streaming=True)
    rep.complete_sample(4, np.zeros(0, dtype=np.uint32))
    assert lg.kinds() == ["FTC", "QSC"]
    assert lg.last("QSC") == (4, b"", 0, 0)


# --- short outputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, short", [(0, 1), (1, 1), (2, 0), (5, 0)])
def test_n_tokens_is_the_logged_token_count_also_below_two(lg, n, short):
    rep = LoadgenReporter(lg, streaming=False)
    rep.on_complete(3, np.arange(n, dtype=np.uint32), n)
    rid, data, size, n_tokens = lg.last("QSC")
    assert (rid, n_tokens, size, data) == (3, n, 4 * n, u32_bytes(range(n)))
    assert rep.short_outputs == short and rep.failed == 0


@pytest.mark.parametrize("claimed", [0, 1, 3, 99])
def test_n_tokens_follows_the_data_not_the_cores_claim(lg, claimed):
    rep = LoadgenReporter(lg, streaming=True)
    rep.on_complete(3, np.array([5, 6], dtype=np.int64), claimed)
    assert lg.last("QSC")[2:] == (8, 2)


def test_a_count_only_output_keeps_the_cores_count(lg):
    """An endpoint that returns no ids (only usage): LoadGen gets the count; nothing is logged."""
    rep = LoadgenReporter(lg, streaming=False)
    rep.on_complete(3, np.zeros(0, dtype=np.uint32), 17)
    assert lg.last("QSC") == (3, b"", 0, 17) and rep.short_outputs == 0


# --- failures ---------------------------------------------------------------------------------------------
def test_streaming_fail_sends_an_empty_response_with_ftc_first(lg):
    rep = LoadgenReporter(lg, streaming=True)
    rep.fail_sample(9, BackendError("x:1", "down"))
    assert lg.kinds() == ["FTC", "QSC"]
    assert lg.last("FTC")[0] == 9 and lg.last("FTC")[2] == 0
    assert lg.last("QSC") == (9, b"", 0, 0)
    assert rep.failed == 1 and rep.short_outputs == 0


def test_streaming_fail_after_first_token_sends_no_second_ftc(lg):
    rep = LoadgenReporter(lg, streaming=True)
    rep.on_first_token(9, np.array([4], dtype=np.uint32))
    rep.on_error(9, BackendError("x:1", "down"))
    assert lg.kinds() == ["FTC", "QSC"] and rep.failed == 1


def test_non_streaming_fail_sends_only_the_empty_response(lg):
    rep = LoadgenReporter(lg, streaming=False)
    rep.fail_sample(2, RuntimeError("boom"))
    rep.on_error(3, RuntimeError("boom"))
    assert lg.calls == [("QSC", [(2, b"", 0, 0)]), ("QSC", [(3, b"", 0, 0)])] and rep.failed == 2


def test_counts_are_exact_across_threads(lg):
    rep = LoadgenReporter(lg, streaming=True)

    def work(base):
        for i in range(base, base + 300):
            if i % 3 == 0:
                rep.fail_sample(i, RuntimeError("x"))
            else:
                rep.complete_sample(i, np.array([i % 7], dtype=np.uint32))

    threads = [threading.Thread(target=work, args=(k * 300,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert rep.failed == 400 and rep.short_outputs == 800
    assert len([k for k in lg.kinds() if k == "QSC"]) == 1200 and len(lg.kinds()) == 2400
    # every first token carries its own sample's token even with threads sharing the reporter
    ftc = [r for k, rs in lg.calls if k == "FTC" for r in rs]
    assert all(data == (u32_bytes([rid % 7]) if rid % 3 else b"") for rid, data, _, _ in ftc)


# --- conversion and addresses ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda v: np.array(v, dtype=np.int64),
    lambda v: np.array(v, dtype=np.int32),
    lambda v: np.array(v, dtype=">u4"),  # big-endian
    lambda v: np.repeat(np.array(v, dtype=np.uint32), 2)[::2],  # not contiguous
    lambda v: np.asfortranarray(np.array(v, dtype=np.uint32)),
], ids=["int64", "int32", "big-endian", "strided", "fortran"])
@pytest.mark.parametrize("streaming", [False, True])
def test_any_integer_array_is_reported_as_contiguous_uint32(lg, make, streaming):
    values = [3, 1000, 70000, 5]
    rep = LoadgenReporter(lg, streaming=streaming)
    rep.complete_sample(1, make(values))
    assert lg.last("QSC") == (1, u32_bytes(values), 16, 4)
    if streaming:
        assert lg.last("FTC") == (1, u32_bytes(values[:1]), 4, 1)


def test_read_only_uint32_output_is_reported_unchanged(lg):
    arr = np.array([4, 5, 6], dtype=np.uint32)
    arr.flags.writeable = False
    LoadgenReporter(lg, streaming=False).on_complete(1, arr, 3)
    assert lg.last("QSC") == (1, u32_bytes([4, 5, 6]), 12, 3)


def test_as_u32_returns_the_same_array_when_already_right():
    arr = np.arange(5, dtype=np.uint32)
    assert as_u32(arr) is arr
    converted = as_u32(np.arange(5, dtype=np.int64)[::2])
    assert converted.dtype == np.uint32 and converted.flags.c_contiguous and list(converted) == [0, 2, 4]


def test_buffer_address_matches_ctypes_data_for_writable_and_read_only_arrays():
    arr = np.arange(10, dtype=np.uint32)
    assert buffer_address(arr) == arr.ctypes.data
    view = arr[3:]
    assert buffer_address(view) == view.ctypes.data == arr.ctypes.data + 12
    ro = np.arange(10, dtype=np.uint32)
    ro.flags.writeable = False
    assert buffer_address(ro) == ro.ctypes.data
    ro_view = ro[2:]
    assert buffer_address(ro_view) == ro_view.ctypes.data
    strided = arr[::2]
    assert buffer_address(strided) == strided.ctypes.data


def test_buffer_address_points_at_the_data(lg):
    arr = np.array([0xDEADBEEF, 7], dtype=np.uint32)
    assert ctypes.string_at(buffer_address(arr), arr.nbytes) == arr.tobytes()


def test_buffer_address_of_empty_arrays():
    for arr in (np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64), np.arange(4, dtype=np.uint32)[4:]):
        address = buffer_address(arr)
        assert isinstance(address, int) and address != 0
    ro = np.zeros(0, dtype=np.uint32)
    ro.flags.writeable = False
    assert isinstance(buffer_address(ro), int)
