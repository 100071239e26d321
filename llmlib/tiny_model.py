"""The project's own tiny Llama (tokenizer, weights, `tiny` benchmark dataset), built from a seed on CPU.

Nothing is downloaded: `ensure_tiny_model()` builds it on first use into an ignored folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlib.errors import ConfigError, HarnessError

__all__ = [
    "BOS_ID",
    "DATASET_FILE",
    "DEFAULT_RECIPE",
    "EOS_ID",
    "MANIFEST_FILE",
    "PAD_ID",
    "TINY_MODEL_DIR",
    "UNK_ID",
    "TinyRecipe",
    "build_tiny_model",
    "corpus_sentences",
    "ensure_tiny_model",
    "read_manifest",
    "tiny_dataset_path",
]

TINY_MODEL_DIR = Path(__file__).resolve().parents[1] / "build" / "tiny-llama"

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = UNK_ID  # the model never emits <unk> (its lm_head row is zero), so it is a safe pad
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")

DATASET_FILE = "tiny_dataset.pkl"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# Everything a complete build holds; the manifest is written last and names the fingerprint.
_BUILD_FILES = (
    "config.json",
    "generation_config.json",
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    "tokenizer_config.json",
    DATASET_FILE,
    MANIFEST_FILE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TinyRecipe:
    """Everything a build depends on. The defaults are the harness's tiny model; tests use smaller ones."""

    seed: int = 0
    # corpus and tokenizer
    corpus_sentences: int = 20_000
    vocab_size: int = 2000
    # model (Llama architecture)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    max_position_embeddings: int = 1024
    rope_theta: float = 10_000.0
    # output head: logits have a standard deviation of about `logit_scale`; the EOS row is
    # `eos_scale` times longer than the others so that EOS wins the argmax now and then.
    logit_scale: float = 32.0
    eos_scale: float = 1.9
    # dataset
    num_samples: int = 256
    min_input_tokens: int = 16
    max_input_tokens: int = 128
    max_new_tokens: int = 64
    min_output_tokens: int = 4
    # every greedy decision of a reference output wins by at least this (in units of logits)
    min_margin: float = 0.05
    batch_size: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"TinyRecipe.{f.name}={value!r}: expected a number >= 0")
        problems = [
            (self.hidden_size % self.num_heads == 0, "hidden_size must be a multiple of num_heads"),
            (self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0,
             "num_heads must be a multiple of num_kv_heads"),
            (1 <= self.min_input_tokens <= self.max_input_tokens,
             "need 1 <= min_input_tokens <= max_input_tokens"),
            (1 <= self.min_output_tokens <= self.max_new_tokens,
             "need 1 <= min_output_tokens <= max_new_tokens"),
            (self.max_input_tokens + self.max_new_tokens <= self.max_position_embeddings,
             "max_input_tokens + max_new_tokens must fit max_position_embeddings"),
            (self.num_samples >= 1 and self.batch_size >= 1, "num_samples and batch_size must be >= 1"),
        ]
        for ok, why in problems:
            if not ok:
                raise ConfigError(f"{self!r}: {why}")


DEFAULT_RECIPE = TinyRecipe()


# ---------------------------------------------------------------------------------------------
# corpus

_NAMES = """
Ada Alan Alice Amir Anna Arjun Ben Bianca Carlos Chen Clara Dan Diego Elena Emma Farah Felix
Grace Hana Hugo Ines Ivan Jack Jonas Julia Kai Kenji Laila Leo Lina Luca Maya Mei Miguel Nadia
Nina Noah Olga Omar Oscar Priya Quinn Rafael Rosa Ruth Sam Sara Sofia Tariq Tom Uma Victor
Wen Yara Yusuf Zoe
""".split()

_PLACES = """
garden kitchen library harbor market station village forest river valley mountain island
bridge castle museum school hospital bakery factory farm beach desert meadow office theater
temple tower square park cellar attic workshop laboratory airport stadium canyon lake field
orchard cottage palace tunnel
""".split()

_NOUNS = """
apple arrow basket bell bicycle bird blanket boat book bottle box bread brush bucket button
cake camera candle car cart chair cloud coat coin compass cup curtain desk door dragon drum
engine feather fence flower fox glass glove hammer hat horse jar key kettle kite ladder lamp
leaf letter map mirror moon needle nest note orange owl painter pencil piano picture pillow
plate pocket rabbit radio ring robot rope sail scarf seed ship shoe song spoon star stone
storm street sword table teacher ticket tiger tool train tree trumpet umbrella violin wagon
wall watch wheel whistle window wolf
""".split()

