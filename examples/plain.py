#!/usr/bin/env python3
"""A function written the way most are: Python's http.server, HTTP/1.1 keep-alive, no socket
options. It writes the response head and the body in two writes, so a peer that delays its ACK
meets Nagle's algorithm on every warm call. Ready once it listens.
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Plain(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("hello from a plain function, asked for %s\n" % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Plain).serve_forever()
