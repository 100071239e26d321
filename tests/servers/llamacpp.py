"""Test-side helper: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, from the
venv `make test_servers` builds) serving a GGUF model on 127.0.0.1, started and stopped by the tests.

The server is a real third-party one; the settings here only make it deterministic and fit for a
benchmark: one request at a time is its design, so a stream is not cut short when the next request
arrives (`--interrupt_requests false`), and no repetition penalty is applied (its sampler applies one
over the last 64 tokens by default, which the OpenAI API has no field to turn off).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.process import REPO, ServerProcess

VENV = REPO / "build" / "llamacpp-server-venv"
#: the name /v1/models lists for the model
MODEL_ALIAS = "tiny-llama"
#: longest wait for the server to load the model and listen
START_TIMEOUT_S = 60.0


def server_python() -> Path:
    """The server venv's interpreter; a missing venv FAILS the test (CI must build it)."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"llama-cpp-python's server is not installed: {python} is missing. "
                    "Build it with `make test_servers` (scripts/setup_llamacpp_server_env.sh).", pytrace=False)
    return python


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    n_ctx: int = 1024
    n_threads: int = 1
    seed: int = 0
    start_timeout_s: float = START_TIMEOUT_S


def server_command(python: Path, model: Path, port: int, options: ServerOptions) -> list[str]:
    """The command line of one server; every setting that changes outputs or timing is explicit."""
    args = {
        "model": str(model),
        "model_alias": MODEL_ALIAS,
        "host": "127.0.0.1",
        "port": port,
        "n_ctx": options.n_ctx,
        "n_threads": options.n_threads,
        "n_threads_batch": options.n_threads,
        "seed": options.seed,
        "n_gpu_layers": 0,
        "interrupt_requests": "false",
        "last_n_tokens_size": 0,  # no repetition penalty window: greedy decoding stays greedy
        "logits_all": "false",  # logits of the last position only (no logprobs needed)
        "cache": "false",
        "verbose": "false",
    }
    return [str(python), "-m", "llama_cpp.server", *(f"--{k}={v}" for k, v in args.items())]


class LlamaCppServer(ServerProcess):
    """One server process in its own process group; `with LlamaCppServer(model) as s:` starts it,
    waits until it listens, and stops it. `s.url` is host:port; `s.log()` its recent output."""

    name = "llama-cpp-python server"

    def __init__(self, model: Path, options: ServerOptions | None = None):
        self.model = Path(model)
        self.options = options or ServerOptions()
        super().__init__(self.options.start_timeout_s)

    def command(self) -> list[str]:
        return server_command(server_python(), self.model, self.port, self.options)

    def env(self) -> dict[str, str]:
        """A minimal environment: the server reads its settings from environment variables too
        (MODEL, PORT, API_KEY, ...), so nothing of the caller's may leak in."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["OMP_NUM_THREADS"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env
