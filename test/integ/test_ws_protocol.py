"""RFC 6455 framing and connection state as sluice enforces it (docs/protocol.md "Liveness and
closing"): fragmentation with interleaved control frames, every 1002/1007/1009 case, the close
handshake in both directions, shutdown, the close timeout and the ping timeout.

Bad frames are sent with the raw client (ws_client.WSConn): no library would send them."""

import signal
import time

import pytest

from sluice_client import Closed
from ws_client import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, WSConn,
                       close_payload, encode_frame)


def ws_open(srv, path="/topics/p?mode=pubsub", **kw):
    c = WSConn(srv.port, path, **kw)
    assert c.status == 101 and c.ok, f"handshake for {path}: {c.response}"
    return c


def expect_close_code(c, code, timeout=5.0, tcp_timeout=3.0):
    """The server sends a close frame with `code` (before it only the messages it owed), and the
    TCP connection then ends. The client answers the close, as RFC 6455 asks; with the default
    ws_close_timeout (5s) the server must then end the connection well before that."""
    got, reason, before = c.expect_close(timeout)
    assert got == code, f"close code {got} (reason {reason!r}), want {code}"
    reason.decode("utf-8")  # a close reason from the server is valid UTF-8
    c.try_send(encode_frame(OP_CLOSE, close_payload(code)))
    t = time.monotonic()
    assert c.closed_within(tcp_timeout), \
        f"TCP connection still open {tcp_timeout}s after close {code} was answered"
    return reason, before, time.monotonic() - t


def assert_nothing_published(srv, topic="p"):
    t = srv.topics().get(topic)
    assert t is None or t["messages"] == 0, f"a bad message was published: {t}"


# -- fragmentation ----------------------------------------------------------------------------

def test_fragments_with_interleaved_pings(sluice):
    """A text message in 3 fragments with pings between them: every ping is answered with its
    own payload while the message is still incomplete, and the whole message is published
    once. (Each pong is awaited before the next ping: RFC 6455 5.5.3 lets a server answer only
    the most recent of several pings it has not answered yet.)"""
    sse = sluice.sse("/topics/p")
    sse.read_retry()
    c = ws_open(sluice)

    def ping_and_expect_pong(payload):
        c.send_ping(payload)
        f = c.read_frame()
        assert f.opcode == OP_PONG, f"expected the pong (the message is not complete yet), " \
                                    f"got {f}"
        assert f.payload == payload, "a pong carries its ping's payload"

    c.send_frame(OP_TEXT, "frag-one ", fin=False)
    ping_and_expect_pong(b"ping-1")
    c.send_frame(OP_CONT, b"frag-two \xc3", fin=False)  # U+00E9 split across fragments
    ping_and_expect_pong(b"")
    ping_and_expect_pong(b"p" * 125)  # the largest control frame allowed
    c.send_frame(OP_CONT, b"\xa9 frag-three", fin=True)
    m = c.read_message()
    want = "frag-one frag-two \u00e9 frag-three"
    assert (m.opcode, m.payload.decode()) == (OP_TEXT, want)
    assert sse.read_event()["data"] == want
    assert sluice.topics()["p"]["messages"] == 1, "fragments are one message"
    c.close()
    sse.close()


def test_ping_between_fragments_sent_together(sluice):
    """Fragments and a ping in one write: the ping is answered (with its payload) ahead of the
    message it interrupted."""
    c = ws_open(sluice)
    c.send(encode_frame(OP_TEXT, "to", fin=False) + encode_frame(OP_PING, "mid") +
           encode_frame(OP_CONT, "gether", fin=True))
    f = c.read_frame()
    assert (f.opcode, f.payload) == (OP_PONG, b"mid"), f"pong must come first, got {f}"
    m = c.read_message()
    assert (m.opcode, m.payload) == (OP_TEXT, b"together")
    c.close()


def test_binary_fragments_and_unsolicited_pong(sluice):
    c = ws_open(sluice)
    c.send_frame(OP_BINARY, b"\xff\x00", fin=False)
    c.send_pong(b"unsolicited")  # must be ignored
    c.send_frame(OP_CONT, b"", fin=False)
    c.send_frame(OP_CONT, b"\x01\x02", fin=True)
    m = c.read_message()
    assert (m.opcode, m.payload) == (OP_BINARY, b"\xff\x00\x01\x02")
    c.send_text("after")
    assert c.read_message().payload == b"after"
    c.close()


