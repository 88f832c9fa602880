"""WebSocket readers and publishers under pressure (docs/protocol.md "WebSocket": the same
overflow policies and memory budget as SSE; "Publishing": a publisher that does not read its
acks stops being read). A stalled WebSocket reader beside a fast one, under `skip` and
`disconnect`; a publisher flooding 64 KiB messages without reading its acks."""

import json
import os
import select
import time

from conftest import SLUICE_BIN
from sluice_client import Closed, Publisher, parse_id, wait_until
from ws_client import (CONTROL_PREFIX, OP_BINARY, OP_CLOSE, OP_TEXT, WSCollector, WSConn,
                       close_payload, encode_frame)

COUNT = 3000        # messages
SIZE = 1024         # bytes each: 3 MB, far beyond what a stalled socket pair absorbs
BATCH = 25          # messages per NDJSON publish
RING = 100          # max_messages of the topic
STALL_RCVBUF = 1024


def payload(i):
    return f"{i:05d}:" + "x" * (SIZE - 6)


def ws_open(srv, path, **kw):
    c = WSConn(srv.port, path, **kw)
    assert c.status == 101 and c.ok, f"handshake for {path}: {c.response}"
    return c


def seq_of(msg):
    """The seq a json-format message completes: a message's own, or a gap's `to`."""
    d = msg.json()
    if msg.payload.startswith(CONTROL_PREFIX):
        return parse_id(d["to"])[1] if d.get("sluice") == "gap" else None
    return parse_id(d["id"])[1]


def start_fast(srv, path):
    fast = ws_open(srv, path)
    col = WSCollector(fast, lambda m: seq_of(m) == COUNT, timeout=60)
    col.start()
    return fast, col


def publish_paced(srv, topic, col):
    """COUNT messages in NDJSON batches, waiting before each batch until the fast reader is
    within one batch of the head: a fast reader is one that keeps up, whatever this machine."""
    pub = Publisher(srv.port, timeout=20)
    ids = []
    for start in range(0, COUNT, BATCH):
        wait_until(lambda: col.count >= len(ids) - BATCH or not col.is_alive(), 15,
                   msg=f"fast reader within {BATCH} messages of {len(ids)}")
        body = "".join(payload(i) + "\n" for i in range(start, start + BATCH))
        r = pub.post(f"/topics/{topic}", body, {"Content-Type": "application/x-ndjson"})
        assert r.status == 202, r
        ids += r.json()["ids"]
    pub.close()
    return ids


def assert_fast_complete(col, ids):
    col.join(60)
    assert col.done, f"fast reader did not finish: error={col.error} closed={col.closed} " \
                     f"close={col.close_frame} got={col.count}"
    ctl = [m for m in col.msgs if m.payload.startswith(CONTROL_PREFIX)]
    assert not ctl, f"the fast reader got control messages: {ctl[:3]}"
    envs = [m.json() for m in col.msgs]
    assert [e["id"] for e in envs] == ids, "the fast reader lost or reordered messages"
    assert all(e["data"] == payload(i) for i, e in enumerate(envs))


