"""The project's tiny Llama (llmlib/tiny_model.py) as a float32 GGUF file, for llama.cpp-based servers.

`ensure_tiny_gguf()` writes it next to the model on first use and again only when the model changes.

What llama.cpp expects, and how the Hugging Face checkpoint differs:
  - tensor names are llama.cpp's (`token_embd`, `blk.N.attn_q`, ...), shapes are as in PyTorch
    (the gguf writer stores them in ggml's reversed dimension order);
  - llama.cpp rotates adjacent pairs of a head's query/key dimensions (RoPE "normal" mode), while
    Hugging Face's Llama rotates dimension i with i + head_dim/2, so the rows of q_proj and k_proj
    are permuted within each head (`permute_for_ggml_rope`), as llama.cpp's own converter does;
  - the byte-level BPE tokenizer is stored as `tokenizer.ggml.model = gpt2` with the GPT-2
    pre-tokenizer (`gpt-2`, the same split regex as the `tokenizers` ByteLevel pre-tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from llmlib.errors import HarnessError

__all__ = [
    "FINGERPRINT_KEY",
    "GGUF_FILE",
    "GgufVocab",
    "LlamaHParams",
    "ensure_tiny_gguf",
    "gguf_fingerprint",
    "gguf_tensors",
    "load_hparams",
    "load_vocab",
    "permute_for_ggml_rope",
    "read_gguf_fingerprint",
    "write_gguf",
]

GGUF_FILE = "tiny-llama-f32.gguf"
#: a metadata key of our own (llama.cpp ignores unknown keys): what the file was written from
FINGERPRINT_KEY = "mlperf_llm_harness.fingerprint"
#: the model files a GGUF is converted from (their hashes are in the model's manifest)
_SOURCE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


# --- hyperparameters -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaHParams:
    """The parts of a Hugging Face Llama config.json that llama.cpp needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float


def load_hparams(model_dir: Path) -> LlamaHParams:
    """Read config.json; a model this converter cannot represent (tied or biased weights, RoPE
    scaling, another architecture) raises HarnessError."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HarnessError(f"{path}: cannot read the model config ({type(err).__name__}: {err})") from err
    rope = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10_000.0)}
    unsupported = [
        (cfg.get("model_type") != "llama", f"model_type {cfg.get('model_type')!r} (expected 'llama')"),
        (bool(cfg.get("tie_word_embeddings")), "tied input/output embeddings"),
        (bool(cfg.get("attention_bias")) or bool(cfg.get("mlp_bias")), "bias terms"),
        (rope.get("rope_type", "default") != "default", f"RoPE type {rope.get('rope_type')!r}"),
    ]
    problems = [why for bad, why in unsupported if bad]
    if problems:
        raise HarnessError(f"{path}: not convertible to GGUF by llmlib.tiny_gguf: {', '.join(problems)}")
    heads = int(cfg["num_attention_heads"])
    return LlamaHParams(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        context_length=int(cfg["max_position_embeddings"]),
        rope_theta=float(rope["rope_theta"]),
        rms_norm_eps=float(cfg["rms_norm_eps"]),
    )


# --- tokenizer -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class GgufVocab:
    """A byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer model stores it."""

    tokens: list[str]  # by id, in the byte-level alphabet ("Ġthe")
    token_types: list[int]  # gguf.TokenType per token
    merges: list[str]  # "left right", by rank
    bos_id: int
    eos_id: int
    unk_id: int | None
    pad_id: int | None
    add_bos: bool  # the Hugging Face tokenizer puts BOS before every prompt


def load_vocab(model_dir: Path, vocab_size: int) -> GgufVocab:
    """Read tokenizer.json (written by `tokenizers`) and config.json's special ids; ids the
    tokenizer does not use up to `vocab_size` become unused `[PADn]` tokens."""
    path = Path(model_dir) / "tokenizer.json"
    try:
        spec = json.loads(path.read_text())
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        raw_merges = model["merges"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HarnessError(f"{path}: expected a `tokenizers` BPE tokenizer ({type(err).__name__}: {err})") from err
    pre = (spec.get("pre_tokenizer") or {}).get("type")
    if model.get("type") != "BPE" or pre != "ByteLevel":
        raise HarnessError(f"{path}: expected a byte-level BPE tokenizer, got model {model.get('type')!r} "
                           f"with pre-tokenizer {pre!r}")
    special = {t["id"]: t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    by_id = {i: tok for tok, i in vocab.items()} | special
    if max(by_id) >= vocab_size:
        raise HarnessError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    tokens, types = _token_table(by_id, set(special), vocab_size)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    bos_id = int(cfg["bos_token_id"])
    return GgufVocab(
        tokens=tokens,
        token_types=types,
        # `tokenizers` writes merges as ["a", "b"] pairs (older versions: "a b" strings)
        merges=[m if isinstance(m, str) else " ".join(m) for m in raw_merges],
        bos_id=bos_id,
        eos_id=int(cfg["eos_token_id"]),
        unk_id=vocab.get(model["unk_token"]) if model.get("unk_token") else None,
        pad_id=cfg.get("pad_token_id"),
        add_bos=_template_starts_with(spec.get("post_processor"), by_id[bos_id]),
    )


def _token_table(by_id: dict[int, str], special: set[int], vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and their gguf.TokenType by id: special tokens are CONTROL, unused ids `[PADn]`."""
    import gguf

    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL))
    return tokens, types


