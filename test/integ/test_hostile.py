"""Hostile clients (each test reproduces one defect a review found by acting as a hostile client,
and failed before its fix): a parked publisher read again (HTTP pipelining, WebSocket pings), a
held WebSocket publish to a long topic name, markers of a multi-topic stream overrunning its
write, and the memory budget turned against other topics (a batch that cannot fit, a
Content-Length that reserves memory, trickled bodies, replies piling up for a peer that does not
read them).
"""

import json
import re
import time

from lossless_util import (MiB, ack_ok, cursors, error_of, payload, start)
from sluice_client import RawConn, wait_until
from ws_client import OP_PING, WSConn

LOSSLESS = {"durability": "lossless"}
Q_MSG = 64 * 1024
# llq-*: lossless with a small quota, so a durable reader that does not acknowledge fills it
Q_TOPICS = [("llq-*", dict(LOSSLESS, disk_quota="4MiB", segment_bytes="1MiB"))]


def fill_topic(srv, t):
    """Pins t with a durable reader `c` that never acknowledges, then publishes 64 KiB messages
    until 429; returns the ids accepted."""
    sub = srv.sse(f"/topics/{t}?durable=c")
    assert sub.status == 200, sub.response
    sub.close()
    wait_until(lambda: cursors(srv, t).get("c", {}).get("connected") == 0, 5,
               msg="cursor c disconnected")
    ids = []
    for i in range(200):
        r = srv.post(f"/topics/{t}", payload(i, Q_MSG))
        if r.status == 429:
            assert error_of(r) == "topic_full", r
            return ids
        assert r.status == 202, r
        ids.append(r.json()["id"])
    raise AssertionError("the topic never filled")


def accounted(srv):
    return srv.metrics().v("sluice_memory_accounted_bytes")


# -- 1. a parked publisher is never read again ------------------------------------------------

