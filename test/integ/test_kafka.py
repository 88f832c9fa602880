"""Black-box tests of the Kafka source against librdkafka's mock cluster
(build/sluice-kafka-mock, driven through test/integ/kafka_mock.py). The mock's first group
join takes about 3 s, so waits are generous; each test uses its own consumer group."""

import re
import time

from kafka_mock import source_section, unique_group

ID = re.compile(r"^([0-9a-f]{16})-(\d+)$")


def start_source(sluice_factory, mock, topics=None, server=None, limits=None, group=None, **src):
    """A sluice with one [source "k"] reading from the mock cluster."""
    text = source_section("k", mock.bootstrap, group or unique_group(), **src)
    return sluice_factory(server=server, limits=limits, topics=topics, extra_text=text)


def wait_for(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_n(sub, n, timeout=30.0, stall=5.0):
    """n events, failing if none arrives for `stall` seconds (a stall, not a slow run)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} events in {timeout}s"
        out.append(sub.read_event(timeout=stall))
    return out


def test_records_become_events_with_offset_ids(kafka_mock, sluice_factory):
    kafka_mock.topic("orders", 2)
    srv = start_source(sluice_factory, kafka_mock, kafka_topics="orders",
                       topic="shop/{kafka_topic}/{partition}", event="{header:type}")
    kafka_mock.produce("orders", 0, 5, prefix="a", header="type=created")
    kafka_mock.produce("orders", 1, 3, prefix="b")
    wait_for(lambda: "shop/orders/0" in srv.topics() and "shop/orders/1" in srv.topics(), 30,
             "the source's topics")
    sub0 = srv.sse("/topics/shop/orders/0?from=oldest")
    evs = read_n(sub0, 5)
    assert [e["data"] for e in evs] == [f"a{i}" for i in range(5)]
    assert all(e["event"] == "created" for e in evs)
    epochs = {ID.match(e["id"]).group(1) for e in evs}
    assert len(epochs) == 1
    assert [int(ID.match(e["id"]).group(2)) for e in evs] == [1, 2, 3, 4, 5]
    sub1 = srv.sse("/topics/shop/orders/1?from=oldest")
    evs1 = read_n(sub1, 3)
    assert [e["data"] for e in evs1] == ["b0", "b1", "b2"]
    assert evs1[0]["event"] is None  # no header: no event type
    # Another partition, another epoch: ids name (cluster, topic, partition).
    assert ID.match(evs1[0]["id"]).group(1) not in epochs
    # Live: a record produced now arrives with the next offset as its id.
    kafka_mock.produce("orders", 0, 1, prefix="live")
    e = sub0.read_event(timeout=10)
    assert e["data"] == "live0" and e["id"].endswith("-6")
