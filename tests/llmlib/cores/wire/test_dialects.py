"""The endpoint dialects (llmlib/cores/wire/dialects.py): each dialect's payloads, how refusals are read
and reduced to one line, stream endings, and the lost controls the summary names.

Recorded replies (tests/llmlib/cores/dialect_replies/, by tests/servers/record_dialect_replies.py):
`transformers` from transformers 5.23's `transformers serve` and `llamacpp` from llama-cpp-python 0.3.36's
server, both serving the tiny model. The vLLM, trtllm-serve, SGLang, TGI and OpenAI replies below are
written from each server's published source (named at each), not recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from types import SimpleNamespace

import numpy as np

from llmlib.cores.trtllm_endpoint_core import DetokenizedPrompts, EndpointSettings, prompt_texts, request_payload
from llmlib.cores.wire.dialects import (
    DIALECTS,
    EXTENSIONS,
    get_dialect,
    lost_controls,
    read_refusal,
    run_report,
    summary_lines,
)
from llmlib.cores.wire.openai import StreamState, parse_reply
from llmlib.errors import ConfigError

REPLIES = Path(__file__).resolve().parents[1] / "dialect_replies"
#: a run's sampling that uses every extension: top_k (sampled), min_tokens, a stop id beside EOS
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 1, "min_new_tokens": 2}


def recorded(name: str) -> dict:
    return json.loads((REPLIES / f"{name}.json").read_text())


def body_bytes(entry: dict) -> bytes:
    return entry["body"].encode("latin-1")


def payload(dialect: str, stream: bool = True) -> dict:
    d = DIALECTS[dialect]
    return request_payload(model="m", prompt=[1, 2, 3] if d.token_id_prompts else "a prompt", max_tokens=8,
                           stream=stream, sampling=SAMPLING, stop_token_ids=(2, 13),
                           return_token_ids=d.output_ids, extensions=d.fields, stream_usage=d.stream_options)


# --- payloads --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect, extensions", [
    ("vllm", {"top_k", "min_tokens", "stop_token_ids", "return_token_ids"}),
    ("sglang", {"top_k", "min_tokens", "stop_token_ids", "return_token_ids"}),
    ("trtllm", {"top_k", "min_tokens", "stop_token_ids"}),  # no return_token_ids: extra='forbid' refuses it
    ("llamacpp", {"top_k", "min_tokens"}),
    ("tgi", set()),
    ("openai", set()),
    ("transformers", set()),
])
def test_each_dialect_sends_its_own_extension_fields_only(dialect, extensions):
    body = payload(dialect)
    assert {k for k in body if k in EXTENSIONS} == extensions
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["seed"] == 1 and body["max_tokens"] == 8
    assert isinstance(body["prompt"], list) == DIALECTS[dialect].token_id_prompts
    assert ("stream_options" in body) and body["stream"] is True
    if "stop_token_ids" in extensions:
        assert body["stop_token_ids"] == [2, 13]


def test_the_default_payload_is_unchanged_for_vllm():
    """Without a dialect (extensions None) the body is vLLM's, as before the dialects."""
    assert request_payload(model="m", prompt=[1], max_tokens=8, stream=True, sampling=SAMPLING,
                           stop_token_ids=(2,)) == payload("vllm") | {"prompt": [1], "stop_token_ids": [2]}


def test_an_unknown_dialect_names_the_flag_and_the_choices():
    with pytest.raises(ConfigError, match=r"--trtllm_api_dialect='vlm': expected one of auto, vllm, .*transformers"):
        get_dialect("vlm")


# --- transformers serve (recorded) -----------------------------------------------------------------------
def test_transformers_serve_refuses_the_vllm_fields_in_one_line_naming_them():
    r = recorded("transformers")["vllm_fields"]
    assert r["status"] == 422
    refusal = read_refusal(r["status"], body_bytes(r), r["request"])
    assert refusal is not None and not refusal.token_ids
    assert refusal.fields == {"min_tokens", "stop_token_ids", "return_token_ids"}
    line = refusal.line(DIALECTS["vllm"])
    assert "\n" not in line and len(line) < 400
    assert "min_tokens, return_token_ids, stop_token_ids" in line and "--trtllm_api_dialect=auto" in line
    assert "transformers" in line  # a dialect without them


