"""Verifies the common role on a converged lab host."""

import pytest


@pytest.mark.parametrize("package", ["curl", "jq", "chrony", "unattended-upgrades"])
def test_base_packages_installed(host, package):
    assert host.package(package).is_installed


def test_chrony_configured_and_enabled(host):
    conf = host.file("/etc/chrony/chrony.conf")
    assert conf.contains("^pool 2.debian.pool.ntp.org iburst$")
    assert host.service("chrony").is_enabled


def test_chrony_running_where_the_clock_can_be_set(host):
    # chrony.service requires CAP_SYS_TIME; lab containers rightly lack it, so
    # systemd skips the unit there. On a VM or bare metal it must be running.
    cap = host.run("systemctl show chrony -p ConditionResult --value").stdout.strip()
    if cap == "no":
        pytest.skip("container without CAP_SYS_TIME: systemd skips chrony by design")
    assert host.service("chrony").is_running


def test_unattended_upgrades_security_only(host):
    dump = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    origins = host.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    assert "label=Debian-Security" in origins
    assert 'label=Debian"' not in origins


def test_journald_is_bounded(host):
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=512M" in merged
    assert "MaxRetentionSec=30day" in merged


def test_sysctl_baseline_written(host):
    conf = host.file("/etc/sysctl.d/60-paycore.conf")
    assert conf.contains("^net.ipv4.tcp_syncookies=1$")
    assert conf.contains("^kernel.kptr_restrict=2$")
    assert conf.contains("^net.ipv4.conf.all.accept_redirects=0$")


def test_sysctl_baseline_live_where_writable(host):
    if host.run("test -w /proc/sys/net/ipv4/tcp_syncookies").rc != 0:
        pytest.skip("/proc/sys is read-only in an unprivileged container")
    assert host.sysctl("kernel.kptr_restrict") == 2


def test_sshd_effective_configuration(host):
    effective = host.check_output("/usr/sbin/sshd -T")
    settings = dict(line.split(" ", 1) for line in effective.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "without-password"
    assert settings["x11forwarding"] == "no"
    assert settings["allowtcpforwarding"] == "no"
    assert settings["maxauthtries"] == "3"


def test_sshd_running_and_listening(host):
    assert host.service("ssh").is_running
    assert host.service("ssh").is_enabled
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_sshd_socket_activation_turned_off(host):
    """prepare.yml started sshd from ssh.socket (Ubuntu 24.04's way); the role
    runs ssh.service instead, which reads Port and ListenAddress itself."""
    assert host.run("systemctl is-enabled ssh.socket").stdout.strip() == "disabled"
    assert host.run("systemctl is-active ssh.socket").stdout.strip() == "inactive"


def test_sshd_algorithms_are_modern_and_win_over_drop_ins(host):
    """prepare.yml left a drop-in that weakens sshd (as cloud images do); the
    role's settings come first, and sshd keeps the first value it reads."""
    assert "aes128-cbc" in host.file("/etc/ssh/sshd_config.d/50-cloud-init.conf").content_string
    effective = host.check_output("/usr/sbin/sshd -T")
    settings = dict(line.split(" ", 1) for line in effective.splitlines() if " " in line)
    assert settings["ciphers"] == (
        "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,"
        "aes256-ctr,aes192-ctr,aes128-ctr"
    )
    assert settings["macs"] == (
        "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com"
    )
    kex = settings["kexalgorithms"].split(",")
    assert kex[0] == "sntrup761x25519-sha512@openssh.com"
    assert "diffie-hellman-group14-sha1" not in kex
    assert settings["passwordauthentication"] == "no"
    assert settings["permitrootlogin"] == "without-password"
    # A client offering only what the drop-in wanted is refused.
    weak = host.run(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o Ciphers=aes128-cbc "
        "-p 22 root@127.0.0.1 true"
    )
    assert weak.rc != 0 and "no matching cipher" in weak.stderr, weak.stderr
