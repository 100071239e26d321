"""The core registry: a `core_type` name maps to a lazily imported LLMCore class.

A core whose optional dependency is missing fails only when chosen, naming the extra to install.
"""

from llmlib.registry import Registry

CORES = Registry("core")
CORES.register("dummy", "llmlib.cores.dummy:DummyCore")
CORES.register("hf", "llmlib.cores.hf_core:HFCore", extra="hf")
CORES.register("trtllm_executor", "llmlib.cores.trtllm_executor_core:TrtllmExecutorCore", extra="trtllm")
CORES.register("trtllm_hlapi", "llmlib.cores.trtllm_hlapi_core:TrtllmHlapiCore", extra="trtllm")
CORES.register("trtllm_endpoint", "llmlib.cores.trtllm_endpoint_core:TrtllmEndpointCore", extra="endpoint")
CORES.register("triton_grpc", "llmlib.cores.triton_grpc_core:TritonGrpcCore", extra="triton")
CORES.register("trtllm_disagg", "llmlib.cores.trtllm_disagg_core:TrtllmDisaggCore", extra="endpoint")


def get_core_class(name: str):
    """The LLMCore subclass registered as `name` (CoreUnavailableError if unknown or not installed)."""
    return CORES.get(name)
