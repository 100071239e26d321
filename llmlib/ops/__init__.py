"""Ops around a run: quantize and build TensorRT-LLM engines, launch serving processes, and the
disaggregated-serving config and mpirun roles (`python -m llmlib.ops <command>`, the Makefile's targets)."""
