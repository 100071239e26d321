"""Tests of llmlib.dataset: pickle, npy and synthetic loading, round trips and bad-input errors.

Frames are small, built here in the shape of the real MLPerf schemas (llama2, mixtral, llama3.1-405b).
"""

import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmlib.dataset import LLMDataset, load_dataset, write_npy_dataset
from llmlib.errors import DatasetError

INT32_MAX = 2**31 - 1


def _write_pickle(path: Path, frame) -> Path:
    pd.to_pickle(frame, path)
    return path


def _llama2_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "input": ["q0", "q1", "q2"],
            "tok_input": [[1, 15, 27], [1, 99], [1, 2, 3, 4, 5]],
            "output": ["a0", "a1 a1", "a2"],
            "tok_output": [[7, 8, 2], [9, 2], [2]],
        }
    )


def _mixtral_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tok_input": [np.array([1, 330, 28705], dtype=np.int64), np.array([1, 22], dtype=np.int64)],
            "dataset": ["GSM8K", "MBXP"],
            "gt_output": ["42", "def f(): pass"],
            "id": ["train.123", "javascript_4"],
        }
    )


def _llama405b_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tok_input": [[128000, 5, 6], [128000, 7], [128000, 8, 9, 10]],
            "gt_output": ["A", "B", "C"],
            "metric": ["rouge", "niah_em", "qa_em"],
        }
    )


LLAMA2_SPEC = {
    "format": "pickle",
    "path": "open_orca.pkl",
    "input_column": "tok_input",
    "reference_column": "output",
    "reference_tokens_column": "tok_output",
    "required_columns": ["input", "tok_input", "output", "tok_output"],
}


def _synthetic_spec(**overrides) -> dict:
    spec = {
        "format": "synthetic",
        "num_samples": 64,
        "seed": 7,
        "vocab_size": 1000,
        "input_len": {"dist": "uniform", "min": 3, "max": 40},
        "output_len": {"dist": "normal", "mean": 20, "std": 15, "min": 5, "max": 30},
    }
    spec.update(overrides)
    return spec


def _tokens(ds: LLMDataset) -> list[list[int]]:
    return [t.tolist() for t in ds.input_tokens]


def _check_token_arrays(ds: LLMDataset) -> None:
    for tokens, n in zip(ds.input_tokens, ds.input_lens, strict=True):
        assert tokens.dtype == np.int32 and tokens.ndim == 1 and tokens.flags.c_contiguous
        assert tokens.size == n > 0
    assert ds.input_lens.dtype == np.int64


# --------------------------------------------------------------------------------------------
# pickle


def test_llama2_pickle_relative_to_base_dir(tmp_path):
    _write_pickle(tmp_path / "open_orca.pkl", _llama2_frame())
    ds = load_dataset(LLAMA2_SPEC, base_dir=tmp_path, name="llama2-70b")
    assert len(ds) == 3 and ds.name == "llama2-70b"
    assert _tokens(ds) == [[1, 15, 27], [1, 99], [1, 2, 3, 4, 5]]
    assert ds.input_lens.tolist() == [3, 2, 5]
    assert ds.reference_texts == ["a0", "a1 a1", "a2"]
    assert [t.tolist() for t in ds.reference_tokens] == [[7, 8, 2], [9, 2], [2]]
    assert ds.output_lens.tolist() == [3, 2, 1] and ds.output_lens.dtype == np.int64
    assert ds.stop_ids is None and ds.extra == {}
    assert ds.source == str(tmp_path / "open_orca.pkl")
    _check_token_arrays(ds)
    with pytest.raises(ValueError):
        ds.input_tokens[0][0] = 5  # loaded data is read-only


def test_mixtral_pickle_array_cells_and_extra_columns(tmp_path):
    path = _write_pickle(tmp_path / "mixtral_15k.pkl", _mixtral_frame())
    spec = {
        "format": "pickle",
        "path": str(path),
        "reference_column": "gt_output",
        "required_columns": ["tok_input", "dataset", "gt_output", "id"],
        "extra_columns": ["dataset", "id"],
    }
    ds = load_dataset(spec)
    assert ds.name == "mixtral_15k"
    assert _tokens(ds) == [[1, 330, 28705], [1, 22]]
    assert ds.reference_texts == ["42", "def f(): pass"]
    assert ds.reference_tokens is None and ds.output_lens is None
    assert ds.extra == {"dataset": ["GSM8K", "MBXP"], "id": ["train.123", "javascript_4"]}
    _check_token_arrays(ds)


