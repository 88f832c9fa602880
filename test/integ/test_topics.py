"""Topic settings: heartbeats, idle TTL, retention by age, bytes and count; GET /topics."""

import json
import re
import time

from sluice_client import SSEClient, parse_id, wait_until

TOPICS = {
    "*": {"max_messages": 100},
    "hb/*": {"heartbeat": "1s"},
    "hbe/*": {"heartbeat": "1s", "heartbeat_event": "true"},
    "nohb/*": {"heartbeat": "0"},
    "age/*": {"max_age": "1s"},
    "mb/*": {"max_bytes": 1000},
    "mm/*": {"max_messages": 4},
}


def test_heartbeat_comment(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    sub = srv.sse("/topics/hb/x")
    sub.read_retry()
    t0 = time.monotonic()
    for _ in range(2):
        b = sub.read_block(2.5)
        assert b["data"] is None and b["comments"] == ["hb"], f"expected ': hb', got {b}"
        assert b["id"] is None
    assert time.monotonic() - t0 < 4.5
    # a heartbeat never disturbs the event stream
    mid = srv.publish("hb/x", "after heartbeats")
    assert sub.read_event(3)["id"] == mid
    sub.close()


def test_heartbeat_event(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    sub = srv.sse("/topics/hbe/x")
    sub.read_retry()
    b = sub.read_block(2.5)
    assert b["event"] == "sluice.heartbeat", f"expected a heartbeat event, got {b}"
    body = json.loads(b["data"])
    assert set(body) == {"ts"}
    assert isinstance(body["ts"], int)
    assert abs(body["ts"] - time.time() * 1000) < 60_000, "ts is unix milliseconds"
    # a heartbeat must not move the browser's lastEventId
    assert b["id"] is None, "a heartbeat carries no id"
    sub.close()


def test_no_heartbeat_when_disabled(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    sub = srv.sse("/topics/nohb/x")
    sub.read_retry()
    try:
        b = sub.read_block(2.5)
        raise AssertionError(f"heartbeat 0 must mean no heartbeat, got {b}")
    except TimeoutError:
        pass
    sub.close()


def test_idle_topic_is_freed_after_ttl(sluice_factory):
    srv = sluice_factory(server={"topic_idle_ttl": "1s"}, topics=TOPICS)
    sub = srv.sse("/topics/ttl/a")
    sub.read_retry()
    t = srv.topics()["ttl/a"]
    assert t["readers"] == 1 and t["messages"] == 0
    epoch1 = t["epoch"]
    time.sleep(1.5)
    assert "ttl/a" in srv.topics(), "a topic with a reader must not be freed"
    sub.close()
    wait_until(lambda: "ttl/a" not in srv.topics(), 5, msg="idle topic freed")
    # a later use creates a new log with a new epoch
    sub = srv.sse("/topics/ttl/a")
    sub.read_retry()
    epoch2 = srv.topics()["ttl/a"]["epoch"]
    assert epoch2 != epoch1
    sub.close()


def test_topic_with_messages_is_not_freed(sluice_factory):
    srv = sluice_factory(server={"topic_idle_ttl": "1s"}, topics=TOPICS)
    srv.publish("keep/me", "x")
    before = srv.metrics().v("sluice_topics")
    time.sleep(2.5)
    assert srv.topics()["keep/me"]["messages"] == 1
    assert srv.metrics().v("sluice_topics") == before


def test_aged_out_topic_is_freed_and_restarts(sluice_factory):
    srv = sluice_factory(server={"topic_idle_ttl": "1s"}, topics=TOPICS)
    first = srv.publish("age/gone", "old")
    wait_until(lambda: "age/gone" not in srv.topics(), 6, msg="aged-out topic freed")
    second = srv.publish("age/gone", "new")
    assert parse_id(second)[0] != parse_id(first)[0], "a recreated topic has a new epoch"
    assert parse_id(second)[1] == 1


def test_max_age_eviction(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    before = srv.metrics()
    old = [srv.publish("age/x", f"old{i}") for i in range(3)]
    time.sleep(2.2)
    new = [srv.publish("age/x", f"new{i}") for i in range(2)]
    sub = srv.sse("/topics/age/x?from=oldest")
    sub.read_retry()
    got = sub.read_events(2)
    assert [e["id"] for e in got] == new
    assert sub.no_event_within(0.3)
    sub.close()
    t = srv.topics()["age/x"]
    assert t["messages"] == 2 and t["tail"] == new[0] and t["head"] == new[1]
    m = srv.metrics()
    assert m.v('sluice_evictions_total{reason="max_age"}') - \
        before.v('sluice_evictions_total{reason="max_age"}') == len(old)


def test_max_age_evicts_without_new_publishes(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    srv.publish("age/quiet", "a")
    srv.publish("age/quiet", "b")
    wait_until(lambda: srv.topics()["age/quiet"]["messages"] == 0, 5,
               msg="aged messages evicted by the sweep")
    t = srv.topics()["age/quiet"]
    assert t["head"] is None and t["tail"] is None


def test_max_bytes_eviction(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    before = srv.metrics()
    ids = [srv.publish("mb/x", "b" * 300) for _ in range(10)]
    t = srv.topics()["mb/x"]
    assert t["bytes"] <= 1000
    assert t["messages"] == 3 and t["bytes"] == 900
    assert t["tail"] == ids[7] and t["head"] == ids[9]
    m = srv.metrics()
    assert m.v('sluice_evictions_total{reason="max_bytes"}') - \
        before.v('sluice_evictions_total{reason="max_bytes"}') == 7


def test_max_messages_eviction(sluice_factory):
    srv = sluice_factory(topics=TOPICS)
    before = srv.metrics()
    ids = [srv.publish("mm/x", f"{i}") for i in range(10)]
    t = srv.topics()["mm/x"]
    assert t["messages"] == 4 and t["tail"] == ids[6] and t["head"] == ids[9]
    m = srv.metrics()
    assert m.v('sluice_evictions_total{reason="max_messages"}') - \
        before.v('sluice_evictions_total{reason="max_messages"}') == 6


def test_topics_json_fields(sluice):
    ids = [sluice.publish("info/x", "a" * n) for n in (1, 2, 3)]
    sub = SSEClient(sluice.port, "/topics/info/x")
    sub.read_retry()
    sub2 = SSEClient(sluice.port, "/topics/info/empty")
    sub2.read_retry()
    ts = sluice.topics()
    t = ts["info/x"]
    assert set(t) >= {"name", "epoch", "head", "tail", "messages", "bytes", "readers"}
    assert re.match(r"^[0-9a-f]{16}$", t["epoch"])
    assert t["epoch"] == parse_id(ids[0])[0]
    assert (t["head"], t["tail"], t["messages"], t["bytes"], t["readers"]) == \
        (ids[2], ids[0], 3, 6, 1)
    e = ts["info/empty"]
    assert (e["head"], e["tail"], e["messages"], e["bytes"], e["readers"]) == \
        (None, None, 0, 0, 1)
    sub.close()
    sub2.close()
    wait_until(lambda: sluice.topics()["info/x"]["readers"] == 0, 3, msg="reader detached")
