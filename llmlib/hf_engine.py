"""In-flight batching engine over a transformers causal LM (PyTorch; CPU by default, CUDA if asked).

Requests join the running batch between decode steps: joiners are prefilled together, their KV
cache is merged into the batch's (left-padded), finished sequences leave at once. Outcomes go to a
ResponseSink (the core contract's shape), chunks of the output so far to requests made with `chunks`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from llmlib.cores.base import ResponseSink
from llmlib.errors import BackendError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineRequest:
    """One generation request as the engine sees it."""

    rid: int
    input_ids: np.ndarray
    max_new_tokens: int
    min_new_tokens: int = 0
    stop_ids: frozenset[int] = frozenset()
    streaming: bool = False
    chunks: bool = False  # someone listens to the output as it grows: on_chunk after every step
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0


@dataclass(slots=True)
class _Seq:
    req: EngineRequest
    out: list[int] = field(default_factory=list)
    pos: int = 0  # position id of the next token fed to the model
    generator: torch.Generator | None = None
    buf: np.ndarray | None = None  # requests with `chunks`: the output so far, views of it go to on_chunk


class HFEngine:
    """Continuous batching over one model. Not thread-safe: one thread calls `add`, `cancel`
    and `step` (the worker loop); outcomes go to `sink` synchronously from `add` and `step`, in the
    core contract's ResponseSink shape: `on_first_token(rid, uint32 array)` for streaming requests,
    `on_chunk(rid, output so far, n)` after every step for requests with `chunks` (views of one
    buffer per request: the first n never change), then exactly one of `on_complete(rid, uint32
    array, n)` or `on_error(rid, BackendError)` (address `address`)."""

    def __init__(self, model, sink: ResponseSink, *, max_batch_size: int = 16, max_num_tokens: int = 2048,
                 device: str = "cpu", fault: Callable[[str, list[int]], None] | None = None,
                 address: str = "hf-engine"):
        self.model = model
        self.sink = sink
        self.address = address
        self._on_chunk = getattr(sink, "on_chunk", None)
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.device = torch.device(device)
        self.fault = fault
        self.waiting: deque[EngineRequest] = deque()
        self.active: list[_Seq] = []
        self._cache = None  # DynamicCache over self.active, left-padded
        self._mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self._cancelled: set[int] = set()
        self.steps = 0
        self.generated_tokens = 0

    # --- intake ------------------------------------------------------------------------------------
    def _fail(self, rid: int, message: str) -> None:
        self.sink.on_error(rid, BackendError(self.address, message))

    def add(self, req: EngineRequest) -> None:
        if len(req.input_ids) == 0:
            self._fail(req.rid, "empty input")
            return
        if len(req.input_ids) + 1 > self.max_num_tokens:
            self._fail(req.rid, f"input of {len(req.input_ids)} tokens exceeds hf_max_num_tokens="
                                      f"{self.max_num_tokens}")
            return
        self.waiting.append(req)

    def cancel(self, rid: int) -> None:
        self._cancelled.add(rid)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    # --- one iteration ---------------------------------------------------------------------------------
    def step(self) -> None:
        """Admit and prefill joiners, then decode one token for every running sequence."""
        self._drop_cancelled()
        joiners = self._admit()
        if joiners:
            try:
                self._prefill(joiners)
            except Exception as err:  # a failed prefill fails its joiners, not the batch
                log.warning("prefill of %d request(s) failed: %r", len(joiners), err)
                for seq in joiners:
                    self._fail(seq.req.rid, f"prefill failed: {err!r}")
        self._finish_done()
        if self.active:
            try:
                self._decode()
            except Exception as err:  # the batch's state is unknown now: fail it and start clean
                log.warning("decode step failed for %d request(s): %r", len(self.active), err)
                for seq in self.active:
                    self._fail(seq.req.rid, f"decode failed: {err!r}")
                self.active, self._cache, self._mask = [], None, None
                return
            self._finish_done()
        self.steps += 1

    def _drop_cancelled(self) -> None:
        if not self._cancelled:
            return
        keep = [r for r in self.waiting if r.rid not in self._cancelled]
        for r in self.waiting:
            if r.rid in self._cancelled:
                self._fail(r.rid, "cancelled")
        self.waiting = deque(keep)
        gone = [i for i, s in enumerate(self.active) if s.req.rid in self._cancelled]
        for i in gone:
            self._fail(self.active[i].req.rid, "cancelled")
        if gone:
            self._keep([i for i in range(len(self.active)) if i not in set(gone)])
        self._cancelled.clear()

    def _admit(self) -> list[_Seq]:
        budget = self.max_num_tokens - len(self.active)
        joiners: list[_Seq] = []
        while self.waiting and len(self.active) + len(joiners) < self.max_batch_size:
            n = len(self.waiting[0].input_ids)
            if joiners and n > budget:
                break
            req = self.waiting.popleft()
            budget -= n
            gen = None
            if req.temperature > 0 and not req.top_k == 1:
                gen = torch.Generator(device="cpu").manual_seed((req.seed * 1_000_003 + req.rid) % (2**63))
            buf = np.empty(max(req.max_new_tokens, 1), dtype=np.uint32) if req.chunks and self._on_chunk else None
            joiners.append(_Seq(req=req, generator=gen, buf=buf))
        return joiners

    # --- model calls -----------------------------------------------------------------------------------
    def _forward(self, phase: str, rids: list[int], **kwargs):
        if self.fault is not None:
            self.fault(phase, rids)
        return self.model(use_cache=True, **kwargs)

    def _prefill(self, joiners: list[_Seq]) -> None:
        from transformers import DynamicCache

        lens = [len(s.req.input_ids) for s in joiners]
        width = max(lens)
        ids = torch.zeros((len(joiners), width), dtype=torch.long)
        mask = torch.zeros((len(joiners), width), dtype=torch.long)
        for i, s in enumerate(joiners):
            n = lens[i]
            ids[i, width - n:] = torch.from_numpy(np.asarray(s.req.input_ids, dtype=np.int64))
            mask[i, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        cache.layer_class_to_replicate = _roomy_layer()
        out = self._forward("prefill", [s.req.rid for s in joiners], input_ids=ids.to(self.device),
                            attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
                            past_key_values=cache, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        for i, s in enumerate(joiners):
            s.pos = lens[i]
        tokens = self._sample(logits, joiners)
        self._merge(joiners, out.past_key_values, mask.to(self.device))
        for s, tok in zip(joiners, tokens):
            self._accept(s, tok)

    def _decode(self) -> None:
        seqs = self.active
        ids = torch.tensor([[s.out[-1]] for s in seqs], dtype=torch.long, device=self.device)
        positions = torch.tensor([[s.pos] for s in seqs], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(seqs), 1))], dim=1)
        out = self._forward("decode", [s.req.rid for s in seqs], input_ids=ids, attention_mask=self._mask,
                            position_ids=positions, past_key_values=self._cache, logits_to_keep=1)
        self._cache = out.past_key_values
        tokens = self._sample(out.logits[:, -1, :].float(), seqs)
        for s, tok in zip(seqs, tokens):
            s.pos += 1
            self._accept(s, tok)

    def _accept(self, s: _Seq, tok: int) -> None:
        first = not s.out
        s.out.append(tok)
        self.generated_tokens += 1
        if first or s.buf is not None:  # (the hot path of requests without chunks ends here)
            self._tell(s, tok, len(s.out))

    def _tell(self, s: _Seq, tok: int, n: int) -> None:
        """The first token of a streaming request, the output so far of a chunked one."""
        req = s.req
        if tok in req.stop_ids:  # (the output ends here: on_complete follows in this step)
            return
        if n == 1 and req.streaming:
            self.sink.on_first_token(req.rid, np.array(s.out, dtype=np.uint32))
        if s.buf is not None:
            s.buf[n - 1] = tok
            self._on_chunk(req.rid, s.buf[:n], n)

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[int]:
        # min_new_tokens: stop tokens are not allowed yet
        for i, s in enumerate(seqs):
            if len(s.out) < s.req.min_new_tokens and s.req.stop_ids:
                logits[i, list(s.req.stop_ids)] = -math.inf
            if s.req.frequency_penalty or s.req.presence_penalty:
                if s.out:
                    toks, counts = torch.unique(torch.tensor(s.out), return_counts=True)
                    toks = toks.to(logits.device)
                    logits[i, toks] -= (s.req.frequency_penalty * counts.to(logits.device, logits.dtype)
                                        + s.req.presence_penalty)
        greedy = [i for i, s in enumerate(seqs) if s.generator is None]
        result = [0] * len(seqs)
        if greedy:
            best = logits[greedy].argmax(dim=-1).tolist()
            for i, tok in zip(greedy, best):
                result[i] = tok
        for i, s in enumerate(seqs):
            if s.generator is not None:
                result[i] = _sample_one(logits[i], s.req, s.generator)
        return result

    # --- batch bookkeeping -------------------------------------------------------------------------------
    def _merge(self, joiners: list[_Seq], cache, mask: torch.Tensor) -> None:
        """Append the joiners' cache and mask to the batch's, left-padding the shorter one."""
        if not self.active:
            self.active, self._cache, self._mask = list(joiners), cache, mask
            return
        t_old, t_new = self._mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers):
            old_layer.keys = torch.cat([_pad_left(old_layer.keys, width, 2), _pad_left(new_layer.keys, width, 2)], 0)
            old_layer.values = torch.cat([_pad_left(old_layer.values, width, 2),
                                          _pad_left(new_layer.values, width, 2)], 0)
        self._mask = torch.cat([_pad_left(self._mask, width, 1), _pad_left(mask, width, 1)], 0)
        self.active.extend(joiners)

    def _keep(self, indices: list[int]) -> None:
        """Keep only the sequences at `indices` and drop cache columns nobody uses any more."""
        if not indices:
            self.active, self._cache, self._mask = [], None, None
            return
        if len(indices) < len(self.active):
            idx = torch.tensor(indices, dtype=torch.long, device=self.device)
            for layer in self._cache.layers:
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
            self._mask = self._mask.index_select(0, idx)
            self.active = [self.active[i] for i in indices]
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self._mask = self._mask[:, start:]

    def _finish_done(self) -> None:
        keep = []
        for i, s in enumerate(self.active):
            if s.out and s.out[-1] in s.req.stop_ids:  # (sampling holds stops back until min_new_tokens)
                tokens = np.array(s.out[:-1], dtype=np.uint32)
                self.sink.on_complete(s.req.rid, tokens, len(tokens))
            elif len(s.out) >= s.req.max_new_tokens:
                self.sink.on_complete(s.req.rid, np.array(s.out, dtype=np.uint32), len(s.out))
            else:
                keep.append(i)
        if len(keep) < len(self.active):
            self._keep(keep)


_ROOMY = None


def _roomy_layer():
    """A DynamicLayer whose keys and values are views of buffers with room to grow: a decode step
    writes its token in place instead of copying the whole cache (`torch.cat`) every step. Tensors
    the engine puts there itself (merge, drop) are copied into a new buffer on the next update."""
    global _ROOMY
    if _ROOMY is None:
        from transformers.cache_utils import DynamicLayer

        class RoomyLayer(DynamicLayer):
            _kbuf: torch.Tensor | None = None
            _vbuf: torch.Tensor | None = None

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized or self.keys.numel() == 0:
                    return super().update(key_states, value_states, *args, **kwargs)
                keys, values = self.keys, self.values
                t, add = keys.shape[-2], key_states.shape[-2]
                kbuf, vbuf = self._kbuf, self._vbuf
                if (kbuf is None or t + add > kbuf.shape[-2] or keys.data_ptr() != kbuf.data_ptr()
                        or keys.shape[0] != kbuf.shape[0] or values.data_ptr() != vbuf.data_ptr()):
                    cap = t + add + max(32, t // 4)  # (at most a quarter more memory than the cache)
                    b, h, _, d = keys.shape
                    kbuf = keys.new_empty((b, h, cap, d))
                    vbuf = values.new_empty((b, values.shape[1], cap, values.shape[-1]))
                    kbuf[:, :, :t] = keys
                    vbuf[:, :, :t] = values
                    self._kbuf, self._vbuf = kbuf, vbuf
                kbuf[:, :, t:t + add] = key_states
                vbuf[:, :, t:t + add] = value_states
                self.keys, self.values = kbuf[:, :, :t + add], vbuf[:, :, :t + add]
                return self.keys, self.values

        _ROOMY = RoomyLayer
    return _ROOMY


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _sample_one(logits: torch.Tensor, req: EngineRequest, generator: torch.Generator) -> int:
    logits = logits / max(req.temperature, 1e-5)
    if req.top_k and req.top_k > 0:
        k = min(req.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if req.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < req.top_p
        filtered = torch.zeros_like(probs).scatter(0, order, sorted_p * keep)
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def engine_request_from(rid: int, input_ids: np.ndarray, params, streaming: bool,
                        chunks: bool = False) -> EngineRequest:
    """An EngineRequest from a Request's GenerationParams."""
    return EngineRequest(rid=rid, input_ids=input_ids, max_new_tokens=params.max_new_tokens,
                         min_new_tokens=int(params.min_new_tokens), stop_ids=frozenset(params.stop_token_ids),
                         streaming=streaming, chunks=chunks, temperature=float(params.temperature),
                         top_p=float(params.top_p), top_k=int(params.top_k),
                         frequency_penalty=float(params.frequency_penalty), presence_penalty=float(params.presence_penalty), seed=int(params.seed))
