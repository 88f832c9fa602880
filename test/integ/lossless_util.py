"""Helpers for the lossless-topic tests (docs/protocol.md "Lossless topics"): starting a server
and restarting it on the same data_dir, the topic's log directory and its segment files, the
cursor API, RSS sampling, and reading a stream up to an id while checking ids and payloads.

Restarting: `start(factory, ...)` remembers the arguments on the returned Sluice
(`srv.start_args`, `srv.data_dir`); `restart(factory, srv)` stops it (SIGTERM and a clean exit,
or `sig=signal.SIGKILL`) and starts a new process with the same config and the same data_dir
(a new port and a new stderr log: `new.logs()` is the restarted server's log only).
"""

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

from conftest import SLUICE_BIN
from sluice_client import Closed, parse_id

MiB = 1024 * 1024


# -- servers ---------------------------------------------------------------------------------

def start(factory, topics=None, server=None, limits=None, data_dir=None):
    """factory(...) with the arguments remembered for restart()."""
    server = dict(server or {})
    if data_dir is not None:
        server["data_dir"] = str(data_dir)
    srv = factory(server=server, limits=limits, topics=topics)
    srv.start_args = {"server": server, "limits": limits, "topics": topics}
    srv.data_dir = Path(server.get("data_dir") or (srv.workdir / "data"))
    return srv


def stop(srv, sig=signal.SIGTERM, timeout=15):
    """Stops a server; after SIGTERM it must exit 0 within timeout."""
    if not srv.alive():
        return srv.proc.returncode
    srv.signal(sig)
    rc = srv.wait_exit(timeout)
    assert rc is not None, f"server pid {srv.pid} did not exit within {timeout}s of {sig}"
    if sig == signal.SIGTERM:
        assert rc == 0, f"exit code {rc} after SIGTERM:\n{srv.logs()[-3000:]}"
    return rc


def restart(factory, srv, sig=signal.SIGTERM, **override):
    """Stops srv and starts a new server on the same data_dir (and config, unless override
    replaces `server`, `limits` or `topics`)."""
    stop(srv, sig)
    args = dict(srv.start_args)
    args.update(override)
    server = dict(args["server"] or {})
    server["data_dir"] = str(srv.data_dir)
    return start(factory, topics=args["topics"], server=server, limits=args["limits"])


def is_asan(path=SLUICE_BIN):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# -- the log on disk -------------------------------------------------------------------------

def meta_name(d):
    """The topic name recorded in a log directory's `meta` file, or None."""
    try:
        for line in (Path(d) / "meta").read_text().splitlines():
            if line.startswith("name="):
                return line[len("name="):]
    except (FileNotFoundError, NotADirectoryError):
        pass
    return None


def topic_dirs(srv, topic):
    """Every log directory under data_dir/topics whose `meta` names the topic."""
    base = srv.data_dir / "topics"
    if not base.is_dir():
        return []
    return [d for d in sorted(base.iterdir()) if d.is_dir() and meta_name(d) == topic]


def topic_dir(srv, topic):
    """The topic's log directory under data_dir/topics: the one whose `meta` file names it
    (directory names are a readable prefix plus a hash, docs/protocol.md). Fails unless there is
    exactly one."""
    found = topic_dirs(srv, topic)
    if len(found) == 1:
        return found[0]
    base = srv.data_dir / "topics"
    raise AssertionError(f"{len(found)} directories for topic {topic} under {base}; data_dir "
                         "holds: " + ", ".join(str(p.relative_to(srv.data_dir))
                                               for p in sorted(srv.data_dir.rglob("*"))))


SEGMENT_SUFFIXES = (".seg", ".log")


def segment_files(d):
    """The topic's segment files, oldest first. A segment is a regular file in the topic
    directory named with a segment suffix (see SEGMENT_SUFFIXES) or, failing that, any regular
    file whose name is a number; ordered by the number in its name."""
    files = [p for p in Path(d).iterdir() if p.is_file()]
    segs = [p for p in files if p.suffix in SEGMENT_SUFFIXES]
    if not segs:
        segs = [p for p in files if p.stem.isdigit()]

    def key(p):
        digits = "".join(ch for ch in p.stem if ch.isdigit())
        return (int(digits) if digits else -1, p.name)
    return sorted(segs, key=key)


def dir_bytes(d):
    """Disk usage of a directory tree: allocated blocks (what a quota is about)."""
    total = 0
    for p in Path(d).rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if p.is_file():
            total += st.st_blocks * 512
    return total


