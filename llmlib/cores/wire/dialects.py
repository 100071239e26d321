"""OpenAI-compatible server families as data: which extension fields each takes, prompt forms, where
output ids and counts come from, how streams end and how the model list behaves (`--trtllm_api_dialect`).

Pure: the endpoint core probes and sends, this module says what a dialect is, how a refusal is read
(which field or prompt form a server refused) and which of the controls MLPerf needs a dialect loses.
Where each row's facts come from is in its `source` (the servers' published code, or recorded replies).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmlib.cores.wire.openai import refuses_token_ids, server_message

#: the extension fields the endpoint core may send, beyond the OpenAI completions API
EXTENSIONS = ("return_token_ids", "min_tokens", "stop_token_ids", "top_k", "ignore_eos")
#: OpenAI fields a strict server may still refuse (transformers serve's `stream_options` is ignored, not refused)
OPTIONAL_STANDARD = ("stream_options", "seed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """What one server family accepts and returns on /v1/completions."""

    name: str
    title: str
    #: extension fields it takes (see EXTENSIONS)
    fields: frozenset[str]
    #: takes `prompt` as a list of token ids
    token_id_prompts: bool
    #: returns output ids (choices[].token_ids) when asked with return_token_ids
    output_ids: bool
    #: a stream's last chunk carries `usage` (asked with stream_options.include_usage, or always)
    stream_usage: bool
    #: streams end with `data: [DONE]` (else: after the chunk with finish_reason)
    done_marker: bool
    #: GET /v1/models may list nothing (models loaded on demand): a warning, not a failure
    empty_model_list: bool = False
    #: takes `stream_options` (a strict server refuses an unknown field)
    stream_options: bool = True
    #: `usage.completion_tokens` counts the EOS token a generation stopped at (the dataset's lengths do not)
    usage_counts_eos: bool = False
    #: where the facts come from
    source: str = ""

    def sends(self, field: str) -> bool:
        return field in self.fields

    def without(self, refused: Iterable[str], *, name: str | None = None) -> Dialect:
        """This dialect less the refused fields (extension fields, or `stream_options`)."""
        refused = set(refused)
        return dataclasses.replace(self, name=name or self.name, fields=self.fields - refused,
                                   output_ids=self.output_ids and "return_token_ids" not in refused,
                                   stream_options=self.stream_options and "stream_options" not in refused)

    def describe(self) -> dict[str, Any]:
        """For the report: text values only (worker processes' reports are merged by summing numbers)."""
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        return {"name": self.name, "title": self.title, "fields": sorted(self.fields),
                "prompts": "token ids" if self.token_id_prompts else "text", "output_ids": yes(self.output_ids),
                "stream_usage": yes(self.stream_usage), "done_marker": yes(self.done_marker),
                "empty_model_list": yes(self.empty_model_list)}


_ALL = frozenset(EXTENSIONS)

DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect(name="vllm", title="vLLM", fields=_ALL, token_id_prompts=True, output_ids=True, stream_usage=True,
            done_marker=True,
            source="vllm/entrypoints/openai/protocol.py CompletionRequest (return_token_ids, min_tokens, "
                   "stop_token_ids, top_k, ignore_eos); serving_completion.py ends streams with [DONE]"),
    Dialect(name="sglang", title="SGLang", fields=_ALL, token_id_prompts=True, output_ids=True, stream_usage=True,
            done_marker=True,
            source="python/sglang/srt/entrypoints/openai/protocol.py (sgl-project/sglang 004c82e) CompletionRequest: "
                   "return_token_ids, top_k, min_tokens, stop_token_ids, ignore_eos; token_ids in each choice; "
                   "serving_completions.py ends streams with [DONE]"),
    Dialect(name="trtllm", title="trtllm-serve", fields=frozenset({"min_tokens", "stop_token_ids", "top_k",
                                                                    "ignore_eos"}),
            token_id_prompts=True, output_ids=False, stream_usage=True, done_marker=True,
            source="tensorrt_llm/serve/openai_protocol.py (NVIDIA/TensorRT-LLM 0076e93): OpenAIBaseModel has "
                   "extra='forbid', CompletionRequest has min_tokens, stop_token_ids, top_k, ignore_eos and no "
                   "return_token_ids (refused with HTTP 400); prompt may be token ids"),
    Dialect(name="tgi", title="Text Generation Inference", fields=frozenset(), token_id_prompts=False,
            output_ids=False, stream_usage=False, done_marker=True,
            source="text-generation-inference router/src/lib.rs CompletionRequest (prompt: string(s); "
                   "serde ignores unknown fields); server.rs completions stream ends with [DONE]"),
    Dialect(name="llamacpp", title="llama.cpp (llama-cpp-python server)",
            fields=frozenset({"min_tokens", "top_k"}), token_id_prompts=False, output_ids=False,
            stream_usage=False, done_marker=True,
            source="recorded from llama-cpp-python 0.3.36's server (tests/servers/llamacpp.py): prompt "
                   "str | list[str], no token ids out, no usage chunk, streams end with [DONE]"),
    Dialect(name="openai", title="strict OpenAI", fields=frozenset(), token_id_prompts=True, output_ids=False,
            stream_usage=True, done_marker=True,
            source="OpenAI's Completions API: prompt may be token ids; stream_options.include_usage; "
                   "streams end with [DONE]"),
    Dialect(name="transformers", title="transformers serve", fields=frozenset(), token_id_prompts=False,
            output_ids=False, stream_usage=True, done_marker=False, empty_model_list=True, usage_counts_eos=True,
            source="recorded from transformers 5.23 `transformers serve` (tests/servers/transformers_serve.py): "
                   "422 on any field outside OpenAI's, 400 'prompt must be a string', usage on the last "
                   "chunk, no [DONE], /v1/models lists the hub cache only"),
)}

