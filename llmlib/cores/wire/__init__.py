"""Wire formats the network cores speak, shared with scaffolding's workers (pure: no I/O here).

`openai`: OpenAI-compatible payloads, SSE parsing, usage / token-id / reasoning extraction.
"""
