"""Helpers of the evaluator tests: where the official files are, a tokenizer corpus, log writers,
and a runner for the reference scripts (imported by the tests; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO.parent / "shared" / "mlperf-reference"
if not REFERENCE.is_dir():
    REFERENCE = Path("/work/shared/mlperf-reference")
LANGUAGE = REFERENCE / "language"
ROUGE_METRIC = REFERENCE / "third_party" / "huggingface-evaluate" / "metrics" / "rouge"
SHIM = Path(__file__).resolve().parent / "refshim" / "run_reference.py"

CORPUS = [
    "The cat sat on the mat. It was happy. Dr. Smith arrived at 3 p.m. and left.",
    "Résumé of the café: naïve coöperation, 東京 and Zürich — “quotes” included.",
    "The answer is 42. Answer: B. FINAL ANSWER: C. \\boxed{\\frac{1}{2}} \\boxed{17}",
    "```python\ndef add(a, b):\n    return a + b\n```", "<|channel|>final<|message|>A<|return|>",
    "uuid 123e4567-e89b-12d3-a456-426614174000 and 00000000-1111-2222-3333-444444444444",
    "Mr. Jones said the U.S. economy grew. Then he left! Why? Because.",
]


def encode(tokenizer, text: str, *, eos: bool = False) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids + [tokenizer.eos_token_id] if eos else ids


def write_log(path: Path, entries: list[tuple[int, list[int]]], dtype: str = "<u4") -> Path:
    """LoadGen's layout: "[" alone on the first line, one entry per line (deepseek-r1's reader needs it)."""
    lines = [json.dumps({"seq_id": k, "qsl_idx": i, "data": np.asarray(t, dtype=dtype).tobytes().hex().upper(),
                         "token_count": len(t)}) for k, (i, t) in enumerate(entries)]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return path


def run_reference(script: Path, args: list[str], tokenizer_dir: Path, cwd: Path, timeout: int = 300) -> str:
    """The official script in a subprocess, from `cwd` (it writes files there), offline."""
    from llmlib.evaluation.punkt_data import ensure_punkt

    env = dict(os.environ, NLTK_DATA=str(ensure_punkt()), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, str(SHIM), str(tokenizer_dir), str(ROUGE_METRIC), str(script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def copy_script(src_dir: Path, dest: Path) -> Path:
    """A temporary copy of a reference folder (scripts import siblings and write next to themselves)."""
    shutil.copytree(src_dir, dest, dirs_exist_ok=True)
    return dest


_VALUE = re.compile(r"'([\w\-]+)':\s+(?:np\.\w+\()?'?(nan|-?[\d.]+(?:e-?\d+)?)'?")


def printed_metrics(stdout: str) -> dict[str, float]:
    """The metrics of the last result dict the script printed (numpy reprs and quoted numbers too)."""
    lines = [l for l in stdout.splitlines() if "'" in l and ":" in l]
    assert lines, stdout[-2000:]
    return {k: float(v) for k, v in _VALUE.findall(lines[-1])}


def show_parity(name: str, ref: dict, ours: dict, keys) -> None:
    """One line per run for the report: the reference's figures next to the project's (pytest -s)."""
    print(f"PARITY {name} reference={ {k: ref[k] for k in keys} } project={ {k: ours[k] for k in keys} }")
