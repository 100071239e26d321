"""Per-sample query expansion: each LoadGen sample runs a scaffolding controller (majority vote,
best-of-N, token budget...) whose generation tasks go through the same LLMServer and cores.

LoadGen sees only the final answer. Its TTFT is the time to the first token of that answer, which
for a voting method is when the vote is decided (FirstTokenComplete then QuerySamplesComplete).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmlib.errors import ConfigError, HarnessError

log = logging.getLogger(__name__)

#: method -> (parameter -> (type, default))
METHODS: dict[str, dict[str, tuple[type, Any]]] = {
    "native": {},
    "majority_vote": {"samples": (int, 8)},
    "token_budget": {"budget": (int, 512), "batch": (int, 2)},
    # Dynasor-CoT: the reasoning streams `interval` tokens at a time (the cores deliver chunks to a
    # stream task), a probe asks for the answer after each step, and `certainty` equal answers in a row
    # cancel the stream (the backend stops); a core that streams no chunks gives no probes
    "dynasor": {"interval": (int, 32), "certainty": (int, 3), "probe_tokens": (int, 16)},
}
# Not offered here: best-of-N needs a reward model (scaffolding.controllers has it for direct use).


def parse_scaffolding(spec: str) -> tuple[str, dict[str, Any]]:
    """`majority_vote:samples=8` -> ("majority_vote", {"samples": 8}); errors name the spec."""
    method, _, rest = spec.partition(":")
    method = method.strip()
    if method not in METHODS:
        raise ConfigError(f"--scaffolding={spec!r}: unknown method {method!r}; expected one of: "
                          f"{', '.join(METHODS)} (e.g. majority_vote:samples=8)")
    params = {name: default for name, (_, default) in METHODS[method].items()}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in METHODS[method]:
            raise ConfigError(f"--scaffolding={spec!r}: {item!r} is not one of "
                              f"{', '.join(f'{k}=<{t.__name__}>' for k, (t, _) in METHODS[method].items()) or 'nothing'}")
        kind = METHODS[method][key][0]
        try:
            params[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--scaffolding={spec!r}: {key}={value!r} is not a {kind.__name__}") from None
        if params[key] < 1:
            raise ConfigError(f"--scaffolding={spec!r}: {key} must be >= 1")
    return method, params


def build_controller(method: str, params: dict[str, Any], sampling: dict[str, Any], tokenizer: Any = None):
    """The controller for a method, its generations sampled with the run's settings."""
    from scaffolding import NativeGenerationController
    from scaffolding.controllers import (
        DynasorCoTController,
        MajorityVoteController,
        TokenBudgetMajorityVoteController,
    )

    if method == "dynasor":
        if tokenizer is None:
            raise ConfigError("--scaffolding=dynasor needs a tokenizer to encode its probe (the prompts are "
                              "token ids): give --tokenizer_path")
        return DynasorCoTController(probe_interval=params["interval"], certainty_threshold=params["certainty"],
                                    probe_max_tokens=params["probe_tokens"], tokenizer=tokenizer,
                                    sampling_params={k: v for k, v in sampling.items() if k != "max_tokens"},
                                    max_tokens=sampling.get("max_tokens"))

    gen = NativeGenerationController(sampling_params=sampling)
    if method == "native":
        return gen
    if method == "majority_vote":
        return MajorityVoteController(gen, default_sample_num=params["samples"])
    if method == "token_budget":
        return TokenBudgetMajorityVoteController(gen, token_budget=params["budget"], batch=params["batch"])
    raise ConfigError(f"--scaffolding: unknown method {method!r}")  # parse_scaffolding checked already


@dataclass
class ExpanderStats:
    method: str
    params: dict[str, Any]
    completed: int = 0
    failed: int = 0
    answer_tokens: int = 0
    sub_requests: int = 0
    generated_tokens: int = 0
    correct: int = 0
    scored: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        n = max(self.completed, 1)
        lat = np.asarray(self.latencies_s) if self.latencies_s else None
        return {
            "method": self.method, "params": self.params, "samples": self.completed, "failed": self.failed,
            "accuracy": round(100.0 * self.correct / self.scored, 2) if self.scored else None,
            "sub_requests_per_sample": round(self.sub_requests / n, 3),
            "generated_tokens_per_sample": round(self.generated_tokens / n, 2),
            "answer_tokens_per_sample": round(self.answer_tokens / n, 2),
            "latency_p50_s": float(np.percentile(lat, 50)) if lat is not None else None,
            "latency_p99_s": float(np.percentile(lat, 99)) if lat is not None else None,
        }

    def lines(self) -> list[str]:
        r = self.report()
        acc = "n/a (the dataset has no answers)" if r["accuracy"] is None else f"{r['accuracy']:.2f} %"
        lat = "n/a" if r["latency_p50_s"] is None else f"p50 {r['latency_p50_s'] * 1e3:,.1f} ms, p99 {r['latency_p99_s'] * 1e3:,.1f} ms"
        return [f"method            : {self.method} {self.params}",
                f"answer accuracy   : {acc}",
                f"sub-requests/sample: {r['sub_requests_per_sample']}",
                f"generated tok/sample: {r['generated_tokens_per_sample']} (answer {r['answer_tokens_per_sample']})",
                f"sample latency    : {lat}"]


