"""The Paycore-Signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256>` of
"<t>.<body>" under the endpoint's secret. Receivers verify it as
docs/webhooks.md shows (verify() here is that code)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Paycore-Signature"
DEFAULT_TOLERANCE_S = 300  # the replay window the docs recommend


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify(
    secret: str,
    body: bytes,
    header_value: str,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether the header signs this body under this secret within the window."""
    parts = [item.partition("=") for item in header_value.split(",")]
    timestamps = [value for key, _, value in parts if key == "t"]
    candidates = [value for key, _, value in parts if key == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not candidates:
        return False
    t = int(timestamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
