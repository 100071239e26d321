"""Compliance runs (TEST06/07/09 with the official audit.config and verifiers) and submission staging.

`python -m llmlib.compliance` is `make run_audit_harness`; `llmlib.compliance.submission` stages and checks.
"""
