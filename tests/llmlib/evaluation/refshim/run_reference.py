"""Runs an MLPerf reference accuracy script offline: the hub-facing calls at its process boundary
(AutoTokenizer.from_pretrained, evaluate.load, nltk.download) point at local files; the script is unchanged.

python run_reference.py TOKENIZER_DIR ROUGE_METRIC_DIR SCRIPT [script args...]
"""

import os
import sys
import types

tokenizer_dir, rouge_dir, script = sys.argv[1:4]
script_args = sys.argv[4:]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `dataset` (llama3.1-8b) and `mxeval` shims
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))

import nltk  # noqa: E402

nltk.download = lambda *a, **k: True  # punkt_tab is on NLTK_DATA already; no network here

import transformers  # noqa: E402

_from_pretrained = transformers.AutoTokenizer.from_pretrained


def _local_tokenizer(name, *args, **kwargs):
    kwargs.pop("revision", None)
    return _from_pretrained(tokenizer_dir, *args, **kwargs)


transformers.AutoTokenizer.from_pretrained = _local_tokenizer

try:
    import evaluate

    _load = evaluate.load
    evaluate.load = lambda name, *a, **k: _load(rouge_dir if name == "rouge" else name, *a, **k)
except ImportError:
    pass

main = types.ModuleType("__main__")
main.__file__ = os.path.abspath(script)
main.__builtins__ = __builtins__
sys.modules["__main__"] = main
sys.argv = [script, *script_args]
with open(script, encoding="utf-8") as f:
    code = compile(f.read(), script, "exec")
exec(code, main.__dict__)
