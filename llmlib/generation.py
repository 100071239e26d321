"""Generation parameters of a run: the benchmark's generation config under the user's overrides.

One frozen object per run, shared by every request (no per-request cost on the hot path).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmlib.errors import ConfigError

if TYPE_CHECKING:
    from llmlib.benchmarks import BenchmarkSpec
    from llmlib.config import ResolvedConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """What every core needs to generate like the benchmark's reference: output limits, stop
    tokens and sampling. `temperature == 0` (or top_k == 1) means greedy."""

    max_new_tokens: int
    min_new_tokens: int = 0
    eos_token_id: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # includes eos_token_id
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def with_max_new_tokens(self, n: int) -> GenerationParams:
        """These parameters with another output limit (one object per limit, cached)."""
        return self if n == self.max_new_tokens else _with_max_new(self, int(n))

    def sampling(self) -> dict[str, Any]:
        """The sampling fields as a dict (for backends whose APIs take them by name)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                "seed": self.seed, "min_new_tokens": self.min_new_tokens}


@functools.lru_cache(maxsize=256)
def limit(max_new_tokens: int) -> GenerationParams:
    """Greedy generation of at most `max_new_tokens`, no stop tokens (one shared object per limit)."""
    return GenerationParams(max_new_tokens=max_new_tokens)


#: (id(base), n) -> (base, derived); the base is held so that its id is never reused while cached
_DERIVED: dict[tuple[int, int], tuple[GenerationParams, GenerationParams]] = {}


def _with_max_new(params: GenerationParams, n: int) -> GenerationParams:
    key = (id(params), n)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not params:
        if len(_DERIVED) > 1024:
            _DERIVED.clear()
        hit = _DERIVED[key] = (params, replace(params, max_new_tokens=n))
    return hit[1]


def generation_params(config: ResolvedConfig, benchmark: BenchmarkSpec) -> GenerationParams:
    gen = benchmark.generation or {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(config, name)
        if value is not None:
            return value
        return gen.get(name, default)

    max_new = config.max_tokens if config.max_tokens is not None else benchmark.max_output_tokens
    stops: list[int] = []
    for tok in ([benchmark.eos_token_id] if benchmark.eos_token_id is not None else []) + list(
            benchmark.stop_token_ids) + list(config.stop):
        try:
            tok = int(tok)
        except (TypeError, ValueError):
            raise ConfigError(f"--stop={config.stop}: stop entries must be token ids (integers), got {tok!r}") from None
        if tok not in stops:
            stops.append(tok)
    temperature = float(pick("temperature", 0.0) or 0.0)
    if gen.get("do_sample") is False and config.temperature is None:
        temperature = 0.0
    top_k = int(pick("top_k", 0) or 0)
    top_p = float(pick("top_p", 1.0) or 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p}: expected 0 < top_p <= 1")
    known = {"temperature", "top_p", "top_k", "do_sample", "num_beams", "frequency_penalty", "presence_penalty"}
    return GenerationParams(
        max_new_tokens=int(max_new),
        min_new_tokens=int(benchmark.min_output_tokens or 0),
        eos_token_id=benchmark.eos_token_id,
        stop_token_ids=tuple(stops),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        frequency_penalty=float(pick("frequency_penalty", 0.0) or 0.0),
        presence_penalty=float(pick("presence_penalty", 0.0) or 0.0),
        seed=int(config.seed),
        extra={k: v for k, v in gen.items() if k not in known},
    )
