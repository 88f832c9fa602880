"""Publishing and receiving over SSE: single topic, framing, multi-topic streams, NDJSON."""

import json
import re

from sluice_client import (ID_RE, MULTI_ID_RE, parse_id, parse_multi_id, split_lines)


def test_publish_receive_single_topic(sluice_factory):
    srv = sluice_factory(server={"sse_retry": "1500ms"})
    sub = srv.sse("/topics/news")
    assert sub.status == 200
    assert sub.headers.get("content-type", "").startswith("text/event-stream")
    first = sub.read_block()
    assert first["retry"] == "1500", f"stream must open with retry: 1500, got {first}"
    assert first["data"] is None

    sent = []
    for i in range(5):
        ev = "price" if i % 2 == 0 else None
        payload = f"message {i}"
        mid = srv.publish("news", payload, event=ev)
        assert ID_RE.match(mid), mid
        sent.append((mid, ev, payload))

    got = sub.read_events(5)
    epochs = set()
    seqs = []
    for (mid, ev, payload), e in zip(sent, got):
        assert ID_RE.match(e["id"]), e
        assert e["id"] == mid, "the event id must be the id returned by the publish"
        assert e["event"] == ev
        assert e["data"] == payload
        ep, seq = parse_id(e["id"])
        epochs.add(ep)
        seqs.append(seq)
    assert len(epochs) == 1
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert seqs[0] == 1, "the first message of a new log has seq 1"
    assert sub.no_event_within(0.3)
    sub.close()


def test_publish_response_format(sluice):
    r = sluice.post("/topics/fmt", "x")
    assert r.status == 202
    assert r.headers.get("content-type", "").startswith("application/json")
    body = r.json()
    assert set(body) == {"id"}
    assert ID_RE.match(body["id"])
    ep1, s1 = parse_id(body["id"])
    ep2, s2 = parse_id(sluice.publish("fmt", "y"))
    assert ep1 == ep2 and s2 == s1 + 1


PAYLOADS = [
    "line1\nline2",
    "cr\ronly",
    "crlf\r\nhere",
    "data: x",
    "\n\nevent: evil",
    "x\n\nid: 0000000000000000-99\n\nretry: 1\n\ndata: injected",
    "mixed\r\n\r\nevent: evil\r\rdata: y\n",
    ": not a comment\n:comment too",
    "trailing newline\n",
    "\r\n",
    "event: evil",
    "id: 0000000000000000-1",
    "unicode \u00e9\u4e2d \u2028 sep",
]


def test_sse_framing_cannot_be_injected(sluice):
    sub = sluice.sse("/topics/frame")
    sub.read_retry()
    ids = [sluice.publish("frame", p, event="msg") for p in PAYLOADS]
    end_id = sluice.publish("frame", "END", event="msg")

    events = []
    while True:
        e = sub.read_event(5)
        events.append(e)
        if e["data"] == "END":
            break
    assert len(events) == len(PAYLOADS) + 1, \
        f"a payload produced extra or missing events: {[e['data'] for e in events]}"
    for payload, mid, e in zip(PAYLOADS, ids, events):
        assert e["id"] == mid, f"payload {payload!r} changed the id to {e['id']!r}"
        assert e["event"] == "msg", f"payload {payload!r} changed the event to {e['event']!r}"
        assert e["retry"] is None, f"payload {payload!r} injected a retry field"
        assert e["data"].split("\n") == split_lines(payload), \
            f"payload {payload!r} arrived as {e['data']!r}"
        # every field of the event is id, event or data (payload lines never form a field)
        assert {f for f, _ in e["fields"]} <= {"id", "event", "data"}, e["fields"]
        assert e["comments"] == [], f"payload {payload!r} produced a comment line"
    assert events[-1]["id"] == end_id
    sub.close()


def test_publish_with_bad_event_type(sluice):
    before = sluice.metrics().v('sluice_publish_rejected_total{reason="bad_event"}')
    for ev in ["has%20space", "x" * 65, "semi;colon", "%0Anl"]:
        r = sluice.post(f"/topics/ev?event={ev}", "p")
        assert r.status == 400, (ev, r)
        assert r.json()["error"] == "bad_event", (ev, r)
    ok = sluice.post("/topics/ev?event=" + "a.b_c:d-E9" + "x" * 54, "p")
    assert ok.status == 202, ok  # exactly 64 bytes of the allowed alphabet
    after = sluice.metrics().v('sluice_publish_rejected_total{reason="bad_event"}')
    assert after - before == 4


def test_multi_topic_stream(sluice):
    sub = sluice.sse("/sse?topic=alpha&topic=beta")
    assert sub.status == 200
    sub.read_retry()
    plan = [("alpha", "a1"), ("beta", "b1"), ("gamma", "c1"), ("beta", "b2"), ("alpha", "a2"),
            ("beta", "b3")]
    for topic, payload in plan:
        sluice.publish(topic, payload, event="e" + topic)
    want = [(t, p) for t, p in plan if t != "gamma"]
    got = sub.read_events(len(want))
    epochs = set()
    gseqs = []
    for (topic, payload), e in zip(want, got):
        assert MULTI_ID_RE.match(e["id"]), f"multi-topic id format: {e['id']!r}"
        ep, gseq, t = parse_multi_id(e["id"])
        assert t == topic, e
        assert e["data"] == payload
        assert e["event"] == "e" + topic
        epochs.add(ep)
        gseqs.append(gseq)
    assert len(epochs) == 1
    assert gseqs == sorted(gseqs) and len(set(gseqs)) == len(gseqs), gseqs
    assert sub.no_event_within(0.3), "an unsubscribed topic leaked into the stream"
    sub.close()