def test_transformers_serve_refuses_token_id_prompts():
    r = recorded("transformers")["token_ids"]
    refusal = read_refusal(r["status"], body_bytes(r), r["request"])
    assert r["status"] == 400 and refusal is not None and refusal.token_ids
    line = refusal.line(DIALECTS["vllm"])
    assert "token-id prompts" in line and "--trtllm_prompt_text_column" in line and "auto" in line


def test_transformers_serve_reply_counts_come_from_usage():
    r = recorded("transformers")["reply"]
    tokens, n, source = parse_reply(body_bytes(r))
    assert (len(tokens), n, source) == (0, 4, "usage")


def test_a_transformers_serve_stream_is_complete_without_done():
    """Its streams end after a chunk with finish_reason and usage, no `data: [DONE]`."""
    data = body_bytes(recorded("transformers")["stream"])
    assert b"[DONE]" not in data and data.endswith(b"}\n\n")
    state = StreamState()
    assert state.feed(data)
    assert not state.done and state.complete()
    assert state.result()[1:] == (4, "usage")


def test_the_same_stream_cut_mid_way_is_not_complete():
    data = body_bytes(recorded("transformers")["stream"])
    events = data.split(b"\n\n")
    for cut in (b"\n\n".join(events[:-2]) + b"\n\n",  # the last chunk (finish_reason, usage) never came
                data[:-40]):  # cut inside the last chunk
        state = StreamState()
        state.feed(cut)
        assert not state.complete(), cut[-80:]


def test_a_stream_byte_by_byte_ends_the_same():
    data = body_bytes(recorded("transformers")["stream"])
    state = StreamState()
    for i in range(len(data)):
        state.feed(data[i:i + 1])
    assert state.complete() and state.result()[1:] == (4, "usage")


# --- llama-cpp-python (recorded) -------------------------------------------------------------------------
def test_llamacpp_ignores_unknown_fields_and_returns_no_ids():
    r = recorded("llamacpp")["vllm_fields"]
    assert r["status"] == 200 and read_refusal(r["status"], body_bytes(r), r["request"]) is None
    assert parse_reply(body_bytes(r))[2] == "usage"  # return_token_ids was ignored: no ids


def test_llamacpp_refuses_token_ids_with_500_and_pydantic_errors():
    r = recorded("llamacpp")["token_ids"]
    refusal = read_refusal(r["status"], body_bytes(r), r["request"])
    assert r["status"] == 500 and refusal is not None and refusal.token_ids
    assert len(refusal.line(DIALECTS["vllm"])) < 400


def test_a_llamacpp_stream_ends_with_done_and_counts_its_chunks():
    data = body_bytes(recorded("llamacpp")["stream"])
    state = StreamState()
    state.feed(data)
    assert state.done and state.complete()
    assert state.result()[1:] == (4, "chunks")  # no usage chunk: one chunk per token


# --- written from the servers' source --------------------------------------------------------------------
#: trtllm-serve (tensorrt_llm/serve/openai_protocol.py: OpenAIBaseModel extra='forbid'; openai_server.py
#: answers a validation error with ErrorResponse, HTTP 400, message = str(exc))
TRTLLM_FORBIDDEN = json.dumps({"object": "error", "type": "BadRequestError", "code": 400, "message": (
    "1 validation error for CompletionRequest\nreturn_token_ids\n  Extra inputs are not permitted "
    "[type=extra_forbidden, input_value=True, input_type=bool]")})
#: OpenAI's API for an unknown argument
OPENAI_UNRECOGNIZED = json.dumps({"error": {"message": "Unrecognized request argument supplied: min_tokens",
                                            "type": "invalid_request_error", "param": None, "code": None}})
