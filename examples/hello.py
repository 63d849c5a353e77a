#!/usr/bin/env python3
"""A tiny function for defrost: answers every request with a greeting and what it was asked.

defrost starts it with PORT set to a free port on 127.0.0.1; it is ready once /healthz answers.
Only the Python standard library is used, so it runs anywhere python3 does.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        if self.path == "/healthz":
            return self.reply(200, b"ok\n", "text/plain")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = {
            "greeting": os.environ.get("GREETING", "hello"),
            "method": self.command,
            "path": self.path,
            "body_bytes": len(body),
            "pid": os.getpid(),
        }
        self.reply(200, (json.dumps(answer) + "\n").encode(), "application/json")

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

    def log_message(self, fmt, *args):
        pass  # defrost logs requests itself (RUST_LOG=debug)


class Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of connections from the gateway
    # would overflow it and stall in SYN/data retransmits.
    request_queue_size = 1024
    daemon_threads = True


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print("hello listening on 127.0.0.1:%d" % port, flush=True)
    Server(("127.0.0.1", port), Hello).serve_forever()
