"""Lossless topics (docs/protocol.md "Lossless topics"; DESIGN.md §2): a stalled durable reader
under a volume far beyond memory_limit (bounded RSS, then every message exactly once, in order;
acks delete segments), durable resume over SSE and WebSocket, restarts and kill -9 on the same
data_dir (same epoch, nothing acknowledged lost, cursors kept), the disk quota pushing back on
HTTP and WebSocket publishers and resuming them, torn and corrupt segment files, and the cursor
API and its errors.

Volume: SLUICE_LOSSLESS_MB (default 100) MiB in 64 KiB messages for the stalled-reader test;
`SLUICE_LOSSLESS_MB=1024` runs the full 1 GiB.
"""

import json
import os
import re
import signal
import threading
import time

import pytest

from lossless_util import (MiB, RssSampler, ack, ack_ok, cursors, dir_bytes,
                           env_int, error_of, fmt_mib, is_asan, payload, read_until_seq,
                           restart, segment_files, start, stop, topic_dir, wait_checkpoint)
from sluice_client import Publisher, parse_id, wait_until
from ws_client import CONTROL_PREFIX, WSConn

LOSSLESS = {"durability": "lossless"}
# ll-*: lossless; llt-*: lossless with a short cursor_ttl; everything else lossy
TOPICS = [("ll-*", dict(LOSSLESS)), ("llt-*", dict(LOSSLESS, cursor_ttl="2s"))]


@pytest.fixture
def srv(sluice_factory):
    return start(sluice_factory, topics=TOPICS)


def ws_open(srv, path, **kw):
    c = WSConn(srv.port, path, **kw)
    assert c.status == 101 and c.ok, f"handshake for {path}: {c.response}"
    return c


def sse_open(srv, path, **kw):
    sub = srv.sse(path, **kw)
    assert sub.status == 200, f"GET {path}: {sub.response}"
    sub.read_retry()
    return sub


def publish_n(srv, topic, n, prefix="m", start_at=0):
    return [srv.publish(topic, f"{prefix}{i}") for i in range(start_at, start_at + n)]


def wait_connected(srv, topic, name, n, timeout=5.0):
    return wait_until(lambda: cursors(srv, topic).get(name, {}).get("connected") == n, timeout,
                      msg=f"cursor {name} of {topic} with {n} connections")


def ws_ack(msg_id):
    """The acknowledgement a durable WebSocket reader sends, byte for byte as documented."""
    return '{"sluice":"ack","id":"%s"}' % msg_id


def assert_plain(events):
    ctl = [e for e in events if e["event"] and e["event"].startswith("sluice.")]
    assert not ctl, f"unexpected control events: {ctl[:3]}"


def other_epoch(epoch):
    return ("0" if epoch[0] != "0" else "1") + epoch[1:]


# =============================================================================================
# A stalled durable reader under volume: bounded memory, then everything exactly once
# =============================================================================================

VOLUME_MB = env_int("SLUICE_LOSSLESS_MB", 100)
VOL_MSG = 64 * 1024
VOL_BATCH = 16                       # messages per NDJSON publish (1 MiB bodies)
VOL_SEG = 4 * MiB if VOLUME_MB <= 256 else 16 * MiB
MEMORY_LIMIT = 64 * MiB
RSS_SLACK = 32 * MiB


