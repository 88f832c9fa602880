"""Every way to say where a stream starts: since=, Last-Event-ID, ?lastEventId=, from=oldest,
the default; past retention (gap), another epoch (reset), malformed ids (400)."""

import json

import pytest

from sluice_client import parse_id

TOPICS = {"*": {"max_messages": 100}, "small/*": {"max_messages": 5}}


@pytest.fixture
def srv(sluice_factory):
    return sluice_factory(topics=TOPICS)


def publish_n(srv, topic, n, prefix="m"):
    return [srv.publish(topic, f"{prefix}{i}") for i in range(n)]


def assert_stream(sub, want_ids, srv, topic):
    """The stream delivers exactly want_ids in order, then (after a live publish) the live
    message and nothing else."""
    got = sub.read_events(len(want_ids))
    assert [e["id"] for e in got] == want_ids
    assert all(e["event"] is None for e in got)
    live = srv.publish(topic, "live")
    e = sub.read_event()
    assert e["id"] == live, f"expected the live message next, got {e}"
    assert sub.no_event_within(0.3), f"unexpected extra event {getattr(sub, 'unexpected', None)}"


@pytest.mark.parametrize("how", ["since", "header", "query"])
def test_resume_within_retention(srv, how):
    topic = f"res-{how}"
    ids = publish_n(srv, topic, 6)
    after = ids[1]
    if how == "since":
        sub = srv.sse(f"/topics/{topic}?since={after}")
    elif how == "header":
        sub = srv.sse(f"/topics/{topic}", headers={"Last-Event-ID": after})
    else:
        sub = srv.sse(f"/topics/{topic}?lastEventId={after}")
    assert sub.status == 200
    sub.read_retry()
    assert_stream(sub, ids[2:], srv, topic)
    sub.close()


def test_since_takes_precedence_over_last_event_id(srv):
    ids = publish_n(srv, "prec", 6)
    sub = srv.sse(f"/topics/prec?since={ids[3]}&lastEventId={ids[0]}",
                  headers={"Last-Event-ID": ids[1]})
    assert_stream(sub, ids[4:], srv, "prec")
    sub.close()
    sub = srv.sse(f"/topics/prec?lastEventId={ids[0]}", headers={"Last-Event-ID": ids[2]})
    got = sub.read_events(3)
    assert got[0]["id"] == ids[3], "Last-Event-ID header must win over ?lastEventId="
    sub.close()


def test_resume_at_head_gets_only_new(srv):
    ids = publish_n(srv, "athead", 3)
    sub = srv.sse(f"/topics/athead?since={ids[-1]}")
    sub.read_retry()
    assert sub.no_event_within(0.3)
    assert_stream(sub, [], srv, "athead")
    sub.close()


def test_from_oldest(srv):
    ids = publish_n(srv, "oldest", 4)
    sub = srv.sse("/topics/oldest?from=oldest")
    sub.read_retry()
    assert_stream(sub, ids, srv, "oldest")
    sub.close()


def test_default_start_is_new_messages_only(srv):
    publish_n(srv, "fresh", 3)
    sub = srv.sse("/topics/fresh")
    sub.read_retry()
    assert sub.no_event_within(0.3), "a default subscription replayed old messages"
    assert_stream(sub, [], srv, "fresh")
    sub.close()


def test_from_oldest_past_eviction_returns_retained_only(srv):
    ids = publish_n(srv, "small/ring", 12)
    sub = srv.sse("/topics/small/ring?from=oldest")
    got = sub.read_events(5)
    assert [e["id"] for e in got] == ids[7:], "from=oldest must be exactly what is retained"
    assert all(e["event"] is None for e in got), "from=oldest is not a gap"
    sub.close()


