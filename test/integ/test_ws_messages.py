"""Messages over WebSocket (docs/protocol.md "Receiving", "Control messages", "Publishing"):
payload size classes, text vs binary, the json envelope, publishing with and without acks,
refused publishes, and WebSocket and SSE readers of one topic seeing the same stream."""

import asyncio
import base64
import json
import random

import pytest

from sluice_client import MULTI_ID_RE, Publisher, parse_id, parse_multi_id, wait_until
from ws_client import CONTROL_PREFIX, OP_TEXT, WSConn, lib_connect, run


def text_payload(n, seed=0):
    """Valid UTF-8 of exactly n bytes, with 1-, 2-, 3- and 4-byte characters."""
    chars = ["a", "\u00e9", "\u20ac", "\U0001F600", "z", "\u2028", "\n", "\""]
    out, size, i = [], 0, seed
    while size < n:
        c = chars[i % len(chars)]
        b = len(c.encode())
        if size + b > n:
            c, b = "x", 1
        out.append(c)
        size += b
        i += 1
    s = "".join(out)
    assert len(s.encode()) == n
    return s


def binary_payload(n, seed=0):
    """n bytes that are not valid UTF-8 (a 0xFF byte can never appear in UTF-8)."""
    rnd = random.Random(seed)
    b = bytearray(rnd.getrandbits(8) for _ in range(min(n, 4096)))
    b = (b * (n // max(1, len(b)) + 1))[:n]
    b[0] = 0xFF
    return bytes(b)


def ws_open(srv, path, **kw):
    c = WSConn(srv.port, path, **kw)
    assert c.status == 101 and c.ok, f"handshake for {path}: {c.response}"
    return c


def control(m, kind=None):
    """A control message as a dict, checking it is one (text, starts with {"sluice":")."""
    assert m.opcode == OP_TEXT and m.payload.startswith(CONTROL_PREFIX), \
        f"not a control message: {m}"
    d = m.json()
    assert list(d)[0] == "sluice", d
    if kind is not None:
        assert d["sluice"] == kind, d
    return d


# -- receiving --------------------------------------------------------------------------------

SIZES = [0, 125, 126, 65535, 65536, 1048576]


@pytest.mark.parametrize("size", SIZES)
def test_pubsub_echo_size_classes(sluice, size):
    """Every message published on a mode=pubsub connection comes back to it unchanged: text for
    UTF-8, binary otherwise. 1 MiB is max_message_bytes, allowed."""
    async def go():
        async with lib_connect(sluice, "/topics/echo?mode=pubsub") as ws:
            assert not ws.extensions, "no extension may be negotiated"
            sent = [text_payload(size, seed=size)]
            if size:
                sent.append(binary_payload(size, seed=size))
            else:
                sent.append(b"")  # an empty payload is valid UTF-8: it comes back as text
            for p in sent:
                await ws.send(p)
                got = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(p, bytes) and size == 0:
                    assert got == "", f"empty binary payload came back as {got!r}"
                    continue
                assert type(got) is type(p), \
                    f"{len(p)}-byte {type(p).__name__} came back as {type(got).__name__}"
                assert got == p, f"{len(p)}-byte payload came back altered ({len(got)} bytes)"
    run(go())
    t = sluice.topics()["echo"]
    assert t["messages"] == 2


def test_frame_type_follows_payload_bytes(sluice):
    """The frame type is chosen by the payload's bytes, not by how it was sent."""
    async def go():
        async with lib_connect(sluice, "/topics/kind?mode=pubsub") as ws:
            for sent, want in [(b"plain ascii", "plain ascii"),
                               ("\u00e9".encode(), "\u00e9"),
                               (b"\xc3", b"\xc3"),                 # truncated sequence
                               (b"\xed\xa0\x80", b"\xed\xa0\x80"),  # a surrogate
                               (b"\xc0\xaf", b"\xc0\xaf"),          # overlong '/'
                               (b"ok\x00nul", "ok\x00nul")]:
                await ws.send(sent)
                got = await asyncio.wait_for(ws.recv(), 5)
                assert got == want, f"{sent!r} came back as {got!r}, want {want!r}"
    run(go())


def test_http_publish_reaches_ws_subscriber(sluice):
    async def go():
        async with lib_connect(sluice, "/topics/h2w") as ws:
            await asyncio.sleep(0)  # subscribed once the handshake completed
            texts = ["one", "multi\nline\r\npayload\r", "\u4e2d\u6587 \U0001F600", "{\"k\":1}"]
            for i, t in enumerate(texts):
                r = sluice.post("/topics/h2w" + ("?event=ev" if i % 2 else ""), t.encode())
                assert r.status == 202, r
            raw = binary_payload(3000, seed=7)
            r = sluice.post("/topics/h2w", raw, {"Content-Type": "application/octet-stream"})
            assert r.status == 202, r
            for t in texts:
                assert await asyncio.wait_for(ws.recv(), 5) == t, "raw format: payload verbatim"
            assert await asyncio.wait_for(ws.recv(), 5) == raw
            with pytest.raises(asyncio.TimeoutError):
                extra = await asyncio.wait_for(ws.recv(), 0.3)
                pytest.fail(f"unexpected extra message {extra!r}")
    run(go())


def test_ws_publish_reaches_sse_subscriber(sluice):
    sse = sluice.sse("/topics/w2s")
    sse.read_retry()
    pub = ws_open(sluice, "/topics/w2s?mode=pub&ack=1")
    payloads = ["first", "line1\nline2", "\u00e9t\u00e9"]
    acks = []
    for p in payloads:
        pub.send_text(p)
        acks.append(control(pub.read_message(), "ack"))
    got = sse.read_events(3)
    assert [e["data"] for e in got] == payloads
    assert [e["id"] for e in got] == [a["id"] for a in acks], "the ack id is the message id"
    assert all(e["event"] is None for e in got)
    pub.close()
    sse.close()


def test_json_envelope(sluice):
    c = ws_open(sluice, "/topics/env?format=json")
    i1 = sluice.publish("env", "p1", event="price")
    i2 = sluice.publish("env", "line\nbreak \"quoted\" \u00e9")
    raw = b"\xff\x00\x01binary"
    r = sluice.post("/topics/env?event=bin", raw)
    assert r.status == 202
    i3 = r.json()["id"]
    envs = []
    for _ in range(3):
        m = c.read_message()
        assert m.opcode == OP_TEXT, "format=json is always text"
        assert not m.is_control, m
        envs.append(m.json())
    sids = []
    for env, mid, event in zip(envs, [i1, i2, i3], ["price", None, "bin"]):
        assert env["id"] == mid, env
        assert env["topic"] == "env"
        assert env["event"] == event, env
        assert "event" in env, "event is present (null) even without a type"
        assert MULTI_ID_RE.match(env["sid"]), env
        ep, gseq, topic = parse_multi_id(env["sid"])
        assert topic == "env"
        sids.append(gseq)
    assert sids == sorted(sids) and len(set(sids)) == 3
    assert envs[0]["data"] == "p1" and "encoding" not in envs[0]
    assert envs[1]["data"] == "line\nbreak \"quoted\" \u00e9" and "encoding" not in envs[1]
    assert envs[2].get("encoding") == "base64", envs[2]
    assert base64.b64decode(envs[2]["data"]) == raw
    c.close()


def test_default_formats(sluice):
    raw = ws_open(sluice, "/topics/fmt")
    multi = ws_open(sluice, "/ws?topic=fmt")
    explicit = ws_open(sluice, "/ws?topic=fmt&format=raw")
    sluice.publish("fmt", "payload")
    assert raw.read_message().payload == b"payload", "/topics/{name} defaults to raw"
    env = multi.read_json()
    assert env["data"] == "payload" and env["topic"] == "fmt", "/ws defaults to json"
    assert explicit.read_message().payload == b"payload"
    for c in (raw, multi, explicit):
        c.close()


def test_multi_topic_ws(sluice):
    c = ws_open(sluice, "/ws?topic=ma&topic=mb")
    plan = [("ma", "a1"), ("mb", "b1"), ("mc", "c1"), ("mb", "b2"), ("ma", "a2")]
    ids = {}
    for t, p in plan:
        ids[p] = sluice.publish(t, p, event="e" + t)
    want = [(t, p) for t, p in plan if t != "mc"]
    envs = [c.read_json() for _ in want]
    assert [(e["topic"], e["data"]) for e in envs] == want
    assert [e["id"] for e in envs] == [ids[p] for _, p in want]
    assert [e["event"] for e in envs] == ["e" + t for t, _ in want]
    gseqs = []
    for e in envs:
        ep, gseq, topic = parse_multi_id(e["sid"])
        assert topic == e["topic"]
        gseqs.append(gseq)
    assert gseqs == sorted(gseqs) and len(set(gseqs)) == len(gseqs)
    assert c.no_message_within(0.3), f"an unsubscribed topic leaked: {c.unexpected}"
    c.close()


# -- publishing -------------------------------------------------------------------------------

def test_publish_with_acks(sluice):
    sse = sluice.sse("/topics/ack")
    sse.read_retry()
    c = ws_open(sluice, "/topics/ack?mode=pub&ack=1")
    for i in range(5):
        c.send_text(f"m{i}")
    c.send_binary(b"\xffbin")
    acks = [control(c.read_message(), "ack") for _ in range(6)]
    for a in acks:
        assert a["topic"] == "ack", a
        assert set(a) >= {"sluice", "topic", "id"}, a
    parsed = [parse_id(a["id"]) for a in acks]
    assert len({ep for ep, _ in parsed}) == 1
    seqs = [s for _, s in parsed]
    assert seqs == list(range(seqs[0], seqs[0] + 6)), f"ack ids must increase by one: {seqs}"
    got = sse.read_events(5)
    assert [e["id"] for e in got] == [a["id"] for a in acks[:5]]
    assert [e["data"] for e in got] == [f"m{i}" for i in range(5)]
    assert c.no_message_within(0.3), f"more than one ack per message: {c.unexpected}"
    c.close()
    sse.close()


def test_publish_without_ack_is_silent(sluice):
    sse = sluice.sse("/topics/noack")
    sse.read_retry()
    c = ws_open(sluice, "/topics/noack?mode=pub")
    for i in range(3):
        c.send_text(f"n{i}")
    assert [e["data"] for e in sse.read_events(3)] == ["n0", "n1", "n2"]
    # a pub connection is not a reader either: messages from others do not reach it
    sluice.publish("noack", "from http")
    assert sse.read_event()["data"] == "from http"
    assert c.no_message_within(0.5), f"mode=pub without ack got {c.unexpected}"
    c.close()
    sse.close()


def test_json_envelope_publish(sluice):
    subs = {t: sluice.sse(f"/topics/{t}") for t in ("ja", "jb")}
    for s in subs.values():
        s.read_retry()
    c = ws_open(sluice, "/ws?topic=ja&mode=pub&ack=1")  # format=json is the /ws default
    c.send_text(json.dumps({"topic": "jb", "event": "ev", "data": "to b"}))
    a1 = control(c.read_message(), "ack")
    c.send_text(json.dumps({"data": "to default \u00e9\nx"}))
    a2 = control(c.read_message(), "ack")
    c.send_text(json.dumps({"event": "e2", "data": "{\"nested\":true}", "topic": "ja"}))
    a3 = control(c.read_message(), "ack")
    assert a1["topic"] == "jb" and a2["topic"] == "ja" and a3["topic"] == "ja"
    eb = subs["jb"].read_event()
    assert (eb["id"], eb["event"], eb["data"]) == (a1["id"], "ev", "to b")
    ea = subs["ja"].read_events(2)
    assert [(e["id"], e["event"], e["data"]) for e in ea] == \
        [(a2["id"], None, "to default \u00e9\nx"), (a3["id"], "e2", "{\"nested\":true}")]
    c.close()
    for s in subs.values():
        s.close()


BAD_ENVELOPES = [
    "not json",
    "[1, 2]",
    "\"just a string\"",
    "{\"topic\": \"ja\"}",               # data missing
    "{\"data\": 5}",                      # data not a string
    "{\"data\": null}",
    "{\"data\": \"x\"",                   # truncated
    "{\"data\": [\"x\"]}",
]


def test_bad_envelope_gets_error_and_connection_stays(sluice):
    sse = sluice.sse("/topics/benv")
    sse.read_retry()
    c = ws_open(sluice, "/ws?topic=benv&mode=pub&ack=1")
    before = sluice.topics()["benv"]
    for bad in BAD_ENVELOPES:
        c.send_text(bad)
        err = control(c.read_message(), "error")
        assert err["error"] == "bad_envelope", (bad, err)
        assert isinstance(err.get("message"), str), err
    c.send_binary(json.dumps({"data": "as binary"}).encode())
    err = control(c.read_message(), "error")
    assert err["error"] == "bad_envelope", "a json-format publish must be a text message"
    for env, code in [({"topic": "a//b", "data": "x"}, "bad_topic"),
                      ({"event": "has space", "data": "x"}, "bad_event")]:
        c.send_text(json.dumps(env))
        err = control(c.read_message(), "error")
        assert err["error"] == code, (env, err)
    assert sluice.topics()["benv"]["head"] == before["head"], "a refused publish was published"
    c.send_text(json.dumps({"data": "good"}))
    ack = control(c.read_message(), "ack")
    e = sse.read_event()
    assert (e["id"], e["data"]) == (ack["id"], "good"), "the connection stays usable"
    assert sse.no_event_within(0.2)
    c.close()
    sse.close()


def test_reserved_payload_refused_everywhere(sluice):
    sse = sluice.sse("/topics/resv")
    sse.read_retry()
    raw = ws_open(sluice, "/topics/resv?mode=pub&ack=1")
    for p in ['{"sluice":"ack","topic":"resv","id":"0000000000000000-1"}', '{"sluice":1}',
              '{"sluice":']:
        raw.send_text(p)
        err = control(raw.read_message(), "error")
        assert err["error"] == "reserved_payload", (p, err)
    raw.send_binary(b'{"sluice":"gap"}\xff')
    assert control(raw.read_message(), "error")["error"] == "reserved_payload"
    # only the exact prefix is reserved
    allowed = [' {"sluice":"x"}', '{"sluicex":1}', '{"Sluice":1}', '["sluice"]']
    for p in allowed:
        raw.send_text(p)
        control(raw.read_message(), "ack")

    env = ws_open(sluice, "/ws?topic=resv&mode=pub&ack=1")
    env.send_text(json.dumps({"data": '{"sluice":"reset"}'}))
    assert control(env.read_message(), "error")["error"] == "reserved_payload"

    r = sluice.post("/topics/resv", '{"sluice":"gap","topic":"resv"}')
    assert r.status == 400 and r.json()["error"] == "reserved_payload", r
    r = sluice.post("/topics/resv", 'fine\n{"sluice":"x"}\n',
                    {"Content-Type": "application/x-ndjson"})
    assert r.status == 400 and r.json()["error"] == "reserved_payload", r

    got = sse.read_events(len(allowed))
    assert [e["data"] for e in got] == allowed
    assert sse.no_event_within(0.3), f"a reserved payload was published: {sse.unexpected}"
    raw.close()
    env.close()
    sse.close()


def test_data_on_sub_connection_is_not_publisher(sluice):
    c = ws_open(sluice, "/topics/nsub")  # mode=sub is the default
    for send in (lambda: c.send_text("hello"), lambda: c.send_binary(b"\xff\xfe")):
        send()
        err = control(c.read_message(), "error")
        assert err["error"] == "not_publisher", err
    assert "nsub" not in sluice.topics() or sluice.topics()["nsub"]["messages"] == 0
    c2 = ws_open(sluice, "/ws?topic=nsub2&mode=sub")
    c2.send_text(json.dumps({"data": "x"}))
    assert control(c2.read_message(), "error")["error"] == "not_publisher"
    sluice.publish("nsub", "still subscribed")
    assert c.read_message().payload == b"still subscribed", "the connection stays open"
    c.close()
    c2.close()


def test_json_publish_over_message_limit_is_error_not_close(sluice_factory):
    srv = sluice_factory(limits={"max_message_bytes": "1k", "max_body_bytes": "8k"})
    c = ws_open(srv, "/ws?topic=jbig&mode=pub&ack=1")
    c.send_text(json.dumps({"data": "y" * 3000}))  # a 3 KB envelope: under max_body_bytes
    err = control(c.read_message(), "error")
    assert err["error"] == "too_large", err
    c.send_text(json.dumps({"data": "y" * 1024}))  # exactly max_message_bytes
    ack = control(c.read_message(), "ack")
    assert ack["topic"] == "jbig"
    assert srv.topics()["jbig"]["messages"] == 1
    c.close()


# -- WebSocket and SSE readers side by side ----------------------------------------------------

MIXED = ["plain", "two\nlines", "\u00e9\u20ac\U0001F600", "{\"json\":[1,2]}", "x" * 5000,
         "tab\there", "", "last"]


def test_mixed_sse_and_ws_readers_same_sequence(sluice):
    sse = sluice.sse("/topics/mix")
    sse.read_retry()
    ws_raw = ws_open(sluice, "/topics/mix")
    ws_json = ws_open(sluice, "/topics/mix?format=json")
    pub_ws = ws_open(sluice, "/topics/mix?mode=pub&ack=1")
    pub_http = Publisher(sluice.port)
    ids = []
    payloads = []
    for i in range(60):
        p = f"{i}:{MIXED[i % len(MIXED)]}"
        if i % 3 == 0:
            pub_ws.send_text(p)
            ids.append(control(pub_ws.read_message(), "ack")["id"])
        else:
            ids.append(pub_http.publish("mix", p))
        payloads.append(p)
    pub_http.close()
    got_sse = sse.read_events(60, timeout=10)
    got_raw = ws_raw.read_messages(60, timeout=10)
    got_json = [ws_json.read_json() for _ in range(60)]
    assert [e["data"] for e in got_sse] == payloads
    assert [e["id"] for e in got_sse] == ids
    assert [m.payload.decode() for m in got_raw] == payloads
    assert all(m.opcode == OP_TEXT for m in got_raw)
    assert [(e["id"], e["data"]) for e in got_json] == list(zip(ids, payloads))
    for c in (ws_raw, ws_json, pub_ws):
        c.close()
    sse.close()


def test_multi_topic_ws_and_sse_same_sequence(sluice):
    sse = sluice.sse("/sse?topic=pa&topic=pb")
    sse.read_retry()
    ws = ws_open(sluice, "/ws?topic=pa&topic=pb")
    rnd = random.Random(5)
    plan = [(rnd.choice(["pa", "pb", "pc"]), f"v{i}") for i in range(80)]
    pub = Publisher(sluice.port)
    for t, p in plan:
        pub.publish(t, p)
    pub.close()
    want = [(t, p) for t, p in plan if t != "pc"]
    got_sse = sse.read_events(len(want), timeout=10)
    got_ws = [ws.read_json() for _ in want]
    assert [(parse_multi_id(e["id"])[2], e["data"]) for e in got_sse] == want
    assert [(e["topic"], e["data"]) for e in got_ws] == want
    assert [e["sid"] for e in got_ws] == [e["id"] for e in got_sse], \
        "a WebSocket sid is the SSE id of the same message"
    assert ws.no_message_within(0.2)
    ws.close()
    sse.close()


# -- metrics ----------------------------------------------------------------------------------

def test_ws_subscriber_gauge(sluice):
    key = 'sluice_subscribers{transport="ws"}'
    base = sluice.metrics()
    assert base.v(key) == 0
    conns = [ws_open(sluice, "/topics/g1"), ws_open(sluice, "/ws?topic=g1&topic=g2"),
             ws_open(sluice, "/topics/g2?mode=pubsub")]
    m = sluice.wait_metric(key, lambda v: v == 3, timeout=3)
    assert m.v('sluice_subscribers{transport="sse"}') == 0, "WebSocket readers counted as SSE"
    assert sluice.topics()["g1"]["readers"] == 2
    conns[0].send_close(1000)
    conns[0].expect_close()
    conns[0].close()
    sluice.wait_metric(key, lambda v: v == 2, timeout=3)
    for c in conns[1:]:
        c.close()  # without a close frame: the peer just goes away
    sluice.wait_metric(key, lambda v: v == 0, timeout=5)
    wait_until(lambda: sluice.topics()["g1"]["readers"] == 0, 3, msg="readers back to 0")