def test_stalled_durable_reader_bounded_memory_then_exactly_once(sluice_factory, monkeypatch):
    asan = is_asan()
    if asan:  # keep freed blocks out of RSS, or ASan's quarantine (256 MB) is all we measure
        monkeypatch.setenv("ASAN_OPTIONS",
                           os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=4")
    total = VOLUME_MB * MiB // VOL_MSG
    total -= total % VOL_BATCH
    srv = start(sluice_factory,
                server={"memory_limit": "64MiB", "write_stall_timeout": "600s",
                        "disk_quota": f"{2 * VOLUME_MB + 512}MiB", "max_publish_wait": "60s"},
                topics=[("ll-*", dict(LOSSLESS, segment_bytes=VOL_SEG,
                                      disk_quota=f"{VOLUME_MB + 256}MiB"))])
    t = "ll-volume"
    # the durable reader subscribes and then reads nothing (a 64 KiB receive buffer)
    sub = sse_open(srv, f"/topics/{t}?durable=slow", rcvbuf=65536)
    c = cursors(srv, t)["slow"]
    assert c["connected"] == 1 and c["checkpoint"] is None, c

    base_rss = srv.rss_bytes()
    sampler = RssSampler(srv.pid, interval=0.02)
    sampler.start()

    pub = Publisher(srv.port, timeout=90)
    ids, refused = [], 0
    t0 = time.monotonic()
    for b in range(0, total, VOL_BATCH):
        body = "".join(payload(i, VOL_MSG) + "\n" for i in range(b, b + VOL_BATCH))
        deadline = time.monotonic() + 60
        while True:
            r = pub.post(f"/topics/{t}?wait=30s", body,
                         {"Content-Type": "application/x-ndjson"})
            if r.status != 429:
                break
            refused += 1  # more than max_bytes waiting for the disk: allowed, retried
            assert time.monotonic() < deadline, f"batch {b}: 429 for 60 s"
            time.sleep(0.05)
        assert r.status == 202, f"batch at {b}: {r}"
        ids += r.json()["ids"]
    pub.close()
    t_pub = time.monotonic() - t0
    rss_pub = sampler.max
    print(f"published {total} x {VOL_MSG} B = {VOLUME_MB} MiB in {t_pub:.1f}s "
          f"({VOLUME_MB / t_pub:.0f} MiB/s), {refused} refused batches; RSS max "
          f"{fmt_mib(rss_pub)} (start {fmt_mib(base_rss)})")

    epoch = parse_id(ids[0])[0]
    assert [parse_id(i) for i in ids] == [(epoch, s) for s in range(1, total + 1)]
    d = topic_dir(srv, t)
    # fsync=interval answers on acceptance; the writer catches up within moments
    try:
        wait_until(lambda: dir_bytes(d) >= total * VOL_MSG, 20)
    except AssertionError:
        raise AssertionError(f"{fmt_mib(dir_bytes(d))} on disk for {VOLUME_MB} MiB that a "
                             f"durable reader has not acknowledged") from None
    on_disk = dir_bytes(d)
    assert "slow" in cursors(srv, t)

    # now the reader reads: every message once, in order, intact; acks at each quarter
    # delete the segments it has passed
    quarter = total // 4
    got = 0
    usage = [on_disk]
    deadline = time.monotonic() + max(60, VOLUME_MB * 0.5)
    t1 = time.monotonic()
    while got < total:
        try:
            e = sub.read_event(max(0.001, deadline - time.monotonic()))
        except (TimeoutError, OSError) as ex:
            raise AssertionError(f"reader stopped after {got} of {total}: {ex!r}") from None
        assert e["event"] is None, f"control event after {got} messages: {e['event']} " \
                                   f"{e['data']}"
        assert e["id"] == ids[got], f"message {got}: id {e['id']}, expected {ids[got]}"
        assert e["data"] == payload(got, VOL_MSG), f"message {got} ({e['id']}): wrong payload"
        got += 1
        if got % quarter == 0 and got < total:
            ack_ok(srv, t, "slow", ids[got - 1])
            want = on_disk * (1 - got / total) + 2 * VOL_SEG
            try:
                wait_until(lambda: dir_bytes(d) <= want, 5)
            except AssertionError:
                raise AssertionError(f"acked {got}/{total}: topic dir still "
                                     f"{fmt_mib(dir_bytes(d))}, expected <= {fmt_mib(want)} "
                                     f"(segments passed by every cursor are deleted)")
            usage.append(dir_bytes(d))
    t_read = time.monotonic() - t1
    assert sub.no_event_within(0.3), f"extra event {sub.unexpected}"
    ack_ok(srv, t, "slow", ids[-1])
    wait_checkpoint(srv, t, "slow", ids[-1])
    wait_until(lambda: dir_bytes(d) <= 2 * VOL_SEG + MiB, 5,
               msg=f"topic dir at most 2 segments after the last ack (is {dir_bytes(d)})")
    usage.append(dir_bytes(d))
    rss_max = sampler.stop()
    print(f"read {total} in {t_read:.1f}s ({VOLUME_MB / t_read:.0f} MiB/s); topic dir: "
          + " -> ".join(fmt_mib(u) for u in usage) + f"; RSS max {fmt_mib(rss_max)} "
          f"{sampler.at_max} over {sampler.samples} samples")
    assert usage == sorted(usage, reverse=True), usage

    bound = MEMORY_LIMIT + RSS_SLACK
    if asan:
        assert rss_max - base_rss < bound, \
            f"RSS grew by {fmt_mib(rss_max - base_rss)} (ASan build) {sampler.at_max}"
    else:
        assert rss_max < bound, \
            f"RSS reached {fmt_mib(rss_max)} with memory_limit 64 MiB: {sampler.at_max}"

    # reconnecting with the same name: nothing again (all acknowledged), then the live message
    sub.close()
    wait_connected(srv, t, "slow", 0)
    sub = sse_open(srv, f"/topics/{t}?durable=slow")
    assert sub.no_event_within(0.3), f"redelivered after a full ack: {sub.unexpected['id']}"
    live = srv.publish(t, "live")
    assert parse_id(live) == (epoch, total + 1)
    e = sub.read_event()
    assert (e["id"], e["data"]) == (live, "live")
    sub.close()


# =============================================================================================
# Durable readers: start points, resume after the checkpoint, SSE and WebSocket
# =============================================================================================

def test_new_durable_cursor_start_points(srv):
    t = "ll-start"
    ids = publish_n(srv, t, 3)
    a = sse_open(srv, f"/topics/{t}?durable=a")                 # default: new messages
    b = sse_open(srv, f"/topics/{t}?durable=b&from=oldest")
    c = sse_open(srv, f"/topics/{t}?durable=c&since={ids[0]}")
    cs = cursors(srv, t)
    assert cs["a"]["checkpoint"] == ids[2], cs["a"]
    assert cs["b"]["checkpoint"] is None, cs["b"]
    assert cs["c"]["checkpoint"] == ids[0], cs["c"]
    assert all(cs[n]["connected"] == 1 for n in "abc"), cs
    live = srv.publish(t, "live")
    assert [e["id"] for e in a.read_events(1)] == [live]
    assert [e["id"] for e in b.read_events(4)] == ids + [live]
    assert [e["id"] for e in c.read_events(3)] == ids[1:] + [live]
    for s in (a, b, c):
        assert s.no_event_within(0.2), f"extra event {s.unexpected}"
        s.close()


def test_durable_resume_after_ack_sse(srv):
    t = "ll-resume"
    sub = sse_open(srv, f"/topics/{t}?durable=d")
    c = cursors(srv, t)["d"]
    assert c["connected"] == 1 and c["checkpoint"] is None, c
    ids = publish_n(srv, t, 10)
    got = sub.read_events(6)
    assert [(e["id"], e["data"]) for e in got] == [(ids[i], f"m{i}") for i in range(6)]
    ack_ok(srv, t, "d", ids[3])
    wait_checkpoint(srv, t, "d", ids[3])
    sub.close()
    wait_connected(srv, t, "d", 0)
    ids += publish_n(srv, t, 5, start_at=10)

    # an existing name resumes after its checkpoint; since= is ignored; m4, m5 come again
    sub = sse_open(srv, f"/topics/{t}?durable=d&since={ids[8]}")
    got = sub.read_events(11)
    assert_plain(got)
    assert [(e["id"], e["data"]) for e in got] == [(ids[i], f"m{i}") for i in range(4, 15)]
    assert sub.no_event_within(0.3), f"extra event {sub.unexpected}"

    # an id at or before the checkpoint leaves it; {"id": ...} bodies work as well
    ack_ok(srv, t, "d", ids[1], as_json=True)
    ack_ok(srv, t, "d", ids[3])
    assert cursors(srv, t)["d"]["checkpoint"] == ids[3]
    ack_ok(srv, t, "d", ids[14], as_json=True)
    wait_checkpoint(srv, t, "d", ids[14])
    sub.close()
    wait_connected(srv, t, "d", 0)
    sub = sse_open(srv, f"/topics/{t}?durable=d&from=oldest")
    assert sub.no_event_within(0.3), f"redelivered after its ack: {sub.unexpected}"
    sub.close()


def test_durable_ws_reader_acks_by_message_and_resumes(srv):
    t = "ll-ws"
    c = ws_open(srv, f"/topics/{t}?durable=w&format=json")
    wait_connected(srv, t, "w", 1)
    ids = publish_n(srv, t, 8)
    envs = [c.read_json() for _ in range(5)]
    assert [(e["id"], e["data"]) for e in envs] == [(ids[i], f"m{i}") for i in range(5)]
    c.send_text(ws_ack(ids[2]))
    wait_checkpoint(srv, t, "w", ids[2])
    c.send_close(1000)
    code, _, _ = c.expect_close()
    c.close()
    wait_connected(srv, t, "w", 0)
    ids += publish_n(srv, t, 4, start_at=8)

    c = ws_open(srv, f"/topics/{t}?durable=w&format=json")
    msgs = c.read_messages(9)
    ctl = [m for m in msgs if m.payload.startswith(CONTROL_PREFIX)]
    assert not ctl, f"control messages on resume: {ctl}"
    envs = [m.json() for m in msgs]
    assert [(e["id"], e["data"]) for e in envs] == [(ids[i], f"m{i}") for i in range(3, 12)]
    assert c.no_message_within(0.3), f"extra message {c.unexpected}"
    # refused acks come back as error messages; the connection stays open
    epoch, head = parse_id(ids[-1])
    for bad, code in ((f"{epoch}-{head + 5}", "bad_id"), ("nonsense", "bad_id"),
                      (f"{other_epoch(epoch)}-1", "epoch_mismatch")):
        c.send_text(ws_ack(bad))
        e = c.read_json()
        assert e.get("sluice") == "error" and e.get("error") == code, (bad, e)
    assert cursors(srv, t)["w"]["checkpoint"] == ids[2]
    c.send_text(ws_ack(ids[7]))
    wait_checkpoint(srv, t, "w", ids[7])
    c.close()
    wait_connected(srv, t, "w", 0)

    # on a connection that is not a durable reader, an ack is a refused publish
    p = ws_open(srv, f"/topics/{t}?mode=pubsub")
    p.send_text(ws_ack(ids[-1]))
    e = p.read_json()
    assert e.get("sluice") == "error" and e.get("error") == "reserved_payload", e
    p.close()
    assert cursors(srv, t)["w"]["checkpoint"] == ids[7]

    # the cursor is the topic's, not the transport's: SSE resumes where the WS acked
    sub = sse_open(srv, f"/topics/{t}?durable=w")
    got = sub.read_events(4)
    assert [e["id"] for e in got] == ids[8:12]
    sub.close()


def test_durable_ws_raw_format_receives_payloads(srv):
    t = "ll-wsraw"
    c = ws_open(srv, f"/topics/{t}?durable=r")
    wait_connected(srv, t, "r", 1)
    ids = publish_n(srv, t, 3)
    assert [m.payload for m in c.read_messages(3)] == [b"m0", b"m1", b"m2"]
    c.send_text(ws_ack(ids[1]))
    wait_checkpoint(srv, t, "r", ids[1])
    c.close()
    wait_connected(srv, t, "r", 0)
    c = ws_open(srv, f"/topics/{t}?durable=r")
    assert c.read_message().payload == b"m2"
    assert c.no_message_within(0.2), f"extra message {c.unexpected}"
    c.close()


def test_segments_rotated_between_writes_are_read_back_and_kept(sluice_factory):
    """One message per write (fsync=always acknowledges each publish after its own write), so
    segments rotate at the start of a write, never inside one. A durable reader that has
    acknowledged nothing reads every message back from disk (the ring holds 4) with no gap,
    and no segment it needs is deleted."""
    srv = start(sluice_factory, topics=[("ll-*", dict(LOSSLESS, fsync="always",
                                                      segment_bytes="256KiB",
                                                      max_messages=4))])
    t = "ll-rotate"
    sub = sse_open(srv, f"/topics/{t}?durable=r")
    sub.close()
    wait_connected(srv, t, "r", 0)
    size = 48 * 1024                              # 5 per 256 KiB segment
    pub = Publisher(srv.port)
    ids = [pub.publish(t, payload(i, size)) for i in range(40)]
    pub.close()
    segs = [p.name for p in segment_files(topic_dir(srv, t))]
    sub = sse_open(srv, f"/topics/{t}?durable=r")
    got = read_until_seq(sub, parse_id(ids[-1])[1])
    sub.close()
    gaps = [json.loads(e["data"]) for e in got if e["event"] == "sluice.gap"]
    assert not gaps, f"a durable reader that acknowledged nothing got gaps: {gaps}; " \
                     f"segment files: {segs}"
    assert [(e["id"], e["data"]) for e in got] == [(ids[i], payload(i, size)) for i in range(40)]
    assert len(segs) == 8 and segs[0] == f"{1:020d}.seg", \
        f"40 x 48 KiB in 256 KiB segments, none acknowledged: {segs}"


# =============================================================================================
# Restarts on the same data_dir
# =============================================================================================

def test_restart_keeps_log_epoch_and_cursors(sluice_factory):
    topics = [("ll-*", dict(LOSSLESS, fsync="always"))]
    srv = start(sluice_factory, topics=topics)
    t = "ll-restart"
    keep = sse_open(srv, f"/topics/{t}?durable=keep&from=oldest")
    pub = Publisher(srv.port)
    ids = [pub.publish(t, f"r{i}") for i in range(100)]
    pub.close()
    ids += srv.publish_batch(t, [f"r{i}" for i in range(100, 200)])
    n = len(ids)
    epoch = parse_id(ids[0])[0]
    assert [parse_id(i)[1] for i in ids] == list(range(1, n + 1))
    got = keep.read_events(60)
    assert [e["id"] for e in got] == ids[:60]
    ack_ok(srv, t, "keep", ids[49])
    wait_checkpoint(srv, t, "keep", ids[49])
    keep.close()
    fresh = sse_open(srv, f"/topics/{t}?durable=fresh")       # checkpoint: the head
    fresh.close()
    wait_connected(srv, t, "keep", 0)
    wait_connected(srv, t, "fresh", 0)

    srv = restart(sluice_factory, srv)
    info = srv.topics().get(t)
    assert info is not None, f"{t} not listed after the restart: {srv.topics()}"
    assert info["epoch"] == epoch, f"epoch changed across a restart: {info}"
    cs = cursors(srv, t)
    assert set(cs) == {"keep", "fresh"}, cs
    assert cs["keep"]["checkpoint"] == ids[49] and cs["keep"]["connected"] == 0, cs
    assert cs["fresh"]["checkpoint"] == ids[-1], cs

    # from=oldest replays everything from disk, same ids, same payloads
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = sub.read_events(n, timeout=15)
    assert [(e["id"], e["data"]) for e in got] == [(ids[i], f"r{i}") for i in range(n)]
    assert sub.no_event_within(0.2)
    # the durable cursor resumes after its checkpoint
    keep = sse_open(srv, f"/topics/{t}?durable=keep")
    got = keep.read_events(n - 50, timeout=15)
    assert_plain(got)
    assert [e["id"] for e in got] == ids[50:]
    # a new publish continues the same log
    live = srv.publish(t, "after restart")
    assert parse_id(live) == (epoch, n + 1)
    assert keep.read_event()["id"] == live
    assert sub.read_event()["id"] == live
    ack_ok(srv, t, "keep", ids[149])
    sub.close()
    keep.close()
    fresh = sse_open(srv, f"/topics/{t}?durable=fresh")
    assert fresh.read_event()["id"] == live
    fresh.close()
    wait_connected(srv, t, "fresh", 0)

    # and again: the cursors and the log survive a second restart
    srv = restart(sluice_factory, srv)
    cs = cursors(srv, t)
    assert cs["keep"]["checkpoint"] == ids[149], cs
    assert cs["fresh"]["checkpoint"] == ids[-1], cs   # never acked: where it was created
    assert srv.topics()[t]["epoch"] == epoch
    keep = sse_open(srv, f"/topics/{t}?durable=keep")
    got = keep.read_events(n - 150 + 1, timeout=15)
    assert [e["id"] for e in got] == ids[150:] + [live]
    keep.close()


class KillPublisher(threading.Thread):
    """Publishes numbered messages over one keep-alive connection (one by one, or in NDJSON
    batches) until the connection fails; records what was acknowledged with a 202."""

    def __init__(self, port, topic, tag, batch=1, size=1000):
        super().__init__(daemon=True)
        self.port, self.topic, self.tag, self.batch, self.size = port, topic, tag, batch, size
        self.acked = []   # (id, payload)
        self.error = None

    def body(self, i):
        head = f"{self.tag}-{i:06d}-"
        return head + "x" * (self.size - len(head))

    def run(self):
        try:
            pub = Publisher(self.port, timeout=10)
            i = 0
            while True:
                msgs = [self.body(i + k) for k in range(self.batch)]
                if self.batch == 1:
                    r = pub.post(f"/topics/{self.topic}", msgs[0])
                else:
                    r = pub.post(f"/topics/{self.topic}", "".join(m + "\n" for m in msgs),
                                 {"Content-Type": "application/x-ndjson"})
                if r.status != 202:
                    self.error = f"status {r.status} {r.body[:200]!r}"
                    return
                got = r.json()
                rids = got["ids"] if self.batch > 1 else [got["id"]]
                self.acked += list(zip(rids, msgs))
                i += self.batch
        except Exception as e:  # the server was killed: expected
            self.error = repr(e)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_kill9_while_publishing_loses_nothing_acknowledged(sluice_factory, fsync):
    """kill -9 in the middle of publishing (three single-message publishers and one of 20-line
    NDJSON batches, a durable cursor acknowledged early on). Under every fsync policy a 202 is
    sent only once the message is written (handed to the kernel; with `always` also fsync'ed),
    and a process crash does not lose what is in the kernel's page cache: so no acknowledged
    message may be missing, whatever the policy. (A machine crash is another matter: that is
    what fsync=always is for; it is not simulated here.) The number lost is printed; it must
    be 0. Also: no acknowledged id is given to another message after the restart, and the
    cursor's checkpoint survives."""
    topics = [("ll-*", dict(LOSSLESS, fsync=fsync, segment_bytes="1MiB"))]
    srv = start(sluice_factory, topics=topics)
    t = "ll-kill"
    sub = sse_open(srv, f"/topics/{t}?durable=k")     # a durable cursor, acked during the run
    sub.close()
    wait_connected(srv, t, "k", 0)
    pubs = [KillPublisher(srv.port, t, f"p{k}") for k in range(3)]
    pubs.append(KillPublisher(srv.port, t, "b", batch=20))
    for p in pubs:
        p.start()
    t0 = time.monotonic()
    wait_until(lambda: len(pubs[0].acked) >= 50, 10)
    k_ack = pubs[0].acked[49][0]
    ack_ok(srv, t, "k", k_ack)
    time.sleep(0.3)                               # the checkpoint file is written meanwhile
    wait_until(lambda: sum(len(p.acked) for p in pubs) >= 1500 or time.monotonic() - t0 > 3
               or not any(p.is_alive() for p in pubs), 10)
    assert all(p.is_alive() for p in pubs), [p.error for p in pubs]
    srv.signal(signal.SIGKILL)
    srv.wait_exit(5)
    for p in pubs:
        p.join(15)
        assert not p.is_alive()
    acked = [a for p in pubs for a in p.acked]
    assert len(acked) >= 50, f"only {len(acked)} publishes acknowledged before the kill"
    epoch = parse_id(acked[0][0])[0]
    max_seq = max(parse_id(i)[1] for i, _ in acked)

    srv = restart(sluice_factory, srv)
    info = srv.topics().get(t)
    assert info is not None, f"{t} not listed after restart: {srv.topics()}"
    assert info["epoch"] == epoch, info
    live = srv.publish(t, "after kill")
    # segments the cursor has passed may be gone; everything after its checkpoint is there
    k_seq = parse_id(k_ack)[1]
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(live)[1], timeout=30)
    sub.close()
    assert got[-1]["id"] == live and got[-1]["data"] == "after kill"
    got = got[:-1]
    # ids past the recovered head, up to the high-water mark recorded before the crash, are
    # never given out again: the reader is told with one gap marker before the new message
    if got and got[-1]["event"] == "sluice.gap":
        g = json.loads(got.pop()["data"])
        assert parse_id(g["to"])[1] == parse_id(live)[1] - 1, g
    assert_plain(got)
    seqs = [parse_id(e["id"])[1] for e in got]
    assert seqs and seqs[0] <= k_seq + 1, f"from=oldest starts at {seqs[:1]}, checkpoint {k_seq}"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "recovered ids not consecutive"
    stored = {e["id"]: e["data"] for e in got}
    acked = [(i, p) for i, p in acked if parse_id(i)[1] > k_seq]
    lost = [(i, p[:12]) for i, p in acked if stored.get(i) != p]
    print(f"fsync={fsync}: {len(acked)} acknowledged after the cursor's checkpoint {k_seq} "
          f"before kill -9 (up to seq {max_seq}), {len(got)} recovered; acknowledged but "
          f"lost: {len(lost)}")
    assert not lost, f"{len(lost)} acknowledged messages lost or changed: {lost[:5]}"
    # (implied by the above, but the consequence deserves its own message: a client that
    # dedups by id would drop a new message that got an acknowledged id again)
    assert parse_id(live)[0] == epoch and parse_id(live)[1] > max_seq, \
        f"an acknowledged id was reused: {live} (acknowledged up to {max_seq})"
    # the durable cursor kept its checkpoint through kill -9, and resumes right after it
    assert cursors(srv, t)["k"]["checkpoint"] == k_ack
    sub = sse_open(srv, f"/topics/{t}?durable=k")
    assert parse_id(sub.read_event()["id"])[1] == parse_id(k_ack)[1] + 1
    sub.close()


