"""Benchmark datasets: MLPerf DataFrames (pickle, parquet, JSON), NVIDIA's preprocessed npy tensors, synthetic sets.

Everything is loaded and validated into memory before timing starts; bad input raises DatasetError.
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from llmlib.errors import DatasetError

__all__ = [
    "FORMATS",
    "NPY_INPUT_IDS",
    "NPY_INPUT_LENS",
    "NPY_STOP_IDS",
    "LLMDataset",
    "load_dataset",
    "write_npy_dataset",
]

FORMATS = ("npy", "pickle", "parquet", "json", "synthetic", "math")
# The table formats: one row per sample, read with pandas (parquet through pyarrow, json as a list of records).
TABLE_FORMATS = ("pickle", "parquet", "json")

NPY_INPUT_IDS = "input_ids_padded.npy"
NPY_INPUT_LENS = "input_lens.npy"
NPY_STOP_IDS = "stop_ids_padded.npy"

_INT32_MAX = int(np.iinfo(np.int32).max)
# array.array typecode of a 32-bit signed int: 'i' on every platform we run on, checked anyway.
_I32 = "i" if array.array("i").itemsize == 4 else "l"

_TABLE_KEYS = frozenset(
    {
        "format",
        "path",
        "input_column",
        "reference_column",
        "reference_tokens_column",
        "required_columns",
        "extra_columns",
        "optional_columns",
    }
)
_NPY_KEYS = frozenset({"format", "path"})
_SYNTHETIC_KEYS = frozenset(
    {"format", "num_samples", "seed", "vocab_size", "input_len", "output_len", "reserved_ids"}
)
_LENGTH_DIST_KEYS = {
    "fixed": frozenset({"dist", "value"}),
    "uniform": frozenset({"dist", "min", "max"}),
    "normal": frozenset({"dist", "mean", "std", "min", "max"}),
}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class LLMDataset:
    """An in-memory LLM dataset: per-sample input token ids plus what accuracy and timing need.

    Arrays are read-only once loaded. `output_lens` is the reference output length of each
    sample (from reference token ids, or the synthetic draw), None when unknown.
    """

    name: str
    input_tokens: list[np.ndarray]
    input_lens: np.ndarray
    reference_texts: list[str] | None = None
    reference_tokens: list[np.ndarray] | None = None
    output_lens: np.ndarray | None = None
    stop_ids: list[np.ndarray] | None = None
    extra: dict[str, list] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.input_tokens)
        where = f"dataset '{self.name}' ({self.source})"
        for field_name, arr in (("input_lens", self.input_lens), ("output_lens", self.output_lens)):
            if arr is None:
                continue
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != np.int64:
                raise DatasetError(f"{where}: {field_name}: expected a 1-D int64 numpy array")
        per_sample: list[tuple[str, Any]] = [
            ("input_lens", self.input_lens),
            ("reference_texts", self.reference_texts),
            ("reference_tokens", self.reference_tokens),
            ("output_lens", self.output_lens),
            ("stop_ids", self.stop_ids),
        ]
        per_sample += [(f"extra['{key}']", values) for key, values in self.extra.items()]
        for field_name, values in per_sample:
            if values is not None and len(values) != n:
                raise DatasetError(
                    f"{where}: {field_name} has {len(values)} entries, expected one per sample ({n})"
                )

    def __len__(self) -> int:
        return len(self.input_tokens)

    def __repr__(self) -> str:
        return f"LLMDataset(name={self.name!r}, samples={len(self)}, source={self.source!r})"

    def subset(self, indices: Sequence[int] | np.ndarray) -> LLMDataset:
        """A new dataset holding the samples at `indices`, in that order (token arrays are shared)."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise IndexError(f"subset of dataset '{self.name}': expected a 1-D sequence of int indices")
        n = len(self)
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if bad.size:
            raise IndexError(
                f"subset of dataset '{self.name}': index {int(idx[bad[0]])} out of range 0..{n - 1}"
            )
        pick = idx.tolist()

        def take(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in pick]

        return LLMDataset(
            name=self.name,
            input_tokens=[self.input_tokens[i] for i in pick],
            input_lens=_read_only(self.input_lens[idx]),
            reference_texts=take(self.reference_texts),
            reference_tokens=take(self.reference_tokens),
            output_lens=None if self.output_lens is None else _read_only(self.output_lens[idx]),
            stop_ids=take(self.stop_ids),
            extra={key: [values[i] for i in pick] for key, values in self.extra.items()},
            source=self.source,
        )

    def length_stats(self) -> dict[str, int | float | None]:
        """Min / mean / max of input and output lengths and token totals (None where unknown)."""
        stats: dict[str, int | float | None] = {"num_samples": len(self)}
        for prefix, lens in (("input", self.input_lens), ("output", self.output_lens)):
            known = lens is not None and lens.size > 0
            stats[f"{prefix}_len_min"] = int(lens.min()) if known else None
            stats[f"{prefix}_len_mean"] = float(lens.mean()) if known else None
            stats[f"{prefix}_len_max"] = int(lens.max()) if known else None
            stats[f"{prefix}_tokens_total"] = int(lens.sum()) if known else None
        return stats