def test_llama405b_pickle_with_metric_column(tmp_path):
    _write_pickle(tmp_path / "405b.pkl", _llama405b_frame())
    spec = {
        "format": "pickle",
        "path": "405b.pkl",
        "reference_column": "gt_output",
        "required_columns": ["tok_input", "gt_output", "metric"],
        "extra_columns": ["metric"],
    }
    ds = load_dataset(spec, base_dir=tmp_path)
    assert ds.input_lens.tolist() == [3, 2, 4]
    assert ds.extra["metric"] == ["rouge", "niah_em", "qa_em"]
    stats = ds.length_stats()
    assert stats["input_len_min"] == 2 and stats["input_len_max"] == 4
    assert stats["input_len_mean"] == pytest.approx(3.0) and stats["input_tokens_total"] == 9
    assert stats["output_len_mean"] is None


def test_subset_keeps_every_per_sample_field_aligned(tmp_path):
    _write_pickle(tmp_path / "open_orca.pkl", _llama2_frame())
    ds = load_dataset(LLAMA2_SPEC, base_dir=tmp_path)
    sub = ds.subset([2, 0])
    assert len(sub) == 2
    assert _tokens(sub) == [[1, 2, 3, 4, 5], [1, 15, 27]]
    assert sub.input_lens.tolist() == [5, 3]
    assert sub.reference_texts == ["a2", "a0"]
    assert sub.output_lens.tolist() == [1, 3]
    assert sub.length_stats()["output_len_max"] == 3
    with pytest.raises(IndexError, match="out of range"):
        ds.subset([3])
    with pytest.raises(IndexError, match="out of range"):
        ds.subset([-1])


def test_pickle_load_of_24576_rows_is_fast(tmp_path):
    rng = np.random.default_rng(0)
    cells = [rng.integers(0, 32000, n).tolist() for n in rng.integers(1, 64, 24576)]
    _write_pickle(tmp_path / "big.pkl", pd.DataFrame({"tok_input": cells}))
    start = time.perf_counter()
    ds = load_dataset({"format": "pickle", "path": "big.pkl"}, base_dir=tmp_path)
    elapsed = time.perf_counter() - start
    assert len(ds) == 24576 and ds.input_tokens[123].tolist() == cells[123]
    assert elapsed < 3.0, f"loading 24576 rows took {elapsed:.2f}s"


# --------------------------------------------------------------------------------------------
# npy


def _write_npy(directory: Path, ids, lens, stops=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "input_ids_padded.npy", np.asarray(ids))
    np.save(directory / "input_lens.npy", np.asarray(lens))
    if stops is not None:
        np.save(directory / "stop_ids_padded.npy", np.asarray(stops))
    return directory


def test_npy_load_takes_row_prefixes_and_ignores_padding(tmp_path):
    ids = np.array([[5, 6, 7, -1], [8, 2, 2, 2], [9, 10, 11, 12]], dtype=np.int32)
    stops = np.array([[2, 2], [2, 2], [13, 2]], dtype=np.int32)
    _write_npy(tmp_path / "mixtral_npy", ids, np.array([3, 1, 4], dtype=np.int32), stops)
    ds = load_dataset({"format": "npy", "path": "mixtral_npy"}, base_dir=tmp_path)
    assert _tokens(ds) == [[5, 6, 7], [8], [9, 10, 11, 12]]
    assert [s.tolist() for s in ds.stop_ids] == [[2, 2], [2, 2], [13, 2]]
    assert ds.reference_texts is None and ds.output_lens is None
    assert ds.name == "mixtral_npy"
    _check_token_arrays(ds)


def test_npy_round_trip_from_pickle(tmp_path):
    _write_pickle(tmp_path / "open_orca.pkl", _llama2_frame())
    original = load_dataset(LLAMA2_SPEC, base_dir=tmp_path)
    out = write_npy_dataset(original, tmp_path / "npy", pad_id=2)
    padded = np.load(out / "input_ids_padded.npy")
    assert padded.shape == (3, 5) and padded.dtype == np.int32 and padded[1, 2:].tolist() == [2, 2, 2]
    assert not (out / "stop_ids_padded.npy").exists()
    back = load_dataset({"format": "npy", "path": str(out)})
    assert _tokens(back) == _tokens(original)
    assert back.input_lens.tolist() == original.input_lens.tolist()


