"""Stand-ins for third-party packages that cannot be installed here (tensorrt_llm), used at the
process boundary only. Tests put this folder first on sys.path with monkeypatch.syspath_prepend."""