def load_dataset(spec: Mapping, *, base_dir: Path | None = None, name: str = "") -> LLMDataset:
    """Load, validate and hold in memory the dataset a benchmark's `dataset:` mapping describes.

    `format` picks the loader, and each accepts only its own keys (a typo is an error):
      pickle, parquet, json (a pandas DataFrame pickled, in a parquet file, or a JSON list of records):
                 path, input_column (tok_input; or a list of candidates, the first present is used),
                 reference_column, reference_tokens_column, required_columns, extra_columns (kept
                 per sample in `extra`), optional_columns (kept in `extra` when present)
      npy:       path (a directory with input_ids_padded.npy, input_lens.npy[, stop_ids_padded.npy])
      synthetic: num_samples, seed, vocab_size, input_len, output_len, reserved_ids
      math:      num_samples, seed, max_operand, ops (llmlib/math_dataset.py: problems with answers)
    A relative `path` resolves against `base_dir` (the current directory when None). `name`
    defaults to the file stem, directory name or "synthetic". Every problem raises DatasetError.
    """
    label = name or "<unnamed>"
    if not isinstance(spec, Mapping):
        raise DatasetError(
            f"dataset '{label}': expected a mapping with a 'format' key, got {type(spec).__name__}"
        )
    fmt = spec.get("format")
    if fmt in TABLE_FORMATS:
        return _load_table(spec, base_dir, name, fmt)
    if fmt == "npy":
        return _load_npy(spec, base_dir, name)
    if fmt == "synthetic":
        return _load_synthetic(spec, name)
    if fmt == "math":
        from llmlib.math_dataset import load_math_dataset

        return load_math_dataset(spec, name or "math")
    got = "no 'format' key" if fmt is None else f"unknown format {fmt!r}"
    raise DatasetError(f"dataset '{label}': {got}; expected one of: {', '.join(FORMATS)}")