# =============================================================================================
# The disk quota: pushing back on publishers, and resuming them
# =============================================================================================

Q_MSG = 64 * 1024
Q_TOPICS = [("llq-*", dict(LOSSLESS, disk_quota="4MiB", segment_bytes="1MiB"))]


def fill(srv, t, start_i, limit=200):
    """Publishes 64 KiB messages until a 429; returns (ids, the 429 response, next index)."""
    ids = []
    for i in range(start_i, start_i + limit):
        r = srv.post(f"/topics/{t}", payload(i, Q_MSG))
        if r.status == 429:
            return ids, r, i
        assert r.status == 202, f"publish {i}: {r}"
        ids.append(r.json()["id"])
    raise AssertionError(f"{limit} x 64 KiB accepted by a topic with a 4 MiB disk quota and a "
                         f"durable cursor that never acknowledges")


def assert_topic_full(r):
    assert r.status == 429 and error_of(r) == "topic_full", r
    assert r.headers.get("retry-after") == "1", r.headers


def timed_post(srv, path, body, out, timeout=10):
    t0 = time.monotonic()
    out["r"] = srv.post(path, body, timeout=timeout)
    out["elapsed"] = time.monotonic() - t0


def test_disk_quota_pushes_back_and_resumes_publishers(sluice_factory):
    srv = start(sluice_factory, topics=Q_TOPICS)
    t = "llq-full"
    sub = sse_open(srv, f"/topics/{t}?durable=c")     # a durable reader that never acks
    sub.close()
    wait_connected(srv, t, "c", 0)
    m0 = srv.metrics()

    # 1. the quota fills: 429 topic_full with Retry-After, and it stays full
    ids, r, nxt = fill(srv, t, 0)
    assert_topic_full(r)
    d = topic_dir(srv, t)
    print(f"quota: {len(ids)} x 64 KiB accepted before the first 429; topic dir "
          f"{fmt_mib(dir_bytes(d))}")
    assert 2 * MiB <= len(ids) * Q_MSG <= 5 * MiB, f"{len(ids)} x 64 KiB under a 4 MiB quota"
    assert dir_bytes(d) <= 5 * MiB + 256 * 1024, fmt_mib(dir_bytes(d))
    assert_topic_full(srv.post(f"/topics/{t}", payload(nxt, Q_MSG)))
    # everything accepted is still there for the reader that has not acknowledged it
    sub = sse_open(srv, f"/topics/{t}?durable=c")
    got = read_until_seq(sub, parse_id(ids[-1])[1], timeout=10)
    sub.close()
    assert [(e["id"], e["data"]) for e in got] == \
        [(i, payload(k, Q_MSG)) for k, i in enumerate(ids)], \
        "the full topic lost messages its durable reader has not acknowledged: " + \
        str([e["data"] for e in got if e["event"] == "sluice.gap"][:3])
    wait_connected(srv, t, "c", 0)
    m1 = srv.metrics()
    rej = {k: v - m0.v(k) for k, v in m1.items()
           if k.startswith("sluice_publish_rejected_total") and v != m0.v(k)}
    print(f"rejections counted: {rej}")
    assert sum(rej.values()) >= 2, f"429s not counted in sluice_publish_rejected_total: {rej}"
    assert m1.v('sluice_http_responses_total{code="429"}') - \
        m0.v('sluice_http_responses_total{code="429"}') >= 2

    # 2. the reader catches up (acks the head): segments go, publishing succeeds again
    full_usage = dir_bytes(d)
    ack_ok(srv, t, "c", ids[-1])
    t0 = time.monotonic()
    while True:
        r = srv.post(f"/topics/{t}", payload(nxt, Q_MSG))
        if r.status == 202:
            break
        assert_topic_full(r)
        assert time.monotonic() - t0 < 1.0, "still 429 one second after the ack freed room"
        time.sleep(0.02)
    nxt += 1
    ids.append(r.json()["id"])
    assert dir_bytes(d) < full_usage, (dir_bytes(d), full_usage)

    # 3. ?wait=3s on a full topic: waits, and succeeds when the reader acks meanwhile
    more, r, nxt = fill(srv, t, nxt)
    ids += more
    assert_topic_full(r)
    out = {}
    th = threading.Thread(target=timed_post,
                          args=(srv, f"/topics/{t}?wait=3s", payload(nxt, Q_MSG), out))
    th.start()
    time.sleep(1.0)
    assert th.is_alive(), f"?wait=3s answered at once: {out}"
    ack_ok(srv, t, "c", ids[-1])
    th.join(6)
    assert out["r"].status == 202, out
    assert 0.9 <= out["elapsed"] < 2.5, \
        f"the waiting publish finished after {out['elapsed']:.2f}s; the ack came at 1.0s"
    ids.append(out["r"].json()["id"])
    nxt += 1

    # 4. ... and fails with 429 after the wait when nobody acks
    more, r, nxt = fill(srv, t, nxt)
    ids += more
    out = {}
    timed_post(srv, f"/topics/{t}?wait=2s", payload(nxt, Q_MSG), out)
    assert_topic_full(out["r"])
    assert 1.9 <= out["elapsed"] < 4.0, f"?wait=2s answered after {out['elapsed']:.2f}s"
    head = srv.topics()[t]["head"]
    assert head == ids[-1]

    # 5. a WebSocket publisher on the full topic is not read; once room frees, every message it
    # sent is published, acknowledged, in order
    K = 8
    ws = ws_open(srv, f"/topics/{t}?mode=pub&ack=1")
    sent = [payload(nxt + j, Q_MSG) for j in range(K)]
    for p in sent:
        ws.send_text(p)
    assert ws.no_message_within(1.0), f"answer while the topic is full: {ws.unexpected}"
    assert srv.topics()[t]["head"] == head, "published into a full topic"
    ack_ok(srv, t, "c", head)
    acks = [ws.read_json(timeout=5) for _ in range(K)]
    assert all(a.get("sluice") == "ack" and a.get("topic") == t for a in acks), acks
    epoch, hseq = parse_id(head)
    assert [parse_id(a["id"]) for a in acks] == [(epoch, hseq + 1 + j) for j in range(K)], acks
    ws.close()
    # the durable reader gets exactly those, intact
    sub = sse_open(srv, f"/topics/{t}?durable=c")
    got = sub.read_events(K, timeout=10)
    assert [(e["id"], e["data"]) for e in got] == [(a["id"], p) for a, p in zip(acks, sent)]
    assert sub.no_event_within(0.2)
    sub.close()


