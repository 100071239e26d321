#!/usr/bin/env bash
# Installs OpenMPI (mpirun) for the disaggregated-serving tests, which run the worker and leader roles
# under mpirun on loopback. A no-op when mpirun is already on PATH.
#
# Usage (the Makefile's test_servers target): bash scripts/setup_openmpi.sh
# Needs root (or sudo) and apt-get (Debian / Ubuntu), as on the CI machine.
set -euo pipefail

if command -v mpirun >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup_openmpi: error: mpirun is missing and this is not root (no sudo): install openmpi-bin" >&2; exit 1; }
    SUDO=sudo
fi
command -v apt-get >/dev/null 2>&1 || { echo "setup_openmpi: error: mpirun is missing and there is no apt-get: install OpenMPI (openmpi-bin)" >&2; exit 1; }
echo "setup_openmpi: installing openmpi-bin libopenmpi-dev" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
command -v mpirun >/dev/null 2>&1 || { echo "setup_openmpi: error: mpirun still missing after the install" >&2; exit 1; }
echo "setup_openmpi: ready: $(mpirun --version | head -n1)" >&2
