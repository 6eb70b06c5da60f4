#!/usr/bin/env python3
"""Pull-through cache and air-gap benchmarks (issue 18), side by side with the
reference registry (Debian docker-registry) as the upstream, in one run.

    scripts/bench-proxy.py [--quick] [--berth target/release/berth] [--out bench-results/proxy.json]
                           [--tests cold,flight,small,airgap] [--upstream reference|berth] [--perf FILE]

Measures:
  cold    a 1 GiB blob pulled through Berth (empty cache) vs straight from the
          upstream: wall time, MB/s, time to first byte (curl), 3 runs, median
  warm    the same blob again from Berth's cache vs the upstream serving its own data
  flight  100 clients at once asking Berth for one uncached 256 MiB blob: upstream
          GETs of it (its access log), aggregate MB/s, Berth's peak RSS
  small   1,500 images of 5 small blobs pulled through Berth by 10 threads
          (manifest GET + 5 blob GETs each), cold then warm: images/s; warm again
          with wrk (10 connections, 10 s; a compiled client), and the upstream
          serving the same images to wrk
  airgap  berth export --all / berth import of ~5 GiB vs tar c / tar x + sync of the
          same bytes
BENCH_METRICS_DIR=DIR saves Berth's /metrics after each small phase there.
Everything binds to 127.0.0.1 and lives in one temp dir, removed at the end.
Not part of CI. --quick shrinks every size for a smoke run.
"""

import argparse
import concurrent.futures as cf
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