def read_until_last(c, timeout=30):
    """Reads json-format messages until the one that completes seq COUNT."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        m = c.read_message(max(0.01, deadline - time.monotonic()))
        out.append(m)
        if seq_of(m) == COUNT:
            return out


def test_stalled_ws_reader_skip_gets_gap_fast_reader_loses_nothing(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "60s"},
                         topics={"*": {"max_messages": RING, "overflow": "skip"}})
    fast, col = start_fast(srv, "/topics/wsk?format=json")
    stalled = ws_open(srv, "/topics/wsk?format=json", rcvbuf=STALL_RCVBUF)  # never reads
    m = srv.wait_metric('sluice_subscribers{transport="ws"}', lambda v: v == 2, timeout=3)
    before = m

    ids = publish_paced(srv, "wsk", col)
    assert_fast_complete(col, ids)

    # while stalled, the server holds at most the ring and what is in flight for it
    m = srv.metrics()
    assert m.v("sluice_memory_accounted_bytes") < 4 * 1024 * 1024, \
        f"a stalled reader made the server hold {m.v('sluice_memory_accounted_bytes')} bytes"

    # the stalled reader reads now: messages and gap markers cover 1..COUNT exactly once
    msgs = read_until_last(stalled)
    expected, delivered, gaps = 1, 0, []
    for m in msgs:
        assert m.opcode == OP_TEXT
        d = m.json()
        if m.payload.startswith(CONTROL_PREFIX):
            assert list(d)[0] == "sluice" and d["sluice"] == "gap", f"unexpected control {d}"
            assert d["topic"] == "wsk"
            s_from, s_to = parse_id(d["from"])[1], parse_id(d["to"])[1]
            assert s_from == expected, f"gap starts at {s_from}, expected {expected}: {d}"
            assert s_to >= s_from and d["missed"] == s_to - s_from + 1, d
            assert d["reason"] == "evicted", d
            gaps.append(d)
            expected = s_to + 1
            continue
        seq = parse_id(d["id"])[1]
        assert seq == expected, f"got seq {seq}, expected {expected}"
        assert d["data"] == payload(seq - 1)
        expected += 1
        delivered += 1
    assert gaps, "the stalled reader fell behind the ring but got no gap marker"
    assert delivered < COUNT
    assert not msgs[-1].payload.startswith(CONTROL_PREFIX) or seq_of(msgs[-1]) == COUNT
    assert stalled.no_message_within(0.3), f"extra message {stalled.unexpected}"

    after = srv.metrics()
    assert after.v('sluice_gaps_total{reason="evicted"}') - \
        before.v('sluice_gaps_total{reason="evicted"}') >= len(gaps)
    assert after.v("sluice_gap_messages_total") - before.v("sluice_gap_messages_total") == \
        sum(g["missed"] for g in gaps)
    assert after.v('sluice_subscribers{transport="ws"}') == 2, "skip keeps both connected"
    fast.close()
    stalled.close()


def test_stalled_ws_reader_disconnect_gets_overflow_then_4001(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "60s", "ws_close_timeout": "20s"},
                         topics={"*": {"max_messages": RING, "overflow": "disconnect"}})
    fast, col = start_fast(srv, "/topics/wdc?format=json")
    stalled = ws_open(srv, "/topics/wdc?format=json", rcvbuf=STALL_RCVBUF)
    before = srv.wait_metric('sluice_subscribers{transport="ws"}', lambda v: v == 2, timeout=3)
    ids = publish_paced(srv, "wdc", col)
    assert_fast_complete(col, ids)
    key = 'sluice_overflow_disconnects_total{reason="evicted"}'
    srv.wait_metric(key, lambda v: v >= before.v(key) + 1, timeout=10)

    code, reason, msgs = stalled.expect_close(timeout=20)
    assert msgs, "the stalled reader got nothing at all"
    last = msgs[-1]
    assert last.opcode == OP_TEXT and last.payload.startswith(b'{"sluice":"overflow"'), \
        f"the last message before the close must be the overflow message: {last}"
    body = last.json()
    assert body["topic"] == "wdc" and body["reason"] == "evicted", body
    assert isinstance(body["missed"], int) and body["missed"] >= 1, body
    assert code == 4001, f"close code {code} {reason!r} after overflow"
    assert reason.decode() == "overflow: evicted", reason
    envs = [m.json() for m in msgs[:-1]]
    assert all("sluice" not in e for e in envs), "no gap markers under policy disconnect"
    assert [e["id"] for e in envs] == ids[:len(envs)], "messages before the overflow in order"
    assert len(envs) < COUNT
    stalled.try_send(encode_frame(OP_CLOSE, close_payload(4001)))
    assert stalled.closed_within(3)
    stalled.close()

    m = srv.wait_metric('sluice_subscribers{transport="ws"}', lambda v: v == 1, timeout=5)
    assert m.v(key) - before.v(key) == 1, "only the stalled reader overflowed"
    assert m.v('sluice_connections_closed_total{reason="overflow"}') - \
        before.v('sluice_connections_closed_total{reason="overflow"}') == 1
    srv.publish("wdc", "fast reader still subscribed")
    assert json.loads(fast.read_message().payload)["data"] == "fast reader still subscribed"
    fast.close()
    stalled.close()


def _is_asan(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


FLOOD_MSG = 64 * 1024
LIMIT = 32 * 1024 * 1024


def test_flooding_publisher_is_held_to_bounded_memory(sluice_factory, monkeypatch):
    asan = _is_asan(SLUICE_BIN)
    if asan:  # keep freed blocks out of RSS, or ASan's quarantine (256 MB) is all we measure
        monkeypatch.setenv("ASAN_OPTIONS",
                           os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=4")
    # A long topic name (max_topic_name is at most 1024) makes every ack ~1 KB, so the 64 KiB of unsent acks after which the
    # publisher is no longer read are reached after fewer messages.
    srv = sluice_factory(server={"memory_limit": "32MiB", "ws_ping_interval": "0"},
                         limits={"max_topic_name": 1024})
    topic = "flood/" + "t" * 1000
    base_rss = srv.rss_bytes()
    base = srv.metrics()
    c = ws_open(srv, f"/topics/{topic}?mode=pub&ack=1", rcvbuf=4096, sndbuf=64 * 1024)
    sock = c.sock
    sock.setblocking(False)
    frame = encode_frame(OP_BINARY, b"\xff" + b"f" * (FLOOD_MSG - 1), mask_key=b"\x11\x22\x33\x44")
    view = memoryview(frame)
    t0 = time.monotonic()
    last_progress = t0
    off = 0
    frames_done = 0
    rss_max = 0
    next_rss = t0
    while True:
        now = time.monotonic()
        if now - t0 >= 5.0 and now - last_progress >= 1.5:
            break  # flooded for 5 s and the server has not taken a byte for 1.5 s
        if now - t0 > 20:
            break
        try:
            n = sock.send(view[off:])
            off += n
            if off == len(frame):
                off = 0
                frames_done += 1
            last_progress = now
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
        if now >= next_rss:
            rss_max = max(rss_max, srv.rss_bytes())
            next_rss = now + 0.1
    stalled_for = time.monotonic() - last_progress
    print(f"flood: {frames_done} messages in {last_progress - t0:.2f}s, then blocked for "
          f"{stalled_for:.2f}s; RSS max {rss_max >> 20} MiB (start {base_rss >> 20} MiB)")
    assert stalled_for >= 1.5, \
        f"after {time.monotonic() - t0:.1f}s the server still reads a publisher that never " \
        f"reads its acks ({frames_done} messages sent)"
    assert frames_done > 0, "the server did not read the publisher at all"

    # stopped: nothing more is published while the client's data waits in the socket
    m1 = srv.metrics()
    time.sleep(1.0)
    m2 = srv.metrics()
    assert m2.v("sluice_messages_published_total") == m1.v("sluice_messages_published_total"), \
        "the server kept publishing from a connection it should have stopped reading"
    published = m2.v("sluice_messages_published_total") - \
        base.v("sluice_messages_published_total")
    assert published >= 1
    assert m2.v("sluice_memory_accounted_bytes") <= LIMIT

    # the rest of the server is unaffected
    worst = 0.0
    for _ in range(5):
        t = time.monotonic()
        r = srv.get("/healthz", timeout=2)
        worst = max(worst, time.monotonic() - t)
        assert r.status == 200
    assert worst < 1.0, f"/healthz took {worst:.2f}s while a publisher floods"

    rss_max = max(rss_max, srv.rss_bytes())
    bound = LIMIT + 32 * 1024 * 1024
    if asan:
        assert rss_max - base_rss < bound, \
            f"RSS grew by {(rss_max - base_rss) >> 20} MiB (ASan build; limit 32 MiB)"
    else:
        assert rss_max < bound, f"RSS reached {rss_max >> 20} MiB with memory_limit 32 MiB"

    # now read the acks: the server reads the publisher again, every message is acknowledged
    # once, in order, and the close is answered after them
    pending = bytes(view[off:]) if off else b""
    if off:
        frames_done += 1
    pending += encode_frame(OP_CLOSE, close_payload(1000))
    acks, errors, close = [], [], None
    deadline = time.monotonic() + 30
    while close is None:
        assert time.monotonic() < deadline, \
            f"draining: {len(acks)} acks, {len(errors)} errors of {frames_done}"
        if pending:
            try:
                n = sock.send(pending)
                pending = pending[n:]
            except BlockingIOError:
                pass
        r, _, _ = select.select([sock], [sock] if pending else [], [], 0.1)
        if sock not in r:
            continue
        data = sock.recv(1 << 18)
        if not data:
            raise Closed("connection ended before the close answer")
        c.buf += data
        while close is None:
            f = c.parse_buffered_frame()
            if f is None:
                break
            if f.opcode == OP_CLOSE:
                close = f
                break
            assert f.opcode == OP_TEXT and f.payload.startswith(CONTROL_PREFIX), f
            d = json.loads(f.payload)
            if d["sluice"] == "ack":
                acks.append(d)
            else:
                assert d["sluice"] == "error" and d["error"] == "over_capacity", d
                errors.append(d)
    print(f"flood: drained {len(acks)} acks, {len(errors)} errors")
    assert close.close_code == 1000
    assert len(acks) + len(errors) == frames_done, \
        f"{frames_done} messages sent, {len(acks)} acks and {len(errors)} errors"
    seqs = [parse_id(a["id"])[1] for a in acks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "acks in order, none twice"
    assert all(a["topic"] == topic for a in acks)
    c.close()
