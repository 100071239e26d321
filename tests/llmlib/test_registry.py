"""Tests for llmlib.registry and the core registry: lazy "module:Attr" entries, duplicates, misses.

Throwaway modules are written to tmp_path and put on sys.path, under names no other test uses.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from llmlib.cores import CORES, get_core_class
from llmlib.cores.base import LLMCore
from llmlib.errors import CoreUnavailableError, HarnessError
from llmlib.registry import Registry


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write a module with `body` to tmp_path and return its unique importable name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(body: str) -> str:
        name = f"_llmlib_test_mod_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(body)
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_register_does_not_import_until_get(make_module):
    module = make_module("IMPORTED = True\nclass Thing:\n    pass\n")
    registry = Registry("core")
    registry.register("thing", f"{module}:Thing")
    assert "thing" in registry
    assert registry.names() == ["thing"]
    assert module not in sys.modules
    cls = registry.get("thing")
    assert cls.__name__ == "Thing"
    assert module in sys.modules
    assert registry.get("thing") is cls


def test_registering_a_missing_module_fails_only_at_get():
    registry = Registry("core")
    registry.register("ghost", "_llmlib_no_such_module_xyz:Core")
    assert registry.names() == ["ghost"]
    with pytest.raises(CoreUnavailableError) as info:
        registry.get("ghost")
    assert "'ghost'" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_registering_a_missing_attribute_fails_at_get_with_a_harness_error(make_module):
    module = make_module("class Real:\n    pass\n")
    registry = Registry("core")
    registry.register("typo", f"{module}:Reel")
    with pytest.raises(HarnessError) as info:
        registry.get("typo")
    assert "'typo'" in str(info.value)
    assert "Reel" in str(info.value)


def test_import_error_at_get_names_the_extra(make_module):
    module = make_module("import _llmlib_missing_dependency_xyz\nclass Core:\n    pass\n")
    registry = Registry("core")
    registry.register("trt", f"{module}:Core", extra="trtllm")
    with pytest.raises(CoreUnavailableError) as info:
        registry.get("trt")
    message = str(info.value)
    assert "core 'trt'" in message
    assert "_llmlib_missing_dependency_xyz" in message
    assert "pip install -e '.[trtllm]'" in message
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(CoreUnavailableError):
        registry.get("trt")


def test_import_error_without_an_extra_has_no_install_hint():
    registry = Registry("core")
    registry.register("ghost", "_llmlib_no_such_module_xyz:Core")
    with pytest.raises(CoreUnavailableError) as info:
        registry.get("ghost")
    assert "pip install" not in str(info.value)


def test_duplicate_registration_is_rejected():
    registry = Registry("core")
    registry.register("a", "x.y:Z")
    with pytest.raises(ValueError, match="'a' registered twice"):
        registry.register("a", "x.y:Other")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a", object())
    assert registry.names() == ["a"]


def test_target_string_must_be_module_colon_attr():
    registry = Registry("core")
    with pytest.raises(ValueError, match="module:Attr"):
        registry.register("bad", "just_a_module")
    assert "bad" not in registry


def test_unknown_name_suggests_and_lists_valid_names():
    registry = Registry("core")
    registry.register("trtllm_endpoint", "x.y:A")
    registry.register("triton_grpc", "x.y:B")
    with pytest.raises(CoreUnavailableError) as info:
        registry.get("trtllm_endpont")
    message = str(info.value)
    assert "Unknown core 'trtllm_endpont'." in message
    assert "Did you mean: trtllm_endpoint?" in message
    assert "Valid: triton_grpc, trtllm_endpoint" in message


def test_object_targets_are_returned_as_is():
    registry = Registry("widget")
    sentinel = object()
    registry.register("w", sentinel)
    assert registry.get("w") is sentinel


def test_unregister_forgets_the_entry():
    registry = Registry("core")
    registry.register("a", object())
    registry.get("a")
    registry.unregister("a")
    assert "a" not in registry
    with pytest.raises(CoreUnavailableError):
        registry.get("a")
    registry.register("a", "x.y:Z")  # the name is free again
    assert registry.names() == ["a"]


# -- the core registry ----------------------------------------------------------------------------


def test_dummy_core_is_registered_and_is_an_llmcore():
    assert "dummy" in CORES.names()
    cls = get_core_class("dummy")
    assert isinstance(cls, type) and issubclass(cls, LLMCore)
    assert cls.__name__ == "DummyCore"


def test_unknown_core_suggests_dummy():
    with pytest.raises(CoreUnavailableError, match=r"Unknown core 'dumy'\. Did you mean: dummy\?"):
        get_core_class("dumy")


def test_importing_the_core_registry_imports_no_core():
    code = "import sys, llmlib.cores; print(sorted(m for m in sys.modules if m.startswith('llmlib.cores.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"
