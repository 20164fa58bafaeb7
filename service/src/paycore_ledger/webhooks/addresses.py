"""Where a webhook may go (SSRF): https URLs whose host resolves only to
public addresses. Loopback, private (the WireGuard tunnel's 10.44.0.0/24
among them), carrier-grade NAT, link-local (cloud metadata at
169.254.169.254), multicast, reserved and unspecified addresses are refused,
IPv4-mapped IPv6 judged as its IPv4 address. Checked when an endpoint is
registered and again at every delivery (DNS can change): the delivery
connects only to the addresses checked (CheckedResolver), never follows
redirects."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver

MAX_URL_LENGTH = 2048
# Names that never mean a public host, refused without a lookup: special-use
# and private-use top-level domains (RFC 6761, 6762, 8375, ICANN's .internal).
_LOCAL_SUFFIXES = (
    ".localhost",
    ".local",
    ".invalid",
    ".test",
    ".example",
    ".internal",
    ".lan",
    ".home.arpa",
    ".localdomain",
)
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedUrl(Exception):
    """The URL may not be a webhook endpoint; the message says why (for the merchant)."""


def check_url(url: str, allow_http: bool = False) -> tuple[str, int]:
    """The URL's shape: (host, port), or RefusedUrl."""
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL_LENGTH:
        raise RefusedUrl(f"must be a URL of at most {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise RefusedUrl("must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedUrl("is not a valid URL") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise RefusedUrl("must be an https:// URL")
    if not parts.hostname:
        raise RefusedUrl("must name a host")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("must not carry credentials")
    if parts.fragment:
        raise RefusedUrl("must not have a #fragment")
    host = parts.hostname
    if not _is_ip_literal(host):
        name = host.rstrip(".")
        if "." + name in _LOCAL_SUFFIXES or name.endswith(_LOCAL_SUFFIXES):
            raise RefusedUrl(f"its host {host} is a local or special-use name")
        labels = name.split(".")
        if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels):
            raise RefusedUrl(f"its host {host} is not a public DNS name")
    return host, port or (443 if parts.scheme == "https" else 80)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refusal(address: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why this address may not be reached, or None if it may."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed):
        return None
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return f"resolves to {ip}, which is not a public address"
    return None


async def resolve_public(
    host: str, port: int, allowed: Sequence[Network] = ()
) -> list[tuple[int, str, int]]:
    """Every address of host (family, address, port); RefusedUrl if it has
    none or any of them is not public (one bad address refuses the name)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RefusedUrl(f"its host {host} does not resolve") from None
    found = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        why = refusal(sockaddr[0], allowed)
        if why is not None:
            raise RefusedUrl(f"its host {host} {why}")
        found.append((family, sockaddr[0], sockaddr[1]))
    if not found:
        raise RefusedUrl(f"its host {host} has no IPv4 or IPv6 address")
    return found


async def check_endpoint(url: str, allow_http: bool, allowed: Sequence[Network]) -> None:
    host, port = check_url(url, allow_http)
    await resolve_public(host, port, allowed)


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for deliveries: the addresses it connects to are
    the ones just checked (no second lookup an attacker's DNS could answer
    differently). aiohttp does not resolve IP literals; resolve_public is
    called for those before the request (delivery.py)."""

    def __init__(self, allowed: Sequence[Network] = ()) -> None:
        self._allowed = tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[dict[str, Any]]:
        try:
            found = await resolve_public(host, port, self._allowed)
        except RefusedUrl as exc:
            raise OSError(str(exc)) from None
        return [
            {
                "hostname": host,
                "host": address,
                "port": resolved_port,
                "family": fam,
                "proto": socket.IPPROTO_TCP,
                "flags": socket.AI_NUMERICHOST,
            }
            for fam, address, resolved_port in found
        ]

    async def close(self) -> None:
        return None
