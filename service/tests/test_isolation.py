"""Tenant isolation: another merchant's id answers 404 exactly like an unknown id."""

from __future__ import annotations


async def test_every_endpoint_hides_other_merchants_objects(new_merchant):
    owner, other = await new_merchant("owner"), await new_merchant("other")
    account = await owner.open_account()
    await other.open_account()
    payment = (await owner.pay(1000)).body
    refund = (await owner.refund(payment["id"], 100)).body
    payout = (await owner.payout(100)).body
    entries = (await owner.get(f"/v1/accounts/{account}/entries")).body["data"]

    for path in (
        f"/v1/accounts/{account}",
        f"/v1/accounts/{account}/entries",
        f"/v1/payments/{payment['id']}",
        f"/v1/refunds/{refund['id']}",
        f"/v1/payouts/{payout['id']}",
    ):
        theirs = await other.get(path)
        unknown = await other.get(path.replace("_", "_zz", 1))
        assert theirs.status == unknown.status == 404, path
        assert theirs.body["code"] == unknown.body["code"] == "not_found"
        assert (await owner.get(path)).status == 200

    r = await other.refund(payment["id"], 1)
    assert r.status == 404 and r.code == "not_found"
    listing = await other.get("/v1/accounts")
    assert account not in {a["id"] for a in listing.body["data"]}
    # An entry id of another account does not work as a cursor either.
    own_account = listing.body["data"][0]["id"]
    cursor = await other.get(
        f"/v1/accounts/{own_account}/entries?starting_after={entries[0]['id']}"
    )
    assert cursor.status == 422
    # Payouts and payments act on the caller's own account only.
    assert (await other.payout(1)).code == "insufficient_funds"
    assert await owner.balance(account) == 800
