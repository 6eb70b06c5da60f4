#!/usr/bin/env python3
"""Helper of scripts/soak-sigkill.sh (Python 3 standard library only).

    soak_sigkill.py --berth BIN --data-dir DIR --config FILE --log FILE
                    [--kills 100] [--pushers 4] [--seed N]
                    [--min-delay 0.05] [--max-delay 3.0]

Starts `berth serve` on a free port of 127.0.0.1 (the port it reports; every
restart binds the same one), runs PUSHERS threads that push small images as a
registry client does, and kills the server with SIGKILL KILLS times, each
after a random delay in [MIN_DELAY, MAX_DELAY] seconds from the moment it
answered again, restarting it on the same data at once. The pushers retry
through the outage: a monolithic upload or a manifest PUT is sent again, a
chunked upload continues from the offset the server reports for its session.

Everything the server acknowledged is recorded: a blob when its upload was
answered 201, a manifest when its PUT was answered 201 with the right
Docker-Content-Digest. At the end every acknowledged manifest is fetched by
tag and by digest and every acknowledged blob by digest, and each must be the
bytes that were pushed (sha256 and length). The server is then stopped and
`berth fsck --verify --json` re-hashes the whole store.

Exit status 0 when nothing acknowledged was lost, no answer was wrong (a 5xx,
or a 4xx a correct server does not give here), no acknowledged upload session
vanished and fsck found no missing, truncated or corrupt blob. Files that a
kill left behind (orphan blob files, upload files without a session, sessions
without a file) are what garbage collection removes; they are counted, not
failed.

The environment is passed to berth (the S3 and PostgreSQL settings of a
scale-out run come that way).
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
READY_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 60
# fsck problem kinds that mean data is missing or damaged; the others are
# what a kill leaves behind for garbage collection.
DATA_PROBLEMS = {"missing_blob", "size_mismatch", "corrupt_blob", "store_not_configured"}


class Down(Exception):
    """No answer: the server is gone (or not back yet)."""


class Wrong(Exception):
    """An answer a correct server does not give here."""


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    """`berth serve` on one port across restarts; stderr appended to a log."""

    def __init__(self, args):
        self.args = args
        self.port = 0
        self.proc = None
        self.starts = 0

    def start(self):
        log = open(self.args.log, "ab")
        offset = log.tell()
        self.proc = subprocess.Popen(
            [self.args.berth, "serve", "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", self.args.data_dir, "--config", self.args.config],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + READY_TIMEOUT_S
        if self.port == 0:
            # The first start binds port 0; the log says which port it got.
            while self.port == 0:
                with open(self.args.log, "rb") as f:
                    f.seek(offset)
                    found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", f.read())
                if found:
                    self.port = int(found.group(1))
                else:
                    self.check_alive(deadline)
                    time.sleep(0.01)
        while True:
            try:
                status, _, _ = request(self.port, "GET", "/v2/", timeout=2)
                if status == 200:
                    return
            except Down:
                pass
            self.check_alive(deadline)
            time.sleep(0.01)

    def check_alive(self, deadline):
        if self.proc.poll() is not None:
            raise SystemExit(f"soak: berth exited with {self.proc.returncode} while starting "
                             f"(start {self.starts}, port {self.port}); see {self.args.log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: berth did not answer within {READY_TIMEOUT_S} s; see {self.args.log}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise SystemExit("soak: berth did not stop within 30 s of SIGTERM")


def request(port, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT_S):
    """One request on a new connection: (status, headers, body); Down when
    the connection fails before a whole answer arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    except (OSError, http.client.HTTPException) as e:
        raise Down(f"{method} {path}: {e}") from e
    finally:
        conn.close()


def path_of(location):
    """The path and query of a Location header (absolute or relative)."""
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(path, pair):
    return f"{path}{'&' if '?' in path else '?'}{pair}"


def error_code(data):
    try:
        return json.loads(data)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


