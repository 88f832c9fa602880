#!/usr/bin/python3
"""Chaos scenario 4: publishers far faster than readers (FAILURES.md #1, #2, #4).

sluice with memory_limit = 64MiB and two topics whose rings could hold 48 MiB each (so together
they exceed the budget: the budget, not the rings, is what binds). Publishers send 1 MB messages
as fast as the server takes them: three HTTP publishers pipelining POSTs (up to 4 in flight
each) and one WebSocket publisher (mode=pub, ack=1, up to 4 frames ahead of its answers).
Readers: on each topic one SSE reader that reads as fast as it can (and a WebSocket one on topic
a), and slow readers (SO_RCVBUF 64 KiB, reading 200 KB/s), SSE and WebSocket. A separate
keep-alive connection GETs /healthz every 200 ms and reads the server's RSS each time.

Three phases:
  1. flood (10 s; full 40 s): only the readers' unfinished writes pin memory (a few MB), so the
     budget is kept by evicting the oldest messages: no publish may be refused;
  2. pin: up to 72 stalled readers (SO_RCVBUF 1 KiB, never read) join in at most 4 s, each once
     its topic has a new message, so each holds a different 1 MB message in its unfinished
     write: more than the budget is pinned, and publishes must be refused (HTTP 503, WebSocket
     error messages) until the write-stall timeout (8 s; full 20 s) closes them;
  3. recovery (from the stall timeout + 2 s, for 5 s; full 20 s): nothing is pinned again:
     publishing is accepted, and no publish may be refused.

Pass:
  * the server is alive throughout and exits 0 on SIGTERM; RSS never above memory_limit +
    32 MiB (read every 200 ms);
  * /healthz answers 200 in under 100 ms at every probe (max and p99 reported; --short, the CI
    profile: p99 under 100 ms and every probe under 1 s);
  * no refusal in phases 1 and 3 (when refused anyway, the verdict reports how many MB the rings
    held just before: what eviction could have freed); refusals over HTTP and over WebSocket in
    phase 2 (the budget was reached); accepted publishes over both in phase 3;
  * every refusal a client saw (503 over_capacity, WebSocket error over_capacity, close 1013)
    is counted in sluice_publish_rejected_total{reason="budget"}, and nothing else is refused;
    a refused WebSocket publish gets an error message and its connection stays open
    (docs/protocol.md), so no close 1013;
  * nothing is silently lost: every reader's messages come in id order, every jump in ids is
    exactly covered by a gap marker, no refused publish is ever delivered, every delivered
    payload carries the id its publisher was given, and the readers that keep up receive
    every accepted id of their topic or a gap marker covering it.

The load generators run with nice 10 and the health probe with SCHED_FIFO: on this 2-core
machine un-niced publishers and readers take the server's CPU, and the probe would measure the
scheduler rather than the server.

  bench/chaos/flood.py [--short]
"""

import argparse
import collections
import json
import multiprocessing as mp
import os
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadkit as lk  # noqa: E402
from proc import Server, rss_bytes  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sampling import Sampler  # noqa: E402

SIZE = 1_000_000
TAG = 24  # bytes of tag at the start of every payload (a multiple of 4, see ws_publisher)
LIMIT_MB = 64
TOPICS = ("flood/a", "flood/b")
HTTP_PUBS = (("H0", "flood/a"), ("H1", "flood/b"), ("H2", "flood/a"))
WS_PUB = ("W0", "flood/b")
DEPTH = 4
STALLED = 72
# The load generators share this 2-core machine with the server; niced, they leave it the CPU a
# server gets when its clients are elsewhere (un-niced, the four publishers and the readers
# starve it and /healthz measures the scheduler).
NICE = 10
OPEN_S = 4.0  # at most this long to open the stalled readers


def tag(name, n):
    t = f"{name}-{n}".encode()
    return t + b"." * (TAG - len(t))


