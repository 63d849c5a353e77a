#!/usr/bin/env python3
"""Test provider: a faas-provider HTTP API on loopback, without namespaces (like faas-memory).

It knows one function, `echo`, whose replicas are a number it keeps; scaling sets the number
and the replicas are available at once. Prints `listening on PORT` when it is ready.

GET  /system/function/echo    status (any namespace query is ignored); other names 404
POST /system/scale-function/echo   {"replicas": N}; appends `N` to SCALE_LOG (a file)
GET  /system/functions        the one function
GET  /system/info             as faas-memory answers: provider, orchestration, version
*    /function/echo[/rest]    200, JSON with the path received; `/function/echo.{ns}` is 404,
                              as a provider without namespaces answers it
*    /function/echo/hold      the same, once the file RELEASE_FILE exists (at most 20 s); the
                              most such calls in progress at once is kept in HELD_MOST (a file)

REFUSE_ZERO=1   a scale to 0 is answered 400 as faas-netes CE answers it
REPLICAS=N      replicas at start (default 0)
LABELS          JSON object of the function's labels
SCALE_DELAY_MS  each scale call takes this long before it is answered
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"replicas": int(os.environ.get("REPLICAS", "0"))}
LABELS = json.loads(os.environ.get("LABELS", "{}"))
SCALE_LOG = os.environ.get("SCALE_LOG")
REFUSE_ZERO = os.environ.get("REFUSE_ZERO") == "1"
SCALE_DELAY = int(os.environ.get("SCALE_DELAY_MS", "0")) / 1000.0
HELD = {"now": 0, "most": 0}


def status():
    with LOCK:
        n = STATE["replicas"]
    return {
        "name": "echo",
        "image": "fake/echo:latest",
        "replicas": n,
        "availableReplicas": n,
        "labels": LABELS,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def route(self):
        path = self.path.split("?", 1)[0]
        self.body()
        if path == "/system/function/echo" and self.command == "GET":
            return self.answer(200, status())
        if path.startswith("/system/function/"):
            return self.answer(404, b"not found", "text/plain")
        if path == "/system/functions":
            return self.answer(200, [status()])
        if path == "/system/info":
            return self.answer(200, {
                "provider": "faas-memory",
                "orchestration": "memory",
                "version": {"sha": "f00dfeed", "release": "0.0.1"},
            })
        if path == "/function/echo/hold":
            self.hold()
        if path == "/function/echo" or path.startswith("/function/echo/"):
            return self.answer(200, {"path": self.path})
        return self.answer(404, ("no function at %s" % path).encode(), "text/plain")

    def hold(self):
        with LOCK:
            HELD["now"] += 1
            HELD["most"] = max(HELD["most"], HELD["now"])
            with open(os.environ["HELD_MOST"], "w") as f:
                f.write("%d\n" % HELD["most"])
        deadline = time.monotonic() + 20
        while not os.path.exists(os.environ["RELEASE_FILE"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        with LOCK:
            HELD["now"] -= 1

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path != "/system/scale-function/echo":
            return self.route()
        replicas = json.loads(self.body() or b"{}").get("replicas", 0)
        time.sleep(SCALE_DELAY)
        if SCALE_LOG:
            with LOCK, open(SCALE_LOG, "a") as log:
                log.write("%d\n" % replicas)
        if replicas == 0 and REFUSE_ZERO:
            return self.answer(
                400, b"replicas cannot be set to 0 in OpenFaaS CE", "text/plain"
            )
        with LOCK:
            STATE["replicas"] = replicas
        return self.answer(202, b"", "text/plain")

    do_GET = route
    do_PUT = route
    do_DELETE = route


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("listening on %d" % server.server_address[1], flush=True)
    # The test that started it closes stdin when it is done with it.
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
