"""A small registry of lazily imported entries ("module:Attr" strings), rejecting duplicates.

Listing entries imports nothing; a miss suggests the closest names.
"""

from __future__ import annotations

import importlib
from typing import Any

from llmlib.errors import CoreUnavailableError
from llmlib.fields import unknown_name_message


class Registry:
    """Maps names to "module:Attr" targets (or objects), imported on first `get`."""

    def __init__(self, what: str):
        self.what = what
        self._targets: dict[str, Any] = {}
        self._extras: dict[str, str | None] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: Any, *, extra: str | None = None) -> None:
        if name in self._targets:
            raise ValueError(f"{self.what} {name!r} registered twice")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"{self.what} {name!r}: target {target!r} is not 'module:Attr'")
        self._targets[name] = target
        self._extras[name] = extra

    def unregister(self, name: str) -> None:
        self._targets.pop(name, None)
        self._extras.pop(name, None)
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        return name in self._targets

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            raise CoreUnavailableError(unknown_name_message(self.what, name, self._targets))
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                extra = self._extras[name]
                hint = f" Install it with: pip install -e '.[{extra}]'" if extra else ""
                raise CoreUnavailableError(
                    f"{self.what} {name!r} needs a package that is not installed ({err}).{hint}"
                ) from err
            try:
                target = getattr(module, attr)
            except AttributeError as err:
                raise CoreUnavailableError(
                    f"{self.what} {name!r}: module {module_name!r} has no attribute {attr!r}"
                ) from err
        self._loaded[name] = target
        return target
