"""The in-flight batching engine against plain `generate` on a small random Llama (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmlib.errors import BackendError  # noqa: E402
from llmlib.hf_engine import EngineRequest, HFEngine  # noqa: E402

EOS = 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30)  # peaked logits: argmax cannot flip on float noise
        m.lm_head.weight[EOS] *= 1.3  # EOS wins sometimes, so lengths vary
    return m


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    return [rng.integers(3, 300, size=int(rng.integers(3, 40))).astype(np.int32) for _ in range(24)]


class Events:
    """A ResponseSink (the core contract's shape) that checks the engine keeps it."""

    def __init__(self, chunks=True):
        self.first, self.done, self.failed, self.order = {}, {}, {}, []
        self.chunks: dict[int, list[list[int]]] = {}
        if not chunks:  # a sink without on_chunk: the engine must not need it
            self.on_chunk = None

    def on_first_token(self, rid, tokens):
        assert isinstance(tokens, np.ndarray) and tokens.dtype == np.uint32 and len(tokens) >= 1
        assert rid not in self.done, "first token after completion"
        assert rid not in self.first, "a second first token"
        self.first[rid] = int(tokens[0])
        self.order.append(("first", rid))

    def on_chunk(self, rid, tokens, n):
        assert rid not in self.done and rid not in self.failed, "a chunk after the outcome"
        assert tokens.dtype == np.uint32 and len(tokens) == n
        self.chunks.setdefault(rid, []).append(tokens.tolist())
        self.order.append(("chunk", rid))

    def on_complete(self, rid, tokens, n):
        assert rid not in self.done and rid not in self.failed
        assert isinstance(tokens, np.ndarray) and tokens.dtype == np.uint32 and len(tokens) == n
        self.done[rid] = tokens.tolist()
        self.order.append(("done", rid))

    def on_error(self, rid, error):
        assert rid not in self.done and rid not in self.failed
        assert isinstance(error, BackendError)
        self.failed[rid] = error.cause


def reference(model, prompt, max_new, stop=(EOS,)):
    ids = torch.tensor(prompt[None].astype(np.int64))
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=list(stop), pad_token_id=0)[0, len(prompt):].tolist()
    for i, tok in enumerate(out):
        if tok in stop:
            return out[:i]
    return out


def run(engine, requests, joins_per_step=3):
    """Feed requests a few per step (so they join a running batch) until all are done."""
    pending = list(requests)
    with torch.inference_mode():
        while pending or not engine.idle:
            for _ in range(joins_per_step):
                if pending:
                    engine.add(pending.pop(0))
            engine.step()
            assert len(engine.active) <= engine.max_batch_size


def req(rid, prompt, max_new=20, **kw):
    kw.setdefault("stop_ids", frozenset({EOS}))
    kw.setdefault("streaming", True)
    return EngineRequest(rid=rid, input_ids=prompt, max_new_tokens=max_new, **kw)


def test_outputs_match_generate_whatever_the_batch(model, prompts):
    ev = Events()
    engine = HFEngine(model, ev, max_batch_size=5, max_num_tokens=200)
    run(engine, [req(i, p) for i, p in enumerate(prompts)])
    assert not ev.failed
    lengths = set()
    for i, p in enumerate(prompts):
        assert ev.done[i] == reference(model, p, 20), f"request {i}"
        lengths.add(len(ev.done[i]))
    assert len(lengths) > 1  # some stopped on EOS, some ran to the limit


def test_long_outputs_match_generate_through_cache_growth_joins_and_drops(model, prompts):
    """The cache grows in place (views of buffers with room) past several reallocations while
    sequences join (merge) and finish (rows dropped, left columns cut): outputs stay generate's."""
    ev = Events()
    engine = HFEngine(model, ev, max_batch_size=4, max_num_tokens=400)
    lengths = [130, 40, 90, 15, 110, 60, 75, 25]
    pending = [req(i, prompts[i], max_new=n, stop_ids=frozenset()) for i, n in enumerate(lengths)]
    in_place = 0
    with torch.inference_mode():
        while pending or not engine.idle:
            if pending:
                engine.add(pending.pop(0))
            engine.step()
            if engine._cache is not None:
                layer = engine._cache.layers[0]
                in_place += layer._kbuf is not None and layer.keys.data_ptr() == layer._kbuf.data_ptr()
    assert in_place > 100  # most steps wrote into the buffers
    assert not ev.failed
    for i, n in enumerate(lengths):
        assert ev.done[i] == reference(model, prompts[i], n, stop=()), f"request {i}"


