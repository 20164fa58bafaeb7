"""Request body parsing and field validation (400 malformed or too deep, 413 too big,
415 not JSON, 422 per field)."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from .currencies import MAX_AMOUNT_ANY_CURRENCY, max_amount
from .problems import Problem, field_error

MAX_BODY_BYTES = 1024 * 1024
MAX_DESCRIPTION = 1000
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
# Nested objects and arrays a body may hold, the body itself counting as one.
# The API's own bodies need 2 (metadata); the cap keeps every walk of a body
# (here, and json's encoder for the fingerprint) far from any recursion limit.
MAX_JSON_DEPTH = 32
JSON_MEDIA_TYPE = "application/json"
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
LIMIT_RE = re.compile(r"[0-9]{1,4}")  # fullmatch; ASCII only: str.isdigit() also takes "²"
# What PostgreSQL cannot store in text or jsonb: NUL, and lone UTF-16 surrogates
# (valid JSON escapes that are not Unicode characters; they cannot be encoded).
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_raw(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    if len(raw) > MAX_BODY_BYTES:
        raise too_large()
    return raw


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await read_raw(request)
    if raw:
        check_media_type(request)
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise too_deep() from None
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "malformed_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise field_error("body", "must be a JSON object")
    check_depth(body)
    reject_unstorable(body)
    return body


def check_media_type(request: web.Request) -> None:
    """415 unless a body says it is JSON in UTF-8 (`application/json`, an optional
    `charset=utf-8`). A missing Content-Type is refused too: a body of unknown
    type is not taken for JSON (nor is a form or text/plain a browser may send
    across origins without asking)."""
    declared = request.headers.get("Content-Type")
    charset = (request.charset or "utf-8").lower()
    if (
        declared is None
        or request.content_type.lower() != JSON_MEDIA_TYPE
        or charset not in ("utf-8", "utf8")
    ):
        raise Problem(
            415,
            "unsupported_media_type",
            "the request body must be JSON: Content-Type: application/json (UTF-8)",
            headers={"Accept-Post": JSON_MEDIA_TYPE},
        )


def too_deep() -> Problem:
    return Problem(
        400,
        "json_too_deep",
        f"the request body nests objects or arrays more than {MAX_JSON_DEPTH} levels deep",
    )


def check_depth(body: dict[str, Any]) -> None:
    """400 if objects and arrays nest deeper than MAX_JSON_DEPTH. Walks level by
    level, without recursion, so no depth json.loads accepts can exhaust the
    stack (on Python 3.12+ json.loads accepts more levels than a recursive walk
    in Python may take)."""
    level: list[dict | list] = [body]
    depth = 1
    while level:
        if depth > MAX_JSON_DEPTH:
            raise too_deep()
        inner: list[dict | list] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            inner.extend(item for item in items if isinstance(item, dict | list))
        level = inner
        depth += 1


def reject_unstorable(body: dict[str, Any]) -> None:
    """422 naming the field for any string (name or value) holding NUL or a lone
    surrogate. Iterative, like check_depth."""
    for name in body:
        if _UNSTORABLE_RE.search(name):
            raise field_error("body", "field names must not contain NUL or lone surrogates")
    pending = [(name, value) for name, value in reversed(body.items())]
    while pending:
        field, value = pending.pop()
        if isinstance(value, str):
            if _UNSTORABLE_RE.search(value):
                raise field_error(field, "must not contain NUL characters or lone surrogates")
        elif isinstance(value, dict):
            for key in value:
                if _UNSTORABLE_RE.search(key):
                    raise field_error(field, "keys must not contain NUL or lone surrogates")
            pending.extend((f"{field}.{key}", item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((field, item) for item in reversed(value))


def too_large() -> Problem:
    return Problem(413, "payload_too_large", f"the request body exceeds {MAX_BODY_BYTES} bytes")


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise field_error(name, "unknown field")


def amount(body: dict[str, Any], currency: str | None = None) -> int:
    """The amount in minor units, 1 to the currency's limit (currencies.max_amount;
    with no currency, the largest of any currency)."""
    if "amount" not in body:
        raise field_error("amount", "is required")
    value = body["amount"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error("amount", "must be an integer count of minor units")
    maximum = max_amount(currency) if currency else MAX_AMOUNT_ANY_CURRENCY
    if not 0 < value <= maximum:
        unit = f" {currency} minor units" if currency else ""
        raise field_error("amount", f"must be between 1 and {maximum}{unit}")
    return value


def currency_code(body: dict[str, Any]) -> str:
    """The body's `currency`, an upper-case ISO 4217 code (accepted or not)."""
    if "currency" not in body:
        raise field_error("currency", "is required")
    value = body["currency"]
    if not isinstance(value, str) or not CURRENCY_RE.match(value):
        raise field_error("currency", "must be an upper-case ISO 4217 code")
    return value


def unsupported_currency(value: str, supported: tuple[str, ...]) -> Problem | None:
    """The refusal of a currency the settings do not accept, or None."""
    if value in supported:
        return None
    return field_error(
        "currency",
        f"is not supported (supported: {', '.join(supported)})",
        code="currency_not_supported",
    )


def currency(body: dict[str, Any], supported: tuple[str, ...]) -> str:
    value = currency_code(body)
    refusal = unsupported_currency(value, supported)
    if refusal is not None:
        raise refusal
    return value


def description(body: dict[str, Any]) -> str | None:
    value = body.get("description")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise field_error(
            "description", f"must be a string of at most {MAX_DESCRIPTION} characters"
        )
    return value


def metadata(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise field_error("metadata", f"must be an object with at most {MAX_METADATA_KEYS} keys")
    for key, item in value.items():
        if not 0 < len(key) <= MAX_METADATA_KEY:
            raise field_error("metadata", f"keys must be 1 to {MAX_METADATA_KEY} characters")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise field_error(
                f"metadata.{key}", f"must be a string of at most {MAX_METADATA_VALUE} characters"
            )
    return value


def idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise Problem(
            400, "idempotency_key_missing", "this request requires an Idempotency-Key header"
        )
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise Problem(
            400,
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )
    return key


def limit(request: web.Request, default: int = 20, maximum: int = 100) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise field_error("limit", f"must be an integer between 1 and {maximum}")
    return int(raw)
