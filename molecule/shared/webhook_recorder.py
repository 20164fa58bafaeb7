#!/usr/bin/python3
"""The pager of the tests: records every webhook POST as one JSON line (the
time it arrived, the path, the body) and answers 200.

Usage: webhook_recorder.py ADDRESS PORT FILE
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        entry = {"time": time.time(), "path": self.path, "body": json.loads(body)}
        with open(sys.argv[3], "a") as out:
            out.write(json.dumps(entry) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Recorder).serve_forever()
