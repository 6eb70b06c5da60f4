#!/usr/bin/env python3
"""How fast a webhook backlog drains, and what draining costs pushes.

    scripts/bench-webhooks.py [--events 100000] [--pushes 200]

1. Starts a receiver on loopback that answers 503 (down) and one Berth
   process (BERTH_BIN, default target/release/berth, else target/debug/berth)
   with one endpoint on it, then builds a backlog of at least --events events
   with manifest GETs (each a `pull` event) driven by wrk, reading the queue's
   length from GET /api/v1/webhooks.
2. Pushes --pushes small images with the queue idle-but-full (receiver still
   down) and times each manifest PUT: the baseline.
3. Brings the receiver up and, while the backlog drains, pushes --pushes more
   images, timing them the same way.
4. Reports events/s from the first accepted POST to the last event, and the
   push latency percentiles before and during the drain.

Writes bench-results/webhooks.json (git-ignored). Needs wrk.
"""

import argparse
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.up = False
        self.events = 0
        self.posts = 0
        self.refused = 0
        self.first_accept = None
        self.last_accept = None
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        server = self.server
        if not server.up:
            with server.lock:
                server.refused += 1
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        count = len(json.loads(body)["events"])
        now = time.monotonic()
        with server.lock:
            server.events += count
            server.posts += 1
            server.first_accept = server.first_accept or now
            server.last_accept = now
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    location = resp.getheader("location")
    conn.close()
    return resp.status, data, location


def push_blob(port, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, _, location = request(port, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    sep = "&" if "?" in location else "?"
    path = location.replace(f"http://127.0.0.1:{port}", "")
    status, _, _ = request(port, "PUT", f"{path}{sep}digest={digest}", body=data,
                           headers={"content-type": "application/octet-stream"})
    assert status == 201, status
    return digest, len(data)


def make_image(port, repo, n):
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": n}).encode()
    layer = os.urandom(2048)
    cd, cs = push_blob(port, repo, config)
    ld, ls = push_blob(port, repo, layer)
    return json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
    }).encode()


def timed_pushes(port, count, prefix):
    """Pushes `count` images; returns the manifest PUT latencies in ms."""
    latencies = []
    for n in range(count):
        manifest = make_image(port, "bench/pushes", f"{prefix}{n}")
        started = time.monotonic()
        status, _, _ = request(port, "PUT", f"/v2/bench/pushes/manifests/{prefix}{n}", body=manifest,
                               headers={"content-type": MANIFEST})
        latencies.append((time.monotonic() - started) * 1000)
        assert status == 201, status
    return latencies


def queued(port):
    _, body, _ = request(port, "GET", "/api/v1/webhooks")
    endpoint = json.loads(body)["endpoints"][0]
    return endpoint["queued"], endpoint["delivered"]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--pushes", type=int, default=200)
    args = ap.parse_args()
    binary = os.environ.get("BERTH_BIN")
    if not binary:
        release = os.path.join(ROOT, "target/release/berth")
        binary = release if os.path.exists(release) else os.path.join(ROOT, "target/debug/berth")
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")

    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    work = tempfile.mkdtemp(prefix="berth-bench-webhooks.")
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write(f"""
[log]
level = "warn"
[webhooks]
backoff_base_secs = 0.2
backoff_max_secs = 0.5
[[webhooks.endpoints]]
name = "bench"
url = "{hook}"
""")
    port = free_port()
    log = open(os.path.join(work, "berth.log"), "w")
    server = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                               os.path.join(work, "data"), "--config", config], stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                if request(port, "GET", "/v2/")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        manifest = make_image(port, "bench/pulled", "seed")
        assert request(port, "PUT", "/v2/bench/pulled/manifests/v1", body=manifest,
                       headers={"content-type": MANIFEST})[0] == 201

        # 1. The backlog: pulls while the receiver is down.
        started = time.monotonic()
        while queued(port)[0] < args.events:
            subprocess.run(["wrk", "-t2", "-c16", "-d3s", "-H", f"Accept: {MANIFEST}",
                            f"http://127.0.0.1:{port}/v2/bench/pulled/manifests/v1"],
                           check=True, stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # the last pulls' flush
        backlog, _ = queued(port)
        print(f"backlog: {backlog} events queued in {time.monotonic() - started:.1f} s "
              f"(receiver refused {receiver.refused} POSTs meanwhile)")

        # 2. Pushes with a full queue and nothing draining.
        idle = timed_pushes(port, args.pushes, "idle-")
        backlog, _ = queued(port)

        # 3. Drain, pushing meanwhile.
        receiver.up = True
        flipped = time.monotonic()
        during = timed_pushes(port, args.pushes, "drain-")
        pushes_done = time.monotonic()
        deadline = time.monotonic() + 600
        while queued(port)[0] > 0:
            assert time.monotonic() < deadline, "the backlog did not drain in 10 minutes"
            time.sleep(0.2)
        time.sleep(0.3)
        drained = receiver.events
        seconds = receiver.last_accept - receiver.first_accept
        result = {
            "binary": binary,
            "backlog_events": backlog,
            "delivered_events": drained,
            "posts": receiver.posts,
            "drain_seconds": round(seconds, 2),
            "events_per_second": round(drained / seconds),
            "first_delivery_after_up_ms": round((receiver.first_accept - flipped) * 1000),
            "pushes_during_drain_seconds": round(pushes_done - flipped, 2),
            "push_ms_idle": {"p50": round(pct(idle, 50), 1), "p99": round(pct(idle, 99), 1)},
            "push_ms_during_drain": {"p50": round(pct(during, 50), 1), "p99": round(pct(during, 99), 1)},
        }
        print(json.dumps(result, indent=2))
        out = os.path.join(ROOT, "bench-results")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "webhooks.json"), "w") as f:
            json.dump(result, f, indent=2)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
