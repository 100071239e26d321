"""A transformers checkpoint whose model raises an out-of-memory error on every Nth forward call.

`oom_checkpoint(src, dst, every)` copies a Llama checkpoint and points it at remote code (load with trust_remote_code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODELING = '''"""A Llama whose every Nth forward call raises torch.OutOfMemoryError (tests only)."""
import torch
from transformers import LlamaForCausalLM


class OOMEveryLlama(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self._oom_every = int(getattr(config, "oom_every", 0) or 0)
        self._calls = 0

    def forward(self, *args, **kwargs):
        self._calls += 1
        if self._oom_every and self._calls % self._oom_every == 0:
            raise torch.OutOfMemoryError(f"simulated out of memory (model call {self._calls})")
        return super().forward(*args, **kwargs)
'''


def oom_checkpoint(src: Path, dst: Path, every: int) -> Path:
    """`dst`: `src` (a Llama checkpoint folder) whose model fails every `every`th call."""
    dst = Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_oom.OOMEveryLlama"}
    cfg["oom_every"] = int(every)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    (dst / "modeling_oom.py").write_text(MODELING)
    return dst