def test_npy_round_trip_with_ragged_stop_ids_and_stale_file_removed(tmp_path):
    base = LLMDataset(
        name="tiny",
        input_tokens=[np.array([4, 5], dtype=np.int32), np.array([6], dtype=np.int32)],
        input_lens=np.array([2, 1], dtype=np.int64),
        stop_ids=[np.array([2], dtype=np.int32), np.array([2, 13, 14], dtype=np.int32)],
    )
    out = write_npy_dataset(base, tmp_path / "npy")
    back = load_dataset({"format": "npy", "path": str(out)})
    assert _tokens(back) == [[4, 5], [6]]
    # short rows are padded by repeating their last id, which adds no new stop id
    assert [s.tolist() for s in back.stop_ids] == [[2, 2, 2], [2, 13, 14]]

    no_stops = LLMDataset(name="tiny", input_tokens=base.input_tokens, input_lens=base.input_lens)
    write_npy_dataset(no_stops, out)
    assert load_dataset({"format": "npy", "path": str(out)}).stop_ids is None


def test_npy_round_trip_of_synthetic(tmp_path):
    syn = load_dataset(_synthetic_spec())
    back = load_dataset({"format": "npy", "path": str(write_npy_dataset(syn, tmp_path / "s"))})
    assert _tokens(back) == _tokens(syn)


# --------------------------------------------------------------------------------------------
# synthetic


def _fingerprint(ds: LLMDataset) -> bytes:
    return b"".join(t.tobytes() for t in ds.input_tokens) + ds.input_lens.tobytes() + ds.output_lens.tobytes()


def test_synthetic_same_seed_is_identical_byte_for_byte():
    a = load_dataset(_synthetic_spec())
    b = load_dataset(_synthetic_spec())
    c = load_dataset(_synthetic_spec(seed=8))
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)
    assert a.source == "synthetic(seed=7)" and c.source == "synthetic(seed=8)"
    _check_token_arrays(a)


def test_synthetic_lengths_respect_their_distributions():
    ds = load_dataset(_synthetic_spec(num_samples=2000))
    assert ds.input_lens.min() >= 3 and ds.input_lens.max() <= 40
    assert ds.input_lens.min() == 3 and ds.input_lens.max() == 40  # uniform bounds are inclusive
    assert ds.output_lens.min() >= 5 and ds.output_lens.max() <= 30  # normal, clipped
    assert ds.output_lens.dtype == np.int64
    assert [len(t) for t in ds.input_tokens] == ds.input_lens.tolist()
    fixed = load_dataset(_synthetic_spec(input_len={"dist": "fixed", "value": 11}))
    assert set(fixed.input_lens.tolist()) == {11}
    stats = fixed.length_stats()
    assert stats["input_len_min"] == stats["input_len_max"] == 11 and stats["num_samples"] == 64


def test_synthetic_never_generates_reserved_ids():
    ds = load_dataset(_synthetic_spec(num_samples=200, vocab_size=8, reserved_ids=[0, 3, 7]))
    seen = set(np.concatenate(ds.input_tokens).tolist())
    assert seen == {1, 2, 4, 5, 6}


# --------------------------------------------------------------------------------------------
# bad input: every case raises DatasetError naming the file and the column / array


def _pickle_spec(path: Path, **keys) -> dict:
    return {"format": "pickle", "path": str(path), **keys}


@pytest.mark.parametrize(
    ("cell", "needles"),
    [
        ("1 2 3", ["row 1", "str"]),
        (None, ["row 1", "NoneType"]),
        ([1, 2.5], ["row 1", "element 1", "float"]),
        (["1"], ["row 1", "str"]),
        ([], ["row 1", "empty"]),
        ([4, -3], ["row 1", "-3", "negative"]),
        ([2**31], ["row 1", str(2**31), "int32"]),
        ([2**70], ["row 1", "int32"]),
        (np.array([1.0, 2.0]), ["row 1", "float64"]),
        (np.array([[1, 2]]), ["row 1", "1-D"]),
        (np.array([5, -1]), ["row 1", "negative"]),
        (np.array([2**40], dtype=np.int64), ["row 1", "int32"]),
        ((1, [2]), ["row 1", "list"]),
        (np.int64(3), ["row 1", "int64"]),
    ],
)
def test_bad_token_cell(tmp_path, cell, needles):
    frame = pd.DataFrame({"tok_input": pd.Series([[1, 2], cell], dtype=object)})
    path = _write_pickle(tmp_path / "bad_tokens.pkl", frame)
    with pytest.raises(DatasetError) as info:
        load_dataset(_pickle_spec(path))
    message = str(info.value)
    for needle in ["bad_tokens.pkl", "tok_input", *needles]:
        assert needle in message


