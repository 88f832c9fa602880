"""Black-box tests of how sink streams live with their topics: a topic that only sinks follow,
with nothing in its ring and nothing owed, is freed after topic_idle_ttl like any idle topic,
and the sinks follow it again when it comes back; a stream that still holds a batch keeps its
topic; a lossless topic that a sink matches but nobody publishes to leaves nothing on disk, and
its durable cursor is made with its first message (and survives a restart)."""

import json
import signal

import pytest

from conftest import free_port
from test_file_sink import file_sink, payloads, records, wait_for
from test_sinks import start, webhook
from webhook_receiver import Receiver

TTL = {"topic_idle_ttl": "1s"}
LOSSLESS = {"t/*": {"durability": "lossless"}}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def streams(srv):
    return {s["topic"] for s in json.loads(srv.get("/sinks").body)["sinks"][0]["streams"]}


def test_idle_topic_followed_by_file_sink_is_freed_and_followed_again(sluice_factory, tmp_path):
    out = tmp_path / "out"
    srv = start(sluice_factory, tmp_path, {"f": file_sink(out)}, server=TTL,
                topics={"t/*": {"max_age": "1s"}})
    srv.publish("t/a", "one")
    assert wait_for(lambda: payloads(out, "t/a") == ["one"])
    epoch1 = srv.topics()["t/a"]["epoch"]
    # Nothing else reads it and the ring has its message until it ages out: it stays.
    assert "t/a" in streams(srv)
    # Lossy topic, ring emptied by max_age below: freed after the TTL, the stream with it.
    assert wait_for(lambda: "t/a" not in srv.topics(), timeout=20), srv.topics()
    assert wait_for(lambda: "t/a" not in streams(srv))
    assert "sink stream closed: its topic is idle" in srv.logs()
    # The topic comes back: the sink follows it again, into the same directory.
    srv.publish("t/a", "two")
    assert wait_for(lambda: payloads(out, "t/a") == ["one", "two"]), payloads(out, "t/a")
    recs = records(out, "t/a")
    assert recs[0]["id"].split("-")[0] == epoch1
    assert recs[1]["id"].split("-")[0] != epoch1  # a new log, a new epoch
    assert "t/a" in streams(srv)


def test_idle_topic_followed_by_webhook_sink_is_freed_and_followed_again(
        sluice_factory, tmp_path, receiver):
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url("/in"))}, server=TTL,
                topics={"t/*": {"max_age": "1s"}})
    srv.publish("t/a", "one")
    assert receiver.wait(lambda r: r.delivered_payloads() == ["one"])
    assert wait_for(lambda: "t/a" not in srv.topics(), timeout=20), srv.topics()
    assert wait_for(lambda: "t/a" not in streams(srv))
    srv.publish("t/a", "two")
    assert receiver.wait(lambda r: r.delivered_payloads() == ["one", "two"]), \
        receiver.delivered_payloads()


def test_stream_holding_a_batch_keeps_its_topic(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=503)
    # Retries (backoff up to 200 ms, an open breaker for 100 ms) are this test's clock.
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url("/in"), breaker_open="100ms",
                                                        breaker_open_max="100ms")},
                server=TTL, topics={"t/*": {"max_age": "1s"}})
    srv.publish("t/a", "held")
    # The ring lets the message go after 1 s; the stream holds it while the endpoint fails.
    assert srv.wait_metric('sluice_sink_retries_total{sink="s"}', lambda v: v >= 3)
    assert wait_for(lambda: srv.topics().get("t/a", {}).get("messages", 1) == 0, timeout=10)
    retries = srv.metrics().v('sluice_sink_retries_total{sink="s"}')
    # Well past the TTL (measured by the stream's own retries, not by a sleep) it is still there.
    # Mostly an open breaker's 100 ms between probes: seconds past an idle ring,
    # which is a TTL and a sweep.
    assert srv.wait_metric('sluice_sink_retries_total{sink="s"}', lambda v: v >= retries + 20,
                           timeout=60)
    assert "t/a" in srv.topics()
    assert "t/a" in streams(srv)
    receiver.set("ok")
    assert receiver.wait(lambda r: r.delivered_payloads() == ["held"])
    # Delivered: now it is idle, and goes.
    assert wait_for(lambda: "t/a" not in srv.topics(), timeout=20)


def test_lossless_topic_matched_by_sink_leaves_nothing_on_disk(sluice_factory, tmp_path):
    out = tmp_path / "out"
    data = tmp_path / "data"
    port = free_port()
    conf = file_sink(out)
    srv = start(sluice_factory, tmp_path, {"f": conf}, topics=LOSSLESS, server=TTL, data=data,
                port=port)
    sub = srv.sse("/topics/t/x")
    sub.read_retry()
    assert wait_for(lambda: "t/x" in streams(srv))
    # The stream exists: a sink alone made no directory, no cursor file.
    logs = data / "topics"
    assert not logs.exists() or list(logs.iterdir()) == [], list(logs.iterdir())
    sub.close()
    assert wait_for(lambda: "t/x" not in srv.topics(), timeout=20), srv.topics()
    assert not logs.exists() or list(logs.iterdir()) == []
    assert not (out / "t%2Fx").exists()
    # Its first message makes the log and the sink's durable cursor.
    srv.publish("t/x", "first")
    assert wait_for(lambda: payloads(out, "t/x") == ["first"])
    dirs = list(logs.iterdir())
    assert len(dirs) == 1
    assert wait_for(lambda: (dirs[0] / "cursors").exists()
                    and "sink.f " in (dirs[0] / "cursors").read_text())
    # The cursor holds across a restart: what is published meanwhile is delivered once.
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(10) == 0, srv.logs()
    srv2 = start(sluice_factory, tmp_path, {"f": conf}, topics=LOSSLESS, server=TTL, data=data,
                 port=port)
    srv2.publish("t/x", "second")
    assert wait_for(lambda: payloads(out, "t/x") == ["first", "second"]), payloads(out, "t/x")
    # Only "second" was owed after the restart: the cursor was where the first run left it.
    m = srv2.wait_metric('sluice_sink_delivered_messages_total{sink="f"}', lambda v: v >= 1)
    assert m.v('sluice_sink_delivered_messages_total{sink="f"}') == 1
    assert "records already in the file were not written again" not in srv2.logs()
    assert payloads(out, "t/x") == ["first", "second"]
