"""Slow and stalled readers: `skip` (explicit gap markers), `disconnect` (overflow marker, then
close), the write-stall timeout. A fast reader on the same topic must lose nothing, and a stalled
reader must not make the server hold what it has not read (FAILURES.md #1, #2)."""

import json
import time

import pytest

from sluice_client import Collector, Publisher, parse_id, wait_until

PAYLOAD = 16000   # bytes per message
COUNT = 400       # 6.4 MB: far more than a stalled socket pair absorbs (~3.3 MB on loopback)
STALL_RCVBUF = 4096


def payload(i):
    return f"{i:05d}:" + "x" * PAYLOAD


def last_marker(b):
    """The block that completes the stream: the last message, or a gap that covers it."""
    if b["data"] is None:
        return False
    if b["event"] == "sluice.gap":
        try:
            return parse_id(json.loads(b["data"])["to"])[1] == COUNT
        except (ValueError, KeyError, AssertionError):
            return False
    return b["data"].startswith(f"{COUNT - 1:05d}:")


def start_fast(srv, path):
    fast = srv.sse(path)
    fast.read_retry()
    col = Collector(fast, last_marker, timeout=60)
    col.start()
    return fast, col


def start_stalled(srv, path):
    """A subscriber with a tiny receive buffer that reads only the response head."""
    st = srv.sse(path, rcvbuf=STALL_RCVBUF)
    assert st.status == 200
    st.read_retry()
    return st


FAST_LAG = 10  # how far behind the publisher a "fast" reader may fall, in messages


def publish_volume(srv, topic, fast=None):
    """Publishes COUNT messages over one keep-alive connection. With `fast` (a Collector) it
    paces itself so that reader stays within FAST_LAG messages: a fast reader is one that keeps
    up, whatever the speed of this machine."""
    pub = Publisher(srv.port)
    ids = []
    for i in range(COUNT):
        if fast is not None:
            wait_until(lambda: fast.nevents >= i - FAST_LAG or not fast.is_alive(), 10,
                       msg=f"fast reader within {FAST_LAG} messages of {i}")
        ids.append(pub.publish(topic, payload(i)))
    pub.close()
    return ids


def assert_fast_reader_complete(col, ids):
    col.join(60)
    assert col.done, f"fast reader did not finish: error={col.error} closed={col.closed} " \
                     f"got={len(col.events())}"
    evs = col.events()
    assert [e["event"] for e in evs if e["event"]] == [], \
        f"the fast reader got control events: {[e for e in evs if e['event']][:3]}"
    assert [e["id"] for e in evs] == ids, "the fast reader lost or reordered messages"


def check_continuity(blocks, first_seq, last_seq, gap_reason):
    """Messages and gap markers together cover first..last exactly once, in order. Returns
    (gaps, delivered)."""
    expected = first_seq
    gaps = []
    delivered = 0
    epoch = None
    for b in blocks:
        if b["data"] is None:
            continue
        if b["event"] == "sluice.gap":
            g = json.loads(b["data"])
            ep_from, s_from = parse_id(g["from"])
            ep_to, s_to = parse_id(g["to"])
            assert s_from == expected, f"gap starts at {s_from}, expected {expected}: {g}"
            assert s_to >= s_from
            assert g["missed"] == s_to - s_from + 1, g
            assert g["reason"] == gap_reason, g
            assert b["id"] == g["to"], "a single-topic gap carries id: <to>"
            gaps.append(g)
            expected = s_to + 1
            continue
        assert b["event"] is None, f"unexpected control event {b}"
        ep, seq = parse_id(b["id"])
        epoch = epoch or ep
        assert ep == epoch
        assert seq == expected, f"got seq {seq}, expected {expected}"
        assert b["data"].startswith(f"{seq - 1:05d}:")
        expected += 1
        delivered += 1
    assert expected == last_seq + 1, f"stream ended at {expected - 1}, expected {last_seq}"
    return gaps, delivered


