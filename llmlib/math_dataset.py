"""A seeded arithmetic-problem dataset with known answers and a character tokenizer, for measuring
test-time-compute methods (majority vote...) without a model download."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

import numpy as np

from llmlib.errors import DatasetError

#: ids 0..2 are special (pad, bos, eos); character c has id ord(c) + CHAR_OFFSET
CHAR_OFFSET = 3
EOS_ID = 2
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_PROBLEM = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)")


class CharTokenizer:
    """One token per character (printable ASCII): enough for prompts and answers of this dataset.
    Has the `encode`/`decode` methods the harness and the scaffolding workers call."""

    eos_token_id = EOS_ID
    pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) + CHAR_OFFSET for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(i) - CHAR_OFFSET) for i in ids if int(i) >= CHAR_OFFSET)


def solve(text: str) -> int | None:
    """The answer to the first `a op b` in the text, or None."""
    m = _PROBLEM.search(text)
    if m is None:
        return None
    return _OPS[m.group(2)](int(m.group(1)), int(m.group(3)))


def load_math_dataset(spec: Mapping, name: str = "math"):
    """`format: math`: `num_samples`, `seed`, `max_operand` (default 99), `ops` (default "+-*")."""
    from llmlib.dataset import LLMDataset

    allowed = {"format", "num_samples", "seed", "max_operand", "ops"}
    unknown = set(spec) - allowed
    if unknown:
        raise DatasetError(f"dataset '{name}' (math): unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")
    try:
        n, seed = int(spec["num_samples"]), int(spec["seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"dataset '{name}' (math): num_samples and seed must be integers ({err!r})") from err
    max_operand = int(spec.get("max_operand", 99))
    ops = str(spec.get("ops", "+-*"))
    if n < 1 or max_operand < 1 or not ops or set(ops) - set(_OPS):
        raise DatasetError(f"dataset '{name}' (math): need num_samples >= 1, max_operand >= 1 and ops from '+-*'")
    rng = random.Random(seed)
    tok = CharTokenizer()
    inputs, refs, answers = [], [], []
    for _ in range(n):
        a, b, op = rng.randint(1, max_operand), rng.randint(1, max_operand), rng.choice(ops)
        prompt = f"Question: what is {a} {op} {b}? Think step by step."
        answer = _OPS[op](a, b)
        inputs.append(np.asarray(tok.encode(prompt), dtype=np.int32))
        refs.append(f"The final answer is {answer}")
        answers.append(answer)
    ref_tokens = [np.asarray(tok.encode(r), dtype=np.int32) for r in refs]
    return LLMDataset(name=name, input_tokens=inputs,
                      input_lens=np.array([len(x) for x in inputs], dtype=np.int64),
                      reference_texts=refs, reference_tokens=ref_tokens,
                      output_lens=np.array([len(x) for x in ref_tokens], dtype=np.int64),
                      extra={"answer": answers}, source=f"math(seed={seed}, n={n})")
