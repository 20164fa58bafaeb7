"""JSON logs on stdout with the request id of the current request.

Only explicitly chosen fields are logged: never headers, bodies or keys.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

merchant_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "merchant_id", default=None
)

# Set by a money-moving POST (object, object_id, code, replayed): added to that
# request's one log line instead of a line of its own.
operation_var: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "operation", default=None
)

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        merchant_id = merchant_id_var.get()
        if merchant_id:
            entry["merchant_id"] = merchant_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: str, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours (and is not JSON).
    logging.getLogger("aiohttp.access").disabled = True
