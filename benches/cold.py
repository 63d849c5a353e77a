#!/usr/bin/env python3
"""Cold-start benchmark: what defrost adds to a function's own start time, and a burst of
concurrent requests on a cold function.

  benches/cold.py [--starts 50] [--ready-ms 100] [--burst 1000]
                  [--python-start 0.05,0.3,1,3,10] [--python-starts 9]

Parking: a plain Python function parked after 300 ms idle is called again; its response time
beside that of an identical function that was idle as long but not parked.

Python functions: a plain http.server function starting in --python-start seconds each (TCP and
HTTP readiness) writes the moment it began listening; the response's arrival minus that moment
includes forwarding the call and the function's own first answer. The same function started
without defrost and called by a client that connects the moment it listens (probing every
100 us) gives the function's own share; defrost's share is the difference.

Cold starts: the function (benches' upstream, sleeping --ready-after-ms before it listens) is
scaled to zero, then called; defrost's added latency is the response time minus T, the
function's own readiness time measured without defrost (spawn to listening). Burst: that many requests at once on another cold function whose readiness takes 1 s;
prints how many scale calls defrost made, how many requests succeeded, and their latency.
"""
import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
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


STARTING = pathlib.Path(__file__).resolve().parent / "functions" / "starting.py"


def python_function(name, start_seconds, listened_file, readiness_path=None):
    command = json.dumps(["python3", str(STARTING)])
    probe = f'readiness_path = "{readiness_path}"\n' if readiness_path else ""
    return (
        f'[[function]]\nname = "{name}"\ncommand = {command}\nmax_replicas = 1\n{probe}'
        f'env = {{ START_SECONDS = "{start_seconds}", LISTENED_FILE = "{listened_file}" }}\n\n'
    )


def python_cold_starts(starts_s, count):
    """(start s, readiness, [ms added past listening]) for each start time and readiness."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="defrost-cold-"))
    functions, names = "", []
    for i, start in enumerate(starts_s):
        for readiness, path in (("tcp", None), ("http", "/healthz")):
            name = f"py{i}{readiness}"
            functions += python_function(name, start, work / name, path)
            names.append((name, start, readiness))
    gateway = Defrost(functions)
    results = []
    for name, start, readiness in names:
        added = []
        for _ in range(count):
            post(gateway.port, f"/system/scale-function/{name}", {"serviceName": name, "replicas": 0})
            wait_until_scaled_down(gateway.port, name)
            (work / name).unlink(missing_ok=True)
            status, _ = get_raw(gateway.port, f"/function/{name}", timeout=start + 30)
            arrived = time.time()
            if status != 200:
                sys.exit(f"cold call to {name} answered {status}")
            added.append((arrived - float((work / name).read_text())) * 1000)
        results.append((start, readiness, added))
    gateway.stop()
    return results


def direct_first_answers(start_seconds, count):
    """ms from listening to the first answer of the function started without defrost, called
    by a client that connects the moment it listens (probing every 100 us): the function's own
    share."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="defrost-direct-"))
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    added = []
    for i in range(count):
        port, listened = free_port(), work / f"direct{i}"
        env = dict(os.environ, PORT=str(port), START_SECONDS=str(start_seconds))
        env["LISTENED_FILE"] = str(listened)
        process = subprocess.Popen(["python3", str(STARTING)], env=env)
        try:
            time.sleep(start_seconds * 0.9)  # no need to probe while it sleeps
            sock = connect_when_listening(port, process)
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            arrived = time.time()
            if not answer.startswith(b"HTTP/1.0 200") and not answer.startswith(b"HTTP/1.1 200"):
                sys.exit(f"the function answered {answer[:40]!r}")
            added.append((arrived - float(listened.read_text())) * 1000)
        finally:
            process.kill()
            process.wait()
    return added


def connect_when_listening(port, process):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if process.poll() is not None:
                sys.exit("the function exited while starting")
            time.sleep(0.0001)
    sys.exit("the function never listened")


def parked_value(port, name):
    status, body = get_raw_body(port, "/metrics")
    needle = f'defrost_function_replicas_parked{{function_name="{name}.default"}} '
    for line in body.splitlines():
        if line.startswith(needle):
            return float(line[len(needle):])
    return 0.0


def get_raw_body(port, path):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def parked_calls(count):
    """(ms of calls that thawed a parked replica, ms of calls after as long an idle unparked)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="defrost-park-"))
    functions = 'autoscale_interval = "100ms"\n\n'
    functions += python_function("parked", 0, work / "parked") + 'park_after = "300ms"\n\n'
    functions += python_function("awake", 0, work / "awake")
    gateway = Defrost(functions)
    thawed, idle = [], []
    for _ in range(count):
        for name in ("parked", "awake"):
            if get_raw(gateway.port, f"/function/{name}")[0] != 200:
                sys.exit(f"{name} did not answer")
        deadline = time.monotonic() + 10
        while parked_value(gateway.port, "parked") != 1.0:
            if time.monotonic() > deadline:
                sys.exit("the function was never parked")
            time.sleep(0.02)
        for name, times in (("parked", thawed), ("awake", idle)):
            status, seconds = get_raw(gateway.port, f"/function/{name}")
            if status != 200:
                sys.exit(f"{name} answered {status}")
            times.append(seconds * 1000)
    gateway.stop()
    return thawed, idle


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


def share(through, direct):
    """p50 and p99 through defrost, called directly, and their difference."""
    parts = []
    for p in (50, 99):
        a, b = percentile(through, p), percentile(direct, p)
        parts.append(f"p{p} {a:.2f} / {b:.2f} = {a - b:+.2f} ms")
    return ", ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--ready-ms", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--python-start", default="0.05,0.3,1,3,10")
    parser.add_argument("--python-starts", type=int, default=9)
    args = parser.parse_args()
    build()
    starts_s = [float(s) for s in args.python_start.split(",") if s]
    thawed, idle = parked_calls(args.python_starts * 2)
    print(f"a plain Python function parked after 300 ms idle, called {len(thawed)} times:")
    print(
        f"  parked (thawed by the call): p50 {percentile(thawed, 50):.2f} ms,"
        f" p99 {percentile(thawed, 99):.2f} ms; the same idle, not parked:"
        f" p50 {percentile(idle, 50):.2f} ms, p99 {percentile(idle, 99):.2f} ms"
    )
    print(
        f"plain Python functions, {args.python_starts} cold starts each; from listening to the"
        " answer, through defrost / called directly the moment it listens = defrost's share:"
    )
    own = {start: direct_first_answers(start, args.python_starts) for start in starts_s}
    for start, readiness, added in python_cold_starts(starts_s, args.python_starts):
        print(f"  starts in {start:g} s, {readiness:4} readiness: " + share(added, own[start]))
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
