#!/usr/bin/env bash
# Placeholder: filled in by the work on issue 4.
set -euo pipefail
