#!/usr/bin/env bash
# Builds build/llamacpp-server-venv: llama-cpp-python's OpenAI-compatible server, kept out of the
# project venv, for the integration tests that run the endpoint core against a real server.
#
# Usage (the Makefile's test_servers target): PYTHON=/abs/.venv/bin/python bash scripts/setup_llamacpp_server_env.sh
#
# llama-cpp-python ships no binary wheel, so the first run on a machine builds one from source
# (CPU only, minutes on 2 cores) and keeps it in a cache outside the repository; later runs
# install that wheel. A stamp file makes a finished setup a no-op.
#
# Environment:
#   PYTHON               the project's interpreter; the new venv uses its base interpreter
#   HARNESS_WHEEL_CACHE  where built wheels are kept (default ~/.cache/mlperf-llm-harness/wheels)
#   LLAMACPP_VENV        the venv to create (default build/llamacpp-server-venv)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${LLAMACPP_VENV:-$REPO_ROOT/build/llamacpp-server-venv}"
WHEEL_CACHE="${HARNESS_WHEEL_CACHE:-$HOME/.cache/mlperf-llm-harness/wheels}"
STAMP="$VENV/.llamacpp-server-installed"

die() {
    echo "setup_llamacpp_server_env: error: $*" >&2
    exit 1
}

log() {
    echo "setup_llamacpp_server_env: $*" >&2
}

# The build flags: CPU only, no multimodal (llava/mtmd) library, no llama.cpp tools or tests.
cmake_args() {
    printf '%s ' \
        -DLLAVA_BUILD=OFF \
        -DGGML_NATIVE=ON \
        -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF \
        -DGGML_CCACHE=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
}

# The wheel is built with -march=native, so a cached one only fits a machine with the same CPU
# features: its folder is named by the architecture, the CPU flags and the build flags. (It loads
# llama.cpp through ctypes: one wheel, tagged py3-none, serves every Python 3.)
wheel_dir() {
    local cpu_flags key
    cpu_flags="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)"
    key="$(printf '%s\n%s\n%s\n' "$(uname -m)" "$cpu_flags" "$(cmake_args)" | sha256sum | cut -c1-12)"
    echo "$WHEEL_CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-$key"
}

find_wheel() {
    compgen -G "$1/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl" | head -n1 || true
}

# Build the wheel from source into $1 (atomically: a temporary sibling folder renamed into place).
build_wheel() {
    local dest="$1" tmp start
    command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler (cc/gcc) on PATH: install build-essential"
    command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (c++/g++) on PATH: install build-essential"
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest".tmp-*  # left by a killed build (setups run one at a time, under the lock)
    tmp="$(mktemp -d "$dest.tmp-XXXXXX")"
    log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (CPU only, a few minutes on 2 cores)"
    log "CMAKE_ARGS=$(cmake_args)"
    start=$SECONDS
    if ! CMAKE_ARGS="$(cmake_args)" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$VENV/bin/python" -m pip wheel --no-deps --no-binary llama-cpp-python --no-cache-dir \
        --wheel-dir "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >"$tmp/build.log" 2>&1; then
        tail -n 40 "$tmp/build.log" >&2
        rm -rf "$tmp"
        die "building the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION wheel failed (the last lines of the log are above)"
    fi
    if [[ -z "$(find_wheel "$tmp")" ]]; then
        rm -rf "$tmp"
        die "pip wheel finished but left no llama_cpp_python wheel"
    fi
    rm -f "$tmp/build.log"
    chmod 755 "$tmp"  # mktemp made it private
    rm -rf "$dest"
    mv "$tmp" "$dest"
    log "built $(basename "$(find_wheel "$dest")") in $((SECONDS - start)) s, cached in $dest"
}

main() {
    [[ -x "$(command -v "$PYTHON")" ]] || die "PYTHON=$PYTHON is not an executable interpreter"
    local wheels wheel stamp_text
    wheels="$(wheel_dir)"
    mkdir -p "$(dirname "$VENV")"

    # One setup at a time (two `make test` runs would otherwise race on the venv and the build).
    exec 9>"$(dirname "$VENV")/.llamacpp-server-venv.lock"
    flock 9

    stamp_text="llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION $wheels"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$stamp_text" && -x "$VENV/bin/python" ]]; then
        exit 0
    fi

    rm -rf "$VENV"
    local base
    base="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    log "creating $VENV from $base"
    "$base" -m venv "$VENV" || die "could not create the venv $VENV with $base"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip || die "could not upgrade pip in $VENV"

    wheel="$(find_wheel "$wheels")"
    if [[ -z "$wheel" ]]; then
        build_wheel "$wheels"
    else
        log "using the cached wheel $wheel"
    fi

    "$VENV/bin/python" -m pip install --quiet --only-binary llama-cpp-python --find-links "$wheels" \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" \
        || die "could not install llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION from $wheels"
    "$VENV/bin/python" -c 'import llama_cpp, llama_cpp.server.app' \
        || die "llama-cpp-python installed in $VENV but does not import (a stale cached wheel? remove $wheels)"

    echo "$stamp_text" >"$STAMP"
    log "ready: $VENV (llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION)"
}

main "$@"
