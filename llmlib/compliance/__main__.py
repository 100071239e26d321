"""`python -m llmlib.compliance [--name=value ...]`: `make run_audit_harness`, compliance runs and their verdicts.

Exit code 0 only when every test passed (1: a test failed; 2: bad input).
"""

import sys

from llmlib.compliance.audit import main

sys.exit(main())
