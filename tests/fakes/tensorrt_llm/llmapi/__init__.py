"""Fake `tensorrt_llm.llmapi`: the LLM class and the configuration models the cores pass to it."""

from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.llmapi.llm_args import (
    CapacitySchedulerPolicy,
    ContextChunkingPolicy,
    KvCacheConfig,
    SchedulerConfig,
)

__all__ = ["LLM", "CapacitySchedulerPolicy", "ContextChunkingPolicy", "KvCacheConfig", "RequestOutput",
           "SchedulerConfig"]
