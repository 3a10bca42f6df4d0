#!/usr/bin/env bash
# System packages the test suite needs, installed when missing (CI runs as root).
#   openssl, jq, xxd: the docs' check of certificates with standard tools
#   mosquitto:        a real MQTT broker for the MQTT meter source's tests
#   socat:            a pseudo-terminal pair standing in for an RS-485 line (Modbus RTU tests)
#   mbpoll:           an independent Modbus client that must read the simulator's registers
#   systemd:          systemd-analyze verify checks the units in deploy/
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v jq >/dev/null || need+=(jq)
command -v xxd >/dev/null || need+=(xxd)
command -v socat >/dev/null || need+=(socat)
command -v mbpoll >/dev/null || need+=(mbpoll)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: missing ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
apt-get update -qq
# policy-rc.d keeps Debian from starting a system-wide mosquitto: tests start their own.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
