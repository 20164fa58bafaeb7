"""Business metrics are recorded by the HTTP layer from the ledger's plain outcomes."""

from __future__ import annotations

import ast
import inspect
import re

from paycore_ledger import idempotency, ledger, payment_call


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _scrape(merchant) -> str:
    r = await merchant.client.get("/metrics")
    assert r.status == 200
    return await r.text()


async def test_outcomes_are_counted_once_each(merchant):
    await merchant.open_account("GBP")
    series = {
        "paid": ("paycore_payments_total", {"currency": "GBP", "status": "succeeded"}),
        "moved": ("paycore_amount_moved_minor_units_total", {"currency": "GBP", "kind": "payment"}),
        "paid_out": ("paycore_payouts_total", {"currency": "GBP", "status": "succeeded"}),
        "refused": ("paycore_business_refusals_total", {"code": "insufficient_funds"}),
        "replays": ("paycore_idempotent_replays_total", {}),
        "reused": ("paycore_idempotency_conflicts_total", {"reason": "reused"}),
    }
    text = await _scrape(merchant)
    before = {k: _sample(text, n, **labels) for k, (n, labels) in series.items()}

    assert (await merchant.pay(300, "GBP", idem="m-1")).status == 201
    assert (await merchant.pay(300, "GBP", idem="m-1")).status == 201  # replay
    assert (await merchant.pay(301, "GBP", idem="m-1")).code == "idempotency_key_reused"
    assert (await merchant.payout(100, "GBP")).status == 201
    assert (await merchant.payout(10_000, "GBP")).code == "insufficient_funds"

    text = await _scrape(merchant)
    after = {k: _sample(text, n, **labels) for k, (n, labels) in series.items()}
    assert {k: after[k] - before[k] for k in series} == {
        "paid": 1,
        "moved": 300,
        "paid_out": 1,
        "refused": 1,
        "replays": 1,
        "reused": 1,
    }


def test_ledger_modules_do_not_import_metrics():
    for module in (ledger, idempotency, payment_call):
        tree = ast.parse(inspect.getsource(module))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported |= {alias.name for alias in node.names}
        assert not {"metrics", "prometheus_client"} & imported, module.__name__
