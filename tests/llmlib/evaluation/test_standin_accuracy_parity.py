"""AccuracyOnly runs of the deepseek-r1 and gpt-oss-120b formats (the tiny stand-ins on the dummy
core, part of each output cut short so that some answers are lost) are scored by the harness equal
to the official scripts run on the same mlperf_log_accuracy.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _evalhelpers import LANGUAGE, REPO, copy_script, printed_metrics, run_reference, show_parity

pytestmark = [pytest.mark.slow, pytest.mark.loadgen, pytest.mark.timeout(900)]


def accuracy_run(tmp_path, benchmark: str, output_len: int):
    proc = subprocess.run([sys.executable, "-m", "llmlib", "--show_progress=false", f"--results_dir={tmp_path}",
                           f"--benchmarks={benchmark}", "--scenarios=Offline", "--test_mode=AccuracyOnly",
                           "--core_type=dummy", "--dummy_zero_latency=true", f"--dummy_output_len={output_len}"],
                          cwd=REPO, capture_output=True, text=True, timeout=800)
    outdir = tmp_path / "local" / benchmark / "Offline" / "accuracy"
    assert (outdir / "accuracy.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return outdir, json.loads((outdir / "accuracy.json").read_text())["metrics"]


def test_deepseek_r1_format_accuracy_run_equals_the_reference(tmp_path):
    from llmlib.standins import deepseek_r1_dataset_path

    outdir, ours = accuracy_run(tmp_path, "tiny-deepseek-r1", 48)
    dataset = deepseek_r1_dataset_path()
    work = copy_script(LANGUAGE / "deepseek-r1", tmp_path / "ref")
    out = run_reference(work / "eval_accuracy.py", ["--input-file", str(outdir / "mlperf_log_accuracy.json"),
                                                      "--dataset-file", str(dataset)], dataset.parent, work)
    ref = printed_metrics(out)
    keys = ["exact_match", "tokens_per_sample"]
    assert 0 < ref["exact_match"] < 100  # cut outputs lose some answers
    for k in keys:
        assert abs(ref[k] - ours[k]) <= 0.01, (k, ref[k], ours[k])
    show_parity("tiny-deepseek-r1 AccuracyOnly run", ref, ours, keys)


def test_gpt_oss_120b_format_accuracy_run_equals_the_reference(tmp_path):
    """The reference needs its LiveCodeBench submodule (not in the official files we have) as soon
    as one LiveCodeBench row is in the reference data: both sides score the run's log without
    those rows (qsl indices renumbered), with the project's own command line on its side."""
    import numpy as np
    import pandas as pd

    from llmlib.standins import gpt_oss_120b_dataset_path

    outdir, _ = accuracy_run(tmp_path, "tiny-gpt-oss-120b", 20)
    perf = gpt_oss_120b_dataset_path()
    tokenizer = perf.parent.parent
    table = pd.read_parquet(perf.parent.parent / "acc" / "acc_eval_inputs.parquet")
    keep = [i for i, name in enumerate(table["dataset"]) if "livecodebench" not in str(name)]
    assert 0 < len(keep) < len(table)
    renumber = {old: new for new, old in enumerate(keep)}
    acc = tmp_path / "acc_no_lcb.parquet"
    table.iloc[keep].reset_index(drop=True).to_parquet(acc)
    entries = json.loads((outdir / "mlperf_log_accuracy.json").read_text())
    kept = [dict(e, qsl_idx=renumber[e["qsl_idx"]]) for e in entries if e["qsl_idx"] in renumber]
    log = tmp_path / "mlperf_log_accuracy.json"
    log.write_text("[\n" + ",\n".join(json.dumps(e) for e in kept) + "\n]\n")
    assert any(np.frombuffer(bytes.fromhex(e["data"]), "<u4").size for e in kept)
    work = copy_script(LANGUAGE / "gpt-oss-120b", tmp_path / "ref")
    out = run_reference(work / "eval_mlperf_accuracy.py", ["--mlperf-log", str(log), "--reference-data", str(acc),
                                                             "--tokenizer", str(tokenizer)], tokenizer, work)
    ref = printed_metrics(out)
    proc = subprocess.run([sys.executable, "-m", "llmlib.evaluation", "--benchmark", "tiny-gpt-oss-120b",
                           "--log", str(log), "--dataset", str(acc), "--tokenizer", str(tokenizer),
                           "--outdir", str(tmp_path / "ours")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = json.loads((tmp_path / "ours" / "accuracy.json").read_text())["metrics"]
    assert 0 < ref["exact_match"] < 100  # cut outputs lose some answers
    assert abs(ref["exact_match"] - ours["exact_match"]) <= 0.01, (ref, ours)
    show_parity("tiny-gpt-oss-120b AccuracyOnly run (LiveCodeBench rows left out)", ref, ours, ["exact_match"])