def test_skip_policy_stalled_reader_gets_gap_fast_reader_loses_nothing(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "60s"},
                         topics={"*": {"max_messages": 100, "overflow": "skip"}})
    fast, col = start_fast(srv, "/topics/sk")
    stalled = start_stalled(srv, "/topics/sk")
    before = srv.metrics()

    ids = publish_volume(srv, "sk", col)
    assert_fast_reader_complete(col, ids)

    # while stalled, the server holds at most the ring and one in-flight write for it
    m = srv.metrics()
    assert m.v("sluice_memory_accounted_bytes") < 4 * 1024 * 1024, \
        f"stalled reader made the server hold {m.v('sluice_memory_accounted_bytes')} bytes"

    # now the stalled reader starts reading
    rest = Collector(stalled, last_marker, timeout=30)
    rest.run()
    assert rest.done, f"stalled reader never reached the last message: {rest.error}"
    gaps, delivered = check_continuity(rest.blocks, 1, COUNT, "evicted")
    assert gaps, "the stalled reader fell behind the ring but got no gap marker"
    assert delivered < COUNT
    assert rest.blocks[-1]["event"] is None, "after an eviction gap the stream resumes at the tail"

    after = srv.metrics()
    assert after.v('sluice_gaps_total{reason="evicted"}') - \
        before.v('sluice_gaps_total{reason="evicted"}') >= len(gaps)
    assert after.v("sluice_gap_messages_total") - before.v("sluice_gap_messages_total") == \
        sum(g["missed"] for g in gaps)
    assert after.v("sluice_deliveries_total") - before.v("sluice_deliveries_total") == \
        COUNT + delivered
    fast.close()
    stalled.close()


LAG_CONF = {
    "lag_hard": {"lag_hard_messages": 40},
    "lag_soft": {"lag_soft_messages": 20, "lag_soft": "1s"},
    "lag_age": {"lag_max_age": "1s"},
}


@pytest.mark.parametrize("reason", list(LAG_CONF))
def test_skip_policy_lag_limit_gap(sluice_factory, reason):
    conf = {"max_messages": 1000, "overflow": "skip"}
    conf.update(LAG_CONF[reason])
    srv = sluice_factory(server={"write_stall_timeout": "60s"}, topics={"*": conf})
    fast, col = start_fast(srv, "/topics/lh")
    stalled = start_stalled(srv, "/topics/lh")
    before = srv.metrics()
    ids = publish_volume(srv, "lh", col)
    assert_fast_reader_complete(col, ids)
    if reason != "lag_hard":
        time.sleep(2.5)  # soft and age limits act after a while, from the sweep
    rest = Collector(stalled, last_marker, timeout=30)
    rest.run()
    assert rest.done, f"stalled reader never reached the last message: {rest.error}"
    gaps, _ = check_continuity(rest.blocks, 1, COUNT, reason)
    assert gaps, f"the stalled reader exceeded its {reason} limit but got no gap marker"
    after = srv.metrics()
    assert after.v(f'sluice_gaps_total{{reason="{reason}"}}') > \
        before.v(f'sluice_gaps_total{{reason="{reason}"}}')
    assert after.v('sluice_gaps_total{reason="evicted"}') == \
        before.v('sluice_gaps_total{reason="evicted"}'), "nothing was evicted (1000-message ring)"
    fast.close()
    stalled.close()


DISCONNECT_CONF = {
    "lag_hard": ({"max_messages": 1000, "lag_hard_messages": 50}, 50),
    "evicted": ({"max_messages": 100}, 1),
}


@pytest.mark.parametrize("reason", list(DISCONNECT_CONF))
def test_disconnect_policy_overflow_marker_then_close(sluice_factory, reason):
    conf, min_missed = DISCONNECT_CONF[reason]
    srv = sluice_factory(server={"write_stall_timeout": "60s"},
                         topics={"*": {"max_messages": 1000},
                                 "strict/*": dict(conf, overflow="disconnect")})
    fast, col = start_fast(srv, "/topics/strict/d")
    stalled = start_stalled(srv, "/topics/strict/d")
    before = srv.metrics()
    ids = publish_volume(srv, "strict/d", col)
    assert_fast_reader_complete(col, ids)
    srv.wait_metric(f'sluice_overflow_disconnects_total{{reason="{reason}"}}',
                    lambda v: v >= before.v(
                        f'sluice_overflow_disconnects_total{{reason="{reason}"}}') + 1,
                    timeout=10)

    # the stalled reader drains what was in flight, then the overflow event, then EOF
    blocks = stalled.read_all_until_closed(timeout=20)
    evs = [b for b in blocks if b["data"] is not None]
    assert evs, "the stalled reader got nothing at all"
    last = evs[-1]
    assert last["event"] == "sluice.overflow", f"last event must be sluice.overflow: {last}"
    body = json.loads(last["data"])
    assert body["topic"] == "strict/d"
    assert body["reason"] == reason
    assert isinstance(body["missed"], int) and body["missed"] >= min_missed, body
    msgs = evs[:-1]
    assert all(e["event"] is None for e in msgs), "no gap markers under policy disconnect"
    assert [e["id"] for e in msgs] == ids[:len(msgs)], "messages before the overflow in order"
    assert len(msgs) < COUNT

    m = srv.wait_metric('sluice_connections_closed_total{reason="overflow"}',
                        lambda v: v >= before.v(
                            'sluice_connections_closed_total{reason="overflow"}') + 1,
                        timeout=5)
    assert m.v(f'sluice_overflow_disconnects_total{{reason="{reason}"}}') - \
        before.v(f'sluice_overflow_disconnects_total{{reason="{reason}"}}') == 1, \
        "only the stalled reader overflowed"
    assert m.v('sluice_subscribers{transport="sse"}') == 1, "the fast reader stays subscribed"
    fast.close()
    stalled.close()