def test_bad_reference_token_cell_names_that_column(tmp_path):
    frame = _llama2_frame()
    frame.at[2, "tok_output"] = [3, -1]
    path = _write_pickle(tmp_path / "open_orca.pkl", frame)
    with pytest.raises(DatasetError, match=r"open_orca\.pkl: column 'tok_output' row 2: token id -1"):
        load_dataset(_pickle_spec(path, reference_tokens_column="tok_output"))


def test_reference_text_that_is_not_a_string(tmp_path):
    frame = _llama405b_frame()
    frame["gt_output"] = ["A", None, "C"]
    path = _write_pickle(tmp_path / "405b.pkl", frame)
    with pytest.raises(DatasetError, match=r"405b\.pkl: column 'gt_output' row 1: expected a str"):
        load_dataset(_pickle_spec(path, reference_column="gt_output"))


def test_missing_pickle_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.pkl: pickle file not found"):
        load_dataset({"format": "pickle", "path": "nope.pkl"}, base_dir=tmp_path)


def test_pickle_that_is_not_a_dataframe(tmp_path):
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"tok_input": [[1]]}))
    with pytest.raises(DatasetError, match=r"dict\.pkl: expected a pickled pandas DataFrame, got dict"):
        load_dataset(_pickle_spec(path))


def test_corrupt_pickle(tmp_path):
    path = tmp_path / "corrupt.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match=r"corrupt\.pkl: cannot read pickle") as info:
        load_dataset(_pickle_spec(path))
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("keys", "column"),
    [
        ({"required_columns": ["tok_input", "metric"]}, "metric"),
        ({"input_column": "input_ids"}, "input_ids"),
        ({"reference_column": "gt_output"}, "gt_output"),
        ({"reference_tokens_column": "tok_output"}, "tok_output"),
        ({"extra_columns": ["id"]}, "id"),
    ],
)
def test_missing_column_lists_the_columns_found(tmp_path, keys, column):
    path = _write_pickle(tmp_path / "schema.pkl", pd.DataFrame({"tok_input": [[1]], "output": ["x"]}))
    with pytest.raises(DatasetError) as info:
        load_dataset(_pickle_spec(path, **keys))
    message = str(info.value)
    assert "schema.pkl" in message and f"missing column '{column}'" in message
    assert "columns found: ['tok_input', 'output']" in message


def test_unknown_pickle_key_and_bad_column_list(tmp_path):
    path = _write_pickle(tmp_path / "open_orca.pkl", _llama2_frame())
    with pytest.raises(DatasetError, match=r"open_orca\.pkl: unknown key\(s\) input_colum "):
        load_dataset(_pickle_spec(path, input_colum="tok_input"))
    with pytest.raises(DatasetError, match=r"open_orca\.pkl: required_columns='tok_input': expected a list"):
        load_dataset(_pickle_spec(path, required_columns="tok_input"))


@pytest.mark.parametrize(
    ("ids", "lens", "stops", "needles"),
    [
        (np.array([1, 2, 3]), np.array([3]), None, ["input_ids_padded.npy", "rank 1", "2-D"]),
        (np.array([[1.0, 2.0]]), np.array([2]), None, ["input_ids_padded.npy", "dtype float64"]),
        (np.array([[1, 2]]), np.array([[2]]), None, ["input_lens.npy", "rank 2", "1-D"]),
        (np.array([[1, 2]]), np.array([2.0]), None, ["input_lens.npy", "dtype float64"]),
        (np.array([[1, 2], [3, 4]]), np.array([2]), None, ["input_lens.npy", "1 entries", "2 rows"]),
        (np.array([[1, 2], [3, 4]]), np.array([2, 0]), None, ["input_lens.npy", "row 1", "length 0", "1..2"]),
        (np.array([[1, 2], [3, 4]]), np.array([2, 3]), None, ["input_lens.npy", "row 1", "length 3", "1..2"]),
        (np.array([[1, 2], [3, -4]]), np.array([2, 2]), None, ["input_ids_padded.npy", "row 1", "-4"]),
        (np.array([[1, 2], [3, 2**40]]), np.array([2, 2]), None, ["input_ids_padded.npy", "row 1", str(2**40)]),
        (np.array([[1, 2], [3, 4]]), np.array([2, 2]), np.array([[2]]), ["stop_ids_padded.npy", "1 rows", "has 2"]),
        (np.array([[1, 2], [3, 4]]), np.array([2, 2]), np.array([2, 2]), ["stop_ids_padded.npy", "rank 1"]),
        (np.array([[1, 2], [3, 4]]), np.array([2, 2]), np.array([[2], [-1]]), ["stop_ids_padded.npy", "row 1", "-1"]),
    ],
)
def test_bad_npy_arrays(tmp_path, ids, lens, stops, needles):
    directory = _write_npy(tmp_path / "npy", ids, lens, stops)
    with pytest.raises(DatasetError) as info:
        load_dataset({"format": "npy", "path": str(directory)})
    message = str(info.value)
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("missing", ["input_ids_padded.npy", "input_lens.npy"])
def test_missing_npy_file(tmp_path, missing):
    directory = _write_npy(tmp_path / "npy", np.array([[1, 2]]), np.array([2]))
    (directory / missing).unlink()
    with pytest.raises(DatasetError, match=rf"{missing}: file not found"):
        load_dataset({"format": "npy", "path": str(directory)})