def test_valid_utf8_split_everywhere_across_fragments(sluice):
    c = ws_open(sluice)
    text = "a\u00e9\u20ac\U0001F600z".encode()
    for cut in range(1, len(text)):
        c.send_frame(OP_TEXT, text[:cut], fin=False)
        c.send_frame(OP_CONT, text[cut:], fin=True)
    c.send_frame(OP_TEXT, text[:2], fin=False)  # one byte per fragment for the emoji
    for i in range(2, len(text) - 1):
        c.send_frame(OP_CONT, text[i:i + 1], fin=False)
    c.send_frame(OP_CONT, text[-1:], fin=True)
    n = len(text)
    got = c.read_messages(n, timeout=10)
    assert all(m.opcode == OP_TEXT and m.payload == text for m in got), got
    c.close()


# -- protocol errors: 1002 --------------------------------------------------------------------

def frames_1002():
    return {
        "unmasked": [encode_frame(OP_TEXT, "hello", mask=False)],
        "unmasked_ping": [encode_frame(OP_PING, "x", mask=False)],
        "rsv1": [encode_frame(OP_TEXT, "x", rsv=4)],
        "rsv2": [encode_frame(OP_TEXT, "x", rsv=2)],
        "rsv3": [encode_frame(OP_TEXT, "x", rsv=1)],
        "rsv_on_ping": [encode_frame(OP_PING, "x", rsv=4)],
        "opcode_3": [encode_frame(0x3, "x")],
        "opcode_7": [encode_frame(0x7, "x")],
        "opcode_B": [encode_frame(0xB, "x")],
        "opcode_F": [encode_frame(0xF, "")],
        "fragmented_ping": [encode_frame(OP_PING, "x", fin=False)],
        "fragmented_close": [encode_frame(OP_CLOSE, close_payload(1000), fin=False)],
        "ping_126": [encode_frame(OP_PING, b"p" * 126)],
        "pong_126": [encode_frame(OP_PONG, b"p" * 126)],
        "close_126": [encode_frame(OP_CLOSE, close_payload(1000, b"r" * 124))],
        "continuation_without_start": [encode_frame(OP_CONT, "x", fin=True)],
        "continuation_without_start_nofin": [encode_frame(OP_CONT, "x", fin=False)],
        "text_inside_fragmented": [encode_frame(OP_TEXT, "a", fin=False),
                                   encode_frame(OP_TEXT, "b", fin=True)],
        "binary_inside_fragmented": [encode_frame(OP_BINARY, b"a", fin=False),
                                     encode_frame(OP_CONT, b"b", fin=False),
                                     encode_frame(OP_BINARY, b"c", fin=True)],
        "continuation_after_complete": [encode_frame(OP_TEXT, "a", fin=True),
                                        encode_frame(OP_CONT, "b", fin=True)],
        "close_1_byte": [encode_frame(OP_CLOSE, b"\x03")],
    }


@pytest.mark.parametrize("case", list(frames_1002()))
def test_protocol_error_closes_1002(sluice, case):
    c = ws_open(sluice)
    for f in frames_1002()[case]:
        c.try_send(f)
    _, before, _ = expect_close_code(c, 1002)
    if case == "continuation_after_complete":
        # "a" was published; its echo may or may not precede the close (close frames go ahead
        # of queued messages)
        assert [m.payload for m in before] in ([], [b"a"]), before
        assert sluice.topics()["p"]["messages"] == 1
    else:
        assert before == [], f"{case}: messages before the close: {before}"
        assert_nothing_published(sluice)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
                                  65535])
def test_close_with_invalid_code_is_1002(sluice, code):
    c = ws_open(sluice)
    c.send_close(code, b"bye")
    expect_close_code(c, 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 3000, 3999, 4000, 4999])
