"""LoadGen's mlperf_log_accuracy.json read the way the reference evaluators read it: every entry in
order, its bytes as token ids of the dtype the run wrote (our harness: uint32; the references' flag)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlib.errors import HarnessError

# The reference scripts' --dtype choices, plus the unsigned form our harness writes. Little-endian,
# as LoadGen copies the response buffer of an x86/ARM host byte for byte.
DTYPES: dict[str, str] = {"uint32": "<u4", "int32": "<i4", "int64": "<i8", "float": "<f4"}


class AccuracyLogError(HarnessError):
    """mlperf_log_accuracy.json is missing or malformed."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One logged response: LoadGen's sequence id, the sample index and the output token ids."""

    seq_id: int
    qsl_idx: int
    tokens: np.ndarray


def parse_dtype(name: str) -> np.dtype:
    """The numpy dtype for a --dtype value, or an error naming the choices."""
    try:
        return np.dtype(DTYPES[name])
    except KeyError:
        raise AccuracyLogError(f"--dtype={name!r}: expected one of {', '.join(DTYPES)}") from None


def read_accuracy_log(path: str | Path, dtype: str = "uint32") -> list[LogEntry]:
    """Every entry of the log, in file order, duplicates kept (each evaluator drops them as its
    reference script does). A byte count that is not a whole number of tokens is an error."""
    path = Path(path)
    np_dtype = parse_dtype(dtype)
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise AccuracyLogError(f"{path}: no accuracy log (was the run AccuracyOnly?)") from err
    except UnicodeDecodeError as err:
        raise AccuracyLogError(f"{path}: not valid JSON ({err})") from err
    try:
        if text.lstrip().startswith("[") or not text.strip():
            entries = json.loads(text)
        else:  # one JSON object per line (deepseek-r1's reference reads this form too)
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise AccuracyLogError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(entries, list):
        raise AccuracyLogError(f"{path}: expected a JSON list of {{seq_id, qsl_idx, data}}, "
                               f"got {type(entries).__name__}")
    out: list[LogEntry] = []
    for k, e in enumerate(entries):
        try:
            idx, data = int(e["qsl_idx"]), bytes.fromhex(e["data"])
        except (KeyError, TypeError, ValueError) as err:
            raise AccuracyLogError(f"{path}: entry {k} is not {{qsl_idx, data: hex}} ({err!r})") from err
        if idx < 0:
            raise AccuracyLogError(f"{path}: entry {k} has a negative qsl_idx {idx}")
        if len(data) % np_dtype.itemsize:
            raise AccuracyLogError(f"{path}: entry {k} (qsl_idx {idx}) has {len(data)} bytes, "
                                   f"not a whole number of {dtype} tokens ({np_dtype.itemsize} bytes each)")
        tokens = np.frombuffer(data, dtype=np_dtype)
        out.append(LogEntry(seq_id=int(e.get("seq_id", k)), qsl_idx=idx, tokens=tokens))
    return out


def first_per_sample(entries: list[LogEntry]) -> tuple[list[LogEntry], list[int]]:
    """The first entry of each qsl_idx in log order (what the reference scripts score), and the
    indices logged again with different tokens (reported, never silently merged)."""
    seen: dict[int, LogEntry] = {}
    conflicting: list[int] = []
    for e in entries:
        first = seen.get(e.qsl_idx)
        if first is None:
            seen[e.qsl_idx] = e
        elif not np.array_equal(first.tokens, e.tokens) and e.qsl_idx not in conflicting:
            conflicting.append(e.qsl_idx)
    return list(seen.values()), conflicting
