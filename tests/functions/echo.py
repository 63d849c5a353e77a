#!/usr/bin/env python3
"""Test function: echoes what it received, and can misbehave on request.

GET  /healthz        ready check (after READY_DELAY_MS, if set)
*    /crash          exits at once with status 3 (no answer)
*    /bytes/N        N bytes of a repeating pattern, with Content-Length
*    /sleep/S        sleeps S seconds, then echoes
*    /status/N       answers with status N
*    /garbage        answers bytes that are not HTTP, then closes
*    /truncate/N     declares N bytes, sends half of them, then closes
*    /framing/both   a chunked body that also declares a (wrong) Content-Length
*    /framing/headers/N  200 with N extra headers
*    /framing/head-body  a body even when the method is HEAD, a moment after the head
*    /framing/304    304 declaring a chunked body, and its last chunk a moment later
*    /say/TEXT       prints TEXT on stdout and "oops TEXT" on stderr, then echoes
*    /header-utf8    answers headers whose values hold bytes beyond ASCII (see NON_ASCII_HEADERS)
*    anything else   200, JSON of method, path (with query), headers, body length, body sha256
Listens on HOST (default 127.0.0.1) and PORT.
If STARTS_FILE is set, appends one line per process start to it.
If REQUESTS_FILE is set, appends one line per request (other than /healthz) as it arrives.
If CONCURRENCY_FILE is set, keeps in it the most requests (other than /healthz) it has had in
progress at once; a request stops counting just before its answer is sent.
If EXIT_AFTER_MS is set, exits with status 4 that long after starting (a crash loop).
If DROP_KEPT_ALIVE is set, answers only the first request (other than /healthz) on each
connection: a later one is read, recorded, and its connection closed without an answer, as by a
server whose keep-alive timeout ran out just as the request arrived.
"""
import hashlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
READY_DELAY = float(os.environ.get("READY_DELAY_MS", "0")) / 1000.0
# Header values as bytes on the wire: UTF-8 in a filename, and a lone Latin-1 byte, between
# plain ones (order matters). http.server sends header text as Latin-1, byte for byte.
NON_ASCII_HEADERS = [
    ("X-Before", b"1"),
    ("Content-Disposition", 'attachment; filename="na\u00efve.txt"'.encode("utf-8")),
    ("X-Latin1", b"caf\xe9"),
    ("X-After", b"2"),
]
IN_PROGRESS = {"now": 0, "most": 0}
IN_PROGRESS_LOCK = threading.Lock()


def count_in_progress(change):
    """Adds change to the requests in progress, recording a new most in CONCURRENCY_FILE."""
    with IN_PROGRESS_LOCK:
        IN_PROGRESS["now"] += change
        if IN_PROGRESS["now"] > IN_PROGRESS["most"]:
            IN_PROGRESS["most"] = IN_PROGRESS["now"]
            with open(os.environ["CONCURRENCY_FILE"], "w") as f:
                f.write("%d\n" % IN_PROGRESS["most"])


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Head and body go out in separate writes; without this, Nagle's algorithm holds the
        # body back until a keep-alive peer's delayed ACK, some 40 ms later.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def any(self):
        if self.path != "/healthz" and os.environ.get("REQUESTS_FILE"):
            with open(os.environ["REQUESTS_FILE"], "a") as f:
                f.write("%s\n" % self.path)
        if self.path != "/healthz" and os.environ.get("DROP_KEPT_ALIVE"):
            if getattr(self, "answered_one", False):
                self.close_connection = True
                return
            self.answered_one = True
        self.counted = self.path != "/healthz" and bool(os.environ.get("CONCURRENCY_FILE"))
        if self.counted:
            count_in_progress(1)
        if self.path == "/healthz":
            if time.monotonic() - STARTED < READY_DELAY:
                return self.reply(503, b"warming up\n", "text/plain")
            return self.reply(200, b"ok\n", "text/plain")
        if self.path.startswith("/crash"):
            os._exit(3)
        if self.path.startswith("/bytes/"):
            return self.stream_bytes(int(self.path.split("/")[2]))
        if self.path.startswith("/status/"):
            return self.reply(int(self.path.split("/")[2]), b"as asked\n", "text/plain")
        if self.path.startswith("/garbage"):
            self.wfile.write(b"this is not HTTP at all\r\n\r\n")
            self.close_connection = True
            return
        if self.path.startswith("/header-utf8"):
            extra = {name: value.decode("latin-1") for name, value in NON_ASCII_HEADERS}
            return self.reply(200, b"ok\n", "text/plain", extra)
        if self.path.startswith("/truncate/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(b"x" * (n // 2))
            self.close_connection = True
            return
        if self.path.startswith("/framing/"):
            return self.misframe(self.path.split("/")[2:])
        if self.path.startswith("/say/"):
            text = self.path.split("/", 2)[2]
            print(text, flush=True)
            print("oops " + text, file=sys.stderr, flush=True)
        if self.path.startswith("/sleep/"):
            time.sleep(float(self.path.split("/")[2]))
        digest, size = hashlib.sha256(), 0
        for chunk in self.body_chunks():
            digest.update(chunk)
            size += len(chunk)
        answer = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
            "pid": os.getpid(),
        }
        self.reply(200, json.dumps(answer).encode(), "application/json", {"X-Echo": "yes"})

    def body_chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def misframe(self, what):
        """Answers written by hand, framed the ways a broken server frames them."""
        if what[0] == "both":
            head = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            self.wfile.write(head.encode() + b"5\r\nhello\r\n0\r\n\r\n")
        elif what[0] == "headers":
            extra = "".join("X-Many-%d: %d\r\n" % (i, i) for i in range(int(what[1])))
            head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s\r\n" % extra
            self.wfile.write(head.encode() + b"ok")
        elif what[0] == "head-body":
            self.late(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"stray")
        elif what[0] == "304":
            head = b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nTransfer-Encoding: chunked\r\n\r\n"
            self.late(head, b"0\r\n\r\n")
        self.wfile.flush()

    def late(self, head, stray):
        """The head, then bytes it did not declare once the gateway may have moved on."""
        self.wfile.write(head)
        self.wfile.flush()
        time.sleep(0.2)
        self.wfile.write(stray)

    def stream_bytes(self, n):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        block = bytes(range(256)) * 4096
        while n > 0:
            piece = block[: min(n, len(block))]
            self.wfile.write(piece)
            n -= len(piece)

    def reply(self, status, body, content_type, extra=None):
        if getattr(self, "counted", False):
            self.counted = False
            count_in_progress(-1)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = any

    def log_message(self, fmt, *args):
        pass


class Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of connections from the gateway
    # would overflow it and stall in SYN/data retransmits.
    request_queue_size = 1024
    daemon_threads = True


if __name__ == "__main__":
    if os.environ.get("STARTS_FILE"):
        with open(os.environ["STARTS_FILE"], "a") as f:
            f.write("%d\n" % os.getpid())
    if os.environ.get("EXIT_AFTER_MS"):
        import threading

        threading.Timer(float(os.environ["EXIT_AFTER_MS"]) / 1000.0, os._exit, (4,)).start()
    Server((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Echo).serve_forever()