def test_close_with_valid_code_is_echoed(sluice, code):
    c = ws_open(sluice)
    c.send_close(code, "reason \u00e9")
    got, reason, before = c.expect_close()
    assert got == code, f"client close {code} answered with {got}"
    assert before == []
    assert c.closed_within(2.0), "the server must end the TCP connection after the handshake"


def test_close_without_code_answered_1000(sluice):
    c = ws_open(sluice)
    c.send_close()
    got, _, _ = c.expect_close()
    assert got == 1000
    assert c.closed_within(2.0)


# -- 1007 -------------------------------------------------------------------------------------

BAD_UTF8 = {
    "ff": b"ab\xff",
    "lone_continuation": b"\x80",
    "overlong_slash": b"\xc0\xaf",
    "overlong_3byte": b"\xe0\x80\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above_10ffff": b"\xf4\x90\x80\x80",
    "truncated_at_end": b"ok\xe2\x82",
    "f5": b"\xf5\x80\x80\x80",
}


@pytest.mark.parametrize("case", list(BAD_UTF8))
def test_invalid_utf8_text_is_1007(sluice, case):
    c = ws_open(sluice)
    c.send_text(BAD_UTF8[case])
    _, before, _ = expect_close_code(c, 1007)
    assert before == []
    assert_nothing_published(sluice)


@pytest.mark.parametrize("parts", [
    [b"ab\xe2\x82", b"(", b"cd"],          # a 3-byte sequence broken by '(' in the next one
    [b"ab\xe2", b"\x82", b"\xff"],          # a 0xFF where the last continuation byte belongs
    [b"fine", b"\xed", b"\xa0\x80"],        # a surrogate split in two
    [b"ends", b"in the middle \xf0\x9f", b"\x98"],  # message ends inside a 4-byte sequence
])
def test_invalid_utf8_across_fragments_is_1007(sluice, parts):
    c = ws_open(sluice)
    c.send_frame(OP_TEXT, parts[0], fin=False)
    for p in parts[1:-1]:
        c.send_frame(OP_CONT, p, fin=False)
    c.try_send(encode_frame(OP_CONT, parts[-1], fin=True))
    expect_close_code(c, 1007)
    assert_nothing_published(sluice)


def test_close_reason_invalid_utf8_is_1007(sluice):
    c = ws_open(sluice)
    c.send_close(1000, b"bad \xff reason")
    expect_close_code(c, 1007)


def test_invalid_utf8_in_binary_is_fine(sluice):
    c = ws_open(sluice)
    c.send_binary(b"\xff\xfe\xc0\xaf")
    m = c.read_message()
    assert (m.opcode, m.payload) == (OP_BINARY, b"\xff\xfe\xc0\xaf")
    c.close()


# -- 1009 -------------------------------------------------------------------------------------

@pytest.fixture
def small(sluice_factory):
    return sluice_factory(limits={"max_message_bytes": "1k", "max_body_bytes": "8k"})


def test_frame_at_limit_passes_over_limit_is_1009(small):
    c = ws_open(small)
    c.send_binary(b"\xff" * 1024)
    assert c.read_message().payload == b"\xff" * 1024, "exactly max_message_bytes is allowed"
    c.send_text("x" * 1025)
    expect_close_code(c, 1009)
    assert small.topics()["p"]["messages"] == 1


def test_fragmented_message_over_limit_is_1009(small):
    c = ws_open(small)
    c.send_frame(OP_TEXT, "a" * 400, fin=False)  # 400 + 400 + 224 = 1024: allowed
    c.send_frame(OP_CONT, "b" * 400, fin=False)
    c.send_frame(OP_CONT, "c" * 224, fin=True)
    assert len(c.read_message().payload) == 1024
    c.send_frame(OP_TEXT, "a" * 400, fin=False)  # 1200 in all
    c.send_frame(OP_CONT, "b" * 400, fin=False)
    c.try_send(encode_frame(OP_CONT, "c" * 400, fin=True))
    expect_close_code(c, 1009)
    assert small.topics()["p"]["messages"] == 1