def test_multi_topic_resume_with_last_event_id(sluice):
    sub = sluice.sse("/sse?topic=ra&topic=rb")
    sub.read_retry()
    sluice.publish("ra", "a1")
    sluice.publish("rb", "b1")
    got = sub.read_events(2)
    last_id = got[-1]["id"]
    assert parse_multi_id(last_id)[2] == "rb"
    sub.close()

    missed = [("ra", "a2"), ("rb", "b2"), ("rc", "c1"), ("ra", "a3"), ("rb", "b3")]
    for t, p in missed:
        sluice.publish(t, p)

    sub2 = sluice.sse("/sse?topic=ra&topic=rb", headers={"Last-Event-ID": last_id})
    assert sub2.status == 200
    want = [(t, p) for t, p in missed if t != "rc"]
    got2 = sub2.read_events(len(want))
    assert [(parse_multi_id(e["id"])[2], e["data"]) for e in got2] == want
    assert all(e["event"] is None for e in got2)
    sluice.publish("ra", "live")
    live = sub2.read_event()
    assert live["data"] == "live", "resume delivered duplicates or skipped the live message"
    assert sub2.no_event_within(0.3)
    sub2.close()

    # the same with the query parameter, resuming from the middle
    mid_id = got2[1]["id"]
    sub3 = sluice.sse(f"/sse?topic=ra&topic=rb&lastEventId={mid_id}")
    got3 = sub3.read_events(3)
    assert [e["data"] for e in got3] == ["a3", "b3", "live"]
    assert sub3.no_event_within(0.3)
    sub3.close()


def test_multi_topic_id_rejects_garbage(sluice):
    for bad in ["nonsense", "0123456789abcdef", "0123456789abcdef-x:ra", "xyz-1:ra"]:
        sub = sluice.sse("/sse?topic=ra&topic=rb", headers={"Last-Event-ID": bad})
        assert sub.status == 400, (bad, sub.status)
        assert sub.response.json()["error"] == "bad_id"
        sub.close()


def test_ndjson_batch_publish(sluice):
    body = "one\n\ntwo\r\n\nthree\n\n"
    r = sluice.post("/topics/batch", body, {"Content-Type": "application/x-ndjson"})
    assert r.status == 202, r
    ids = r.json()["ids"]
    assert len(ids) == 3, f"empty lines must be skipped: {ids}"
    parsed = [parse_id(i) for i in ids]
    assert len({ep for ep, _ in parsed}) == 1
    seqs = [s for _, s in parsed]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]

    sub = sluice.sse("/topics/batch?from=oldest")
    got = sub.read_events(3)
    assert [e["data"] for e in got] == ["one", "two", "three"], "a trailing CR must be dropped"
    assert [e["id"] for e in got] == ids
    sub.close()

    ids2 = sluice.publish_batch("batch", ["four", "five"])
    assert parse_id(ids2[0])[1] == seqs[2] + 1


def test_ndjson_batch_is_all_or_nothing(sluice_factory):
    srv = sluice_factory(limits={"max_message_bytes": 100, "max_body_bytes": 10000})
    srv.publish("aon", "first")
    before = srv.topics()["aon"]
    body = "ok1\nok2\n" + "x" * 101 + "\nok3\n"
    r = srv.post("/topics/aon", body, {"Content-Type": "application/x-ndjson"})
    assert r.status == 413, r
    assert r.json()["error"] == "too_large"
    after = srv.topics()["aon"]
    assert after["head"] == before["head"] and after["messages"] == before["messages"], \
        "part of a refused batch was published"


def test_event_type_on_batch(sluice):
    sub = sluice.sse("/topics/evb")
    sub.read_retry()
    ids = sluice.publish_batch("evb", ["a", "b"], event="tick")
    got = sub.read_events(2)
    assert [(e["id"], e["event"], e["data"]) for e in got] == \
        [(ids[0], "tick", "a"), (ids[1], "tick", "b")]
    sub.close()


def test_json_payload_roundtrip(sluice):
    sub = sluice.sse("/topics/js")
    sub.read_retry()
    doc = {"k": "v", "n": [1, 2, 3], "s": "quote\" and \\ backslash"}
    sluice.publish("js", json.dumps(doc))
    e = sub.read_event()
    assert json.loads(e["data"]) == doc
    sub.close()


def test_sse_headers(sluice):
    sub = sluice.sse("/topics/hdrs")
    assert sub.status == 200
    ct = sub.headers.get("content-type", "")
    assert re.match(r"^text/event-stream", ct), ct
    assert "no-cache" in sub.headers.get("cache-control", "") or \
        "no-store" in sub.headers.get("cache-control", "")
    sub.close()
