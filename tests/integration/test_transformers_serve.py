"""The `trtllm_endpoint` core against Hugging Face's `transformers serve` (transformers 5.23, its own venv
under build/), serving the tiny model on 127.0.0.1, with no dialect flag: `--trtllm_api_dialect=auto`.

The server lists no model, refuses vLLM's extension fields (422) and token-id prompts (400), and ends its
streams without `[DONE]`: the probe steps down to its dialect in the health check, prompts go as the
dataset's texts, counts come from `usage`, and a LoadGen Server run is VALID with a summary that names the
dialect and what it lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmlib.cores.base import Request
from llmlib.cores.trtllm_endpoint_core import DetokenizedPrompts, EndpointSettings, TrtllmEndpointCore
from llmlib.dataset import load_dataset
from llmlib.errors import BackendError
from llmlib.tiny_model import ensure_tiny_model, tiny_dataset_path
from tests.integration.done_when import check_auto_target, performance_dir, run_done_when, run_until_valid
from tests.integration.test_llamacpp_server import picked_samples, post, requests_for
from tests.servers.transformers_serve import TransformersServe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    with TransformersServe(ensure_tiny_model()) as s:
        yield s


@pytest.fixture(scope="module")
def tiny_dataset():
    """The `tiny` dataset with its prompt texts (`extra['input']`), as the benchmark loads it."""
    spec = {"format": "pickle", "path": str(tiny_dataset_path()), "input_column": "tok_input",
            "reference_column": "output", "reference_tokens_column": "tok_output", "extra_columns": ["input"]}
    return load_dataset(spec, name="tiny")


@pytest.fixture
def make_core(make_config, tiny_benchmark):
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


def test_auto_settles_on_its_dialect_in_the_health_check(server, make_core, recorder, tiny_dataset):
    core = make_core(recorder, server.url, dataset=tiny_dataset)
    core.health_check()
    d = core.dialect
    assert d.name == "transformers" and d.fields == frozenset() and not d.token_id_prompts
    assert not d.done_marker and d.stream_usage and not d.output_ids and d.empty_model_list
    assert core.served_models == [] and core.model is None
    assert any("lists no model" in w for w in core.warnings)
    report = core.report()
    assert report["api_dialect"] == "transformers" and "token-id prompts" in report["api_dialect_detail"]["title"]


def test_an_empty_model_list_with_a_model_name_is_a_warning(server, make_core, recorder, tiny_dataset):
    """The server is pinned to the path it was started with: that name is sent as given."""
    core = make_core(recorder, server.url, dataset=tiny_dataset, model=str(server.model))
    core.health_check()
    assert core.model == str(server.model) and core.dialect.name == "transformers"
    assert any("sending --trtllm_endpoint_model" in w for w in core.warnings)
    core.enqueue(requests_for(tiny_dataset, [0], streaming=True))
    assert recorder.wait_final(1, 60) and not recorder.failed, recorder.failed


def with_eos(dataset, i: int) -> int:
    """The count `usage.completion_tokens` gives: transformers serve counts the EOS token it stopped at
    (the references' lengths exclude it; llama-cpp-python's usage does too)."""
    n = int(dataset.output_lens[i])
    return n + 1 if n < 64 else n


@pytest.mark.parametrize("streaming", [False, True])
def test_greedy_lengths_through_the_core(server, make_core, recorder, tiny_dataset, streaming):
    """Every output has the reference's length (from `usage`), streamed (no [DONE]) or not."""
    core = make_core(recorder, server.url, dataset=tiny_dataset)
    core.health_check()
    picks = picked_samples(tiny_dataset)
    core.enqueue(requests_for(tiny_dataset, picks, streaming))
    assert recorder.wait_final(len(picks), 120)
    assert not recorder.failed, recorder.failed
    assert {k: recorder.completed[k][1] for k in range(len(picks))} == \
        {k: with_eos(tiny_dataset, i) for k, i in enumerate(picks)}
    assert core.token_sources == {"usage": len(picks)}


def test_greedy_texts_reproduce_the_references(server, tiny_dataset):
    """The dataset's texts, tokenized by the server, give the reference outputs (proves the text path)."""
    for i in picked_samples(tiny_dataset):
        status, text = post(f"http://{server.url}/v1/completions", {
            "prompt": tiny_dataset.extra["input"][i], "max_tokens": 64, "temperature": 0.0})
        assert status == 200, text
        reply = json.loads(text)
        assert reply["choices"][0]["text"] == tiny_dataset.reference_texts[i], f"sample {i}"
        assert reply["usage"]["completion_tokens"] == with_eos(tiny_dataset, i)


def test_detokenized_prompts_are_the_dataset_texts(tiny_dataset):
    """Without a text column the core detokenizes with the benchmark's tokenizer: the same texts."""
    texts = DetokenizedPrompts(tiny_dataset.input_tokens, str(ensure_tiny_model()))
    assert [texts[i] for i in range(len(texts))] == tiny_dataset.extra["input"]


def test_a_fixed_vllm_dialect_fails_in_one_line_naming_the_fields(server, make_core, recorder, tiny_dataset):
    core = make_core(recorder, server.url, dataset=tiny_dataset, api_dialect="vllm", prompt_text_column="input")
    core.enqueue(requests_for(tiny_dataset, [0, 1], streaming=True))
    assert recorder.wait_final(2, 30)
    for failure, _ in recorder.failed.values():
        assert "refuses the field(s) return_token_ids of --trtllm_api_dialect=vllm (HTTP 422" in failure.cause
        assert "--trtllm_return_token_ids=false" in failure.cause
        assert "--trtllm_api_dialect=auto" in failure.cause and len(failure.cause) < 400
    listed = make_core(recorder, server.url, api_dialect="vllm")  # vLLM's models are listed: retried
    with pytest.raises(BackendError) as info:
        listed.health_check()
    assert not info.value.final and "lists no model (yet); --trtllm_api_dialect=auto" in info.value.cause
    ids = make_core(recorder, server.url, api_dialect="vllm", model=str(server.model))  # the token-id probe
    with pytest.raises(BackendError) as info:
        ids.health_check()
    assert info.value.final and "refuses token-id prompts (HTTP 400" in info.value.cause


@pytest.mark.loadgen
@pytest.mark.timeout(1260)  # up to LATENCY_TRIES runs of at most 600 s
def test_the_issues_command_line_is_valid_with_nothing_else(server, tmp_path):
    """`make run_harness RUN_ARGS="--benchmarks=tiny --scenarios=Server --core_type=trtllm_endpoint
    --trtllm_server_urls=..."`: no dialect flag, no target QPS (tiny's default auto measures one), no query
    count (configs/user.conf's 500)."""
    proc, results = run_until_valid(lambda results: run_done_when(server.url, results), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + server.log()[-2000:]
    assert "--server_target_qps=auto: measuring the QPS trtllm_endpoint sustains" in proc.stdout + proc.stderr
    s = check_auto_target(results)
    out = performance_dir(results)
    d = s["api_dialect"]
    assert d["api_dialect"] == ["transformers"] and d["compliant"] is True
    assert {lc["control"] for lc in d["lost_controls"]} == {"token-id prompts", "output token ids",
                                                            "EOS in usage counts"}
    assert set(s["core_stats"][0]["token_sources"]) == {"usage"}
    text = (out / "summary.txt").read_text()
    assert "api dialect         : transformers" in text and "lost controls       : token-id prompts" in text