@pytest.mark.parametrize("how", ["since", "header", "query"])
def test_resume_past_retention_gets_gap(srv, how):
    topic = f"small/gap-{how}"
    before = srv.metrics()
    ids = publish_n(srv, topic, 12)  # seq 1..12, retained 8..12
    epoch, _ = parse_id(ids[0])
    after = ids[1]  # seq 2: missed 3..7
    if how == "since":
        sub = srv.sse(f"/topics/{topic}?since={after}")
    elif how == "header":
        sub = srv.sse(f"/topics/{topic}", headers={"Last-Event-ID": after})
    else:
        sub = srv.sse(f"/topics/{topic}?lastEventId={after}")
    sub.read_retry()
    gap = sub.read_event()
    assert gap["event"] == "sluice.gap", f"first event must be the gap marker, got {gap}"
    body = json.loads(gap["data"])
    assert body["topic"] == topic
    assert body["from"] == f"{epoch}-3"
    assert body["to"] == f"{epoch}-7"
    assert body["missed"] == 5
    assert body["reason"] == "evicted"
    assert gap["id"] == f"{epoch}-7", "a single-topic gap carries id: <to>"
    assert_stream(sub, ids[7:], srv, topic)
    sub.close()
    after_m = srv.metrics()
    assert after_m.v('sluice_gaps_total{reason="evicted"}') - \
        before.v('sluice_gaps_total{reason="evicted"}') == 1
    assert after_m.v("sluice_gap_messages_total") - before.v("sluice_gap_messages_total") == 5


def test_reconnect_after_gap_does_not_repeat_it(srv):
    ids = publish_n(srv, "small/regap", 12)
    sub = srv.sse(f"/topics/small/regap?since={ids[0]}")
    gap = sub.read_event()
    assert gap["event"] == "sluice.gap"
    sub.close()
    # a browser reconnects with the last id it saw: the gap's
    sub2 = srv.sse("/topics/small/regap", headers={"Last-Event-ID": gap["id"]})
    got = sub2.read_events(5)
    assert [e["id"] for e in got] == ids[7:]
    sub2.close()


def test_resume_from_seq_zero_past_retention(srv):
    ids = publish_n(srv, "small/zero", 8)  # retained 4..8
    epoch, _ = parse_id(ids[0])
    sub = srv.sse(f"/topics/small/zero?since={epoch}-0")
    gap = sub.read_event()
    assert gap["event"] == "sluice.gap"
    body = json.loads(gap["data"])
    assert (body["from"], body["to"], body["missed"]) == (f"{epoch}-1", f"{epoch}-3", 3)
    got = sub.read_events(5)
    assert [e["id"] for e in got] == ids[3:]
    sub.close()


@pytest.mark.parametrize("how", ["since", "header", "query"])
def test_id_from_other_epoch_resets(srv, how):
    topic = f"reset-{how}"
    ids = publish_n(srv, topic, 3)
    epoch, _ = parse_id(ids[0])
    assert epoch != "0000000000000000"
    other = "0000000000000000-5"
    if how == "since":
        sub = srv.sse(f"/topics/{topic}?since={other}")
    elif how == "header":
        sub = srv.sse(f"/topics/{topic}", headers={"Last-Event-ID": other})
    else:
        sub = srv.sse(f"/topics/{topic}?lastEventId={other}")
    sub.read_retry()
    reset = sub.read_event()
    assert reset["event"] == "sluice.reset", f"expected sluice.reset, got {reset}"
    body = json.loads(reset["data"])
    assert body == {"topic": topic, "epoch": epoch, "reason": "epoch"}
    # then the stream restarts from the oldest retained message
    assert_stream(sub, ids, srv, topic)
    sub.close()


BAD_IDS = ["zzz", "123", "0123456789abcdef", "0123456789abcdef-", "0123456789abcdef-1x",
           "0123456789abcde-1", "0123456789abcdef0-1", "0123456789abcdeg-1",
           "0123456789abcdef--1", "0123456789abcdef-+1", "-1", "0123456789abcdef-1 2",
           "0123456789abcdef-99999999999999999999999999"]


