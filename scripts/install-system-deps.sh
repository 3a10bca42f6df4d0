#!/usr/bin/env bash
# System packages the test suite needs, installed when missing (CI runs as root).
# The backbone needs only OpenSSL's command line (the docs' signature check is tested).
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: missing ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
