"""Pieces shared by the pressure scenarios (stalled.py, flood.py, noreaders.py, hol.py), on top
of common.py: the C load tool, a keep-alive HTTP client that times each request, stalled
readers, readers that check every id they receive, the kernel's view of one socket, and the
statistics and charts the verdicts use.

Kept apart from common.py so that two people can extend the chaos suite at once; nothing here
changes what common.py does. Debian's /usr/bin/python3, standard library only.
"""

import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import common

MiB = 2**20


# ---- the C load tool ---------------------------------------------------------------------------

def load_kv(text):
    """The last `key=value …` line of sluice-load's output as a dict (numbers converted)."""
    out = {}
    for line in reversed(text.strip().splitlines()):
        if "=" in line:
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    try:
                        out[k] = float(v) if any(c in v for c in ".e") else int(v)
                    except ValueError:
                        out[k] = v
            break
    return out


def load_usage():
    """sluice-load's usage text (what options this build supports)."""
    r = subprocess.run([common.LOAD_BIN], capture_output=True, text=True)
    return r.stdout + r.stderr


def start_load(args, stdout_path):
    """Starts sluice-load with `args`; its output goes to `stdout_path`."""
    f = open(stdout_path, "w")
    p = subprocess.Popen([common.LOAD_BIN] + [str(a) for a in args], stdout=f,
                         stderr=subprocess.STDOUT)
    p._out_file = f
    p._out_path = stdout_path
    return p


def finish_load(p, timeout=None):
    """Waits for a sluice-load started by start_load; returns (exit code, key=value dict, text)."""
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    p._out_file.close()
    text = Path(p._out_path).read_text()
    return rc, load_kv(text), text


# ---- HTTP on one keep-alive connection ----------------------------------------------------------

class KeepAlive:
    """One persistent HTTP/1.1 connection (TCP_NODELAY). request() sends a request and reads its
    Content-Length response, returning (status, body, seconds from the first byte sent to the
    last byte received). Reconnects if the server closed it. Thread-safe (one request at a
    time)."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.port, self.host, self.timeout = port, host, timeout
        self.sock = None
        self.buf = b""
        self.lock = threading.Lock()
        self.reconnects = -1
        self.connect()

    def connect(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.reconnects += 1

    def local_port(self):
        return self.sock.getsockname()[1]

    def _read_response(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            chunk = self.sock.recv(max(65536, n - len(rest)))
            if not chunk:
                raise ConnectionError("closed in the response body")
            rest += chunk
        self.buf = rest[n:]
        closing = re.search(rb"(?im)^connection:\s*close", head) is not None
        return status, rest[:n], closing

    def request(self, method, path, body=b"", headers=""):
        req = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        with self.lock:
            for attempt in (0, 1):
                try:
                    if self.sock is None:
                        self.connect()
                    t0 = time.perf_counter()
                    self.sock.sendall(req)
                    status, rbody, closing = self._read_response()
                    dt = time.perf_counter() - t0
                    if closing:
                        self.sock.close()
                        self.sock = None
                    return status, rbody, dt
                except (OSError, ConnectionError):
                    if self.sock is not None:
                        self.sock.close()
                    self.sock = None
                    if attempt:
                        raise

    def metrics(self, timeout=None):
        status, body, _ = self.request("GET", "/metrics")
        if status != 200:
            raise ConnectionError(f"/metrics: {status}")
        return common.parse_metrics(body.decode())

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def metric(m, name, **labels):
    """A value from parse_metrics() output by name and labels (0 when absent)."""
    if labels:
        name += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    return m.get(name, 0)


def topics(port):
    """GET /topics as a dict by topic name."""
    k = KeepAlive(port)
    try:
        status, body, _ = k.request("GET", "/topics")
    finally:
        k.close()
    return {t["name"]: t for t in json.loads(body)["topics"]}


# ---- subscribers that never read ---------------------------------------------------------------

def subscribe_request(path, ws, host="127.0.0.1"):
    if ws:
        key = __import__("base64").b64encode(os.urandom(16)).decode()
        return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n").encode()


class StalledReaders:
    """Subscribers with a tiny SO_RCVBUF that send their request and never read a byte (a frozen
    browser tab, a stopped process). open() adds a wave of them; they stay open (as far as this
    side knows: a server that closes one cannot even deliver its FIN through the zero window)
    until close_all()."""

    def __init__(self, port, host="127.0.0.1", rcvbuf=1024):
        self.port, self.host, self.rcvbuf = port, host, rcvbuf
        self.socks = []
        self.opened = {"sse": 0, "ws": 0}
        self.failed = 0

    def open(self, n, sse_path, ws_path=None, start=0):
        """n readers: every other one (odd start + i) WebSocket on ws_path when it is given,
        else all SSE."""
        for i in range(n):
            ws = ws_path is not None and (start + i) % 2 == 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            try:
                s.settimeout(10)
                s.connect((self.host, self.port))
                s.sendall(subscribe_request(ws_path if ws else sse_path, ws, self.host))
            except OSError:
                self.failed += 1
                s.close()
                continue
            self.socks.append(s)
            self.opened["ws" if ws else "sse"] += 1

    def local_ports(self):
        return {s.getsockname()[1] for s in self.socks}

    def close_all(self):
        for s in self.socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass
        self.socks = []


# ---- the kernel's view of sockets ----------------------------------------------------------------

def tcp_sockets(local_port=None, remote_port=None):
    """TCP sockets from /proc/net/tcp{,6} filtered by ports: dicts with state (hex), local_port,
    remote_port, tx_queue and rx_queue (bytes)."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lp = int(p[1].rsplit(":", 1)[1], 16)
                    rp = int(p[2].rsplit(":", 1)[1], 16)
                    if local_port is not None and lp != local_port:
                        continue
                    if remote_port is not None and rp != remote_port:
                        continue
                    tx, rx = p[4].split(":")
                    out.append({"state": p[3], "local_port": lp, "remote_port": rp,
                                "tx_queue": int(tx, 16), "rx_queue": int(rx, 16)})
        except FileNotFoundError:
            pass
    return out