def test_disconnect_policy_never_reading_reader_is_closed(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "2s"},
                         topics={"*": {"max_messages": 1000, "overflow": "disconnect",
                                       "lag_hard_messages": 50}})
    fast, col = start_fast(srv, "/topics/nr")
    stalled = start_stalled(srv, "/topics/nr")
    base = srv.metrics()
    ids = publish_volume(srv, "nr", col)
    assert_fast_reader_complete(col, ids)
    m = srv.wait_metric('sluice_subscribers{transport="sse"}', lambda v: v == 1, timeout=10)
    assert m.v('sluice_overflow_disconnects_total{reason="lag_hard"}') - \
        base.v('sluice_overflow_disconnects_total{reason="lag_hard"}') == 1
    assert m.v("sluice_connections") == base.v("sluice_connections") - 1
    fast.close()
    stalled.close()


def test_write_stall_closes_stalled_reader(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "2s"},
                         topics={"*": {"max_messages": 100, "overflow": "skip"}})
    base = srv.metrics()
    stalled = start_stalled(srv, "/topics/ws")
    m = srv.metrics()
    assert m.v("sluice_connections") == base.v("sluice_connections") + 1
    assert m.v('sluice_subscribers{transport="sse"}') == 1
    publish_volume(srv, "ws")
    srv.wait_metric('sluice_connections_closed_total{reason="write_stall"}',
                    lambda v: v == base.v(
                        'sluice_connections_closed_total{reason="write_stall"}') + 1,
                    timeout=12)
    m = srv.wait_metric("sluice_connections", lambda v: v == base.v("sluice_connections"),
                        timeout=5)
    assert m.v('sluice_subscribers{transport="sse"}') == 0
    # the client side sees the end of the stream once it reads
    assert stalled.wait_closed(10), "the stalled connection was not really closed"
    stalled.close()


def test_slow_reader_within_limits_loses_nothing(sluice_factory):
    """A reader that reads slowly but keeps up within the ring gets every message, no gap."""
    srv = sluice_factory(topics={"*": {"max_messages": 1000, "overflow": "skip"}})
    sub = srv.sse("/topics/slow", rcvbuf=STALL_RCVBUF)
    sub.read_retry()
    pub = Publisher(srv.port)
    ids = [pub.publish("slow", f"{i:05d}:" + "y" * 1000) for i in range(300)]
    pub.close()
    got = sub.read_events(300, timeout=30)
    assert [e["id"] for e in got] == ids
    assert not any(e["event"] for e in got)
    sub.close()


def test_stalled_reader_does_not_block_publishing(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "60s"},
                         topics={"*": {"max_messages": 50}})
    stalled = [start_stalled(srv, "/topics/blk") for _ in range(5)]
    publish_volume(srv, "blk")  # each publish must be answered despite the stalled readers
    r = srv.get("/healthz", timeout=2)
    assert r.status == 200
    t = srv.topics()["blk"]
    assert t["messages"] == 50 and t["readers"] == 5
    for s in stalled:
        s.close()
    wait_until(lambda: srv.metrics().v('sluice_subscribers{transport="sse"}') == 0, 10,
               msg="stalled readers gone after the client closed")