@pytest.mark.parametrize("how", ["since", "header", "query"])
def test_malformed_id_is_400(srv, how):
    srv.publish("badid", "x")
    for bad in BAD_IDS:
        q = bad.replace(" ", "%20").replace("+", "%2B")
        if how == "since":
            sub = srv.sse(f"/topics/badid?since={q}")
        elif how == "header":
            sub = srv.sse("/topics/badid", headers={"Last-Event-ID": bad})
        else:
            sub = srv.sse(f"/topics/badid?lastEventId={q}")
        assert sub.status == 400, f"{how} {bad!r}: got {sub.status}"
        assert sub.response.json()["error"] == "bad_id", (bad, sub.response)
        sub.close()


def test_bad_from_value_is_400(srv):
    sub = srv.sse("/topics/badfrom?from=newest")
    assert sub.status == 400
    assert sub.response.json()["error"] == "bad_query"
    sub.close()


def test_multi_topic_resume_past_retention_gap_from_known(srv):
    sub = srv.sse("/sse?topic=mk/other")
    sub.read_retry()
    srv.publish("mk/other", "o1")
    last_id = sub.read_event()["id"]
    sub.close()
    # a topic whose whole log comes after the resume point; 8 messages, 5 retained
    ids = publish_n(srv, "small/newt", 8)
    epoch, _ = parse_id(ids[0])
    sub = srv.sse("/sse?topic=small/newt&topic=mk/other", headers={"Last-Event-ID": last_id})
    gap = sub.read_event()
    assert gap["event"] == "sluice.gap", gap
    body = json.loads(gap["data"])
    assert body["topic"] == "small/newt"
    assert (body["from"], body["to"], body["missed"], body["reason"]) == \
        (f"{epoch}-1", f"{epoch}-3", 3, "evicted"), body
    got = sub.read_events(5)
    assert [e["data"] for e in got] == [f"m{i}" for i in range(3, 8)]
    assert all(e["id"].endswith(":small/newt") for e in got)
    assert sub.no_event_within(0.3)
    sub.close()


def test_multi_topic_resume_past_retention_gap_from_unknown(srv):
    sub = srv.sse("/sse?topic=small/ma&topic=small/mb")
    sub.read_retry()
    srv.publish("small/ma", "a1")
    last_id = sub.read_event()["id"]
    sub.close()
    ids = [srv.publish("small/ma", f"a{i}") for i in range(2, 10)]  # seq 2..9, kept 5..9
    epoch, _ = parse_id(ids[0])
    srv.publish("small/mb", "b1")
    srv.publish("small/mb", "b2")
    sub = srv.sse("/sse?topic=small/ma&topic=small/mb", headers={"Last-Event-ID": last_id})
    gap = sub.read_event()
    assert gap["event"] == "sluice.gap", gap
    body = json.loads(gap["data"])
    assert body["topic"] == "small/ma" and body["reason"] == "evicted"
    assert body["to"] == f"{epoch}-4", "`to` is always exact"
    assert body["from"] in (None, f"{epoch}-2"), body
    # protocol: when the first missed message is unknown, `from` and `missed` are both null;
    # when it is known, the gap is exact.
    if body["from"] is None:
        assert body["missed"] is None, f"missed must be null with from null, got {body!r}"
    else:
        assert body["missed"] == 3, body


def test_multi_topic_resume_from_other_stream_epoch_resets(srv):
    a = publish_n(srv, "mr/a", 2, "a")
    b = publish_n(srv, "mr/b", 2, "b")
    sub = srv.sse("/sse?topic=mr/a&topic=mr/b",
                  headers={"Last-Event-ID": "0000000000000000-3:mr/a"})
    resets = [sub.read_event(), sub.read_event()]
    assert {r["event"] for r in resets} == {"sluice.reset"}, resets
    bodies = {json.loads(r["data"])["topic"]: json.loads(r["data"]) for r in resets}
    assert bodies == {
        "mr/a": {"topic": "mr/a", "epoch": parse_id(a[0])[0], "reason": "epoch"},
        "mr/b": {"topic": "mr/b", "epoch": parse_id(b[0])[0], "reason": "epoch"},
    }
    got = sub.read_events(4)
    assert [e["data"] for e in got] == ["a0", "a1", "b0", "b1"], "restart from the oldest"
    sub.close()