def write_npy_dataset(dataset: LLMDataset, directory: str | PathLike, *, pad_id: int = 0) -> Path:
    """Write `dataset` in NVIDIA's npy layout under `directory` (created if needed); returns it.

    Writes input_ids_padded.npy (int32, N x max_len, padded with `pad_id`), input_lens.npy
    (int32) and, when the dataset has stop ids, stop_ids_padded.npy (int32, N x k; shorter rows
    are padded by repeating their last id, so padding never adds a new stop id). A stale
    stop_ids_padded.npy is removed when the dataset has none, so a reload matches the dataset.
    """
    out = Path(directory)
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or not 0 <= pad_id <= _INT32_MAX:
        raise DatasetError(
            f"write_npy_dataset to {out}: pad_id={pad_id!r}: expected an int in 0..{_INT32_MAX}"
        )
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"write_npy_dataset to {out}: dataset '{dataset.name}' has no samples")
    lens = dataset.input_lens
    width = int(lens.max())
    padded = np.full((n, width), pad_id, dtype=np.int32)
    padded[np.arange(width) < lens[:, None]] = np.concatenate(dataset.input_tokens)

    stop_padded = None
    if dataset.stop_ids is not None:
        stop_lens = np.fromiter((len(row) for row in dataset.stop_ids), dtype=np.int64, count=n)
        empty = np.flatnonzero(stop_lens == 0)
        if empty.size:
            raise DatasetError(
                f"write_npy_dataset to {out}: stop_ids row {int(empty[0])} of dataset "
                f"'{dataset.name}' is empty: expected at least one stop id per row"
            )
        k = int(stop_lens.max())
        stop_padded = np.empty((n, k), dtype=np.int32)
        for row, ids in enumerate(dataset.stop_ids):
            stop_padded[row, : len(ids)] = ids
            stop_padded[row, len(ids) :] = ids[-1]

    out.mkdir(parents=True, exist_ok=True)
    np.save(out / NPY_INPUT_IDS, padded)
    np.save(out / NPY_INPUT_LENS, lens.astype(np.int32))
    stop_path = out / NPY_STOP_IDS
    if stop_padded is not None:
        np.save(stop_path, stop_padded)
    elif stop_path.exists():
        stop_path.unlink()
    return out


# ---------------------------------------------------------------------------------------------
# pickle, parquet, json

_TABLE_WHAT = {
    "pickle": "a pickled pandas DataFrame",
    "parquet": "a parquet table",
    "json": "a JSON list of records (one object per sample)",
}


def _read_table(path: Path, fmt: str, where: str):
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{where}: {fmt} file not found: expected {_TABLE_WHAT[fmt]}")
    try:
        if fmt == "pickle":
            frame = pd.read_pickle(path)
        elif fmt == "parquet":
            try:
                import pyarrow  # noqa: F401  (pandas reads parquet through it)
            except ImportError as err:
                raise DatasetError(f"{where}: reading parquet needs pyarrow: pip install -e '.[parquet]'") from err
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path)
    except DatasetError:
        raise
    except Exception as err:  # unpickling and parsing raise many unrelated types; all mean a bad file
        raise DatasetError(f"{where}: cannot read {fmt} ({type(err).__name__}: {err})") from err
    if not isinstance(frame, pd.DataFrame):
        raise DatasetError(f"{where}: expected {_TABLE_WHAT[fmt]}, got {type(frame).__name__}")
    return frame


