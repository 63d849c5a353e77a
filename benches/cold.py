#!/usr/bin/env python3
"""Cold-start benchmark: what defrost adds to a function's own start time, and a burst of
concurrent requests on a cold function.

  benches/cold.py [--starts 50] [--ready-ms 100] [--burst 1000]

Cold starts: the function (benches' upstream, sleeping --ready-after-ms before it listens) is
scaled to zero, then called; defrost's added latency is the response time minus T, the
function's own readiness time measured without defrost (spawn to listening). Burst: that many requests at once on another cold function whose readiness takes 1 s;
prints how many scale calls defrost made, how many requests succeeded, and their latency.
"""
import argparse
import json
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the work tree clean
from harness import UPSTREAM, Defrost, build, free_port, function, get, get_raw, percentile, post


def wait_until_scaled_down(port, name):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = get_json(port, f"/system/function/{name}")
        if status == 200 and not body.get("replicas") and not body.get("availableReplicas"):
            return
        time.sleep(0.02)
    sys.exit(f"{name} did not scale down")


def get_json(port, path):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, (json.loads(body) if response.status == 200 else {})


def own_readiness_ms(ready_ms, starts):
    """The function's own readiness time, without defrost: from spawning it to its port
    accepting a connection, probed every 50 us. Its median stands for T."""
    times = []
    for _ in range(starts):
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(UPSTREAM), "--port", str(port), "--ready-after-ms", str(ready_ms)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None:
                        sys.exit("the upstream exited while starting")
                    time.sleep(0.00005)
            times.append((time.perf_counter() - started) * 1000)
        finally:
            process.kill()
            process.wait()
    return percentile(times, 50)


def cold_starts(gateway, starts, ready_ms):
    """Response times (ms) of calls that each found the function scaled to zero."""
    times = []
    for _ in range(starts):
        post(gateway.port, "/system/scale-function/cold", {"serviceName": "cold", "replicas": 0})
        wait_until_scaled_down(gateway.port, "cold")
        status, seconds = get_raw(gateway.port, "/function/cold")
        if status != 200:
            sys.exit(f"cold call answered {status}")
        times.append(seconds * 1000)
    return times


def burst(gateway, count):
    results = [None] * count
    barrier = threading.Barrier(count)

    def call(i):
        barrier.wait()
        results[i] = get(gateway.port, "/function/burst", timeout=120)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    done = [r for r in results if r is not None]
    ok = [seconds * 1000 for status, seconds in done if status == 200]
    scale_calls = gateway.log_text().count("scale burst.default: 0 -> ")
    return scale_calls, len(ok), ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--ready-ms", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    build()
    gateway = Defrost(
        function("cold", "--ready-after-ms", args.ready_ms)
        + function("burst", "--ready-after-ms", 1000),
        log_level="info",
    )
    own = own_readiness_ms(args.ready_ms, args.starts)
    added = [t - own for t in cold_starts(gateway, args.starts, args.ready_ms)]
    print(
        f"cold starts: {len(added)}; the function sleeps {args.ready_ms} ms before listening,"
        f" its own readiness time T (spawn to listening, without defrost) is {own:.2f} ms"
    )
    print(
        f"  added latency (response time - T): p50 {percentile(added, 50):.2f} ms,"
        f" p99 {percentile(added, 99):.2f} ms"
    )
    scale_calls, successes, latencies = burst(gateway, args.burst)
    print(f"burst: {args.burst} concurrent requests on a cold function (readiness 1000 ms)")
    print(f"  scale calls: {scale_calls}, successes: {successes}/{args.burst}")
    print(
        f"  latency p50 {percentile(latencies, 50):.0f} ms, p99 {percentile(latencies, 99):.0f} ms"
    )


if __name__ == "__main__":
    main()
