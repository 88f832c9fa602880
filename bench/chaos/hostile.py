#!/usr/bin/python3
"""Chaos scenario 7: hostile clients.

Every reproduction of a security review, each a small function, run round-robin in a loop for
the profile's duration (40 s with --short, 300 s otherwise) against one sluice (SLUICE_BIN; an
AddressSanitizer build works: its reports are looked for in the server's stderr), beside normal
traffic on other topics: a publisher posting 20 messages a second to each of `ok/lossy` and
`ok/lossless`, and one SSE reader on each.

The reproductions, and the safe behaviour each must get:
  r1_pipeline_full   GET /healthz + POST /topics/full/a?wait=20s (5-byte body) in one send, then
                     2 more bytes: /healthz answered 200, the server survives.
  r2_ws_pub_held     WebSocket mode=pub on the full lossless topic, ws_ping_interval = 1s: one
                     message (held), a ping arrives, a second message: no spin (server CPU
                     under 60 % in the second after), ping seen, server survives.
  r3_ws_held_long    a WebSocket publish held on a full lossless topic whose name is > 257 bytes
                     (1000): no sanitizer report, server survives.
  r4_multi_markers   /sse over 3 topics resumed from an old id after 650 messages on the first
                     (ring of 1024, so it owes them all) and 100 on each of the others (rings of
                     64, so they need gap markers in the same write), and from an id of another
                     stream epoch (reset markers, and again 650+ owed on the first): every
                     byte on the wire is UTF-8 SSE, every block parses, every control event's
                     data is JSON naming one of the 3 topics, every message is a known payload.
  r5a_ndjson_budget  1 MiB NDJSON of `1\\n` lines (memory_limit 16MiB): ok/lossy and
                     ok/lossless keep at least half of the messages they retained before.
  r5b_trickle        31 connections send an NDJSON POST with Content-Length: 8388608 and one body
                     byte, then a byte a second: accounted memory grows by at most 2 MiB, no
                     message is evicted for the budget, ok/lossy and ok/lossless keep at
                     least half of what they retained, and a 4 KiB publish beside them is
                     accepted.
  r5c_ws_unread      100,000 empty data frames and pings on a mode=sub WebSocket that never
                     reads (each data frame earns a not_publisher error message): accounted
                     memory grows by at most 512 KiB.
  r5c_http_unread    5,000 pipelined GET /healthz from a client that never reads: the same.
  r6_forged_control  POST ?event=sluice.reset / ?event=sluice.gap: 400, and a reader of the
                     topic sees no sluice.* event.
  r7_cross_origin    origins = http://good.example; POST with Origin: http://evil.example: 403,
                     nothing published.
  r8_long_lossless   POST to a lossless topic with a 300-byte name of many segments: 202.
  r9a_obs_fold       `Transfer-Encoding:\\r\\n chunked`: 400.
  r9b_ws_header      a header with 200 KB of leading whitespace: 431.
  r9c_upgrade_pipe   POST with Upgrade: websocket, then a pipelined GET /healthz: the second
                     answer is a correct 200, or the connection is closed; never garbage.
  r10_tokens         the server has [auth] (an HMAC secret; `sec/*` needs tokens, every other
                     topic is open): to a reader of sec/t holding a valid token, POSTs with a
                     forged token (signed with another secret), an `alg: none` token, a token
                     replayed after its expiry, one over max_token_bytes, one whose payload
                     was altered after signing, and none at all: 401 each, with the
                     WWW-Authenticate challenge, and the reader sees nothing; /metrics without
                     the admin token: 401; the valid token still publishes (202).

After every reproduction: the server must be alive (else the crash is charged to it, its log
kept, and a new server started so the other reproductions still run) and no new sanitizer
report ("AddressSanitizer", "runtime error", "LeakSanitizer") may have appeared in its stderr
(else charged to it). Between reproductions the connection gauge is compared with the kernel's
ESTABLISHED count for the port (ManualSampler; a difference must disappear within 3 s,
the time sluice needs to notice a peer's close).

Pass (VERDICT hostile PASS):
  * no crash, no sanitizer report, and the server exits 0 on SIGTERM at the end;
  * every reproduction ran (the first round always runs whole) and got its safe behaviour
    every time;
  * the normal readers received every message accepted for their topics, in order, with no
    sluice.* control event, and no normal publish was refused;
  * sluice_memory_accounted_bytes is back within 1 MiB of its baseline (taken after the
    normal topics' rings were full) once the hostile clients are gone;
  * the connection gauge equals the kernel's count at every compared sample.

The per-reproduction table at the end (runs safe / unexpected / connection error, crashes,
sanitizer reports, first details) is the checklist while fixes land; crashed servers' logs are
kept in the output directory as sluice-<n>-crash-<reproduction>.log.

  bench/chaos/hostile.py [--short] [--only r1,r5c,...] [--seconds N]
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "test" / "integ"))
from proc import SLUICE_BIN, Server, parse_metrics, raise_nofile  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sampling import ManualSampler  # noqa: E402
from sluice_client import (MULTI_ID_RE, Closed, Publisher, RawConn, SSEClient,  # noqa: E402
                           http)
from ws_client import OP_PING, OP_TEXT, WSConn, encode_frame  # noqa: E402

MARKERS = ("AddressSanitizer", "runtime error", "LeakSanitizer")

# [auth] for r10_tokens: a secret and an admin token in a directory of their own.
AUTH_DIR = Path(__import__("tempfile").mkdtemp(prefix="sluice-chaos-auth-"))
SECRET = b"chaos-secret-0123456789-0123456789-abcdef"
ADMIN_TOKEN = "chaos-admin-0123456789-0123456789-abcdef"
(AUTH_DIR / "secret").write_bytes(SECRET)
(AUTH_DIR / "admin").write_text(ADMIN_TOKEN)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MiB = 1 << 20
GOOD_ORIGIN = "http://good.example"

CONFIG = f"""[server]
shutdown_drain = 2s
header_timeout = 5s
idle_timeout = 15s
write_stall_timeout = 5s
ws_ping_interval = 1s
ws_pong_timeout = 10s
origins = {GOOD_ORIGIN}
max_publish_wait = 30s
[limits]
max_topic_name = 1024
[auth]
hmac_secret_file = {AUTH_DIR}/secret
admin_token_file = {AUTH_DIR}/admin
max_token_bytes = 2KiB
leeway = 0s
[topic "*"]
publish = anyone
subscribe = anyone
[topic "sec/*"]
publish = token
subscribe = token
[topic "ok/*"]
max_messages = 128
[topic "ok/lossless"]
durability = lossless
[topic "full/*"]
durability = lossless
disk_quota = 64KiB
segment_bytes = 16KiB
max_messages = 64
[topic "long/*"]
durability = lossless
max_messages = 8
[topic "multi/*"]
max_messages = 64
[topic "multi/a"]
max_messages = 1024
[topic "abuse/*"]
max_messages = 64
[topic "x/*"]
max_messages = 16
"""

NORMAL_TOPICS = ("ok/lossy", "ok/lossless")
FULL_TOPIC = "full/a"
# > 257 bytes (the size of the buffer the review found), lossless (full/*), full.
# 1000 bytes, so that a copy into that buffer also runs past the end of the object holding
# it, where AddressSanitizer sees it.
LONG_FULL_TOPIC = "full/" + "/".join(["abcdefghi"] * 99) + "/abcd"
# ~300 bytes, many segments, lossless (long/*).
LONG_TOPIC = "long/" + "/".join(f"seg{i:03d}" for i in range(50))
MULTI = ("multi/a", "multi/b", "multi/c")


# ---- the server, its log and its figures ----------------------------------------------------

def metrics(port, timeout=5.0):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=ADMIN)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return parse_metrics(r.read().decode())


def accounted(port):
    return int(metrics(port).get("sluice_memory_accounted_bytes", -1))


def topics(port):
    r = http(port, "GET", "/topics", headers=ADMIN)
    return {t["name"]: t for t in r.json()["topics"]}


def cpu_seconds(pid):
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


class Log:
    """The server's stdout+stderr file: new() returns what was written since the last call."""

    def __init__(self, path):
        self.path = Path(path)
        self.pos = 0

    def new(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return ""
        self.pos += len(data)
        return data.decode(errors="replace")


def sanitizer_lines(text):
    return [ln.strip() for ln in text.splitlines() if any(m in ln for m in MARKERS)]


# ---- normal traffic on other topics ----------------------------------------------------------

class Normal:
    """A publisher (20 messages a second to each normal topic, one keep-alive connection) and an
    SSE reader per normal topic, all threads. check() compares what each reader got with what
    was accepted for its topic."""

    RATE = 20

    def __init__(self, port):
        self.port = port
        self.accepted = {t: [] for t in NORMAL_TOPICS}
        self.refused = {t: [] for t in NORMAL_TOPICS}
        self.pub_errors = 0
        self.blocks = {t: [] for t in NORMAL_TOPICS}
        self.reader_errors = {t: None for t in NORMAL_TOPICS}
        self._halt = threading.Event()
        self._pub_halt = threading.Event()
        self.subs = {t: SSEClient(port, f"/topics/{t}") for t in NORMAL_TOPICS}
        for t, s in self.subs.items():
            assert s.status == 200, f"normal reader on {t}: {s.status}"
        self.threads = [threading.Thread(target=self._read, args=(t,), daemon=True)
                        for t in NORMAL_TOPICS]
        self.threads.append(threading.Thread(target=self._publish, daemon=True))
        for th in self.threads:
            th.start()

    @staticmethod
    def payload(topic, n):
        return f"{topic}:{n:08d}"

    def _read(self, t):
        sub = self.subs[t]
        while not self._halt.is_set():
            try:
                self.blocks[t].append(sub.read_block(0.5))
            except TimeoutError:
                continue
            except Closed:
                self.reader_errors[t] = "closed"
                return
            except Exception as e:  # noqa: BLE001  (reported by check())
                self.reader_errors[t] = repr(e)
                return

    def _publish(self):
        pub = None
        n = 0
        period = 1.0 / self.RATE
        nxt = time.monotonic()
        while not self._pub_halt.is_set():
            now = time.monotonic()
            if now < nxt:
                self._pub_halt.wait(nxt - now)
                continue
            nxt = max(nxt + period, now - 1.0)
            n += 1
            for t in NORMAL_TOPICS:
                body = self.payload(t, n)
                try:
                    if pub is None:
                        pub = Publisher(self.port, timeout=10)
                    r = pub.post(f"/topics/{t}", body)
                    if r.status == 202:
                        self.accepted[t].append((r.json()["id"], body))
                    else:
                        self.refused[t].append(r.status)
                except Exception:  # noqa: BLE001
                    self.pub_errors += 1
                    if pub is not None:
                        pub.close()
                    pub = None
        if pub is not None:
            pub.close()

    def retained(self):
        tp = topics(self.port)
        return {t: tp.get(t, {}).get("messages", 0) for t in NORMAL_TOPICS}

    def stop(self, drain_s=5.0):
        """Stops publishing, waits until the readers have everything accepted (or drain_s),
        then stops the readers."""
        self._pub_halt.set()
        self.threads[-1].join(15)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            if all(len(self._events(t)) >= len(self.accepted[t]) for t in NORMAL_TOPICS):
                break
            time.sleep(0.1)
        self._halt.set()
        for th in self.threads[:-1]:
            th.join(5)
        for s in self.subs.values():
            s.close()

    def _events(self, t):
        return [b for b in self.blocks[t] if b["data"] is not None]

    def check(self):
        """[problem, ...] (empty when every reader got exactly what was accepted)."""
        problems = []
        for t in NORMAL_TOPICS:
            ev = self._events(t)
            ctrl = [b for b in ev if (b["event"] or "").startswith("sluice.")]
            if ctrl:
                problems.append(f"{t}:control_events={len(ctrl)}({ctrl[0]['event']})")
            got = [(b["id"], b["data"]) for b in ev if not (b["event"] or "").startswith("sluice.")]
            want = self.accepted[t]
            if got != want:
                i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                         min(len(got), len(want)))
                problems.append(f"{t}:got={len(got)}/accepted={len(want)},first_diff_at={i}")
            if self.refused[t]:
                problems.append(f"{t}:refused={len(self.refused[t])}"
                                f"(statuses {sorted(set(self.refused[t]))})")
            if self.reader_errors[t]:
                problems.append(f"{t}:reader={self.reader_errors[t]}")
        if self.pub_errors:
            problems.append(f"publisher_connection_errors={self.pub_errors}")
        return problems


