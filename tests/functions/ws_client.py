#!/usr/bin/env python3
"""Test client: drives a WebSocket through the `websockets` client library (10.4 and later).

    ws_client.py URL STEP...

Steps, run in order on one connection; each prints one line on stdout:

text:T      sends text T, prints the text echoed back ("text <T>")
send:T      sends text T, prints "sent"
binary:N    sends N bytes of a repeating pattern, prints "binary <N> <ok|mismatch>" for the echo
recv        prints the next message ("text <T>", or "binary <N>")
hold:S      keeps the connection open and quiet for S seconds (prints "held")
close       closes with code 1000, prints "closed <code>"
wait-close  waits for the server to close, prints "closed <code> <reason>"
The connection is closed (code 1000) after the last step.
On a refused handshake prints "refused <status>" and exits 0; any other failure exits 1.
"""
import asyncio
import sys

import websockets


def pattern(n):
    return bytes(i % 251 for i in range(n))


def status_of(error):
    response = getattr(error, "response", None)
    if response is not None:
        return response.status_code
    return getattr(error, "status_code", None)


async def run(url, steps):
    try:
        ws = await websockets.connect(url, max_size=None, open_timeout=60)
    except websockets.exceptions.InvalidHandshake as e:
        print("refused %s" % status_of(e), flush=True)
        return
    for step in steps:
        kind, _, arg = step.partition(":")
        if kind == "text":
            await ws.send(arg)
            print("text %s" % await ws.recv(), flush=True)
        elif kind == "send":
            await ws.send(arg)
            print("sent", flush=True)
        elif kind == "binary":
            sent = pattern(int(arg))
            await ws.send(sent)
            got = await ws.recv()
            print("binary %d %s" % (len(got), "ok" if got == sent else "mismatch"), flush=True)
        elif kind == "recv":
            got = await ws.recv()
            if isinstance(got, str):
                print("text %s" % got, flush=True)
            else:
                print("binary %d" % len(got), flush=True)
        elif kind == "hold":
            await asyncio.sleep(float(arg))
            print("held", flush=True)
        elif kind == "close":
            await ws.close()
            print("closed %s" % ws.close_code, flush=True)
        elif kind == "wait-close":
            await ws.wait_closed()
            print("closed %s %s" % (ws.close_code, ws.close_reason), flush=True)
        else:
            raise SystemExit("unknown step %s" % step)
    await ws.close()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2:]))