#: TGI (router/src/server.rs: axum's Json extractor rejects `prompt: [ids]`, Prompt is a string or strings)
TGI_SEQUENCE = ("Failed to deserialize the JSON body into the target type: prompt: invalid type: sequence, "
                "expected a string at line 1 column 20")
#: vLLM (entrypoints/openai/serving_completion.py): token_ids per chunk with return_token_ids, then usage, [DONE]
VLLM_STREAM = (b'data: {"id":"c","choices":[{"index":0,"text":" a","token_ids":[7],"finish_reason":null}]}\n\n'
               b'data: {"id":"c","choices":[{"index":0,"text":" b","token_ids":[8],"finish_reason":"length"}]}\n\n'
               b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
               b"data: [DONE]\n\n")
#: SGLang (entrypoints/openai/serving_completions.py) without return_token_ids: no ids; usage chunk; [DONE]
SGLANG_STREAM = (b'data: {"id":"c","choices":[{"index":0,"text":" a","finish_reason":null}]}\n\n'
                 b'data: {"id":"c","choices":[{"index":0,"text":" b","finish_reason":"length"}]}\n\n'
                 b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
                 b"data: [DONE]\n\n")


@pytest.mark.parametrize("status, body, sent, fields", [
    (400, TRTLLM_FORBIDDEN, {"prompt": [1], "return_token_ids": True, "min_tokens": 1}, {"return_token_ids"}),
    (400, OPENAI_UNRECOGNIZED, {"prompt": [1], "min_tokens": 1, "top_k": 1}, {"min_tokens"}),
])
def test_refused_fields_are_read_from_each_servers_words(status, body, sent, fields):
    refusal = read_refusal(status, body, sent)
    assert refusal is not None and refusal.fields == fields and not refusal.token_ids
    line = refusal.line(DIALECTS["vllm"])
    assert all(f in line for f in fields) and "\n" not in line
    if fields == {"return_token_ids"}:
        assert "--trtllm_return_token_ids=false" in line


def test_tgi_token_id_refusal_is_read():
    refusal = read_refusal(422, TGI_SEQUENCE, {"prompt": [1, 2]})
    assert refusal is not None and refusal.token_ids


def test_an_error_that_names_no_field_or_form_is_no_refusal():
    assert read_refusal(503, '{"error": {"message": "model is loading"}}', {"prompt": [1], "min_tokens": 1}) is None
    assert read_refusal(400, '{"error": {"message": "max_tokens is too large: 9999"}}', {"prompt": [1]}) is None


@pytest.mark.parametrize("data, result", [(VLLM_STREAM, (2, "token_ids")), (SGLANG_STREAM, (2, "usage"))])
def test_streams_that_end_with_done(data, result):
    state = StreamState()
    state.feed(data)
    assert state.done and state.complete() and state.result()[1:] == result


def test_a_usage_only_last_chunk_without_done_is_complete():
    """OpenAI's include_usage chunk (choices: []) comes only after the end: a stream ending with it is whole."""
    state = StreamState()
    state.feed(SGLANG_STREAM.replace(b"data: [DONE]\n\n", b""))
    assert not state.done and state.complete() and state.result()[1:] == (2, "usage")
    cut = StreamState()
    cut.feed(SGLANG_STREAM.split(b"data: {\"id\":\"c\",\"choices\":[],")[0])
    assert cut.complete()  # the chunk before it carried finish_reason
    cut2 = StreamState()
    cut2.feed(SGLANG_STREAM.split(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\" b\"")[0])
    assert not cut2.complete()  # only " a", no finish_reason: cut