def test_missing_npy_directory(tmp_path):
    with pytest.raises(DatasetError, match=r"gone: npy dataset directory not found"):
        load_dataset({"format": "npy", "path": str(tmp_path / "gone")})


def test_npy_object_array_is_refused(tmp_path):
    directory = _write_npy(tmp_path / "npy", np.array([[1, 2]]), np.array([2]))
    np.save(directory / "input_lens.npy", np.array([2, None], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"input_lens\.npy: cannot read array 'input_lens'"):
        load_dataset({"format": "npy", "path": str(directory)})


@pytest.mark.parametrize("fmt", ["csv", None])
def test_unknown_format_lists_the_valid_ones(fmt):
    spec = {"path": "x"} if fmt is None else {"format": fmt, "path": "x"}
    with pytest.raises(DatasetError, match=r"dataset 'gptj'.*expected one of: npy, pickle, parquet, json, synthetic"):
        load_dataset(spec, name="gptj")


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"input_len": {"dist": "uniform", "min": 9, "max": 3}}, ["input_len.min=9 > input_len.max=3"]),
        ({"output_len": {"dist": "normal", "mean": 5, "std": 1, "min": 8, "max": 2}}, ["output_len.min=8"]),
        ({"vocab_size": 0}, ["vocab_size=0", ">= 1"]),
        ({"vocab_size": -5}, ["vocab_size=-5"]),
        ({"num_samples": 0}, ["num_samples=0", ">= 1"]),
        ({"input_len": {"dist": "zipf", "value": 3}}, ["input_len.dist='zipf'", "fixed, uniform, normal"]),
        ({"input_len": {"dist": "fixed", "value": 0}}, ["input_len.value=0"]),
        ({"input_len": {"dist": "fixed", "value": 4, "max": 9}}, ["input_len.max"]),
        ({"output_len": {"dist": "normal", "mean": 5, "std": -1, "min": 1, "max": 9}}, ["output_len.std"]),
        ({"output_len": 12}, ["output_len", "expected a mapping"]),
        ({"seed": None}, ["seed=None"]),
        ({"reserved_ids": [0, 1000]}, ["reserved_ids", "1000", "0..999"]),
        ({"vocab_size": 2, "reserved_ids": [0, 1]}, ["reserved_ids leave no usable token id"]),
        ({"num_sample": 3}, ["unknown key(s) num_sample"]),
    ],
)
def test_bad_synthetic_params(overrides, needles):
    with pytest.raises(DatasetError) as info:
        load_dataset(_synthetic_spec(**overrides), name="syn")
    message = str(info.value)
    assert "synthetic dataset 'syn'" in message
    for needle in needles:
        assert needle in message


def test_spec_that_is_not_a_mapping():
    with pytest.raises(DatasetError, match="expected a mapping"):
        load_dataset(["pickle"], name="x")


def test_dataset_rejects_misaligned_fields():
    with pytest.raises(DatasetError, match=r"reference_texts has 1 entries, expected one per sample \(2\)"):
        LLMDataset(
            name="x",
            input_tokens=[np.array([1], dtype=np.int32)] * 2,
            input_lens=np.array([1, 1], dtype=np.int64),
            reference_texts=["only one"],
        )


# --------------------------------------------------------------------------------------------
# parquet and json (gpt-oss-120b's sets; llama3.1-8b's cnn_eval.json)


