"""The OpenAI-compatible wire format, in one place: request bodies, replies, SSE events and what a
chunk carries (text, reasoning, token ids, usage); used by the endpoint core and the OpenAI worker.

Pure functions and parsers (bytes or str in, values out); the clients around them do the I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EMPTY_TOKENS = np.zeros(0, dtype=np.uint32)

#: most characters of a server's reply quoted in an error
SNIPPET_CHARS = 200

_IDS_RE = re.compile(rb'"token_ids"\s*:\s*\[([^\]]*)\]')
#: pydantic's message for a prompt that must be a string (llama-cpp-python quotes it in its error body)
PROMPT_MUST_BE_TEXT_RE = re.compile(r"(Input should be a valid string)", re.IGNORECASE)


# --- request bodies ------------------------------------------------------------------------------------
def completion_body(*, model: str | None, prompt: list[int] | str | None = None, chat: bool = False,
                    max_tokens: int | None = None, stream: bool = False, fields: Mapping[str, Any] = (),
                    stop_strings: Sequence[str] = (), stop_token_ids: Sequence[int] = (),
                    return_token_ids: bool = False, stream_usage: bool = True) -> dict[str, Any]:
    """The JSON body of one /v1/completions (or, with `chat`, /v1/chat/completions) request.

    `prompt` is the prompt (token ids or text) or, for chat, the one user message (text). `fields` are
    sent as given, in order (temperature, top_p, seed, ...; None values are left out). The extensions
    vLLM, SGLang and trtllm-serve accept (`top_k`, `min_tokens`, `stop_token_ids`, `return_token_ids`)
    come only when the caller puts them in, so a strict OpenAI server gets standard fields; `stream_usage`
    False leaves out `stream_options` (a server that refuses it)."""
    body: dict[str, Any] = {}
    if model:
        body["model"] = model
    if chat:
        if not isinstance(prompt, str):
            raise ValueError("the chat endpoint needs a text prompt (one user message); token ids need "
                             "/v1/completions")
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if max_tokens is not None:
        body["max_tokens"] = int(max_tokens)
    for name, value in dict(fields).items():
        if value is not None:
            body[name] = value
    if stop_strings:
        body["stop"] = list(stop_strings)
    if stop_token_ids:
        body["stop_token_ids"] = [int(t) for t in stop_token_ids]
    if return_token_ids:
        body["return_token_ids"] = True
    if stream:
        body["stream"] = True
        if stream_usage:
            body["stream_options"] = {"include_usage": True}
    return body


# --- replies -------------------------------------------------------------------------------------------
def snippet(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def server_message(data: bytes | str) -> str:
    """The server's own words from an error body, once and short: `error.message` (OpenAI, vLLM,
    SGLang, trtllm-serve), `detail` (FastAPI: the first validation error, its location and how many
    more), else the body's start."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        obj = json.loads(text)
    except ValueError:
        return snippet(text)
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return snippet(str(err["message"]))
        if isinstance(err, str) and err:
            return snippet(err)
        if isinstance(obj.get("message"), str) and obj["message"]:
            return snippet(obj["message"])
        detail = obj.get("detail")
        if isinstance(detail, str) and detail:
            return snippet(detail)
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            loc = ".".join(str(p) for p in first.get("loc") or ())
            more = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
            return snippet(f"{loc}: {first.get('msg', '')}{more}")
    return snippet(text)


_STRING_WANTED = ("valid string", "expected a string", "string_type", "must be a string", "should be a string",
                  "expected str", "not a string", "invalid type: sequence")


def refuses_token_ids(status: int, data: bytes | str) -> bool:
    """An error reply that says the prompt must be text (llama-cpp-python: HTTP 500 with pydantic's
    'Input should be a valid string' on `prompt`; TGI: 422 'invalid type: sequence, expected a string')."""
    if status < 400:
        return False
    text = (data.decode("utf-8", "replace") if isinstance(data, bytes) else data).lower()
    return "prompt" in text and any(w in text for w in _STRING_WANTED)


class ReplyError(Exception):
    """A reply the core cannot use; the message is the BackendError's cause."""


def server_error(obj: Any) -> str | None:
    """The server's error message in a reply object (`error.message` or `error`), or None."""
    if isinstance(obj, dict) and obj.get("error"):
        err = obj["error"]
        return snippet(str(err.get("message", err) if isinstance(err, dict) else err))
    return None


