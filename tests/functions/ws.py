#!/usr/bin/env python3
"""Test function: a WebSocket server built on the `websockets` library (10.4 and later).

Listens on 127.0.0.1:$PORT (ready once it accepts a connection). By request path:

/echo       echoes every message, text as text and binary as binary
/headers    sends one text message, the JSON of the handshake's request headers, then echoes
/close      on the first message, closes with code 4001 and reason "bye"
/reject     refuses the upgrade: 403 with the body "refused\n"
If STARTS_FILE is set, appends one line per process start to it.
"""
import asyncio
import json
import os
from http import HTTPStatus

import websockets


def path_of(ws):
    request = getattr(ws, "request", None)
    return request.path if request is not None else ws.path


def headers_of(ws):
    request = getattr(ws, "request", None)
    return request.headers if request is not None else ws.request_headers


async def handler(ws, *_path):
    path = path_of(ws).split("?")[0]
    if path == "/headers":
        await ws.send(json.dumps({k.lower(): v for k, v in headers_of(ws).raw_items()}))
    async for message in ws:
        if path == "/close":
            await ws.close(4001, "bye")
            return
        await ws.send(message)


async def process_request(*args):
    """Refuses /reject with a plain HTTP answer; both the legacy (path, headers) and the
    current (connection, request) signatures."""
    if len(args) == 2 and isinstance(args[0], str):
        if args[0].split("?")[0] == "/reject":
            return (HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"refused\n")
        return None
    connection, request = args
    if request.path.split("?")[0] == "/reject":
        return connection.respond(HTTPStatus.FORBIDDEN, "refused\n")
    return None


async def main():
    port = int(os.environ["PORT"])
    async with websockets.serve(
        handler, "127.0.0.1", port, process_request=process_request, max_size=None
    ):
        await asyncio.Future()


if __name__ == "__main__":
    if os.environ.get("STARTS_FILE"):
        with open(os.environ["STARTS_FILE"], "a") as f:
            f.write("start\n")
    asyncio.run(main())