_ADJECTIVES = """
ancient bright brave broken calm careful cheerful clever cold curious dark distant dusty eager
empty enormous famous fierce gentle golden green heavy hidden honest hungry icy kind large
little lonely loud lucky narrow noisy old patient polished proud purple quiet quick rare red
rusty shiny silent silver simple sleepy small smooth soft strange strong sudden sweet tall
tiny warm wet wild wise wooden young
""".split()

# (base, past)
_VERBS = [
    ("carry", "carried"), ("build", "built"), ("find", "found"), ("paint", "painted"),
    ("open", "opened"), ("close", "closed"), ("watch", "watched"), ("follow", "followed"),
    ("push", "pushed"), ("pull", "pulled"), ("repair", "repaired"), ("clean", "cleaned"),
    ("draw", "drew"), ("write", "wrote"), ("read", "read"), ("hide", "hid"), ("lift", "lifted"),
    ("throw", "threw"), ("catch", "caught"), ("bring", "brought"), ("sell", "sold"),
    ("buy", "bought"), ("borrow", "borrowed"), ("return", "returned"), ("count", "counted"),
    ("measure", "measured"), ("polish", "polished"), ("wrap", "wrapped"), ("drop", "dropped"),
    ("kick", "kicked"), ("hold", "held"), ("visit", "visited"), ("leave", "left"),
    ("remember", "remembered"), ("forget", "forgot"), ("describe", "described"),
    ("examine", "examined"), ("discover", "discovered"), ("climb", "climbed"), ("cross", "crossed"),
    ("feed", "fed"), ("plant", "planted"), ("move", "moved"), ("share", "shared"),
    ("study", "studied"), ("test", "tested"), ("weigh", "weighed"), ("hear", "heard"),
    ("see", "saw"), ("make", "made"), ("take", "took"), ("give", "gave"), ("keep", "kept"),
    ("sing", "sang"), ("play", "played"), ("cook", "cooked"), ("fold", "folded"),
    ("guard", "guarded"), ("chase", "chased"), ("greet", "greeted"),
]

_INTRANSITIVE = [
    ("sleep", "slept"), ("wait", "waited"), ("laugh", "laughed"), ("run", "ran"), ("walk", "walked"),
    ("sing", "sang"), ("dance", "danced"), ("rest", "rested"), ("shine", "shone"), ("fall", "fell"),
    ("travel", "traveled"), ("work", "worked"), ("whisper", "whispered"), ("shout", "shouted"),
    ("arrive", "arrived"), ("wander", "wandered"), ("listen", "listened"), ("smile", "smiled"),
]

_ADVERBS = """
quickly slowly carefully quietly loudly suddenly gently proudly happily sadly bravely calmly
eagerly rarely often always never softly boldly patiently nervously warmly silently kindly
""".split()

_PREPOSITIONS = "in near behind under above beside inside outside across through beyond around".split()
_TIMES = """
morning afternoon evening night spring summer autumn winter weekend holiday
""".split()
_EVENTS = "storm festival market fair wedding race concert meeting harvest parade".split()
_NUMBERS = "two three four five six seven eight nine ten twelve twenty".split()
_COLORS = "red blue green yellow black white grey brown orange purple".split()

_TEMPLATES = (
    "{Name} {vpast} the {adj} {noun} {prep} the {place}.",
    "The {adj} {noun} {ipast} {adv} {prep} the {place}.",
    "In the {time}, {Name} and {Name2} {vpast} a {noun} near the {place}.",
    "Why did the {noun} {ibase} {prep} the {adj} {place}?",
    "{Name} said that the {noun} was {adj} and {adj2}.",
    "Every {time}, the {nouns} {ibase} {prep} the {place}.",
    "There is a {adj} {noun} {prep} the {place}, and it {ipast} {adv}.",
    "If the {noun} {ipast}, then {Name} would {vbase} the {noun2}.",
    "{Name} wanted to {vbase} {num} {adj} {nouns} before the {event}.",
    "After the {event}, the {nouns} {ipast} {adv}.",
    "The {noun} of the {place} is {adj}, but the {noun2} is {adj2}.",
    "We {vpast} {num} {nouns} and {num2} {nouns2} at the {place}.",
    "{Name} {adv} {vpast} the {color} {noun} and gave it to {Name2}.",
    "How many {nouns} did {Name} {vbase} at the {place}?",
    "On day {digits}, the {adj} {noun} was still {prep} the {place}.",
    "\"Look at the {color} {noun}!\" said {Name}.",
    "The {nouns} in the {place} were {adj}, so {Name} {ipast}.",
    "{Name} asked {Name2} to {vbase} the {noun} {adv}.",
    "Nobody knew why the {adj} {noun} had {ipast} {prep} the {place}.",
    "Before the {event}, {Name} {vpast} {num} {color} {nouns}.",
)


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith("f"):
        return noun[:-1] + "ves"
    return noun + "s"


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _sentence(rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES)
    vbase, vpast = rng.choice(_VERBS)
    ibase, ipast = rng.choice(_INTRANSITIVE)
    name, name2 = rng.sample(_NAMES, 2)
    noun, noun2 = rng.sample(_NOUNS, 2)
    adj, adj2 = rng.sample(_ADJECTIVES, 2)
    num, num2 = rng.sample(_NUMBERS, 2)
    text = template.format(
        Name=name, Name2=name2, noun=noun, noun2=noun2, nouns=_plural(noun), nouns2=_plural(noun2),
        adj=adj, adj2=adj2, adv=rng.choice(_ADVERBS), prep=rng.choice(_PREPOSITIONS),
        place=rng.choice(_PLACES), time=rng.choice(_TIMES), event=rng.choice(_EVENTS),
        num=num, num2=num2, color=rng.choice(_COLORS), digits=rng.randint(1, 2000),
        vbase=vbase, vpast=vpast, ibase=ibase, ipast=ipast,
    )
    return _A_BEFORE_VOWEL.sub(r"\1n ", text)