def http_publisher(port, name, topic, stop, conn):
    """Child process: pipelines POSTs (at most DEPTH in flight) until `stop`; reconnects when
    the server closes. Sends [(tag, t, outcome)], outcome: seq (int), "503", "<status>" or
    "unanswered"."""
    rest = b"x" * (SIZE - TAG)
    head = (f"POST /topics/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {SIZE}\r\n\r\n").encode()
    results, inflight = [], collections.deque()
    n = 0
    sock = None
    out = b""
    buf = b""
    sel = selectors.DefaultSelector()
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            out, buf = b"", b""
        if not out and len(inflight) < DEPTH:
            n += 1
            t = tag(name, n)
            out = memoryview(head + t + rest)
            inflight.append(t)
        closed = False
        for key, ev in sel.select(0.05):
            if ev & selectors.EVENT_WRITE and out:
                try:
                    k = sock.send(out)
                    out = out[k:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed = True
            if ev & selectors.EVENT_READ:
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    chunk = None
                except OSError:
                    chunk = b""
                if chunk == b"":
                    closed = True
                elif chunk:
                    buf += chunk
        # Answers, in request order.
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            hd = buf[:i]
            m = [ln for ln in hd.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
            clen = int(m[0].split(b":")[1]) if m else 0
            if len(buf) < i + 4 + clen:
                break
            body = buf[i + 4:i + 4 + clen]
            buf = buf[i + 4 + clen:]
            status = int(hd.split(b" ", 2)[1])
            t = inflight.popleft() if inflight else b"?"
            now = time.monotonic()
            if status == 202:
                results.append((t, now, int(json.loads(body)["id"].rsplit("-", 1)[1])))
            elif status == 503 and b"over_capacity" in body:
                results.append((t, now, "503"))
            else:
                results.append((t, now, str(status)))
        if closed:
            now = time.monotonic()
            while inflight:
                results.append((inflight.popleft(), now, "unanswered"))
            sel.unregister(sock)
            sock.close()
            sock = None
    if sock is not None:
        # Finish the request being sent, collect the answers still owed, then give up on them.
        sock.setblocking(True)
        sock.settimeout(2)
        try:
            if out:
                sock.sendall(out)
                out = b""
            while inflight:
                i = buf.find(b"\r\n\r\n")
                if i >= 0:
                    hd = buf[:i]
                    m = [ln for ln in hd.split(b"\r\n")
                         if ln.lower().startswith(b"content-length:")]
                    clen = int(m[0].split(b":")[1]) if m else 0
                    if len(buf) >= i + 4 + clen:
                        body = buf[i + 4:i + 4 + clen]
                        buf = buf[i + 4 + clen:]
                        status = int(hd.split(b" ", 2)[1])
                        t = inflight.popleft()
                        now = time.monotonic()
                        if status == 202:
                            results.append((t, now, int(json.loads(body)["id"].rsplit("-", 1)[1])))
                        elif status == 503 and b"over_capacity" in body:
                            results.append((t, now, "503"))
                        else:
                            results.append((t, now, str(status)))
                        continue
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        now = time.monotonic()
        while inflight:
            results.append((inflight.popleft(), now, "unanswered"))
        sock.close()
    conn.send(results)


def ws_publisher(port, name, topic, stop, conn):
    """Child process: a WebSocket publisher (mode=pub, ack=1) sending frames as fast as the
    socket takes them; every message is answered by an ack (its id) or an error, in order.
    Reconnects after a close. Sends [(tag, t, outcome)] like http_publisher ("error:<code>",
    "close:<code>" for the message a close refused, "unanswered")."""
    key = os.urandom(4)
    mask = (key * (SIZE // 4 + 1))[:SIZE]
    rest = bytes(a ^ b for a, b in zip(b"x" * 4, key)) * ((SIZE - TAG) // 4)
    hdr = struct.pack("!BBQ", 0x82, 0x80 | 127, SIZE) + key
    results, inflight = [], collections.deque()
    n = 0
    sock = None
    sel = selectors.DefaultSelector()
    out = b""
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(lk.subscribe_request(f"/topics/{topic}?mode=pub&ack=1", True))
                buf = b""
                while b"\r\n\r\n" not in buf:
                    c = sock.recv(4096)
                    if not c:
                        raise ConnectionError("closed in handshake")
                    buf += c
                if b" 101 " not in buf.split(b"\r\n", 1)[0]:
                    raise ConnectionError(buf.split(b"\r\n", 1)[0].decode())
                pending = bytearray(buf.split(b"\r\n\r\n", 1)[1])
            except (OSError, ConnectionError):
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.05)
                continue
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            out = b""
        if not out and len(inflight) < DEPTH:
            n += 1
            t = tag(name, n)
            out = memoryview(hdr + bytes(a ^ b for a, b in zip(t, mask)) + rest)
            inflight.append(t)
        closed = None
        for k, ev in sel.select(0.05):
            if ev & selectors.EVENT_WRITE and out:
                try:
                    out = out[sock.send(out):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed = "reset"
            if ev & selectors.EVENT_READ:
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    chunk = None
                except OSError:
                    chunk = b""
                if chunk == b"":
                    closed = closed or "eof"
                elif chunk:
                    pending += chunk
        # Server frames: text control messages; a close.
        while len(pending) >= 2:
            op, ln, h = pending[0] & 0x0F, pending[1] & 0x7F, 2
            if ln == 126:
                if len(pending) < 4:
                    break
                ln, h = struct.unpack_from("!H", pending, 2)[0], 4
            elif ln == 127:
                if len(pending) < 10:
                    break
                ln, h = struct.unpack_from("!Q", pending, 2)[0], 10
            if len(pending) < h + ln:
                break
            p = bytes(pending[h:h + ln])
            del pending[:h + ln]
            now = time.monotonic()
            if op == 1:
                d = json.loads(p)
                t = inflight.popleft() if inflight else b"?"
                if d.get("sluice") == "ack":
                    results.append((t, now, int(d["id"].rsplit("-", 1)[1])))
                else:
                    results.append((t, now, "error:" + str(d.get("error"))))
            elif op == 8:
                code = struct.unpack_from("!H", p)[0] if len(p) >= 2 else 0
                closed = f"close:{code}"
            elif op == 9:
                try:
                    sock.send(bytes([0x8A, 0x80 | len(p)]) + key +
                              bytes(a ^ key[i % 4] for i, a in enumerate(p)))
                except OSError:
                    pass
        if closed:
            now = time.monotonic()
            # The message the server was reading when it closed is the one it refused.
            first = True
            while inflight:
                t = inflight.popleft()
                results.append((t, now, closed if first and closed.startswith("close:")
                                else "unanswered"))
                first = False
            sel.unregister(sock)
            sock.close()
            sock = None
    if sock is not None:
        # Finish the frame being sent and collect the answers still owed (briefly).
        try:
            sock.setblocking(True)
            sock.settimeout(2)
            if out:
                sock.sendall(out)
            while inflight:
                while len(pending) >= 2:
                    ln, h = pending[1] & 0x7F, 2
                    if ln == 126:
                        ln, h = struct.unpack_from("!H", pending, 2)[0], 4
                    if len(pending) < h + ln:
                        break
                    op, p = pending[0] & 0x0F, bytes(pending[h:h + ln])
                    del pending[:h + ln]
                    if op == 1 and inflight:
                        d = json.loads(p)
                        results.append((inflight.popleft(), time.monotonic(),
                                        int(d["id"].rsplit("-", 1)[1]) if d.get("sluice") == "ack"
                                        else "error:" + str(d.get("error"))))
                if not inflight:
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                pending += chunk
        except (OSError, ValueError):
            pass
        sock.close()
    now = time.monotonic()
    while inflight:
        results.append((inflight.popleft(), now, "unanswered"))
    conn.send(results)


def health_probe(port, pids, stop, conn, every=0.2):
    """Child process: GET /healthz every `every` s on its own keep-alive connection, with the
    server's RSS; sends [(t, rtt_s, status, rss_bytes)]."""
    out = []
    try:
        # The probe measures the server, not this machine's scheduler: it runs ahead of the
        # (niced) load generators.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        pass
    try:
        k = lk.KeepAlive(port)
    except OSError:
        conn.send(out)
        return
    nxt = time.monotonic()
    while not stop.is_set():
        nxt += every
        try:
            st, body, rtt = k.request("GET", "/healthz")
        except (OSError, ConnectionError):
            st, rtt = -1, float("inf")
        out.append((time.monotonic(), rtt, st, rss_bytes(pids)))
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
    out.append(("reconnects", k.reconnects))
    conn.send(out)


def _niced(target, nice, *args):
    if nice:
        os.nice(nice)
    target(*args)


def spawn(target, *args, nice=0):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_niced, args=(target, nice) + args + (child,), daemon=True)
    p.start()
    return p, parent


def check_reader(res, topic, accepted, refused, tags_seq, keeps_up):
    """Checks one reader's record. accepted: {seq: tag} of the topic; refused: set of tags;
    tags_seq: {tag: (topic, seq)}. Returns a dict of counts."""
    c = collections.Counter()
    unknown = []
    last = 0
    after_gap = None  # the `to` of a gap marker just seen
    got = set()
    covered = []
    for ev in res["events"]:
        if ev[0] == "msg":
            _, ev_id, data, n = ev
            t = bytes(data[:TAG])
            if t in refused:
                c["refused_delivered"] += 1
                continue
            if t in tags_seq:
                tp, seq = tags_seq[t]
                if tp != topic:
                    c["wrong_topic"] += 1
                if ev_id is not None and int(ev_id.rsplit("-", 1)[1]) != seq:
                    c["id_mismatch"] += 1
            elif ev_id is not None:
                # Accepted although its publisher never got the answer (the connection closed
                # first): the id is known from the stream.
                seq = int(ev_id.rsplit("-", 1)[1])
                c["unanswered_delivered"] += 1
                unknown.append((t.decode(), seq))
            else:
                # The same on a raw WebSocket stream: its id is unknown, so the next message may
                # be one further along.
                c["unanswered_delivered"] += 1
                unknown.append((t.decode(), None))
                last += 1
                after_gap = None
                continue
            if n != SIZE:
                c["bad_length"] += 1
            if seq <= last:
                c["disorder"] += 1
            elif after_gap is not None:
                if seq != after_gap + 1:
                    c["gap_mismatch"] += 1
            elif last and seq != last + 1:
                c["silent_loss"] += seq - last - 1
            elif not last and seq != 1:
                c["silent_loss"] += seq - 1
            after_gap = None
            last = max(last, seq)
            got.add(seq)
            c["messages"] += 1
        elif ev[0] == "gap":
            d = ev[1]
            try:
                fr = int(str(d["from"]).rsplit("-", 1)[1])
                to = int(str(d["to"]).rsplit("-", 1)[1])
            except (KeyError, ValueError, IndexError):
                c["bad_gap"] += 1
                continue
            if fr != last + 1 or to < fr or d.get("missed") != to - fr + 1:
                c["gap_mismatch"] += 1
            covered.append((fr, to))
            after_gap = to
            last = max(last, to)
            c["gaps"] += 1
            c["gap_messages"] += to - fr + 1
        elif ev[0] in ("overflow", "reset"):
            c[ev[0]] += 1
        elif ev[0] in ("closed", "ws_close"):
            c["closed"] += 1
    if keeps_up:
        def in_gap(s):
            return any(a <= s <= b for a, b in covered)
        c["undelivered"] = sum(1 for s in accepted if s not in got and not in_gap(s))
    c["last"] = last
    return c, unknown


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="about 35 s instead of 2 minutes")
    a = ap.parse_args()
    if a.short:
        p1, stall_s, p3 = 10, 8, 5
    else:
        p1, stall_s, p3 = 40, 20, 20
    p2 = OPEN_S + stall_s + 2
    out = out_dir("flood")
    print(f"# flood: {len(HTTP_PUBS)} HTTP pipelining + 1 WebSocket publisher of {SIZE} B "
          f"messages; phases {p1}/{p2}/{p3} s; out {out}", flush=True)
    cfg = (f"write_stall_timeout = {stall_s}s\nlog_level = error\n"
           "[limits]\nmax_message_bytes = 1MiB\nmax_connections_per_ip = 100000\n"
           '[topic "*"]\nmax_messages = 4096\nmax_bytes = 48MiB\n')
    srv = Server(cfg, memory_limit=f"{LIMIT_MB}MiB")
    mk = lk.KeepAlive(srv.port)
    srv.metrics = mk.metrics
    lk.caching_metrics(srv)

    keep = [{"kind": "sse", "path": f"/topics/{TOPICS[0]}", "name": "keep-sse-a"},
            {"kind": "ws", "path": f"/topics/{TOPICS[0]}", "name": "keep-ws-a"},
            {"kind": "sse", "path": f"/topics/{TOPICS[1]}", "name": "keep-sse-b"}]
    slow = [{"kind": k, "path": f"/topics/{t}", "rcvbuf": 65536, "rate": 200_000,
             "name": f"slow-{k}-{t[-1]}"} for t in TOPICS for k in ("sse", "ws")]
    keep_r = lk.Readers(srv.port, keep, mode="record", drain=8.0, nice=NICE)
    slow_r = lk.Readers(srv.port, slow, mode="record", drain=0.5, nice=NICE)
    ctx = mp.get_context("fork")
    stop_pub, stop_probe = ctx.Event(), ctx.Event()
    probe = spawn(health_probe, srv.port, srv.pids, stop_probe)
    def ring_mb():
        try:
            st, body, _ = mk.request("GET", "/topics")
            return round(sum(t["bytes"] for t in json.loads(body)["topics"]) / lk.MiB, 2)
        except (OSError, ConnectionError, ValueError):
            return -1

    sampler = Sampler(srv, interval=0.5, extra=lambda: {
        "accounted_mb": round(lk.metric(srv.last_metrics, "sluice_memory_accounted_bytes")
                              / lk.MiB, 2),
        "ring_mb": ring_mb(),
        "rejected_total": int(lk.metric(srv.last_metrics, "sluice_publish_rejected_total",
                                        reason="budget"))})
    tk = lk.KeepAlive(srv.port)
    time.sleep(1.0)

    t0 = time.monotonic()
    pubs = [spawn(http_publisher, srv.port, n, t, stop_pub, nice=NICE) for n, t in HTTP_PUBS]
    pubs.append(spawn(ws_publisher, srv.port, WS_PUB[0], WS_PUB[1], stop_pub, nice=NICE))
    time.sleep(p1)
    t_p2 = time.monotonic()
    stalled = lk.StalledReaders(srv.port)

    def head(topic):
        try:
            st, body, _ = tk.request("GET", "/topics")
            for t in json.loads(body)["topics"]:
                if t["name"] == topic and t["head"]:
                    return int(t["head"].rsplit("-", 1)[1])
        except (OSError, ConnectionError, ValueError):
            pass
        return -1

    for i in range(STALLED):
        if time.monotonic() - t_p2 > OPEN_S:
            break
        # Topic a, b, a, b…; SSE for i % 4 in (0, 1), WebSocket for (2, 3). The next one opens
        # once its topic has a new message, so each holds a different one in its stuck write.
        topic = TOPICS[i % 2]
        h0 = head(topic)
        stalled.open(1, f"/topics/{topic}", f"/topics/{topic}", start=(i // 2) % 2)
        deadline = time.monotonic() + 0.3
        while head(topic) == h0 and time.monotonic() < deadline:
            time.sleep(0.01)
    t_last_open = time.monotonic()
    # Phase 3 starts once the write-stall timeout (plus two sweeps and a margin) has closed them.
    t_p3 = t_last_open + stall_s + 2
    time.sleep(max(0.0, t_p3 - time.monotonic()))
    time.sleep(p3)
    tk.close()
    stop_pub.set()
    results = {}
    for (name, _), (p, conn) in zip(list(HTTP_PUBS) + [WS_PUB], pubs):
        results[name] = conn.recv() if conn.poll(30) else []
        p.join(5)
    t_end = time.monotonic()
    time.sleep(0.5)
    keep_res = keep_r.stop()
    slow_res = slow_r.stop()
    stop_probe.set()
    probes = probe[1].recv() if probe[1].poll(10) else []
    probe[0].join(5)
    rows = sampler.stop()
    for r in rows:
        r["phase"] = 1 if r["t"] + sampler._t0 < t_p2 else (2 if r["t"] + sampler._t0 < t_p3
                                                              else 3)
    lk.write_rows(out / "flood.csv", rows, Sampler.FIELDS)
    m = mk.metrics() if srv.alive() else {}
    alive = srv.alive()
    stalled.close_all()
    mk.close()
    code = srv.stop()
    srv.cleanup()

    # ---- what the publishers were told -----------------------------------------------------
    tags_seq, refused, by_topic = {}, set(), {t: {} for t in TOPICS}
    outcome = collections.Counter()
    phase_ref = collections.Counter()
    refusal_times = []
    phase_acc = collections.Counter()
    topic_of = dict(list(HTTP_PUBS) + [WS_PUB])
    for name, res in results.items():
        tp = topic_of[name]
        tr = "ws" if name.startswith("W") else "http"
        for t, when, o in res:
            ph = 1 if when < t_p2 else (2 if when < t_p3 else 3)
            if isinstance(o, int):
                tags_seq[t] = (tp, o)
                by_topic[tp][o] = t
                outcome[tr + "_accepted"] += 1
                phase_acc[(ph, tr)] += 1
            elif o in ("503", "error:over_capacity", "close:1013"):
                refused.add(t)
                outcome[tr + "_refused"] += 1
                outcome[o] += 1
                phase_ref[ph] += 1
                phase_ref[(ph, tr)] += 1
                refusal_times.append((when, ph))
            else:
                outcome[tr + "_" + o.split(":")[0]] += 1
                if o != "unanswered":
                    outcome["other:" + o] += 1
    rej_metric = lk.metric(m, "sluice_publish_rejected_total", reason="budget")
    client_refused = outcome["http_refused"] + outcome["ws_refused"]
    # What the rings held when publishes were refused with nothing pinned (phases 1 and 3): the
    # nearest sample of /topics before each such refusal.
    ring_at = []
    for when, ph in refusal_times:
        if ph == 2:
            continue
        before = [r for r in rows if r["t"] + sampler._t0 <= when and r.get("ring_mb", -1) >= 0]
        if before:
            ring_at.append(before[-1]["ring_mb"])

    # ---- what the readers got ----------------------------------------------------------------
    reader_fig = {}
    unanswered_delivered = {}
    bad_readers = []
    for res_list, keeps_up in ((keep_res, True), (slow_res, False)):
        if isinstance(res_list, dict):
            bad_readers.append("reader_process:" + res_list.get("error", "?"))
            continue
        for r in res_list:
            tp = TOPICS[0] if r["spec"].endswith("-a") else TOPICS[1]
            c, unk = check_reader(r, tp, by_topic[tp], refused, tags_seq, keeps_up)
            reader_fig[r["spec"]] = c
            unanswered_delivered[r["spec"]] = unk
            bad = (c["silent_loss"] or c["disorder"] or c["gap_mismatch"] or
                   c["refused_delivered"] or c["id_mismatch"] or c["wrong_topic"] or
                   c["bad_length"] or c["bad_gap"] or c["overflow"] or c["reset"] or
                   r["status"] not in (200, 101) or c["messages"] == 0 or
                   (keeps_up and (c["undelivered"] or c["closed"])))
            if bad:
                bad_readers.append(r["spec"])

    # ---- health and memory -------------------------------------------------------------------
    reconnects = 0
    if probes and probes[-1][0] == "reconnects":
        reconnects = probes.pop()[1]
    rtts = [p[1] for p in probes]
    bad_probes = sum(1 for p in probes if p[2] != 200)
    h_max = max(rtts) * 1e3 if rtts else float("inf")
    h_p99 = lk.percentile(rtts, 0.99) * 1e3 if rtts else float("inf")
    rss_max = max([p[3] for p in probes] + [r["rss_mb"] * lk.MiB for r in rows]) / lk.MiB
    lk.write_rows(out / "flood-health.csv",
                  [{"t": round(p[0] - sampler._t0, 3), "healthz_ms": round(p[1] * 1e3, 3),
                    "status": p[2], "rss_mb": round(p[3] / lk.MiB, 2)} for p in probes])

    keep_gap_msgs = sum(reader_fig[s["name"]]["gap_messages"] for s in keep
                        if s["name"] in reader_fig)
    figures = dict(
        http_accepted=outcome["http_accepted"], http_refused_503=outcome["http_refused"],
        ws_accepted=outcome["ws_accepted"], ws_refused_error=outcome["error:over_capacity"],
        ws_refused_close_1013=outcome["close:1013"],
        unanswered=outcome["http_unanswered"] + outcome["ws_unanswered"],
        other_answers=sum(v for k, v in outcome.items() if k.startswith("other:")),
        refused_phase1=phase_ref[1], refused_phase2_http=phase_ref[(2, "http")],
        refused_phase2_ws=phase_ref[(2, "ws")], refused_phase3=phase_ref[3],
        ring_mb_at_unpinned_refusals=(f"{min(ring_at)}..{max(ring_at)}" if ring_at else "n/a"),
        accepted_phase3_http=phase_acc[(3, "http")], accepted_phase3_ws=phase_acc[(3, "ws")],
        rejected_metric=int(rej_metric),
        mb_accepted=round((outcome["http_accepted"] + outcome["ws_accepted"]) * SIZE / 1e6),
        rate_mb_s=round((outcome["http_accepted"] + outcome["ws_accepted"]) * SIZE / 1e6 /
                        max(t_end - t0, 1e-9)),
        healthz_probes=len(probes), healthz_bad=bad_probes, healthz_max_ms=round(h_max, 2),
        healthz_p99_ms=round(h_p99, 2), healthz_reconnects=reconnects,
        rss_max_mb=round(rss_max, 1), accounted_max_mb=max(r["accounted_mb"] for r in rows),
        keepup_messages=sum(reader_fig[s["name"]]["messages"] for s in keep
                            if s["name"] in reader_fig),
        keepup_gap_messages=keep_gap_msgs,
        silent_loss=sum(c["silent_loss"] for c in reader_fig.values()),
        refused_delivered=sum(c["refused_delivered"] for c in reader_fig.values()),
        undelivered=sum(c.get("undelivered", 0) for c in reader_fig.values()),
        unanswered_delivered=sum(c["unanswered_delivered"] for c in reader_fig.values()))
    checks = {
        "server_alive_and_clean_exit": alive and code == 0,
        "rss_within_limit_plus_32MiB": rss_max <= LIMIT_MB + 32,
        # The full profile holds every probe to 100 ms. The short (CI) profile holds the p99 to
        # 100 ms and every probe to 1 s: a shared CI machine's scheduling alone can push one
        # probe past 100 ms; both figures are always reported.
        "healthz_always_200_under_100ms": (len(probes) >= (t_end - t0) / 0.2 * 0.8 and
                                           bad_probes == 0 and
                                           (h_max < 100 if not a.short else
                                            (h_p99 < 100 and h_max < 1000))),
        "no_refusal_while_evictable": phase_ref[1] == 0 and phase_ref[3] == 0,
        "budget_reached_and_refused": phase_ref[(2, "http")] > 0 and phase_ref[(2, "ws")] > 0,
        "accepts_again_after": phase_acc[(3, "http")] > 0 and phase_acc[(3, "ws")] > 0,
        "refusals_counted": rej_metric == client_refused,
        "ws_refusals_are_error_messages": outcome["close:1013"] == 0,
        "only_budget_refusals": figures["other_answers"] == 0,
        "nothing_silently_lost": not bad_readers,
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        figures["failed"] = ",".join(failed)
    if bad_readers:
        figures["bad_readers"] = ",".join(bad_readers)
    figures["out"] = out
    (out / "flood-readers.json").write_text(json.dumps(
        {k: dict(v, unanswered_delivered_tags=unanswered_delivered[k])
         for k, v in reader_fig.items()}, indent=1))
    (out / "flood-outcomes.json").write_text(json.dumps(
        {k: [[t.decode(), round(w - t0, 3), o] for t, w, o in v] for k, v in results.items()}))
    csv, hcsv = out / "flood.csv", out / "flood-health.csv"
    lk.plot_curves(out / "flood.png",
                   f"flood: {len(HTTP_PUBS)} HTTP + 1 WebSocket publishers of 1 MB messages "
                   f"as fast as possible, memory_limit {LIMIT_MB} MiB",
                   [(hcsv, "t", "rss_mb", "RSS (MB)"),
                    (csv, "t", "accounted_mb", "sluice_memory_accounted_bytes (MB)"),
                    (hcsv, "t", "healthz_ms", "/healthz round trip (ms)"),
                    (csv, "t", "rejected_total", "publishes refused, total (right)", "y2")],
                   "MB  /  ms",
                   hlines=[(LIMIT_MB, "memory_limit (64 MiB)", "red"),
                           (LIMIT_MB + 32, "memory_limit + 32 MiB", "orange")],
                   y2label="refused publishes",
                   vlines=[(round(t_p2 - sampler._t0, 1), "stalled readers join"),
                           (round(t_p3 - sampler._t0, 1), "stall timeout has closed them")])
    ok = not failed
    verdict("flood", ok, **figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
