"""Tests of llmlib.tiny_gguf: the RoPE permutation is llama.cpp's, and a converted tiny model read back
with gguf.GGUFReader holds the model's hyperparameters, tokenizer and (permuted) weights; caching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from llmlib.errors import HarnessError  # noqa: E402
from llmlib.tiny_gguf import (  # noqa: E402
    GGUF_FILE,
    ensure_tiny_gguf,
    load_hparams,
    permute_for_ggml_rope,
    read_gguf_fingerprint,
)


# --- the permutation (pure) --------------------------------------------------------------------------
def _rope_rotate_half(x: np.ndarray, pos: int, theta: float = 10_000.0) -> np.ndarray:
    """Hugging Face Llama: dimension i rotates with i + d/2 (x: heads x d)."""
    d = x.shape[-1]
    freqs = pos / theta ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(np.concatenate([freqs, freqs])), np.sin(np.concatenate([freqs, freqs]))
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


def _rope_adjacent(x: np.ndarray, pos: int, theta: float = 10_000.0) -> np.ndarray:
    """llama.cpp's normal RoPE: dimensions 2i and 2i+1 rotate together (x: heads x d)."""
    d = x.shape[-1]
    freqs = pos / theta ** (np.arange(0, d, 2) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(freqs) - odd * np.sin(freqs)
    out[..., 1::2] = even * np.sin(freqs) + odd * np.cos(freqs)
    return out


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_permuted_weights_give_llama_cpp_the_same_attention_scores(n_head):
    rng = np.random.default_rng(n_head)
    head_dim, hidden = 8, 12
    wq = rng.normal(size=(n_head * head_dim, hidden))
    wk = rng.normal(size=(n_head * head_dim, hidden))
    x_q, x_k = rng.normal(size=hidden), rng.normal(size=hidden)
    for pos_q, pos_k in [(0, 0), (5, 2), (37, 11)]:
        hf = [_rope_rotate_half((w @ x).reshape(n_head, head_dim), p) for w, x, p in
              [(wq, x_q, pos_q), (wk, x_k, pos_k)]]
        ggml = [_rope_adjacent((permute_for_ggml_rope(w, n_head) @ x).reshape(n_head, head_dim), p) for w, x, p in
                [(wq, x_q, pos_q), (wk, x_k, pos_k)]]
        np.testing.assert_allclose((ggml[0] * ggml[1]).sum(-1), (hf[0] * hf[1]).sum(-1), rtol=1e-10)


def test_permutation_interleaves_the_halves_of_each_head():
    w = np.arange(8)[:, None] * np.ones((1, 3))  # 2 heads of 4 rows: rows are their own index
    assert permute_for_ggml_rope(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(HarnessError, match="multiple of 2 \\* n_head"):
        permute_for_ggml_rope(np.zeros((6, 3)), 2)


@pytest.mark.parametrize("change, why", [
    ({"tie_word_embeddings": True}, "tied"),
    ({"model_type": "mistral"}, "model_type 'mistral'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}, "RoPE type 'llama3'"),
])
def test_unsupported_configs_are_refused(tmp_path, change, why):
    cfg = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
           "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0}}
    (tmp_path / "config.json").write_text(json.dumps(cfg | change))
    with pytest.raises(HarnessError, match=why):
        load_hparams(tmp_path)


# --- a converted model, read back --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A small build of the tiny model (a few seconds): 2 layers, 2 query heads sharing 1 KV head."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmlib.tiny_model import TinyRecipe, ensure_tiny_model

    recipe = TinyRecipe(
        corpus_sentences=2000, vocab_size=600, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
        intermediate_size=128, num_samples=8, min_input_tokens=8, max_input_tokens=32, max_new_tokens=16,
        min_output_tokens=2, batch_size=8,
    )
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", recipe=recipe)


@pytest.fixture(scope="module")
def reader(small_model):
    return gguf.GGUFReader(ensure_tiny_gguf(small_model))


def _kv(reader, key):
    field = reader.get_field(key)
    assert field is not None, f"no {key} in the GGUF"
    return field.contents()


@pytest.mark.slow
def test_metadata_matches_the_model_config(small_model, reader):
    cfg = json.loads((small_model / "config.json").read_text())
    expected = {
        "general.architecture": "llama",
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "llama.vocab_size": cfg["vocab_size"],
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"],
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.block_count": cfg["num_hidden_layers"],
        "llama.attention.head_count": cfg["num_attention_heads"],
        "llama.attention.head_count_kv": cfg["num_key_value_heads"],
        "llama.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"],
    }
    assert {key: _kv(reader, key) for key in expected} == expected
    assert _kv(reader, "llama.rope.freq_base") == pytest.approx(cfg["rope_parameters"]["rope_theta"])
    assert _kv(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])


@pytest.mark.slow
def test_tokenizer_matches_the_model_tokenizer(small_model, reader):
    spec = json.loads((small_model / "tokenizer.json").read_text())
    tokens = _kv(reader, "tokenizer.ggml.tokens")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    assert tokens == [by_id[i] for i in range(len(tokens))]
    types = _kv(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3  # <unk> <s> </s>
    assert set(types[3:]) == {gguf.TokenType.NORMAL}
    assert _kv(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in spec["model"]["merges"]]
    assert _kv(reader, "tokenizer.ggml.model") == "gpt2"
    assert _kv(reader, "tokenizer.ggml.pre") == "gpt-2"
    ids = {key: _kv(reader, f"tokenizer.ggml.{key}") for key in
           ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")}
    assert ids == {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0, "padding_token_id": 0}
    assert _kv(reader, "tokenizer.ggml.add_bos_token") is True
    assert _kv(reader, "tokenizer.ggml.add_eos_token") is False


@pytest.mark.slow
def test_tensors_are_the_model_weights_in_llama_cpp_layout(small_model, reader):
    from safetensors.numpy import load_file

    hf = load_file(small_model / "model.safetensors")
    cfg = json.loads((small_model / "config.json").read_text())
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    hf_names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
                "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
    seen = set()
    for t in reader.tensors:
        parts = t.name.split(".")  # blk.N.attn_q.weight or token_embd.weight
        kind = parts[2] if parts[0] == "blk" else parts[0]
        source = f"model.layers.{parts[1]}.{hf_names[kind]}.weight" if parts[0] == "blk" else hf_names[kind] + ".weight"
        expected = hf[source]
        if kind in heads:
            expected = permute_for_ggml_rope(expected, heads[kind])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        assert list(t.shape) == list(reversed(expected.shape)), t.name  # ggml order: fastest dimension first
        np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected, err_msg=t.name)
        seen.add(source)
    assert seen == set(hf)  # every weight once, nothing else


@pytest.mark.slow
def test_cached_until_the_file_or_model_changes(small_model):
    path = ensure_tiny_gguf(small_model)
    assert path == small_model / GGUF_FILE
    before = path.stat()
    assert ensure_tiny_gguf(small_model).stat().st_mtime_ns == before.st_mtime_ns  # up to date: kept
    fingerprint = read_gguf_fingerprint(path)
    assert fingerprint and len(fingerprint) == 64

    cut = path.with_name("cut.tmp")  # a truncated file is rewritten (a new file: `reader` maps the old one)
    cut.write_bytes(path.read_bytes()[:1000])
    os.replace(cut, path)
    assert read_gguf_fingerprint(path) is None
    assert read_gguf_fingerprint(ensure_tiny_gguf(small_model)) == fingerprint

    manifest_path = small_model / "manifest.json"  # another model (other weights): rewritten
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    try:
        assert read_gguf_fingerprint(ensure_tiny_gguf(small_model)) not in (None, fingerprint)
    finally:
        manifest_path.write_text(original)
    assert read_gguf_fingerprint(ensure_tiny_gguf(small_model)) == fingerprint
    assert sorted(p.name for p in small_model.glob(f"*{GGUF_FILE}*")) == [GGUF_FILE]  # no temporary file left
