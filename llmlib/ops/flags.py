"""The flag strings of the build steps (`--trtllm_checkpoint_flags`, `--trtllm_build_flags`): which keys
each tool takes, which belong to fields of their own, and how a flag dict becomes an argument list."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from llmlib.errors import ConfigError

#: TensorRT-LLM examples/quantization/quantize.py arguments (its argparse), less those the harness sets
QUANTIZE_KEYS = frozenset({
    "nemo_ckpt_path", "decoder_type", "device", "device_map", "calib_tp_size", "calib_pp_size", "seed",
    "tokenizer_max_seq_length", "batch_size", "calib_max_seq_length", "cp_size", "awq_block_size",
    "kv_cache_dtype", "quantize_lm_head", "num_medusa_heads", "num_medusa_layers", "max_draft_len",
    "medusa_hidden_act", "medusa_model_dir", "quant_medusa_head", "autoq_format", "auto_quantize_bits",
    "export_format",
})
#: quantize.py arguments that come from fields, never from the flag string
QUANTIZE_FORBIDDEN = {
    "qformat": "--precision", "tp_size": "--tensor_parallelism", "pp_size": "--pipeline_parallelism",
    "model_dir": "--trtllm_model_path", "output_dir": "--quantized_checkpoint_dir",
    "calib_dataset": "--calib_dataset_path", "calib_size": "--calib_batch_size x --calib_max_batches",
    "dtype": "--checkpoint_dtype",
}
#: trtllm-build arguments (tensorrt_llm/commands/build.py and its plugin arguments)
BUILD_KEYS = frozenset({
    "model_config", "build_config", "model_cls_file", "model_cls_name", "max_input_len", "max_seq_len",
    "max_decoder_seq_len", "max_beam_width", "max_num_tokens", "opt_num_tokens", "max_encoder_input_len",
    "max_prompt_embedding_table_size", "max_multimodal_len", "kv_cache_type", "paged_kv_cache",
    "input_timing_cache", "output_timing_cache", "profiling_verbosity", "strip_plan", "weight_sparsity",
    "weight_streaming", "fast_build", "log_level", "enable_debug_output", "visualize_network", "monitor_memory",
    "logits_dtype", "gather_context_logits", "gather_generation_logits", "gather_all_token_logits", "lora_dir",
    "lora_ckpt_source", "lora_target_modules", "max_lora_rank", "speculative_decoding_mode", "max_draft_len",
    "auto_parallel", "gpus_per_node", "cluster_key",
    # plugin arguments (tensorrt_llm/plugin/plugin.py add_plugin_argument)
    "bert_attention_plugin", "gpt_attention_plugin", "gemm_plugin", "gemm_swiglu_plugin",
    "fp8_rowwise_gemm_plugin", "nccl_plugin", "lora_plugin", "dora_plugin", "moe_plugin", "mamba_conv1d_plugin",
    "low_latency_gemm_plugin", "low_latency_gemm_swiglu_plugin", "gemm_allreduce_plugin", "context_fmha",
    "bert_context_fmha_fp32_acc", "remove_input_padding", "reduce_fusion", "user_buffer", "tokens_per_block",
    "use_paged_context_fmha", "use_fp8_context_fmha", "fuse_fp4_quant", "multiple_profiles", "paged_state",
    "streamingllm", "use_fused_mlp", "pp_reduce_scatter", "norm_quant_fusion", "use_fused_rmsnorm_quant",
})
BUILD_FORBIDDEN = {
    "tensor_parallelism": "--tensor_parallelism", "tp_size": "--tensor_parallelism",
    "pipeline_parallelism": "--pipeline_parallelism", "pp_size": "--pipeline_parallelism",
    "max_batch_size": "--gpu_batch_size", "checkpoint_dir": "--quantized_checkpoint_dir",
    "output_dir": "--engine_dir", "workers": "--tensor_parallelism x --pipeline_parallelism",
    "dry_run": "--dry_run",
}


def check_flags(flags: Mapping[str, Any], *, field: str, tool: str, known: frozenset[str],
                forbidden: Mapping[str, str], origin: Mapping[str, str] | None = None) -> None:
    """One-line ConfigError for the first key `tool` does not take or that has a field of its own,
    naming where the key came from (the flag or its environment variable)."""
    for key in flags:
        where = (origin or {}).get(key, f"--{field}")
        if key in forbidden:
            raise ConfigError(f"{where}: {key!r} is not allowed in the flag string: use {forbidden[key]}")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: {tool} has no argument {key!r}.{hint}")


def flag_origin(config, field: str, env: Mapping[str, str]) -> dict[str, str]:
    """Which keys of a flag field came from its environment variable (applied on top of the flag)."""
    from llmlib.fields import FIELDS, parse_flag_string

    var = FIELDS[field].env
    raw = env.get(var, "") if var else ""
    try:
        keys = parse_flag_string(raw) if raw.strip() else {}
    except ConfigError:
        keys = {}
    return {k: f"env {var}" for k in keys}


def to_argv(flags: Mapping[str, Any]) -> list[str]:
    """`--key=value` per item; True is a bare `--key` (argparse store_true), False and None are left
    out; fp4 means nvfp4 to TensorRT-LLM's tools."""
    out = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            out.append(f"--{key}")
            continue
        if isinstance(value, str) and value.lower() == "fp4":
            value = "nvfp4"
        out.append(f"--{key}={value}")
    return out