def test_huge_declared_length_is_1009_without_the_payload(sluice_factory):
    srv = sluice_factory(limits={"max_message_bytes": "1k"}, server={"ws_close_timeout": "1s"})
    c = ws_open(srv)
    # 1 TiB announced, the first 100 bytes of it sent: refused from the header, not buffered
    c.send(encode_frame(OP_BINARY, b"", length=1 << 40) + b"\xff" * 100)
    # the client's close answer is inside the announced payload: the server cannot see it, so
    # it may wait up to ws_close_timeout
    expect_close_code(c, 1009, timeout=3, tcp_timeout=1.0 + 1.5)


def test_json_format_incoming_limit_is_max_body_bytes(small):
    c = ws_open(small, "/ws?topic=p&mode=pub&ack=1")
    c.try_send(encode_frame(OP_TEXT, '{"data":"' + "z" * (9 * 1024) + '"}'))
    expect_close_code(c, 1009)


# -- closing ----------------------------------------------------------------------------------

def test_client_close_is_echoed_and_connection_ends(sluice):
    base = sluice.metrics()
    c = ws_open(sluice, "/topics/cl")
    sluice.publish("cl", "before close")
    assert c.read_message().payload == b"before close"
    c.send_close(1000, "done here")
    t = time.monotonic()
    code, reason, before = c.expect_close()
    assert code == 1000
    assert before == []
    assert c.closed_within(2.0), "the server must close the TCP connection after the handshake"
    assert time.monotonic() - t < 2.0
    c.close()  # as a client does once the server has closed
    sluice.publish("cl", "after close")  # must not crash anything
    m = sluice.wait_metric('sluice_subscribers{transport="ws"}', lambda v: v == 0, timeout=3)
    assert m.v("sluice_connections") == base.v("sluice_connections")


def test_library_client_close(sluice):
    from ws_client import lib_connect, run

    async def go():
        async with lib_connect(sluice, "/topics/libc") as ws:
            await ws.close(1000, "bye")
            return ws.close_code, ws.close_rcvd.code if ws.close_rcvd else None
    sent_code, rcvd_code = run(go())
    assert rcvd_code == 1000, f"server answered the close with {rcvd_code}"


def test_shutdown_sends_1001_after_owed_messages(sluice_factory):
    srv = sluice_factory(server={"shutdown_drain": "3s"})
    subs = [ws_open(srv, "/topics/sd"), ws_open(srv, "/ws?topic=sd&topic=sd2"),
            ws_open(srv, "/topics/sd2?format=json")]
    for i in range(3):
        srv.publish("sd", f"m{i}")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    for c, want in zip(subs, [3, 3, 0]):
        code, reason, before = c.expect_close(5)
        assert code == 1001, f"{c.path}: shutdown close code {code} {reason!r}"
        assert len(before) == want, f"{c.path}: messages owed before the close: {before}"
        c.send_close(1001)
        assert c.closed_within(3)
    rc = srv.wait_exit(5)
    assert rc == 0, f"exit code {rc} after SIGTERM"
    assert time.monotonic() - t0 < 3.0 + 1.0


def test_server_close_unanswered_ends_within_close_timeout(sluice_factory):
    """sluice closes (protocol error), the client reads but never answers: the TCP connection
    is closed within ws_close_timeout."""
    srv = sluice_factory(server={"ws_close_timeout": "1s"})
    c = ws_open(srv)
    c.send(encode_frame(OP_TEXT, "x", mask=False))
    code, _, _ = c.expect_close()
    assert code == 1002
    t = time.monotonic()
    assert c.closed_within(1.0 + 1.5), "connection kept open past ws_close_timeout"
    assert time.monotonic() - t < 2.5


def test_shutdown_close_unanswered_ends_within_close_timeout(sluice_factory):
    srv = sluice_factory(server={"ws_close_timeout": "1s", "shutdown_drain": "8s"})
    c = ws_open(srv, "/topics/sdu")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    code, _, _ = c.expect_close()
    assert code == 1001
    assert c.closed_within(1.0 + 1.5), "shutdown waited past ws_close_timeout for the client"
    rc = srv.wait_exit(3)
    assert rc == 0, f"exit code {rc}"
    assert time.monotonic() - t0 < 4.0, "shutdown took the whole drain time"


# -- liveness ---------------------------------------------------------------------------------

