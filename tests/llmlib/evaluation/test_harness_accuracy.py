"""An AccuracyOnly run of the harness (the tiny model on the hf core, llama2-70b's dataset format)
writes accuracy.txt and accuracy.json, scored equal to the official llama2-70b script on its log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _evalhelpers import LANGUAGE, REPO, copy_script, printed_metrics, run_reference, show_parity

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.loadgen, pytest.mark.timeout(900)]


# The tiny model reproduces its references (ROUGE 100); the dummy core cut to 12 tokens does not.
@pytest.mark.parametrize("core_args", [[], ["--core_type=dummy", "--dummy_output_len=12", "--dummy_zero_latency=true"]],
                         ids=["hf-tiny-model", "dummy-truncated"])
def test_accuracy_run_is_scored_as_the_reference_scores_its_log(tmp_path, core_args):
    proc = subprocess.run([sys.executable, "-m", "llmlib", "--show_progress=false", f"--results_dir={tmp_path}",
                           "--benchmarks=tiny", "--scenarios=Offline", "--test_mode=AccuracyOnly", *core_args],
                          cwd=REPO, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outdir = tmp_path / "local" / "tiny" / "Offline" / "accuracy"
    ours = json.loads((outdir / "accuracy.json").read_text())["metrics"]
    assert (outdir / "accuracy.txt").read_text().startswith("\nResults\n\n{'rouge1': ")
    tiny = REPO / "build" / "tiny-llama"
    work = copy_script(LANGUAGE / "llama2-70b", tmp_path / "ref")
    # The harness writes uint32; the reference reads --dtype int32 (the same bytes for ids < 2**31).
    out = run_reference(work / "evaluate-accuracy.py", ["--checkpoint-path", str(tiny), "--mlperf-accuracy-file",
                        str(outdir / "mlperf_log_accuracy.json"), "--dataset-file", str(tiny / "tiny_dataset.pkl"),
                        "--dtype", "int32"], tiny, work)
    ref = printed_metrics(out)
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum", "tokens_per_sample", "gen_len", "gen_num"]
    for k in keys:
        assert abs(ref[k] - ours[k]) <= 0.01, (k, ref[k], ours[k])
    if core_args:
        assert ours["rougeL"] < 100 and ours["tokens_per_sample"] == 12.0
    show_parity(f"tiny AccuracyOnly run {core_args}", ref, ours, keys)