def test_server_disk_quota_is_shared_and_frees_across_topics(sluice_factory):
    """The server's disk_quota covers every lossless topic: filled through two topics, a
    publish to either is refused; a reader acknowledging on one topic frees room that a
    publisher waiting on the other topic gets at once."""
    srv = start(sluice_factory, server={"disk_quota": "4MiB"},
                topics=[("llq-*", dict(LOSSLESS, disk_quota="0", segment_bytes="512KiB"))])
    ta, tb = "llq-a", "llq-b"
    for t in (ta, tb):
        sse_open(srv, f"/topics/{t}?durable=c").close()
        wait_connected(srv, t, "c", 0)
    ids = {ta: [], tb: []}
    i = 0
    full = set()
    while len(full) < 2:
        t = (ta, tb)[i % 2]
        r = srv.post(f"/topics/{t}", payload(i, Q_MSG))
        i += 1
        if r.status == 429:
            assert_topic_full(r)
            full.add(t)
            continue
        assert r.status == 202 and t not in full, (t, r)
        ids[t].append(r.json()["id"])
        assert i < 400, "no 429 under a 4 MiB server disk_quota"
    total = (len(ids[ta]) + len(ids[tb])) * Q_MSG
    print(f"server quota: {len(ids[ta])} + {len(ids[tb])} x 64 KiB accepted")
    assert 2 * MiB <= total <= 5 * MiB, f"{total} bytes accepted under a 4 MiB server quota"
    assert min(len(ids[ta]), len(ids[tb])) >= 8, ids   # both topics took a share
    # a publisher waits on b; the reader of a acknowledges: room for b
    out = {}
    th = threading.Thread(target=timed_post,
                          args=(srv, f"/topics/{tb}?wait=3s", payload(i, Q_MSG), out))
    th.start()
    time.sleep(0.8)
    assert th.is_alive(), f"answered at once on a full server: {out}"
    ack_ok(srv, ta, "c", ids[ta][-1])
    th.join(6)
    if out["r"].status != 202:
        r = srv.post(f"/topics/{tb}", payload(i, Q_MSG))
        raise AssertionError(f"a publisher waiting on {tb} was not woken when an ack on {ta} "
                             f"freed room: {out['r'].status} after {out['elapsed']:.2f}s; a "
                             f"publish right after that: {r.status}")
    assert out["elapsed"] < 2.5, f"woken after {out['elapsed']:.2f}s; the ack came at 0.8s"


