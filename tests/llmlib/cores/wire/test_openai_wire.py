"""The one OpenAI wire module: bodies for strict OpenAI servers and for the extensions, reasoning deltas,
and both clients (the endpoint core and scaffolding's OpenAIWorker) on it, the worker against the mock."""

from __future__ import annotations

import asyncio

import pytest

import llmlib.cores.trtllm_endpoint_core as endpoint
import llmlib.cores.wire.openai as wire
from scaffolding import StreamGenerationTask
from scaffolding.workers import openai_worker
from scaffolding.workers.openai_worker import OpenAIWorker
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions

pytestmark = pytest.mark.timeout(60)

STANDARD = {"model", "prompt", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
            "stream_options", "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs"}


def test_both_clients_use_the_one_wire_module():
    assert endpoint.StreamState is wire.StreamState and endpoint.parse_reply is wire.parse_reply
    assert endpoint.server_message is wire.server_message and endpoint.refuses_token_ids is wire.refuses_token_ids
    assert openai_worker.SSEDecoder is wire.SSEDecoder
    assert openai_worker.completion_body is wire.completion_body


def test_a_body_has_only_standard_fields_unless_extensions_are_asked_for():
    body = wire.completion_body(model="gpt-x", prompt="hi", chat=True, max_tokens=5, stream=True,
                                fields={"temperature": 0.5, "top_p": None, "seed": 3}, stop_strings=["\n"])
    assert body == {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                    "temperature": 0.5, "seed": 3, "stop": ["\n"], "stream": True,
                    "stream_options": {"include_usage": True}}
    assert set(body) <= STANDARD
    ext = wire.completion_body(model=None, prompt=[1, 2], max_tokens=3, fields={"top_k": 4, "min_tokens": 2},
                               stop_token_ids=[7], return_token_ids=True)
    assert ext == {"prompt": [1, 2], "max_tokens": 3, "top_k": 4, "min_tokens": 2, "stop_token_ids": [7],
                   "return_token_ids": True}
    with pytest.raises(ValueError, match="chat endpoint needs a text prompt"):
        wire.completion_body(model="m", prompt=[1], chat=True)
    # the worker's body for a plain task on a strict server: standard fields only
    task = StreamGenerationTask(input_str="a b", max_tokens=4, temperature=0.0)
    assert set(openai_worker.request_payload(task, "gpt-x", chat=True, stream=True)) <= STANDARD


def test_choice_parts_split_answer_reasoning_and_ids():
    assert wire.choice_parts({"text": "a", "token_ids": [3]}, chat=False) == ("a", None, [3])
    assert wire.choice_parts({"delta": {"reasoning_content": "hm"}}, chat=True) == (None, "hm", None)
    assert wire.choice_parts({"delta": {"reasoning": "hm", "content": None}}, chat=True) == (None, "hm", None)
    assert wire.choice_parts({"message": {"content": "42", "reasoning_content": "so"}}, chat=True) == \
        ("42", "so", None)
    assert wire.logprobs_of({"content": [{"logprob": -1}]}, chat=True) == [-1.0]


def test_the_worker_counts_reasoning_deltas_and_keeps_them_apart_from_the_answer():
    with MockOpenAIServer(MockOptions(output_tokens=10, reasoning_tokens=4, token_text=" w")) as mock:
        worker = OpenAIWorker(f"http://{mock.url}", "mock-model", chat=True)

        async def run():
            task = StreamGenerationTask(input_str="think", max_tokens=10, streaming_step=1)
            await worker.stream_step(task)  # the first step ends at the first (reasoning) chunk
            first_text, first_ttft = task.output_str, task.ttft_s
            while not task.end_flag:
                await worker.stream_step(task)
            await worker.shutdown()
            return task, first_text, first_ttft

        task, first_text, first_ttft = asyncio.run(run())
    assert first_ttft is not None and first_text == ""  # TTFT from the thinking, no answer yet
    assert task.customized_result_fields["stream_chunks"] == 10
    assert task.customized_result_fields["reasoning_str"] == " w" * 4
    assert task.output_str == " w" * 6 and task.completion_tokens == 10


class _LineByLine(wire.StreamState):
    """The parse without the whole-block path: the oracle the block path must agree with."""

    __slots__ = ()
    BLOCK = False


