#!/usr/bin/env bash
# Prepares this machine (Debian 12 / Ubuntu, as root) for the lab and the tests:
# Debian packages, a running Docker engine, and the lab's apt cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [[ $EUID -ne 0 ]]; then
    echo "paycore: run as root (sudo): it installs packages and starts the Docker engine" >&2
    exit 1
fi

packages=(docker.io debootstrap apt-cacher-ng curl git python3-venv python3-dev gcc
          postgresql-15 nftables wireguard-tools prometheus prometheus-alertmanager)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the distribution daemons (apt-cacher-ng, postgresql, ...) from
    # starting: the tests start their own instances (promtool and amtool are what
    # the tests need of prometheus and prometheus-alertmanager).
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /var/log/paycore-apt-install.log \
        || { tail -20 /var/log/paycore-apt-install.log; exit 1; }
    rm -f /usr/sbin/policy-rc.d
fi

if ! docker info > /dev/null 2>&1; then
    echo "==> starting the Docker engine"
    if [[ -d /run/systemd/system ]]; then
        systemctl start docker
    else
        nohup dockerd > /var/log/paycore-dockerd.log 2>&1 &
    fi
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
    docker info > /dev/null 2>&1 || { echo "Docker engine did not start" >&2; exit 1; }
fi

"$here/apt-cache.sh"
