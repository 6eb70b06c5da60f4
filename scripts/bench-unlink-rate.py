#!/usr/bin/env python3
"""How fast a filesystem deletes small files, the floor under Berth's GC sweep.

Writes N files of 221 bytes (the mean size of the config blobs that
scripts/bench-lifecycle.sh collects) into 256 shard directories as the
filesystem blob store lays them out, syncs, then unlinks them on T threads (the
store's delete_many uses 32) and prints the rate. The files are removed either
way. A measurement of the machine, not of Berth: run it beside a GC benchmark
to tell the disk's share from Berth's.

    scripts/bench-unlink-rate.py [--files N] [--threads T] [DIR]

DIR defaults to target/ (the repository's disk, where the benchmarks put their
data dirs).
"""

import argparse
import os
import shutil
import tempfile
import threading
import time

CONFIG_SIZE = 221
COLLECTED = 500_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "target"))
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="unlink-rate.", dir=args.dir)
    try:
        paths = []
        for shard in range(256):
            os.mkdir(os.path.join(root, f"{shard:02x}"))
        for i in range(args.files):
            path = os.path.join(root, f"{i % 256:02x}", f"{i:064x}")
            with open(path, "wb") as f:
                f.write(os.urandom(CONFIG_SIZE))
            paths.append(path)
        os.sync()

        def unlink_all(share: list) -> None:
            for path in share:
                os.unlink(path)

        started = time.monotonic()
        threads = [threading.Thread(target=unlink_all, args=(paths[k :: args.threads],)) for k in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        rate = args.files / elapsed
        print(
            f"{os.path.realpath(args.dir)}: {args.files:,} unlinks on {args.threads} threads in {elapsed:.2f} s "
            f"({rate:,.0f}/s; {COLLECTED:,} would take {COLLECTED / rate:.0f} s)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
