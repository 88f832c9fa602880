#!/usr/bin/python3
"""Lossless topics: publish throughput per fsync policy, catch-up read throughput from disk,
server RSS during both, against the disk's own sequential throughput (dd) in the same run.

    /usr/bin/python3 bench/lossless.py             full: 1 GiB dd, 1 GiB catch-up, 5 s per publish run
    /usr/bin/python3 bench/lossless.py --quick     256 MiB dd and catch-up, 2 s per publish run
    options: --catchup-mb N  --dd-mb N  --seconds S  --bin PATH  --memory-limit 64MiB

Publish runs (each on a fresh server and data_dir, lossy topic first as the baseline without a
disk): `big` = 64 KiB messages in NDJSON batches of 16 (1 MiB bodies) over 2 connections;
`small` = 1 KiB messages in batches of 100 over 2 connections; `single` = one 1 KiB message per
POST over 4 connections (latency-bound: fsync=always pays one fsync per request, or per group
of requests if the server groups them). Publishers are separate processes on the same 2-core
machine as the server: compare ratios, not absolute figures. Every publish carries ?wait=30s,
so a full write-behind queue makes publishers wait instead of failing; 429s are counted.

Catch-up: a durable cursor is created, `--catchup-mb` of 64 KiB messages are published behind
it (fsync=interval), the segment files are dropped from the page cache (fsync +
POSIX_FADV_DONTNEED on each file: no global drop_caches), then the durable reader connects and
reads everything (cold: from the disk); it reconnects without acking and reads everything again
(warm: from the page cache). The server's RSS is sampled every 100 ms throughout.

dd: `dd if=/dev/zero of=<data_dir>/dd.tmp bs=1M count=N oflag=direct` (write), the same with
`conv=fdatasync` (buffered, then one fdatasync: what a write-behind log with fsync does), and
`dd iflag=direct` reading the file back. Results: bench/out/lossless-<timestamp>/results.txt.
"""

import argparse
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "integ"))
from sluice_client import RawConn, http  # noqa: E402
from sluice_proc import free_port  # noqa: E402

MiB = 1024 * 1024


