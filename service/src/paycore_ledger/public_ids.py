"""Opaque public ids for entries and journal transactions.

Their rows are numbered by sequences; handing the numbers out would let any
merchant read the platform's volume off two ids a day apart. Each number is
instead enciphered with a keyed 64-bit permutation (a four-round Feistel
network over BLAKE2b, keyed by sql/0013's key, one per ledger database): ids
stay short and map back to their row without a lookup column. The prefix is
part of the cipher's tweak: ent_ and txn_ ids of one number are unrelated.
"""

from __future__ import annotations

import base64
import hashlib
import re

import asyncpg

_ROUNDS = 4
_MASK32 = 0xFFFFFFFF
_PUBLIC_RE = re.compile(r"[a-z]{3}_[a-z2-7]{13}")  # 64 bits in 13 base32 characters


class PublicIds:
    """The cipher under one database's key; load() reads the key once."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    async def load(self, conn: asyncpg.Connection) -> PublicIds:
        if self._key is None:
            self._key = bytes(await conn.fetchval("SELECT key FROM public_id_key"))
        return self

    def encode(self, prefix: str, number: int) -> str:
        left, right = number >> 32, number & _MASK32
        for round_ in range(_ROUNDS):
            left, right = right, left ^ self._round(prefix, round_, right)
        block = ((left << 32) | right).to_bytes(8, "big")
        return prefix + "_" + base64.b32encode(block).decode().rstrip("=").lower()

    def decode(self, prefix: str, public_id: str) -> int | None:
        """The number behind an id this cipher made, else None."""
        if not public_id.startswith(prefix + "_") or not _PUBLIC_RE.fullmatch(public_id):
            return None
        block = base64.b32decode(public_id[len(prefix) + 1 :].upper() + "===")
        value = int.from_bytes(block, "big")
        left, right = value >> 32, value & _MASK32
        for round_ in reversed(range(_ROUNDS)):
            left, right = right ^ self._round(prefix, round_, left), left
        number = (left << 32) | right
        # 13 characters carry 65 bits: only the spelling encode() gives is an id.
        if number >= 1 << 63 or self.encode(prefix, number) != public_id:
            return None
        return number

    def _round(self, prefix: str, round_: int, half: int) -> int:
        tweak = prefix.encode() + bytes((round_,)) + half.to_bytes(4, "big")
        digest = hashlib.blake2b(tweak, key=self._key, digest_size=4).digest()
        return int.from_bytes(digest, "big")