# =============================================================================================
# Damaged files: a torn last record, a corrupt record in an older segment
# =============================================================================================

DMG_MSG = 16 * 1024
DMG_TOPICS = [("ll-*", dict(LOSSLESS, segment_bytes="1MiB"))]
PROBLEM_RE = re.compile(r"level=(warn|error).*(torn|truncat|corrupt|crc|checksum)", re.I)


def problem_lines(logs, level=None):
    out = [ln for ln in logs.splitlines() if PROBLEM_RE.search(ln)]
    if level:
        out = [ln for ln in out if f"level={level}" in ln]
    return out


def msg_offsets(data):
    """{message index: offset of its payload} in a segment file's bytes (payload() heads)."""
    return {int(m.group(1)): m.start() for m in re.finditer(rb"(\d{8}):", data)}


def test_torn_last_record_is_truncated_and_logged(sluice_factory):
    srv = start(sluice_factory, topics=DMG_TOPICS)
    t = "ll-torn"
    n = 40
    ids = srv.publish_batch(t, [payload(i, DMG_MSG) for i in range(n)])
    stop(srv)
    segs = segment_files(topic_dir(srv, t))
    assert segs, f"no segment files in {topic_dir(srv, t)}"
    last = segs[-1]
    data = last.read_bytes()
    offs = msg_offsets(data)
    assert n - 1 in offs, f"the last message is not in {last.name}: {sorted(offs)[-3:]}"
    cut = offs[n - 1] + DMG_MSG // 2          # in the middle of the last record's payload
    os.truncate(last, cut)

    srv = restart(sluice_factory, srv)
    lines = problem_lines(srv.logs())
    print("recovery log:", *lines, sep="\n  ")
    assert lines, f"the torn record was not logged:\n{srv.logs()[-3000:]}"
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(ids[n - 2])[1])
    assert_plain(got)
    assert [(e["id"], e["data"]) for e in got] == \
        [(ids[i], payload(i, DMG_MSG)) for i in range(n - 1)]
    # the torn record's id is never given to another message: the reader is told it is gone
    gap = sub.read_event(5)
    assert gap["event"] == "sluice.gap", f"the torn record was served: {gap}"
    g = json.loads(gap["data"])
    assert g["from"] == ids[n - 1] and g["to"] == ids[n - 1], g
    # the log goes on after the truncated record, under a new id
    live = srv.publish(t, "after repair")
    assert parse_id(live)[1] > parse_id(ids[n - 1])[1], live
    blk = sub.read_event()
    assert (blk["id"], blk["data"]) == (live, "after repair")
    sub.close()
    # and a second restart finds a clean log with all of it
    srv = restart(sluice_factory, srv)
    assert not problem_lines(srv.logs()), srv.logs()
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(live)[1])
    assert [e["id"] for e in got if e["event"] is None] == ids[:n - 1] + [live]
    sub.close()


