"""Tests of llmlib.tiny_model: the build loads like a real checkpoint, is byte-identical from a seed,
decodes greedily the same alone or in a padded batch, and its `tiny` dataset matches the model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmlib import tiny_model  # noqa: E402
from llmlib.dataset import load_dataset  # noqa: E402
from llmlib.errors import ConfigError  # noqa: E402
from llmlib.tiny_model import (  # noqa: E402
    BOS_ID,
    DATASET_FILE,
    EOS_ID,
    MANIFEST_FILE,
    PAD_ID,
    TinyRecipe,
    ensure_tiny_model,
    read_manifest,
    tiny_dataset_path,
)

# The module's first test also builds the default model (about 15 s on an idle 2-core machine, far
# more on a busy one): more time than the default per-test timeout leaves.
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # builds the model (~15 s, longer on a busy machine)

# A few seconds to build: for the tests that need several builds.
SMALL = TinyRecipe(
    corpus_sentences=2000, vocab_size=600, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
    intermediate_size=128, num_samples=24, min_input_tokens=8, max_input_tokens=32, max_new_tokens=16,
    min_output_tokens=2, batch_size=16,
)
PICKLE_SPEC = {
    "format": "pickle",
    "input_column": "tok_input",
    "reference_column": "output",
    "reference_tokens_column": "tok_output",
    "required_columns": ["tok_input", "input", "output", "tok_output"],
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The default tiny model, built once for this module (about 15 s on 2 cores)."""
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def dataset(tiny_dir):
    return load_dataset({**PICKLE_SPEC, "path": tiny_dir / DATASET_FILE}, name="tiny")