def file_bytes(d):
    """Apparent size of the regular files of a directory tree."""
    total = 0
    for p in Path(d).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:
            continue
    return total


# -- cursors ---------------------------------------------------------------------------------

def cursors(srv, topic):
    """GET /topics/{t}/cursors -> {name: entry}; checks the documented shape."""
    r = srv.get(f"/topics/{topic}/cursors")
    assert r.status == 200, f"GET cursors of {topic}: {r}"
    body = r.json()
    assert set(body) == {"cursors"}, body
    out = {}
    for c in body["cursors"]:
        assert {"name", "checkpoint", "connected", "idle_ms"} <= set(c), c
        assert c["checkpoint"] is None or isinstance(c["checkpoint"], str), c
        if c["checkpoint"] is not None:
            parse_id(c["checkpoint"])
        assert isinstance(c["connected"], int) and c["connected"] >= 0, c
        assert isinstance(c["idle_ms"], int) and c["idle_ms"] >= 0, c
        assert c["name"] not in out, f"cursor listed twice: {body}"
        out[c["name"]] = c
    return out


def ack(srv, topic, name, msg_id, as_json=False):
    """POST /topics/{t}/cursors/{name} with the id (plain, or {"id": ...}); the Response."""
    body = json.dumps({"id": msg_id}) if as_json else msg_id
    hdrs = {"Content-Type": "application/json"} if as_json else {"Content-Type": "text/plain"}
    return srv.post(f"/topics/{topic}/cursors/{name}", body, hdrs)


def ack_ok(srv, topic, name, msg_id, as_json=False):
    r = ack(srv, topic, name, msg_id, as_json)
    assert r.status == 204, f"ack {name} at {msg_id}: {r}"
    return r


def wait_checkpoint(srv, topic, name, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        c = cursors(srv, topic).get(name)
        if c is not None and c["checkpoint"] == want:
            return c
        if time.monotonic() > deadline:
            raise AssertionError(f"cursor {name} of {topic} is {c}, expected checkpoint {want}")
        time.sleep(0.05)


def error_of(r):
    try:
        return r.json().get("error")
    except (ValueError, AttributeError):
        return None


# -- payloads --------------------------------------------------------------------------------

def payload(i, size):
    """Message i: its number, then filler derived from the number (so a record served for the
    wrong position, or mixed from two, does not compare equal). One line (NDJSON-safe)."""
    head = f"{i:08d}:"
    block = hashlib.sha256(head.encode()).hexdigest()
    n = size - len(head)
    return head + (block * (n // len(block) + 1))[:n]


# -- reading ---------------------------------------------------------------------------------

def read_until_seq(sub, last_seq, timeout=30.0):
    """Reads data-carrying SSE blocks until one whose id (message or gap `to`) has seq
    last_seq; returns them. Fails on a timeout or a closed stream with what was read so far."""
    deadline = time.monotonic() + timeout
    out = []
    while True:
        try:
            b = sub.read_event(max(0.001, deadline - time.monotonic()))
        except (TimeoutError, Closed) as e:
            tail = [(x["event"], x["id"]) for x in out[-3:]]
            raise AssertionError(f"{type(e).__name__} after {len(out)} events waiting for seq "
                                 f"{last_seq}; last: {tail}") from None
        out.append(b)
        s = block_seq(b)
        if s is not None and s >= last_seq:
            return out


def block_seq(b):
    """The seq a block completes: a message's own, a gap's `to`; None for other controls."""
    if b["event"] == "sluice.gap":
        return parse_id(json.loads(b["data"])["to"])[1]
    if b["event"] and b["event"].startswith("sluice."):
        return None
    if b["id"] is None:
        return None
    return parse_id(b["id"])[1]


# -- memory ----------------------------------------------------------------------------------

def proc_status(pid):
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


class RssSampler(threading.Thread):
    """Samples /proc/<pid>/status every `interval` s; `max` is the largest VmRSS seen and
    `at_max` the breakdown (RssAnon/RssFile/RssShmem) at that sample."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.max = 0
        self.at_max = {}
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self):
        st = proc_status(self.pid)
        if st.get("VmRSS", 0) > self.max:
            self.max = st["VmRSS"]
            self.at_max = st
        self.samples += 1

    def stop(self):
        self._halt.set()
        self.join(5)
        self.sample()
        return self.max


def fmt_mib(n):
    return f"{n / MiB:.1f} MiB"


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default
