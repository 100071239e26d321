"""Test-side helper: Hugging Face's `transformers serve` (OpenAI-compatible, from the venv `make
test_servers` builds) serving the project's tiny model from build/tiny-llama on 127.0.0.1.

A real third-party server: it takes text prompts only, refuses any field outside OpenAI's (HTTP 422),
ends its streams after a chunk with `finish_reason` and `usage` and no `[DONE]`, and lists only the
models of its hub cache on /v1/models (an empty cache folder here, so the list is empty). The model is
pinned on the command line, so requests need no `model` field.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.process import REPO, ServerProcess

VENV = REPO / "build" / "transformers-serve-venv"
#: longest wait for the server to load the model and listen
START_TIMEOUT_S = 120.0


def serve_command() -> Path:
    """The venv's `transformers` command; a missing venv FAILS the test (CI must build it)."""
    command = VENV / "bin" / "transformers"
    if not command.is_file():
        pytest.fail(f"transformers serve is not installed: {command} is missing. Build it with "
                    "`make test_servers` (scripts/setup_transformers_serve_env.sh).", pytrace=False)
    return command


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    threads: int = 1
    seed: int = 0
    #: continuous batching (paged attention, `sdpa`): requests batched as they come; without it each
    #: request waits for the one before (TTFT p99 ~2.5 s at 3 requests/s here, ~70 ms with it)
    continuous_batching: bool = True
    start_timeout_s: float = START_TIMEOUT_S


class TransformersServe(ServerProcess):
    """One `transformers serve <model>` in its own process group; `with TransformersServe(path) as s:`
    starts it, waits until it listens, and stops it. `s.url` is host:port; `s.log()` its recent output."""

    name = "transformers serve"

    def __init__(self, model: Path, options: ServeOptions | None = None):
        self.model = Path(model)
        self.options = options or ServeOptions()
        self._home: tempfile.TemporaryDirectory | None = None
        super().__init__(self.options.start_timeout_s)

    def command(self) -> list[str]:
        return [str(serve_command()), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "--device", "cpu", "--dtype", "float32", "--default-seed", str(self.options.seed),
                "--log-level", "warning",
                *(["--continuous-batching", "--attn-implementation", "sdpa"] if self.options.continuous_batching
                  else [])]

    def env(self) -> dict[str, str]:
        """A minimal environment; an empty hub cache of its own (so /v1/models lists nothing, as on a
        fresh machine, instead of failing on a missing folder) and no network for the hub."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        self._home = tempfile.TemporaryDirectory(prefix="hf-home-")
        os.makedirs(os.path.join(self._home.name, "hub"), exist_ok=True)
        env.update(HF_HOME=self._home.name, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   OMP_NUM_THREADS=str(self.options.threads), PYTHONUNBUFFERED="1")
        return env

    def stop(self) -> int | None:
        code = super().stop()
        if self._home is not None:
            self._home.cleanup()
            self._home = None
        return code