def test_corrupt_record_in_older_segment_gap_for_readers(sluice_factory):
    srv = start(sluice_factory, topics=DMG_TOPICS)
    t = "ll-corrupt"
    dc = sse_open(srv, f"/topics/{t}?durable=dc&from=oldest")   # keeps every segment
    dc.close()
    n = 256                                                      # 4 MiB: 4-5 segments
    ids = []
    for b in range(0, n, 32):
        ids += srv.publish_batch(t, [payload(i, DMG_MSG) for i in range(b, b + 32)])
    stop(srv)
    segs = segment_files(topic_dir(srv, t))
    assert len(segs) >= 3, f"expected several 1 MiB segments: {segs}"
    victim = segs[1]
    data = bytearray(victim.read_bytes())
    offs = msg_offsets(bytes(data))
    assert offs, f"no payloads found in {victim}"
    in_victim = sorted(offs)
    k = in_victim[len(in_victim) // 2]
    pos = offs[k] + 100
    for j in range(pos, pos + 16):
        data[j] ^= 0xFF
    victim.write_bytes(bytes(data))
    lost_from, lost_to = k, in_victim[-1]   # the segment is truncated at the corrupt record

    srv = restart(sluice_factory, srv)
    # The file's size did not change, so the clean-shutdown record is trusted and the start
    # does not read the records: the damage is found when they are read back (CRC checked
    # then, since no scan checked them), and the reader gets the gap a scan would have made.
    assert "start=clean" in srv.logs(), srv.logs()[-3000:]

    for path in (f"/topics/{t}?from=oldest", f"/topics/{t}?durable=dc"):
        sub = sse_open(srv, path)
        got = read_until_seq(sub, parse_id(ids[-1])[1], timeout=20)
        sub.close()
        gaps = [e for e in got if e["event"] == "sluice.gap"]
        assert len(gaps) == 1, f"{path}: expected one gap, got {[g['data'] for g in gaps]}"
        g = json.loads(gaps[0]["data"])
        print(f"{path}: gap {g}")
        assert g["topic"] == t and g["from"] == ids[lost_from] and g["to"] == ids[lost_to], \
            f"gap {g}, expected {ids[lost_from]}..{ids[lost_to]}"
        assert g["missed"] == lost_to - lost_from + 1, g
        msgs = [e for e in got if e["event"] is None]
        want = [i for i in range(n) if not lost_from <= i <= lost_to]
        assert [(e["id"], e["data"]) for e in msgs] == \
            [(ids[i], payload(i, DMG_MSG)) for i in want], f"{path}: intact messages differ"
        assert got.index(gaps[0]) == lost_from, "the gap is not where the lost range is"
    errs = problem_lines(srv.logs(), "error")
    print(f"corrupted message {k} in {victim.name} (holding {in_victim[0]}..{in_victim[-1]}); "
          "log:", *errs, sep="\n  ")
    assert errs, f"the corrupt record was not logged as an error:\n{srv.logs()[-3000:]}"
    assert srv.metrics().v("sluice_spill_corrupt_total") >= 1
    # A log found damaged is not trusted again: the next start scans, and cuts the segment
    # at the corrupt record, so readers get the same gap from the scan.
    srv = restart(sluice_factory, srv)
    assert "start=scan" in srv.logs(), srv.logs()[-3000:]
    assert problem_lines(srv.logs(), "error"), srv.logs()[-3000:]
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(ids[-1])[1], timeout=20)
    sub.close()
    gaps = [json.loads(e["data"]) for e in got if e["event"] == "sluice.gap"]
    assert [(g["from"], g["to"]) for g in gaps] == [(ids[lost_from], ids[lost_to])], gaps


def test_clean_shutdown_start_trusts_its_record_and_a_crash_scans(sluice_factory):
    """A clean exit leaves a record of each log's segments (`clean`), and the next start takes
    the segments from it instead of reading every record; the first write removes it, so a
    kill -9 after that scans (and finds a torn tail). A damaged record is not trusted."""
    srv = start(sluice_factory, topics=DMG_TOPICS)
    t = "ll-clean"
    n = 100                                                      # 1.6 MiB: 2 segments
    ids = srv.publish_batch(t, [payload(i, DMG_MSG) for i in range(n)])
    srv = restart(sluice_factory, srv)
    d = topic_dir(srv, t)
    assert (d / "clean").exists(), sorted(p.name for p in d.iterdir())
    assert "start=clean" in srv.logs(), srv.logs()[-3000:]
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(ids[-1])[1])
    sub.close()
    assert [(e["id"], e["data"]) for e in got] == [(ids[i], payload(i, DMG_MSG)) for i in range(n)]

    # A kill -9 before any write leaves the files as the record says: still trusted.
    srv = restart(sluice_factory, srv, sig=signal.SIGKILL)
    assert "start=clean" in srv.logs(), srv.logs()[-3000:]
    # The first write removes the record before it writes a segment.
    more = srv.publish_batch(t, [payload(i, DMG_MSG) for i in range(n, n + 20)])
    wait_until(lambda: not (d / "clean").exists(), 10, msg="the record's removal by a write")
    # kill -9, and a torn tail: the start must scan, cut it and say so.
    srv = restart(sluice_factory, srv, sig=signal.SIGKILL)
    assert "start=scan" in srv.logs(), srv.logs()[-3000:]
    stop(srv, signal.SIGKILL)
    last = segment_files(d)[-1]
    os.truncate(last, last.stat().st_size - DMG_MSG // 2)
    srv = restart(sluice_factory, srv)
    logs = srv.logs()
    assert "start=scan" in logs and problem_lines(logs), logs[-3000:]
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(more[-2])[1])
    sub.close()
    want = ids + more[:-1]
    assert [e["id"] for e in got if e["event"] is None] == want

    # A record whose bytes were changed is not trusted (its sum fails): the start scans.
    srv = restart(sluice_factory, srv)
    assert "start=clean" in srv.logs(), srv.logs()[-3000:]
    stop(srv)
    rec = bytearray((d / "clean").read_bytes())
    i = rec.index(b"seg ") + 4
    rec[i] = ord("9") if rec[i] != ord("9") else ord("8")
    (d / "clean").write_bytes(bytes(rec))
    srv = restart(sluice_factory, srv)
    logs = srv.logs()
    assert "start=scan" in logs and "clean-shutdown record damaged" in logs, logs[-3000:]
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    got = read_until_seq(sub, parse_id(more[-2])[1])
    sub.close()
    assert [e["id"] for e in got if e["event"] is None] == want
    stop(srv)


# =============================================================================================
# The cursor API and its errors
# =============================================================================================

def test_cursor_list_and_delete(srv):
    t = "ll-api"
    a = sse_open(srv, f"/topics/{t}?durable=a")
    b = sse_open(srv, f"/topics/{t}?durable=b")
    b.close()
    ids = publish_n(srv, t, 3)
    wait_connected(srv, t, "b", 0)
    cs = cursors(srv, t)
    assert set(cs) == {"a", "b"}, cs
    assert cs["a"]["connected"] == 1 and cs["a"]["checkpoint"] is None, cs
    ack_ok(srv, t, "a", ids[1])
    wait_checkpoint(srv, t, "a", ids[1])
    i1 = cursors(srv, t)["b"]["idle_ms"]
    time.sleep(0.4)
    i2 = cursors(srv, t)["b"]["idle_ms"]
    assert i2 >= i1 + 300, f"idle_ms of a disconnected cursor: {i1} then {i2}"

    r = srv.request("DELETE", f"/topics/{t}/cursors/b")
    assert r.status == 204, r
    assert set(cursors(srv, t)) == {"a"}
    r = srv.request("DELETE", f"/topics/{t}/cursors/b")
    assert r.status == 404, r
    r = srv.request("DELETE", f"/topics/{t}/cursors/never")
    assert r.status == 404, r
    # a deleted name is new again: it starts at the head (default start)
    b = sse_open(srv, f"/topics/{t}?durable=b")
    assert cursors(srv, t)["b"]["checkpoint"] == ids[-1]
    assert b.no_event_within(0.2)
    b.close()
    a.close()


def test_cursor_ttl_expires_unused_cursors(srv):
    t = "llt-ttl"
    m0 = srv.metrics().v("sluice_cursors_expired_total")
    keep = sse_open(srv, f"/topics/{t}?durable=keep")
    gone = sse_open(srv, f"/topics/{t}?durable=gone")
    gone.close()
    wait_connected(srv, t, "gone", 0)
    t0 = time.monotonic()
    wait_until(lambda: "gone" not in cursors(srv, t), 10, msg="cursor 'gone' expiring")
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed <= 6, f"cursor_ttl 2s: expired after {elapsed:.2f}s"
    time.sleep(0.5)
    cs = cursors(srv, t)
    assert "keep" in cs and cs["keep"]["connected"] == 1, f"a connected cursor expired: {cs}"
    assert srv.metrics().v("sluice_cursors_expired_total") - m0 == 1
    assert any("gone" in ln for ln in srv.logs().splitlines()), \
        f"the expiry was not logged:\n{srv.logs()[-2000:]}"
    keep.close()
    # the expired name is new again
    gone = sse_open(srv, f"/topics/{t}?durable=gone")
    assert "gone" in cursors(srv, t)
    gone.close()


