"""Tests for llmlib.standins: the tiny stand-ins hold the real datasets' formats and load as the real ones do.

They build the tiny model first when it is missing (the slow tier).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmlib import standins
from llmlib.benchmarks import load_benchmark
from llmlib.factory import load_benchmark_dataset

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

# The columns of the real mlperf_deepseek_r1_dataset_4388_fp8_eval.pkl (the reference's preprocessed rows).
DEEPSEEK_R1_COLUMNS = ["dataset", "ground_truth", "ref_accuracy", "ref_extracted_answer", "ref_output", "text_input",
                       "metric", "question", "tok_ref_output", "tok_ref_output_len", "tok_input", "tok_input_len",
                       "templated_text_input"]


def tokenizer_at(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_deepseek_r1_stand_in_has_the_real_columns_and_decodable_references(tmp_path):
    path = standins.deepseek_r1_dataset_path(tmp_path)
    frame = pd.read_pickle(path)
    assert list(frame.columns) == DEEPSEEK_R1_COLUMNS
    assert frame["dataset"].value_counts().to_dict() == dict.fromkeys(
        ["aime1983", "math500", "gpqa", "mmlu_pro", "livecodebench"], 8)
    tok = tokenizer_at(path.parent)  # saved beside the data: tokenizer_path_for finds it on any core
    for row in frame.itertuples():
        assert row.tok_input[0] == tok.bos_token_id and row.tok_input_len == len(row.tok_input)
        assert row.tok_ref_output_len == len(row.tok_ref_output)
        assert tok.decode(row.tok_ref_output, skip_special_tokens=True) == row.ref_output
        assert isinstance(row.ground_truth, str)
        if row.dataset in ("gpqa", "mmlu_pro"):
            assert row.ref_output.endswith(f"Answer: {row.ground_truth}")
        elif row.dataset in ("aime1983", "math500"):
            assert f"\\boxed{{{row.ground_truth}}}" in row.ref_output
        else:
            assert "```python" in row.ref_output and row.metric == "code_execute_verify"
    # a second call finds the finished build
    assert standins.deepseek_r1_dataset_path(tmp_path).stat().st_mtime == path.stat().st_mtime


def test_gpt_oss_120b_stand_in_has_both_sets_in_the_download_layout(tmp_path):
    perf_path = standins.gpt_oss_120b_dataset_path(tmp_path)
    root = perf_path.parent.parent
    assert perf_path == root / "perf" / "perf_eval_ref.parquet"
    perf, acc = pd.read_parquet(perf_path), pd.read_parquet(root / "acc" / "acc_eval_inputs.parquet")
    assert len(perf) == 48 and len(acc) == 32
    for frame in (perf, acc):
        assert {"tok_input", "tok_input_len", "text_input", "dataset", "ground_truth", "question"} <= set(frame.columns)
    # each accuracy question repeated as eval_mlperf_accuracy.py's DATASET_REPEATS scores it
    counts = acc.groupby(["dataset", "question"]).size()
    assert {ds: set(counts[ds].tolist()) for ds in ("aime25", "gpqa_diamond", "livecodebench_v6")} == {
        "aime25": {8}, "gpqa_diamond": {5}, "livecodebench_v6": {3}}
    assert acc["text_input"].str.startswith("reasoning high").all()
    assert perf["text_input"].str.startswith("reasoning low").all()


def test_llama3_1_8b_edge_stand_in_is_json_records_of_the_tiny_references(tmp_path):
    path = standins.llama3_1_8b_edge_dataset_path(tmp_path)
    records = json.loads(path.read_text())
    assert len(records) == 64 and set(records[0]) == {"input", "tok_input", "output", "tok_output"}
    tiny = pd.read_pickle(standins.ensure_tiny_model() / standins.DATASET_FILE)
    assert [r["tok_input"] for r in records] == [list(map(int, t)) for t in tiny["tok_input"][:64]]
    assert [r["output"] for r in records] == tiny["output"][:64].tolist()


@pytest.mark.parametrize("name, mode, count, first_extra", [
    ("tiny-deepseek-r1", "PerformanceOnly", 40, "ground_truth"),
    ("tiny-deepseek-r1", "AccuracyOnly", 40, "ground_truth"),
    ("tiny-gpt-oss-120b", "PerformanceOnly", 48, "dataset"),
    ("tiny-gpt-oss-120b", "AccuracyOnly", 32, "dataset"),
    ("tiny-llama3.1-8b-edge", "AccuracyOnly", 64, "input"),
])
def test_tiny_benchmarks_load_their_stand_in_for_each_mode(name, mode, count, first_extra):
    spec = load_benchmark(name).for_mode(mode)
    ds = load_benchmark_dataset(spec)
    assert len(ds) == count == spec.total_sample_count
    assert next(iter(ds.extra)) == first_extra
    assert ds.output_lens is not None and (ds.output_lens > 0).all()  # the dummy core replays the references
    assert all(t.dtype == np.int32 for t in ds.input_tokens)
