"""Request bodies the payments review found (issue 18): nesting deep enough to
exhaust a recursive walk, and bodies that do not say they are JSON. Each is a
4xx problem, never a 500, and nothing is stored."""

from __future__ import annotations

import json
import uuid

import pytest
from paycore_ledger import validation
from paycore_ledger.problems import Problem
from paycore_ledger.validation import MAX_JSON_DEPTH
from test_api import assert_problem


def nested_metadata(levels: int, *, array: bool = False) -> str:
    """A payment body whose `metadata` holds `levels` nested objects (or arrays),
    so the body is levels + 1 deep; built as text (json.dumps would recurse)."""
    opening, closing = ("[", "]") if array else ('{"a":', "}")
    inner = opening * levels + '"x"' + closing * levels
    return '{"amount": 10, "currency": "NGN", "metadata": ' + inner + "}"


def nested_value(levels: int) -> list:
    """`levels` nested lists, built without recursion."""
    value: list = ["x"]
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, 100, 1000, 1150, 1300, 20_000])
@pytest.mark.parametrize("array", [False, True], ids=["objects", "arrays"])
async def test_deeply_nested_bodies_are_400_not_500(merchant, levels, array):
    """1 000 to 1 300 levels pass json.loads on Python 3.12+ and exhausted the
    recursive walk that followed it (RecursionError, 500); deeper ones make
    json.loads itself give up."""
    account = await merchant.open_account()
    r = await merchant.post("/v1/payments", raw=nested_metadata(levels, array=array))
    assert_problem(r, 400, "json_too_deep")
    assert str(MAX_JSON_DEPTH) in r.body["detail"]
    assert await merchant.balance(account) == 0


@pytest.mark.parametrize(
    ("array", "field"), [(False, "metadata.a"), (True, "metadata")], ids=["objects", "arrays"]
)
async def test_nesting_up_to_the_cap_reaches_field_validation(merchant, array, field):
    """A body MAX_JSON_DEPTH deep is not refused for its depth: its fields are
    judged (metadata must be a flat object of strings: 422)."""
    r = await merchant.post("/v1/payments", raw=nested_metadata(MAX_JSON_DEPTH - 1, array=array))
    assert_problem(r, 422, "validation_error")
    assert r.body["field"] == field


async def test_deep_bodies_on_every_body_route(merchant):
    await merchant.open_account()
    paid = (await merchant.pay(100)).body
    deep = "[" * 1200 + "]" * 1200
    for path in ("/v1/accounts", "/v1/payouts", f"/v1/payments/{paid['id']}/refunds"):
        raw = '{"amount": 1, "currency": "NGN", "x": ' + deep + "}"
        assert_problem(await merchant.post(path, raw=raw), 400, "json_too_deep")


def test_the_checks_do_not_recurse():
    """Values nested far past any recursion limit (as a future parser might
    return them): the depth check refuses them and the string check walks
    them, neither raising RecursionError."""
    deep = nested_value(200_000)
    with pytest.raises(Problem) as refused:
        validation.check_depth({"metadata": deep})
    assert refused.value.status == 400 and refused.value.code == "json_too_deep"
    validation.reject_unstorable({"metadata": deep})
    deep_bad = nested_value(200_000)
    innermost = deep_bad
    while isinstance(innermost[0], list):
        innermost = innermost[0]
    innermost[0] = "nul\x00"
    with pytest.raises(Problem) as refused:
        validation.reject_unstorable({"metadata": deep_bad})
    assert refused.value.status == 422 and refused.value.extra["field"] == "metadata"


# ---- Content-Type ----------------------------------------------------------------------

WRONG_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/jsonx",
    "text/json",
    "application/json; charset=latin-1",
    None,  # no Content-Type at all
]


@pytest.mark.parametrize("content_type", WRONG_TYPES)
async def test_a_body_that_is_not_declared_json_is_415(client, merchant, content_type):
    account = await merchant.open_account()
    paid = (await merchant.pay(100)).body
    for path, body in (
        ("/v1/payments", {"amount": 10, "currency": "NGN"}),
        ("/v1/payouts", {"amount": 10, "currency": "NGN"}),
        (f"/v1/payments/{paid['id']}/refunds", {"amount": 10}),
        ("/v1/accounts", {"currency": "USD"}),
    ):
        headers = merchant.headers(uuid.uuid4().hex)
        if content_type is not None:
            headers["Content-Type"] = content_type
        # aiohttp's client adds application/octet-stream to bytes with no type;
        # skip_auto_headers keeps the request without any.
        r = await client.post(
            path,
            data=json.dumps(body).encode(),
            headers=headers,
            skip_auto_headers={"Content-Type"},
        )
        assert r.status == 415, (path, content_type, await r.text())
        assert r.headers["Content-Type"].startswith("application/problem+json")
        problem = await r.json()
        assert problem["code"] == "unsupported_media_type" and problem["status"] == 415
        assert r.headers["Accept-Post"] == "application/json"
    assert await merchant.balance(account) == 100
    r = await merchant.get("/v1/accounts")
    assert [a["currency"] for a in r.body["data"]] == ["NGN"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
    ],
)
async def test_json_content_types_are_accepted(merchant, content_type):
    await merchant.open_account()
    r = await merchant.post(
        "/v1/payments",
        {"amount": 10, "currency": "NGN"},
        headers={"Content-Type": content_type},
    )
    assert r.status == 201, r.body


async def test_wrong_key_is_401_before_the_content_type(client):
    headers = {"Authorization": "Bearer pck_" + "z" * 40, "Idempotency-Key": "k"}
    for path in ("/v1/payments", "/v1/payouts", "/v1/accounts"):
        r = await client.post(
            path, data=b"amount=10", headers={**headers, "Content-Type": "text/plain"}
        )
        assert r.status == 401 and (await r.json())["code"] == "unauthorized"


async def test_an_empty_body_is_judged_as_json_whatever_its_type(client, merchant):
    """No body: nothing to mistake for JSON; the answer is the usual 400."""
    r = await client.post(
        "/v1/payments",
        headers={**merchant.headers("empty"), "Content-Type": "text/plain"},
    )
    assert r.status == 400 and (await r.json())["code"] == "malformed_json"
