"""The only place that calls LoadGen's FirstTokenComplete and QuerySamplesComplete.

Every sample is reported with `n_tokens` equal to the number of tokens in its logged output.

What LoadGen 6.0.17 does with the count (mlcommons/inference loadgen/, read at b66003e1):
`loadgen.cc` passes the response's `n_tokens` unchanged to `AsyncLog::LogAccuracy`, which writes
it as the accuracy log's `token_count` (TEST06's length check compares it with the logged data),
and to `AsyncLog::RecordSampleCompletion` (`logging.cc`), which computes the sample's
TPOT = (latency - first_token_latency) / (n_tokens - 1) in integer nanoseconds. There
`n_tokens == 0` logs the error "n_tokens argument missing or attempted to record 0 as number of
tokens" and `n_tokens == 1` logs "Number of tokens need to be greater than 1" and is then counted
as 0; both are error_runtime entries in mlperf_log_detail.txt, the sample's token count adds 0
to the run's tokens, and its TPOT becomes -(latency - first_token_latency): zero or a few
microseconds below it, since the first token of a 0- or 1-token output is sent when the output
ends (or just before, when the core streams it). Such a sample never raises the TPOT
percentiles LoadGen judges (it sorts below every real one) and its TTFT is true. Reporting 2
instead (what this module once did) kept LoadGen quiet but logged a `token_count` that differs
from the data, which fails TEST06, so a model that answers with EOS at once failed compliance.
The summary counts such samples (`short_outputs`); the submission checker rejects an accuracy
run whose detail log holds LoadGen errors, so a run with them says so.
"""

from __future__ import annotations

import ctypes
import threading
from threading import get_ident as _get_ident

import numpy as np

from llmlib.cores.base import EMPTY_TOKENS

#: Outputs with fewer tokens than this make LoadGen log an error_runtime entry (see above); they
#: are still reported with their true count and counted in `short_outputs`.
MIN_TPOT_TOKENS = 2

_U32 = np.dtype(np.uint32)
_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof
_EMPTY_ADDRESS = EMPTY_TOKENS.ctypes.data


def buffer_address(arr: np.ndarray) -> int:
    """Address of a contiguous array's data: ~0.6 us through ctypes.from_buffer, against ~2 us
    for `arr.ctypes.data` (this runs once or twice per sample on LoadGen's hot path)."""
    if not arr.nbytes:
        return _EMPTY_ADDRESS
    try:
        return _addressof(_from_buffer(arr))
    except TypeError:  # read-only buffer
        return arr.ctypes.data


def as_u32(token_ids: np.ndarray) -> np.ndarray:
    if token_ids.dtype is _U32 and token_ids.flags.c_contiguous:
        return token_ids
    return np.ascontiguousarray(token_ids, dtype=np.uint32)


class _FirstTokenBuffers:
    """One 1-token uint32 buffer per thread, with its address computed once: the first token is
    copied there for FirstTokenComplete (LoadGen copies it during the call), which costs less
    than slicing the output and looking up the slice's address every time."""

    def __init__(self):
        self._by_thread: dict[int, tuple[np.ndarray, int]] = {}

    def get(self, ident: int) -> tuple[np.ndarray, int]:
        entry = self._by_thread.get(ident)
        if entry is None:
            buf = np.zeros(1, dtype=np.uint32)
            entry = self._by_thread[ident] = (buf, buf.ctypes.data)
        return entry


class LoadgenReporter:
    """Turns request outcomes into LoadGen responses: a ResponseSink (llmlib/cores/base.py) given
    to the LLMServer as the target of LoadGen's requests. Request ids are LoadGen sample ids.

    `on_first_token` sends FirstTokenComplete. The server calls it exactly once before the final
    outcome of every streaming request (making it from the output, or empty before a failure,
    when the core sent none), so LoadGen never sees a streaming sample without a first token and
    the hot path keeps no per-sample state here. Callers outside the server (the scaffolding
    expander, a refused issue) report with `complete_sample` / `fail_sample`, which send the first
    token themselves when `streaming` (Server/Interactive with token latencies).
    """

    def __init__(self, lg, *, streaming: bool):
        self._lg = lg
        self._qsr = lg.QuerySampleResponse
        self._ftc = lg.FirstTokenComplete
        self._qsc = lg.QuerySamplesComplete
        self.streaming = streaming
        # Completed samples and tokens are counted by the LLMServer (under its lock); the
        # reporter counts only its rare paths, under its own lock.
        self._lock = threading.Lock()
        self._first_bufs = _FirstTokenBuffers()
        self.short_outputs = 0
        self.failed = 0
        self.closed = False  # set before LoadGen's SUT is destroyed: nothing may reach it after
        self.after_close = 0

    def close(self) -> None:
        """LoadGen's test is over (or torn down): from now on outcomes are counted, not reported."""
        self.closed = True

    def _late(self) -> None:
        with self._lock:
            self.after_close += 1

    def on_first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        if self.closed:
            return self._late()
        if not len(token_ids):
            self._ftc([self._qsr(request_id, _EMPTY_ADDRESS, 0, 1)])
            return
        buf, address = self._first_bufs.get(_get_ident())
        buf[0] = token_ids[0]
        self._ftc([self._qsr(request_id, address, 4, 1)])

    def on_complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int) -> None:
        if self.closed:
            return self._late()
        if len(token_ids):
            # The count LoadGen gets is the count of what it logs, whatever the core claimed.
            n_tokens = len(token_ids)
        # else: a count-only output (an endpoint that returns no ids, only usage or chunks): LoadGen
        # gets the count for its token figures; its log holds no data, so TEST06 cannot pass on it.
        if n_tokens < MIN_TPOT_TOKENS:
            with self._lock:
                self.short_outputs += 1
        # LoadGen copies the buffer during this call; token_ids stays alive until it returns.
        if token_ids.dtype is _U32:
            try:
                address = _addressof(_from_buffer(token_ids)) if token_ids.nbytes else _EMPTY_ADDRESS
            except TypeError:  # read-only or not contiguous
                token_ids = as_u32(token_ids)
                address = token_ids.ctypes.data
        else:
            token_ids = as_u32(token_ids)
            address = buffer_address(token_ids)
        self._qsc([self._qsr(request_id, address, token_ids.nbytes, n_tokens)])

    def on_error(self, request_id: int, error: BaseException) -> None:
        """A failed request still completes in LoadGen (or it would wait forever), with no
        output; the harness counts it and marks the run failed."""
        if self.closed:
            return self._late()
        self._qsc([self._qsr(request_id, _EMPTY_ADDRESS, 0, 0)])
        with self._lock:
            self.failed += 1

    # --- for callers outside the LLMServer, which sends no first token for them ----------------------
    def complete_sample(self, request_id: int, token_ids: np.ndarray) -> None:
        """Report a sample's whole output (its first token first, when streaming)."""
        if self.streaming:
            self.on_first_token(request_id, token_ids)
        self.on_complete(request_id, token_ids, len(token_ids))

    def fail_sample(self, request_id: int, error: BaseException) -> None:
        """Report a sample as failed (an empty first token first, when streaming)."""
        if self.streaming:
            self.on_first_token(request_id, EMPTY_TOKENS)
        self.on_error(request_id, error)