def _random_stream(rng) -> bytes:
    """One SSE stream in the shapes servers send and some they should not: ids or not, usage, [DONE] or
    not, CRLF lines, `data:` without its space, trailing blanks, comments, two data lines in one event,
    an error chunk, a malformed chunk, events after [DONE]."""
    ids = rng.random() < 0.5
    events = [b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'] if rng.random() < 0.3 else []
    for i in range(rng.randrange(1, 40)):
        part = b',"token_ids":[%d]' % (i + 3) if ids else b""
        events.append(b'{"choices":[{"index":0,"text":"t%d "%s,"finish_reason":null}]}' % (i, part))
    if rng.random() < 0.7:
        events.append(b'{"choices":[],"usage":{"completion_tokens":%d}}' % len(events))
    oddity = rng.random()
    if oddity < 0.08 and len(events) > 3:
        events[rng.randrange(2, len(events))] = b'{"error":{"message":"boom"}}'
    elif oddity < 0.14 and len(events) > 3:
        events[rng.randrange(2, len(events))] = b'{"choices":[{"te'
    out = []
    for ev in events:
        style = rng.random()
        if style < 0.05:
            out.append(b"data:" + ev + b"\n\n")
        elif style < 0.1:
            out.append(b"data: " + ev + b"  \n\n")
        elif style < 0.13:
            out.append(b": keep-alive\n\ndata: " + ev + b"\n\n")
        elif style < 0.16:
            out.append(b"event: chunk\ndata: " + ev + b"\n\n")
        else:
            out.append(b"data: " + ev + b"\n\n")
    if rng.random() < 0.85:
        out.append(b"data:[DONE]\n\n" if rng.random() < 0.1 else b"data: [DONE]\n\n")
        if rng.random() < 0.1:
            out.append(b'data: {"choices":[{"text":"late"}]}\n\n')
    text = b"".join(out)
    return text.replace(b"\n", b"\r\n") if rng.random() < 0.15 else text


def _run(cls, text: bytes, cuts: list[int]):
    state, seen = cls(), []
    try:
        prev = 0
        for cut in cuts + [len(text)]:
            seen.append((state.feed(text[prev:cut]), state.tokens_so_far(), state.done))
            prev = cut
        complete = state.complete()
        return seen, complete, (state.result() if complete else None), state.chunks, state.last
    except wire.ReplyError as err:
        return seen, "error", str(err)


@pytest.mark.parametrize("seed", range(4))
def test_the_block_parse_agrees_with_the_line_by_line_one(seed):
    import random
    rng = random.Random(seed)
    for _ in range(400):
        text = _random_stream(rng)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.choice([0, 1, 3, 10]))))
        fast, slow = _run(wire.StreamState, text, cuts), _run(_LineByLine, text, cuts)
        if fast[1] != "error" and fast[2] is not None:
            fast = fast[:2] + ((fast[2][0].tolist(),) + fast[2][1:],) + fast[3:]
            slow = slow[:2] + ((slow[2][0].tolist(),) + slow[2][1:],) + slow[3:]
        assert fast == slow, text


@pytest.mark.parametrize("seed", range(3))
def test_token_ids_in_any_list_shape_equal_the_json_decode(seed):
    """The ids taken from blocks of events (one id per list the usual case, else lists of several, empty
    lists, blanks) equal what a JSON decode of every event gives, whatever the reads."""
    import json
    import random
    rng = random.Random(seed)
    for _ in range(300):
        lists = [[rng.randrange(200000) for _ in range(rng.choice([1, 1, 1, 0, 2, 5]))]
                 for _ in range(rng.randrange(1, 60))]
        out = []
        for i, ids in enumerate(lists):
            sep = rng.choice([b",", b",", b", ", b" , "])
            text = sep.join(b"%d" % t for t in ids)
            if rng.random() < 0.1:
                text = b" " + text + b" "
            colon = b": " if rng.random() < 0.05 else b":"
            out.append(b'data: {"choices":[{"index":0,"text":"t%d","token_ids"%s[%s],"finish_reason":null}]}\n\n'
                       % (i, colon, text))
        out.append(b"data: [DONE]\n\n")
        text = b"".join(out)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.choice([0, 1, 3, 10]))))
        state, prev = wire.StreamState(), 0
        for cut in cuts + [len(text)]:
            state.feed(text[prev:cut])
            prev = cut
        want = [t for line in out[:-1] for t in json.loads(line[6:])["choices"][0]["token_ids"]]
        assert state.done and state.ids == want, text
