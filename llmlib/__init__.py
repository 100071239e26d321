"""MLPerf-style LLM inference benchmark harness.

Datasets, backend cores, the load-balancing LLMServer, warmup and the LoadGen wiring.
"""