def test_durable_query_errors(srv):
    srv.publish("plain", "x")
    for path in ("/topics/plain?durable=x", "/topics/plain?durable=x&from=oldest"):
        sub = srv.sse(path)
        assert sub.status == 400 and error_of(sub.response) == "not_lossless", sub.response
        sub.close()
    c = WSConn(srv.port, "/topics/plain?durable=x")
    assert c.status == 400 and error_of(c.response) == "not_lossless", c.response
    c.close()
    # multi-topic streams have no durable readers
    for path in ("/sse?topic=ll-m&durable=x", "/sse?topic=ll-m&topic=ll-n&durable=x"):
        sub = srv.sse(path)
        assert sub.status == 400 and error_of(sub.response) in ("not_lossless", "bad_query"), \
            (path, sub.response)
        sub.close()
    c = WSConn(srv.port, "/ws?topic=ll-m&durable=x")
    assert c.status == 400 and error_of(c.response) in ("not_lossless", "bad_query"), c.response
    c.close()
    # names: 1..64 of [A-Za-z0-9._-]
    for bad in ("", "a:b", "a/b", "a%20b", "a*b", "x" * 65, "%C3%A9"):
        sub = srv.sse(f"/topics/ll-names?durable={bad}")
        assert sub.status == 400 and error_of(sub.response) == "bad_query", (bad, sub.response)
        sub.close()
    for good in ("x" * 64, "A-z_0.9"):
        sub = sse_open(srv, f"/topics/ll-names?durable={good}")
        sub.close()
    assert set(cursors(srv, "ll-names")) == {"x" * 64, "A-z_0.9"}


def test_ack_errors(srv):
    t = "ll-ackerr"
    sub = sse_open(srv, f"/topics/{t}?durable=e")
    ids = publish_n(srv, t, 3)
    epoch, head = parse_id(ids[-1])
    for beyond in (f"{epoch}-{head + 1}", f"{epoch}-999999"):
        r = ack(srv, t, "e", beyond)
        assert r.status == 400 and error_of(r) == "bad_id", (beyond, r)
    for bad in ("garbage", "", f"{epoch}", f"{epoch}-x"):
        r = ack(srv, t, "e", bad)
        assert r.status == 400 and error_of(r) == "bad_id", (bad, r)
    r = ack(srv, t, "e", f"{other_epoch(epoch)}-1")
    assert r.status == 409 and error_of(r) == "epoch_mismatch", r
    r = ack(srv, t, "e", f"{other_epoch(epoch)}-1", as_json=True)
    assert r.status == 409 and error_of(r) == "epoch_mismatch", r
    assert cursors(srv, t)["e"]["checkpoint"] is None, "a refused ack moved the checkpoint"
    ack_ok(srv, t, "e", ids[-1])
    assert cursors(srv, t)["e"]["checkpoint"] == ids[-1]
    sub.close()


def test_topic_names_with_a_cursors_segment_are_refused(srv):
    for name in ("cursors", "cursors/x", "a/cursors/b/c", "ll-x/cursors/y/z"):
        r = srv.post(f"/topics/{name}?event=e", "x")
        assert r.status in (400, 404, 405), (name, r)
        if name in ("cursors", "cursors/x"):
            assert error_of(r) == "bad_topic", (name, r)
    for name in ("cursors", "cursors/x"):
        sub = srv.sse(f"/topics/{name}")
        assert sub.status == 400 and error_of(sub.response) == "bad_topic", (name, sub.response)
        sub.close()
        c = WSConn(srv.port, f"/topics/{name}")
        assert c.status == 400 and error_of(c.response) == "bad_topic", (name, c.response)
        c.close()
    # /topics/a/cursors/b is the cursor route of topic "a" (POST, DELETE): never a subscription
    sub = srv.sse("/topics/a/cursors/b")
    assert sub.status in (400, 404, 405), sub.response
    sub.close()
    for fine in ("cursor", "cursorsx", "my-cursors", "a/xcursors/b", "ll-cursors"):
        srv.publish(fine, "ok")


def test_topics_listing_counts_the_log(sluice_factory):
    """GET /topics: head/tail are the newest/oldest retained ids. A lossless topic retains what
    its log holds, also right after a restart, when nothing is in memory yet."""
    srv = start(sluice_factory, topics=[("ll-*", dict(LOSSLESS, max_messages=10))])
    t = "ll-listing"
    ids = srv.publish_batch(t, [f"l{i}" for i in range(50)])
    problems = []
    info = srv.topics()[t]
    if (info["head"], info["tail"]) != (ids[-1], ids[0]):
        problems.append(f"the log holds {ids[0]}..{ids[-1]}, GET /topics says {info}")
    srv = restart(sluice_factory, srv)
    info = srv.topics().get(t)
    assert info is not None, srv.topics()
    if (info["head"], info["tail"]) != (ids[-1], ids[0]):
        problems.append(f"after a restart the log holds {ids[0]}..{ids[-1]}, GET /topics "
                        f"says {info}")
    # from=oldest agrees with the log
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    assert [e["id"] for e in sub.read_events(50)] == ids
    sub.close()
    assert not problems, "\n".join(problems)


# =============================================================================================
# Topic names on disk: any accepted name works, directories are bounded and distinct, nothing
# is made on disk by subscribing, the old layout is migrated
# =============================================================================================

LONG_LIMITS = {"max_topic_name": 1024}


