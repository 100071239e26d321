#!/usr/bin/env bash
# Builds build/transformers-serve-venv: Hugging Face's `transformers serve` (OpenAI-compatible), kept
# out of the project venv, for the integration tests that run the endpoint core against it.
#
# Usage (the Makefile's test_servers target): PYTHON=/abs/.venv/bin/python bash scripts/setup_transformers_serve_env.sh
#
# torch comes first and alone as `torch==2.13.0`, which pip takes from the CPU wheel on this kind of
# machine (a range, or torch pulled in by transformers[serving], would fetch a CUDA build of several GB);
# then everything else from scripts/transformers_serve_requirements.txt, every version pinned. A stamp
# file makes a finished setup a no-op.
#
# Environment:
#   PYTHON               the project's interpreter; the new venv uses its base interpreter
#   TRANSFORMERS_VENV    the venv to create (default build/transformers-serve-venv)
set -euo pipefail

TORCH_VERSION=2.13.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${TRANSFORMERS_VENV:-$REPO_ROOT/build/transformers-serve-venv}"
REQUIREMENTS="$REPO_ROOT/scripts/transformers_serve_requirements.txt"
STAMP="$VENV/.transformers-serve-installed"

die() {
    echo "setup_transformers_serve_env: error: $*" >&2
    exit 1
}

log() {
    echo "setup_transformers_serve_env: $*" >&2
}

main() {
    [[ -x "$(command -v "$PYTHON")" ]] || die "PYTHON=$PYTHON is not an executable interpreter"
    [[ -f "$REQUIREMENTS" ]] || die "$REQUIREMENTS is missing"
    mkdir -p "$(dirname "$VENV")"

    # One setup at a time (two `make test` runs would otherwise race on the venv).
    exec 9>"$(dirname "$VENV")/.transformers-serve-venv.lock"
    flock 9

    local stamp_text
    stamp_text="torch==$TORCH_VERSION $(sha256sum "$REQUIREMENTS" | cut -c1-16)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$stamp_text" && -x "$VENV/bin/python" ]]; then
        exit 0
    fi

    rm -rf "$VENV"
    local base
    base="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    log "creating $VENV from $base"
    "$base" -m venv "$VENV" || die "could not create the venv $VENV with $base"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip || die "could not upgrade pip in $VENV"
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" \
        || die "could not install torch==$TORCH_VERSION in $VENV"
    "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" \
        || die "could not install $REQUIREMENTS in $VENV"
    "$VENV/bin/python" -c 'import torch, transformers.cli.serving.server; assert torch.version.cuda is None, torch.version.cuda' \
        || die "transformers serve installed in $VENV but does not import, or torch is not the CPU build"
    [[ -x "$VENV/bin/transformers" ]] || die "no transformers command in $VENV/bin"

    echo "$stamp_text" >"$STAMP"
    log "ready: $VENV (transformers[serving]==5.23.0, torch==$TORCH_VERSION)"
}

main "$@"
