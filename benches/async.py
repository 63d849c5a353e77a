#!/usr/bin/env python3
"""Asynchronous calls: how many /async-function calls defrost accepts per second (each
answered 202 only once its commit is fsynced), and what the queue costs in disk and memory.

  benches/async.py [--clients 32] [--seconds 5] [--body 100] [--nats]

With --nats the queue is a JetStream stream on a local nats-server (file storage, in a temp
folder): each 202 waits for the server's ack instead of an fsync of defrost's own file.

A release build serves one function (the benchmarks' upstream) whose replica takes
--ready-after seconds to become ready, so every call accepted in the first phase is still
queued when the phase ends. Then: the store's size on disk and defrost's RSS with all of them
queued; the time for 16 calls at once to drain the queue; the store's size and defrost's RSS
once it is empty (the store is compacted when the queue drains).

Clients are Python threads in --procs processes, each with one keep-alive connection,
posting --body bytes in a loop for --seconds.
"""
import argparse
import http.client
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the work tree clean
from harness import Defrost, build, free_port, function, get


def nats_server():
    """A nats-server with JetStream on a free port, stopped at exit; its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    store = tempfile.TemporaryDirectory(prefix="defrost-bench-nats-")
    server = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import atexit

    atexit.register(lambda: (server.terminate(), server.wait(), store.cleanup()))
    time.sleep(1)
    return f"nats://127.0.0.1:{port}"


def client(port, seconds, body, results):
    """Posts calls on one keep-alive connection until time is up; puts (accepted, other)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    accepted = other = 0
    payload = b"x" * body
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.request("POST", "/async-function/sink/work", body=payload)
        response = conn.getresponse()
        response.read()
        if response.status == 202:
            accepted += 1
        else:
            other += 1
    conn.close()
    results.put((accepted, other))


def process(port, threads, seconds, body, results):
    import threading

    workers = [
        threading.Thread(target=client, args=(port, seconds, body, results)) for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def metric(port, series):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--body", type=int, default=100)
    parser.add_argument("--ready-after", type=float, default=20)
    parser.add_argument("--nats", action="store_true")
    args = parser.parse_args()
    build()
    ready_ms = int(args.ready_after * 1000)
    queue = "[queue]\nmax_queued = 10000000\nmax_queued_per_function = 10000000\n"
    if args.nats:
        queue += f'kind = "nats"\nurl = "{nats_server()}"\nmax_queued_bytes = 4294967296\n\n'
    else:
        queue += "max_queued_bytes = 17179869184\n\n"
    gw = Defrost(
        "startup_timeout = \"120s\"\nready_timeout = \"120s\"\n"
        + queue
        + function("sink", "--ready-after-ms", ready_ms, min_replicas=0)
        + "async_concurrency = 16\n"
    )
    store = pathlib.Path(gw.dir.name) / "defrost.queue.redb"
    rss_idle = gw.rss_mb()
    # The store is made by the first call accepted: none yet.
    size = lambda: store.stat().st_size if store.exists() else 0
    size_empty = size()
    results = multiprocessing.Queue()
    per_proc = max(1, args.clients // args.procs)
    started = time.monotonic()
    procs = [
        multiprocessing.Process(
            target=process, args=(gw.port, per_proc, args.seconds, args.body, results)
        )
        for _ in range(args.procs)
    ]
    for p in procs:
        p.start()
    counts = [results.get() for _ in range(per_proc * args.procs)]
    for p in procs:
        p.join()
    took = time.monotonic() - started
    accepted = sum(a for a, _ in counts)
    other = sum(o for _, o in counts)
    queued = metric(gw.port, 'defrost_async_queued{function_name="sink.default"}')
    running = metric(gw.port, 'defrost_async_running{function_name="sink.default"}')
    if args.nats:
        time.sleep(2.5)  # the stream's depth is asked every 2 s
        queued = metric(gw.port, "defrost_async_stream_messages")
    size_full = size()
    rss_full = gw.rss_mb()
    drain_started = time.monotonic()
    deadline = drain_started + 600
    while metric(gw.port, 'defrost_async_completed_total{function_name="sink.default"}') < accepted:
        if time.monotonic() > deadline:
            sys.exit("the queue did not drain in 10 minutes")
        time.sleep(0.2)
    drained = time.monotonic() - drain_started
    # The store is compacted after the commit that empties it: wait for the file to settle.
    size_after, settle_deadline = size(), time.monotonic() + (0 if args.nats else 15)
    while time.monotonic() < settle_deadline:
        time.sleep(0.5)
        size_now = size()
        if size_now == size_after and size_now < size_full:
            break
        size_after = size_now
    rss_after = gw.rss_mb()
    report = {
        "clients": per_proc * args.procs,
        "body_bytes": args.body,
        "accepted": accepted,
        "refused": other,
        "accepted_per_second": round(accepted / took),
        "queued_at_end_of_phase": queued + running,
        "store_bytes_empty": size_empty,
        "store_bytes_queued": size_full,
        "store_bytes_per_call": round(size_full / max(accepted, 1)),
        "store_bytes_after_drain": size_after,
        "rss_mb_idle": round(rss_idle, 1),
        "rss_mb_queued": round(rss_full, 1),
        "rss_bytes_per_queued_call": round((rss_full - rss_idle) * 1048576 / max(accepted, 1)),
        "rss_mb_after_drain": round(rss_after, 1),
        "drain_seconds_after_ready": round(drained - max(0, args.ready_after - took), 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
