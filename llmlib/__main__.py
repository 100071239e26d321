"""Entry point: `python -m llmlib` runs the harness (see llmlib/cli.py)."""

import sys

from llmlib.cli import main

sys.exit(main())
