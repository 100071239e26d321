"""A llama2-70b-99.9 stand-in run set, staged and judged by the official submission checker (v6.1).

Usage: python scripts/standin_submission.py --mlperf_inference_dir=DIR [--workdir=DIR] [--quick]

The stand-in is the real benchmark's LoadGen keys, sample counts (24,576) and Offline + Interactive
scenarios over synthetic tokens on the dummy core. Without --quick the performance runs keep
mlperf.conf's 600 s minimum (about 11 minutes, the two in parallel; the dummy core is paced so
that Offline lasts 600 s) and are staged as they are; with --quick they are 2 s runs staged with
--stage_anyway. Until the evaluation package writes accuracy.txt, the script writes the line the
reference evaluate-accuracy.py prints, with ROUGE 0 and the run's tokens per sample: the stand-in
has no text. Prints the checker's complaints; the only ones expected without --quick are the
stand-in's accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmlib.compliance.submission import run_checker  # noqa: E402


def stand_in_configs(root: Path, *, quick: bool) -> Path:
    configs = root / "configs"
    (configs / "benchmarks").mkdir(parents=True, exist_ok=True)
    (configs / "submission").mkdir(exist_ok=True)
    spec = yaml.safe_load((REPO / "configs" / "benchmarks" / "tiny-synthetic.yaml").read_text())
    spec.update(loadgen_model="llama2-70b", total_sample_count=24576, performance_sample_count=24576, harness={},
                description="stand-in for llama2-70b-99.9: synthetic tokens, the real sample counts")
    spec["dataset"].update(num_samples=24576, output_len={"dist": "uniform", "min": 2, "max": 8})
    spec["scenarios"] = {"Offline": {"loadgen_scenario": "Offline", "streaming": False},
                         "Interactive": {"loadgen_scenario": "Server", "loadgen_model": "llama2-70b-interactive",
                                         "ttft_ms": 450, "tpot_ms": 40, "streaming": True}}
    spec["accuracy"] = {"tokens_per_sample": {"min": 2, "max": 8}}
    (configs / "benchmarks" / "llama2-70b-99.9.yaml").write_text(yaml.safe_dump(spec))
    # Offline: LoadGen issues target_qps x 600 s x 1.1 (its slack), padded to whole permutations of the
    # 24,576 samples (sample_concatenate_permutation): 37 QPS -> 24,420 -> 24,576 samples, served at
    # ~40/s by one paced slot (>= 600 s). Interactive: 460 QPS x 600 s -> 294,912 queries (>= 270,336).
    qps = (20000, 3000) if quick else (37, 460)
    (configs / "user.conf").write_text(f"llama2-70b.Offline.target_qps = {qps[0]}\n"
                                       f"llama2-70b-interactive.Server.target_qps = {qps[1]}\n")
    (configs / "submission" / "local.yaml").write_text((REPO / "configs" / "submission" / "local.yaml").read_text())
    return configs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlperf_inference_dir", required=True)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="standin-"))
    configs = stand_in_configs(work, quick=args.quick)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = [f"--config_dir={configs}", f"--results_dir={work / 'results'}", "--core_type=dummy",
              "--show_progress=false", "--warmup_queries=0", "--benchmarks=llama2-70b-99.9",
              f"--mlperf_inference_dir={args.mlperf_inference_dir}", "--submitter=StandIn"]

    def llmlib(module: str, *extra: str, command: tuple[str, ...] = ()) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *command, *common, *extra], cwd=work, env=env,
                                stdout=subprocess.DEVNULL)

    if args.quick:
        perf = [llmlib("llmlib", "--scenarios=Offline,Interactive", "--dummy_zero_latency=true",
                       "--min_duration_ms=2000")]
    else:
        perf = [llmlib("llmlib", "--scenarios=Offline", "--dummy_max_batch_size=1", "--dummy_ttft_ms=25",
                       "--dummy_tpot_ms=0", "--request_timeout_s=1200"),  # the last sample waits ~614 s
                llmlib("llmlib", "--scenarios=Interactive", "--dummy_ttft_ms=5", "--dummy_tpot_ms=1")]
    for p in perf:
        p.wait()
    for module, extra in (("llmlib", ["--test_mode=AccuracyOnly"]), ("llmlib.compliance", [])):
        rc = llmlib(module, "--scenarios=Offline,Interactive", "--dummy_zero_latency=true", *extra).wait()
        if rc:
            print(f"{module} {' '.join(extra)} failed (exit code {rc})", file=sys.stderr)
            return rc
    for scenario in ("Offline", "Interactive"):
        acc = work / "results" / "local" / "llama2-70b-99.9" / scenario / "accuracy"
        tps = json.loads((acc / "summary.json").read_text())["tokens_per_sample"]
        (acc / "accuracy.txt").write_text(f"{{'rouge1': 0.0, 'rouge2': 0.0, 'rougeL': 0.0, 'rougeLsum': 0.0, "
                                          f"'gen_len': 0, 'gen_num': 24576, 'tokens_per_sample': {tps:.1f}}}\n")
    stage = llmlib("llmlib.compliance.submission", "--scenarios=Offline,Interactive",
                   f"--submission_dir={work / 'submission'}", *(["--stage_anyway"] if args.quick else []),
                   command=("stage",))
    if stage.wait():
        print("staging failed", file=sys.stderr)
        return 1
    result = run_checker(Path(args.mlperf_inference_dir) / "tools" / "submission", work / "submission")
    print(f"submission tree: {work / 'submission'}")
    for c in result["complaints"]:
        print(c)
    print(f"checker exit code {result['returncode']}, {len(result['errors'])} ERROR line(s), "
          f"{result['results']} result(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