def _gpt_oss_frame(token_column: str = "tok_input") -> pd.DataFrame:
    return pd.DataFrame({
        token_column: [[200006, 17360, 5], [200006, 9], [200006, 1, 2, 3]],
        "dataset": ["aime25", "gpqa_diamond", "livecodebench_v6"],
        "ground_truth": ["42", "B", "abc123"],
        "question": ["q0", "q1", "q2"],
    })


GPT_OSS_SPEC = {
    "format": "parquet",
    "path": "perf/perf_eval_ref.parquet",
    "input_column": ["tok_input", "input_tokens"],
    "required_columns": ["dataset", "ground_truth"],
    "extra_columns": ["dataset", "ground_truth"],
    "optional_columns": ["question", "text_input"],
}


@pytest.mark.parametrize("token_column", ["tok_input", "input_tokens"])
def test_parquet_takes_the_first_input_column_present_and_keeps_plain_extra_values(tmp_path, token_column):
    (tmp_path / "perf").mkdir()
    _gpt_oss_frame(token_column).to_parquet(tmp_path / "perf" / "perf_eval_ref.parquet", index=False)
    ds = load_dataset(GPT_OSS_SPEC, base_dir=tmp_path, name="gpt-oss-120b")
    assert _tokens(ds) == [[200006, 17360, 5], [200006, 9], [200006, 1, 2, 3]]
    # present optional columns are kept, absent ones (text_input) are not; values are plain Python
    assert ds.extra == {"dataset": ["aime25", "gpqa_diamond", "livecodebench_v6"],
                        "ground_truth": ["42", "B", "abc123"], "question": ["q0", "q1", "q2"]}
    assert ds.reference_texts is None and ds.output_lens is None
    _check_token_arrays(ds)


def test_parquet_list_column_of_reference_tokens_gives_output_lengths(tmp_path):
    frame = _gpt_oss_frame().assign(tok_ref_output=[[5, 6], [7], [8, 9, 10]])
    frame.to_parquet(tmp_path / "s.parquet", index=False)
    ds = load_dataset(dict(GPT_OSS_SPEC, path=str(tmp_path / "s.parquet"), reference_tokens_column="tok_ref_output"))
    assert ds.output_lens.tolist() == [2, 1, 3] and [t.tolist() for t in ds.reference_tokens][1] == [7]


def test_parquet_errors_name_the_file_and_what_was_expected(tmp_path):
    spec = dict(GPT_OSS_SPEC, path=str(tmp_path / "s.parquet"))
    with pytest.raises(DatasetError, match=r"s\.parquet: parquet file not found: expected a parquet table"):
        load_dataset(spec)
    (tmp_path / "s.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=r"s\.parquet: cannot read parquet \("):
        load_dataset(spec)
    _gpt_oss_frame("prompt_ids").to_parquet(tmp_path / "s.parquet", index=False)
    with pytest.raises(DatasetError, match=r"missing column 'tok_input or input_tokens' \(from input_column\)"):
        load_dataset(spec)
    _gpt_oss_frame().drop(columns=["ground_truth"]).to_parquet(tmp_path / "s.parquet", index=False)
    with pytest.raises(DatasetError, match=r"missing column 'ground_truth' \(from required_columns\)"):
        load_dataset(spec)
    with pytest.raises(DatasetError, match=r"input_column=\[\]: expected a column name or a list of candidates"):
        load_dataset(dict(spec, input_column=[]))


def test_json_records_like_cnn_eval(tmp_path):
    records = [{"input": "Summarize: a", "tok_input": [128000, 5, 6], "output": "a."},
               {"input": "Summarize: b", "tok_input": [128000, 7], "output": "b."}]
    (tmp_path / "cnn_eval.json").write_text(__import__("json").dumps(records))
    spec = {"format": "json", "path": "cnn_eval.json", "input_column": "tok_input", "reference_column": "output",
            "required_columns": ["tok_input", "output"], "optional_columns": ["input"]}
    ds = load_dataset(spec, base_dir=tmp_path)
    assert _tokens(ds) == [[128000, 5, 6], [128000, 7]] and ds.reference_texts == ["a.", "b."]
    assert ds.extra == {"input": ["Summarize: a", "Summarize: b"]}
    (tmp_path / "cnn_eval.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"cnn_eval\.json: cannot read json \("):
        load_dataset(spec, base_dir=tmp_path)
    (tmp_path / "cnn_eval.json").write_text('{"a": 1}')  # an object of scalars, not a list of records
    with pytest.raises(DatasetError, match=r"cnn_eval\.json: cannot read json \(ValueError"):
        load_dataset(spec, base_dir=tmp_path)
