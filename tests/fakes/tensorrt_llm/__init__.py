"""A fake `tensorrt_llm` for tests: the names and signatures the llmlib TensorRT-LLM cores use,
with a simulated engine behind them (see `_fake`). Not the real package."""

from tensorrt_llm import _fake
from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.sampling_params import SamplingParams

__version__ = "0.0.0+fake"

__all__ = ["LLM", "RequestOutput", "SamplingParams", "_fake", "__version__"]
