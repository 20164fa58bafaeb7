"""Opaque, type-prefixed identifiers."""

import re
import secrets

# Ids this service hands out: a type prefix, "_", then ASCII letters, digits and
# "_" (new_id uses lower-case base32; system accounts are acct_sys_ngn_00).
# Anything else in a path cannot name an object, so it is simply not found.
_ID_RE = re.compile(r"[a-z]{1,8}_[A-Za-z0-9_]{1,64}")


# Each random byte maps to one of 32 characters (256 = 8 x 32, so uniformly):
# 24 characters carry 120 random bits, in base32's lower-case alphabet, as the
# base64.b32encode of 15 bytes did, in one C call instead of a Python loop.
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz234567"
_TO_BASE32 = bytes(_ALPHABET[b % 32] for b in range(256))


def new_id(prefix: str) -> str:
    return prefix + "_" + secrets.token_bytes(24).translate(_TO_BASE32).decode()


def valid_id(prefix: str, value: str) -> bool:
    """Whether `value` has the shape of an id of this type (it may still not exist)."""
    return value.startswith(prefix + "_") and _ID_RE.fullmatch(value) is not None
