"""Fault injection for tests, kept out of the shipped package: models that fail on purpose.

Each fault lives at a process boundary (a checkpoint folder the real hf core loads), never as a hook in llmlib.
"""
