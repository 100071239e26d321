"""The `trtllm_disagg` core: TensorRT-LLM disaggregated serving, driven through its router.

Reads the disaggregated-serving YAML (hostname, port, context_servers, generation_servers) and
talks to the router's OpenAI-compatible endpoint exactly as the `trtllm_endpoint` core does: the same
health verdicts, key rules (no key over plain http to a router that is not loopback) and redaction; a
`hostname` written as `https://host` reaches a router behind TLS (verified, --trtllm_ca_file).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from llmlib.config import ResolvedConfig
from llmlib.cores.trtllm_endpoint_core import EndpointSettings, TrtllmEndpointCore, endpoint_settings
from llmlib.errors import ConfigError
from llmlib.fields import parse_endpoints


def read_disagg_config(path: str | Path) -> dict[str, Any]:
    """The router address and the context / generation server URLs, checked."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise ConfigError(f"--trtllm_disagg_config_path={str(path)!r}: no such file (expected the "
                          "disaggregated-serving YAML: hostname, port, context_servers, generation_servers)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    host, port = doc.get("hostname"), doc.get("port")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{path}: hostname: expected the router's host name, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{path}: port: expected the router's port (1..65535), got {port!r}")
    servers = {}
    for role in ("context_servers", "generation_servers"):
        section = doc.get(role)
        if not isinstance(section, dict) or not section.get("urls"):
            raise ConfigError(f"{path}: {role}: expected a mapping with a non-empty `urls` list")
        try:
            servers[role] = parse_endpoints(section["urls"])
        except ConfigError as err:
            raise ConfigError(f"{path}: {role}.urls: {err}") from err
        n = section.get("num_instances")
        if n is not None and n != len(servers[role]):
            raise ConfigError(f"{path}: {role}: num_instances={n} but {len(servers[role])} urls")
    return {"router": f"{host}:{port}", **servers}


@dataclass(frozen=True, slots=True, kw_only=True)
class DisaggSettings(EndpointSettings):
    """The router's endpoint settings (`urls` is the router alone) and the servers behind it."""

    config_path: str = ""
    context_servers: tuple[str, ...] = ()
    generation_servers: tuple[str, ...] = ()


class TrtllmDisaggCore(TrtllmEndpointCore):
    """One core per router: requests go to the router, which splits context and generation."""

    name = "trtllm_disagg"
    settings_type = DisaggSettings
    settings: DisaggSettings

    @property
    def disagg(self) -> dict[str, Any]:
        s = self.settings
        return {"router": s.urls[0], "context_servers": list(s.context_servers),
                "generation_servers": list(s.generation_servers)}

    @classmethod
    def resolve_settings(cls, config: ResolvedConfig, benchmark) -> DisaggSettings:
        """The endpoint core's settings aimed at the router, and the servers behind it."""
        disagg = read_disagg_config(config.trtllm_disagg_config_path)
        routed = endpoint_settings(config.with_values(source=f"router in {config.trtllm_disagg_config_path}",
                                                      trtllm_server_urls=disagg["router"]))
        return DisaggSettings(**{f.name: getattr(routed, f.name) for f in fields(routed)},
                              config_path=str(config.trtllm_disagg_config_path),
                              context_servers=tuple(disagg["context_servers"]),
                              generation_servers=tuple(disagg["generation_servers"]))

    @classmethod
    def num_cores(cls, config: ResolvedConfig) -> int:
        """One; a bad file, and the router's URL, CA file and key transport (as the endpoint core checks
        them), fail here, before anything starts."""
        router = read_disagg_config(config.trtllm_disagg_config_path)["router"]
        TrtllmEndpointCore.num_cores(config.with_values(source=f"router in {config.trtllm_disagg_config_path}",
                                                        trtllm_server_urls=router))
        return 1
