"""Typed errors of the harness.

One root, a few children; every message names the input and what was expected.
"""


class HarnessError(Exception):
    """Root of every error the harness raises on purpose."""


class ConfigError(HarnessError):
    """A setting, flag or configuration file is malformed or inconsistent."""


class DatasetError(HarnessError):
    """A dataset file is missing, unreadable or has the wrong shape."""


class CoreUnavailableError(HarnessError):
    """A core cannot be used: unknown name, or its optional dependency is missing."""


class BackendError(HarnessError):
    """A backend failed: down, timed out, or replied with something malformed.

    `address` names the backend instance (URL, device, rank); `cause` says what went wrong.
    `final` says that retrying cannot help (the wrong server or model, a 4xx, a worker that
    exited): health checks stop at once on a final error instead of waiting out their deadline.
    """

    def __init__(self, address: str, cause: str, *, final: bool = False):
        super().__init__(f"backend {address}: {cause}")
        self.address = address
        self.cause = cause
        self.final = final


class FlushTimeoutError(HarnessError):
    """Requests were still pending when a flush deadline passed."""

    def __init__(self, where: str, pending_ids: list, timeout_s: float):
        shown = ", ".join(str(i) for i in pending_ids[:10])
        more = f" (+{len(pending_ids) - 10} more)" if len(pending_ids) > 10 else ""
        super().__init__(
            f"{where}: {len(pending_ids)} request(s) still pending after {timeout_s:g}s: {shown}{more}"
        )
        self.pending_ids = list(pending_ids)


class RunStopped(HarnessError):
    """The run was stopped on purpose (Ctrl-C, SIGTERM, a core that can no longer serve) before
    LoadGen's test began."""


class OpsError(HarnessError):
    """A build step or a serving process failed (its message names the step or server and shows
    the tail of its log)."""


class ComplianceError(HarnessError):
    """A compliance run or a submission tree cannot be made: missing official files, logs or results."""
