"""Where the compliance tests find MLCommons' official files (../shared/mlperf-reference next to the checkout
or its worktree's parent, else $MLPERF_INFERENCE_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def find_reference() -> Path | None:
    candidates = [REPO.parent / "shared" / "mlperf-reference", REPO.parent.parent / "shared" / "mlperf-reference"]
    if os.environ.get("MLPERF_INFERENCE_DIR"):
        candidates.insert(0, Path(os.environ["MLPERF_INFERENCE_DIR"]))
    return next((c for c in candidates if (c / "compliance").is_dir()), None)
