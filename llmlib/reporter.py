"""The only place that calls LoadGen's FirstTokenComplete and QuerySamplesComplete.

Every sample is reported with `n_tokens`; outputs shorter than two tokens keep TPOT defined.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from llmlib.cores.base import EMPTY_TOKENS

#: LoadGen computes TPOT as (latency - TTFT) / (n_tokens - 1), which is undefined (it logs
#: garbage) below two tokens. Such samples are reported with this many tokens, so TPOT is
#: the time between first and final response (about 0); they are counted in `short_outputs`.
MIN_REPORTED_TOKENS = 2

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
    except (TypeError, ValueError):  # read-only buffer
        return arr.ctypes.data


def as_u32(token_ids: np.ndarray) -> np.ndarray:
    if token_ids.dtype is _U32 and token_ids.flags.c_contiguous:
        return token_ids
    return np.ascontiguousarray(token_ids, dtype=np.uint32)


class LoadgenReporter:
    """Turns request outcomes into LoadGen responses. Request ids are LoadGen sample ids.

    `streaming` (Server/Interactive with token latencies): FirstTokenComplete is sent for every
    sample, at the latest just before its final response, so LoadGen never sees a sample
    without a first token.
    """

    def __init__(self, lg, *, streaming: bool, accuracy: bool = False):
        self._lg = lg
        self._qsr = lg.QuerySampleResponse
        self._ftc = lg.FirstTokenComplete
        self._qsc = lg.QuerySamplesComplete
        self.streaming = streaming
        self.accuracy = accuracy
        self._lock = threading.Lock()  # cores deliver from their own threads; counts must be exact
        self.short_outputs = 0
        self.failed = 0
        self.reported = 0
        #: successful samples and their real output token count (before the TPOT adjustment)
        self.samples_done = 0
        self.output_tokens = 0
        #: accuracy mode keeps outputs here, for the run report (LoadGen also logs them)
        self.outputs: dict[int, np.ndarray] | None = {} if accuracy else None

    def first_token(self, request_id: int, token_ids: np.ndarray) -> None:
        first = as_u32(token_ids[:1])
        self._ftc([self._qsr(request_id, buffer_address(first), first.nbytes, 1)])

    def complete(self, request_id: int, token_ids: np.ndarray, n_tokens: int, first_sent: bool) -> None:
        token_ids = as_u32(token_ids)
        if self.streaming and not first_sent:
            self.first_token(request_id, token_ids if len(token_ids) else EMPTY_TOKENS)
        real_n = n_tokens
        if n_tokens < MIN_REPORTED_TOKENS:
            n_tokens = MIN_REPORTED_TOKENS
        # LoadGen copies the buffer during this call; token_ids stays alive until it returns.
        self._qsc([self._qsr(request_id, buffer_address(token_ids), token_ids.nbytes, n_tokens)])
        with self._lock:
            self.reported += 1
            self.samples_done += 1
            self.output_tokens += real_n
            if real_n < MIN_REPORTED_TOKENS:
                self.short_outputs += 1
        if self.outputs is not None:
            self.outputs[request_id] = token_ids

    def fail(self, request_id: int, error: BaseException, first_sent: bool) -> None:
        """A failed request still completes in LoadGen (or it would wait forever), with no
        output; the harness counts it and marks the run failed."""
        if self.streaming and not first_sent:
            self.first_token(request_id, EMPTY_TOKENS)
        self._qsc([self._qsr(request_id, _EMPTY_ADDRESS, 0, MIN_REPORTED_TOKENS)])
        with self._lock:
            self.reported += 1
            self.failed += 1