def _greedy(model, tokenizer, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy outputs (EOS cut off) of `prompts` in one left-padded batch, with the saved generation config."""
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**batch)
    outputs = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        outputs.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
    return outputs


# ---------------------------------------------------------------------------------------------
# the default build


def test_loads_like_a_real_checkpoint(tiny_dir, tokenizer, model):
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads) == (256, 4, 4, 2)
    assert config.vocab_size == len(tokenizer)
    assert config.tie_word_embeddings is False
    assert config.max_position_embeddings == 1024
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.pad_token_id) == (0, 1, 2, 0)
    assert tokenizer.padding_side == "left"
    gen = model.generation_config
    assert (gen.do_sample, gen.num_beams, gen.eos_token_id, gen.pad_token_id) == (False, 1, EOS_ID, PAD_ID)
    assert (tiny_dir / "model.safetensors").is_file()

    text = "Ada carried the golden lamp across the river."
    ids = tokenizer(text).input_ids
    assert ids[0] == BOS_ID and len(ids) < len(text) // 2  # BPE learned merges
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_manifest_describes_the_build(tiny_dir):
    manifest = read_manifest(tiny_dir)
    assert manifest["seed"] == manifest["recipe"]["seed"] == 0
    assert manifest["dataset"]["num_samples"] == 256
    assert manifest["build_seconds"] > 0
    for name, entry in manifest["files"].items():
        assert _sha256(tiny_dir / name) == entry["sha256"], name
    # complete: a second call returns the same folder without rebuilding
    mtime = (tiny_dir / MANIFEST_FILE).stat().st_mtime_ns
    assert ensure_tiny_model(tiny_dir) == tiny_dir
    assert tiny_dataset_path(tiny_dir) == tiny_dir / DATASET_FILE
    assert (tiny_dir / MANIFEST_FILE).stat().st_mtime_ns == mtime


def test_dataset_loads_with_the_pickle_loader(dataset):
    assert len(dataset) == 256
    assert dataset.input_lens.min() >= 16 and dataset.input_lens.max() <= 128
    assert np.ptp(dataset.input_lens) > 80  # spread over the range, not one length
    assert all(tokens[0] == BOS_ID for tokens in dataset.input_tokens)
    assert dataset.reference_texts is not None and dataset.reference_tokens is not None
    assert np.array_equal(dataset.output_lens, [len(t) for t in dataset.reference_tokens])


def test_output_lengths_vary(dataset):
    lens = dataset.output_lens
    assert lens.min() >= 4 and lens.max() == 64
    assert len(np.unique(lens)) >= 20
    ended_early = int((lens < 64).sum())
    assert 0.3 * len(lens) < ended_early < 0.95 * len(lens)  # many end by EOS, some run to the limit


def test_token_ids_are_within_the_vocabulary(dataset, tokenizer):
    vocab = len(tokenizer)
    for tokens in dataset.input_tokens:
        assert tokens.min() >= 0 and tokens.max() < vocab
        assert not np.isin(tokens[1:], [0, 1, 2]).any()
    for tokens in dataset.reference_tokens:
        assert tokens.min() >= 0 and tokens.max() < vocab
        assert not np.isin(tokens, [0, 1, 2]).any()  # no EOS (it is left out), no pad or BOS


def test_texts_match_their_tokens(tiny_dir, tokenizer):
    import pandas as pd

    frame = pd.read_pickle(tiny_dir / DATASET_FILE)
    assert list(frame.columns) == ["tok_input", "input", "output", "tok_output"]
    for row in frame.itertuples():
        assert tokenizer.decode(row.tok_output) == row.output
        assert tokenizer(row.input).input_ids == row.tok_input


def test_greedy_is_batch_invariant_and_matches_the_references(model, tokenizer, dataset):
    lens, out_lens = dataset.input_lens, dataset.output_lens
    picks = sorted({int(np.argmin(lens)), int(np.argmax(lens)), int(np.argmin(out_lens)),
                    int(np.argmax(out_lens)), int(np.flatnonzero((out_lens > 10) & (out_lens < 40))[0])})
    others = [i for i in range(20, 40) if i not in picks][:6]
    prompts = {i: dataset.input_tokens[i].tolist() for i in picks + others}

    alone = {i: _greedy(model, tokenizer, [prompts[i]])[0] for i in picks}
    mixed = picks + others
    mixed = mixed[1::2] + mixed[::2]  # mixed lengths, picks not at the front
    batched = dict(zip(mixed, _greedy(model, tokenizer, [prompts[i] for i in mixed])))
    assert max(len(prompts[i]) for i in mixed) > min(len(prompts[i]) for i in mixed) + 20  # real padding
    for i in picks:
        assert alone[i] == batched[i], f"sample {i}: alone vs left-padded batch"
        assert alone[i] == dataset.reference_tokens[i].tolist(), f"sample {i}: vs the reference"
    for i in others:
        assert batched[i] == dataset.reference_tokens[i].tolist(), f"sample {i}: vs the reference"


def test_top1_margin_is_large(model, tokenizer, dataset):
    """The greedy pick wins by far more than float noise at every step of a reference."""
    i = int(np.argmax(dataset.output_lens))
    ids = np.concatenate([dataset.input_tokens[i], dataset.reference_tokens[i]])
    with torch.inference_mode():
        logits = model(torch.tensor(ids[None, :], dtype=torch.long)).logits[0]
    steps = logits[len(dataset.input_tokens[i]) - 1 : -1]
    top2 = steps.topk(2, dim=-1)
    assert top2.indices[:, 0].tolist() == dataset.reference_tokens[i].tolist()
    margins = top2.values[:, 0] - top2.values[:, 1]
    assert margins.min().item() > 0.05
    assert margins.median().item() > 1.0


# ---------------------------------------------------------------------------------------------
# building: determinism, rebuilds, locking (small recipe)


def _hashes(folder: Path) -> dict[str, str]:
    return {name: _sha256(folder / name) for name in ("model.safetensors", DATASET_FILE, "tokenizer.json")}


def test_builds_are_byte_identical_and_the_recipe_matters(tmp_path):
    first = ensure_tiny_model(tmp_path / "a", recipe=SMALL)
    second = ensure_tiny_model(tmp_path / "b", recipe=SMALL)
    assert _hashes(first) == _hashes(second)
    assert read_manifest(first)["files"] == read_manifest(second)["files"]

    # another seed at the same place rebuilds, with other weights and the same tokenizer
    reseeded = ensure_tiny_model(tmp_path / "b", recipe=dataclasses.replace(SMALL, seed=1))
    assert read_manifest(reseeded)["recipe"]["seed"] == 1
    other = _hashes(reseeded)
    assert other["model.safetensors"] != _hashes(first)["model.safetensors"]
    assert other["tokenizer.json"] != _hashes(first)["tokenizer.json"]  # the corpus is seeded too


def test_incomplete_build_is_rebuilt(tmp_path):
    folder = ensure_tiny_model(tmp_path / "m", recipe=SMALL)
    expected = _hashes(folder)
    (folder / DATASET_FILE).unlink()
    assert ensure_tiny_model(folder, recipe=SMALL) == folder
    assert _hashes(folder) == expected
    # a truncated file (size differs from the manifest) also counts as incomplete
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    ensure_tiny_model(folder, recipe=SMALL)
    assert _hashes(folder) == expected
    assert not list(tmp_path.glob(".m.tmp-*")) and not list(tmp_path.glob(".m.old-*"))


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls = []
    real_build = tiny_model.build_tiny_model

    def counting_build(out, *, recipe):
        calls.append(out)
        return real_build(out, recipe=recipe)

    monkeypatch.setattr(tiny_model, "build_tiny_model", counting_build)
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_tiny_model(tmp_path / "shared", recipe=SMALL))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not errors and len(results) == 3
    assert len(calls) == 1  # the others waited on the lock, then found the build complete
    manifest = json.loads((tmp_path / "shared" / MANIFEST_FILE).read_text())
    for name, entry in manifest["files"].items():
        assert _sha256(tmp_path / "shared" / name) == entry["sha256"]


def test_bad_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match="num_kv_heads"):
        TinyRecipe(num_heads=4, num_kv_heads=3)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        TinyRecipe(max_input_tokens=1000, max_new_tokens=64)


def test_corpus_is_seeded():
    assert tiny_model.corpus_sentences(3, 50) == tiny_model.corpus_sentences(3, 50)
    assert tiny_model.corpus_sentences(3, 50) != tiny_model.corpus_sentences(4, 50)
    words = {w for s in tiny_model.corpus_sentences(0, 2000) for w in s.split()}
    assert len(words) > 400