def _decode(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ReplyError(f"malformed {what}: {snippet(data)}") from None


def choice_content(choice: dict) -> tuple[Any, list | None]:
    """(the text a choice adds, its token ids). A chat delta or message with a reasoning parser on
    (vLLM, SGLang; gpt-oss's analysis channel) carries the thinking in `reasoning_content` (or
    `reasoning`) and only the answer in `content`: either kind is output."""
    content = choice.get("text")
    if content is None:
        part = choice.get("delta") or choice.get("message") or {}
        content = part.get("content") or part.get("reasoning_content") or part.get("reasoning")
    return content, choice.get("token_ids")


def parse_reply(data: bytes) -> tuple[np.ndarray, int, str]:
    """A non-streamed reply -> (output ids, their count, source: 'token_ids' | 'usage')."""
    obj = _decode(data, "JSON reply")
    err = server_error(obj)
    if err:
        raise ReplyError(f"server error: {err}")
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list) or not obj["choices"]:
        raise ReplyError(f"reply has no choices: {snippet(data)}")
    _, ids = choice_content(obj["choices"][0])
    if ids is not None:
        tokens = np.asarray(ids, dtype=np.uint32)
        return tokens, len(tokens), "token_ids"
    n = (obj.get("usage") or {}).get("completion_tokens")
    if not isinstance(n, int):
        raise ReplyError(f"reply has neither choices[0].token_ids nor usage.completion_tokens: {snippet(data)}")
    return EMPTY_TOKENS, n, "usage"


class StreamState:
    """Parses one SSE stream of completion chunks (bytes in, as they arrive).

    `feed(data)` returns True when this data brought the first content chunk. After `done`
    (`data: [DONE]`), or once the response ended and `complete()` says the stream was not cut,
    `result()` gives (ids, count, source)."""

    __slots__ = ("_buf", "first_seen", "done", "ids_mode", "ids", "chunks", "last", "usage_tokens", "finished")

    def __init__(self) -> None:
        self._buf = b""
        self.first_seen = False
        self.done = False
        self.ids_mode = False
        self.ids: list[int] = []
        self.chunks = 0  # events after the first content chunk, [DONE] excluded
        self.last = b""  # the last of those
        self.usage_tokens: int | None = None
        self.finished = False  # a chunk up to the first content chunk carried finish_reason

    def complete(self) -> bool:
        """After the response ended: the stream is whole. `data: [DONE]` says so; without it (transformers
        serve, and the OpenAI protocol allows it) a stream is whole when nothing is left half-sent and its
        last chunk carries a `finish_reason` or the `usage` a server sends only at the end; a stream cut
        mid-way has neither."""
        if self.done:
            return True
        if self._buf.strip():
            return False
        if not self.last:
            return self.finished or self.usage_tokens is not None
        try:
            obj = json.loads(self.last)
        except ValueError:
            return False
        if not isinstance(obj, dict):
            return False
        if isinstance(obj.get("usage"), dict):
            return True
        choices = obj.get("choices") or ()
        return bool(choices) and isinstance(choices[0], dict) and bool(choices[0].get("finish_reason"))

    #: take the events after the first content chunk as a block where they have the usual shape (False: one
    #: by one; the tests compare the two)
    BLOCK = True

    def feed(self, data: bytes) -> bool:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._buf = buf
            return False
        self._buf = buf[cut + 2:]
        if self.done:
            return False
        block = buf[:cut]  # complete events
        first = False
        if not self.first_seen:  # the events up to the first content chunk, one `data:` line at a time
            pos = 0
            while True:
                end = block.find(b"\n\n", pos)
                lines = (block[pos:] if end < 0 else block[pos:end]).split(b"\n")
                for i, line in enumerate(lines):
                    if line[:5] == b"data:":
                        if self._event(line[5:].strip()):
                            first = True
                        if self.first_seen or self.done:
                            break
                else:
                    if end < 0:
                        return False
                    pos = end + 2
                    continue
                break
            if self.done:
                return first
            rest = block[end + 2:] if end >= 0 else b""
            if i + 1 < len(lines):  # more lines in the event that held the first content chunk
                rest = b"\n".join(lines[i + 1:]) + b"\n\n" + rest
            block = rest.lstrip(b"\n")
        if block:
            self._later_block(block)
        return first

    def _later_block(self, block: bytes) -> None:
        """Complete events after the first content chunk. The usual shape (every event one `data: {...}`
        line, no `"error"`, perhaps `data: [DONE]` last) is checked and counted with a few whole-block
        scans, no Python step per event; anything else goes line by line (`_later`)."""
        if self.BLOCK:
            if block.endswith(b"data: [DONE]") and (len(block) == 12 or block[-14:-12] == b"\n\n"):
                block = block[:-14] if len(block) > 12 else b""
                self.done = True
                if not block:
                    return
            k = block.count(b"}\n\ndata: {") + 1  # events, when every newline is in one of these joints
            if (block.startswith(b"data: {") and block.endswith(b"}") and block.count(b"\n") == 2 * (k - 1)
                    and b'"error"' not in block):
                self.chunks += k
                self.last = block[block.rfind(b"\ndata: ") + 7:] if k > 1 else block[6:]
                if self.ids_mode:
                    self._take_ids(block)
                return
        datas = [line[5:].strip() for line in block.split(b"\n") if line[:5] == b"data:"]
        if datas:
            self._later(datas)

    def _take_ids(self, data: bytes) -> None:
        groups = _IDS_RE.findall(data)
        if groups:
            try:
                try:
                    ids = list(map(int, groups))  # one id per event (the usual): int() takes the blanks itself
                except ValueError:  # several ids in a list, an empty list or a trailing comma
                    items = b",".join(groups).split(b",")
                    try:
                        ids = list(map(int, items))
                    except ValueError:  # the blank items left out
                        ids = list(map(int, filter(bytes.strip, items)))
                self.ids.extend(ids)
            except ValueError:
                raise ReplyError(f"malformed token_ids in SSE chunk: {snippet(data)}") from None

    def _later(self, datas: list[bytes]) -> None:
        """The events after the first content chunk, checked together (no JSON decode)."""
        if b"[DONE]" in datas:
            datas = datas[:datas.index(b"[DONE]")]
            self.done = True
            if not datas:
                return
        bad = [d for d in datas if d[:1] != b"{" or d[-1:] != b"}"]
        if bad:
            raise ReplyError(f"malformed SSE chunk: {snippet(bad[0])}")
        joined = datas[0] if len(datas) == 1 else b"\n".join(datas)
        if b'"error"' in joined:
            for item in datas:
                if b'"error"' in item:
                    err = server_error(_decode(item, "SSE chunk"))
                    if err:
                        raise ReplyError(f"server error in stream: {err}")
        self.chunks += len(datas)
        self.last = datas[-1]
        if self.ids_mode:
            self._take_ids(joined)

    def _event(self, data: bytes) -> bool:
        if self.done:
            return False
        if data == b"[DONE]":
            self.done = True
            return False
        if not (data.startswith(b"{") and data.endswith(b"}")):
            raise ReplyError(f"malformed SSE chunk: {snippet(data)}")
        if b'"error"' in data:
            err = server_error(_decode(data, "SSE chunk"))
            if err:
                raise ReplyError(f"server error in stream: {err}")
        obj = _decode(data, "SSE chunk")
        choices = obj.get("choices") or []
        if choices:
            if choices[0].get("finish_reason"):
                self.finished = True
            content, ids = choice_content(choices[0])
            if ids is not None:
                self.ids_mode = True
                self.ids.extend(int(t) for t in ids)
            if ids or content:
                self.first_seen = True
                return True
        usage = obj.get("usage")
        if usage:
            self.usage_tokens = usage.get("completion_tokens")
        return False

    def tokens_so_far(self) -> int:
        """Output tokens seen so far: ids where the server sends them, else content chunks."""
        if self.ids_mode:
            return len(self.ids)
        return self.chunks + 1 if self.first_seen else 0

    def first_tokens(self) -> np.ndarray:
        return np.asarray(self.ids, dtype=np.uint32) if self.ids else EMPTY_TOKENS

    def result(self) -> tuple[np.ndarray, int, str]:
        if self.ids_mode:
            tokens = np.asarray(self.ids, dtype=np.uint32)
            return tokens, len(tokens), "token_ids"
        content_chunks = self.chunks + (1 if self.first_seen else 0)
        if self.last:
            obj = _decode(self.last, "SSE chunk")
            usage = obj.get("usage")
            if usage and isinstance(usage.get("completion_tokens"), int):
                return EMPTY_TOKENS, usage["completion_tokens"], "usage"
            choices = obj.get("choices")
            if not choices or not choice_content(choices[0])[0]:
                content_chunks -= 1  # a last chunk with no choices or no content (finish_reason only) carried no tokens
        elif self.usage_tokens is not None:
            return EMPTY_TOKENS, int(self.usage_tokens), "usage"
        return EMPTY_TOKENS, content_chunks, "chunks"


