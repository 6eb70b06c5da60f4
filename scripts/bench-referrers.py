#!/usr/bin/env python3
"""Referrers pagination on a subject with many referrers.

Pushes N artifact manifests (signature, SBOM and attestation types, with two
short annotations each) whose subject is one image to a running berth, then
follows the referrers API's Link headers: without n, with an artifactType
filter, and with n=10000. Prints, for each walk, how many referrers and pages
it saw, the largest page and the sum of all pages (what one unpaged answer
would carry), and the slowest and median page times.

    berth serve --listen 127.0.0.1:5000 --data-dir "$(mktemp -d)" &
    scripts/bench-referrers.py http://127.0.0.1:5000 10000

Standard library only. Use a fresh data dir: the repository bench/referrers
is written to.
"""
import hashlib, json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

base, n = sys.argv[1], int(sys.argv[2])
repo = "bench/referrers"

def req(method, path, body=None, headers=None):
    r = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(r) as resp:
        return resp.status, dict(resp.headers), resp.read()

def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()

def push_blob(b):
    req("POST", f"/v2/{repo}/blobs/uploads/?digest={sha(b)}", b, {"content-type": "application/octet-stream"})

empty = b"{}"
push_blob(empty)
layer = b"subject layer"
push_blob(layer)
subject = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2},
    "layers": [{"mediaType": "application/octet-stream", "digest": sha(layer), "size": len(layer)}]}).encode()
req("PUT", f"/v2/{repo}/manifests/v1", subject, {"content-type": "application/vnd.oci.image.manifest.v1+json"})
payload = b"signature payload"
push_blob(payload)
types = ["application/vnd.dev.cosign.artifact.sig.v1+json", "application/spdx+json", "application/vnd.in-toto+json"]

def push_referrer(i):
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": types[i % 3],
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha(payload), "size": len(payload)}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(subject), "size": len(subject)},
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:%02dZ" % (i % 60),
                        "dev.example.signer": "ci-%d@example.com" % i}}).encode()
    req("PUT", f"/v2/{repo}/manifests/{sha(m)}", m, {"content-type": "application/vnd.oci.image.manifest.v1+json"})

t = time.time()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(push_referrer, range(n)))
print(f"pushed {n} referrers in {time.time() - t:.1f} s")

def walk(path):
    sizes, times, seen = [], [], 0
    while path:
        t = time.time()
        status, headers, body = req("GET", path)
        times.append(time.time() - t)
        index = json.loads(body)
        assert status == 200 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        seen += len(index["manifests"])
        sizes.append(len(body))
        link = headers.get("Link") or headers.get("link")
        path = link.split(";")[0].strip()[1:-1] if link else None
    return seen, sizes, times

for q in ["", "?artifactType=application%2Fspdx%2Bjson", "?n=10000"]:
    seen, sizes, times = walk(f"/v2/{repo}/referrers/{sha(subject)}{q}")
    print(f"GET referrers{q or ' (no n)'}: {seen} referrers in {len(sizes)} pages; "
          f"largest page {max(sizes)} bytes, all pages {sum(sizes)} bytes; "
          f"slowest page {max(times) * 1000:.0f} ms, median {sorted(times)[len(times) // 2] * 1000:.0f} ms")
