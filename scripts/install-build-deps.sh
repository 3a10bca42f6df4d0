#!/usr/bin/env bash
# What the optional native Merkle module (setup.py, protos/_merkle_native.c) needs to build:
# OpenSSL's headers (Debian: libssl-dev). Installed when missing and we are root (CI);
# otherwise the install goes on and protos/merkle.py hashes through hashlib instead.
set -uo pipefail
[ -e /usr/include/openssl/sha.h ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-build-deps: no OpenSSL headers; the native Merkle module is skipped" \
         "(faster ingest with: sudo apt-get install libssl-dev, then make install)" >&2
    exit 0
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev ||
    echo "install-build-deps: libssl-dev could not be installed; the native Merkle module is skipped" >&2
exit 0
