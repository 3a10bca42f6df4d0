#!/usr/bin/env bash
# Make sure the Python that builds .venv can create virtual environments.
# Debian ships venv/ensurepip in a separate package; install it when missing (needs root).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
    echo "ensure-python: $PYTHON not found; install Python 3.11 (apt-get install python3 python3-venv)" >&2
    exit 1
fi
if "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    exit 0
fi
ver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$(id -u)" != 0 ]; then
    echo "ensure-python: $PYTHON has no venv module; run: sudo apt-get install python${ver}-venv" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" || \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