def corpus_sentences(seed: int, n: int) -> list[str]:
    """`n` English-like sentences from templates and word lists; the same `seed` gives the same list."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# tokenizer


def _train_tokenizer(recipe: TinyRecipe, passages: list[str]):
    """A byte-level BPE tokenizer trained on `passages`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(passages, trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != token_id:
            raise HarnessError(f"tiny tokenizer: special token {token} got id {tok.token_to_id(token)}, "
                               f"expected {token_id}")
    bos = SPECIAL_TOKENS[BOS_ID]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=SPECIAL_TOKENS[UNK_ID],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=recipe.max_position_embeddings,
    )


# ---------------------------------------------------------------------------------------------
# model


def _model_config(recipe: TinyRecipe, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype="float32",
    )


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _init_weights(model, recipe: TinyRecipe, allowed) -> None:
    """Fill every weight from its own generator (seeded by the recipe seed and the weight's name).

    Linear layers get N(0, 1/fan_in) so every layer changes the residual stream as much as the
    token embedding (N(0, 1)) does: the next token depends on the whole context, not only the
    last token. lm_head rows get N(0, 1/hidden) * logit_scale, so logits have a standard deviation
    of about logit_scale and the top-1 margin is large. Rows of tokens outside `allowed` (a bool
    mask: whole words, punctuation and EOS) are zero: their logit is 0, far below the top logit of
    hundreds of N(0, logit_scale^2) draws, so greedy decoding never emits <unk>, <s>, word pieces or
    stray bytes. The EOS row is eos_scale times longer, so EOS wins the argmax now and then.
    """
    import torch

    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            gen = torch.Generator().manual_seed(_tensor_seed(recipe.seed, name))
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name == "lm_head.weight":
                values *= recipe.logit_scale / recipe.hidden_size**0.5
                values[~allowed] = 0.0
                values[EOS_ID] *= recipe.eos_scale
            elif name != "model.embed_tokens.weight":  # a linear layer: N(0, 1/fan_in)
                values /= param.shape[1] ** 0.5
            param.copy_(values)


def _build_model(recipe: TinyRecipe, vocab_size: int, allowed):
    from transformers import GenerationConfig, LlamaForCausalLM

    model = LlamaForCausalLM(_model_config(recipe, vocab_size))  # its own random init is all overwritten
    _init_weights(model, recipe, allowed)
    model.generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=recipe.max_new_tokens,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    return model.eval()


_PUNCTUATION = (".", ",", "?", "!")


def _output_token_mask(tokenizer, words: set[str]):
    """Bool mask over the vocabulary: the tokens the model may emit (whole corpus words with their
    leading space, a few punctuation marks, and EOS)."""
    import torch

    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    mask[EOS_ID] = True
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in (UNK_ID, BOS_ID, EOS_ID):
            continue
        if token in _PUNCTUATION:
            mask[token_id] = True
        elif token.startswith("\u0120") and token[1:] in words:
            # the byte-level symbol for a space; the word must encode back to this one token
            if tokenizer.encode(" " + token[1:], add_special_tokens=False) == [token_id]:
                mask[token_id] = True
    return mask


# ---------------------------------------------------------------------------------------------
# dataset