def _load_table(spec: Mapping, base_dir: Path | None, name: str, fmt: str) -> LLMDataset:
    path = _resolve_path(spec, base_dir, name, fmt)
    where = str(path)
    _check_keys(spec, _TABLE_KEYS, where, fmt)
    input_candidates = _input_columns(spec, where)
    ref_col = _str_key(spec, "reference_column", where, default=None)
    ref_tok_col = _str_key(spec, "reference_tokens_column", where, default=None)
    required = _str_list_key(spec, "required_columns", where)
    extra_cols = _str_list_key(spec, "extra_columns", where)
    optional_cols = _str_list_key(spec, "optional_columns", where)

    frame = _read_table(path, fmt, where)
    found = list(frame.columns)
    duplicated = sorted({str(col) for col in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise DatasetError(f"{where}: duplicate column name(s) {duplicated}: expected unique column names")
    input_col = next((col for col in input_candidates if col in frame.columns), None)
    if input_col is None:
        raise DatasetError(
            f"{where}: missing column '{' or '.join(input_candidates)}' (from input_column); columns found: {found}"
        )
    wanted = [(col, "required_columns") for col in required]
    if ref_col is not None:
        wanted.append((ref_col, "reference_column"))
    if ref_tok_col is not None:
        wanted.append((ref_tok_col, "reference_tokens_column"))
    wanted += [(col, "extra_columns") for col in extra_cols]
    for col, role in wanted:
        if col not in frame.columns:
            raise DatasetError(f"{where}: missing column '{col}' (from {role}); columns found: {found}")
    if len(frame) == 0:
        raise DatasetError(f"{where}: column '{input_col}': the DataFrame has no rows, expected at least one")
    kept = extra_cols + [col for col in optional_cols if col in frame.columns and col not in extra_cols]

    input_tokens, input_lens = _tokens_from_cells(frame[input_col].tolist(), where, input_col)
    reference_texts = None
    if ref_col is not None:
        reference_texts = frame[ref_col].tolist()
        for row, text in enumerate(reference_texts):
            if not isinstance(text, str):
                raise DatasetError(
                    f"{where}: column '{ref_col}' row {row}: expected a str reference text, "
                    f"got {type(text).__name__} ({text!r:.60})"
                )
    reference_tokens = output_lens = None
    if ref_tok_col is not None:
        reference_tokens, output_lens = _tokens_from_cells(frame[ref_tok_col].tolist(), where, ref_tok_col)

    return LLMDataset(
        name=name or path.stem,
        input_tokens=input_tokens,
        input_lens=input_lens,
        reference_texts=reference_texts,
        reference_tokens=reference_tokens,
        output_lens=output_lens,
        stop_ids=None,
        extra={col: _plain(frame[col].tolist()) for col in kept},
        source=where,
    )


def _plain(values: list) -> list:
    """Cells as plain Python values: parquet list columns arrive as numpy arrays."""
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def _input_columns(spec: Mapping, where: str) -> list[str]:
    value = spec.get("input_column", "tok_input")
    candidates = value if isinstance(value, (list, tuple)) else [value]
    if not candidates or not all(isinstance(v, str) and v for v in candidates):
        raise DatasetError(f"{where}: input_column={value!r}: expected a column name or a list of candidates")
    return list(candidates)


def _tokens_from_cells(cells: list, where: str, column: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Validate token-id cells and pack them into one read-only int32 buffer of per-row views.

    One pass over the rows; the per-token work (type and int32-range checks, conversion) is done
    in C by array.fromlist or numpy. Negative ids are found afterwards with one vectorized check.
    """
    prefix = f"{where}: column '{column}'"
    n = len(cells)
    buf = array.array(_I32)
    lens = np.empty(n, dtype=np.int64)
    for row, cell in enumerate(cells):
        start = len(buf)
        if type(cell) is list:
            try:
                buf.fromlist(cell)
            except (TypeError, OverflowError) as err:
                raise DatasetError(_bad_cell_message(prefix, row, cell)) from err
        elif isinstance(cell, np.ndarray):
            _append_array_cell(buf, cell, prefix, row)
        elif isinstance(cell, (list, tuple)):
            try:
                buf.fromlist(list(cell))
            except (TypeError, OverflowError) as err:
                raise DatasetError(_bad_cell_message(prefix, row, cell)) from err
        else:
            raise DatasetError(
                f"{prefix} row {row}: expected a list or 1-D array of int token ids, "
                f"got {type(cell).__name__} ({cell!r:.60})"
            )
        size = len(buf) - start
        if size == 0:
            raise DatasetError(f"{prefix} row {row}: empty token list, expected at least one token id")
        lens[row] = size

    flat = np.frombuffer(buf, dtype=np.int32) if len(buf) else np.empty(0, dtype=np.int32)
    offsets = _offsets(lens)
    negative = np.flatnonzero(flat < 0)
    if negative.size:
        pos = int(negative[0])
        row = int(np.searchsorted(offsets, pos, side="right")) - 1
        raise DatasetError(
            f"{prefix} row {row}: token id {int(flat[pos])} at position {pos - int(offsets[row])} "
            f"is negative, expected ids in 0..{_INT32_MAX}"
        )
    flat.flags.writeable = False
    return np.split(flat, offsets[1:-1]), _read_only(lens)


def _append_array_cell(buf: array.array, cell: np.ndarray, prefix: str, row: int) -> None:
    if cell.ndim != 1:
        raise DatasetError(f"{prefix} row {row}: expected a 1-D array of token ids, got shape {cell.shape}")
    if cell.dtype == object:
        try:
            buf.fromlist(cell.tolist())
        except (TypeError, OverflowError) as err:
            raise DatasetError(_bad_cell_message(prefix, row, cell.tolist())) from err
        return
    if cell.dtype.kind not in "iu":
        raise DatasetError(
            f"{prefix} row {row}: expected an integer array of token ids, got dtype {cell.dtype}"
        )
    if cell.size:
        low, high = int(cell.min()), int(cell.max())
        if low < 0 or high > _INT32_MAX:
            raise DatasetError(_bad_cell_message(prefix, row, cell.tolist()))
        buf.frombytes(np.ascontiguousarray(cell, dtype=np.int32).tobytes())


def _bad_cell_message(prefix: str, row: int, cell: Sequence) -> str:
    """Say which element of a token cell is wrong (only called once a cell is known to be bad)."""
    for pos, value in enumerate(cell):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            return (
                f"{prefix} row {row}: element {pos} is {type(value).__name__} ({value!r:.40}), "
                f"expected int token ids"
            )
        if value < 0:
            return (
                f"{prefix} row {row}: token id {value} at position {pos} is negative, "
                f"expected ids in 0..{_INT32_MAX}"
            )
        if value > _INT32_MAX:
            return (
                f"{prefix} row {row}: token id {value} at position {pos} does not fit int32 "
                f"(max {_INT32_MAX})"
            )
    return f"{prefix} row {row}: expected a list or 1-D array of int token ids"


# ---------------------------------------------------------------------------------------------
# npy


def _load_npy(spec: Mapping, base_dir: Path | None, name: str) -> LLMDataset:
    directory = _resolve_path(spec, base_dir, name, "npy")
    _check_keys(spec, _NPY_KEYS, str(directory), "npy")
    if not directory.is_dir():
        raise DatasetError(
            f"{directory}: npy dataset directory not found: expected a directory holding "
            f"{NPY_INPUT_IDS} and {NPY_INPUT_LENS}"
        )
    ids_path = directory / NPY_INPUT_IDS
    lens_path = directory / NPY_INPUT_LENS
    stop_path = directory / NPY_STOP_IDS
    ids = _load_int_array(ids_path, 2, "N x max_len")
    raw_lens = _load_int_array(lens_path, 1, "N")
    n, width = ids.shape
    if raw_lens.shape[0] != n:
        raise DatasetError(
            f"{lens_path}: array 'input_lens' has {raw_lens.shape[0]} entries but {NPY_INPUT_IDS} "
            f"has {n} rows, expected one length per row"
        )
    if n == 0:
        raise DatasetError(f"{ids_path}: array 'input_ids_padded' has no rows, expected at least one")
    bad = np.flatnonzero((raw_lens < 1) | (raw_lens > width))
    if bad.size:
        row = int(bad[0])
        raise DatasetError(
            f"{lens_path}: array 'input_lens' row {row}: length {int(raw_lens[row])}, "
            f"expected 1..{width} (the padded width of {NPY_INPUT_IDS})"
        )
    lens = raw_lens.astype(np.int64)
    offsets = _offsets(lens)
    flat = ids[np.arange(width) < lens[:, None]]  # row-major: every row's first len ids, in order
    _check_id_range(flat, ids_path, "input_ids_padded", offsets=offsets)
    flat = flat.astype(np.int32)
    flat.flags.writeable = False
    input_tokens = np.split(flat, offsets[1:-1])

    stop_ids = None
    if stop_path.exists():
        stops = _load_int_array(stop_path, 2, "N x k")
        if stops.shape[0] != n:
            raise DatasetError(
                f"{stop_path}: array 'stop_ids_padded' has {stops.shape[0]} rows but {NPY_INPUT_IDS} "
                f"has {n}, expected one row per sample"
            )
        if stops.shape[1] == 0:
            raise DatasetError(
                f"{stop_path}: array 'stop_ids_padded' has 0 columns, expected at least one stop id"
            )
        k = stops.shape[1]
        _check_id_range(stops.reshape(-1), stop_path, "stop_ids_padded", offsets=np.arange(n + 1) * k)
        stop_flat = stops.astype(np.int32).reshape(-1)
        stop_flat.flags.writeable = False
        stop_ids = np.split(stop_flat, np.arange(1, n) * k)

    return LLMDataset(
        name=name or directory.name,
        input_tokens=input_tokens,
        input_lens=_read_only(lens),
        stop_ids=stop_ids,
        source=str(directory),
    )


def _load_int_array(path: Path, ndim: int, shape_text: str) -> np.ndarray:
    label = path.name.removesuffix(".npy")
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found: expected a {ndim}-D integer array '{label}' ({shape_text})"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # np.load raises ValueError, OSError, EOFError... for a bad file
        raise DatasetError(f"{path}: cannot read array '{label}' ({type(err).__name__}: {err})") from err
    if not isinstance(arr, np.ndarray):
        raise DatasetError(f"{path}: expected a single .npy array '{label}', got {type(arr).__name__}")
    if arr.ndim != ndim:
        raise DatasetError(
            f"{path}: array '{label}' has rank {arr.ndim} (shape {arr.shape}), "
            f"expected {ndim}-D ({shape_text})"
        )
    if arr.dtype.kind not in "iu":
        raise DatasetError(f"{path}: array '{label}' has dtype {arr.dtype}, expected an integer dtype")
    return arr


def _check_id_range(flat: np.ndarray, path: Path, label: str, *, offsets: np.ndarray) -> None:
    """Raise naming the row if any id in `flat` (rows delimited by `offsets`) is outside 0..int32 max."""
    if flat.size == 0:
        return
    bad = np.flatnonzero((flat < 0) | (flat > _INT32_MAX))
    if bad.size:
        pos = int(bad[0])
        row = int(np.searchsorted(offsets, pos, side="right")) - 1
        raise DatasetError(
            f"{path}: array '{label}' row {row}: token id {int(flat[pos])} at position "
            f"{pos - int(offsets[row])}, expected ids in 0..{_INT32_MAX}"
        )


def _offsets(lens: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return offsets


# ---------------------------------------------------------------------------------------------
# synthetic


def _load_synthetic(spec: Mapping, name: str) -> LLMDataset:
    where = f"synthetic dataset '{name or 'synthetic'}'"
    _check_keys(spec, _SYNTHETIC_KEYS, where, "synthetic")
    num_samples = _int_param(spec, "num_samples", where, minimum=1)
    seed = _int_param(spec, "seed", where, minimum=0)
    vocab_size = _int_param(spec, "vocab_size", where, minimum=1)
    if vocab_size > _INT32_MAX + 1:
        raise DatasetError(
            f"{where}: vocab_size={vocab_size}: expected at most {_INT32_MAX + 1} (ids fit int32)"
        )
    reserved = _reserved_ids(spec, vocab_size, where)
    if reserved.size >= vocab_size:
        raise DatasetError(f"{where}: reserved_ids leave no usable token id in vocab_size={vocab_size}")
    input_dist = _length_dist(spec, "input_len", where)
    output_dist = _length_dist(spec, "output_len", where)

    rng = np.random.default_rng(seed)
    input_lens = _draw_lengths(rng, input_dist, num_samples)
    output_lens = _draw_lengths(rng, output_dist, num_samples)
    # Draw an index among the allowed ids, then skip over the reserved ids below it:
    # with r sorted, id = d + #{j : r[j] - j <= d}.
    draws = rng.integers(0, vocab_size - reserved.size, size=int(input_lens.sum()), dtype=np.int64)
    if reserved.size:
        draws += np.searchsorted(reserved - np.arange(reserved.size), draws, side="right")
    flat = draws.astype(np.int32)
    flat.flags.writeable = False
    return LLMDataset(
        name=name or "synthetic",
        input_tokens=np.split(flat, _offsets(input_lens)[1:-1]),
        input_lens=_read_only(input_lens),
        output_lens=_read_only(output_lens),
        source=f"synthetic(seed={seed})",
    )


def _length_dist(spec: Mapping, key: str, where: str) -> dict[str, Any]:
    dist_spec = spec.get(key)
    if not isinstance(dist_spec, Mapping):
        raise DatasetError(
            f"{where}: {key}: expected a mapping like {{dist: fixed, value: n}}, "
            f"{{dist: uniform, min: a, max: b}} or {{dist: normal, mean: m, std: s, min: a, max: b}}, "
            f"got {dist_spec!r}"
        )
    dist = dist_spec.get("dist")
    if dist not in _LENGTH_DIST_KEYS:
        raise DatasetError(
            f"{where}: {key}.dist={dist!r}: unknown dist, "
            f"expected one of: {', '.join(_LENGTH_DIST_KEYS)}"
        )
    _check_keys(dist_spec, _LENGTH_DIST_KEYS[dist], where, f"{key} ({dist})", prefix=f"{key}.")
    out: dict[str, Any] = {"dist": dist}
    least = 0 if key == "output_len" else 1  # an output may be empty (a model that ends at once)
    if dist == "fixed":
        out["value"] = _int_param(dist_spec, "value", where, minimum=least, prefix=f"{key}.")
        return out
    low = _int_param(dist_spec, "min", where, minimum=least, prefix=f"{key}.")
    high = _int_param(dist_spec, "max", where, minimum=least, prefix=f"{key}.")
    if low > high:
        raise DatasetError(f"{where}: {key}.min={low} > {key}.max={high}: expected min <= max")
    out["min"], out["max"] = low, high
    if dist == "normal":
        for param in ("mean", "std"):
            value = dist_spec.get(param)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DatasetError(f"{where}: {key}.{param}={value!r}: expected a finite number")
            out[param] = float(value)
        if out["std"] < 0:
            raise DatasetError(f"{where}: {key}.std={out['std']}: expected std >= 0")
    return out


def _draw_lengths(rng: np.random.Generator, dist: dict[str, Any], n: int) -> np.ndarray:
    if dist["dist"] == "fixed":
        return np.full(n, dist["value"], dtype=np.int64)
    if dist["dist"] == "uniform":
        return rng.integers(dist["min"], dist["max"], size=n, endpoint=True, dtype=np.int64)
    values = np.rint(rng.normal(dist["mean"], dist["std"], size=n))
    return np.clip(values, dist["min"], dist["max"]).astype(np.int64)


def _reserved_ids(spec: Mapping, vocab_size: int, where: str) -> np.ndarray:
    raw = spec.get("reserved_ids", [])
    if not isinstance(raw, (list, tuple)):
        raise DatasetError(f"{where}: reserved_ids={raw!r}: expected a list of token ids")
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
            raise DatasetError(
                f"{where}: reserved_ids entry {value!r}: expected an int token id in 0..{vocab_size - 1}"
            )
    return np.unique(np.asarray(raw, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# spec helpers


def _resolve_path(spec: Mapping, base_dir: Path | None, name: str, fmt: str) -> Path:
    raw = spec.get("path")
    if not isinstance(raw, (str, PathLike)) or not str(raw):
        raise DatasetError(
            f"{fmt} dataset '{name or '<unnamed>'}': path={raw!r}: expected a file or directory path"
        )
    path = Path(raw).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _check_keys(spec: Mapping, allowed: frozenset, where: str, what: str, prefix: str = "") -> None:
    unknown = sorted(str(key) for key in spec if key not in allowed)
    if unknown:
        raise DatasetError(
            f"{where}: unknown key(s) {', '.join(prefix + k for k in unknown)} for {what}; "
            f"expected: {', '.join(sorted(allowed))}"
        )


def _str_key(spec: Mapping, key: str, where: str, *, default: str | None) -> str | None:
    value = spec.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise DatasetError(f"{where}: {key}={value!r}: expected a column name")
    return value


def _str_list_key(spec: Mapping, key: str, where: str) -> list[str]:
    value = spec.get(key, [])
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise DatasetError(f"{where}: {key}={value!r}: expected a list of column names")
    return list(value)


def _int_param(spec: Mapping, key: str, where: str, *, minimum: int, prefix: str = "") -> int:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where}: {prefix}{key}={value!r}: expected an int >= {minimum}")
    if value < minimum:
        raise DatasetError(f"{where}: {prefix}{key}={value}: expected an int >= {minimum}")
    return value


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr
