"""Which audit.config LoadGen may read in a run: only the one a compliance run names, never a stray one.

LoadGen 6.0.17's StartTest reads `audit.config` from the working directory when it exists.
"""

from __future__ import annotations

from pathlib import Path

from llmlib.errors import ConfigError

#: The name LoadGen looks for in its working directory (its `audit_config_filename` default).
AUDIT_CONFIG_NAME = "audit.config"


def audit_config_for(config, cwd: Path | None = None) -> str:
    """The audit_config_filename to hand StartTest. A compliance run (--audit_test) must name an
    existing file (--audit_config); any other run refuses to start where an audit.config lies in
    the working directory, since LoadGen would silently turn it into a compliance run and write
    its logs over the performance results."""
    cwd = Path.cwd() if cwd is None else cwd
    if config.audit_test:
        if not config.audit_config or not Path(config.audit_config).is_file():
            raise ConfigError(f"--audit_test={config.audit_test} needs --audit_config naming an existing "
                              f"audit.config (got {config.audit_config!r}); use `make run_audit_harness`")
        return str(Path(config.audit_config).resolve())
    stray = cwd / AUDIT_CONFIG_NAME
    if stray.exists():
        raise ConfigError(f"{stray} exists: LoadGen would read it and turn this run into a compliance run; "
                          "remove it (compliance runs: make run_audit_harness)")
    return AUDIT_CONFIG_NAME