def test_ping_timeout_closes_silent_client_not_answering_one(sluice_factory):
    srv = sluice_factory(server={"ws_ping_interval": "1s", "ws_pong_timeout": "1s"})
    base = srv.metrics()
    silent = ws_open(srv, "/topics/live")
    alive = ws_open(srv, "/topics/live")
    t0 = time.monotonic()
    silent_frames = []
    first_ping = None
    silent_end = None
    while time.monotonic() - t0 < 4.5:
        # the answering client: read_message answers every ping
        try:
            m = alive.read_message(0.05)
            pytest.fail(f"unexpected message {m}")
        except TimeoutError:
            pass
        if silent_end is None:
            try:
                f = silent.read_frame(0.05)
                silent_frames.append(f)
                if first_ping is None and f.opcode == OP_PING:
                    first_ping = time.monotonic() - t0
            except TimeoutError:
                pass
            except Closed:
                silent_end = time.monotonic() - t0
    assert silent_end is not None, "a client that never answers pings was not disconnected"
    assert first_ping is not None, f"the silent client got no ping: {silent_frames}"
    assert all(f.opcode == OP_PING for f in silent_frames), \
        f"the silent client must get pings and no close frame: {silent_frames}"
    assert first_ping <= 2.2, f"first ping {first_ping:.2f}s after connect (interval 1s)"
    assert silent_end - first_ping >= 0.9, \
        f"closed {silent_end - first_ping:.2f}s after the ping (pong timeout 1s)"
    assert silent_end <= 3.5, f"disconnected only after {silent_end:.2f}s (interval 1s + " \
                              f"pong timeout 1s)"
    assert len(alive.pings) >= 3, f"the answering client got {len(alive.pings)} pings in 4.5s"
    # the answering client is still connected and subscribed
    srv.publish("live", "still here")
    assert alive.read_message().payload == b"still here"
    key = 'sluice_connections_closed_total{reason="ping_timeout"}'
    m = srv.wait_metric(key, lambda v: v >= base.v(key) + 1, timeout=3)
    assert m.v(key) - base.v(key) == 1, "only the silent client timed out"
    assert m.v('sluice_subscribers{transport="ws"}') == 1
    alive.close()
    silent.close()


def test_pings_off_when_interval_zero(sluice_factory):
    srv = sluice_factory(server={"ws_ping_interval": "0", "ws_pong_timeout": "1s"})
    c = ws_open(srv, "/topics/noping")
    with pytest.raises(TimeoutError):
        f = c.read_frame(1.5)
        pytest.fail(f"got {f} with ws_ping_interval = 0")
    srv.publish("noping", "x")
    assert c.read_message().payload == b"x"
    c.close()


def test_pong_and_close_go_ahead_of_queued_messages(sluice_factory):
    """With the socket to a reader full, a ping is still answered and a close still arrives
    before the backlog ('Pongs and close frames are sent ahead of any queued message')."""
    srv = sluice_factory(server={"write_stall_timeout": "60s", "send_buffer": "16KiB"},
                         topics={"*": {"max_messages": 5000, "max_bytes": "64MiB"}})
    c = ws_open(srv, "/topics/prio", rcvbuf=4096)
    body = "".join(f"{i:05d}" + "q" * 2000 + "\n" for i in range(2000))  # ~4 MB
    r = srv.post("/topics/prio", body, {"Content-Type": "application/x-ndjson"}, timeout=20)
    assert r.status == 202, r
    time.sleep(0.3)
    c.send_ping(b"urgent")
    # read until the pong; it must come long before the 2000th message
    seen = 0
    deadline = time.monotonic() + 10
    while True:
        f = c.read_frame(max(0.01, deadline - time.monotonic()))
        if f.opcode == OP_PONG:
            assert f.payload == b"urgent"
            break
        seen += 1
    assert seen < 1900, f"the pong came after {seen} queued messages"
    c.close()


def test_pong_for_ping_payload_echo_and_no_pong_for_pong(sluice):
    c = ws_open(sluice)
    for payload in [b"", b"\x00\xff binary", "\u00e9".encode(), b"z" * 125]:
        c.send_ping(payload)
        f = c.read_frame()
        assert (f.opcode, f.payload) == (OP_PONG, payload)
    c.send_pong(b"nobody asked")
    with pytest.raises(TimeoutError):
        f = c.read_frame(0.3)
        pytest.fail(f"a pong was answered with {f}")
    c.close()