def rss(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def cpu_s(pid):
    """utime + stime of the process (all its threads), in seconds."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        return 0.0


class Sampler(threading.Thread):
    """Server RSS every 100 ms (max) and its CPU use from start to stop (cpu_pct: 100 = one
    core busy)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.max, self.halt = pid, 0, threading.Event()
        self.cpu0, self.t0, self.cpu_pct = cpu_s(pid), time.monotonic(), 0.0

    def run(self):
        while not self.halt.is_set():
            self.max = max(self.max, rss(self.pid))
            self.halt.wait(0.1)

    def stop(self):
        self.halt.set()
        self.join()
        self.max = max(self.max, rss(self.pid))
        self.cpu_pct = 100 * (cpu_s(self.pid) - self.cpu0) / (time.monotonic() - self.t0)
        return self.max


class Server:
    def __init__(self, binary, workdir, topic_kv, memory_limit):
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = ["[server]", f"listen = 127.0.0.1:{self.port}", f"data_dir = {self.data}",
               f"memory_limit = {memory_limit}", "log_level = warn", "disk_quota = 64GiB",
               "max_publish_wait = 60s", "write_stall_timeout = 600s",
               '[topic "*"]'] + [f"{k} = {v}" for k, v in topic_kv.items()]
        (self.workdir / "sluice.ini").write_text("\n".join(cfg) + "\n")
        self.log = open(self.workdir / "sluice.log", "ab")
        self.proc = subprocess.Popen([binary, "--config", str(self.workdir / "sluice.ini")],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if http(self.port, "GET", "/healthz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"sluice did not start; see {self.workdir}/sluice.log")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- publishing ----------------------------------------------------------------------------

def _publisher(port, topic, body, ctype, per_req, seconds, q):
    c = RawConn(port, timeout=60)
    hdrs = [("Content-Type", ctype)]
    msgs = refused = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        c.request("POST", f"/topics/{topic}?wait=30s", hdrs, body)
        r = c.read_response(60)
        if r.status == 202:
            msgs += per_req
        elif r.status == 429:
            refused += 1
        else:
            raise SystemExit(f"publish: {r.status} {r.body[:200]!r}")
    c.close()
    q.put((msgs, refused))


def publish_run(port, pid, topic, size, batch, conns, seconds):
    line = b"p" * size
    if batch > 1:
        body, ctype = (line + b"\n") * batch, "application/x-ndjson"
    else:
        body, ctype = line, "application/octet-stream"
    q = mp.Queue()
    ps = [mp.Process(target=_publisher, args=(port, topic, body, ctype, batch, seconds, q))
          for _ in range(conns)]
    smp = Sampler(pid)
    smp.start()
    t0 = time.monotonic()
    for p in ps:
        p.start()
    res = [q.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join()
    dt = time.monotonic() - t0
    msgs = sum(r[0] for r in res)
    return {"msgs_s": msgs / dt, "mb_s": msgs * size / dt / MiB, "msgs": msgs,
            "refused": sum(r[1] for r in res), "rss_max": smp.stop(), "seconds": dt,
            "cpu_pct": smp.cpu_pct}


# -- reading -------------------------------------------------------------------------------

def read_durable(port, topic, name, last_id, expect):
    """Reads an SSE stream of a durable reader until `id: last_id`; returns (seconds, bytes,
    events counted)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /topics/{topic}?durable={name} HTTP/1.1\r\nHost: x\r\n"
              f"Accept: text/event-stream\r\n\r\n".encode())
    needle = f"id: {last_id}\n".encode()
    t0 = time.monotonic()
    total = events = 0
    tail = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise SystemExit(f"stream ended after {total} bytes, {events} events")
        total += len(chunk)
        win = tail + chunk
        events += win.count(b"\nid: ") - tail.count(b"\nid: ")
        if needle in win:
            break
        tail = win[-64:]
    dt = time.monotonic() - t0
    s.close()
    return dt, total, events


def drop_from_page_cache(d):
    n = 0
    for p in Path(d).rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += p.stat().st_size
            finally:
                os.close(fd)
    return n


# -- dd ------------------------------------------------------------------------------------

def dd(args):
    r = subprocess.run(["dd"] + args, capture_output=True, text=True)
    m = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", r.stderr, re.M)
    if r.returncode != 0 or not m:
        raise SystemExit(f"dd {' '.join(args)}: {r.stderr}")
    return int(m.group(1)) / float(m.group(2)) / MiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--catchup-mb", type=int)
    ap.add_argument("--dd-mb", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--bin", default=str(ROOT / "build" / "sluice"))
    ap.add_argument("--memory-limit", default="64MiB")
    a = ap.parse_args()
    catchup_mb = a.catchup_mb or (256 if a.quick else 1024)
    dd_mb = a.dd_mb or (256 if a.quick else 1024)
    seconds = a.seconds or (2.0 if a.quick else 5.0)

    out = ROOT / "bench" / "out" / time.strftime("lossless-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    res_f = open(out / "results.txt", "w")

    def report(s):
        print(s, flush=True)
        res_f.write(s + "\n")

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "?")
    osr = dict(ln.strip().split("=", 1) for ln in open("/etc/os-release") if "=" in ln)
    fs = subprocess.run(["df", "-hT", str(out)], capture_output=True, text=True).stdout
    fs = fs.strip().splitlines()[-1].split()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    report(f"# machine: {os.cpu_count()} cores, {cpu}, kernel {os.uname().release}, "
           f"{osr.get('PRETTY_NAME', '?').strip(chr(34))}; data_dir on {fs[0]} ({fs[1]})")
    report(f"# sluice {git}{' + uncommitted src changes' if dirty else ''}; "
           f"{' '.join(sys.argv[1:]) or 'full profile'}; memory_limit {a.memory_limit}")

    # -- the disk ------------------------------------------------------------------------------
    ddf = out / "dd.tmp"
    dd_direct = dd(["if=/dev/zero", f"of={ddf}", "bs=1M", f"count={dd_mb}", "oflag=direct"])
    dd_read = dd([f"if={ddf}", "of=/dev/null", "bs=1M", "iflag=direct"])
    ddf.unlink()
    dd_sync = dd(["if=/dev/zero", f"of={ddf}", "bs=1M", f"count={dd_mb}", "conv=fdatasync"])
    ddf.unlink()
    report(f"dd write oflag=direct: {dd_direct:.0f} MiB/s; conv=fdatasync: {dd_sync:.0f} MiB/s; "
           f"read iflag=direct: {dd_read:.0f} MiB/s ({dd_mb} MiB)")

    # -- publish throughput ------------------------------------------------------------------
    loads = [("big", 64 * 1024, 16, 2), ("small", 1024, 100, 2), ("single", 1024, 1, 4)]
    policies = [("lossy", {"durability": "lossy"})] + \
        [(f, {"durability": "lossless", "fsync": f, "disk_quota": "8GiB"})
         for f in ("never", "interval", "always")]
    table = []
    for pol, kv in policies:
        for name, size, batch, conns in loads:
            srv = Server(a.bin, out / f"pub-{pol}-{name}", kv, a.memory_limit)
            try:
                r = publish_run(srv.port, srv.proc.pid, f"b-{name}", size, batch, conns,
                                seconds)
            finally:
                srv.stop()
                shutil.rmtree(srv.data, ignore_errors=True)
            ratio = r["mb_s"] / dd_direct
            table.append((pol, name, r, ratio))
            report(f"publish policy={pol} load={name} size={size} batch={batch} conns={conns} "
                   f"msgs_s={r['msgs_s']:.0f} mib_s={r['mb_s']:.1f} ratio_vs_dd_direct="
                   f"{ratio:.2f} ratio_vs_dd_fdatasync={r['mb_s'] / dd_sync:.2f} "
                   f"refused={r['refused']} rss_max_mib={r['rss_max'] / MiB:.1f} "
                   f"server_cpu_pct={r['cpu_pct']:.0f}")

    # -- catch-up from disk -----------------------------------------------------------------
    kv = {"durability": "lossless", "fsync": "interval", "disk_quota": f"{catchup_mb + 1024}MiB"}
    srv = Server(a.bin, out / "catchup", kv, a.memory_limit)
    try:
        t = "b-catchup"
        c = RawConn(srv.port)
        c.request("GET", f"/topics/{t}?durable=bench", [("Accept", "text/event-stream")])
        c.read_head()
        c.close()
        time.sleep(0.2)
        n = catchup_mb * MiB // (64 * 1024)
        body = (b"c" * (64 * 1024) + b"\n") * 16
        pc = RawConn(srv.port, timeout=60)
        smp = Sampler(srv.proc.pid)
        smp.start()
        t0 = time.monotonic()
        last = None
        for _ in range(n // 16):
            pc.request("POST", f"/topics/{t}?wait=30s", [("Content-Type", "application/x-ndjson")],
                       body)
            r = pc.read_response(60)
            assert r.status == 202, r
            last = r.json()["ids"][-1]
        pub_s = time.monotonic() - t0
        pc.close()
        rss_pub = smp.stop()
        tdir = next(d for d in (srv.data / "topics" / t, srv.data / "topics" / f"t-{t}")
                    if d.is_dir())
        on_disk = drop_from_page_cache(tdir)
        report(f"catch-up setup: published {catchup_mb} MiB behind a durable cursor in "
               f"{pub_s:.1f}s ({catchup_mb / pub_s:.0f} MiB/s), {on_disk / MiB:.0f} MiB on disk, "
               f"RSS max {rss_pub / MiB:.1f} MiB, server CPU {smp.cpu_pct:.0f}%; dropped from "
               f"the page cache")
        for kind in ("cold", "warm"):
            smp = Sampler(srv.proc.pid)
            smp.start()
            dt, nbytes, events = read_durable(srv.port, t, "bench", last, n)
            mx = smp.stop()
            mb_s = catchup_mb / dt
            report(f"catchup {kind} mib={catchup_mb} seconds={dt:.2f} mib_s={mb_s:.0f} "
                   f"ratio_vs_dd_read={mb_s / dd_read:.2f} events={events}/{n} "
                   f"stream_mib={nbytes / MiB:.0f} rss_max_mib={mx / MiB:.1f} "
                   f"server_cpu_pct={smp.cpu_pct:.0f}")
            time.sleep(0.5)
    finally:
        srv.stop()
        shutil.rmtree(srv.data, ignore_errors=True)

    report("")
    report("| policy | load | msg/s | MiB/s | vs dd direct | server CPU | RSS max |")
    report("|---|---|---|---|---|---|---|")
    for pol, name, r, ratio in table:
        report(f"| {pol} | {name} | {r['msgs_s']:,.0f} | {r['mb_s']:.1f} | {ratio:.2f} | "
               f"{r['cpu_pct']:.0f}% | {r['rss_max'] / MiB:.1f} MiB |")
    report(f"# results in {out}")


if __name__ == "__main__":
    main()
