"""Where a WebSocket stream starts (docs/protocol.md "WebSocket" / "Receiving" and "Control
messages"): format=json ids and sids, ?since= / ?lastEventId= / ?from=oldest, resets from another
epoch and gaps past retention, on single-topic and multi-topic connections."""

import json

import pytest

from sluice_client import MULTI_ID_RE, parse_id, parse_multi_id
from ws_client import CONTROL_PREFIX, OP_TEXT, WSConn

TOPICS = {"*": {"max_messages": 100}, "small/*": {"max_messages": 5}}


@pytest.fixture
def srv(sluice_factory):
    return sluice_factory(topics=TOPICS)


def ws_open(srv, path):
    c = WSConn(srv.port, path)
    assert c.status == 101 and c.ok, f"handshake for {path}: {c.response}"
    return c


def publish_n(srv, topic, n, prefix="m"):
    return [srv.publish(topic, f"{prefix}{i}") for i in range(n)]


def read_item(c):
    """('msg', envelope) or ('ctl', control dict) for the next json-format message."""
    m = c.read_message()
    assert m.opcode == OP_TEXT, m
    d = m.json()
    if m.payload.startswith(CONTROL_PREFIX):
        assert list(d)[0] == "sluice", d
        return "ctl", d
    assert "sluice" not in d, d
    return "msg", d


def read_envelopes(c, n):
    out = []
    for _ in range(n):
        kind, d = read_item(c)
        assert kind == "msg", f"unexpected control message {d}"
        out.append(d)
    return out


def assert_then_live_only(c, srv, topic):
    """After the backlog: a live publish comes next, and nothing else."""
    live = srv.publish(topic, "live")
    kind, d = read_item(c)
    assert kind == "msg" and d["id"] == live, f"expected the live message next, got {d}"
    assert c.no_message_within(0.3), f"unexpected extra message {c.unexpected}"


def test_json_envelopes_carry_id_and_sid(srv):
    c = ws_open(srv, "/topics/envid?format=json")
    ids = publish_n(srv, "envid", 3)
    envs = read_envelopes(c, 3)
    assert [e["id"] for e in envs] == ids
    epochs = set()
    for e in envs:
        assert MULTI_ID_RE.match(e["sid"]), e
        ep, _, topic = parse_multi_id(e["sid"])
        assert topic == "envid"
        epochs.add(ep)
    assert len(epochs) == 1
    c.close()


@pytest.mark.parametrize("how", ["since", "lastEventId"])
def test_reconnect_since_gets_exactly_the_missed(srv, how):
    topic = f"rec-{how}"
    c = ws_open(srv, f"/topics/{topic}?format=json")
    first = publish_n(srv, topic, 4, "a")
    got = read_envelopes(c, 4)
    assert [e["id"] for e in got] == first
    c.close()
    missed = publish_n(srv, topic, 5, "b")  # published while disconnected
    c2 = ws_open(srv, f"/topics/{topic}?format=json&{how}={got[-1]['id']}")
    again = read_envelopes(c2, 5)
    assert [e["id"] for e in again] == missed, "exactly the missed messages, in order"
    assert [e["data"] for e in again] == [f"b{i}" for i in range(5)]
    assert_then_live_only(c2, srv, topic)
    c2.close()


def test_resume_in_raw_format(srv):
    ids = publish_n(srv, "rawres", 5)
    c = ws_open(srv, f"/topics/rawres?since={ids[2]}")
    got = c.read_messages(2)
    assert [m.payload for m in got] == [b"m3", b"m4"]
    srv.publish("rawres", "live")
    assert c.read_message().payload == b"live"
    assert c.no_message_within(0.3)
    c.close()


def test_resume_at_head_gets_only_new(srv):
    ids = publish_n(srv, "athead", 3)
    c = ws_open(srv, f"/topics/athead?format=json&since={ids[-1]}")
    assert c.no_message_within(0.3), f"resume at head replayed {c.unexpected}"
    assert_then_live_only(c, srv, "athead")
    c.close()


def test_default_start_is_new_only(srv):
    publish_n(srv, "fresh", 3)
    c = ws_open(srv, "/topics/fresh?format=json")
    assert c.no_message_within(0.3), f"a default connection replayed {c.unexpected}"
    assert_then_live_only(c, srv, "fresh")
    c.close()


def test_from_oldest(srv):
    ids = publish_n(srv, "oldest", 4)
    c = ws_open(srv, "/topics/oldest?format=json&from=oldest")
    assert [e["id"] for e in read_envelopes(c, 4)] == ids
    assert_then_live_only(c, srv, "oldest")
    c.close()


def test_from_oldest_past_eviction_is_retained_only(srv):
    ids = publish_n(srv, "small/ring", 12)
    c = ws_open(srv, "/topics/small/ring?format=json&from=oldest")
    assert [e["id"] for e in read_envelopes(c, 5)] == ids[7:], "no gap for from=oldest"
    c.close()