def test_close_frame_then_no_more_frames_from_client_processed(sluice):
    """After the client's close nothing it sends is processed (RFC 6455 5.5.1)."""
    sse = sluice.sse("/topics/p")
    sse.read_retry()
    c = ws_open(sluice)
    c.send(encode_frame(OP_CLOSE, close_payload(1000)) + encode_frame(OP_TEXT, "late"))
    code, _, _ = c.expect_close()
    assert code == 1000
    assert c.closed_within(2.0)
    assert sse.no_event_within(0.3), f"data after a close was published: {sse.unexpected}"
    sse.close()


def test_masked_length_encodings(sluice):
    """Lengths 125/126/127-encoded on the client side: 16-bit and 64-bit length forms."""
    c = ws_open(sluice)
    for n in (125, 126, 127, 65535, 65536, 70000):
        c.send_binary(b"\xff" + b"b" * (n - 1))
        m = c.read_message()
        assert len(m.payload) == n and m.opcode == OP_BINARY
    c.close()



def test_slow_reader_behind_full_socket_is_not_a_pong_timeout(sluice_factory):
    """A live reader draining a backlog slowly cannot see a ping queued behind the data it has
    not read yet: the pong clock starts when the ping reaches the kernel. While the socket
    takes bytes, the reader is slow, not dead; a socket that takes nothing for a pong timeout
    is closed as before (test_stopped_reader_behind_full_socket_is_a_pong_timeout)."""
    srv = sluice_factory(server={"ws_ping_interval": "500ms", "ws_pong_timeout": "1s",
                                 "send_buffer": "4KiB", "write_stall_timeout": "30s"})
    base = srv.metrics()
    slow = ws_open(srv, "/topics/slowpong", rcvbuf=4096)
    n, size = 60, 4096
    for i in range(n):
        srv.publish("slowpong", f"{i:04d}" + "y" * (size - 4))
    # Read 4 KiB every 100 ms (about 6 s for the backlog, several pong timeouts), answering
    # each ping as soon as it is read.
    got, pings = [], 0
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        data = slow.sock.recv(4096)
        assert data, f"closed by the server after {len(got)} of {n} messages"
        slow.buf += data
        while True:
            f = slow.parse_buffered_frame()
            if f is None:
                break
            if f.opcode == OP_PING:
                pings += 1
                slow.send_pong(f.payload)
            elif f.opcode in (OP_TEXT, OP_BINARY):
                got.append(int(f.payload[:4]))
            else:
                pytest.fail(f"unexpected frame {f}")
    assert got == list(range(n)), f"got {len(got)} of {n} messages"
    assert pings >= 1, "no ping reached the slow reader"
    srv.publish("slowpong", "after")
    assert slow.read_message().payload == b"after"
    key = 'sluice_connections_closed_total{reason="ping_timeout"}'
    assert srv.metrics().v(key) == base.v(key), "a slow live reader was closed as dead"
    slow.close()


def test_stopped_reader_behind_full_socket_is_a_pong_timeout(sluice_factory):
    """A reader that stops reading with its socket full never gets its ping: it is closed as a
    ping timeout within ping interval + pong timeout, not after the (longer) write stall."""
    srv = sluice_factory(server={"ws_ping_interval": "500ms", "ws_pong_timeout": "1s",
                                 "send_buffer": "4KiB", "write_stall_timeout": "30s"})
    base = srv.metrics()
    stopped = ws_open(srv, "/topics/stoppong", rcvbuf=4096)
    for i in range(60):
        srv.publish("stoppong", f"{i:04d}" + "y" * 4092)
    key = 'sluice_connections_closed_total{reason="ping_timeout"}'
    srv.wait_metric(key, lambda v: v >= base.v(key) + 1, timeout=10)
    assert stopped.closed_within(5), "the stopped reader's connection was not closed"
    m = srv.metrics()
    stall = 'sluice_connections_closed_total{reason="write_stall"}'
    assert m.v(stall) == base.v(stall)
