"""Static checks of the design's invariants: no sleeping in the harness outside the health-check
backoff, heavy dependencies imported only where needed, every module says what it is for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "llmlib"
MODULES = sorted(PKG.rglob("*.py"))

# Allowed to sleep: WarmupManager's backoff between health checks (the mock OpenAI server, whose
# delays simulate a model's, lives under tests/servers/).
SLEEP_ALLOWED = {PKG / "warmup.py"}


def _calls_named(tree: ast.AST, name: str) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if called == name:
                lines.append(node.lineno)
    return lines


def test_modules_found():
    assert PKG / "server.py" in MODULES and PKG / "cores" / "dummy.py" in MODULES


def test_no_sleep_in_the_harness_outside_backoff():
    offenders = []
    for path in MODULES:
        if path in SLEEP_ALLOWED:
            continue
        for line in _calls_named(ast.parse(path.read_text()), "sleep"):
            offenders.append(f"{path.relative_to(PKG.parent)}:{line}")
    assert not offenders, f"sleep() found (responses must be pushed, never polled): {offenders}"


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(PKG.parent)) for p in MODULES if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing


def test_importing_the_harness_pulls_no_heavy_dependency():
    code = ("import sys, llmlib.harness, llmlib.cli, llmlib.cores.dummy; "
            "print(','.join(m for m in ('torch', 'tensorrt_llm', 'transformers', 'tritonclient') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PKG.parent).stdout.strip()
    assert out == ""
