#!/usr/bin/python3
"""Records every webhook POST (one JSON line per request) for the site tests."""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer

RECORD = "/var/tmp/webhook.jsonl"


class Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(RECORD, "a") as out:
            out.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\n")
        self.send_response(200)
        self.end_headers()


HTTPServer(("127.0.0.1", 9999), Recorder).serve_forever()