def test_parked_http_publish_is_not_read_until_it_resumes(sluice_factory):
    """Pipelined GET /healthz then a POST ?wait= to a full lossless topic, then 2 more bytes:
    the answered GET must not turn reading back on under the parked POST (it crashed with a
    negative stash length). The bytes that followed are handled once the POST resumes."""
    srv = start(sluice_factory, topics=Q_TOPICS)
    t = "llq-parked"
    ids = fill_topic(srv, t)
    c = RawConn(srv.port)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /topics/" + t.encode() + b"?wait=20s HTTP/1.1\r\nHost: x\r\n"
           b"Content-Length: 5\r\n\r\nhello")
    r = c.read_response()
    assert r.status == 200 and r.body == b"ok\n", r
    # The POST is parked; the healthz answer has been written. More input arrives.
    c.send(b"GE")
    time.sleep(0.3)
    assert srv.alive(), srv.logs()[-2000:]
    assert srv.get("/healthz").status == 200
    c.send(b"T /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    assert srv.alive(), srv.logs()[-2000:]
    # Room frees: the parked publish completes, then the pipelined GET is answered.
    ack_ok(srv, t, "c", ids[-1])
    r = c.read_response(timeout=10)
    assert r.status == 202, r
    epoch, seq = ids[-1].split("-")
    assert r.json()["id"] == f"{epoch}-{int(seq) + 1}", r.body
    r = c.read_response(timeout=5)
    assert r.status == 200 and r.body == b"ok\n", r
    c.close()
    assert srv.topics()[t]["head"] == f"{epoch}-{int(seq) + 1}"


def test_parked_ws_publisher_is_not_read_after_a_ping(sluice_factory):
    """A WebSocket publisher held on a full topic is sent a ping; the ping's write completing
    must not turn reading back on: a second message sent meanwhile used to be published under
    the first (leaking it, the waiter inserted twice, the loop spinning). Both must be published
    once, in order, when room frees."""
    srv = start(sluice_factory, topics=Q_TOPICS, server={"ws_ping_interval": "1s"})
    t = "llq-wsparked"
    ids = fill_topic(srv, t)
    ws = WSConn(srv.port, f"/topics/{t}?mode=pub&ack=1")
    assert ws.ok, ws.response
    ws.send_text("first")
    # Wait for a ping (answered), then send the second message.
    deadline = time.monotonic() + 10
    while True:
        f = ws.read_frame(max(0.01, deadline - time.monotonic()))
        if f.opcode == OP_PING:
            break
    ws.send_pong(f.payload)
    ws.send_text("second")
    time.sleep(0.5)
    assert srv.alive()
    assert ws.no_message_within(0.5), f"answered while the topic is full: {ws.unexpected}"
    assert srv.topics()[t]["head"] == ids[-1], "published into a full topic"
    ack_ok(srv, t, "c", ids[-1])
    acks = [ws.read_json(timeout=10) for _ in range(2)]
    epoch, seq = ids[-1].split("-")
    assert [a["id"] for a in acks] == [f"{epoch}-{int(seq) + 1}", f"{epoch}-{int(seq) + 2}"], acks
    assert ws.no_message_within(0.5), f"an extra answer: {ws.unexpected}"
    ws.close()
    sub = srv.sse(f"/topics/{t}?since={ids[-1]}")
    got = sub.read_events(2, timeout=5)
    assert [e["data"] for e in got] == ["first", "second"], got
    assert sub.no_event_within(0.3), "a message was published twice"
    sub.close()
    # The server is idle again, not spinning in the waiter's wake-up.
    cpu0 = proc_cpu_s(srv.pid)
    time.sleep(1.0)
    assert proc_cpu_s(srv.pid) - cpu0 < 0.5, "the server keeps a core busy while idle"


def proc_cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


# -- 2. a held WebSocket publish keeps a topic name of any accepted length --------------------

def test_ws_held_publish_to_a_long_topic_name(sluice_factory):
    """held_topic[257] received names up to max_topic_name (up to 1024): a heap overflow. The
    held publish must go to exactly the topic it was sent to."""
    srv = start(sluice_factory, topics=Q_TOPICS, limits={"max_topic_name": 1024})
    t = "llq-" + "n" * 700
    ids = fill_topic(srv, t)
    ws = WSConn(srv.port, f"/topics/{t}?mode=pub&ack=1&format=json")
    assert ws.ok, ws.response
    ws.send_text(json.dumps({"event": "long", "data": "held"}))
    assert ws.no_message_within(0.5), f"answered while the topic is full: {ws.unexpected}"
    ack_ok(srv, t, "c", ids[-1])
    a = ws.read_json(timeout=10)
    assert a.get("sluice") == "ack" and a.get("topic") == t, a
    ws.close()
    sub = srv.sse(f"/topics/{t}?since={ids[-1]}")
    e = sub.read_event(timeout=5)
    assert (e["event"], e["data"], e["id"]) == ("long", "held", a["id"]), e
    sub.close()


# -- 3. markers of a multi-topic stream fit its write -----------------------------------------

def test_multi_topic_resets_with_many_messages_owed_are_well_formed(sluice):
    """Three topics needing reset markers in one write while the first owes 600 messages: the
    markers of the 2nd and 3rd topics were not counted, and an iov overwrote the first marker
    with a heap address and a length. Check the bytes on the wire."""
    for i in range(600):
        sluice.publish("mt-a", f"a{i}")
    sluice.publish("mt-b", "b0")
    sluice.publish("mt-c", "c0")
    c = RawConn(sluice.port)
    c.request("GET", "/sse?topic=mt-a&topic=mt-b&topic=mt-c&since=0000000000000001-5:mt-a",
              {"Accept": "text/event-stream"})
    r = c.read_response(head_only=True)
    assert r.status == 200, r
    raw = b""
    deadline = time.monotonic() + 10
    while True:
        raw, c.buf = raw + c.buf, b""
        if raw.count(b"\n\n") >= 1 + 3 + 602:
            break
        try:
            c._fill(deadline)
        except TimeoutError:
            break
    c.close()
    blocks = [b for b in raw.split(b"\n\n") if b.strip()]
    resets = []
    datas = []
    for b in blocks:
        lines = b.split(b"\n")
        for ln in lines:
            assert re.match(rb"^(id|event|data|retry): |^:", ln), f"garbage on the wire: {ln[:80]!r}"
        ev = [ln[7:] for ln in lines if ln.startswith(b"event: ")]
        data = b"\n".join(ln[6:] for ln in lines if ln.startswith(b"data: "))
        if ev == [b"sluice.reset"]:
            resets.append(json.loads(data)["topic"])
        elif not ev and data:
            datas.append(data.decode())
    assert sorted(resets) == ["mt-a", "mt-b", "mt-c"], (resets, blocks[:4])
    assert datas[:600] == [f"a{i}" for i in range(600)] or sorted(datas) == sorted(
        [f"a{i}" for i in range(600)] + ["b0", "c0"]), datas[:5]
    assert len(datas) == 602, len(datas)


# -- 4. the budget cannot be turned against other topics -------------------------------------

def keep_topic(srv, n=100):
    for i in range(n):
        srv.publish("keep", payload(i, 1024))
    assert srv.topics()["keep"]["messages"] == n


def test_batch_that_cannot_fit_evicts_nothing(sluice_factory):
    """A 1 MiB NDJSON body of `1\\n` lines on a 16 MiB budget: 503, and every other topic keeps
    its messages (it used to evict everything first and refuse after)."""
    srv = sluice_factory(server={"memory_limit": "16MiB"},
                         limits={"max_batch_messages": 1000000})
    keep_topic(srv)
    r = srv.post("/topics/flood", b"1\n" * (512 * 1024),
                 headers={"Content-Type": "application/x-ndjson"}, timeout=20)
    assert r.status == 503 and error_of(r) == "over_capacity", r
    assert srv.topics()["keep"]["messages"] == 100, "a refused publish evicted other topics"
    m = srv.metrics()
    assert m.v('sluice_evictions_total{reason="budget"}') == 0


def test_batch_over_max_batch_messages_is_refused(sluice_factory):
    srv = sluice_factory(limits={"max_batch_messages": 100})
    keep_topic(srv, 10)
    r = srv.post("/topics/b", "\n".join(str(i) for i in range(101)),
                 headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 413 and error_of(r) == "too_many_messages", r
    r = srv.post("/topics/b", "\n".join(str(i) for i in range(100)),
                 headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 202 and len(r.json()["ids"]) == 100, r


def test_content_length_reserves_nothing_ahead_of_the_bytes(sluice_factory):
    """Content-Length: 8 MiB with one body byte used to reserve 8 MiB at once."""
    srv = sluice_factory(server={"memory_limit": "256MiB"})
    base = accounted(srv)
    conns = []
    for _ in range(8):
        c = RawConn(srv.port)
        c.send(b"POST /topics/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
               b"Content-Length: 8388608\r\n\r\nx")
        conns.append(c)
    time.sleep(0.3)
    grown = accounted(srv) - base
    assert grown < 1 * MiB, f"8 one-byte bodies hold {grown / MiB:.1f} MiB"
    for c in conns:
        c.close()


def test_pending_bodies_have_their_own_cap_and_never_evict(sluice_factory):
    """Incomplete bodies are held in a pool of their own: past it a body is refused (503), and
    messages of other topics are never evicted to make room for it."""
    srv = sluice_factory(server={"memory_limit": "16MiB"}, limits={"max_pending_bytes": "1MiB"})
    keep_topic(srv)
    body_len = 700000
    c1 = RawConn(srv.port)
    c1.send(b"POST /topics/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: %d\r\n\r\n" % body_len + b"y" * 600000)
    time.sleep(0.3)
    c2 = RawConn(srv.port)
    c2.send(b"POST /topics/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: %d\r\n\r\n" % body_len + b"z" * 600000)
    r = c2.read_response(timeout=5)
    assert r.status == 503 and error_of(r) == "over_capacity", r
    # Small publishes still go through, and nothing was evicted for the pending bodies.
    srv.publish("other", "fine")
    assert srv.topics()["keep"]["messages"] == 100
    assert srv.metrics().v('sluice_evictions_total{reason="budget"}') == 0
    c1.send(b"y" * (body_len - 600000))
    r = c1.read_response(timeout=5)
    assert r.status == 202, r
    c1.close()
    c2.close()


def test_trickled_body_times_out(sluice_factory):
    """Each trickled byte used to extend the idle deadline, so a body could be held for ever.
    It must be complete within body_timeout."""
    srv = sluice_factory(server={"body_timeout": "2s", "idle_timeout": "60s"})
    c = RawConn(srv.port)
    c.send(b"POST /topics/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 15:
        try:
            c.send(b"a")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if c.wait_closed(0.5):
            closed = True
            break
    assert closed, "a body trickled a byte every 0.5 s was still open after 15 s"
    assert time.monotonic() - t0 >= 1.5
    srv.wait_metric('sluice_connections_closed_total{reason="body_timeout"}', lambda v: v >= 1)


def test_stopped_body_times_out_at_idle_timeout(sluice_factory):
    """A body that stops arriving is closed at idle_timeout, well before body_timeout (the
    limit on a body that keeps trickling)."""
    srv = sluice_factory(server={"body_timeout": "60s", "idle_timeout": "1s"})
    c = RawConn(srv.port)
    c.send(b"POST /topics/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    assert c.wait_closed(15), "a stopped body was still open after 15 s"
    srv.wait_metric('sluice_connections_closed_total{reason="idle_timeout"}', lambda v: v >= 1)


def test_ws_message_that_never_completes_times_out(sluice_factory):
    """A frame header announcing a large payload, then nothing: closed with 1008 after
    body_timeout (it used to hold its parser until the ping timeout, if any)."""
    srv = sluice_factory(server={"body_timeout": "1s", "ws_ping_interval": "0"})
    ws = WSConn(srv.port, "/topics/w?mode=pub")
    assert ws.ok
    ws.send(bytes([0x81, 0x80 | 126, 0x10, 0x00]) + b"\x00\x00\x00\x00" + b"abc")
    code, _reason, _ = ws.expect_close(timeout=10)
    assert code == 1008, code
    srv.wait_metric('sluice_connections_closed_total{reason="body_timeout"}', lambda v: v >= 1)


def test_ws_error_replies_do_not_pile_up(sluice_factory):
    """20,000 frames on a subscribe-only WebSocket that never reads: each earns an error reply;
    input stops within the read once the replies pass a small cap (1.1 MB per 10,000 before)."""
    srv = sluice_factory()
    base = accounted(srv)
    ws = WSConn(srv.port, "/topics/sub-only", rcvbuf=4096)
    assert ws.ok
    frame = bytes([0x81, 0x80]) + b"\x00\x00\x00\x00"
    ws.sock.setblocking(False)
    sent = 0
    data = frame * 20000
    t0 = time.monotonic()
    while sent < len(data) and time.monotonic() - t0 < 5:
        try:
            sent += ws.sock.send(data[sent:])
        except BlockingIOError:
            time.sleep(0.05)
    time.sleep(0.5)
    grown = accounted(srv) - base
    assert grown < 512 * 1024, f"{grown} bytes accounted for unread error replies"
    assert srv.get("/healthz").status == 200
    ws.sock.close()


def test_pipelined_requests_stop_while_replies_are_unread(sluice_factory):
    """Thousands of pipelined requests from a peer that reads nothing: the replies queued for it
    stay under a small cap (the check ran only after a whole read, and at 1 MiB)."""
    srv = sluice_factory()
    base = accounted(srv)
    c = RawConn(srv.port, rcvbuf=4096)
    c.sock.setblocking(False)
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 100000
    sent = 0
    t0 = time.monotonic()
    while sent < len(data) and time.monotonic() - t0 < 5:
        try:
            sent += c.sock.send(data[sent:])
        except BlockingIOError:
            time.sleep(0.05)
    time.sleep(0.5)
    grown = accounted(srv) - base
    assert grown < 512 * 1024, f"{grown} bytes accounted for unread pipelined replies"
    assert srv.get("/healthz").status == 200
    c.sock.close()


# -- 5. blocked connections still see their peer go -------------------------------------------

def test_parked_publishers_that_go_away_are_closed_at_once(sluice_factory):
    """A parked publish stops input handling, not reading: a peer that closes while parked (HTTP
    ?wait=, or a held WebSocket publish, which has no deadline) is seen at once instead of
    staying a CLOSE_WAIT ghost until its wait ends."""
    srv = start(sluice_factory, topics=Q_TOPICS)
    t = "llq-gone"
    fill_topic(srv, t)
    base = srv.metrics().v("sluice_connections")
    c = RawConn(srv.port)
    c.send(b"POST /topics/" + t.encode() + b"?wait=30s HTTP/1.1\r\nHost: x\r\n"
           b"Content-Length: 5\r\n\r\nhello")
    ws = WSConn(srv.port, f"/topics/{t}?mode=pub")
    assert ws.ok
    ws.send_text("held")
    srv.wait_metric("sluice_connections", lambda v: v == base + 2)
    time.sleep(0.3)
    c.close()
    ws.sock.close()
    srv.wait_metric("sluice_connections", lambda v: v == base, timeout=5)


def test_held_ws_publisher_outlives_the_pong_timeout(sluice_factory):
    """While its publish is held its pong cannot be read; it must not be closed for a missing
    pong, and gets a whole pong timeout once it is read again."""
    srv = start(sluice_factory, topics=Q_TOPICS,
                server={"ws_ping_interval": "1s", "ws_pong_timeout": "1s"})
    t = "llq-pong"
    ids = fill_topic(srv, t)
    ws = WSConn(srv.port, f"/topics/{t}?mode=pub&ack=1")
    assert ws.ok
    ws.send_text("held")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4:
        try:
            f = ws.read_frame(0.2)
        except TimeoutError:
            continue
        assert f.opcode == OP_PING, f"unexpected frame while held: {f}"
        ws.send_pong(f.payload)
    ack_ok(srv, t, "c", ids[-1])
    a = ws.read_json(timeout=10)
    assert a.get("sluice") == "ack", a
    assert srv.metrics().v('sluice_connections_closed_total{reason="ping_timeout"}') == 0
    ws.close()
