"""Fixtures for the worker tests: LLMServers over dummy cores (stopped after the test) and a
word-level tokenizer with the transformers encode/decode signatures."""

from __future__ import annotations

import pytest

from llmlib.server import LLMServer


class WordTokenizer:
    """Word-level: each distinct word gets an id from 10 on, BOS is 1, EOS 2 (skipped on decode)."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: dict[int, str] = {}

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = 10 + len(self.vocab)
            self.words[self.vocab[word]] = word
        return self.vocab[word]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._id(w) for w in text.split()]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out = []
        for t in ids:
            t = int(t)
            if t in (self.bos_token_id, self.eos_token_id):
                if not skip_special_tokens:
                    out.append("<s>" if t == self.bos_token_id else "</s>")
                continue
            out.append(self.words.get(t, f"<{t}>"))
        return " ".join(out)


@pytest.fixture
def tokenizer():
    return WordTokenizer()


@pytest.fixture
def make_server(make_dummy):
    """make_server(n_cores=1, policy='load_balancing', **dummy_config) -> an LLMServer over DummyCores."""
    servers = []

    def make(n_cores=1, policy="load_balancing", **values):
        server = LLMServer(policy=policy)
        cores = [make_dummy(server, rank=r, **values) for r in range(n_cores)]
        server.attach(cores)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
