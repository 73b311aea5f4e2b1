"""The durable spool at the Durango rate: the segment log (bridge.endpoints.spool, through the outbox's
backend) against SQLite in WAL mode, on the disk the spool would use (issue 21).

    canbridge testvm --disk IMG --vcan 0 -- python benchmarks/spool.py --dir /run/disk
    python benchmarks/spool.py --dir /var/tmp/x          # the host's disk, for comparison

IMG: `truncate -s 256M IMG && mkfs.ext4 -q -F IMG`. Each system is fed the same paced stream: --rate frames/s
(default 2,500: one Durango bus) in loop passes of --pass-ms (default 10 ms), one message of native FRAME
records (28 bytes per 8-byte classic frame) per pass, for --seconds each; with --broker up every message is
acknowledged one pass later (the normal case), with --broker down nothing is (the tunnel; what the power-cut
test does). Systems:
  log            the segment log: one write(2) per pass (survives SIGKILL), an fsync per 100 ms window
  sqlite-window  SQLite WAL, synchronous=FULL, one transaction per 100 ms window (the pass's frames wait in
                 memory until then: a SIGKILL loses up to 100 ms)
  sqlite-pass    SQLite WAL, synchronous=FULL, one transaction per pass (an fsync per pass)
  sqlite-normal  SQLite WAL, synchronous=NORMAL, one transaction per pass (no fsync: survives SIGKILL) and
                 an fsync of the -wal file per 100 ms window (the log's guarantees, on SQLite)
Printed per system: fsyncs/s, CPU ms per 1,000 frames (process user+sys), bytes written per 1,000 frames and
per hour at the rate (the block device's sectors-written counter when --dev names it, e.g. vda in the test VM:
file data plus the file system's journal; else the process's /proc/self/io write_bytes), peak RSS growth.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.codec import native  # noqa: E402
from bridge.endpoints.mqtt_store import Message  # noqa: E402
from bridge.endpoints.outbox_spool import SpoolBackend  # noqa: E402

WINDOW_S = 0.1


def frames_for(n: int, t0: int) -> bytes:
    frames = [((0x100 + i % 150).to_bytes(4, "little") + bytes([8, 0, 0, 0]) + bytes(range(8)), t0 + i)
              for i in range(n)]
    return native.encode_frames(0, frames)


class LogSystem:
    def __init__(self, d: str) -> None:
        self.b = SpoolBackend(d, sync_interval=WINDOW_S, sync_frames=10**9)

    def pass_(self, seq: int, records: bytes, n: int, ack: int | None) -> None:
        if ack is not None:
            self.b.acknowledge(ack)
        self.b.append([Message(seq, 0, "fleet/gw/can0/rx", n, time.time(), records, (1, seq * n))],
                      {"session": 1, "published": {"fleet/gw/can0/rx": (seq + 1) * n}, "dropped": {}})
        self.b._sync()  # the timer's job, done in the pass here (the benchmark has no reactor)

    def fsyncs(self) -> int:
        return self.b.spool.fsyncs

    def close(self) -> None:
        self.b.close()


class SqliteSystem:
    def __init__(self, d: str, per_pass: bool, normal: bool = False) -> None:
        self.path = os.path.join(d, "spool.db")
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'NORMAL' if normal else 'FULL'}")
        self.normal, self.wal_fd, self.syncs = normal, -1, 0
        self.db.execute("CREATE TABLE IF NOT EXISTS msg (seq INTEGER PRIMARY KEY, channel INT, topic TEXT, "
                        "frames INT, created REAL, session INT, before INT, records BLOB)")
        self.db.execute("CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v TEXT)")
        self.per_pass, self.rows, self.acks, self.commits = per_pass, [], [], 0
        self.last = self.synced = time.monotonic()

    def pass_(self, seq: int, records: bytes, n: int, ack: int | None) -> None:
        self.rows.append((seq, 0, "fleet/gw/can0/rx", n, time.time(), 1, seq * n, records))
        if ack is not None:
            self.acks.append((ack,))
        now = time.monotonic()
        if self.per_pass or now - self.last >= WINDOW_S:
            self.last = now
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO msg VALUES (?,?,?,?,?,?,?,?)", self.rows)
            self.db.executemany("DELETE FROM msg WHERE seq=?", self.acks)
            self.db.execute("INSERT OR REPLACE INTO state VALUES ('outbox', ?)", (str(seq),))
            self.db.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced here
            self.rows.clear()
            self.acks.clear()
            self.commits += 1
        if self.normal and now - self.synced >= WINDOW_S:  # the window's fsync, of the WAL we wrote
            if self.wal_fd < 0:
                self.wal_fd = os.open(self.path + "-wal", os.O_RDONLY)
            os.fsync(self.wal_fd)
            self.synced = now
            self.syncs += 1

    def fsyncs(self) -> int:
        return self.syncs if self.normal else self.commits

    def close(self) -> None:
        if self.wal_fd >= 0:
            os.close(self.wal_fd)
        self.db.close()


def dev_written(dev: str | None) -> int:
    if dev:
        return int(Path(f"/sys/block/{dev}/stat").read_text().split()[6]) * 512
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name: str, a) -> dict:
    d = os.path.join(a.dir, f"bench-{name}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    system = LogSystem(d) if name == "log" else SqliteSystem(d, per_pass=name != "sqlite-window",
                                                              normal=name == "sqlite-normal")
    per_pass = max(1, round(a.rate * a.pass_ms / 1000))
    passes = int(a.seconds * 1000 / a.pass_ms)
    records = frames_for(per_pass, time.time_ns())
    os.sync()
    w0, c0, f0, t0 = dev_written(a.dev), cpu_s(), system.fsyncs(), time.monotonic()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(passes):
        system.pass_(i, records, per_pass, i - 1 if a.broker == "up" and i else None)
        delay = t0 + (i + 1) * a.pass_ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - t0
    cpu, fsyncs = cpu_s() - c0, system.fsyncs() - f0
    system.close()
    os.sync()  # what the file system still held (journal, checkpoint) counts too
    written = dev_written(a.dev) - w0
    frames = passes * per_pass
    return {"system": name, "frames/s": frames / elapsed, "fsyncs/s": fsyncs / elapsed,
            "CPU ms/1k": cpu * 1e6 / frames, "bytes/1k": written * 1000 / frames,
            "MB/hour": written / elapsed * 3600 / 1e6,
            "RSS +MB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
            "disk MB": sum(f.stat().st_size for f in Path(d).iterdir()) / 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="where the spools go (a directory on the disk under test)")
    p.add_argument("--dev", help="block device whose sectors-written counter to read (e.g. vda); default: "
                                 "the one holding --dir when it is under /sys/block, else /proc/self/io")
    p.add_argument("--rate", type=float, default=2500.0)
    p.add_argument("--pass-ms", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--broker", choices=("up", "down"), default="down")
    p.add_argument("--systems", default="log,sqlite-window,sqlite-pass,sqlite-normal")
    a = p.parse_args()
    if a.dev is None and os.environ.get("CANBRIDGE_TESTVM_DISK") and Path("/sys/block/vda").exists():
        a.dev = "vda"
    print(f"# {a.rate:g} frames/s in passes of {a.pass_ms:g} ms for {a.seconds:g} s each, broker {a.broker}, "
          f"dir {a.dir}, bytes from {a.dev or '/proc/self/io'}")
    cols = ("system", "frames/s", "fsyncs/s", "CPU ms/1k", "bytes/1k", "MB/hour", "RSS +MB", "disk MB")
    print(" | ".join(f"{c:>13}" for c in cols))
    for name in a.systems.split(","):
        r = run(name, a)
        print(" | ".join(f"{r[c]:>13}" if isinstance(r[c], str) else f"{r[c]:>13.1f}" for c in cols), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