def test_first_token_streamed_before_completion(model, prompts):
    ev = Events()
    run(HFEngine(model, ev, max_batch_size=4), [req(i, p, max_new=8) for i, p in enumerate(prompts[:8])])
    for rid, tokens in ev.done.items():
        if tokens:
            assert ev.first[rid] == tokens[0]
            assert ev.order.index(("first", rid)) < ev.order.index(("done", rid))


def test_non_streaming_sends_no_first_token(model, prompts):
    ev = Events()
    run(HFEngine(model, ev), [req(0, prompts[0], streaming=False)])
    assert ev.first == {} and 0 in ev.done and ev.chunks == {}


def test_chunks_give_the_output_so_far_after_every_step(model, prompts):
    """Requests with `chunks` get the output so far after each step, one token more each time, the
    stop token never; requests without get none; outputs stay those of `generate`."""
    ev = Events()
    engine = HFEngine(model, ev, max_batch_size=4)
    run(engine, [req(i, p, max_new=16, chunks=i % 2 == 0) for i, p in enumerate(prompts[:8])])
    assert not ev.failed and set(ev.chunks) <= {0, 2, 4, 6}
    for i, p in enumerate(prompts[:8]):
        out = ev.done[i]
        assert out == reference(model, p, 16), f"request {i}"
        if i % 2:
            assert i not in ev.chunks
            continue
        assert ev.chunks.get(i, []) == [out[:k] for k in range(1, len(out) + 1)]
        if out:  # the first token comes before its first chunk, all chunks before the outcome
            assert ev.order.index(("first", i)) < ev.order.index(("chunk", i))
            assert max(j for j, e in enumerate(ev.order) if e == ("chunk", i)) < ev.order.index(("done", i))
    lengths = {len(ev.done[i]) for i in range(8)}
    assert len(lengths) > 1  # some stopped on EOS (no chunk for it), some ran to the limit
    quiet = Events(chunks=False)  # a sink without on_chunk: chunks are not asked for, nothing breaks
    run(HFEngine(model, quiet), [req(0, prompts[0], max_new=8, chunks=True)])
    assert quiet.done[0] == reference(model, prompts[0], 8)


def test_cancel_stops_a_chunked_sequence_at_the_next_step(model, prompts):
    ev = Events()
    engine = HFEngine(model, ev, max_batch_size=4)
    engine.add(req(0, prompts[0], max_new=200, stop_ids=frozenset(), chunks=True))
    engine.add(req(1, prompts[1], max_new=12, stop_ids=frozenset(), chunks=True))
    with torch.inference_mode():
        for _ in range(3):
            engine.step()
        assert len(ev.chunks[0]) == 4  # prefill's token and three decoded ones
        engine.cancel(0)
        engine.step()
        assert [s.req.rid for s in engine.active] == [1]  # the sequence left the batch
        while not engine.idle:
            engine.step()
    assert ev.failed == {0: "cancelled"} and len(ev.chunks[0]) == 4
    assert ev.done[1] == reference(model, prompts[1], 12, stop=())


def test_max_tokens_stop_tokens_and_min_tokens(model, prompts):
    ev = Events()
    p = prompts[3]
    free = reference(model, p, 30, stop=())
    stop_at = free[4]
    engine = HFEngine(model, ev)
    run(engine, [req(0, p, max_new=30, stop_ids=frozenset()),
                 req(1, p, max_new=3, stop_ids=frozenset()),
                 req(2, p, max_new=30, stop_ids=frozenset({stop_at})),
                 req(3, p, max_new=30, stop_ids=frozenset({free[0]}), min_new_tokens=2)])
    assert ev.done[0] == free
    assert ev.done[1] == free[:3]
    assert ev.done[2] == free[: free.index(stop_at)]  # the stop token itself is not output
    assert len(ev.done[3]) >= 2 and free[0] not in ev.done[3][:2]


