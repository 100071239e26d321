"""Build the project's tiny Llama (tokenizer, weights, `tiny` dataset) and print its manifest.

The harness builds it on first use anyway; this script builds it ahead of time, or again with --force.

    .venv/bin/python scripts/build_tiny_model.py                  # into build/tiny-llama/
    .venv/bin/python scripts/build_tiny_model.py --out /tmp/tiny --force
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from llmlib.tiny_model import TINY_MODEL_DIR, ensure_tiny_model, read_manifest

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=TINY_MODEL_DIR,
                   help=f"folder to build into (default: {TINY_MODEL_DIR})")
    p.add_argument("--force", action="store_true", help="rebuild even when a complete build is there")
    args = p.parse_args(argv)

    start = time.perf_counter()
    folder = ensure_tiny_model(args.out, force=args.force)
    elapsed = time.perf_counter() - start
    print(json.dumps(read_manifest(folder), indent=2))
    print(f"tiny model ready in {folder} ({elapsed:.1f} s in this call)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