def choice_parts(choice: Mapping[str, Any], chat: bool) -> tuple[str | None, str | None, list | None]:
    """(answer text, reasoning text, token ids) of one choice of a reply or stream chunk: `text`
    (completions), or a chat `delta` / `message`'s `content`, and its `reasoning_content` (vLLM,
    SGLang) or `reasoning` (gpt-oss's analysis channel)."""
    if not chat:
        return choice.get("text"), None, choice.get("token_ids")
    part = choice.get("delta") or choice.get("message") or {}
    return part.get("content"), part.get("reasoning_content") or part.get("reasoning"), choice.get("token_ids")


def logprobs_of(data: Any, chat: bool) -> list[float] | None:
    """The sampled tokens' log probabilities of one choice (chat: `content[].logprob`; completions:
    `token_logprobs`), or None."""
    if not data:
        return None
    if chat:
        return [float(entry["logprob"]) for entry in data.get("content") or ()]
    return [float(x) for x in data.get("token_logprobs") or ()]


class SSEDecoder:
    """Server-sent events, line by line: `feed(line)` returns an event's data when a blank line
    ends it (data lines joined with newlines), else None. Comments and other fields are skipped."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """What a stream that ended without a final blank line left."""
        return self.feed("")


__all__ = ["EMPTY_TOKENS", "PROMPT_MUST_BE_TEXT_RE", "ReplyError", "SSEDecoder", "StreamState", "choice_content",
           "choice_parts", "completion_body", "logprobs_of", "parse_reply", "refuses_token_ids", "server_error",
           "server_message", "snippet"]