class ExpanderSUT:
    """LoadGen's issue callback for scaffolding runs: every sample becomes a controller run on a
    ScaffoldingLlm whose generation worker submits to the LLMServer."""

    def __init__(self, server, reporter, dataset, *, gen, method: str, params: dict[str, Any], tokenizer=None,
                 max_parallel: int = 256):
        from scaffolding import ScaffoldingLlm
        from scaffolding.workers.llmcore_worker import LLMCoreWorker

        self.reporter = reporter
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.stats = ExpanderStats(method=method, params=params)
        self.issued = 0
        self._lock = threading.Lock()
        self._issuing = threading.Lock()  # see LoadgenSUT.hold_intake
        sampling = {k: v for k, v in gen.sampling().items() if k != "min_new_tokens"}
        sampling["max_tokens"] = gen.max_new_tokens
        worker = LLMCoreWorker(server, tokenizer, default_max_tokens=gen.max_new_tokens,
                               stop_token_ids=tuple(gen.stop_token_ids), params=gen)
        self.llm = ScaffoldingLlm(build_controller(method, params, sampling, tokenizer), {"generation": worker},
                                  max_parallel_requests=max_parallel)
        self._answers = dataset.extra.get("answer")

    def hold_intake(self, timeout_s: float) -> bool:
        """Before a hard exit: wait for the issue call in progress, then hold LoadGen's next one."""
        return self._issuing.acquire(timeout=timeout_s)

    def issue_queries(self, ids, indices) -> None:
        with self._issuing:
            self.issued += len(ids)
            for rid, idx in zip(ids, indices):
                t0 = time.monotonic()
                try:
                    future = self.llm.generate_async([int(t) for t in self.dataset.input_tokens[idx]])
                except Exception as err:  # never into LoadGen's thread
                    self._finish_failed(rid, err)
                    continue
                future.add_done_callback(lambda f, rid=rid, idx=idx, t0=t0: self._done(f, rid, idx, t0))

    def flush_queries(self) -> None:
        """Controllers run as soon as their sample is issued; nothing is held back."""

    def _done(self, future, rid: int, idx: int, t0: float) -> None:
        try:
            task = future.result()
            tokens = np.asarray(task.output_tokens or (), dtype=np.uint32)
        except Exception as err:  # a failed controller fails its sample, not the run
            self._finish_failed(rid, err)
            return
        info = dict(getattr(task, "customized_result_fields", {}) or {})
        correct = None
        if self._answers is not None:
            correct = _is_correct(task.output_str if task.output_str is not None else self._decode(tokens),
                                  self._answers[idx])
        with self._lock:
            st = self.stats
            st.completed += 1
            st.answer_tokens += len(tokens)
            st.sub_requests += int(info.get("sub_requests", 1))
            st.generated_tokens += int(info.get("generated_tokens", len(tokens)))
            st.latencies_s.append(time.monotonic() - t0)
            if correct is not None:
                st.scored += 1
                st.correct += int(correct)
        self.reporter.complete_sample(rid, tokens)

    def _finish_failed(self, rid: int, err: BaseException) -> None:
        with self._lock:
            self.stats.failed += 1
        log.warning("sample %s failed: %r", rid, err)
        self.reporter.fail_sample(rid, err if isinstance(err, Exception) else HarnessError(repr(err)))

    def _decode(self, tokens: np.ndarray) -> str:
        return self.tokenizer.decode(tokens.tolist()) if self.tokenizer is not None else ""

    def close(self) -> None:
        self.llm.shutdown(shutdown_workers=False)


def _is_correct(text: str, answer) -> bool:
    from scaffolding.math_utils import extract_answer, numeric_equal

    got = extract_answer(text or "")
    return got is not None and numeric_equal(got, str(answer))
