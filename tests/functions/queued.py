#!/usr/bin/env python3
"""Test function for asynchronous calls: records every call it gets, can wait or fail.

GET  /healthz          ready check
*    /fail-twice/...   503 for the first two attempts of each X-Call-Id, then 200
*    /status/N         answers with status N
*    anything else     200, "ran PATH" and the request body, as text/plain
Every call other than /healthz appends "X-Call-Id PATH" to CALLS_FILE when it arrives.
If GATE_FILE is set, calls wait until that file exists before answering.
"""
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ATTEMPTS = {}
LOCK = threading.Lock()


class Queued(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/healthz":
            return self.reply(200, b"ok\n")
        call_id = self.headers.get("X-Call-Id", "-")
        with LOCK:
            with open(os.environ["CALLS_FILE"], "a") as f:
                f.write("%s %s\n" % (call_id, self.path))
            ATTEMPTS[call_id] = ATTEMPTS.get(call_id, 0) + 1
            attempt = ATTEMPTS[call_id]
        gate = os.environ.get("GATE_FILE")
        while gate and not os.path.exists(gate):
            time.sleep(0.02)
        if self.path.startswith("/fail-twice") and attempt <= 2:
            return self.reply(503, b"not yet\n")
        if self.path.startswith("/status/"):
            return self.reply(int(self.path.split("/")[2]), b"as asked\n")
        self.reply(200, b"ran " + self.path.encode() + b"\n" + body)

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = any

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Queued).serve_forever()
