"""Tiny HTTP backend for the network scenario: echoes the request as JSON.

`/v1/status/<code>` answers with that status (503 with `Retry-After: 1`, like
the ledger's own database_unavailable / ledger_busy answers).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status = 200
        if self.path.startswith("/v1/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        payload = json.dumps(
            {
                "backend": "echo",
                # Which backend answered: its address on the tunnel.
                "server": self.connection.getsockname()[0],
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(body),
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer


if __name__ == "__main__":
    # 0.0.0.0 on purpose: the firewall under test decides who reaches it.
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Echo)  # noqa: S104
    server.serve_forever()
