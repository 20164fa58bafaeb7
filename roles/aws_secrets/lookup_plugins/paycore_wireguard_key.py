# Copyright: PayCore engineering
# Apache License 2.0 (see galaxy.yml)
"""A new WireGuard private key, made on the controller."""

from __future__ import annotations

import base64
import secrets

from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: paycore_wireguard_key
short_description: Generate a WireGuard private key on the controller
description:
  - Returns one new Curve25519 private key in WireGuard's format, as C(wg genkey) prints
    it - 32 random bytes from the operating system's CSPRNG, clamped as X25519 requires,
    base64-encoded (44 characters).
  - Made on the controller, in memory only - nothing is written or logged. Pass the value
    straight to a task under C(no_log).
options: {}
"""

EXAMPLES = r"""
- name: Store a new key
  community.aws.secretsmanager_secret:
    name: paycore/wireguard_gateway_private_key
    secret: "{{ lookup('paycore_wireguard_key') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: One base64-encoded WireGuard private key.
  type: list
  elements: str
"""


def wireguard_private_key() -> str:
    key = bytearray(secrets.token_bytes(32))
    # X25519 clamping (RFC 7748), as wg genkey does.
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return base64.b64encode(bytes(key)).decode("ascii")


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [wireguard_private_key()]