def test_batch_and_token_budget(model, prompts):
    ev = Events()
    engine = HFEngine(model, ev, max_batch_size=3, max_num_tokens=45)
    for i, p in enumerate(prompts[:6]):
        engine.add(req(i, p, max_new=4))
    with torch.inference_mode():
        engine.step()
        assert len(engine.active) <= 3
        joined_tokens = sum(len(s.req.input_ids) for s in engine.active)
        assert joined_tokens <= 45 or len(engine.active) == 1
        while not engine.idle:
            engine.step()
    assert set(ev.done) == set(range(6))
    big = HFEngine(model, ev, max_num_tokens=10)
    big.add(req(99, np.arange(3, 30, dtype=np.int32)))
    assert "exceeds hf_max_num_tokens" in ev.failed[99]


def test_cancel_fails_once_and_the_rest_go_on(model, prompts):
    ev = Events()
    engine = HFEngine(model, ev, max_batch_size=4)
    for i, p in enumerate(prompts[:4]):
        engine.add(req(i, p, max_new=15, stop_ids=frozenset()))
    with torch.inference_mode():
        engine.step()
        engine.cancel(1)
        engine.cancel(3)
        while not engine.idle:
            engine.step()
    assert ev.failed == {1: "cancelled", 3: "cancelled"}
    assert ev.done[0] == reference(model, prompts[0], 15, stop=())
    assert ev.done[2] == reference(model, prompts[2], 15, stop=())


def test_a_failing_prefill_fails_only_its_joiners(model, prompts):
    ev = Events()
    calls = []

    def fault(phase, rids):
        calls.append(phase)
        if phase == "prefill" and 5 in rids:
            raise torch.OutOfMemoryError("simulated out of memory")

    engine = HFEngine(model, ev, max_batch_size=8, fault=fault)
    run(engine, [req(i, p, max_new=10) for i, p in enumerate(prompts[:8])], joins_per_step=2)
    # requests 4 and 5 joined together: both failed, everyone else completed correctly
    assert set(ev.failed) == {4, 5} and "out of memory" in ev.failed[5]
    for i in (0, 1, 2, 3, 6, 7):
        assert ev.done[i] == reference(model, prompts[i], 10)


def test_a_failing_decode_fails_the_batch_and_the_engine_recovers(model, prompts):
    ev = Events()
    state = {"n": 0}

    def fault(phase, rids):
        if phase == "decode":
            state["n"] += 1
            if state["n"] == 3:
                raise RuntimeError("simulated device error")

    engine = HFEngine(model, ev, max_batch_size=8, fault=fault)
    run(engine, [req(i, p, max_new=12, stop_ids=frozenset()) for i, p in enumerate(prompts[:4])], joins_per_step=4)
    assert set(ev.failed) == {0, 1, 2, 3}
    run(engine, [req(10, prompts[0], max_new=12, stop_ids=frozenset())])
    assert ev.done[10] == reference(model, prompts[0], 12, stop=())


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, prompts):
    def sample(seed, **kw):
        ev = Events()
        run(HFEngine(model, ev), [req(7, prompts[2], max_new=12, stop_ids=frozenset(), seed=seed, **kw)])
        return ev.done[7]

    hot = {"temperature": 5.0, "top_p": 0.95}
    assert sample(1, **hot) == sample(1, **hot)
    assert sample(1, **hot) != sample(2, **hot)
    assert sample(1, temperature=1.0, top_k=1) == reference(model, prompts[2], 12, stop=())


def test_frequency_penalty_discourages_repeats(model, prompts):
    def distinct(**kw):
        ev = Events()
        run(HFEngine(model, ev), [req(0, prompts[6], max_new=30, stop_ids=frozenset(), **kw)])
        return len(set(ev.done[0]))

    assert distinct(frequency_penalty=50.0) > distinct()