# ---- statistics ---------------------------------------------------------------------------------

def percentile(values, p):
    """The p-quantile (0..1) of values by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 1)) - 1))
    return v[k]


def thirds(rows, key="rss_mb"):
    """(mean of the first third, mean of the last third) of a column, by time."""
    if len(rows) < 3:
        return (0.0, 0.0)
    t_end = rows[-1]["t"]
    first = [r[key] for r in rows if r["t"] <= t_end / 3]
    last = [r[key] for r in rows if r["t"] >= 2 * t_end / 3]
    if not first or not last:
        return (0.0, 0.0)
    return (sum(first) / len(first), sum(last) / len(last))


def longest_rise(rows, key="rss_mb"):
    """The longest run of consecutive samples each higher than the one before."""
    best = run = 0
    for a, b in zip(rows, rows[1:]):
        run = run + 1 if b[key] > a[key] else 0
        best = max(best, run)
    return best


# ---- charts ------------------------------------------------------------------------------------

def _q(text):
    """A gnuplot string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def plot_curves(png_path, title, curves, ylabel, hlines=(), logscale=False, y2label=None,
                xlabel="seconds", vlines=()):
    """One gnuplot chart of several CSV columns, possibly from several files. `curves`: list of
    (csv_path, x column, y column, label[, "y2"]); `hlines`: list of (value, label, colour) drawn
    dashed; `vlines`: list of (x, label) marking moments (grey, labelled at the top). Returns
    False if gnuplot is missing or failed."""
    import shutil
    import sys
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    plots = []
    any_y2 = False
    for c in curves:
        csv, xc, yc, label = c[:4]
        axis = len(c) > 4 and c[4] == "y2"
        style = c[5] if len(c) > 5 else "lw 2"
        any_y2 |= axis
        header = Path(csv).read_text().splitlines()[0].split(",")
        if xc not in header or yc not in header:
            continue
        xi, yi = header.index(xc) + 1, header.index(yc) + 1
        plots.append(f"'{csv}' using {xi}:{yi} with lines {style} "
                     f"{'axes x1y2 ' if axis else ''}title {_q(label)}")
    for value, label, colour in hlines:
        plots.append(f"{value} with lines dt 2 lw 2 lc rgb '{colour}' title {_q(label)}")
    script = "\n".join([
        "set terminal pngcairo size 1000,600 font 'sans,11' noenhanced" if common._has_cairo()
        else "set terminal png size 1000,600 noenhanced",
        f"set output '{png_path}'",
        "set datafile separator ','",
        "set key below",
        f"set title {_q(title)}",
        f"set xlabel {_q(xlabel)}",
        f"set ylabel {_q(ylabel)}",
        "set grid",
        "set autoscale xfix",
        "set logscale y" if logscale else "set yrange [0:*]\nset offsets 0, 0, graph 0.08, 0",
        f"set y2label {_q(y2label)}" if y2label else "",
        "set y2tics" if any_y2 else "",
        "set ytics nomirror" if any_y2 else "",
        "set y2range [0:*]" if any_y2 else "",
    ] + [f"set arrow from {x}, graph 0 to {x}, graph 1 nohead dt 3 lc rgb 'gray40'\n"
         f"set label {_q(label)} at {x}, graph 0.97 left offset 0.5, 0 tc rgb 'gray30'"
         for x, label in vlines] + [
        "plot " + ", ".join(plots),
    ])
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr, file=sys.stderr)
        return False
    return True


