#!/usr/bin/env python3
"""A plain Python function that takes START_SECONDS to start (as one importing its libraries
would), then listens and writes the wall-clock time it began listening to LISTENED_FILE, so
that a benchmark can tell what the gateway added past that moment. /healthz answers 200.
"""
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"started\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    time.sleep(float(os.environ.get("START_SECONDS", "0")))
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    listened = time.time()
    path = os.environ["LISTENED_FILE"]
    with open(path + ".tmp", "w") as f:
        f.write(repr(listened))
    os.replace(path + ".tmp", path)
    server.serve_forever()
