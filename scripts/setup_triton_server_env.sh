#!/usr/bin/env bash
# Builds build/triton-server-venv: nvidia-pytriton, whose wheel carries a real tritonserver binary that
# runs on CPU, for the tests that run the triton_grpc core against tests/servers/triton_trtllm_server.py.
#
# Usage (the Makefile's test_servers target): PYTHON=/abs/.venv/bin/python bash scripts/setup_triton_server_env.sh
#
# A venv of its own because pytriton pins numpy<2 (the project is on numpy 2). It is made from the
# project interpreter's base interpreter: tritonserver's Python backend stub then loads the same
# libpython the server script runs on. A stamp file makes a finished setup a no-op.
#
# Environment:
#   PYTHON        the project's interpreter; the new venv uses its base interpreter
#   TRITON_VENV   the venv to create (default build/triton-server-venv)
set -euo pipefail

PYTRITON_VERSION=0.7.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${TRITON_VENV:-$REPO_ROOT/build/triton-server-venv}"
STAMP="$VENV/.triton-server-installed"

die() {
    echo "setup_triton_server_env: error: $*" >&2
    exit 1
}

log() {
    echo "setup_triton_server_env: $*" >&2
}

main() {
    [[ -x "$(command -v "$PYTHON")" ]] || die "PYTHON=$PYTHON is not an executable interpreter"
    [[ "$(uname -s)" == Linux ]] || die "tritonserver from nvidia-pytriton runs on Linux only"
    local base stamp_text
    base="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')" \
        || die "could not run $PYTHON"
    mkdir -p "$(dirname "$VENV")"

    # One setup at a time (two `make test` runs would otherwise race on the venv).
    exec 9>"$(dirname "$VENV")/.triton-server-venv.lock"
    flock 9

    # The stamp names the base interpreter too: a venv made from another Python is rebuilt.
    stamp_text="nvidia-pytriton==$PYTRITON_VERSION $base"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$stamp_text" && -x "$VENV/bin/python" ]]; then
        exit 0
    fi

    rm -rf "$VENV"
    log "creating $VENV from $base"
    "$base" -m venv "$VENV" || die "could not create the venv $VENV with $base"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip || die "could not upgrade pip in $VENV"
    log "installing nvidia-pytriton==$PYTRITON_VERSION (tritonserver and its Python dependencies, ~370 MB)"
    "$VENV/bin/python" -m pip install --quiet "nvidia-pytriton==$PYTRITON_VERSION" \
        || die "could not install nvidia-pytriton==$PYTRITON_VERSION into $VENV (is PyPI reachable?)"

    # The checks a test would otherwise fail on, slowly: the imports, the bundled binary, a Python
    # backend stub for this interpreter's version and the shared libpython that stub loads.
    "$VENV/bin/python" - <<'EOF' || die "nvidia-pytriton installed in $VENV but is not usable (see above)"
import pathlib
import sys
import sysconfig

import pytriton.triton  # noqa: F401
import tritonclient.grpc  # noqa: F401
from pytriton.utils.distribution import get_libs_path, get_stub_path
from pytriton.triton import TRITONSERVER_DIST_DIR

server = TRITONSERVER_DIST_DIR / "bin" / "tritonserver"
stub = get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}")
libpython = pathlib.Path(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME"))
for path in (server, stub, get_libs_path(), libpython):
    if not path.exists():
        sys.exit(f"missing {path}" + (" (the Python backend stub needs a Python built with --enable-shared)"
                                      if path == libpython else ""))
EOF

    echo "$stamp_text" >"$STAMP"
    log "ready: $VENV (nvidia-pytriton==$PYTRITON_VERSION)"
}

main "$@"
