"""The core seam: each core is built from its own frozen settings (resolved once from the fields), its
rank, its sink and what the dataset gives it; settings, inputs and requests pickle, so a core can live
in another process."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import threading

import numpy as np
import pytest

from llmlib.cores import CORES
from llmlib.cores.base import CoreInputs, CoreSettings, LLMCore, Request
from llmlib.cores.dummy import DummyCore, DummySettings
from llmlib.errors import ConfigError
from llmlib.factory import build_server
from llmlib.generation import GenerationParams, generation_params, limit
from tests.outcomes import wait_idle

DISAGG_YAML = """hostname: 127.0.0.1
port: 9000
context_servers: {{num_instances: 1, urls: ["127.0.0.1:9001"]}}
generation_servers: {{num_instances: 1, urls: ["127.0.0.1:9002"]}}
"""


def resolvable(make_config, tmp_path):
    """core name -> a config its settings resolve from (no backend needed to resolve)."""
    disagg = tmp_path / "disagg.yaml"
    disagg.write_text(DISAGG_YAML.format())
    return {
        "dummy": make_config(dummy_num_cores=2, dummy_output_len="5"),
        "hf": make_config(hf_max_batch_size=3),
        "trtllm_endpoint": make_config(trtllm_server_urls="127.0.0.1:1,https://h:2/v1"),
        "trtllm_disagg": make_config(trtllm_disagg_config_path=str(disagg)),
        "triton_grpc": make_config(triton_server_urls="h:1,h:2", triton_num_models_per_server=2),
        "trtllm_executor": make_config(engine_dir="/x", num_gpus=2),
        "trtllm_hlapi": make_config(trtllm_model_path="m", num_gpus=1),
    }


def test_every_core_has_a_frozen_picklable_settings_dataclass_next_to_it(make_config, tiny_benchmark, tmp_path):
    configs = resolvable(make_config, tmp_path)
    assert set(configs) == set(CORES.names())  # a new core gets a line here too
    for name, config in configs.items():
        try:
            cls = CORES.get(name)
        except Exception as err:  # an optional backend that is not installed here (tritonclient)
            pytest.skip(f"{name}: {err}")
        st = cls.settings_type
        assert st is not CoreSettings and issubclass(st, CoreSettings), name
        assert dataclasses.is_dataclass(st) and st.__dataclass_params__.frozen, name
        settings = cls.resolve_settings(config, tiny_benchmark)
        assert type(settings) is st, name
        assert pickle.loads(pickle.dumps(settings)) == settings, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, dataclasses.fields(settings)[0].name, None)


def test_settings_carry_the_fields_values(make_config, tiny_benchmark, tmp_path):
    configs = resolvable(make_config, tmp_path)
    dummy = DummyCore.resolve_settings(configs["dummy"], tiny_benchmark)
    assert (dummy.num_cores, dummy.output_len, dummy.ttft_ms) == (2, 5, 20.0)
    endpoint = CORES.get("trtllm_endpoint").resolve_settings(configs["trtllm_endpoint"], tiny_benchmark)
    assert endpoint.urls == ("127.0.0.1:1", "https://h:2/v1") and endpoint.max_concurrency == 256
    disagg = CORES.get("trtllm_disagg").resolve_settings(configs["trtllm_disagg"], tiny_benchmark)
    assert disagg.urls == ("127.0.0.1:9000",) and disagg.generation_servers == ("127.0.0.1:9002",)
    hf = CORES.get("hf").resolve_settings(configs["hf"], tiny_benchmark)
    assert hf.max_batch_size == 3 and hf.model_path == ""
    with pytest.raises(ConfigError, match="dummy_output_len"):
        DummyCore.resolve_settings(make_config(dummy_output_len="many"), tiny_benchmark)


def test_a_core_holds_its_settings_never_the_config(make_dummy, recorder):
    core = make_dummy(recorder, dummy_zero_latency=True)
    assert isinstance(core.settings, DummySettings)
    for name in ("config", "benchmark", "dataset"):
        assert not hasattr(core, name), name
    with pytest.raises(TypeError, match="settings must be DummySettings"):
        DummyCore(CoreSettings(), rank=0, sink=recorder)


def test_the_factory_resolves_settings_once_for_every_core(make_config, tiny_benchmark, monkeypatch):
    calls = []
    real = DummyCore.resolve_settings.__func__

    def counting(cls, config, benchmark):
        calls.append(cls)
        return real(cls, config, benchmark)

    monkeypatch.setattr(DummyCore, "resolve_settings", classmethod(counting))
    bundle = build_server(make_config(core_type="dummy", dummy_num_cores=3, dummy_zero_latency=True),
                          tiny_benchmark)
    try:
        cores = bundle.server.cores
        assert len(cores) == 3 and [c.rank for c in cores] == [0, 1, 2] and calls == [DummyCore]
        assert all(c.settings is cores[0].settings and c.inputs is cores[0].inputs for c in cores)
        assert cores[0].inputs.output_lens is bundle.dataset.output_lens  # what the dataset gives it
    finally:
        bundle.stop()


def test_requests_carry_typed_params_and_pickle(make_config, tiny_benchmark):
    gen = generation_params(make_config(temperature=0.5, top_k=3, seed=7), tiny_benchmark)
    req = Request(9, np.arange(4, dtype=np.int32), gen, True, 3)
    assert req.params is gen and req.max_new_tokens == gen.max_new_tokens
    assert req.stop_token_ids == gen.stop_token_ids and req.min_new_tokens == gen.min_new_tokens
    back = pickle.loads(pickle.dumps(req))
    assert (back.request_id, back.streaming, back.sample_index) == (9, True, 3)
    assert back.params == gen and back.input_tokens.tolist() == [0, 1, 2, 3]
    assert (back.params.temperature, back.params.top_k, back.params.seed) == (0.5, 3, 7)
    short = Request(1, np.ones(2, np.int32), 5, False)  # an int is a greedy limit
    assert short.params is limit(5) and short.params.greedy and short.stop_token_ids == ()
    assert gen.with_max_new_tokens(3) is gen.with_max_new_tokens(3)  # one object per limit
    assert gen.with_max_new_tokens(3).temperature == 0.5 and gen.with_max_new_tokens(gen.max_new_tokens) is gen


def _run_in_child(payload: bytes, out) -> None:
    """In a spawned process: build the core from the pickled (settings, inputs, requests) alone."""
    settings, inputs, requests = pickle.loads(payload)
    got = []
    finals = threading.Semaphore(0)

    class Sink:
        def on_first_token(self, rid, tokens):
            got.append(("first", rid, int(tokens[0])))

        def on_complete(self, rid, tokens, n):
            got.append(("done", rid, tokens.tolist(), n))
            finals.release()

        def on_error(self, rid, err):
            got.append(("error", rid, str(err)))
            finals.release()

    core = DummyCore(settings, rank=1, sink=Sink(), inputs=inputs)
    core.enqueue(requests)
    for _ in requests:
        finals.acquire(timeout=10)
    core.stop()
    out.put(got)


@pytest.mark.timeout(60)
def test_a_core_is_built_in_another_process_from_what_pickles(make_config, tiny_benchmark, small_dataset, recorder):
    settings = DummyCore.resolve_settings(make_config(dummy_ttft_ms=1, dummy_tpot_ms=0), tiny_benchmark)
    inputs = DummyCore.core_inputs(settings, small_dataset)
    gen = GenerationParams(max_new_tokens=6, stop_token_ids=(2,))
    requests = [Request(i, small_dataset.input_tokens[i], gen, i % 2 == 0, i) for i in range(4)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_run_in_child, args=(pickle.dumps((settings, inputs, requests)), out))
    proc.start()
    got = out.get(timeout=50)
    proc.join(10)
    assert proc.exitcode == 0
    done = {g[1]: g[2] for g in got if g[0] == "done"}
    assert sorted(done) == [0, 1, 2, 3]
    here = DummyCore(settings, rank=1, sink=recorder, inputs=inputs)  # the same core in this process
    here.enqueue(requests)
    wait_idle(here, 10)
    here.stop()
    for i, tokens in done.items():
        assert len(tokens) == min(6, int(small_dataset.output_lens[i]))  # the dataset's lengths reached it
        assert tokens == recorder.completed[i][0].tolist()
    assert sorted(g[1] for g in got if g[0] == "first") == [0, 2]


def test_core_inputs_default_to_nothing():
    assert LLMCore.core_inputs(CoreSettings(), object()) == CoreInputs()
