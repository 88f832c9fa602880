"""Shared pieces of the chaos scenarios (bench/chaos/*.py): start a server (sluice, or nginx +
nchan for A/B runs) on a free 127.0.0.1 port in a temporary directory, sample it while a
scenario runs (RSS, the connection gauge against the kernel's own count, CLOSE_WAIT sockets,
open fds, deliveries), write the samples as CSV, draw them with gnuplot, and print a verdict.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice"))
LOAD_BIN = os.environ.get("SLUICE_LOAD", str(REPO / "build" / "sluice-load"))

# TCP states in /proc/net/tcp (include/net/tcp_states.h).
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kernel_sockets(port, state):
    """Sockets whose local port is `port` in TCP `state` (hex code), from /proc/net/tcp{,6}:
    the server side of connections as the kernel sees them."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, st = parts[1], parts[3]
                    if st == state and int(local.rsplit(":", 1)[1], 16) == port:
                        n += 1
        except FileNotFoundError:
            pass
    return n


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def parse_metrics(text):
    """Prometheus text -> {'name{k="v"}': value} (labels as written by sluice)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


class Server:
    """A sluice process with `config` (INI text; the [server] listen line is added) in a fresh
    temporary directory. stop() sends SIGTERM and waits; the exit code is kept."""

    kind = "sluice"

    def __init__(self, config="", binary=SLUICE_BIN, memory_limit=None):
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
        self.port = free_port()
        self.memory_limit = memory_limit
        text = f"[server]\nlisten = 127.0.0.1:{self.port}\ndata_dir = {self.dir}/data\n"
        if memory_limit:
            text += f"memory_limit = {memory_limit}\n"
        # Sections given by the caller follow; a second [server] section adds keys to the first.
        text += config
        (self.dir / "sluice.ini").write_text(text)
        self.log = open(self.dir / "sluice.log", "wb")
        self.proc = subprocess.Popen([binary, "--config", str(self.dir / "sluice.ini")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pids = [self.proc.pid]
        self.url = f"http://127.0.0.1:{self.port}"
        wait_listening(self.port, self.proc)
        self.exit_code = None

    def rss(self):
        return rss_bytes(self.pids)

    def fds(self):
        return open_fds(self.proc.pid)

    def metrics(self, timeout=5.0):
        with urllib.request.urlopen(self.url + "/metrics", timeout=timeout) as r:
            return parse_metrics(r.read().decode())

    def gauge(self):
        return int(self.metrics().get("sluice_connections", -1))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self.log.close()
        return self.exit_code

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class NchanServer(Server):
    """nginx + nchan with bench/nchan.conf.template (its @PORT@ and @DIR@ placeholders), one
    worker; RSS is master + worker."""

    kind = "nchan"

    def __init__(self, template=REPO / "bench" / "nchan.conf.template"):
        self.dir = Path(tempfile.mkdtemp(prefix="nchan-chaos-"))
        self.port = free_port()
        self.memory_limit = None
        conf = Path(template).read_text().replace("@PORT@", str(self.port)).replace(
            "@DIR@", str(self.dir))
        (self.dir / "nginx.conf").write_text(conf)
        (self.dir / "logs").mkdir()
        self.log = open(self.dir / "nginx.log", "wb")
        self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p",
                                      str(self.dir)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_listening(self.port, self.proc)
        time.sleep(0.3)
        self.pids = [self.proc.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()]
        self.exit_code = None

    def metrics(self, timeout=5.0):
        return {}

    def gauge(self):
        return -1


def wait_listening(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen in time")


class Sampler:
    """Samples `server` every `interval` seconds in a thread until stop(): time, RSS, the
    connection gauge and the kernel's ESTABLISHED and CLOSE_WAIT counts for the port, open fds,
    deliveries and published totals, plus whatever `extra()` returns (a dict). The gauge is
    compared with the kernel only when two kernel reads around it agree (connections moving
    between the reads make a single sample meaningless); `mismatches` lists the samples where
    they disagreed."""

    FIELDS = ["t", "rss_mb", "gauge", "kernel_established", "close_wait", "fds", "deliveries",
              "published"]

    def __init__(self, server, interval=2.0, extra=None):
        self.server = server
        self.interval = interval
        self.extra = extra
        self.rows = []
        self.mismatches = []
        self.errors = 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        s = self.server
        k1 = kernel_sockets(s.port, TCP_ESTABLISHED)
        m = {}
        try:
            m = s.metrics()
        except Exception:
            self.errors += 1
        k2 = kernel_sockets(s.port, TCP_ESTABLISHED)
        # Our own /metrics request is one of the established connections while it runs; sluice
        # counts it too, so both sides include it (or neither, after it closed).
        gauge = int(m.get("sluice_connections", -1)) - 1 if m else -1
        row = {
            "t": round(time.monotonic() - self._t0, 3),
            "rss_mb": round(s.rss() / 2**20, 3),
            "gauge": gauge,
            "kernel_established": k2,
            "close_wait": kernel_sockets(s.port, TCP_CLOSE_WAIT),
            "fds": s.fds(),
            "deliveries": int(m.get("sluice_deliveries_total", 0)),
            "published": int(m.get("sluice_messages_published_total", 0)),
        }
        if self.extra:
            row.update(self.extra())
        if m and k1 == k2 and gauge != k2:
            self.mismatches.append((row["t"], gauge, k2))
        self.rows.append(row)
        return row

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.rows

    def write_csv(self, path):
        fields = list(self.FIELDS)
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        with open(path, "w") as f:
            f.write(",".join(fields) + "\n")
            for r in self.rows:
                f.write(",".join(str(r.get(k, "")) for k in fields) + "\n")


def slope_mb_per_min(rows, key="rss_mb", start_frac=0.5):
    """Least-squares slope of `key` over the rows after `start_frac` of the run, in MB/min."""
    pts = [(r["t"], r[key]) for r in rows]
    if len(pts) < 3:
        return 0.0
    t_end = pts[-1][0]
    pts = [p for p in pts if p[0] >= t_end * start_frac] or pts
    n = len(pts)
    mt = sum(p[0] for p in pts) / n
    mv = sum(p[1] for p in pts) / n
    den = sum((p[0] - mt) ** 2 for p in pts)
    if den == 0:
        return 0.0
    return sum((p[0] - mt) * (p[1] - mv) for p in pts) / den * 60


def plot(csv_path, png_path, title, series, ylabel="MB", limit_mb=None, y2=None):
    """Draws columns of a CSV (by name) against t with gnuplot. `series` is a list of
    (column, label); `limit_mb` adds a horizontal memory_limit line; `y2` is an optional list of
    (column, label) on the right axis. Returns False (and says why) if gnuplot is missing."""
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    header = Path(csv_path).read_text().splitlines()[0].split(",")
    col = {name: i + 1 for i, name in enumerate(header)}
    plots = [f"'{csv_path}' using 1:{col[c]} with lines lw 2 title '{label}'"
             for c, label in series if c in col]
    if limit_mb is not None:
        plots.append(f"{limit_mb} with lines dt 2 lw 2 lc rgb 'red' title 'memory_limit'")
    for c, label in (y2 or []):
        if c in col:
            plots.append(f"'{csv_path}' using 1:{col[c]} axes x1y2 with lines title '{label}'")
    script = "\n".join([
        "set terminal pngcairo size 1000,560 font 'sans,11'" if _has_cairo() else
        "set terminal png size 1000,560",
        f"set output '{png_path}'",
        "set datafile separator ','",
        "set key top left",
        f"set title '{title}'",
        "set xlabel 'seconds'",
        f"set ylabel '{ylabel}'",
        "set grid",
        "set yrange [0:*]",
        "set y2tics" if y2 else "",
        "set y2range [0:*]" if y2 else "",
        "plot " + ", ".join(plots),
    ])
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr, file=sys.stderr)
        return False
    return True


def _has_cairo():
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in (r.stdout + r.stderr)


def verdict(name, ok, **figures):
    """Prints the one line a scenario is judged by: `VERDICT <name> PASS|FAIL k=v …`."""
    kv = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"VERDICT {name} {'PASS' if ok else 'FAIL'} {kv}", flush=True)
    return ok


def out_dir(name):
    """bench/out/chaos-<timestamp>/<name>/ (or $CHAOS_OUT/<name>)."""
    base = Path(os.environ.get("CHAOS_OUT") or
                REPO / "bench" / "out" / ("chaos-" + time.strftime("%Y%m%d-%H%M%S")))
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    return d
