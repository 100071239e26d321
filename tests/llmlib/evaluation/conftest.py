"""Fixtures for the evaluator tests: a small byte-level BPE tokenizer saved to disk (the reference
scripts load it through AutoTokenizer, the evaluators through load_tokenizer)."""

from __future__ import annotations

import pytest

from _evalhelpers import CORPUS


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from llmlib.tiny_model import TinyRecipe, _train_tokenizer

    tok = _train_tokenizer(TinyRecipe(vocab_size=600), CORPUS * 20)
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))