class Upstream:
    """The reference registry on the filesystem, its access log kept."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "upstream")
        os.makedirs(self.dir)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        cfg = os.path.join(tmp, "upstream.yml")
        with open(cfg, "w") as f:
            f.write(
                "version: 0.1\nlog: { level: info, accesslog: { disabled: false } }\n"
                f"storage: {{ filesystem: {{ rootdirectory: {self.dir} }}, delete: {{ enabled: true }} }}\n"
                f"http: {{ addr: {self.addr} }}\n"
            )
        self.log = os.path.join(tmp, "upstream.log")
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env)
        wait_http(f"http://{self.addr}/v2/")

    def cpu_secs(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hits(self, path):
        with open(self.log, errors="replace") as f:
            return sum(1 for line in f if f'"GET {path} ' in line)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Berth:
    def __init__(self, binary, tmp, name, config):
        self.data = os.path.join(tmp, name)
        os.makedirs(self.data)
        self.cfg = os.path.join(self.data, "berth.toml")
        with open(self.cfg, "w") as f:
            f.write(config)
        self.binary = binary
        self.log = os.path.join(self.data, "berth.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") and k != "RUST_LOG"}
        self.env = env
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data, "--config", self.cfg],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", open(self.log).read())
            if m:
                self.addr = m.group(1)
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("berth did not start: " + open(self.log).read()[-2000:])
        wait_http(f"http://{self.addr}/v2/")

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def cpu_secs(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cli(self, *args):
        t0 = time.time()
        r = subprocess.run([self.binary, *args, "--data-dir", self.data, "--config", self.cfg], capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"berth {' '.join(args)}: {r.stderr[-2000:]}")
        return time.time() - t0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def caching(upstream, extra=""):
    return f"[proxy]\n{extra}\n[[proxy.upstreams]]\nname = \"up\"\nurl = \"http://{upstream.addr}\"\n"


# ------------------------------------------------------------------ pushes --
def push_blob(conn, repo, data, digest):
    conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    r = conn.getresponse()
    r.read()
    loc = r.getheader("Location")
    assert r.status == 202, r.status
    path = re.sub(r"^https?://[^/]+", "", loc)
    sep = "&" if "?" in path else "?"
    conn.request("PUT", f"{path}{sep}digest={digest}", body=data, headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    r.read()
    assert r.status == 201, (r.status, path)


def push_big_blob(addr, repo, path, digest):
    """A large blob from a file, POST then PUT with curl (constant memory)."""
    loc = subprocess.run(
        ["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST", f"http://{addr}/v2/{repo}/blobs/uploads/"],
        capture_output=True, text=True, check=True,
    ).stdout
    location = re.search(r"(?im)^location: *(\S+)", loc).group(1)
    if location.startswith("/"):
        location = f"http://{addr}{location}"
    sep = "&" if "?" in location else "?"
    subprocess.run(
        ["curl", "-sf", "-H", "Content-Type: application/octet-stream", "-T", path,
         f"{location}{sep}digest={digest}", "-o", "/dev/null"],
        check=True,
    )


def manifest_of(config, layers):
    def desc(mt, data_or_digest, size=None):
        if isinstance(data_or_digest, bytes):
            return {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(data_or_digest).hexdigest(), "size": len(data_or_digest)}
        return {"mediaType": mt, "digest": data_or_digest, "size": size}
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", *l) if isinstance(l, tuple) else desc("application/vnd.oci.image.layer.v1.tar", l) for l in layers],
    }).encode()


def put_manifest(conn, repo, tag, body):
    conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body, headers={"Content-Type": OCI_MANIFEST})
    r = conn.getresponse()
    r.read()
    assert r.status == 201, r.status


def big_file(tmp, size, name):
    path = os.path.join(tmp, name)
    h = hashlib.sha256()
    chunk = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(chunk, left))
            h.update(b)
            f.write(b)
            left -= len(b)
    return path, "sha256:" + h.hexdigest()


def curl_get(url, out="/dev/null"):
    r = subprocess.run(["curl", "-sf", "-o", out, "-w", "%{time_starttransfer} %{time_total} %{size_download}", url],
                       capture_output=True, text=True, check=True)
    ttfb, total, size = r.stdout.split()
    return float(ttfb), float(total), int(size)


# ------------------------------------------------------------------- tests --
def bench_cold_warm(args, tmp, upstream, results):
    size = (64 << 20) if args.quick else (1 << 30)
    path, digest = big_file(tmp, size, "big.bin")
    push_big_blob(upstream.addr, "bench/big", path, digest)
    os.remove(path)
    direct_url = f"http://{upstream.addr}/v2/bench/big/blobs/{digest}"
    curl_get(direct_url)  # the upstream's file in the page cache for every run alike
    runs = []
    def children_cpu():
        t = os.times()
        return t.children_user + t.children_system

    for i in range(3):
        up0, curl0 = upstream.cpu_secs(), children_cpu()
        direct = curl_get(direct_url)
        up_direct, curl_direct = upstream.cpu_secs() - up0, children_cpu() - curl0
        berth = Berth(args.berth, tmp, f"cold-{i}", caching(upstream))
        cpu0, up0, curl0 = berth.cpu_secs(), upstream.cpu_secs(), children_cpu()
        cold = curl_get(f"http://{berth.addr}/v2/up/bench/big/blobs/{digest}")
        up_cold, curl_cold = upstream.cpu_secs() - up0, children_cpu() - curl0
        # The client has every byte once they match the digest; the store
        # may still be making them durable. The warm pull starts after that.
        stored_at = os.path.join(berth.data, "blobs", "sha256", digest[7:9], digest[7:])
        deadline = time.time() + 120
        while not os.path.exists(stored_at) and time.time() < deadline:
            time.sleep(0.05)
        cpu_cold = berth.cpu_secs() - cpu0
        warm = curl_get(f"http://{berth.addr}/v2/up/bench/big/blobs/{digest}")
        runs.append({"direct": direct, "cold": cold, "warm": warm, "berth_cpu_s_cold": cpu_cold,
                     "upstream_cpu_s_direct": up_direct, "curl_cpu_s_direct": curl_direct,
                     "upstream_cpu_s_cold": up_cold, "curl_cpu_s_cold": curl_cold})
        berth.stop()
        shutil.rmtree(berth.data)
    med = lambda key, idx: statistics.median(r[key][idx] for r in runs)
    mb = size / 1e6
    results["cold_warm"] = {
        "bytes": size,
        "runs": runs,
        "direct_MBps": mb / med("direct", 1),
        "cold_MBps": mb / med("cold", 1),
        "warm_MBps": mb / med("warm", 1),
        "cold_slower_pct": 100 * (med("cold", 1) / med("direct", 1) - 1),
        "direct_ttfb_ms": 1000 * med("direct", 0),
        "cold_ttfb_ms": 1000 * med("cold", 0),
        "first_byte_after_upstream_ms": 1000 * (med("cold", 0) - med("direct", 0)),
        "berth_cpu_s_per_GB_cold": statistics.median(r["berth_cpu_s_cold"] for r in runs) / (size / 1e9),
        # What the direct pull costs the upstream and curl, and what the cold one costs them.
        "direct_cpu_s_per_GB": statistics.median(r["upstream_cpu_s_direct"] + r["curl_cpu_s_direct"] for r in runs) / (size / 1e9),
        "cold_others_cpu_s_per_GB": statistics.median(r["upstream_cpu_s_cold"] + r["curl_cpu_s_cold"] for r in runs) / (size / 1e9),
    }
    print("cold/warm:", json.dumps({k: v for k, v in results["cold_warm"].items() if k != "runs"}), flush=True)


def bench_single_flight(args, tmp, upstream, results):
    size = (16 << 20) if args.quick else (256 << 20)
    clients = 100
    path, digest = big_file(tmp, size, "flight.bin")
    push_big_blob(upstream.addr, "bench/flight", path, digest)
    os.remove(path)
    berth = Berth(args.berth, tmp, "flight", caching(upstream))
    url = f"http://{berth.addr}/v2/up/bench/flight/blobs/{digest}"
    before = upstream.hits(f"/v2/bench/flight/blobs/{digest}")
    t0 = time.time()
    procs = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url], stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    sizes = [int(p.communicate()[0] or 0) for p in procs]
    wall = time.time() - t0
    time.sleep(0.5)
    fetches = upstream.hits(f"/v2/bench/flight/blobs/{digest}") - before
    results["single_flight"] = {
        "bytes": size,
        "clients": clients,
        "complete_clients": sum(1 for s in sizes if s == size),
        "upstream_gets": fetches,
        "aggregate_MBps": sum(sizes) / 1e6 / wall,
        "wall_s": wall,
        "berth_peak_rss_MiB": berth.peak_rss_mib(),
    }
    print("single flight:", json.dumps(results["single_flight"]), flush=True)
    berth.stop()
    shutil.rmtree(berth.data)


def bench_small_images(args, tmp, upstream, results):
    images = 150 if args.quick else 1500
    pullers = 10

    def make(i):
        blobs = [os.urandom(1024 + (i * 7 + j * 131) % 3072) for j in range(5)]
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "n": i}).encode()
        return config, blobs[1:], blobs

    digests = {}

    def push_range(rng):
        conn = http.client.HTTPConnection(upstream.addr)
        for i in rng:
            config, layers, _ = make(i)
            digests[i] = ["sha256:" + hashlib.sha256(data).hexdigest() for data in [config, *layers]]
            for data, digest in zip([config, *layers], digests[i]):
                push_blob(conn, f"small/img{i}", data, digest)
            put_manifest(conn, f"small/img{i}", "v1", manifest_of(config, layers))
        conn.close()

    t0 = time.time()
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(push_range, [range(k, images, 8) for k in range(8)]))
    push_s = time.time() - t0
    berth = Berth(args.berth, tmp, "small", caching(upstream))

    def pull_range(rng):
        conn = http.client.HTTPConnection(berth.addr)
        for i in rng:
            conn.request("GET", f"/v2/up/small/img{i}/manifests/v1", headers={"Accept": OCI_MANIFEST})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (r.status, body[:200])
            m = json.loads(body)
            for d in [m["config"], *m["layers"]]:
                conn.request("GET", f"/v2/up/small/img{i}/blobs/{d['digest']}")
                r = conn.getresponse()
                data = r.read()
                assert r.status == 200 and len(data) == d["size"], (r.status, i)
        conn.close()

    rates = {}
    for phase in ["cold", "warm"]:
        perf = None
        if args.perf and args.perf_phase == phase:
            perf = subprocess.Popen(["perf", "record", "-g", "-o", args.perf, "-p", str(berth.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0, upstream_cpu0 = berth.cpu_secs(), upstream.cpu_secs()
        client0 = os.times()
        t0 = time.time()
        with cf.ThreadPoolExecutor(pullers) as ex:
            list(ex.map(pull_range, [range(k, images, pullers) for k in range(pullers)]))
        wall = time.time() - t0
        client1 = os.times()
        if perf:
            perf.send_signal(2)
            perf.wait(timeout=60)
        if os.environ.get("BENCH_METRICS_DIR"):
            # Berth's own counts after the phase (database and store operations per image).
            subprocess.run(["curl", "-s", "-o", os.path.join(os.environ["BENCH_METRICS_DIR"], f"small-{phase}.metrics"),
                            f"http://{berth.addr}/metrics"], check=False)
        rates[phase] = {
            "images_per_s": images / wall,
            "wall_s": wall,
            "berth_cpu_s": berth.cpu_secs() - cpu0,
            "upstream_cpu_s": upstream.cpu_secs() - upstream_cpu0,
            "client_cpu_s": (client1.user - client0.user) + (client1.system - client0.system),
        }
    # Warm again with a compiled client: the Python one above is as busy as
    # Berth. wrk walks the same requests (manifest, then its five blobs, image
    # after image) on 10 connections; the reference registry serving the same
    # images from its own storage is measured the same way.
    for target, prefix in [("warm_wrk", "/v2/up/small"), ("upstream_wrk", "/v2/small")]:
        list_path = os.path.join(tmp, f"pull-list-{target}.txt")
        with open(list_path, "w") as f:
            for i in range(images):
                f.write(f"M {prefix}/img{i}/manifests/v1\n")
                for d in digests[i]:
                    f.write(f"B {prefix}/img{i}/blobs/{d}\n")
        addr = berth.addr if target == "warm_wrk" else upstream.addr
        perf = None
        if args.perf and args.perf_phase == target:
            perf = subprocess.Popen(["perf", "record", "-g", "-o", args.perf, "-p", str(berth.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = berth.cpu_secs()
        out = subprocess.run(
            ["wrk", "-t2", "-c10", "-d10s", "-s", os.path.join(ROOT, "scripts/lib/bench-pull-list.lua"), f"http://{addr}"],
            env={**os.environ, "BENCH_PULL_LIST": list_path}, capture_output=True, text=True, check=True).stdout
        if perf:
            perf.send_signal(2)
            perf.wait(timeout=60)
        fields = dict(kv.split("=") for kv in re.search(r"RESULT (.*)", out).group(1).split())
        secs = int(fields["duration_us"]) / 1e6
        requests = int(fields["requests"])
        rates[target] = {
            "images_per_s": requests / 6 / secs,
            "requests_per_s": requests / secs,
            "errors": int(fields["errors"]) + int(fields["non2xx"]),
            "p50_ms": int(fields["p50_us"]) / 1000,
            "p99_ms": int(fields["p99_us"]) / 1000,
            "berth_cpu_s": berth.cpu_secs() - cpu0,
            "wall_s": secs,
        }
    results["small_images"] = {"images": images, "blobs_per_image": 5, "pullers": pullers, "upstream_push_s": push_s, **rates}
    print("small images:", json.dumps(results["small_images"]), flush=True)
    berth.stop()
    shutil.rmtree(berth.data)


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def bench_airgap(args, tmp, results):
    layers = 4 if args.quick else 20
    layer_size = (16 << 20) if args.quick else (256 << 20)
    source = Berth(args.berth, tmp, "export-source", "")
    for i in range(layers):
        path, digest = big_file(tmp, layer_size, "layer.bin")
        push_big_blob(source.addr, f"air/img{i}", path, digest)
        os.remove(path)
        conn = http.client.HTTPConnection(source.addr)
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
        push_blob(conn, f"air/img{i}", config, "sha256:" + hashlib.sha256(config).hexdigest())
        put_manifest(conn, f"air/img{i}", "v1", manifest_of(config, [(digest, layer_size)]))
        conn.close()
    source.stop()
    total = layers * layer_size
    archive = os.path.join(tmp, "export.tar")
    dropped = drop_caches()
    export_s = source.cli("export", "--all", archive)
    os.sync()
    drop_caches()
    t0 = time.time()
    subprocess.run(["tar", "cf", os.path.join(tmp, "tar.tar"), "-C", source.data, "blobs"], check=True)
    os.sync()
    tar_c_s = time.time() - t0
    target = os.path.join(tmp, "import-target")
    os.makedirs(target)
    cfg = os.path.join(target, "berth.toml")
    open(cfg, "w").close()
    drop_caches()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") and k != "RUST_LOG"}
    t0 = time.time()
    r = subprocess.run([args.berth, "import", archive, "--data-dir", target, "--config", cfg], capture_output=True, text=True, env=env)
    import_s = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    untar = os.path.join(tmp, "untar")
    os.makedirs(untar)
    drop_caches()
    t0 = time.time()
    subprocess.run(["tar", "xf", os.path.join(tmp, "tar.tar"), "-C", untar], check=True)
    subprocess.run(["sync"], check=True)
    tar_x_s = time.time() - t0
    mb = total / 1e6
    results["airgap"] = {
        "bytes": total,
        "page_cache_dropped": dropped,
        "export_MBps": mb / export_s, "tar_c_MBps": mb / tar_c_s, "export_vs_tar": tar_c_s / export_s,
        "import_MBps": mb / import_s, "tar_x_sync_MBps": mb / tar_x_s, "import_vs_tar": tar_x_s / import_s,
    }
    print("airgap:", json.dumps(results["airgap"]), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--berth", default=os.path.join(ROOT, "target/release/berth"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results/proxy.json"))
    p.add_argument("--tests", default="cold,flight,small,airgap")
    p.add_argument("--upstream", choices=["reference", "berth"], default="reference",
                   help="the upstream: the reference registry, or another Berth (small test only)")
    p.add_argument("--perf", metavar="FILE", help="perf record -g Berth during a phase of the small test into FILE")
    p.add_argument("--perf-phase", choices=["cold", "warm", "warm_wrk"], default="warm_wrk")
    args = p.parse_args()
    tests = args.tests.split(",")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="berth-bench-proxy-", dir=os.environ.get("BENCH_TMPDIR", os.path.join(ROOT, "target")))
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "nproc": os.cpu_count(),
        "loadavg_before": open("/proc/loadavg").read().split()[:3],
        "tests": args.tests,
        "quick": args.quick,
    }
    # Only the small test can run against another Berth: the others read the
    # reference registry's access log.
    upstream = Berth(args.berth, tmp, "upstream-berth", "") if args.upstream == "berth" else Upstream(tmp)
    results["upstream"] = args.upstream
    try:
        if "cold" in tests:
            bench_cold_warm(args, tmp, upstream, results)
        if "flight" in tests:
            bench_single_flight(args, tmp, upstream, results)
        if "small" in tests:
            bench_small_images(args, tmp, upstream, results)
        if "airgap" in tests:
            bench_airgap(args, tmp, results)
    finally:
        upstream.stop()
        results["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"results in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
