"""RFC 9457 problem details: the only shape errors leave the service in."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raised anywhere in request handling; rendered by the error middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body = {
            "type": f"https://paycore.dev/problems/{self.code.replace('_', '-')}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        body.update(self.extra)
        return body

    def response(self) -> web.Response:
        return problem_response(self.status, json.dumps(self.to_dict()), self.headers)


def problem_response(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=body,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def field_error(field: str, detail: str, code: str = "validation_error") -> Problem:
    return Problem(422, code, f"{field}: {detail}", extra={"field": field})
