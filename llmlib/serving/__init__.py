"""Serving machinery around the cores: worker processes that hold network cores' connections.

(LLMServer, the reporter and warm-up still live at the package top; see DESIGN.md's layout sketch.)
"""
