#!/usr/bin/env python3
"""Upgraded connections: bytes echoed through a relay, and the gateway's CPU per GiB.

  benches/upgrade.py [--mib 1024] [--rounds 3]

A function (`benches/functions/raw_echo.py`) answers the upgrade with a 101 and echoes every
byte; a client sends MIB mebibytes in 1 MiB writes while reading them back, once through
defrost and once straight to the function, each round. Prints MiB/s each way, and the CPU
time defrost used per GiB each way (from /proc).
"""
import argparse
import os
import pathlib
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the work tree clean
from harness import Defrost, build

FUNCTION = pathlib.Path(__file__).resolve().parent / "functions" / "raw_echo.py"


def echo(port, path, mib):
    """Upgrades a connection on `port`, echoes `mib` MiB through it; seconds taken."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1)
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit("not upgraded: " + head.decode(errors="replace"))
    chunk = b"x" * (1 << 20)

    def send():
        for _ in range(mib):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)

    started = time.monotonic()
    sender = threading.Thread(target=send)
    sender.start()
    got = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        got += len(data)
    sender.join()
    if got != mib << 20:
        sys.exit(f"echoed {got} bytes of {mib << 20}")
    return time.monotonic() - started


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def function_port(gateway):
    """The replica's port, from the gateway's log line saying it is ready."""
    for line in gateway.log_text().splitlines():
        if "ready on port" in line:
            return int(line.split("ready on port")[1].split()[0])
    sys.exit("no replica became ready: " + gateway.log_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    build()
    function = f'[[function]]\nname = "raw"\ncommand = ["python3", "{FUNCTION}"]\nmin_replicas = 1\n'
    gateway = Defrost(function, log_level="info")
    echo(gateway.port, "/function/raw", 16)  # the replica is up, the first connection made
    port = function_port(gateway)
    for _ in range(args.rounds):
        before = cpu_seconds(gateway.process.pid)
        through = echo(gateway.port, "/function/raw", args.mib)
        cpu = cpu_seconds(gateway.process.pid) - before
        direct = echo(port, "/", args.mib)
        print(
            f"{args.mib} MiB each way: through defrost {args.mib / through:.0f} MiB/s, "
            f"straight to the function {args.mib / direct:.0f} MiB/s; "
            f"defrost used {cpu / (args.mib / 1024):.2f} s of CPU per GiB each way"
        )


if __name__ == "__main__":
    main()