# ---- setting up an incarnation -----------------------------------------------------------------

def ndjson(port, topic, lines, timeout=30.0):
    body = ("\n".join(lines) + "\n").encode()
    return http(port, "POST", f"/topics/{topic}", {"Content-Type": "application/x-ndjson"}, body,
                timeout=timeout)


def fill_full(port, topic, size=4096, limit=200):
    """A durable reader that never acknowledges pins the log of a lossless topic with a tiny
    quota; publishes until 429 topic_full (test/integ/test_lossless.py does the same)."""
    sub = SSEClient(port, f"/topics/{topic}?durable=pin")
    sub.close()
    for i in range(limit):
        r = http(port, "POST", f"/topics/{topic}", body=f"{i:08d}:".encode() + b"f" * size)
        if r.status == 429:
            return i
        if r.status != 202:
            raise RuntimeError(f"filling {topic}: {r.status} {r.body[:200]!r}")
    raise RuntimeError(f"{topic}: {limit} x {size} B accepted under a 64 KiB quota")


STARTED = []  # every server started, so that none outlives the scenario (see __main__)


class Incarnation:
    """One sluice process with its full topics filled, its normal traffic, a sampler and the
    accounted-memory baseline."""

    def __init__(self, binary, n):
        self.n = n
        self.srv = Server(CONFIG, binary=binary, memory_limit="16MiB",
                          admin_token=ADMIN_TOKEN)
        STARTED.append(self.srv)
        self.port = self.srv.port
        self.log = Log(self.srv.dir / "sluice.log")
        self.full_filled = {FULL_TOPIC: fill_full(self.port, FULL_TOPIC)}
        try:
            self.full_filled[LONG_FULL_TOPIC] = fill_full(self.port, LONG_FULL_TOPIC)
        except RuntimeError as e:
            self.full_filled[LONG_FULL_TOPIC] = f"error: {e}"
        # The normal topics' rings full before the baseline (same payload size as later).
        for t in NORMAL_TOPICS:
            ndjson(self.port, t, [Normal.payload(t, 0)] * 160)
        self.normal = Normal(self.port)
        self.sampler = ManualSampler(self.srv, interval=1.0)
        time.sleep(1.0)
        self.baseline = accounted(self.port)

    def alive(self):
        return self.srv.alive()


