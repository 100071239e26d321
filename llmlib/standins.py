"""Tiny stand-in datasets in the exact formats of deepseek-r1, gpt-oss-120b and llama3.1-8b-edge.

Built on first use into build/standins/ with the project's tiny tokenizer, for the tiny-* benchmarks.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlib.errors import HarnessError
from llmlib.tiny_model import (
    DATASET_FILE,
    TINY_MODEL_DIR,
    _locked,
    _replace_folder,
    corpus_sentences,
    ensure_tiny_model,
)

__all__ = [
    "DEEPSEEK_R1_FILE",
    "GPT_OSS_ACCURACY_FILE",
    "GPT_OSS_PERFORMANCE_FILE",
    "LLAMA_EDGE_FILE",
    "STANDIN_DIR",
    "build_deepseek_r1",
    "build_gpt_oss_120b",
    "build_llama3_1_8b_edge",
    "deepseek_r1_dataset_path",
    "gpt_oss_120b_dataset_path",
    "llama3_1_8b_edge_dataset_path",
]

STANDIN_DIR = TINY_MODEL_DIR.parent / "standins"
DEEPSEEK_R1_FILE = "mlperf_deepseek_r1_dataset_tiny_eval.pkl"
GPT_OSS_PERFORMANCE_FILE = "perf/perf_eval_ref.parquet"
GPT_OSS_ACCURACY_FILE = "acc/acc_eval_inputs.parquet"
LLAMA_EDGE_FILE = "sample_cnn_eval_tiny.json"
_VERSION = "1"  # bump when a builder changes what it writes

# deepseek-r1: the five sources of the real set, with answers in the forms the reference grades
# (eval_accuracy.py: multiple-choice letters, boxed MATH500 answers, AIME integers, LiveCodeBench ids).
_DEEPSEEK_SOURCES = ("aime1983", "math500", "gpqa", "mmlu_pro", "livecodebench")
_DEEPSEEK_PER_SOURCE = 8
# gpt-oss-120b: the accuracy set repeats each question (eval_mlperf_accuracy.py DATASET_REPEATS).
_GPT_OSS_REPEATS = {"aime25": 8, "gpqa_diamond": 5, "livecodebench_v6": 3}
_GPT_OSS_QUESTIONS = 2  # distinct questions per source in the accuracy set
_GPT_OSS_PERF_SAMPLES = 48
_LLAMA_EDGE_SAMPLES = 64


def deepseek_r1_dataset_path(root: Path | None = None) -> Path:
    """The deepseek-r1 stand-in pickle (built first if needed)."""
    return _ensure("deepseek-r1", build_deepseek_r1, root) / DEEPSEEK_R1_FILE


def gpt_oss_120b_dataset_path(root: Path | None = None) -> Path:
    """The gpt-oss-120b stand-in performance parquet; its accuracy set lies beside it (built first if needed)."""
    return _ensure("gpt-oss-120b", build_gpt_oss_120b, root) / GPT_OSS_PERFORMANCE_FILE


def llama3_1_8b_edge_dataset_path(root: Path | None = None) -> Path:
    """The llama3.1-8b-edge stand-in JSON (built first if needed)."""
    return _ensure("llama3.1-8b-edge", build_llama3_1_8b_edge, root) / LLAMA_EDGE_FILE


# ---------------------------------------------------------------------------------------------
# builders: each writes its files (and the tiny tokenizer, so outputs decode next to the data) into `out`


def build_deepseek_r1(out: Path, tokenizer) -> None:
    """A pickled DataFrame with the real set's columns: dataset, ground_truth, ref_accuracy,
    ref_extracted_answer, ref_output, text_input, metric, question, tok_ref_output,
    tok_ref_output_len, tok_input, tok_input_len, templated_text_input."""
    import pandas as pd

    rng = random.Random("deepseek-r1")
    sentences = corpus_sentences(11, 400)
    rows = []
    for source in _DEEPSEEK_SOURCES:
        for k in range(_DEEPSEEK_PER_SOURCE):
            question = " ".join(rng.sample(sentences, 2))
            truth, answer_text, extracted, metric = _deepseek_answer(source, k, rng)
            prompt = f"{question} {rng.choice(sentences)}"
            reasoning = " ".join(rng.sample(sentences, rng.randint(1, 3)))
            ref_output = f"{reasoning}\n</think>\n{answer_text}"
            tok_input = _encode(tokenizer, prompt, bos=True)
            tok_ref = _encode(tokenizer, ref_output, bos=False)
            rows.append({
                "dataset": source, "ground_truth": truth, "ref_accuracy": 100.0,
                "ref_extracted_answer": extracted, "ref_output": ref_output, "text_input": prompt,
                "metric": metric, "question": question if source != "livecodebench" else f"tiny-problem-{k}",
                "tok_ref_output": tok_ref, "tok_ref_output_len": len(tok_ref), "tok_input": tok_input,
                "tok_input_len": len(tok_input), "templated_text_input": tokenizer.decode(tok_input),
            })
    pd.DataFrame(rows).to_pickle(out / DEEPSEEK_R1_FILE, protocol=4)


def build_gpt_oss_120b(out: Path, tokenizer) -> None:
    """Parquet tables in the layout of the real download: perf/perf_eval_ref.parquet (the performance
    set, reasoning effort low in the prompt) and acc/acc_eval_inputs.parquet (each question repeated
    as the reference scores them, reasoning effort high). Columns: tok_input, tok_input_len,
    text_input, dataset, ground_truth, question, plus the stand-in's own reference outputs
    (ref_output, tok_ref_output) so that the dummy core can replay them."""
    import pandas as pd

    rng = random.Random("gpt-oss-120b")
    sentences = corpus_sentences(12, 400)
    questions = []
    for source in _GPT_OSS_REPEATS:
        for k in range(_GPT_OSS_QUESTIONS):
            truth, answer_text = _gpt_oss_answer(source, k, rng)
            questions.append((source, " ".join(rng.sample(sentences, 2)), truth, answer_text))

    def row(source: str, question: str, truth: str, answer_text: str, effort: str) -> dict[str, Any]:
        # the harmony system message carries the reasoning effort; here it is plain words of the corpus
        prompt = f"reasoning {effort} . {question}"
        reasoning = " ".join(rng.sample(sentences, rng.randint(1, 3)))
        ref_output = f"{reasoning}\n{answer_text}"
        tok_input = _encode(tokenizer, prompt, bos=True)
        tok_ref = _encode(tokenizer, ref_output, bos=False)
        return {"tok_input": tok_input, "tok_input_len": len(tok_input), "text_input": prompt,
                "dataset": source, "ground_truth": truth, "question": question,
                "ref_output": ref_output, "tok_ref_output": tok_ref}

    accuracy = [row(s, q, t, a, "high") for s, q, t, a in questions for _ in range(_GPT_OSS_REPEATS[s])]
    performance = [row(*rng.choice(questions), "low") for _ in range(_GPT_OSS_PERF_SAMPLES)]
    for name, rows in ((GPT_OSS_PERFORMANCE_FILE, performance), (GPT_OSS_ACCURACY_FILE, accuracy)):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(out / name, index=False)
        tokenizer.save_pretrained(out / name.split("/")[0])  # found next to each set


def build_llama3_1_8b_edge(out: Path, tokenizer) -> None:
    """A JSON list of records like sample_cnn_eval_5000.json (input, tok_input, output), holding the
    first samples of the tiny benchmark: its references are the tiny model's greedy outputs, whose
    token ids the stand-in adds (tok_output) for the dummy core to replay."""
    import pandas as pd

    frame = pd.read_pickle(ensure_tiny_model() / DATASET_FILE).head(_LLAMA_EDGE_SAMPLES)
    records = [{"input": r.input, "tok_input": [int(t) for t in r.tok_input], "output": r.output,
                "tok_output": [int(t) for t in r.tok_output]}
               for r in frame.itertuples()]
    (out / LLAMA_EDGE_FILE).write_text(json.dumps(records, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------


def _deepseek_answer(source: str, k: int, rng: random.Random) -> tuple[str, str, Any, str]:
    """ground_truth, the answer the reference output ends with, ref_extracted_answer, metric."""
    if source == "aime1983":
        n = rng.randint(0, 999)
        return str(n), f"The answer is \\boxed{{{n}}}.", n, "exact_match"
    if source == "math500":
        a, b = rng.randint(1, 9), rng.randint(2, 9)
        answer = rng.choice([str(a * b), f"\\frac{{{a}}}{{{b}}}", f"{a}\\sqrt{{{b}}}"])
        return answer, f"So the final answer is $\\boxed{{{answer}}}$.", answer, "exact_match"
    if source in ("gpqa", "mmlu_pro"):
        letter = rng.choice("ABCD" if source == "gpqa" else "ABCDEFGHIJ")
        return letter, f"Answer: {letter}", letter, "exact_match"
    qid = str(3000 + k)
    code = f"```python\nclass Solution:\n    def solve(self, n: int) -> int:\n        return n + {k}\n```"
    return qid, code, code.strip("`").removeprefix("python\n"), "code_execute_verify"


def _gpt_oss_answer(source: str, k: int, rng: random.Random) -> tuple[str, str]:
    if source == "aime25":
        n = rng.randint(0, 999)
        return str(n), f"The final answer is \\boxed{{{n}}}."
    if source == "gpqa_diamond":
        letter = rng.choice("ABCD")
        return letter, f"Answer: {letter}"
    return f"lcb-{k}", f"```python\nprint(int(input()) + {k})\n```"


def _encode(tokenizer, text: str, *, bos: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ([tokenizer.bos_token_id] if bos else []) + [int(t) for t in ids]


def _ensure(name: str, build: Callable[[Path, Any], None], root: Path | None) -> Path:
    """build/standins/<name>/, built (with the tiny tokenizer saved beside the data) unless complete."""
    target = Path(root if root is not None else STANDIN_DIR) / name
    stamp = target / "standin.json"
    tiny = ensure_tiny_model()
    manifest = json.loads((tiny / "manifest.json").read_text())
    wanted = {"version": _VERSION, "tiny_fingerprint": manifest["fingerprint"]}
    if _stamp_matches(stamp, wanted):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{name}.lock"):
        if _stamp_matches(stamp, wanted):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)
            try:
                from transformers import AutoTokenizer
            except ImportError as err:
                raise HarnessError("the stand-in datasets need transformers: pip install -e '.[hf]'") from err
            tokenizer = AutoTokenizer.from_pretrained(str(tiny))
            build(tmp, tokenizer)
            tokenizer.save_pretrained(tmp)  # outputs decode with the tokenizer found next to the dataset
            (tmp / "standin.json").write_text(json.dumps(wanted) + "\n")
            _replace_folder(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stamp_matches(stamp: Path, wanted: dict[str, str]) -> bool:
    try:
        return json.loads(stamp.read_text()) == wanted
    except (OSError, ValueError):
        return False
