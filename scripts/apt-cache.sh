#!/usr/bin/env bash
# Starts the lab's apt cache (apt-cacher-ng with files/apt-cache/acng.conf) if
# it is not answering yet. Packages fetched by any lab container are kept in
# /var/cache/paycore-apt and served from there to every later container.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=3143
if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/acng-report.html" 2>/dev/null; then
    exit 0
fi
install -d -m 0755 /var/cache/paycore-apt /var/log/paycore-apt /run/paycore-apt
chown -R apt-cacher-ng: /var/cache/paycore-apt /var/log/paycore-apt /run/paycore-apt 2>/dev/null || true
apt-cacher-ng -c "$root/files/apt-cache" ForeGround=0 \
    pidfile=/run/paycore-apt/pid SocketPath=/run/paycore-apt/socket
for _ in $(seq 50); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/acng-report.html" && exit 0
    sleep 0.2
done
echo "apt cache did not start; see /var/log/paycore-apt" >&2
exit 1