@dataclass(frozen=True, slots=True)
class _Sample:
    tok_input: list[int]
    text: str
    tok_output: list[int]
    ended_by_eos: bool
    min_margin: float


def _make_prompt(rng: random.Random, tokenizer, recipe: TinyRecipe) -> tuple[list[int], str]:
    """A passage of corpus sentences cut before a word, so that its length (BOS included) is at most
    a target drawn from min..max_input_tokens and as close to it as a word boundary allows."""
    target = rng.randint(recipe.min_input_tokens, recipe.max_input_tokens)
    sentences = [_sentence(rng)]
    ids = tokenizer(" ".join(sentences)).input_ids
    while len(ids) <= target:
        sentences.append(_sentence(rng))
        ids = tokenizer(" ".join(sentences)).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    cut = target
    while cut > recipe.min_input_tokens and not tokens[cut].startswith("\u0120"):  # a space starts a word
        cut -= 1
    text = tokenizer.decode(ids[:cut], skip_special_tokens=True)
    return tokenizer(text).input_ids, text  # the same ids as ids[:cut] when cut is at a word start


def _greedy(model, prompts: list[list[int]], recipe: TinyRecipe) -> list[tuple[list[int], bool, float]]:
    """Greedy outputs of `prompts`, batched by length with left padding: for each prompt the output
    ids (EOS excluded), whether EOS ended it, and the smallest top-1 margin of its decisions."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    results: list[Any] = [None] * len(prompts)
    for start in range(0, len(order), recipe.batch_size):
        batch = order[start : start + recipe.batch_size]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = len(prompts[i])
            input_ids[row, width - n :] = torch.tensor(prompts[i])
            attention_mask[row, width - n :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=recipe.max_new_tokens,
                do_sample=False,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
                output_logits=True,
                return_dict_in_generate=True,
            )
        new = out.sequences[:, width:].tolist()
        top2 = torch.stack(out.logits, dim=1).topk(2, dim=-1).values
        margins = (top2[..., 0] - top2[..., 1]).tolist()
        for row, i in enumerate(batch):
            ids = new[row]
            ended = EOS_ID in ids
            n = ids.index(EOS_ID) if ended else len(ids)
            decisions = n + 1 if ended else n  # the decision that chose EOS counts too
            results[i] = (ids[:n], ended, min(margins[row][:decisions]))
    return results


def _build_samples(model, tokenizer, recipe: TinyRecipe) -> tuple[list[_Sample], dict[str, int]]:
    """Draw prompts until `num_samples` have a robust, long enough greedy reference.

    A candidate is kept when every greedy decision of its reference wins by at least min_margin
    logits (so float noise from batching or padding cannot flip it) and its output has at least
    min_output_tokens tokens. Candidates are drawn and judged in a fixed order, so the result is
    deterministic.
    """
    rng = random.Random(f"{recipe.seed}:prompts")
    samples: list[_Sample] = []
    counts = {"candidates": 0, "rejected_low_margin": 0, "rejected_short": 0}
    while len(samples) < recipe.num_samples:
        need = recipe.num_samples - len(samples)
        if counts["candidates"] > 20 * recipe.num_samples:
            raise HarnessError(
                f"tiny dataset: only {len(samples)} of {counts['candidates']} candidate prompts gave a "
                f"usable reference (counts {counts}); the recipe's min_margin or eos_scale is off"
            )
        chunk = [_make_prompt(rng, tokenizer, recipe) for _ in range(need + need // 3 + 8)]
        counts["candidates"] += len(chunk)
        for (tok_input, text), (tok_output, ended, margin) in zip(
            chunk, _greedy(model, [c[0] for c in chunk], recipe)
        ):
            if margin < recipe.min_margin:
                counts["rejected_low_margin"] += 1
            elif len(tok_output) < recipe.min_output_tokens:
                counts["rejected_short"] += 1
            elif len(samples) < recipe.num_samples:
                samples.append(_Sample(tok_input, text, tok_output, ended, margin))
    return samples, counts


def _write_dataset(samples: list[_Sample], tokenizer, path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "tok_input": [s.tok_input for s in samples],
            "input": [s.text for s in samples],
            "output": [tokenizer.decode(s.tok_output) for s in samples],
            "tok_output": [s.tok_output for s in samples],
        }
    )
    frame.to_pickle(path, protocol=4)


# ---------------------------------------------------------------------------------------------
# build


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2)}


def build_tiny_model(out: Path, *, recipe: TinyRecipe = DEFAULT_RECIPE) -> dict[str, Any]:
    """Build the tokenizer, model and dataset into the folder `out`; returns the manifest.

    Not atomic: `ensure_tiny_model` builds into a temporary folder and renames it into place.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sentences = corpus_sentences(recipe.seed, recipe.corpus_sentences)
    passages = [" ".join(sentences[i : i + 8]) for i in range(0, len(sentences), 8)]
    tokenizer = _train_tokenizer(recipe, passages)
    words = {word for passage in passages for word in re.findall(r"[A-Za-z]+", passage)}
    allowed = _output_token_mask(tokenizer, words)
    model = _build_model(recipe, len(tokenizer), allowed)
    samples, counts = _build_samples(model, tokenizer, recipe)

    tokenizer.save_pretrained(out)
    with _quiet_progress_bars():
        model.save_pretrained(out)
    _write_dataset(samples, tokenizer, out / DATASET_FILE)

    output_lens = [len(s.tok_output) for s in samples]
    manifest = {
        "name": "tiny-llama",
        "seed": recipe.seed,
        "fingerprint": _fingerprint(recipe),
        "recipe": dataclasses.asdict(recipe),
        "versions": _library_versions(),
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "output_vocabulary": int(allowed.sum()),
        "dataset": {
            "file": DATASET_FILE,
            "num_samples": len(samples),
            "columns": ["tok_input", "input", "output", "tok_output"],
            "tok_input_starts_with_bos": True,
            "tok_output_includes_eos": False,
            "input_tokens": _stats([len(s.tok_input) for s in samples]),
            "output_tokens": _stats(output_lens),
            "ended_by_eos": sum(s.ended_by_eos for s in samples),
            "hit_max_new_tokens": sum(not s.ended_by_eos for s in samples),
            "smallest_margin": round(min(s.min_margin for s in samples), 4),
            **counts,
        },
        "files": {
            name: {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
            for name in _BUILD_FILES
            if name != MANIFEST_FILE
        },
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No tqdm bar from transformers (it would print one for a single weights file) within the block."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "tokenizers", "numpy", "pandas")}


def _fingerprint(recipe: TinyRecipe) -> str:
    """What a build from `recipe` depends on: its fields, the library versions and this module's
    source (word lists, templates, init scheme), so any change to the recipe rebuilds."""
    blob = {
        "recipe": dataclasses.asdict(recipe),
        "versions": _library_versions(),
        "source_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# build on first use


def ensure_tiny_model(
    path: Path | None = None, *, recipe: TinyRecipe = DEFAULT_RECIPE, force: bool = False
) -> Path:
    """The folder holding the tiny model, tokenizer, dataset and manifest; built first if needed.

    `path` defaults to TINY_MODEL_DIR. A folder that is missing, incomplete or built from another
    recipe (or other library versions) is rebuilt; `force` rebuilds anyway. The build goes to a
    temporary sibling folder that is renamed into place, under an exclusive lock on a sibling
    lock file, so concurrent callers wait for one build and never see a half-written folder.
    """
    target = Path(path) if path is not None else TINY_MODEL_DIR
    fingerprint = _fingerprint(recipe)
    if not force and _is_complete(target, fingerprint):
        return target
    if target.exists() and not target.is_dir():
        raise HarnessError(f"tiny model folder {target}: exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if not force and _is_complete(target, fingerprint):
            return target  # another process built it while this one waited
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; only lock holders make them
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the build is meant to be shared
            build_tiny_model(tmp, recipe=recipe)
            _replace_folder(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_dataset_path(path: Path | None = None) -> Path:
    """The `tiny` benchmark's pickled DataFrame, built first if needed (see ensure_tiny_model)."""
    return ensure_tiny_model(path) / DATASET_FILE


def read_manifest(path: Path | None = None) -> dict[str, Any]:
    """The manifest of a built folder (default TINY_MODEL_DIR), without building anything."""
    manifest_path = Path(path if path is not None else TINY_MODEL_DIR) / MANIFEST_FILE
    try:
        return json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise HarnessError(f"{manifest_path}: no manifest: the tiny model is not built there") from err
    except (OSError, ValueError) as err:
        raise HarnessError(f"{manifest_path}: unreadable manifest ({type(err).__name__}: {err})") from err


def _is_complete(folder: Path, fingerprint: str) -> bool:
    """True when `folder` holds a finished build of `fingerprint` (files present, sizes as recorded)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        if manifest.get("fingerprint") != fingerprint:
            return False
        files = manifest["files"]
        return all(
            (folder / name).stat().st_size == files[name]["bytes"]
            for name in _BUILD_FILES
            if name != MANIFEST_FILE
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`: an old `target` is first renamed aside, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