# ---- the reproductions -------------------------------------------------------------------------
# Each takes the incarnation and returns (outcome, detail): outcome "safe" (the safe behaviour:
# an expected refusal or a correct answer), "unexpected" (an answer that is not it) or
# "conn_error" (the connection failed where an answer was due).

SAFE, UNEXPECTED, CONN_ERROR = "safe", "unexpected", "conn_error"
CONN_ERRORS = (OSError, Closed, TimeoutError, ConnectionError, AssertionError, ValueError)


def r1_pipeline_full(inc):
    c = RawConn(inc.port, timeout=5)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
               b"POST /topics/" + FULL_TOPIC.encode() + b"?wait=20s HTTP/1.1\r\nHost: h\r\n"
               b"Content-Length: 5\r\n\r\nhello")
        r = c.read_response(5)
        time.sleep(0.2)
        c.send(b"GE")
        time.sleep(0.5)
        if r.status != 200:
            return UNEXPECTED, f"healthz {r.status}"
        return SAFE, ""
    finally:
        c.close()


def r2_ws_pub_held(inc):
    c = WSConn(inc.port, f"/topics/{FULL_TOPIC}?mode=pub", timeout=5)
    try:
        if c.status != 101:
            return UNEXPECTED, f"handshake {c.status}"
        c.send_text("held-1")
        deadline = time.monotonic() + 3.0
        ping = False
        while time.monotonic() < deadline and not ping:
            try:
                f = c.read_frame(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if f.opcode == OP_PING:
                ping = True
        c.try_send(encode_frame(OP_TEXT, b"held-2"))
        cpu0, t0 = cpu_seconds(inc.srv.proc.pid), time.monotonic()
        time.sleep(1.0)
        load = (cpu_seconds(inc.srv.proc.pid) - cpu0) / (time.monotonic() - t0)
        if load > 0.6:
            return UNEXPECTED, f"server_cpu={load:.0%}_after_second_held_message"
        if not ping:
            return UNEXPECTED, "no_ping_within_3s"
        return SAFE, ""
    finally:
        c.close()


def r3_ws_held_long(inc):
    c = WSConn(inc.port, f"/topics/{LONG_FULL_TOPIC}?mode=pub", timeout=5)
    try:
        if c.status != 101:
            return UNEXPECTED, f"handshake {c.status}"
        c.send_text("held-long")
        time.sleep(0.5)
        return SAFE, ""
    finally:
        c.close()


SSE_LINE = re.compile(r"^(?::.*|(id|event|data|retry)(?::.*)?)$")


def check_wire(raw, payloads, want_event):
    """Checks the bytes of a multi-topic stream; returns [problem, ...]."""
    problems = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return [f"not_utf8_at_{e.start}"]
    bad = [ch for ch in text if ord(ch) < 32 and ch not in "\r\n"]
    if bad:
        problems.append(f"control_bytes={len(bad)}")
    seen_event = False
    for blk in re.split(r"\r\n\r\n|\n\n|\r\r", text):
        if not blk.strip():
            continue
        fields = {}
        for ln in re.split(r"\r\n|\r|\n", blk):
            if not SSE_LINE.match(ln):
                problems.append(f"bad_line:{ln[:60]!r}")
                continue
            if ln.startswith(":"):
                continue
            k, _, v = ln.partition(":")
            fields.setdefault(k, []).append(v[1:] if v.startswith(" ") else v)
        ev = fields.get("event", [None])[-1]
        data = "\n".join(fields["data"]) if "data" in fields else None
        if "id" in fields and not MULTI_ID_RE.match(fields["id"][-1]):
            problems.append(f"bad_id:{fields['id'][-1][:60]!r}")
        if ev and ev.startswith("sluice."):
            try:
                d = json.loads(data or "")
                if d.get("topic") not in MULTI:
                    problems.append(f"{ev}_topic:{str(d.get('topic'))[:40]!r}")
            except (ValueError, AttributeError):
                problems.append(f"{ev}_data_not_json:{(data or '')[:60]!r}")
            if ev == want_event:
                seen_event = True
        elif data is not None and data not in payloads:
            problems.append(f"unknown_payload:{data[:40]!r}")
    if not seen_event:
        problems.append(f"no_{want_event}")
    return problems[:4]


def read_until_ends(sub, ends, timeout=5.0):
    deadline = time.monotonic() + timeout
    left = set(ends)
    while left and time.monotonic() < deadline:
        try:
            b = sub.read_block(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        left.discard(b["data"])
    return not left


def r4_multi_markers(inc):
    inc.round4 = getattr(inc, "round4", 0) + 1
    k = inc.round4
    q = "&".join(f"topic={t}" for t in MULTI)
    s = SSEClient(inc.port, f"/sse?{q}", timeout=5)
    try:
        if s.status != 200:
            return UNEXPECTED, f"sse {s.status}"
        for t in MULTI:
            http(inc.port, "POST", f"/topics/{t}", body=f"{t}:{k}:first")
        first = s.read_event(5)["id"]
    finally:
        s.close()
    # After a reset a reader gets everything still retained, earlier rounds' messages too.
    payloads = inc.multi_payloads = getattr(inc, "multi_payloads", set())
    payloads.update(f"{t}:{k}:first" for t in MULTI)
    ends = []
    for t, n in zip(MULTI, (650, 100, 100)):
        lines = [f"{t}:{k}:{i}" for i in range(n)]
        payloads.update(lines)
        ends.append(lines[-1])
        r = ndjson(inc.port, t, lines)
        if r.status != 202:
            return UNEXPECTED, f"ndjson {t} {r.status}"
    problems = []
    for label, hdrs, want in (("since_old_id", [("Last-Event-ID", first)], "sluice.gap"),
                              ("other_epoch", [("Last-Event-ID", "0123456789abcdef-5:multi/a")],
                               "sluice.reset")):
        s = SSEClient(inc.port, f"/sse?{q}", headers=hdrs, keep_raw=True, timeout=5)
        try:
            if s.status != 200:
                problems.append(f"{label}:status_{s.status}")
                continue
            complete = read_until_ends(s, ends)
            p = check_wire(s.raw, payloads, want)
            if not complete:
                p.append("incomplete")
            problems += [f"{label}:{x}" for x in p]
        finally:
            s.close()
    return (UNEXPECTED, ";".join(problems)[:300]) if problems else (SAFE, "")


def r5a_ndjson_budget(inc):
    before = inc.normal.retained()
    r = ndjson(inc.port, "abuse/nd", ["1"] * (512 * 1024), timeout=60)
    after = inc.normal.retained()
    lost = [f"{t}:{before[t]}->{after[t]}" for t in NORMAL_TOPICS
            if after[t] < max(1, before[t] // 2)]
    if lost:
        return UNEXPECTED, f"ndjson_{r.status}_emptied:" + ",".join(lost)
    return SAFE, f"ndjson_{r.status}"


BUDGET_EVICTIONS = 'sluice_evictions_total{reason="budget"}'


def r5b_trickle(inc, n=31, seconds=2):
    conns = []
    try:
        before = inc.normal.retained()
        m0 = metrics(inc.port)
        for _ in range(n):
            c = RawConn(inc.port, timeout=5)
            # NDJSON: a body may be max_body_bytes (8 MiB), not only max_message_bytes.
            c.send(b"POST /topics/abuse/trickle HTTP/1.1\r\nHost: h\r\n"
                   b"Content-Type: application/x-ndjson\r\n"
                   b"Content-Length: 8388608\r\n\r\nx")
            conns.append(c)
        time.sleep(0.3)
        after = inc.normal.retained()
        peak = 0
        probes = []
        for _ in range(seconds):
            time.sleep(1.0)
            for c in conns:
                try:
                    c.send(b"x")
                except OSError:
                    pass
            peak = max(peak, accounted(inc.port))
            probes.append(http(inc.port, "POST", "/topics/abuse/probe", body=b"p" * 4096).status)
        bad = [p for p in probes if p != 202]
        lost = [f"{t}:{before[t]}->{after[t]}" for t in NORMAL_TOPICS
                if after[t] < max(1, before[t] // 2)]
        # 62 body bytes in all: nothing may have been evicted to make room for them.
        evicted = int(metrics(inc.port).get(BUDGET_EVICTIONS, 0) - m0.get(BUDGET_EVICTIONS, 0))
        growth = peak - int(m0.get("sluice_memory_accounted_bytes", 0))
        detail = f"accounted_growth_peak_mib={growth / MiB:.1f},budget_evictions={evicted}"
        if growth > 2 * MiB or evicted or bad or lost:
            return UNEXPECTED, (detail + f",probe_statuses={probes}" +
                                (",emptied:" + ",".join(lost) if lost else ""))
        return SAFE, detail
    finally:
        for c in conns:
            c.close()


# What a client that never reads may make sluice hold: its unsent output stops being produced
# at 64 KiB (docs/protocol.md), plus a write in flight, the parser and the request buffers.
UNREAD_MAX = 512 * 1024
# 10,000 in the review; ten times as many (600 KB sent) make the difference from a bounded
# output plain: 80,000 error messages, ~7 MB, against at most 64 KiB unsent.
WS_FRAMES = 100000


def _unread_flood(inc, sock, frames, seconds=2.0):
    """Sends the chunks of bytes `frames` yields without ever reading, for at most `seconds`;
    returns (chunks sent, accounted growth peak)."""
    base = accounted(inc.port)
    sock.setblocking(False)
    sent = 0
    pending = b""
    it = iter(frames)
    deadline = time.monotonic() + seconds
    peak = 0
    next_probe = time.monotonic()
    while time.monotonic() < deadline:
        if not pending:
            nxt = next(it, None)
            if nxt is None:
                break
            pending = nxt
            sent += 1
        try:
            k = sock.send(pending)
            pending = pending[k:]
        except BlockingIOError:
            time.sleep(0.02)
        if time.monotonic() >= next_probe:
            peak = max(peak, accounted(inc.port) - base)
            next_probe = time.monotonic() + 0.25
    for _ in range(3):  # what the server still had to read
        time.sleep(0.25)
        peak = max(peak, accounted(inc.port) - base)
    return sent, peak


def r5c_ws_unread(inc):
    c = WSConn(inc.port, "/topics/abuse/ws?mode=sub", rcvbuf=4096, timeout=5)
    try:
        if c.status != 101:
            return UNEXPECTED, f"handshake {c.status}"
        # Empty data frames (each answered with a not_publisher error message, ~90 bytes for
        # 6), and empty pings among them.
        chunk = b"".join(encode_frame(OP_PING if i % 5 == 4 else OP_TEXT, b"")
                         for i in range(1000))
        sent, growth = _unread_flood(inc, c.sock, (chunk for _ in range(WS_FRAMES // 1000)))
        sent *= 1000
        if growth > UNREAD_MAX:
            return UNEXPECTED, f"accounted_growth_kib={growth // 1024},frames_sent={sent}"
        return SAFE, f"accounted_growth_kib={growth // 1024},frames_sent={sent}"
    finally:
        c.close()


def r5c_http_unread(inc):
    c = RawConn(inc.port, rcvbuf=4096, timeout=5)
    try:
        req = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
        sent, growth = _unread_flood(inc, c.sock, (req * 100 for _ in range(50)))
        if growth > UNREAD_MAX:
            return UNEXPECTED, f"accounted_growth_kib={growth // 1024},requests_sent={sent * 100}"
        return SAFE, f"accounted_growth_kib={growth // 1024},requests_sent={sent * 100}"
    finally:
        c.close()


def _watched(inc, topic, action):
    """Runs action() with an SSE reader on `topic`; returns (action's result, data-carrying
    blocks the reader got within 0.5 s after)."""
    s = SSEClient(inc.port, f"/topics/{topic}", timeout=5)
    try:
        res = action()
        got = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                b = s.read_block(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if b["data"] is not None:
                got.append(b)
        return res, got
    finally:
        s.close()


def r6_forged_control(inc):
    def post():
        return [http(inc.port, "POST", f"/topics/x/forged?event={ev}", body=b"{}").status
                for ev in ("sluice.reset", "sluice.gap")]
    statuses, got = _watched(inc, "x/forged", post)
    forged = [b["event"] for b in got if (b["event"] or "").startswith("sluice.")]
    if statuses != [400, 400] or forged:
        return UNEXPECTED, f"statuses={statuses},reader_saw={forged}"
    return SAFE, ""


def r7_cross_origin(inc):
    def post():
        return http(inc.port, "POST", "/topics/x/origin", {"Origin": "http://evil.example"},
                    b"cross-site").status
    status, got = _watched(inc, "x/origin", post)
    if status != 403 or got:
        return UNEXPECTED, f"status={status},published={len(got)}"
    return SAFE, ""


def r8_long_lossless(inc):
    r = http(inc.port, "POST", f"/topics/{LONG_TOPIC}", body=b"long-name")
    if r.status != 202:
        return UNEXPECTED, f"status={r.status},{r.body[:60].decode(errors='replace')}"
    return SAFE, ""


def r9a_obs_fold(inc):
    c = RawConn(inc.port, timeout=5)
    try:
        c.send(b"POST /topics/x/fold HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n"
               b"\r\n5\r\nhello\r\n0\r\n\r\n")
        r = c.read_response(5)
        return (SAFE, "") if r.status == 400 else (UNEXPECTED, f"status={r.status}")
    finally:
        c.close()


def r9b_ws_header(inc):
    c = RawConn(inc.port, timeout=5)
    try:
        data = b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Pad:" + b" " * 200_000 + b"v\r\n\r\n"
        # In pieces, stopping once an answer is there: a server that refuses early and closes
        # would otherwise reset the connection under its own answer.
        for i in range(0, len(data), 16384):
            if select.select([c.sock], [], [], 0)[0]:
                break
            try:
                c.send(data[i:i + 16384])
            except OSError:
                break
        r = c.read_response(5)
        return (SAFE, "") if r.status == 431 else (UNEXPECTED, f"status={r.status}")
    finally:
        c.close()


def r9c_upgrade_pipe(inc):
    c = RawConn(inc.port, timeout=5)
    try:
        c.send(b"POST /topics/x/upgrade HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nContent-Length: 2\r\n\r\nhi"
               b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        try:
            first = c.read_response(5)
        except Closed:
            return SAFE, "closed"
        if first.status == 101:
            return UNEXPECTED, "101_to_a_post"
        try:
            second = c.read_response(3)
        except (Closed, ConnectionResetError):
            return SAFE, f"{first.status},closed"
        except TimeoutError:
            return UNEXPECTED, f"{first.status},no_second_answer"
        except AssertionError as e:
            return UNEXPECTED, f"{first.status},garbled:{str(e)[:60]}"
        if second.status != 200 or not second.body.startswith(b"ok"):
            return UNEXPECTED, f"{first.status},second={second.status}:{second.body[:40]!r}"
        return SAFE, f"{first.status},200"
    finally:
        c.close()


def _jwt(claims, key=SECRET, alg="HS256"):
    import jwt
    return jwt.encode(claims, key, algorithm=alg)


def r10_tokens(inc):
    import base64
    now = int(time.time())
    grants = {"pub": ["sec/*"], "sub": ["sec/*"]}
    good = _jwt({"sub": "chaos", "exp": now + 600, "sluice": grants})
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    h, p, s = good.split(".")
    bad = {
        "forged": _jwt({"sub": "chaos", "sluice": grants}, key=b"x" * 40),
        "none": b64(b'{"alg":"none"}') + "." + p + ".",
        "replayed": _jwt({"sub": "chaos", "exp": now - 30, "sluice": grants}),
        "oversized": _jwt({"sub": "chaos", "pad": "x" * 3000, "sluice": grants}),
        "altered": h + "." + b64(json.dumps({"sub": "root", "sluice": {"pub": ["*"]}}).encode())
                   + "." + s,
        "missing": None,
    }
    sub = SSEClient(inc.port, f"/topics/sec/t?access_token={good}", timeout=5)
    try:
        if sub.status != 200:
            return UNEXPECTED, f"reader status={sub.status}"
        wrong = []
        for name, tok in bad.items():
            hdr = {"Authorization": f"Bearer {tok}"} if tok else {}
            r = http(inc.port, "POST", "/topics/sec/t", hdr, f"bad-{name}".encode())
            if r.status != 401 or not r.headers.get("www-authenticate", "").startswith("Bearer"):
                wrong.append(f"{name}={r.status}")
        r = http(inc.port, "GET", "/metrics")
        if r.status != 401:
            wrong.append(f"metrics={r.status}")
        r = http(inc.port, "POST", "/topics/sec/t", {"Authorization": f"Bearer {good}"}, b"good")
        if r.status != 202:
            wrong.append(f"good={r.status}")
        got = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and (not got or got[-1] != "good"):
            try:
                b = sub.read_block(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if b["data"] is not None:
                got.append(b["data"])
        if got != ["good"]:
            wrong.append(f"reader_saw={got}")
        log = (inc.srv.dir / "sluice.log").read_text(errors="replace")
        if any(t and t in log for t in [good, *bad.values()]):
            wrong.append("token_in_log")
        return (UNEXPECTED, ",".join(wrong)) if wrong else (SAFE, "")
    finally:
        sub.close()


REPROS = [r1_pipeline_full, r2_ws_pub_held, r3_ws_held_long, r4_multi_markers,
          r5a_ndjson_budget, r5b_trickle, r5c_ws_unread, r5c_http_unread, r6_forged_control,
          r7_cross_origin, r8_long_lossless, r9a_obs_fold, r9b_ws_header, r9c_upgrade_pipe,
          r10_tokens]


# ---- the loop --------------------------------------------------------------------------------

def responsive(port, timeout=3.0):
    """True if /healthz answers 200 within `timeout`."""
    try:
        return http(port, "GET", "/healthz", timeout=timeout).status == 200
    except CONN_ERRORS:
        return False


def settle_sample(inc, wait_s=3.0):
    """A gauge-vs-kernel sample once connections are quiet; a difference must go within
    wait_s. Returns the mismatch (gauge, kernel) that persisted, or None."""
    deadline = time.monotonic() + wait_s
    while True:
        before = len(inc.sampler.mismatches)
        inc.sampler.sample()
        if len(inc.sampler.mismatches) == before:
            return None
        if time.monotonic() >= deadline:
            _, g, k = inc.sampler.mismatches[-1]
            return (g, k)
        # A close sluice has not seen yet is not a mismatch: forget it and look again.
        inc.sampler.mismatches.pop()
        inc.sampler.mismatch_rows.pop()
        inc.sampler.compared -= 1
        time.sleep(0.25)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="40 s instead of 300 s")
    ap.add_argument("--only", default="", help="comma-separated reproduction name prefixes")
    ap.add_argument("--seconds", type=float, help="run the loop this long instead")
    a = ap.parse_args()
    duration = a.seconds or (40 if a.short else 300)
    repros = [f for f in REPROS if not a.only or
              any(f.__name__.startswith(p) for p in a.only.split(","))]
    out = out_dir("hostile")
    binary = SLUICE_BIN
    raise_nofile()
    print(f"# hostile: {len(repros)} reproductions round-robin for {duration} s beside normal "
          f"traffic on {', '.join(NORMAL_TOPICS)}; server {binary}; out {out}", flush=True)

    counts = {f.__name__: {SAFE: 0, UNEXPECTED: 0, CONN_ERROR: 0} for f in repros}
    details = {f.__name__: [] for f in repros}
    crashes = []          # (repro, detail)
    reports = []          # (repro, first sanitizer line)
    gauge_bad = []        # (repro, gauge, kernel)
    normal_problems = []
    incarnations = 0
    t_start = time.monotonic()
    inc = Incarnation(binary, incarnations)
    incarnations += 1
    print(f"# incarnation 0: port {inc.port}, full topics filled after "
          f"{list(inc.full_filled.values())} publishes, "
          f"accounted baseline {inc.baseline / MiB:.2f} MiB", flush=True)
    rounds = 0
    compared = 0  # gauge-vs-kernel comparisons made by replaced incarnations
    stop_at = t_start + duration
    while rounds == 0 or time.monotonic() < stop_at:
        rounds += 1
        for f in repros:
            if rounds > 1 and time.monotonic() >= stop_at:
                break  # the first round always runs whole
            name = f.__name__
            t0 = time.monotonic()
            try:
                outcome, detail = f(inc)
            except CONN_ERRORS as e:
                outcome, detail = CONN_ERROR, f"{type(e).__name__}:{str(e)[:80]}"
            counts[name][outcome] += 1
            if outcome != SAFE and len(details[name]) < 3:
                details[name].append(detail)
            time.sleep(0.2)
            new = sanitizer_lines(inc.log.new())
            if new:
                reports.append((name, new[0]))
            if new and inc.alive():  # a sanitizer report being written: let it finish
                try:
                    inc.srv.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                new += sanitizer_lines(inc.log.new())
            alive = inc.alive()
            hung = alive and not responsive(inc.port)
            print(f"# round {rounds} {name}: {outcome} {detail} ({time.monotonic() - t0:.1f} s)"
                  + ("" if alive else " -- SERVER DIED") + (" -- SERVER HUNG" if hung else "")
                  + (f" -- {new[0]}" if new else ""), flush=True)
            if hung:  # alive but /healthz unanswered: charged as a crash, then replaced
                inc.srv.proc.kill()
            if not alive or hung:
                compared += inc.sampler.compared
                code = inc.srv.proc.wait()
                crashes.append((name, "hung(/healthz unanswered in 3 s)" if hung
                                else f"exit={code}"))
                inc.normal._halt.set()
                inc.normal._pub_halt.set()
                keep = out / f"sluice-{inc.n}-crash-{name}.log"
                inc.srv.stop()
                shutil.copy(inc.srv.dir / "sluice.log", keep)
                inc.srv.cleanup()
                inc = Incarnation(binary, incarnations)
                incarnations += 1
                print(f"# incarnation {inc.n}: port {inc.port} (after a crash in {name}; log "
                      f"{keep})", flush=True)
                continue
            mm = settle_sample(inc)
            if mm:
                gauge_bad.append((name, *mm))

    # The hostile clients are gone: the budget must come back, the gauge must match.
    final_acc = None
    deadline = time.monotonic() + 5.0
    while inc.alive():
        try:
            final_acc = accounted(inc.port)
        except CONN_ERRORS:
            final_acc = None
            break
        if final_acc <= inc.baseline + MiB or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    mm = settle_sample(inc) if inc.alive() else None
    if mm:
        gauge_bad.append(("end", *mm))
    inc.normal.stop()
    normal_problems = inc.normal.check() if inc.alive() else ["server_dead_at_end"]
    pid = inc.srv.proc.pid
    cpu0 = cpu_seconds(pid)
    time.sleep(1.0)
    idle_cpu = cpu_seconds(pid) - cpu0
    alive_end = inc.alive()
    code = inc.srv.stop(timeout=20)
    new = sanitizer_lines(inc.log.new())
    if new:
        reports.append(("exit", new[0]))
    shutil.copy(inc.srv.dir / "sluice.log", out / f"sluice-{inc.n}.log")
    inc.sampler.write_csv(out / "hostile-samples.csv")
    inc.srv.cleanup()

    failed_repros = sorted({n for n, c in counts.items() if c[UNEXPECTED] or c[CONN_ERROR]} |
                           {n for n, _ in crashes} | {n for n, _ in reports})
    budget_ok = final_acc is not None and final_acc <= inc.baseline + MiB
    checks = {
        "no_crash": not crashes and alive_end and code == 0,
        "no_sanitizer_report": not reports,
        "every_reproduction_ran": all(sum(c.values()) for c in counts.values()),
        "every_reproduction_safe": not failed_repros,
        "normal_readers_untouched": not normal_problems,
        "budget_back_to_baseline": budget_ok,
        "gauge_equals_kernel": not gauge_bad,
        "server_idle_at_end": idle_cpu < 0.5,
    }
    with open(out / "hostile-outcomes.txt", "w") as fo:
        for n, c in counts.items():
            fo.write(f"{n} safe={c[SAFE]} unexpected={c[UNEXPECTED]} "
                     f"conn_error={c[CONN_ERROR]} {' | '.join(details[n])}\n")
        for n, d in crashes:
            fo.write(f"crash in {n}: {d}\n")
        for n, d in reports:
            fo.write(f"sanitizer report after {n}: {d}\n")
    print("# per reproduction: runs safe / unexpected / connection error, crashes (or hangs) "
          "right after it, sanitizer reports; first non-safe details")
    for n, c in counts.items():
        nc = sum(1 for x, _ in crashes if x == n)
        nr = sum(1 for x, _ in reports if x == n)
        print(f"#   {n:18s} {c[SAFE]:3d} / {c[UNEXPECTED]:3d} / {c[CONN_ERROR]:3d}  "
              f"crash {nc}  asan/ubsan {nr}  {' | '.join(details[n])[:200]}")
    for n, d in crashes:
        print(f"#   crash in {n}: {d}")
    for n, d in reports:
        print(f"#   sanitizer report after {n}: {d[:200]}")
    if normal_problems:
        print(f"#   normal traffic (last incarnation): {' '.join(normal_problems)}")
    failed = [k for k, v in checks.items() if not v]
    figures = dict(
        rounds=rounds, seconds=round(time.monotonic() - t_start),
        incarnations=incarnations, crashes=len(crashes),
        crashed_in=",".join(sorted({n for n, _ in crashes})) or "none",
        sanitizer_reports=len(reports),
        reported_in=",".join(sorted({n for n, _ in reports})) or "none",
        failed_repros=",".join(failed_repros) or "none",
        normal=",".join(normal_problems) or "ok",
        accounted_baseline_mib=round(inc.baseline / MiB, 2),
        accounted_end_mib=round(final_acc / MiB, 2) if final_acc is not None else "n/a",
        gauge_mismatches=len(gauge_bad), gauge_compared=compared + inc.sampler.compared,
        exit=code)
    if failed:
        figures["failed"] = ",".join(failed)
    figures["out"] = out
    ok = not failed
    verdict("hostile", ok, **figures)
    return 0 if ok else 1


def _cleanup():
    """Kills (SIGKILL: a server that hangs ignores SIGTERM) and removes what a failed run left."""
    for srv in STARTED:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
        srv.cleanup()
    shutil.rmtree(AUTH_DIR, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run.sh's timeout: clean up too
    try:
        sys.exit(main())
    finally:
        _cleanup()
