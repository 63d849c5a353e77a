#!/usr/bin/env python3
"""Test function that serves one request at a time, with no threads, as many real functions do.

Listens on $PORT; speaks HTTP/1.0, so each connection carries one request and is closed after
its answer.

GET /healthz     ready check
*   /call/ID     appends ID to REQUESTS_FILE as the request arrives, then answers 200 with ID
*   /hold/ID     the same, but holds the answer until the file RELEASE_FILE exists (at most
                 20 s): a replica kept busy for as long as a test needs

While it works on a request it watches its own listening socket: a connection waiting there
means a second request was sent to this replica before the first was answered. Such an overlap
is appended to OVERLAP_FILE and the answer carries `X-Overlap: yes`.
"""
import os
import select
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

HOLD_LIMIT = 20.0


class Single(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(b"ok\n", False)
        call_id = self.path.rsplit("/", 1)[-1]
        with open(os.environ["REQUESTS_FILE"], "a") as f:
            f.write(call_id + "\n")
        overlap = self.overlapped()
        if self.path.startswith("/hold/"):
            deadline = time.monotonic() + HOLD_LIMIT
            while not os.path.exists(os.environ["RELEASE_FILE"]):
                if time.monotonic() > deadline:
                    break
                overlap = self.overlapped() or overlap
                time.sleep(0.005)
        overlap = self.overlapped() or overlap
        if overlap:
            with open(os.environ["OVERLAP_FILE"], "a") as f:
                f.write(call_id + "\n")
        self.answer(call_id.encode(), overlap)

    do_POST = do_GET

    def overlapped(self):
        """Whether another connection is waiting to be accepted right now."""
        readable, _, _ = select.select([self.server.socket], [], [], 0)
        return bool(readable)

    def answer(self, body, overlap):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Overlap", "yes" if overlap else "no")
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Single).serve_forever()
