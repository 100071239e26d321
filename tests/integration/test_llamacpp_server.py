"""The `trtllm_endpoint` core against a real OpenAI-compatible server written elsewhere:
llama-cpp-python's, serving the tiny model as a GGUF file (llmlib/tiny_gguf.py) on 127.0.0.1.

Health and model checks; the server's greedy outputs reproduce the `tiny` references (which proves
the GGUF right); a LoadGen Server run reaches VALID. llama-cpp-python takes no token-id prompt, so
the core sends the dataset's prompt texts (--trtllm_prompt_text_column=input), the server tokenizes
them (into exactly the dataset's token ids, checked here), and output lengths come from
`usage` (non-streamed) or from counting the streamed chunks (one per token).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from llmlib.cores.base import Request
from llmlib.cores.trtllm_endpoint_core import EndpointSettings, TrtllmEndpointCore
from llmlib.dataset import load_dataset
from llmlib.errors import BackendError
from llmlib.tiny_gguf import ensure_tiny_gguf
from llmlib.tiny_model import tiny_dataset_path
from tests.integration.done_when import (MIN_QUERIES, check_auto_target, done_when_args, performance_dir, run_done_when,
                                         run_until_valid)
from tests.servers.llamacpp import MODEL_ALIAS, LlamaCppServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
TEXT_COLUMN = "input"  # the tiny dataset's prompt texts


@pytest.fixture(scope="module")
def server():
    """One server for the module: the tiny model's GGUF (built first if needed), 1 thread."""
    with LlamaCppServer(ensure_tiny_gguf()) as s:
        yield s


@pytest.fixture(scope="module")
def tiny_dataset():
    """The `tiny` dataset with its prompt texts (as `extra['input']`)."""
    spec = {"format": "pickle", "path": str(tiny_dataset_path()), "input_column": "tok_input",
            "reference_column": "output", "reference_tokens_column": "tok_output", "extra_columns": [TEXT_COLUMN]}
    return load_dataset(spec, name="tiny")


@pytest.fixture
def make_core(make_config, tiny_benchmark):
    """make_core(sink, url, dataset=None, **settings) -> a TrtllmEndpointCore, stopped after the test."""
    made = []

    def make(sink, url, dataset=None, **settings):
        settings.setdefault("request_timeout_s", 60.0)
        s = EndpointSettings(urls=(url,), **settings)
        core = TrtllmEndpointCore(s, rank=0, sink=sink, inputs=TrtllmEndpointCore.core_inputs(s, dataset))
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


def picked_samples(dataset, n_eos: int = 4, n_max: int = 2) -> list[int]:
    """A handful of samples: the first `n_eos` whose reference ended with EOS before the 64-token
    budget, and the first `n_max` that used all of it."""
    lens = dataset.output_lens
    return ([int(i) for i in np.flatnonzero(lens < 64)[:n_eos]] +
            [int(i) for i in np.flatnonzero(lens == 64)[:n_max]])


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never via a proxy


