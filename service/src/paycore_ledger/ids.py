"""Opaque, type-prefixed identifiers."""

import base64
import secrets


def new_id(prefix: str) -> str:
    token = base64.b32encode(secrets.token_bytes(15)).decode().lower()
    return f"{prefix}_{token}"


def entry_public_id(entry_id: int) -> str:
    return f"ent_{entry_id}"


def parse_entry_id(public_id: str) -> int | None:
    prefix, _, number = public_id.partition("_")
    if prefix != "ent" or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


def transaction_public_id(transaction_id: int) -> str:
    return f"txn_{transaction_id}"
