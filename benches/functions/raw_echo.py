#!/usr/bin/env python3
"""Benchmark function: answers any request with `101 Switching Protocols` (`Upgrade: raw`),
then echoes every byte until the caller ends its stream. Listens on 127.0.0.1:$PORT."""
import os
import socket
import threading


def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    rest = head.split(b"\r\n\r\n", 1)[1]
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n" + rest)
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)


def main():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(os.environ["PORT"])))
    server.listen(64)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
