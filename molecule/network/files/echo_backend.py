"""Tiny HTTP backend for the network scenario: echoes the request as JSON."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = json.dumps(
            {
                "backend": "echo",
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer


if __name__ == "__main__":
    # 0.0.0.0 on purpose: the firewall under test decides who reaches it.
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Echo)  # noqa: S104
    server.serve_forever()