AUTO = "auto"
NAMES = (AUTO, *DIALECTS)


def get_dialect(name: str) -> Dialect:
    from llmlib.errors import ConfigError

    try:
        return DIALECTS[name]
    except KeyError:
        raise ConfigError(f"--trtllm_api_dialect={name!r}: expected one of {', '.join(NAMES)}") from None


# --- refusals -------------------------------------------------------------------------------------------
_FIELD_LIST_RE = re.compile(r"\{([^{}]*)\}")
_QUOTED_RE = re.compile(r"['\"`]([a-z_]+)['\"`]")


def refused_fields(status: int, data: bytes | str, sent: Iterable[str]) -> set[str]:
    """The fields of `sent` that an error reply names as refused (transformers serve: 422 "Unexpected
    fields in the request: {...}"; pydantic `extra_forbidden` / "Extra inputs are not permitted" with
    the field in `loc`; serde "unknown field `x`"; "unrecognized ... x")."""
    if status < 400:
        return set()
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.replace("\\n", " ").replace("\\t", " ")  # JSON-escaped line breaks (pydantic's messages)
    low = text.lower()
    sent = set(sent)
    if not any(w in low for w in ("unexpected field", "extra_forbidden", "extra inputs", "unknown field",
                                  "unrecognized", "not permitted", "not supported", "unsupported")):
        return set()
    return {f for f in sent if re.search(rf"\b{re.escape(f)}\b", text)}


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a server refused: fields, or the token-id prompt form."""

    status: int
    fields: frozenset[str]
    token_ids: bool
    message: str

    def line(self, dialect: Dialect) -> str:
        """One line naming the refused field(s) or form and the flag or dialect that avoids it."""
        if self.token_ids:
            return (f"the server refuses token-id prompts (HTTP {self.status}: {_short(self.message)}); "
                    "--trtllm_api_dialect=auto sends prompt texts (or pick a dialect with text prompts: "
                    f"{', '.join(d.name for d in DIALECTS.values() if not d.token_id_prompts)}; "
                    "texts from --trtllm_prompt_text_column)")
        names = ", ".join(sorted(self.fields))
        fits = [d.name for d in DIALECTS.values() if not (d.fields & self.fields)]
        flag = " or --trtllm_return_token_ids=false" if self.fields == {"return_token_ids"} else ""
        return (f"the server refuses the field(s) {names} of --trtllm_api_dialect={dialect.name} (HTTP "
                f"{self.status}: {_short(self.message)}); --trtllm_api_dialect=auto leaves them out{flag}"
                + (f" (dialects without them: {', '.join(fits)})" if fits else ""))


def _short(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[:n] + "..."


def read_refusal(status: int, data: bytes | str, body: Mapping[str, Any]) -> Refusal | None:
    """The refusal in an error reply to `body`, or None when the reply names no field or prompt form."""
    if status < 400:
        return None
    ids_sent = isinstance(body.get("prompt"), list) and bool(body["prompt"]) and isinstance(body["prompt"][0], int)
    if ids_sent and refuses_token_ids(status, data):
        return Refusal(status, frozenset(), True, server_message(data))
    fields = refused_fields(status, data, [k for k in body if k in EXTENSIONS or k in OPTIONAL_STANDARD])
    if fields:
        return Refusal(status, frozenset(fields), False, server_message(data))
    return None


# --- what is lost -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class LostControl:
    """A control the server did not take that matters to MLPerf; `noncompliant` when it changes the result."""

    control: str
    effect: str
    noncompliant: bool

    def to_json(self) -> dict[str, Any]:
        return {"control": self.control, "effect": self.effect, "noncompliant": self.noncompliant}


def lost_controls(dialect: Dialect, *, min_new_tokens: int, stop_token_ids: Sequence[int], eos_token_id: int | None,
                  text_prompts: bool, streaming: bool, accuracy: bool = False,
                  sources: Mapping[str, int] | None = None) -> list[LostControl]:
    """The controls the run needs that `dialect` does not carry. `sources` are the token sources the
    completed requests used (token_ids / usage / chunks), when known."""
    lost: list[LostControl] = []
    if min_new_tokens > 1 and not dialect.sends("min_tokens"):
        lost.append(LostControl(control="min_tokens", noncompliant=True,
                                effect=f"the benchmark's minimum output length ({min_new_tokens}) is not enforced"))
    others = [t for t in stop_token_ids if t != eos_token_id]
    if others and not dialect.sends("stop_token_ids"):
        lost.append(LostControl(control="stop_token_ids", noncompliant=True,
                                effect=f"stop ids {others} are not honoured (the server stops at its own EOS)"))
    if text_prompts:
        lost.append(LostControl(control="token-id prompts", noncompliant=False,
                                effect="prompts are sent as text and tokenized by the server; its ids may "
                                       "differ from the dataset's"))
    sources = dict(sources or {})
    from_chunks = sources.get("chunks", 0) or (not sources and streaming and not dialect.output_ids
                                               and not dialect.stream_usage)
    if from_chunks:
        lost.append(LostControl(control="output token counts", noncompliant=True,
                                effect="output lengths are counted stream chunks, not tokens (TPOT and "
                                       "tokens/sample are estimates)"))
    if dialect.usage_counts_eos and (sources.get("usage") or (not sources and not dialect.output_ids)):
        lost.append(LostControl(control="EOS in usage counts", noncompliant=False,
                                effect="usage.completion_tokens counts the EOS token: an output that stops at EOS "
                                       "counts one more token than the dataset's lengths"))
    if not dialect.output_ids or (sources and not sources.get("token_ids")):
        lost.append(LostControl(control="output token ids", noncompliant=accuracy,
                                effect="no output ids (counts from usage or chunks): the accuracy log "
                                       "holds no tokens" + (", so accuracy cannot be scored" if accuracy else "")))
    return lost


def run_report(core_stats: Sequence[Mapping[str, Any]], *, accuracy: bool) -> dict[str, Any] | None:
    """The run's dialect facts from its cores' reports (None when no core speaks a dialect): the
    dialect(s), every lost control once (in an accuracy run, missing output ids make it non-compliant),
    whether the result is compliant, and the health check's warnings."""
    names = [str(st["api_dialect"]) for st in core_stats if st.get("api_dialect")]
    if not names:
        return None
    lost: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for st in core_stats:
        for lc in st.get("lost_controls") or ():
            entry = dict(lc)
            if accuracy and entry["control"] == "output token ids":
                entry["noncompliant"] = True
            if entry["control"] not in lost or entry["noncompliant"]:
                lost[entry["control"]] = entry
        warnings += [w for w in st.get("warnings") or () if w not in warnings]
    titles = sorted({str((st.get("api_dialect_detail") or {}).get("title") or st["api_dialect"])
                     for st in core_stats if st.get("api_dialect")})
    return {"api_dialect": sorted(set(names)), "api_dialect_titles": titles, "lost_controls": list(lost.values()),
            "compliant": not any(lc["noncompliant"] for lc in lost.values()), "warnings": warnings}


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The summary.txt lines of `run_report`'s result."""
    lines = [f"api dialect         : {', '.join(report['api_dialect'])}   ({'; '.join(report['api_dialect_titles'])})"]
    for i, lc in enumerate(report["lost_controls"]):
        head = "lost controls       : " if i == 0 else "                      "
        mark = "  (makes the result non-compliant)" if lc["noncompliant"] else ""
        lines.append(f"{head}{lc['control']}: {lc['effect']}{mark}")
    if not report["lost_controls"]:
        lines.append("lost controls       : none that matter to MLPerf")
    bad = [lc["control"] for lc in report["lost_controls"] if lc["noncompliant"]]
    lines.append("compliance          : " + (f"NOT COMPLIANT ({', '.join(bad)} lost: see above)" if bad else
                                             "no lost control makes the result non-compliant"))
    lines += [f"warning             : {w}" for w in report["warnings"]]
    return lines


__all__ = ["AUTO", "DIALECTS", "Dialect", "EXTENSIONS", "LostControl", "NAMES", "Refusal", "get_dialect",
           "lost_controls", "read_refusal", "refused_fields", "run_report", "summary_lines"]
