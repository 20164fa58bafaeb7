"""Object ids: opaque, and each new one sorts after those made before it, so
that a new row lands at the right edge of its index (ids.py)."""

from __future__ import annotations

import asyncio
import re
import time

from paycore_ledger.ids import new_id, valid_id

_SHAPE = re.compile(r"pay_[2-7a-z]{24}")


def test_ids_made_a_millisecond_apart_sort_in_the_order_they_were_made():
    made = []
    for _ in range(20):
        made.append(new_id("pay"))
        time.sleep(0.0011)
    assert made == sorted(made)
    assert all(_SHAPE.fullmatch(i) and valid_id("pay", i) for i in made)


def test_ids_of_the_same_millisecond_differ_in_their_random_part():
    burst = [new_id("pay") for _ in range(1000)]
    assert len(set(burst)) == 1000
    assert len({i[-14:] for i in burst}) == 1000


async def test_payments_are_in_creation_order_in_the_databases_index(merchant, owner_conn):
    await merchant.open_account("NGN")
    made = []
    for amount in range(1, 8):
        answer = await merchant.pay(amount, "NGN")
        assert answer.status == 201
        made.append(answer.body["id"])
        await asyncio.sleep(0.0011)
    # The database's collation orders them as Python does.
    in_index = await owner_conn.fetch(
        "SELECT id FROM payments WHERE id = ANY ($1::text[]) ORDER BY id", made
    )
    assert [row["id"] for row in in_index] == made
