"""The compliance tests compare with MLCommons' official files; without a copy of them they skip, saying so.

They are found by reference_files.find_reference().
"""

from __future__ import annotations

import pytest
from reference_files import find_reference


def pytest_collection_modifyitems(config, items):
    if find_reference() is None:
        skip = pytest.mark.skip(reason="no mlperf-reference files (../shared/mlperf-reference or "
                                       "$MLPERF_INFERENCE_DIR)")
        for item in items:
            if "llmlib/compliance" in str(item.fspath):
                item.add_marker(skip)
