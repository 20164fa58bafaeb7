#!/usr/bin/env bash
# Builds the lab host image: Debian 12 with systemd as PID 1 and python3,
# from Debian's mirror alone (debootstrap + docker import; no registry needed).
# The image carries a label with the hash of this folder, so it is rebuilt only
# when the recipe changes.  Usage: build.sh [--force]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${PAYCORE_LAB_IMAGE:-paycore-lab:debian12}
mirror=${PAYCORE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
apt_proxy=${PAYCORE_APT_PROXY:-http://127.0.0.1:3143}
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,iputils-ping,ca-certificates,procps,gnupg

recipe=$(cat "$here"/* | sha256sum | cut -c1-16)
current=$(docker image inspect --format '{{ index .Config.Labels "paycore.recipe" }}' "$image" 2>/dev/null || true)
if [[ "${1:-}" != "--force" && "$current" == "$recipe" ]]; then
    echo "lab image $image is up to date (recipe $recipe)"
    exit 0
fi

echo "building lab image $image (recipe $recipe); this takes about two minutes"
work=$(mktemp -d /var/tmp/paycore-lab-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

# Through the apt cache when it runs, so a rebuild downloads nothing again.
if curl -fsS -o /dev/null --max-time 2 "$apt_proxy/acng-report.html" 2>/dev/null; then
    export http_proxy=$apt_proxy
fi
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log"; exit 1; }
unset http_proxy

install -m 0644 "$here/sources.list" "$rootfs/etc/apt/sources.list"
install -m 0644 "$here/apt-proxy.conf" "$rootfs/etc/apt/apt.conf.d/01paycore-proxy"
install -m 0644 "$here/apt-lean.conf" "$rootfs/etc/apt/apt.conf.d/02paycore-lean"
install -m 0755 "$here/apt-proxy-detect" "$rootfs/usr/local/sbin/apt-proxy-detect"
chroot "$rootfs" /bin/sh -euc '
    : > /etc/machine-id
    rm -f /var/lib/dbus/machine-id
    # Units that make no sense in a container and only slow or fail boot.
    systemctl mask systemd-remount-fs.service getty.target console-getty.service \
        systemd-firstboot.service systemd-udevd.service systemd-udev-trigger.service \
        sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount > /dev/null 2>&1
    apt-get clean
    rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
    # An old mtime makes apt-based tools see the (empty) package lists as stale.
    touch -d @0 /var/lib/apt/lists
'

tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/sbin/init"]' \
    --change 'ENV container=docker' \
    --change "LABEL paycore.recipe=$recipe" \
    - "$image" > /dev/null
echo "built $image"
