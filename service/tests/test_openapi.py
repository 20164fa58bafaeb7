"""The OpenAPI document is valid, complete, and the live API honours it (schemathesis)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env
from openapi_spec_validator import validate
from paycore_ledger.app import create_app
from paycore_ledger.openapi import document

CONTRACT = {
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts"),
    ("get", "/v1/accounts/{id}"),
    ("get", "/v1/accounts/{id}/entries"),
    ("post", "/v1/payments"),
    ("get", "/v1/payments"),
    ("get", "/v1/refunds"),
    ("get", "/v1/payouts"),
    ("get", "/v1/payments/{id}/refunds"),
    ("get", "/v1/payments/{id}"),
    ("post", "/v1/payments/{id}/refunds"),
    ("post", "/v1/payouts"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
}


def _documented() -> set[tuple[str, str]]:
    return {(m, path) for path, item in document()["paths"].items() for m in item}


def test_document_is_valid_openapi():
    validate(document())


def test_document_covers_the_contract_and_every_route(settings):
    documented = _documented()
    assert documented >= CONTRACT
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in create_app(settings).router.routes()
        if route.method != "HEAD"
    }
    assert routed == documented


def test_money_posts_require_idempotency_key_and_auth():
    doc = document()
    for method, path in _documented():
        op = doc["paths"][path][method]
        if method == "post" and path != "/v1/accounts":
            names = {p["name"] for p in op["parameters"]}
            assert "Idempotency-Key" in names, path
            assert {"201", "400", "401", "409", "413", "415", "422", "503"} <= set(op["responses"])
        if path.startswith("/v1/"):
            assert op.get("security", doc["security"]) == [{"bearer": []}]


async def test_served_document_matches(client):
    r = await client.get("/openapi.json")
    assert await r.json() == document()


def test_schemathesis_finds_no_server_errors(serve, new_merchant_sync, tmp_path, database):
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        st = Path(shutil.which("st") or "st")
    key = new_merchant_sync()
    # A budget the fuzzing does not exhaust, so its requests reach the handlers.
    limits = {"PAYCORE_RATE_LIMIT_PER_SECOND": "100000", "PAYCORE_RATE_LIMIT_BURST": "100000"}
    server = serve("--workers", "1", env=cli_env(database.app_url, **limits))
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{server.base}/openapi.json",
            "--checks",
            "all",
            # Business refusals (insufficient_funds, a reused key) are correct
            # answers to schema-valid requests.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "20",
            "--seed",
            "20261128",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-database",
            "none",
            "--header",
            f"Authorization: Bearer {key}",
            "--request-timeout",
            "10",
            "--report-dir",
            str(tmp_path),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert '"unhandled error"' not in server.output()


@pytest.fixture
def new_merchant_sync(database):
    import asyncio
    import uuid

    import asyncpg
    from ledger_setup import new_merchant_account
    from paycore_ledger import ledger

    def make() -> str:
        async def go() -> str:
            conn = await asyncpg.connect(database.owner_url)
            try:
                # An account with money in it, so generated payouts reach the ledger.
                async with conn.transaction():
                    await ledger.ensure_system_accounts(conn, "NGN")
                    created, account = await new_merchant_account(
                        conn, f"st-{uuid.uuid4().hex[:10]}"
                    )
                    seed = "pay_st_" + uuid.uuid4().hex[:12]
                    await ledger.post(
                        conn,
                        kind="payment",
                        source_id=seed,
                        currency="NGN",
                        merchant_account=account,
                        merchant_direction="credit",
                        amount=10**9,
                    )
                    # The payment the posting belongs to, as reconcile expects.
                    await conn.execute(
                        "INSERT INTO payments (id, merchant_id, account_id, amount, currency,"
                        " status, transaction_id)"
                        " SELECT $1, $2, $3, $4, 'NGN', 'succeeded', id"
                        "   FROM journal_transactions WHERE kind = 'payment' AND source_id = $1",
                        seed,
                        created["merchant_id"],
                        account,
                        10**9,
                    )
                return created["api_key"]
            finally:
                await conn.close()

        return asyncio.run(go())

    return make


API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
_ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/\S*)` \|.*\| (\d{3})\b[^|]*\|$")


def test_api_doc_lists_exactly_the_documented_operations():
    """docs/api.md, the human-readable contract, lists every path and method of
    the OpenAPI document and nothing else, each with a success status the
    document also gives."""
    rows = [m.groups() for line in API_DOC.read_text().splitlines() if (m := _ROW.match(line))]
    listed = {(method.lower(), path) for method, path, _ in rows}
    assert len(listed) == len(rows), "an operation is listed twice"
    assert listed == _documented()
    doc = document()
    for method, path, status in rows:
        assert status in doc["paths"][path][method.lower()]["responses"], (method, path)
