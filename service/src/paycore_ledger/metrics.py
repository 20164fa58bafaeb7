"""Prometheus metrics. Import only after PROMETHEUS_MULTIPROC_DIR is settled (see server.py).

Names are a public interface (alerts and dashboards use them); see README.md.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
PAYMENTS = Counter("paycore_payments_total", "Payments created", ["currency", "status"])
REFUNDS = Counter("paycore_refunds_total", "Refunds created", ["currency", "status"])
PAYOUTS = Counter("paycore_payouts_total", "Payouts created", ["currency", "status"])
AMOUNT_MOVED = Counter(
    "paycore_amount_moved_minor_units_total",
    "Money moved through the ledger, in minor units",
    ["currency", "kind"],
)
BUSINESS_REFUSALS = Counter(
    "paycore_business_refusals_total", "Requests refused by business rules (422)", ["code"]
)
IDEMPOTENT_REPLAYS = Counter(
    "paycore_idempotent_replays_total", "Requests answered from a stored idempotent response"
)
IDEMPOTENCY_CONFLICTS = Counter(
    "paycore_idempotency_conflicts_total",
    "Idempotency-Key conflicts (reused with another request, or in use)",
    ["reason"],
)
DB_UNAVAILABLE = Counter(
    "paycore_db_unavailable_total", "Requests answered 503 because the database was unreachable"
)
DB_POOL_SIZE = Gauge(
    "paycore_db_pool_connections", "Open database connections", multiprocess_mode="livesum"
)
DB_POOL_IN_USE = Gauge(
    "paycore_db_pool_connections_in_use",
    "Database connections checked out",
    multiprocess_mode="livesum",
)
DB_POOL_MAX = Gauge(
    "paycore_db_pool_max_connections",
    "Configured maximum database connections",
    multiprocess_mode="livesum",
)
# The webhook delivery worker's own (webhooks/delivery.py; its metrics port).
WEBHOOK_ATTEMPTS = Counter(
    "paycore_webhook_attempts_total",
    "Webhook delivery attempts by outcome (success, http_error, refused, error)",
    ["outcome"],
)
WEBHOOK_ATTEMPT_DURATION = Histogram(
    "paycore_webhook_attempt_duration_seconds",
    "Duration of webhook delivery attempts",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# Statuses that come in bursts. A series that first appears with a burst
# already counted has no earlier sample, so rate() cannot see that burst: an
# outage's first 503s or a merchant's first 429s would escape the SLO ratios.
# Each /v1 route starts with these at 0 instead.
BURST_STATUSES = ("429", "500", "503")
# An endpoint counts as failing after this many failed attempts in a row.
FAILING_ENDPOINT_AFTER = 3


@functools.cache
def child(metric, *labels: str):
    """metric.labels(*labels), remembered: the hot path skips the label lock and checks."""
    return metric.labels(*labels)


def start_request_series(routes) -> None:
    """Export 0 for each (method, route) and BURST_STATUSES before any request."""
    for method, route in routes:
        for status in BURST_STATUSES:
            child(HTTP_REQUESTS, method, route, status)
            child(HTTP_DURATION, method, route, status)


_CREATED = {"payment": PAYMENTS, "refund": REFUNDS, "payout": PAYOUTS}
_CONFLICTS = {"idempotency_key_reused": "reused", "idempotency_key_in_use": "in_use"}


def record_created(kind: str, currency: str, status: str, amount: int) -> None:
    """A committed payment/refund/payout; money moved only if it succeeded."""
    child(_CREATED[kind], currency, status).inc()
    if status == "succeeded":
        child(AMOUNT_MOVED, currency, kind).inc(amount)


def record_refusal(code: str) -> None:
    """A committed (stored) business refusal."""
    child(BUSINESS_REFUSALS, code).inc()


def record_problem(code: str) -> None:
    """A problem answer; counts the Idempotency-Key conflicts among them."""
    reason = _CONFLICTS.get(code)
    if reason is not None:
        child(IDEMPOTENCY_CONFLICTS, reason).inc()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(extra_lines: list[str]) -> tuple[bytes, str]:
    """Text exposition; aggregated over worker processes in multiprocess mode."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        output = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        output = generate_latest(REGISTRY)
    if extra_lines:
        output += ("\n".join(extra_lines) + "\n").encode()
    return output, CONTENT_TYPE_LATEST


def reconcile_lines(row) -> list[str]:
    """Gauges for the last recorded reconcile run (read from the database at scrape)."""
    if row is None:
        return []
    return [
        "# HELP paycore_reconcile_ok 1 if the last reconcile run found the ledger consistent",
        "# TYPE paycore_reconcile_ok gauge",
        f"paycore_reconcile_ok {1 if row['ok'] else 0}",
        "# HELP paycore_reconcile_problems Problems found by the last reconcile run",
        "# TYPE paycore_reconcile_problems gauge",
        f"paycore_reconcile_problems {row['problems']}",
        "# HELP paycore_reconcile_last_run_timestamp_seconds When reconcile last ran",
        "# TYPE paycore_reconcile_last_run_timestamp_seconds gauge",
        f"paycore_reconcile_last_run_timestamp_seconds {row['ran_at'].timestamp():.3f}",
    ]


WEBHOOK_BACKLOG_SQL = """
SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending') AS pending,
       (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
          FROM webhook_deliveries WHERE state = 'pending') AS oldest_age,
       (SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
          FROM webhook_deliveries
         WHERE state = 'pending' AND next_attempt_at <= now()) AS oldest_due_age,
       (SELECT count(*) FROM webhook_endpoints
         WHERE consecutive_failures >= $1) AS failing
"""


def webhook_lines(row) -> list[str]:
    """Gauges of the webhook backlog (read from the database at scrape, so
    every ledger host reports the same figures: alerts take max())."""
    if row is None:
        return []
    return [
        "# HELP paycore_webhook_deliveries_pending Webhook deliveries not yet delivered or failed",
        "# TYPE paycore_webhook_deliveries_pending gauge",
        f"paycore_webhook_deliveries_pending {row['pending']}",
        "# HELP paycore_webhook_oldest_pending_age_seconds Age of the oldest pending delivery",
        "# TYPE paycore_webhook_oldest_pending_age_seconds gauge",
        f"paycore_webhook_oldest_pending_age_seconds {float(row['oldest_age']):.3f}",
        "# HELP paycore_webhook_oldest_due_age_seconds How long the longest-waiting due"
        " delivery has been due (0: the workers keep up)",
        "# TYPE paycore_webhook_oldest_due_age_seconds gauge",
        f"paycore_webhook_oldest_due_age_seconds {max(0.0, float(row['oldest_due_age'])):.3f}",
        "# HELP paycore_webhook_failing_endpoints Endpoints whose last"
        f" {FAILING_ENDPOINT_AFTER}+ attempts all failed",
        "# TYPE paycore_webhook_failing_endpoints gauge",
        f"paycore_webhook_failing_endpoints {row['failing']}",
    ]
