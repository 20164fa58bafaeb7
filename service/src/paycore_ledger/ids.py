"""Opaque, type-prefixed identifiers."""

import re
import secrets
import time

# Ids this service hands out: a type prefix, "_", then ASCII letters, digits and
# "_" (new_id uses lower-case base32; system accounts are acct_sys_ngn_00).
# Anything else in a path cannot name an object, so it is simply not found.
_ID_RE = re.compile(r"[a-z]{1,8}_[A-Za-z0-9_]{1,64}")


# The 32 characters of lower-case base32, in ASCII order, so that ids sort as
# their numbers do. Each random byte maps to one of them (256 = 8 x 32, so
# uniformly), in one C call (bytes.translate) instead of a Python loop.
_ALPHABET = b"234567abcdefghijklmnopqrstuvwxyz"
_TO_BASE32 = bytes(_ALPHABET[b % 32] for b in range(256))
_TIME_SHIFTS = range(45, -1, -5)  # 10 characters, 50 bits


def new_id(prefix: str) -> str:
    """prefix_ + the time in ms (10 characters) + 70 random bits (14).

    Time first, so that a new row lands at the right edge of its primary key's
    index, and of the journal's (kind, source_id) index, as a sequence number
    would: a random id writes to a random leaf page, and the first write to a
    page after each checkpoint puts the whole page in the WAL (3.4 kB of WAL
    per payment, service/README.md). The time is no secret (the object's
    created_at says it); the volume stays hidden behind the random part.
    """
    ms = time.time_ns() // 1_000_000
    head = bytes(_ALPHABET[(ms >> shift) & 31] for shift in _TIME_SHIFTS)
    return prefix + "_" + (head + secrets.token_bytes(14).translate(_TO_BASE32)).decode()


def valid_id(prefix: str, value: str) -> bool:
    """Whether `value` has the shape of an id of this type (it may still not exist)."""
    return value.startswith(prefix + "_") and _ID_RE.fullmatch(value) is not None