# --- lost controls and the summary -----------------------------------------------------------------------
def test_lost_controls_name_what_mlperf_needs():
    lost = {lc.control: lc for lc in lost_controls(DIALECTS["transformers"], min_new_tokens=2, stop_token_ids=(2, 13),
                                                   eos_token_id=2, text_prompts=True, streaming=True)}
    assert lost["min_tokens"].noncompliant and "(2)" in lost["min_tokens"].effect
    assert lost["stop_token_ids"].noncompliant and "[13]" in lost["stop_token_ids"].effect
    assert not lost["token-id prompts"].noncompliant and not lost["output token ids"].noncompliant
    assert not lost["EOS in usage counts"].noncompliant  # transformers serve's usage counts its EOS
    assert "output token counts" not in lost  # usage gives the count
    assert lost_controls(DIALECTS["vllm"], min_new_tokens=2, stop_token_ids=(2, 13), eos_token_id=2,
                         text_prompts=False, streaming=True) == []


def test_eos_alone_and_a_minimum_of_one_are_not_lost():
    assert [lc.control for lc in lost_controls(DIALECTS["openai"], min_new_tokens=1, stop_token_ids=(2,),
                                               eos_token_id=2, text_prompts=False, streaming=True)] \
        == ["output token ids"]


def test_counted_chunks_make_a_run_non_compliant():
    lost = lost_controls(DIALECTS["llamacpp"], min_new_tokens=0, stop_token_ids=(), eos_token_id=2,
                         text_prompts=True, streaming=True, sources={"chunks": 10, "usage": 1})
    chunks = [lc for lc in lost if lc.control == "output token counts"]
    assert chunks and chunks[0].noncompliant and "estimates" in chunks[0].effect


def test_the_run_report_and_its_lines():
    stats = [{"api_dialect": "transformers", "api_dialect_detail": {"title": "auto: transformers serve"},
              "lost_controls": [lc.to_json() for lc in lost_controls(
                  DIALECTS["transformers"], min_new_tokens=0, stop_token_ids=(), eos_token_id=2, text_prompts=True,
                  streaming=True)],
              "warnings": ["GET /v1/models lists no model"]}] * 2
    perf = run_report(stats, accuracy=False)
    assert perf["api_dialect"] == ["transformers"] and perf["compliant"] and len(perf["lost_controls"]) == 3
    text = "\n".join(summary_lines(perf))
    assert "api dialect         : transformers" in text and "no lost control makes" in text
    assert text.count("GET /v1/models lists no model") == 1
    acc = run_report(stats, accuracy=True)  # no ids in the accuracy log: nothing to score
    assert not acc["compliant"]
    assert "NOT COMPLIANT (output token ids lost" in "\n".join(summary_lines(acc))
    assert run_report([{"core": "x"}], accuracy=False) is None


# --- which prompt texts a dialect gets ---------------------------------------------------------------------
DATASET = SimpleNamespace(extra={"input": ["a", "b"], "other": [1, 2]},
                          input_tokens=[np.array([1, 5], dtype=np.int32), np.array([1, 6], dtype=np.int32)])


def test_prompt_texts_by_dialect():
    """A token-id dialect needs none; auto and text dialects take the dataset's text column, else the
    prompts detokenized with the benchmark's tokenizer (lazily); a named column always wins."""
    assert prompt_texts(DATASET, EndpointSettings(urls=("h:1",), api_dialect="vllm")) is None
    assert prompt_texts(DATASET, EndpointSettings(urls=("h:1",))) == ["a", "b"]
    assert prompt_texts(DATASET, EndpointSettings(urls=("h:1",), api_dialect="transformers")) == ["a", "b"]
    assert prompt_texts(DATASET, EndpointSettings(urls=("h:1",), api_dialect="vllm",
                                                  prompt_text_column="input")) == ["a", "b"]
    no_text = SimpleNamespace(extra={}, input_tokens=DATASET.input_tokens)
    assert prompt_texts(no_text, EndpointSettings(urls=("h:1",))) is None  # no tokenizer either
    lazy = prompt_texts(no_text, EndpointSettings(urls=("h:1",), tokenizer_path="/nowhere"))
    assert isinstance(lazy, DetokenizedPrompts) and len(lazy) == 2 and lazy._tokenizer is None