def post(url: str, body: dict, timeout_s: float = 60.0) -> tuple[int, str]:
    """POST a JSON body; the HTTP status and the reply's text (errors included)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with _DIRECT.open(req, timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def requests_for(dataset, indices: list[int], streaming: bool) -> list[Request]:
    return [Request(k, dataset.input_tokens[i], 64, streaming, sample_index=i) for k, i in enumerate(indices)]


# --- (a) health and model checks ---------------------------------------------------------------------
def test_health_check_finds_the_served_model(server, make_core, recorder, tiny_dataset):
    core = make_core(recorder, server.url, dataset=tiny_dataset, prompt_text_column=TEXT_COLUMN)
    core.health_check()  # GET /health is a 404 here (allowed), then GET /v1/models
    assert core.model == MODEL_ALIAS and core.served_models == [MODEL_ALIAS]


def test_a_model_the_server_does_not_serve_is_named(server, make_core, recorder):
    core = make_core(recorder, server.url, model="llama-405b")
    with pytest.raises(BackendError) as info:
        core.health_check()
    assert f"http://{server.url}" in str(info.value) and "'llama-405b' is not served" in str(info.value)
    assert MODEL_ALIAS in str(info.value)


# --- (b) token ids in, text and usage out ------------------------------------------------------------
def test_token_id_prompts_are_refused_in_one_line_naming_the_text_column(server, make_core, recorder, tiny_dataset):
    """The server validates `prompt` as str | list[str]: a list of token ids is an error (HTTP 500
    with pydantic's message, one error per prompt element). The core's health check probes for it and
    stops (final) with one line naming --trtllm_prompt_text_column; requests sent with ids anyway fail
    once each, as data, with that same short line instead of the server's validation errors."""
    ids = tiny_dataset.input_tokens[0].tolist()
    status, text = post(f"http://{server.url}/v1/completions",
                        {"model": MODEL_ALIAS, "prompt": ids, "max_tokens": 4, "temperature": 0.0})
    assert status == 500 and text.count("valid string") > len(ids)  # the server's own, long answer

    core = make_core(recorder, server.url)  # no text column: token ids
    with pytest.raises(BackendError) as info:
        core.health_check()
    err = info.value
    assert err.final and "refuses token-id prompts (HTTP 500" in err.cause
    assert "--trtllm_prompt_text_column" in err.cause and "\n" not in str(err) and len(str(err)) < 300
    core.enqueue(requests_for(tiny_dataset, [0, 1, 2], streaming=False) + [
        Request(3, tiny_dataset.input_tokens[3], 64, True, sample_index=3)])
    assert recorder.wait_final(4, 30)
    assert set(recorder.failed) == {0, 1, 2, 3} and set(recorder.final.values()) == {1}
    for failure, _ in recorder.failed.values():
        assert "--trtllm_prompt_text_column" in failure.cause and len(failure.cause) < 300


def test_a_run_without_the_text_column_stops_with_one_line(server, tmp_path):
    """The whole harness with a token-id dialect named: the health check's verdict is the run's one error
    line, naming the setting (auto, the default, steps down to texts instead: test_auto_...)."""
    args = [f"--results_dir={tmp_path}", "--benchmarks=tiny", "--scenarios=Offline", "--show_progress=false",
            "--core_type=trtllm_endpoint", f"--trtllm_server_urls={server.url}", "--health_check_timeout_s=5",
            "--trtllm_api_dialect=vllm"]
    proc = subprocess.run([sys.executable, "-m", "llmlib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    lines = [line for line in out.splitlines() if "--trtllm_prompt_text_column" in line]
    assert lines and all(len(line) < 600 for line in lines), out[-3000:]
    assert "validation error" not in out and "list[str]" not in out, out[-3000:]


def test_auto_steps_down_to_prompt_texts_and_the_llamacpp_dialect(server, make_core, recorder, tiny_dataset):
    """No flag: the probe's token-id prompt is refused (HTTP 500), the dataset's text column is used; the
    server ignores unknown fields (200), returns no ids and no usage chunk, and ends streams with [DONE]."""
    core = make_core(recorder, server.url, dataset=tiny_dataset)
    core.health_check()
    d = core.dialect
    assert d.name == "llamacpp" and not d.token_id_prompts and d.done_marker and not d.stream_usage
    assert d.fields == {"min_tokens", "top_k"} and "token-id prompts refused" in d.title
    core.enqueue(requests_for(tiny_dataset, [0, 1], streaming=True))
    assert recorder.wait_final(2, 30) and not recorder.failed, recorder.failed
    lost = {lc["control"]: lc for lc in core.report()["lost_controls"]}
    assert lost["output token counts"]["noncompliant"] and not lost["token-id prompts"]["noncompliant"]


def test_the_server_tokenizes_every_prompt_text_into_the_dataset_ids(server, tiny_dataset):
    """The GGUF's tokenizer is the tiny model's: BOS plus the same BPE ids, for all 256 prompts."""
    for i, text in enumerate(tiny_dataset.extra[TEXT_COLUMN]):
        status, reply = post(f"http://{server.url}/extras/tokenize", {"input": text})
        assert status == 200, reply
        assert json.loads(reply)["tokens"] == tiny_dataset.input_tokens[i].tolist(), f"sample {i}: {text!r}"


def test_greedy_texts_reproduce_the_references(server, tiny_dataset):
    """The server returns text and usage only (no token ids, even when asked for them)."""
    for i in picked_samples(tiny_dataset):
        status, text = post(f"http://{server.url}/v1/completions", {
            "model": MODEL_ALIAS, "prompt": tiny_dataset.extra[TEXT_COLUMN][i], "max_tokens": 64,
            "temperature": 0.0, "return_token_ids": True})
        assert status == 200, text
        reply = json.loads(text)
        choice = reply["choices"][0]
        assert "token_ids" not in choice
        assert choice["text"] == tiny_dataset.reference_texts[i], f"sample {i}"
        assert reply["usage"]["completion_tokens"] == tiny_dataset.output_lens[i]
        assert choice["finish_reason"] == ("length" if tiny_dataset.output_lens[i] == 64 else "stop")


@pytest.mark.parametrize("streaming, source", [(False, "usage"), (True, "chunks")])
def test_greedy_lengths_through_the_core(server, make_core, recorder, tiny_dataset, streaming, source):
    """Through the core: every output has the reference's length (EOS excluded), from `usage` when
    not streamed and from the count of content chunks (one per token) when streamed."""
    core = make_core(recorder, server.url, dataset=tiny_dataset, prompt_text_column=TEXT_COLUMN)
    core.health_check()
    picks = picked_samples(tiny_dataset)
    core.enqueue(requests_for(tiny_dataset, picks, streaming))
    assert recorder.wait_final(len(picks), 60)
    assert not recorder.failed, recorder.failed
    got = {k: recorder.completed[k][1] for k in range(len(picks))}
    assert got == {k: int(tiny_dataset.output_lens[i]) for k, i in enumerate(picks)}
    assert all(len(recorder.completed[k][0]) == 0 for k in got)  # no ids from this server
    assert core.token_sources == {source: len(picks)}
    assert all(recorder.first[k] == (1 if streaming else 0) for k in got)


# --- (c) LoadGen Server -------------------------------------------------------------------------------
#: The server serves one request at a time: about 10 streamed requests/s when nothing else runs, 5/s
#: next to LoadGen and other work on a busy 2-core machine. No test sets a target: tiny's default auto
#: measures what the server sustains now, and the run takes half of it.


def _check_llamacpp_run(s: dict, out: Path) -> None:
    assert s["core_type"] == "trtllm_endpoint" and s["validity"] == "VALID", s["loadgen"]
    assert s["failed"] == 0 and s["lost"] == 0 and s["issued"] == s["completed"] >= MIN_QUERIES, s["errors"]
    assert s["loadgen"]["ttft_p99_ns"] < s["loadgen"]["ttft_limit_ns"]
    assert set(s["core_stats"][0]["token_sources"]) == {"chunks"}  # no ids and no usage in its streams
    # streamed outputs are counted one chunk per token: about the references' 32.5 tokens per sample
    assert 0.8 < s["output_tokens"] / s["completed"] / 32.484375 < 1.2
    d = s["api_dialect"]
    assert d["api_dialect"] == ["llamacpp"] and d["compliant"] is False
    assert {lc["control"]: lc["noncompliant"] for lc in d["lost_controls"]}["output token counts"] is True
    text = (out / "summary.txt").read_text()
    assert "api dialect         : llamacpp" in text and "compliance          : NOT COMPLIANT (output token counts" in text


@pytest.mark.loadgen
@pytest.mark.timeout(1260)  # per try: about 40 s of probes, then 500 queries at the target (about 3/s), start-up, warmup
def test_the_issues_command_line_is_valid_with_nothing_else(server, tmp_path):
    """`make run_harness RUN_ARGS="--benchmarks=tiny --scenarios=Server --core_type=trtllm_endpoint
    --trtllm_server_urls=..."`: no dialect flag, no text column, no target QPS (tiny's default auto measures
    one), no query count (configs/user.conf's 500). Auto finds the llamacpp dialect; the summary says the
    counted chunks make the result non-compliant (LoadGen's own verdict is still VALID)."""
    proc, results = run_until_valid(lambda results: run_done_when(server.url, results), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + server.log()[-2000:]
    s = check_auto_target(results)
    _check_llamacpp_run(s, performance_dir(results))


@pytest.mark.timeout(1260)  # up to LATENCY_TRIES runs of at most 600 s
def test_loadgen_server_run_in_worker_processes_is_valid(server, tmp_path):
    """The core in two worker processes (the probes too): auto finds the llamacpp dialect in each."""
    def run(results: Path) -> subprocess.CompletedProcess:
        args = [*done_when_args(server.url), f"--results_dir={results}", "--show_progress=false",
                "--workers_per_core=2"]
        return subprocess.run([sys.executable, "-m", "llmlib", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=600)

    proc, results = run_until_valid(run, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + server.log()[-2000:]
    s = check_auto_target(results)
    _check_llamacpp_run(s, performance_dir(results))
    config = {row["name"]: row for row in json.loads((performance_dir(results) / "config.json").read_text())}
    assert str(config["workers_per_core"]["value"]) == "2"
