"""OpenAPI 3.1 document of the public HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from . import __version__
from .currencies import MAX_AMOUNT_ANY_CURRENCY, MAX_MAJOR_UNITS
from .events import EVENTS
from .listing import MAX_UNIX_SECONDS, PAYMENTS, PAYOUTS, REFUNDS
from .validation import (
    MAX_DESCRIPTION,
    MAX_JSON_DEPTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": (
        "The merchant's burst: requests it may send at once (draft-ietf-httpapi-ratelimit-headers)."
        " The budget refills at the merchant's rate per second, shared by every ledger host"
    ),
    "RateLimit-Remaining": "Requests left in the budget after this one",
    "RateLimit-Reset": "Seconds until the whole budget is available again",
}
_AUTH_ERRORS = {
    "401": _problem("Missing or invalid API key (`unauthorized`)"),
    "429": {
        **_problem(
            "The merchant's rate limit is spent (`rate_limited`); nothing was done or stored,"
            " so the same request (same Idempotency-Key) may be sent again after `Retry-After`"
        ),
        "headers": {
            "Retry-After": {
                "description": "Whole seconds until the next request is allowed",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
    "503": _problem(
        "Database unavailable (`database_unavailable`), a query exceeded the statement"
        " timeout (`database_timeout`) or a row lock wait timed out (`ledger_busy`);"
        " all come with `Retry-After` and are safe to retry"
    ),
}
_BODY_ERRORS = {
    "400": _problem(
        "Malformed JSON (`malformed_json`), objects or arrays nested more than"
        f" {MAX_JSON_DEPTH} levels deep (`json_too_deep`), Idempotency-Key problem,"
        " or a value the ledger cannot store (`invalid_input`)"
    ),
    "413": _problem("Body over 1 MiB (`payload_too_large`)"),
    "415": _problem(
        "The body is not declared as `application/json` (UTF-8), or has no"
        " Content-Type (`unsupported_media_type`)"
    ),
    "422": _problem(
        "Invalid field (`validation_error`, names the field; also strings holding NUL or"
        " lone surrogates) or business refusal"
    ),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Unique per merchant and request; replays return the first answer.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
_MONEY_POST_RESPONSES = {
    "409": _problem("A request with this key is still running (`idempotency_key_in_use`)"),
}
_REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer of an earlier request",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
_AMOUNT = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_AMOUNT_ANY_CURRENCY,
    "description": "Minor units of the currency (ISO 4217 exponent), at most"
    f" {MAX_MAJOR_UNITS} major units: 10^12 for a two-decimal currency (USD),"
    " 10^10 for one without decimals (JPY), 10^13 for a three-decimal one (KWD)",
}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["NGN"]}
_TIMESTAMP = {"type": "string", "format": "date-time"}


def _schemas() -> dict[str, Any]:
    return {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "field": {"type": "string"},
            },
        },
        "Account": {
            "type": "object",
            "required": ["id", "object", "currency", "balance", "created_at"],
            "properties": {
                "id": {"type": "string", "pattern": "^acct_"},
                "object": {"const": "account"},
                "currency": _CURRENCY,
                "balance": {"type": "integer", "minimum": 0},
                "created_at": _TIMESTAMP,
            },
        },
        "Entry": {
            "type": "object",
            "required": [
                "id",
                "object",
                "account_id",
                "transaction_id",
                "direction",
                "amount",
                "currency",
                "kind",
                "source_id",
                "created_at",
            ],
            "properties": {
                "id": {"type": "string", "pattern": "^ent_[a-z2-7]{13}$"},
                "object": {"const": "entry"},
                "account_id": {"type": "string"},
                "transaction_id": {"type": "string", "pattern": "^txn_[a-z2-7]{13}$"},
                "direction": {"enum": ["debit", "credit"]},
                "amount": {"type": "integer", "minimum": 1},
                "currency": _CURRENCY,
                "kind": {"enum": ["payment", "refund", "payout"]},
                "source_id": {"type": "string"},
                "created_at": _TIMESTAMP,
            },
        },
        "Payment": {
            "type": "object",
            "required": [
                "id",
                "object",
                "account_id",
                "amount",
                "currency",
                "status",
                "amount_refunded",
                "description",
                "metadata",
                "created_at",
            ],
            "properties": {
                "id": {"type": "string", "pattern": "^pay_"},
                "object": {"const": "payment"},
                "account_id": {"type": "string"},
                "amount": _AMOUNT,
                "currency": _CURRENCY,
                "status": {"enum": ["succeeded", "requires_review", "rejected"]},
                "amount_refunded": {"type": "integer", "minimum": 0},
                "description": {"type": ["string", "null"]},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "created_at": _TIMESTAMP,
            },
        },
        "Refund": {
            "type": "object",
            "required": [
                "id",
                "object",
                "payment_id",
                "amount",
                "currency",
                "status",
                "created_at",
            ],
            "properties": {
                "id": {"type": "string", "pattern": "^re_"},
                "object": {"const": "refund"},
                "payment_id": {"type": "string"},
                "amount": _AMOUNT,
                "currency": _CURRENCY,
                "status": {"enum": ["succeeded"]},
                "created_at": _TIMESTAMP,
            },
        },
        "Payout": {
            "type": "object",
            "required": [
                "id",
                "object",
                "account_id",
                "amount",
                "currency",
                "status",
                "created_at",
            ],
            "properties": {
                "id": {"type": "string", "pattern": "^po_"},
                "object": {"const": "payout"},
                "account_id": {"type": "string"},
                "amount": _AMOUNT,
                "currency": _CURRENCY,
                "status": {"enum": ["succeeded"]},
                "created_at": _TIMESTAMP,
            },
        },
        "Event": {
            "type": "object",
            "required": ["id", "object", "type", "created_at", "data"],
            "description": "A state change. Of two events of one object, the later state has"
            " the later created_at: a receiver applies an event only if it is newer than the"
            " last one it applied for that object (docs/webhooks.md).",
            "properties": {
                "id": {"type": "string", "pattern": "^evt_"},
                "object": {"const": "event"},
                "type": {"enum": list(EVENTS.statuses)},
                "created_at": _TIMESTAMP,
                "data": {
                    "type": "object",
                    "required": ["object"],
                    "properties": {
                        "object": {
                            "oneOf": [_ref("Payment"), _ref("Refund"), _ref("Payout")],
                            "description": "The object as it was just after the change",
                        }
                    },
                },
            },
        },
        "WebhookEndpoint": {
            "type": "object",
            "required": ["id", "object", "url", "description", "created_at"],
            "properties": {
                "id": {"type": "string", "pattern": "^we_"},
                "object": {"const": "webhook_endpoint"},
                "url": {"type": "string", "format": "uri"},
                "description": {"type": ["string", "null"]},
                "created_at": _TIMESTAMP,
            },
        },
        "WebhookEndpointCreated": {
            "allOf": [
                _ref("WebhookEndpoint"),
                {
                    "type": "object",
                    "required": ["secret"],
                    "properties": {
                        "secret": {
                            "type": "string",
                            "pattern": "^whsec_",
                            "description": "HMAC-SHA256 key of the Paycore-Signature header;"
                            " shown only in this answer",
                        }
                    },
                },
            ]
        },
        "WebhookEndpointCreate": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "maxLength": 2048, "pattern": "^https://"},
                "description": {"type": ["string", "null"], "maxLength": 500},
            },
        },
        "AccountCreate": {
            "type": "object",
            "required": ["currency"],
            "additionalProperties": False,
            "properties": {"currency": _CURRENCY},
        },
        "PaymentCreate": {
            "type": "object",
            "required": ["amount", "currency"],
            "additionalProperties": False,
            "properties": {
                "amount": _AMOUNT,
                "currency": _CURRENCY,
                "description": {"type": ["string", "null"], "maxLength": MAX_DESCRIPTION},
                "metadata": {
                    "type": ["object", "null"],
                    "maxProperties": MAX_METADATA_KEYS,
                    "propertyNames": {"minLength": 1, "maxLength": 40},
                    "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
                },
            },
        },
        "RefundCreate": {
            "type": "object",
            "required": ["amount"],
            "additionalProperties": False,
            "properties": {"amount": _AMOUNT},
        },
        "PayoutCreate": {
            "type": "object",
            "required": ["amount", "currency"],
            "additionalProperties": False,
            "properties": {"amount": _AMOUNT, "currency": _CURRENCY},
        },
    }


def _money_post(summary: str, body: str, result: str, extra: dict | None = None) -> dict:
    op = {
        "summary": summary,
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": _body(_ref(body)),
        "responses": {
            "201": {**_json(f"{result} created", _ref(result)), "headers": _REPLAYED_HEADER},
            **_AUTH_ERRORS,
            **_BODY_ERRORS,
            **_MONEY_POST_RESPONSES,
        },
    }
    if extra:
        op["responses"].update(extra)
    return op


def _list(
    summary: str,
    item: str,
    statuses: tuple[str, ...],
    extra: dict | None = None,
    filter_name: str = "status",
    schema: str | None = None,
) -> dict:
    """A list operation of listing.py: newest first, cursor pages, filters."""

    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    unix_time = {"type": "integer", "minimum": 0, "maximum": MAX_UNIX_SECONDS}
    object_id = {"type": "string"}
    schema = schema or item.capitalize()
    op = {
        "summary": summary,
        "parameters": [
            query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Default 20"),
            query("starting_after", object_id, f"A {item} id: the page of older ones after it"),
            query("ending_before", object_id, f"A {item} id: the page of newer ones before it"),
            query("created[gte]", unix_time, "Created at or after (Unix seconds)"),
            query("created[lt]", unix_time, "Created before (Unix seconds)"),
        ],
        "responses": {
            "200": _json(
                f"{item.capitalize()}s, newest first",
                {
                    "type": "object",
                    "required": ["data", "has_more"],
                    "properties": {
                        "data": {"type": "array", "items": _ref(schema)},
                        "has_more": {"type": "boolean"},
                    },
                },
            ),
            "422": _problem(
                "Invalid parameter (`validation_error`, names it): a cursor that is not"
                f" one of these objects, both cursors, an unknown {filter_name}, a bad time"
            ),
            **_AUTH_ERRORS,
        },
    }
    if statuses:
        op["parameters"].append(
            query(filter_name, {"enum": list(statuses)}, f"Only this {filter_name}")
        )
    if extra:
        op["parameters"].insert(0, _ID)
        op["responses"].update(extra)
    return op


def _with_rate_limit_headers(doc: dict[str, Any]) -> dict[str, Any]:
    """Every answer of an authenticated operation carries the RateLimit-* headers
    (401 excepted: no merchant is known)."""
    refs = {name: {"$ref": f"#/components/headers/{name}"} for name in _RATE_LIMIT_HEADERS}
    for item in doc["paths"].values():
        for op in item.values():
            if op.get("security") == []:
                continue
            for status, response in op["responses"].items():
                if status != "401":
                    response["headers"] = {**response.get("headers", {}), **refs}
    doc["components"]["headers"] = {
        name: {"description": text, "schema": {"type": "integer", "minimum": 0}}
        for name, text in _RATE_LIMIT_HEADERS.items()
    }
    return doc


def document() -> dict[str, Any]:
    return _with_rate_limit_headers(_document())


def _document() -> dict[str, Any]:
    not_found = {
        "404": _problem("Unknown id, another merchant's, or no valid id at all (`not_found`)")
    }
    plain = {"security": []}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PayCore ledger API",
            "version": __version__,
            "description": "Double-entry ledger for merchant payments, refunds and payouts."
            " Amounts are integers in the currency's minor unit.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/accounts": {
                "post": {
                    "summary": "Open the merchant's account in a currency",
                    "requestBody": _body(_ref("AccountCreate")),
                    "responses": {
                        "201": _json("Account opened", _ref("Account")),
                        "409": _problem("Already has one (`account_exists`)"),
                        **_AUTH_ERRORS,
                        **_BODY_ERRORS,
                    },
                },
                "get": {
                    "summary": "List the merchant's accounts",
                    "responses": {
                        "200": _json(
                            "Accounts",
                            {
                                "type": "object",
                                "required": ["data"],
                                "properties": {"data": {"type": "array", "items": _ref("Account")}},
                            },
                        ),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/accounts/{id}": {
                "get": {
                    "summary": "One account with its balance",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json("Account", _ref("Account")),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/accounts/{id}/entries": {
                "get": {
                    "summary": "The account's ledger entries, newest first",
                    "parameters": [
                        _ID,
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {
                            "name": "starting_after",
                            "in": "query",
                            "description": "An entry id: return entries older than it",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            "Entries",
                            {
                                "type": "object",
                                "required": ["data", "has_more"],
                                "properties": {
                                    "data": {"type": "array", "items": _ref("Entry")},
                                    "has_more": {"type": "boolean"},
                                },
                            },
                        ),
                        "422": _problem("Invalid limit or starting_after"),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/payments": {
                "post": _money_post(
                    "Take a payment into the merchant's account", "PaymentCreate", "Payment"
                ),
                "get": _list("The merchant's payments", "payment", PAYMENTS.statuses),
            },
            "/v1/payments/{id}": {
                "get": {
                    "summary": "One payment",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json("Payment", _ref("Payment")),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/payments/{id}/refunds": {
                "post": {
                    **_money_post(
                        "Refund part or all of a payment", "RefundCreate", "Refund", not_found
                    ),
                    "parameters": [_ID, _IDEMPOTENCY_KEY],
                },
                "get": _list("The payment's refunds", "refund", REFUNDS.statuses, not_found),
            },
            "/v1/refunds": {
                "get": _list("The merchant's refunds", "refund", REFUNDS.statuses),
            },
            "/v1/refunds/{id}": {
                "get": {
                    "summary": "One refund",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json("Refund", _ref("Refund")),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/payouts": {
                "post": _money_post(
                    "Move money out of the merchant's account", "PayoutCreate", "Payout"
                ),
                "get": _list("The merchant's payouts", "payout", PAYOUTS.statuses),
            },
            "/v1/payouts/{id}": {
                "get": {
                    "summary": "One payout",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json("Payout", _ref("Payout")),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/events": {
                "get": _list(
                    "The merchant's events (every state change of its payments, refunds and"
                    " payouts, written in the same transaction as the change)",
                    "event",
                    EVENTS.statuses,
                    filter_name="type",
                ),
            },
            "/v1/events/{id}": {
                "get": {
                    "summary": "One event",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json("Event", _ref("Event")),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/webhook_endpoints": {
                "post": {
                    "summary": "Register an https URL that events are POSTed to, signed"
                    " (docs/webhooks.md); the answer holds its signing secret, shown only here"
                    " (and in a replay of this request)",
                    "parameters": [_IDEMPOTENCY_KEY],
                    "requestBody": _body(_ref("WebhookEndpointCreate")),
                    "responses": {
                        "201": {
                            **_json("Endpoint registered", _ref("WebhookEndpointCreated")),
                            "headers": _REPLAYED_HEADER,
                        },
                        **_AUTH_ERRORS,
                        **_BODY_ERRORS,
                        **_MONEY_POST_RESPONSES,
                        "422": _problem(
                            "Invalid field (`validation_error`), a URL that is not https or whose"
                            " host resolves to a loopback, private, link-local or other non-public"
                            " address (`webhook_url_refused`), or 16 endpoints already"
                            " (`too_many_webhook_endpoints`)"
                        ),
                    },
                },
                "get": _list(
                    "The merchant's webhook endpoints",
                    "webhook endpoint",
                    (),
                    schema="WebhookEndpoint",
                ),
            },
            "/v1/webhook_endpoints/{id}": {
                "get": {
                    "summary": "One webhook endpoint (without its secret)",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json("Endpoint", _ref("WebhookEndpoint")),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Delete a webhook endpoint; its pending deliveries are dropped",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(
                            "Deleted",
                            {
                                "type": "object",
                                "required": ["id", "object", "deleted"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "object": {"const": "webhook_endpoint"},
                                    "deleted": {"const": True},
                                },
                            },
                        ),
                        **not_found,
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/healthz": {
                "get": {
                    **plain,
                    "summary": "The process is alive",
                    "responses": {"200": _json("Alive", {"type": "object"})},
                }
            },
            "/readyz": {
                "get": {
                    **plain,
                    "summary": "The database answers",
                    "responses": {
                        "200": _json("Ready", {"type": "object"}),
                        "503": _problem("Database unavailable"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    **plain,
                    "summary": "Prometheus text exposition, aggregated over worker processes",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    **plain,
                    "summary": "This document",
                    "responses": {"200": _json("OpenAPI document", {"type": "object"})},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }
