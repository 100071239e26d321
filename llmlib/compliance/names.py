"""How a harness benchmark is named by MLCommons' tools: the checker's model and the tests it requires.

The facts come from ../shared/mlperf-reference/: compliance/README.md and the checker's constants.py.
"""

from __future__ import annotations

#: Compliance tests each benchmark needs. v6.1 entries follow the checker (constants.py
#: models_TEST06/07/09, which wins over compliance/README.md where they differ: the checker does
#: not ask llama3.1-8b-edge for TEST06); earlier rounds' LLMs and the project's stand-ins (tiny,
#: tiny-synthetic, math-tiny: llama2-70b's format) take TEST06 as compliance/README.md lists.
REQUIRED_TESTS: dict[str, tuple[str, ...]] = {
    "llama2-70b-99": ("TEST06",),
    "llama2-70b-99.9": ("TEST06",),
    "llama3.1-8b": ("TEST06",),
    "llama3.1-8b-edge": (),
    "llama3.1-405b": ("TEST06",),
    "mixtral-8x7b": ("TEST06",),
    "deepseek-r1": ("TEST06",),
    "gpt-oss-120b": ("TEST07", "TEST09"),
    "tiny": ("TEST06",),
    "tiny-synthetic": ("TEST06",),
    "math-tiny": ("TEST06",),
}

KNOWN_TESTS = ("TEST06", "TEST07", "TEST09")


def submission_model(benchmark_name: str) -> str:
    """The checker's benchmark folder for a harness benchmark: its interactive variants are the
    base model's Interactive scenario (llama2-70b-interactive-99.9 -> llama2-70b-99.9)."""
    return benchmark_name.replace("-interactive", "")


def required_tests(benchmark_name: str) -> tuple[str, ...]:
    """The compliance tests a benchmark needs; a benchmark outside the table needs none known."""
    return REQUIRED_TESTS.get(submission_model(benchmark_name), ())
