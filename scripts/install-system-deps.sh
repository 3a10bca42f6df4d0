#!/usr/bin/env bash
# System packages the test suite needs, installed when missing (CI runs as root).
# The docs' check of certificates with standard tools (openssl, jq, xxd) is run by the tests.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v jq >/dev/null || need+=(jq)
command -v xxd >/dev/null || need+=(xxd)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: missing ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
