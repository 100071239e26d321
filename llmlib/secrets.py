"""Secrets of a run (API keys) and their redaction from every text the harness writes or prints.

A key read for a core is registered here; `redact` masks every registered secret, and `RedactingFilter`
does it to log records (message, arguments and traceback), so an error body that echoes the key never
reaches the console or a file. `config_secrets(config)` gives a resolved configuration's secrets to
writers that run apart from the cores (the run summary).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from llmlib.errors import ConfigError

#: what a secret is replaced with
MASK = "[redacted]"

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def read_api_key(path: str) -> str:
    """The first line of `path`, registered as a secret (the key itself never appears in a message)."""
    try:
        lines = Path(path).expanduser().read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--openai_api_key_file={path!r} cannot be read ({type(err).__name__}); "
                          "expected a file holding the API key") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"--openai_api_key_file={path!r} is empty; expected the API key on its first line")
    key = lines[0].strip()
    register(key)
    return key


def config_secrets(config: Any) -> tuple[str, ...]:
    """The secrets a resolved configuration names (the API key from --openai_api_key_file), each also
    registered; empty when it names none."""
    path = getattr(config, "openai_api_key_file", None)
    return (read_api_key(path),) if path else ()


def register(secret: str) -> None:
    """Mask `secret` from now on wherever `redact` (or the log filter) runs in this process."""
    global _secrets
    if not secret:
        return
    forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), repr(secret)[1:-1]}
    with _lock:
        # longest first, so that a secret containing another is masked whole
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))


def registered() -> tuple[str, ...]:
    return _secrets


def redact(text: str, secrets: tuple[str, ...] | list[str] | None = None) -> str:
    """`text` with every secret (the registered ones, plus `secrets`) replaced by MASK."""
    found = _secrets if secrets is None else tuple(sorted({*_secrets, *secrets}, key=len, reverse=True))
    for s in found:
        if s and s in text:
            text = text.replace(s, MASK)
    return text


def redact_obj(obj: Any, secrets: tuple[str, ...] | list[str] | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with every string redacted."""
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {redact_obj(k, secrets): redact_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, secrets) for v in obj]
    return obj


class RedactingFilter(logging.Filter):
    """Masks the registered secrets in a record's message, its arguments and its traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_filter(logger: logging.Logger | None = None) -> RedactingFilter:
    """Put one RedactingFilter on every handler of `logger` (default: the root logger), where records
    of all loggers pass; returns it. Calling it again adds no second filter."""
    logger = logger or logging.getLogger()
    found = next((f for h in logger.handlers for f in h.filters if isinstance(f, RedactingFilter)), None)
    flt = found or RedactingFilter()
    for handler in logger.handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)
    return flt


__all__ = ["MASK", "RedactingFilter", "config_secrets", "install_log_filter", "read_api_key", "redact",
           "redact_obj", "register", "registered"]