def long_names():
    """Names at the 1024-byte limit full of '/', two differing only in letter case, two
    sharing their first 200 bytes."""
    deep = "ll-" + "/".join(["abcdefgh"] * 113)                  # 1019 bytes, 112 slashes
    deep = deep + "/x" * ((1024 - len(deep)) // 2)
    shared = "ll-" + "s" * 200
    return [deep, "ll-Case/Mixed", "ll-case/mixed", shared + "/one", shared + "/two",
            "ll-" + "~._-" * 250]


def test_long_and_odd_topic_names_publish_subscribe_recover(sluice_factory):
    srv = start(sluice_factory, topics=TOPICS, limits=LONG_LIMITS)
    names = long_names()
    assert max(len(n) for n in names) <= 1024 and len(names[0]) > 1000
    ids = {}
    for k, t in enumerate(names):
        cur = sse_open(srv, f"/topics/{t}?durable=c{k}&from=oldest")
        r = srv.post(f"/topics/{t}", f"{k}-first")
        assert r.status == 202, f"publish to a {len(t)}-byte name: {r}"
        ids[t] = [r.json()["id"]] + srv.publish_batch(t, [f"{k}-{i}" for i in range(1, 4)])
        got = cur.read_events(4, timeout=10)
        assert [(e["id"], e["data"]) for e in got] == \
            list(zip(ids[t], [f"{k}-first"] + [f"{k}-{i}" for i in range(1, 4)]))
        ack_ok(srv, t, f"c{k}", ids[t][1])
        wait_checkpoint(srv, t, f"c{k}", ids[t][1])
        cur.close()
    assert "ENAMETOOLONG" not in srv.logs() and "File name too long" not in srv.logs()
    dirs = [topic_dir(srv, t) for t in names]        # exactly one directory each, by meta
    for d in dirs:
        assert len(d.name.encode()) <= 255, f"directory name of {len(d.name)} bytes"
    lower = {d.name.lower() for d in dirs}
    assert len(lower) == len(names), f"directories not distinct ignoring case: {dirs}"

    srv = restart(sluice_factory, srv)
    listed = srv.topics()
    for k, t in enumerate(names):
        assert t in listed, f"{len(t)}-byte topic not recovered: {sorted(listed)}"
        assert cursors(srv, t)[f"c{k}"]["checkpoint"] == ids[t][1]
        sub = sse_open(srv, f"/topics/{t}?durable=c{k}")
        got = sub.read_events(2, timeout=10)
        assert [e["id"] for e in got] == ids[t][2:]
        live = srv.publish(t, f"{k}-after")
        assert parse_id(live) == (parse_id(ids[t][0])[0], parse_id(ids[t][-1])[1] + 1)
        assert sub.read_event()["data"] == f"{k}-after"
        sub.close()


def topics_on_disk(srv):
    base = srv.data_dir / "topics"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def test_subscribing_alone_makes_nothing_on_disk(srv):
    t = "ll-only-watched/a"
    sse = sse_open(srv, f"/topics/{t}")
    ws = ws_open(srv, f"/ws?topic={t}")
    assert t in srv.topics()
    assert topics_on_disk(srv) == [], f"a subscribe wrote to disk: {topics_on_disk(srv)}"
    # a durable cursor must be kept: now the log is made, once
    dur = sse_open(srv, f"/topics/{t}?durable=d")
    wait_until(lambda: len(topics_on_disk(srv)) == 1, 5, msg="the log directory")
    i = srv.publish(t, "hello")
    assert sse.read_event()["id"] == i and dur.read_event()["id"] == i
    assert topic_dir(srv, t).name == topics_on_disk(srv)[0]
    for c in (sse, ws, dur):
        c.close()
    # and a publish alone makes it too
    srv.publish("ll-only-published", "x")
    assert len(topics_on_disk(srv)) == 2
    topic_dir(srv, "ll-only-published")


def test_old_directory_layout_is_renamed_at_start(sluice_factory):
    srv = start(sluice_factory, topics=TOPICS)
    t = "ll-old/layout/name"
    ids = srv.publish_batch(t, [f"o{i}" for i in range(5)])
    cur = sse_open(srv, f"/topics/{t}?durable=keep&from=oldest")
    cur.read_events(5)
    ack_ok(srv, t, "keep", ids[2])
    wait_checkpoint(srv, t, "keep", ids[2])
    cur.close()
    stop(srv)
    # as the previous layout named it: t-<name with '/' as %2F>
    old = srv.data_dir / "topics" / ("t-" + t.replace("/", "%2F"))
    new = topic_dir(srv, t)
    if new != old:
        new.rename(old)

    srv = restart(sluice_factory, srv)
    assert not old.exists(), "the old directory is still there"
    d = topic_dir(srv, t)
    assert d.name != old.name and "%2F" not in d.name
    assert cursors(srv, t)["keep"]["checkpoint"] == ids[2]
    sub = sse_open(srv, f"/topics/{t}?from=oldest")
    assert [(e["id"], e["data"]) for e in sub.read_events(5)] == \
        [(ids[i], f"o{i}") for i in range(5)]
    live = srv.publish(t, "new")
    assert sub.read_event()["id"] == live and parse_id(live)[1] == 6
    sub.close()
    # a second restart finds the new layout as it is
    srv = restart(sluice_factory, srv)
    assert topic_dir(srv, t) == d and "renamed" not in srv.logs()


# =============================================================================================
# A failed disk write answers the publishers waiting on it
# =============================================================================================

@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root); unmounted at teardown."""
    d = tmp_path / "tiny"
    d.mkdir()
    import subprocess
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_failed_disk_write_answers_waiting_publishers(sluice_factory, tiny_disk):
    topics = [("ll-*", dict(LOSSLESS, fsync="always", segment_bytes="64MiB"))]
    srv = start(sluice_factory, topics=topics, data_dir=tiny_disk / "data")
    t = "ll-enospc"
    statuses = []
    for i in range(64):                        # 64 x 64 KiB: four times the file system
        r = srv.post(f"/topics/{t}", payload(i, 64 * 1024), timeout=20)
        statuses.append((r.status, error_of(r)))
        if r.status != 202:
            break
    print("publishes:", statuses[-3:])
    assert statuses[-1] == (503, "disk_error"), statuses[-3:]
    assert "No space left" in srv.logs()
    # later publishes are refused the same way at once, over HTTP and WebSocket
    r = srv.post(f"/topics/{t}", "more", timeout=20)
    assert (r.status, error_of(r)) == (503, "disk_error"), r
    ws = ws_open(srv, f"/topics/{t}?mode=pub&ack=1")
    ws.send_text("x")
    msg = ws.read_json(timeout=10)
    assert msg.get("sluice") == "error" and msg.get("error") == "disk_error", msg
    ws.close()
    m = srv.metrics()
    assert m.v('sluice_publish_rejected_total{reason="disk_error"}') >= 3
    assert m.v("sluice_spill_write_errors_total") >= 1
    assert srv.get("/healthz").status == 200
    # other topics are not affected
    assert srv.publish("lossy", "still fine")


# =============================================================================================
# Recovery that cuts the log's tail never gives an id out twice
# =============================================================================================

def test_ids_of_a_cut_tail_are_never_reused(sluice_factory):
    topics = [("ll-*", dict(LOSSLESS, fsync="always"))]
    srv = start(sluice_factory, topics=topics)
    t = "ll-cut"
    n = 20
    watcher = sse_open(srv, f"/topics/{t}")
    ids = srv.publish_batch(t, [payload(i, DMG_MSG) for i in range(n)])
    seen = {e["id"]: e["data"] for e in watcher.read_events(n)}
    assert list(seen) == ids
    watcher.close()
    srv.signal(signal.SIGKILL)
    srv.wait_exit(5)
    # the last two records are cut: a torn write in the middle of the one before last
    last = segment_files(topic_dir(srv, t))[-1]
    offs = msg_offsets(last.read_bytes())
    os.truncate(last, offs[n - 2] + 100)

    srv = restart(sluice_factory, srv)
    assert problem_lines(srv.logs()), "the cut was not logged"
    # a client that saw the lost ids resumes from the last one, another from before them
    a = sse_open(srv, f"/topics/{t}", headers={"Last-Event-ID": ids[-1]})
    b = sse_open(srv, f"/topics/{t}", headers={"Last-Event-ID": ids[n - 3]})
    live = srv.publish(t, "after the cut")
    assert live not in seen, f"id {live} given again, to another message"
    for name, sub in (("a", a), ("b", b)):
        got = []
        while not got or got[-1]["event"] is not None:
            got.append(sub.read_event(10))
        msgs = [e for e in got if e["event"] is None]
        for e in msgs:
            assert seen.get(e["id"], e["data"]) == e["data"], \
                f"{name}: a different message under id {e['id']} it already saw"
        assert msgs[-1]["data"] == "after the cut", f"{name}: {got}"
        if name == "b":   # it is told what it cannot get again
            gaps = [json.loads(e["data"]) for e in got if e["event"] == "sluice.gap"]
            assert gaps and gaps[0]["from"] == ids[n - 2], got
        sub.close()


def test_a_shutdown_syncs_many_logs_together_and_each_starts_clean(sluice_factory):
    """At exit each log's last segment sync, cursor file and clean-shutdown record are written
    first and then synced side by side, 64 logs a batch (store/lossless.c, "the exit's
    syncs"). With more logs than a batch, every one comes back from its record, with its
    cursor's last acknowledgement and every message, and no temporary file is left."""
    srv = start(sluice_factory,
                topics=[("many-*", {"durability": "lossless", "fsync": "interval"})])
    ids = {}
    for k in range(70):
        t = f"many-{k}"
        sse_open(srv, f"/topics/{t}?durable=c&from=oldest").close()
        ids[t] = srv.publish_batch(t, [payload(i, 64) for i in range(3)])
        ack_ok(srv, t, "c", ids[t][1])
    srv = restart(sluice_factory, srv)
    logs = srv.logs()
    for t, tid in ids.items():
        assert re.search(rf"topic={t} [^\n]*start=clean", logs), f"{t}:\n{logs[-3000:]}"
        assert cursors(srv, t)["c"]["checkpoint"] == tid[1], cursors(srv, t)
        left = [p.name for p in topic_dir(srv, t).iterdir() if p.name.endswith(".tmp")]
        assert not left, f"{t}: {left}"
        sub = sse_open(srv, f"/topics/{t}?from=oldest")
        got = read_until_seq(sub, parse_id(tid[-1])[1])
        sub.close()
        assert [(e["id"], e["data"]) for e in got] == [(tid[i], payload(i, 64)) for i in range(3)]
