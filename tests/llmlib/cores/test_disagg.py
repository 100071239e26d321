"""The `trtllm_disagg` core: its YAML is checked, and requests go to the router it names
(here the project's mock OpenAI server standing in for the router)."""

from __future__ import annotations

import numpy as np
import pytest

from llmlib.cores import get_core_class
from llmlib.cores.base import Request
from llmlib.cores.trtllm_disagg_core import TrtllmDisaggCore, read_disagg_config
from llmlib.errors import ConfigError
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids
from llmlib.server import LLMServer
from llmlib.factory import build_core

pytestmark = pytest.mark.timeout(60)

YAML = """hostname: 127.0.0.1
port: {port}
backend: pytorch
context_servers:
  num_instances: 2
  urls: ["127.0.0.1:8001", "127.0.0.1:8002"]
generation_servers:
  num_instances: 1
  urls: ["127.0.0.1:8003"]
"""


def test_reads_the_router_and_the_servers(tmp_path):
    path = tmp_path / "disagg.yaml"
    path.write_text(YAML.format(port=9000))
    cfg = read_disagg_config(path)
    assert cfg == {"router": "127.0.0.1:9000", "context_servers": ["127.0.0.1:8001", "127.0.0.1:8002"],
                   "generation_servers": ["127.0.0.1:8003"]}
    assert get_core_class("trtllm_disagg") is TrtllmDisaggCore


@pytest.mark.parametrize("text, match", [
    ("port: 9000\ncontext_servers: {urls: [a:1]}\ngeneration_servers: {urls: [b:2]}", "hostname"),
    ("hostname: h\nport: 0\ncontext_servers: {urls: [a:1]}\ngeneration_servers: {urls: [b:2]}", "port"),
    ("hostname: h\nport: 9\ngeneration_servers: {urls: [b:2]}", "context_servers"),
    ("hostname: h\nport: 9\ncontext_servers: {urls: [a]}\ngeneration_servers: {urls: [b:2]}", "context_servers.urls"),
    ("hostname: h\nport: 9\ncontext_servers: {num_instances: 3, urls: [a:1]}\ngeneration_servers: {urls: [b:2]}",
     "num_instances=3"),
    ("[1, 2", "not valid YAML"),
])
def test_a_bad_file_names_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_disagg_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        read_disagg_config(tmp_path / "missing.yaml")


def test_requests_go_through_the_router(tmp_path, make_config, tiny_benchmark, recorder):
    with MockOpenAIServer(MockOptions(output_tokens=7)) as router:
        path = tmp_path / "disagg.yaml"
        path.write_text(YAML.format(port=router.port))
        config = make_config(core_type="trtllm_disagg", trtllm_disagg_config_path=str(path))
        assert TrtllmDisaggCore.num_cores(config) == 1
        server = LLMServer()
        core = build_core(TrtllmDisaggCore, config, tiny_benchmark, None, rank=0, sink=server)
        server.attach([core])
        try:
            core.health_check()
            reqs = [Request(i, np.arange(i, i + 4, dtype=np.int32), 32, i % 2 == 0, sample_index=i)
                    for i in range(1, 21)]
            server.submit(reqs, recorder)
            server.flush(30)
        finally:
            server.stop()
        assert router.url in core.url
        assert len(recorder.completed) == 20 and not recorder.failed
        for r in reqs:
            assert list(recorder.completed[r.request_id][0]) == output_ids([int(t) for t in r.input_tokens], 7, 1000)


def test_the_router_gets_the_endpoint_rules_for_keys_and_tls(tmp_path, make_config):
    """A key to a remote router over plain http is refused before anything starts; https (a hostname
    written with its scheme) or a loopback router are fine."""
    key = tmp_path / "key.txt"
    key.write_text("sk-router-key\n")
    path = tmp_path / "disagg.yaml"

    def cores(hostname: str, **values) -> int:
        path.write_text(YAML.format(port=9000).replace("hostname: 127.0.0.1", f"hostname: {hostname}"))
        return TrtllmDisaggCore.num_cores(make_config(trtllm_disagg_config_path=str(path),
                                                      openai_api_key_file=str(key), **values))

    with pytest.raises(ConfigError, match="cleartext.*--allow_api_key_over_http") as info:
        cores("router.example.com")
    assert "sk-router-key" not in str(info.value)
    assert cores("https://router.example.com") == 1
    assert cores("localhost") == 1
    assert cores("router.example.com", allow_api_key_over_http="true") == 1
