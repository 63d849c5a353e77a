#!/usr/bin/env python3
"""Footprint report: stripped release binary size, resident memory idle, and resident memory
while 1,000 keep-alive client connections are open (each has made one request).

  benches/footprint.py [--connections 1000]

Needs `strip` (binutils) for the stripped size.
"""
import argparse
import os
import pathlib
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the work tree clean
from harness import DEFROST, Defrost, build, function


def stripped_size_mb():
    if shutil.which("strip") is None:
        sys.exit("missing: strip (Debian/Ubuntu: apt-get install binutils)")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "defrost"
        subprocess.run(["strip", "-o", str(out), str(DEFROST)], check=True)
        return out.stat().st_size / 1e6


def hold_connections(port, count):
    """Opens `count` keep-alive connections, one request answered on each; returns them."""
    request = b"GET /function/fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(request)
        held.append(s)
    for s in held:
        answer = b""
        while b"hello from upstream" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("a connection was closed before its answer")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            sys.exit("unexpected answer: " + answer[:80].decode(errors="replace"))
    return held


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    build()
    gateway = Defrost(function("fast", min_replicas=1))
    time.sleep(1)  # let start-up settle before reading the idle figure
    idle = gateway.rss_mb()
    held = hold_connections(gateway.port, args.connections)
    loaded = gateway.rss_mb()
    print(f"release binary, stripped: {stripped_size_mb():.2f} MB ({os.path.getsize(DEFROST) / 1e6:.2f} MB as built)")
    print(f"RSS idle: {idle:.1f} MB")
    print(f"RSS with {len(held)} keep-alive connections: {loaded:.1f} MB")
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
