"""The `triton_grpc` core's pure parts: settings per (server, model) rank, TensorRT-LLM tensors,
output cutting (the paths the anchor core got wrong: the end id compared as a list to an int,
a misspelt exception class on the error path). Against a real tritonserver: tests/integration/test_triton_grpc.py."""

from __future__ import annotations

import numpy as np
import pytest

from llmlib.cores import get_core_class
from llmlib.cores.triton_grpc_core import (
    TritonGrpcCore,
    _describe,
    cut_at_end,
    response_tokens,
    stop_words_tensor,
    triton_settings,
)
from llmlib.errors import ConfigError


def test_registered_and_one_core_per_server_and_model(make_config):
    assert get_core_class("triton_grpc") is TritonGrpcCore
    config = make_config(triton_server_urls="127.0.0.1:1,127.0.0.1:2", triton_num_models_per_server=2)
    assert TritonGrpcCore.num_cores(config) == 4
    placed = [(s.url, s.model) for s in (triton_settings(config, r) for r in range(4))]
    assert placed == [("127.0.0.1:1", "tensorrt_llm_0"), ("127.0.0.1:1", "tensorrt_llm_1"),
                      ("127.0.0.1:2", "tensorrt_llm_0"), ("127.0.0.1:2", "tensorrt_llm_1")]
    single = make_config(triton_server_urls="grpc://h:8001", triton_model_name="ensemble")
    assert (triton_settings(single, 0).url, triton_settings(single, 0).model) == ("h:8001", "ensemble")


def test_bad_settings_name_what_is_wrong(make_config):
    with pytest.raises(ConfigError, match="--triton_server_urls is empty"):
        TritonGrpcCore.num_cores(make_config())
    with pytest.raises(ConfigError, match="unknown tensor.*input_idz"):
        triton_settings(make_config(triton_server_urls="h:1", triton_tensor_names="input_idz:X"), 0)
    with pytest.raises(ConfigError, match="rank 2"):
        triton_settings(make_config(triton_server_urls="h:1"), 2)


def test_stop_words_list_is_ids_and_offsets():
    t = stop_words_tensor([7, 9, 11])
    assert t.shape == (1, 2, 3) and t.dtype == np.int32
    assert t[0].tolist() == [[7, 9, 11], [1, 2, 3]]


def test_response_tokens_take_the_first_beam_and_cut_to_sequence_length():
    out = np.array([[[5, 6, 7, 2, 2]]], dtype=np.int32)  # [batch, beam, T], padded
    assert response_tokens(out, np.array([[3]], dtype=np.int32)).tolist() == [5, 6, 7]
    assert response_tokens(out, None).tolist() == [5, 6, 7, 2, 2]
    assert response_tokens(np.array([[4, 5]], dtype=np.int32), None).tolist() == [4, 5]  # [batch, T]
    assert response_tokens(None, None).size == 0  # the empty final response
    assert response_tokens(np.zeros((1, 1, 0), np.int32), None).size == 0


def test_end_id_is_found_in_an_array_not_compared_as_a_whole():
    tokens = np.array([5, 6, 2, 2, 2], dtype=np.int32)
    assert cut_at_end(tokens, 2).tolist() == [5, 6]
    # the anchor's check, `list(tokens) == end_id`, is always False and keeps the padding
    assert (list(tokens) == 2) is False
    assert cut_at_end(np.array([2], np.int32), 2).size == 0
    assert cut_at_end(tokens, None).tolist() == tokens.tolist()
    assert cut_at_end(np.array([5, 6], np.int32), 2).tolist() == [5, 6]


def test_errors_are_described_with_the_real_exception_class():
    from tritonclient.utils import InferenceServerException  # the class the anchor misspelt

    err = InferenceServerException(msg="connect failed", status="StatusCode.UNAVAILABLE")
    assert _describe(err) == "StatusCode.UNAVAILABLE: connect failed"
    assert _describe(InferenceServerException(msg="bad input")) == "bad input"
    assert _describe(ValueError("x")) == "ValueError: x"


def test_model_state_from_the_repository_index():
    """A model that is not ready: still loading (retried), failed to load or absent (final)."""
    from types import SimpleNamespace

    from tritonclient.utils import InferenceServerException

    from llmlib.cores.triton_grpc_core import _model_state

    def client(*models, fail=False):
        def index(client_timeout):
            if fail:
                raise InferenceServerException(msg="index unavailable", status="StatusCode.UNAVAILABLE")
            return SimpleNamespace(models=[SimpleNamespace(name=n, state=st, reason=r) for n, st, r in models])
        return SimpleNamespace(get_model_repository_index=index)

    assert _model_state(client(("m", "LOADING", "")), "m", 1) == ("LOADING", "")
    assert _model_state(client(("m", "UNAVAILABLE", "load failed: OOM")), "m", 1) == ("UNAVAILABLE", "load failed: OOM")
    assert _model_state(client(("m", "UNAVAILABLE", "v1"), ("m", "LOADING", "")), "m", 1)[0] == "LOADING"
    assert _model_state(client(("other", "READY", "")), "m", 1) == (None, "")
    assert _model_state(client(fail=True), "m", 1) == ("LOADING", "")
