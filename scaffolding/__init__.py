"""Test-time-compute framework: Controller, Task, Worker, ScaffoldingLlm.

Runs in the harness as a per-sample query expander (see ../shared/DESIGN.md).
"""
