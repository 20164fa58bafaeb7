"""Entry and journal transaction ids do not reveal the platform's volume."""

from __future__ import annotations

import base64

import asyncpg
import pytest
from paycore_ledger.public_ids import PublicIds

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _plain_block(public_id: str) -> int:
    """The 64 bits an id spells, as they would be without the cipher."""
    return int.from_bytes(base64.b32decode(public_id[4:].upper() + "==="), "big")


def test_every_number_maps_back_and_only_its_own_spelling_does():
    ids = PublicIds(bytes(range(32)))
    for number in (1, 2, 41, 2**32 - 1, 2**32, 2**62 + 12345, 2**63 - 1):
        public = ids.encode("ent", number)
        assert len(public) == len("ent_") + 13
        assert ids.decode("ent", public) == number
        assert ids.decode("txn", public.replace("ent_", "txn_")) != number
    public = ids.encode("ent", 7)
    last = public[-1]
    # The 13th character carries one bit too many: its other spelling is not an id.
    twin = public[:-1] + _BASE32[_BASE32.index(last) ^ 1]
    assert ids.decode("ent", twin) is None
    for bad in ("ent_7", "ent_" + "a" * 12, "ent_" + "A" * 13, "txn_" + public[4:], ""):
        assert ids.decode("ent", bad) is None


def test_neighbouring_numbers_give_unrelated_ids_under_each_key():
    ids = PublicIds(bytes(range(32)))
    other = PublicIds(bytes(range(1, 33)))
    first = [ids.encode("ent", n) for n in range(1, 201)]
    assert len(set(first)) == 200
    assert first != sorted(first)  # the order of ids says nothing about the order of rows
    assert ids.encode("ent", 5)[4:] != ids.encode("txn", 5)[4:]
    assert all(ids.encode("ent", n) != other.encode("ent", n) for n in range(1, 201))


async def test_entries_listed_carry_no_row_numbers_and_page_by_them(merchant, owner_conn):
    account = await merchant.open_account("NGN")
    for amount in (1, 2, 3):
        assert (await merchant.pay(amount, "NGN")).status == 201
    page = await merchant.get(f"/v1/accounts/{account}/entries?limit=2")
    entries = page.body["data"]
    numbers = await owner_conn.fetch(
        "SELECT id, transaction_id FROM entries WHERE account_id = $1 ORDER BY id DESC", account
    )
    for entry, row in zip(entries, numbers, strict=False):
        for public, number in (
            (entry["id"], row["id"]),
            (entry["transaction_id"], row["transaction_id"]),
        ):
            assert not public.endswith("_" + str(number))
            assert _plain_block(public) != number
    key = await owner_conn.fetchval("SELECT key FROM public_id_key")
    ids = PublicIds(bytes(key))
    assert [ids.decode("ent", e["id"]) for e in entries] == [r["id"] for r in numbers[:2]]
    rest = await merchant.get(
        f"/v1/accounts/{account}/entries?limit=2&starting_after={entries[-1]['id']}"
    )
    assert [e["amount"] for e in rest.body["data"]] == [1]


@pytest.mark.parametrize(
    "runtime_write", ["UPDATE public_id_key SET key = key", "DELETE FROM public_id_key"]
)
async def test_the_key_is_made_once_and_the_runtime_role_cannot_change_it(
    database, owner_conn, runtime_write
):
    assert await owner_conn.fetchval("SELECT count(*) FROM public_id_key") == 1
    assert len(await owner_conn.fetchval("SELECT key FROM public_id_key")) == 32
    if database.app_url == database.owner_url:
        pytest.skip("PAYCORE_TEST_DATABASE_URL without PAYCORE_TEST_APP_DATABASE_URL: one role")
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(runtime_write)
    finally:
        await conn.close()
