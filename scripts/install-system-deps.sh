#!/usr/bin/env bash
# System packages the test suite needs, installed when missing (CI runs as root).
#   openssl, jq, xxd: the docs' check of certificates with standard tools
#   mosquitto:        a real MQTT broker for the MQTT meter source's tests
#   socat:            a pseudo-terminal pair standing in for an RS-485 line (Modbus RTU tests)
#   mbpoll:           an independent Modbus client that must read the simulator's registers
#   systemd:          systemd-analyze verify checks the units in deploy/
#   postgresql:       a real PostgreSQL server for the storage tests (tests/pgserver.py starts its own)
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v jq >/dev/null || need+=(jq)
command -v xxd >/dev/null || need+=(xxd)
command -v socat >/dev/null || need+=(socat)
command -v mbpoll >/dev/null || need+=(mbpoll)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v systemd-analyze >/dev/null || need+=(systemd)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: missing ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
apt-get update -qq
# Tests start their own mosquitto and PostgreSQL. Debian's postgresql-common would create and
# start a `main` cluster on port 5432 at install time; createcluster.conf stops that, and a
# policy-rc.d that refuses every start keeps the install from starting any service.
mkdir -p /etc/postgresql-common
grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf ||
    echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
policy=/usr/sbin/policy-rc.d
restore_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    restore_policy=true
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
if $restore_policy; then rm -f "$policy"; fi