def _template_starts_with(post_processor: dict | None, token: str) -> bool:
    """True when a `tokenizers` TemplateProcessing post-processor puts `token` before every prompt."""
    if not post_processor or post_processor.get("type") != "TemplateProcessing":
        return False
    single = post_processor.get("single") or [{}]
    return (single[0].get("SpecialToken") or {}).get("id") == token


# --- tensors ---------------------------------------------------------------------------------------
def permute_for_ggml_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q_proj / k_proj weight (n_head * head_dim rows) from Hugging Face's
    rotate-half layout (within each head: all first halves of the rotated pairs, then all second
    halves) to llama.cpp's interleaved one (pair members adjacent). Row r = h*head_dim + p*half + i
    (p in {0, 1}, i < half) moves to h*head_dim + 2*i + p."""
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise HarnessError(f"cannot permute a weight with {rows} rows for {n_head} heads: "
                           "expected a multiple of 2 * n_head")
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_name(tensor, layer: int | None = None) -> str:
    import gguf

    return gguf.TENSOR_NAMES[tensor].format(bid=layer) + ".weight"


def gguf_tensors(weights: dict[str, np.ndarray], hp: LlamaHParams) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) for every weight of a Hugging Face Llama checkpoint; a
    missing weight raises HarnessError, and so does one left over (it would be silently lost)."""
    from gguf import MODEL_TENSOR as T

    plan: list[tuple[str, str, int | None]] = [  # (HF name, GGUF name, heads to permute for)
        ("model.embed_tokens.weight", _gguf_name(T.TOKEN_EMBD), None),
        ("model.norm.weight", _gguf_name(T.OUTPUT_NORM), None),
        ("lm_head.weight", _gguf_name(T.OUTPUT), None),
    ]
    for i in range(hp.num_layers):
        hf = f"model.layers.{i}."
        plan += [
            (hf + "input_layernorm.weight", _gguf_name(T.ATTN_NORM, i), None),
            (hf + "self_attn.q_proj.weight", _gguf_name(T.ATTN_Q, i), hp.num_heads),
            (hf + "self_attn.k_proj.weight", _gguf_name(T.ATTN_K, i), hp.num_kv_heads),
            (hf + "self_attn.v_proj.weight", _gguf_name(T.ATTN_V, i), None),
            (hf + "self_attn.o_proj.weight", _gguf_name(T.ATTN_OUT, i), None),
            (hf + "post_attention_layernorm.weight", _gguf_name(T.FFN_NORM, i), None),
            (hf + "mlp.gate_proj.weight", _gguf_name(T.FFN_GATE, i), None),
            (hf + "mlp.up_proj.weight", _gguf_name(T.FFN_UP, i), None),
            (hf + "mlp.down_proj.weight", _gguf_name(T.FFN_DOWN, i), None),
        ]
    missing = [hf for hf, _, _ in plan if hf not in weights]
    planned = {hf for hf, _, _ in plan}
    extra = sorted(n for n in weights if n not in planned and not n.endswith("rotary_emb.inv_freq"))
    if missing or extra:
        raise HarnessError(f"the checkpoint does not match a {hp.num_layers}-layer Llama: "
                           f"missing {missing[:5]}, unexpected {extra[:5]}")
    for hf, name, heads in plan:
        tensor = np.ascontiguousarray(weights[hf], dtype=np.float32)
        yield name, np.ascontiguousarray(permute_for_ggml_rope(tensor, heads)) if heads else tensor


