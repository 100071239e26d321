"""Real servers the tests start at process boundaries (tritonserver, llama.cpp), each from its own venv
built by `make test_servers`, and the helpers that start and stop them."""