@pytest.mark.parametrize("fmt", ["json", "raw"])
def test_id_from_other_epoch_resets(srv, fmt):
    topic = f"reset-{fmt}"
    ids = publish_n(srv, topic, 3)
    epoch, _ = parse_id(ids[0])
    assert epoch != "0000000000000000"
    c = ws_open(srv, f"/topics/{topic}?format={fmt}&since=0000000000000000-5")
    m = c.read_message()
    assert m.opcode == OP_TEXT and m.payload.startswith(b'{"sluice":"reset"'), m
    assert m.json() == {"sluice": "reset", "topic": topic, "epoch": epoch, "reason": "epoch"}
    # then the stream restarts from the oldest retained message
    if fmt == "json":
        assert [e["id"] for e in read_envelopes(c, 3)] == ids
    else:
        assert [x.payload for x in c.read_messages(3)] == [b"m0", b"m1", b"m2"]
    assert c.no_message_within(0.3)
    c.close()


@pytest.mark.parametrize("fmt", ["json", "raw"])
def test_resume_past_retention_gets_gap_first(srv, fmt):
    topic = f"small/gap-{fmt}"
    before = srv.metrics()
    ids = publish_n(srv, topic, 12)  # seq 1..12, retained 8..12
    epoch, _ = parse_id(ids[0])
    c = ws_open(srv, f"/topics/{topic}?format={fmt}&since={ids[1]}")  # missed 3..7
    m = c.read_message()
    assert m.opcode == OP_TEXT and m.payload.startswith(b'{"sluice":"gap"'), \
        f"the first message must be the gap marker, got {m}"
    gap = m.json()
    assert gap == {"sluice": "gap", "topic": topic, "from": f"{epoch}-3", "to": f"{epoch}-7",
                   "missed": 5, "reason": "evicted"}, gap
    if fmt == "json":
        assert [e["id"] for e in read_envelopes(c, 5)] == ids[7:]
        assert_then_live_only(c, srv, topic)
    else:
        assert [x.payload for x in c.read_messages(5)] == [f"m{i}".encode() for i in range(7, 12)]
    c.close()
    after = srv.metrics()
    assert after.v('sluice_gaps_total{reason="evicted"}') - \
        before.v('sluice_gaps_total{reason="evicted"}') == 1
    assert after.v("sluice_gap_messages_total") - before.v("sluice_gap_messages_total") == 5


def test_reconnect_after_gap_with_its_to_does_not_repeat_it(srv):
    ids = publish_n(srv, "small/regap", 12)
    c = ws_open(srv, f"/topics/small/regap?format=json&since={ids[0]}")
    kind, gap = read_item(c)
    assert kind == "ctl" and gap["sluice"] == "gap"
    c.close()
    c2 = ws_open(srv, f"/topics/small/regap?format=json&since={gap['to']}")
    assert [e["id"] for e in read_envelopes(c2, 5)] == ids[7:]
    assert c2.no_message_within(0.3)
    c2.close()


def test_multi_topic_resume_with_sid(srv):
    c = ws_open(srv, "/ws?topic=ra&topic=rb")
    srv.publish("ra", "a1")
    srv.publish("rb", "b1")
    got = read_envelopes(c, 2)
    last_sid = got[-1]["sid"]
    assert parse_multi_id(last_sid)[2] == "rb"
    c.close()
    missed = [("ra", "a2"), ("rb", "b2"), ("rc", "c1"), ("ra", "a3"), ("rb", "b3")]
    for t, p in missed:
        srv.publish(t, p)
    c2 = ws_open(srv, f"/ws?topic=ra&topic=rb&since={last_sid}")
    want = [(t, p) for t, p in missed if t != "rc"]
    got2 = read_envelopes(c2, len(want))
    assert [(e["topic"], e["data"]) for e in got2] == want
    assert c2.no_message_within(0.3), f"duplicates after resume: {c2.unexpected}"
    c2.close()
    # the same from the middle, with lastEventId=
    c3 = ws_open(srv, f"/ws?topic=ra&topic=rb&lastEventId={got2[1]['sid']}")
    assert [e["data"] for e in read_envelopes(c3, 2)] == ["a3", "b3"]
    assert c3.no_message_within(0.3)
    c3.close()


def test_multi_topic_from_oldest(srv):
    publish_n(srv, "oa", 2, "a")
    publish_n(srv, "ob", 2, "b")
    c = ws_open(srv, "/ws?topic=oa&topic=ob&from=oldest")
    got = read_envelopes(c, 4)
    assert [(e["topic"], e["data"]) for e in got] == \
        [("oa", "a0"), ("oa", "a1"), ("ob", "b0"), ("ob", "b1")], "all topics in publish order"
    assert c.no_message_within(0.3)
    c.close()


def test_malformed_since_is_400(srv):
    for bad in ["zzz", "0123456789abcdef-", "0123456789abcdeg-1"]:
        c = WSConn(srv.port, f"/topics/bad?since={bad}")
        assert c.status == 400, c.response
        assert json.loads(c.response.body)["error"] == "bad_id"
        c.close()