def write_rows(path, rows, fields=None):
    """rows (dicts) as CSV, columns in `fields` order then any others."""
    fields = list(fields or [])
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w") as f:
        f.write(",".join(fields) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in fields) + "\n")


def caching_metrics(server):
    """Wraps server.metrics so the last answer stays readable as server.last_metrics (a Sampler
    `extra` can then report more series without a second request)."""
    orig = server.metrics
    server.last_metrics = {}

    def metrics(timeout=5.0):
        m = orig(timeout)
        server.last_metrics = m
        return m

    server.metrics = metrics
    return server


# ---- readers that check what they receive -------------------------------------------------------

class StreamReader:
    """One subscriber (SSE or WebSocket) on a non-blocking socket that parses what it reads and
    calls on_msg(id or None, data prefix (first 64 bytes), data length) for every message and
    on_ctrl(kind, dict) for sluice's control events (gap, reset, overflow) and closes. WebSocket
    pings are answered. `rcvbuf` sets SO_RCVBUF before connecting."""

    def __init__(self, port, kind, path, rcvbuf=None, host="127.0.0.1", on_msg=None,
                 on_ctrl=None):
        self.kind = kind
        self.on_msg = on_msg or (lambda i, d, n: None)
        self.on_ctrl = on_ctrl or (lambda k, d: None)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        s.connect((host, port))
        s.sendall(subscribe_request(path, kind == "ws", host))
        s.setblocking(False)
        self.sock = s
        self.buf = bytearray()
        self.scan = 0
        self.head = None
        self.status = 0
        self.closed = False
        self.bytes = 0
        self.errors = 0

    def fileno(self):
        return self.sock.fileno()

    def read(self, limit=1 << 20):
        """Reads what is there (at most `limit` bytes); returns the count, -1 once closed."""
        if self.closed:
            return -1
        got = 0
        while got < limit:
            try:
                chunk = self.sock.recv(min(1 << 20, limit - got))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                self.on_ctrl("closed", {})
                break
            got += len(chunk)
            self.bytes += len(chunk)
            self.buf += chunk
            self._parse()
        return got if got or not self.closed else -1

    def _parse(self):
        if self.head is None:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.head = bytes(self.buf[:i])
            self.status = int(self.head.split(b" ", 2)[1])
            del self.buf[:i + 4]
            self.scan = 0
        if self.kind == "ws":
            self._parse_ws()
        else:
            self._parse_sse()

    def _parse_sse(self):
        b = self.buf
        start = 0
        while True:
            i = b.find(b"\n\n", max(start, self.scan - 1))
            if i < 0:
                self.scan = len(b)
                break
            block = b[start:i]
            start = i + 2
            self.scan = start
            ev_id = ev = None
            data = None
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[6:] if data is None else data + b"\n" + line[6:]
                elif line.startswith(b"id: "):
                    ev_id = line[4:].decode()
                elif line.startswith(b"event: "):
                    ev = line[7:].decode()
            if ev is not None and ev.startswith("sluice."):
                try:
                    d = json.loads(bytes(data or b"{}"))
                except ValueError:
                    d = {}
                self.on_ctrl(ev[7:], d)
            elif data is not None:
                self.on_msg(ev_id, bytes(data[:64]), len(data))
        if start:
            del b[:start]
            self.scan -= start

    def _parse_ws(self):
        b = self.buf
        off = 0
        while len(b) - off >= 2:
            op = b[off] & 0x0F
            n = b[off + 1] & 0x7F
            h = 2
            if n == 126:
                if len(b) - off < 4:
                    break
                n = struct.unpack_from("!H", b, off + 2)[0]
                h = 4
            elif n == 127:
                if len(b) - off < 10:
                    break
                n = struct.unpack_from("!Q", b, off + 2)[0]
                h = 10
            if len(b) - off < h + n:
                break
            if not b[off] & 0x80 or b[off + 1] & 0x80:
                self.errors += 1  # sluice never fragments nor masks
            p = b[off + h:off + h + min(n, 64)] if op != 1 or n > 4096 else b[off + h:off + h + n]
            if op in (1, 2):
                if p.startswith(b'{"sluice":"'):
                    try:
                        d = json.loads(bytes(b[off + h:off + h + n]))
                    except ValueError:
                        d = {}
                    self.on_ctrl(d.get("sluice", "?"), d)
                else:
                    self.on_msg(None, bytes(p[:64]), n)
            elif op == 9:
                self._send(0xA, bytes(b[off + h:off + h + n]))
            elif op == 8:
                self.on_ctrl("ws_close", {"code": struct.unpack_from("!H", b, off + h)[0]
                                          if n >= 2 else None})
                self._send(0x8, bytes(b[off + h:off + h + min(n, 2)]))
            off += h + n
        if off:
            del b[:off]

    def _send(self, opcode, payload):
        key = os.urandom(4)
        masked = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        try:
            self.sock.send(bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SeqCheck:
    """For payloads "<seq> <unix time> …": counts messages, loss (a jump in seq), duplicates
    and reordering, gap markers, and the delivery latency (1 ms buckets)."""

    def __init__(self):
        self.count = self.missing = self.disorder = self.gaps = self.closes = 0
        self.last = 0
        self.first = None
        self.lat = [0] * 10001

    def on_msg(self, ev_id, data, n):
        try:
            seq_s, ts_s = data.split(b" ", 2)[:2]
            seq, ts = int(seq_s), float(ts_s)
        except ValueError:
            self.disorder += 1
            return
        self.count += 1
        if self.first is None:
            self.first = seq
        if seq <= self.last:
            self.disorder += 1
        elif self.last and seq > self.last + 1:
            self.missing += seq - self.last - 1
        self.last = max(self.last, seq)
        ms = int((time.time() - ts) * 1000)
        self.lat[min(max(ms, 0), 10000)] += 1

    def on_ctrl(self, kind, d):
        if kind in ("gap", "overflow", "reset"):
            self.gaps += 1
        elif kind in ("closed", "ws_close"):
            self.closes += 1

    def result(self):
        return {"count": self.count, "missing": self.missing, "disorder": self.disorder,
                "gaps": self.gaps, "closes": self.closes, "first": self.first,
                "last": self.last, "lat": self.lat}


class Record:
    """Keeps every message as (id or None, data prefix) and every control event, in order."""

    def __init__(self):
        self.events = []

    def on_msg(self, ev_id, data, n):
        self.events.append(("msg", ev_id, data, n))

    def on_ctrl(self, kind, d):
        self.events.append((kind, d))

    def result(self):
        return {"events": self.events}


def reader_process(port, specs, mode, ready, stop, conn, drain=1.5):
    """Runs in a child process: opens one StreamReader per spec ({"kind", "path", "rcvbuf",
    "rate" (bytes/s, None: as fast as possible)}), sets `ready`, reads until `stop` is set and
    then for up to `drain` more seconds (until nothing arrives for 0.3 s), and sends one result
    dict per reader through `conn` (mode "seq": SeqCheck, "record": Record)."""
    import selectors
    readers, checks = [], []
    try:
        for sp in specs:
            ck = SeqCheck() if mode == "seq" else Record()
            readers.append(StreamReader(port, sp["kind"], sp["path"], sp.get("rcvbuf"),
                                        on_msg=ck.on_msg, on_ctrl=ck.on_ctrl))
            checks.append(ck)
    except OSError as e:
        conn.send({"error": f"connect: {e}"})
        return
    sel = selectors.DefaultSelector()
    slow = []
    for r, sp in zip(readers, specs):
        if sp.get("rate"):
            slow.append((r, sp["rate"]))
        else:
            sel.register(r, selectors.EVENT_READ)
    # Wait for every response head before saying ready.
    deadline = time.monotonic() + 10
    while any(r.head is None and not r.closed for r in readers) and time.monotonic() < deadline:
        for r in readers:
            if r.head is None:
                r.read(4096)
        time.sleep(0.005)
    ready.set()
    last_t = time.monotonic()
    stop_t = None
    quiet_since = None
    while True:
        got = 0
        events = sel.select(timeout=0.02 if slow else 0.1)
        for key, _ in events:
            n = key.fileobj.read()
            if n < 0:
                sel.unregister(key.fileobj)
            else:
                got += n
        now = time.monotonic()
        dt, last_t = now - last_t, now
        for r, rate in slow:
            n = r.read(max(1, int(rate * dt)))
            got += max(n, 0)
        if stop_t is None and stop.is_set():
            stop_t = now
        if stop_t is not None:
            if got:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            if now - stop_t > drain or (quiet_since and now - quiet_since > 0.3 and not slow):
                break
    out = []
    for r, ck, sp in zip(readers, checks, specs):
        d = ck.result()
        d.update(kind=sp["kind"], status=r.status, bytes=r.bytes, ws_errors=r.errors,
                 closed=r.closed, spec=sp.get("name", ""))
        out.append(d)
        r.close()
    conn.send(out)


def _niced_readers(nice, *args):
    if nice:
        os.nice(nice)
    reader_process(*args)


class Readers:
    """reader_process in a child process (so that its parsing never delays the measuring
    process). start() returns once every reader has its response head; stop() returns the
    per-reader results."""

    def __init__(self, port, specs, mode="seq", drain=1.5, nice=0):
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        self.ready, self.stop_evt = ctx.Event(), ctx.Event()
        self.parent, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_niced_readers,
                                args=(nice, port, specs, mode, self.ready, self.stop_evt, child,
                                      drain),
                                daemon=True)
        self.proc.start()
        self.ready.wait(20)

    def stop(self, timeout=120):
        self.stop_evt.set()
        if self.parent.poll(timeout):
            res = self.parent.recv()
        else:
            res = {"error": "reader process did not answer"}
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        return res


