"""Shared by the Python benchmarks: release builds, a defrost with a given config, HTTP calls,
percentiles. Standard library only."""
import atexit
import http.client
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFROST = ROOT / "target" / "release" / "defrost"
UPSTREAM = ROOT / "target" / "release" / "examples" / "upstream"


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "defrost", "--example", "upstream"],
        cwd=ROOT,
        check=True,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Defrost:
    """A defrost process with the given [[function]] sections; stopped at exit."""

    def __init__(self, functions, log_level="warn"):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="defrost-bench-")
        config = pathlib.Path(self.dir.name) / "defrost.toml"
        config.write_text(f'[gateway]\nlisten = "127.0.0.1:{self.port}"\n\n' + functions)
        self.log = open(pathlib.Path(self.dir.name) / "defrost.log", "w+")
        env = dict(os.environ, RUST_LOG=log_level)
        self.process = subprocess.Popen(
            [str(DEFROST), "--config", str(config)], stderr=self.log, stdout=self.log, env=env
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + 30
        while get(self.port, "/healthz")[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("defrost did not start; see its log: " + self.log_text())
            time.sleep(0.05)

    def log_text(self):
        self.log.flush()
        return (pathlib.Path(self.dir.name) / "defrost.log").read_text()

    def rss_mb(self):
        for line in open(f"/proc/{self.process.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def function(name, *args, min_replicas=0, max_replicas=1):
    """A [[function]] section running the benchmarks' upstream with `args`."""
    command = json.dumps([str(UPSTREAM), *map(str, args)])
    return (
        f'[[function]]\nname = "{name}"\ncommand = {command}\n'
        f"min_replicas = {min_replicas}\nmax_replicas = {max_replicas}\n\n"
    )


def get(port, path, timeout=60):
    """(status, seconds) of one GET on a new connection; status 0 when it failed."""
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, time.perf_counter() - started
    except OSError:
        return 0, time.perf_counter() - started


def get_raw(port, path, timeout=60):
    """(status, seconds) like get(), over a plain socket: the least client time on top."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        return status, time.perf_counter() - started
    except (OSError, ValueError, IndexError):
        return 0, time.perf_counter() - started


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    return response.status, answer


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