# --- writing ---------------------------------------------------------------------------------------
def _add_metadata(writer, hp: LlamaHParams, vocab: GgufVocab, *, name: str, fingerprint: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_block_count(hp.num_layers)
    writer.add_head_count(hp.num_heads)
    writer.add_head_count_kv(hp.num_kv_heads)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    writer.add_string(FINGERPRINT_KEY, fingerprint)


def write_gguf(model_dir: Path, out: Path, *, fingerprint: str = "") -> Path:
    """Convert the Hugging Face Llama in `model_dir` to a float32 GGUF at `out`, atomically (a
    temporary sibling file renamed into place), so a reader never sees a half-written file."""
    import gguf
    from safetensors.numpy import load_file

    model_dir, out = Path(model_dir), Path(out)
    hp = load_hparams(model_dir)
    vocab = load_vocab(model_dir, hp.vocab_size)
    weights = load_file(model_dir / "model.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _add_metadata(writer, hp, vocab, name=model_dir.name, fingerprint=fingerprint)
        for name, tensor in gguf_tensors(weights, hp):
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.chmod(0o644)  # mkstemp makes it private; the file is meant to be shared
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --- caching ---------------------------------------------------------------------------------------
def gguf_fingerprint(model_dir: Path) -> str:
    """What a GGUF of `model_dir` depends on: the source files' hashes (from the model's manifest),
    this converter's source and the gguf package's version."""
    from llmlib.tiny_model import read_manifest

    files = read_manifest(model_dir).get("files", {})
    try:
        sources = {name: files[name]["sha256"] for name in _SOURCE_FILES}
    except (KeyError, TypeError) as err:
        raise HarnessError(f"{model_dir}: the manifest has no sha256 for {err}; rebuild the tiny model") from err
    blob = {
        "sources": sources,
        "converter_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "gguf": version("gguf"),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_gguf_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a GGUF file; None when the file is missing, unreadable or has none."""
    import gguf

    try:
        field = gguf.GGUFReader(path).get_field(FINGERPRINT_KEY)
        return None if field is None else str(field.contents())
    except (OSError, ValueError, IndexError, KeyError):
        return None


def ensure_tiny_gguf(model_dir: Path | None = None, *, force: bool = False) -> Path:
    """The tiny model as a GGUF file (`GGUF_FILE` inside the model folder), written first if it is
    missing, stale (the model or this converter changed) or `force`d.

    `model_dir` defaults to the harness's tiny model, built first if needed (ensure_tiny_model); a
    given folder must hold a finished build (its manifest names the source files' hashes).
    """
    from llmlib.tiny_model import ensure_tiny_model

    folder = ensure_tiny_model() if model_dir is None else Path(model_dir)
    target = folder / GGUF_FILE
    fingerprint = gguf_fingerprint(folder)
    if force or read_gguf_fingerprint(target) != fingerprint:
        write_gguf(folder, target, fingerprint=fingerprint)
    return target