class Record:
    """What the server acknowledged, and what went wrong, shared by the pushers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.blobs = {}        # (repo, digest) -> size
        self.manifests = []    # (repo, tag, digest, bytes)
        self.wrong = []
        self.sessions_lost = 0
        self.resumed = 0
        self.finishes_cut = 0
        self.retries = 0
        self.uploads = {"monolithic": 0, "chunked": 0}

    def add(self, key, value=1):
        with self.lock:
            setattr(self, key, getattr(self, key) + value)


class Pusher(threading.Thread):
    def __init__(self, n, soak):
        super().__init__(name=f"pusher-{n}", daemon=True)
        self.n = n
        self.soak = soak
        self.rng = random.Random(soak.args.seed * 1000 + n)
        self.repo = f"soak/p{n}"

    def port(self):
        return self.soak.server.port

    def retry(self, step):
        """Runs step until it gets through, waiting for the server while it is down."""
        while True:
            try:
                return step()
            except Down:
                self.soak.record.add("retries")
                self.soak.up.wait()
                time.sleep(0.01)

    def blob_bytes(self):
        # Log-uniform from 256 B to 256 KiB: mostly small, some that take
        # several chunks.
        size = int(2 ** self.rng.uniform(8, 18))
        return self.rng.randbytes(size)

    def run(self):
        try:
            count = 0
            while not self.soak.stop.is_set():
                self.push_image(count)
                count += 1
        except Exception as e:  # noqa: BLE001 - any failure of a pusher fails the soak
            with self.soak.record.lock:
                self.soak.record.wrong.append(f"{self.name}: {type(e).__name__}: {e}")
            self.soak.failed.set()

    def push_image(self, count):
        layers = [self.blob_bytes() for _ in range(self.rng.randint(1, 3))]
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
            "config": {"Labels": {"soak": f"{self.n}-{count}-{self.rng.getrandbits(64)}"}},
        }).encode()
        for blob in [config] + layers:
            if self.rng.random() < 0.5:
                self.retry(lambda blob=blob: self.upload_monolithic(blob))
            else:
                self.upload_chunked(blob)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
                       for layer in layers],
        }).encode()
        tag = f"t{count}"
        self.retry(lambda: self.put_manifest(tag, manifest))

    def acked_blob(self, data, how):
        with self.soak.record.lock:
            self.soak.record.blobs[(self.repo, digest_of(data))] = len(data)
            self.soak.record.uploads[how] += 1

    def upload_monolithic(self, data):
        path = f"/v2/{self.repo}/blobs/uploads/?digest={digest_of(data)}"
        status, _, body = request(self.port(), "POST", path, data,
                                  {"Content-Type": "application/octet-stream"})
        if status != 201:
            raise Wrong(f"monolithic upload to {self.repo}: {status} {body[:300]!r}")
        self.acked_blob(data, "monolithic")

    def upload_chunked(self, data):
        """POST, PATCHes, PUT; after an outage, continues at the offset the
        session reports."""
        digest = digest_of(data)
        chunk = self.rng.randint(16 * 1024, 96 * 1024)
        session = None   # the session's path, once the POST was answered
        finishing = False
        finish_cut = False  # a kill cut the finishing PUT
        while True:
            try:
                if session is None:
                    status, headers, body = request(self.port(), "POST", f"/v2/{self.repo}/blobs/uploads/")
                    if status != 202 or "location" not in headers:
                        raise Wrong(f"start of an upload to {self.repo}: {status} {body[:300]!r}")
                    session = path_of(headers["location"])
                    offset = 0
                else:
                    offset = self.session_offset(session, digest, finishing)
                    if offset is None:
                        # The finishing PUT went through, its 201 died with
                        # the server: one POST more to have it acknowledged.
                        self.retry(lambda: self.upload_monolithic(data))
                        return
                    self.soak.record.add("resumed")
                while offset < len(data):
                    end = min(offset + chunk, len(data))
                    status, headers, body = request(
                        self.port(), "PATCH", session, data[offset:end],
                        {"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{end - 1}"})
                    if status != 202 or "location" not in headers:
                        raise Wrong(f"PATCH {offset}-{end - 1} of {digest}: {status} {body[:300]!r}")
                    session = path_of(headers["location"])
                    offset = end
                finishing = True
                status, _, body = request(self.port(), "PUT", with_query(session, f"digest={digest}"))
                if status == 404 and finish_cut and error_code(body) == "BLOB_UPLOAD_UNKNOWN":
                    # The cut PUT had taken the session's bytes (on the
                    # filesystem: moved them into the blob's place) without
                    # recording the blob: the session is unusable, the blob
                    # unacknowledged. A client starts over.
                    self.soak.record.add("finishes_cut")
                    session, finishing, finish_cut = None, False, False
                    continue
                if status != 201:
                    raise Wrong(f"PUT finishing {digest} in {self.repo}: {status} {body[:300]!r}")
                self.acked_blob(data, "chunked")
                return
            except Down:
                finish_cut = finish_cut or finishing
                self.soak.record.add("retries")
                self.soak.up.wait()
                time.sleep(0.01)

    def session_offset(self, session, digest, finishing):
        """How many bytes the session holds, or None when it is gone because
        the finishing PUT went through before the kill (the blob is there)."""
        status, headers, body = request(self.port(), "GET", session)
        if status == 204:
            # "0-<last byte>"; "0-0" is also an empty session, and this
            # pusher never leaves one byte (chunks are 16 KiB or more).
            found = re.fullmatch(r"0-(\d+)", headers.get("range", ""))
            if not found:
                raise Wrong(f"status of upload {session}: Range {headers.get('range')!r}")
            last = int(found.group(1))
            return 0 if last == 0 else last + 1
        if status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN":
            head, _, _ = request(self.port(), "HEAD", f"/v2/{self.repo}/blobs/{digest}")
            if finishing and head == 200:
                return None
            self.soak.record.add("sessions_lost")
            raise Wrong(f"upload session {session} of {digest} was answered 202 and is gone after a kill")
        raise Wrong(f"status of upload {session}: {status} {body[:300]!r}")

    def put_manifest(self, tag, manifest):
        digest = digest_of(manifest)
        status, headers, body = request(self.port(), "PUT", f"/v2/{self.repo}/manifests/{tag}", manifest,
                                        {"Content-Type": OCI_MANIFEST})
        if status != 201:
            # A 400 MANIFEST_BLOB_UNKNOWN here means an acknowledged blob is gone.
            raise Wrong(f"PUT {self.repo}:{tag}: {status} {body[:300]!r}")
        if headers.get("docker-content-digest") != digest:
            raise Wrong(f"PUT {self.repo}:{tag} acknowledged as {headers.get('docker-content-digest')}")
        with self.soak.record.lock:
            self.soak.record.manifests.append((self.repo, tag, digest, manifest))


class Soak:
    def __init__(self, args):
        self.args = args
        self.server = Server(args)
        self.record = Record()
        self.up = threading.Event()
        self.stop = threading.Event()
        self.failed = threading.Event()

    def run(self):
        args = self.args
        rng = random.Random(args.seed)
        began = time.monotonic()
        self.server.start()
        self.up.set()
        pushers = [Pusher(n, self) for n in range(args.pushers)]
        for p in pushers:
            p.start()
        kills = 0
        acked_at_kill = []
        for _ in range(args.kills):
            time.sleep(rng.uniform(args.min_delay, args.max_delay))
            if self.failed.is_set():
                break
            self.up.clear()
            self.server.kill()
            kills += 1
            with self.record.lock:
                acked_at_kill.append(len(self.record.manifests))
            self.server.start()
            self.up.set()
            if kills % 10 == 0:
                with self.record.lock:
                    print(f"soak: {kills} kills, {len(self.record.manifests)} manifests and "
                          f"{len(self.record.blobs)} blobs acknowledged so far", flush=True)
        # The pushers finish what they are doing with the server up.
        self.stop.set()
        for p in pushers:
            p.join()
        pushed_s = time.monotonic() - began
        quiet = sum(1 for a, b in zip(acked_at_kill, acked_at_kill[1:]) if a == b)

        lost_manifests, lost_blobs, verified_bytes = self.verify()
        self.server.stop()
        fsck = self.fsck()
        data_problems = [p for p in fsck["problems"] if p.get("kind") in DATA_PROBLEMS]
        leftovers = {}
        for p in fsck["problems"]:
            if p.get("kind") not in DATA_PROBLEMS:
                leftovers[p.get("kind")] = leftovers.get(p.get("kind"), 0) + 1

        r = self.record
        print(f"soak: {kills} SIGKILLs of berth serve in {pushed_s:.0f} s ({self.server.starts} starts), "
              f"{args.pushers} pushers, seed {args.seed}")
        print(f"soak: acknowledged {len(r.manifests)} manifests and {len(r.blobs)} blobs "
              f"({sum(r.blobs.values())} bytes; {r.uploads['monolithic']} monolithic, "
              f"{r.uploads['chunked']} chunked uploads); {r.retries} requests retried after a kill, "
              f"{r.resumed} chunked uploads continued from the session's offset, {r.finishes_cut} started over "
              f"because their session had no bytes left after a kill cut its finishing PUT; "
              f"{quiet} of {max(kills - 1, 0)} intervals between kills acknowledged no manifest")
        print(f"soak: verified {len(r.manifests) - len(lost_manifests)} manifests (by tag and by digest) and "
              f"{len(r.blobs) - len(lost_blobs)} blobs ({verified_bytes} bytes) byte for byte")
        print(f"soak: lost {len(lost_manifests)} manifests and {len(lost_blobs)} blobs; "
              f"{len(r.wrong)} wrong answers; {r.sessions_lost} acknowledged upload sessions lost")
        print(f"soak: fsck --verify: {fsck['blobs_checked']} blobs checked, {len(data_problems)} missing, "
              f"truncated or corrupt; left by kills for the collector: "
              f"{', '.join(f'{n} {k}' for k, n in sorted(leftovers.items())) or 'nothing'}")
        for line in (r.wrong + lost_manifests + lost_blobs)[:20]:
            print(f"soak:   {line}")
        for p in data_problems[:20]:
            print(f"soak:   fsck: {json.dumps(p)}")
        ok = not (lost_manifests or lost_blobs or r.wrong or r.sessions_lost or data_problems)
        print("soak: PASSED" if ok else "soak: FAILED")
        return 0 if ok else 1

    def verify(self):
        """Fetches everything acknowledged; returns what is lost and the bytes read."""
        port = self.server.port
        lost_manifests, lost_blobs, read = [], [], 0
        for repo, tag, digest, manifest in self.record.manifests:
            for reference in (tag, digest):
                status, headers, body = request(port, "GET", f"/v2/{repo}/manifests/{reference}",
                                                headers={"Accept": OCI_MANIFEST})
                if status != 200 or body != manifest or headers.get("docker-content-digest") != digest:
                    lost_manifests.append(f"manifest {repo}:{reference}: {status}, "
                                          f"{len(body)} bytes hashing to {digest_of(body)}, not {digest}")
                    break
        for (repo, digest), size in sorted(self.record.blobs.items()):
            status, _, body = request(port, "GET", f"/v2/{repo}/blobs/{digest}")
            read += len(body)
            if status != 200 or len(body) != size or digest_of(body) != digest:
                lost_blobs.append(f"blob {repo}@{digest}: {status}, {len(body)} bytes hashing to "
                                  f"{digest_of(body)}, not {size} bytes")
        return lost_manifests, lost_blobs, read

    def fsck(self):
        args = self.args
        out = subprocess.run(
            [args.berth, "fsck", "--verify", "--json", "--data-dir", args.data_dir, "--config", args.config],
            stdin=subprocess.DEVNULL, capture_output=True, text=True)
        try:
            return json.loads(out.stdout)
        except ValueError:
            raise SystemExit(f"soak: berth fsck printed no report (exit {out.returncode}): {out.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--berth", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--log", required=True, help="berth's stderr, appended over all starts")
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--pushers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--min-delay", type=float, default=0.05)
    ap.add_argument("--max-delay", type=float, default=3.0)
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2 ** 32)
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
