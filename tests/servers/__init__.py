"""Servers the tests start at process boundaries: the project's mock OpenAI server (mock_openai_server.py,
in-process or `python -m tests.servers.mock_openai_server`), and real ones (tritonserver, llama.cpp), each
from its own venv built by `make test_servers`, with the helpers that start and stop them."""