def hist_pct(hist, p):
    """The p-quantile of a histogram of 1-unit buckets (the bucket index)."""
    total = sum(hist)
    if not total:
        return 0
    want, seen = p * total, 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= want:
            return i
    return len(hist) - 1


def plot_panels(png_path, title, panels, xlabel="seconds", width=1000, panel_height=440):
    """Several charts stacked on one x axis (gnuplot multiplot). Each panel is a dict with
    "curves" and optional "hlines", "vlines", "ylabel", "y2label", "logscale" as in plot_curves,
    and "title". Returns False if gnuplot is missing or failed."""
    import shutil
    import sys
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    n = len(panels)
    lines = [
        f"set terminal pngcairo size {width},{panel_height * n + 60} font 'sans,11' noenhanced"
        if common._has_cairo() else
        f"set terminal png size {width},{panel_height * n + 60} noenhanced",
        f"set output '{png_path}'",
        "set datafile separator ','",
        f"set multiplot layout {n},1 title {_q(title)}",
    ]
    for p in panels:
        lines += ["reset", "set datafile separator ','", "set grid", "set autoscale xfix",
                  "set key below", "set lmargin at screen 0.08", "set rmargin at screen 0.91",
                  f"set xlabel {_q(xlabel)}", f"set ylabel {_q(p.get('ylabel', ''))}",
                  f"set title {_q(p.get('title', ''))}"]
        lines.append("set logscale y" if p.get("logscale") else
                     "set yrange [0:*]\nset offsets 0, 0, graph 0.08, 0")
        plots = []
        any_y2 = False
        for c in p["curves"]:
            csv, xc, yc, label = c[:4]
            axis = len(c) > 4 and c[4] == "y2"
            style = c[5] if len(c) > 5 else "lw 2"
            any_y2 |= axis
            try:
                header = Path(csv).read_text().splitlines()[0].split(",")
            except (OSError, IndexError):
                continue
            if xc not in header or yc not in header:
                continue
            xi, yi = header.index(xc) + 1, header.index(yc) + 1
            plots.append(f"'{csv}' using {xi}:{yi} with lines {style} "
                         f"{'axes x1y2 ' if axis else ''}title {_q(label)}")
        for value, label, colour in p.get("hlines", ()):
            plots.append(f"{value} with lines dt 2 lw 2 lc rgb '{colour}' title {_q(label)}")
        for x, label in p.get("vlines", ()):
            lines.append(f"set arrow from {x}, graph 0 to {x}, graph 1 nohead dt 3 "
                         f"lc rgb 'gray40'")
            lines.append(f"set label {_q(label)} at {x}, graph 0.95 left offset 0.5, 0 "
                         f"tc rgb 'gray30'")
        if any_y2:
            lines += ["set y2tics", "set ytics nomirror", "set y2range [0:*]",
                      f"set y2label {_q(p.get('y2label', ''))}"]
        if plots:
            lines.append("plot " + ", ".join(plots))
    lines.append("unset multiplot")
    r = subprocess.run(["gnuplot"], input="\n".join(lines), text=True, capture_output=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr, file=sys.stderr)
        return False
    return True
