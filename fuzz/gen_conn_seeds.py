#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_conn (fuzz/corpus/conn/). See fuzz/fuzz_conn.c for the input
format: a mode byte, then chunks separated by "~#~" + an operation byte."""
import os
import struct
import sys

MARKER = b"~#~"
SWITCH, SETTLE, TICK, SHUT_WR, CLOSE, STOP_READING, READ = 0, 1, 2, 3, 4, 5, 6


def op(client=0, action=SWITCH, arg=0):
    return MARKER + bytes([client | (action << 2) | (arg << 5)])


def to(client):
    return op(client, SWITCH)


def tick(seconds, client=0):
    return op(client, TICK, seconds - 1)


def http(method, target, headers=(), body=b"", version="1.1"):
    lines = [f"{method} {target} HTTP/{version}", "Host: fuzz"]
    lines += list(headers)
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding"))
                        for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*parts):
    out = b""
    for p in parts:
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n\r\n"


def ws_upgrade(target):
    return http("GET", target, ["Upgrade: websocket", "Connection: Upgrade",
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                "Sec-WebSocket-Version: 13"])


def frame(opcode, payload=b"", fin=True, mask=b"\x11\x22\x33\x44"):
    """A client frame: always masked, as RFC 6455 requires of clients."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + body


def text(s):
    return frame(1, s.encode() if isinstance(s, str) else s)


def close(code=1000, why=b"bye"):
    return frame(8, struct.pack(">H", code) + why)


ID = "0123456789abcdef-3"
SEEDS = {
    "publish": b"\0" + http("POST", "/topics/a", ["Content-Type: text/plain"], b"hello"),
    "publish_event": b"\0" + http("POST", "/topics/a/b?event=greet", [], b"{\"x\":1}"),
    "ndjson": b"\0" + http("POST", "/topics/a", ["Content-Type: application/x-ndjson"],
                           b"{\"a\":1}\n{\"a\":2}\n\"three\"\n"),
    "pipelined": b"\0" + http("GET", "/healthz") + http("POST", "/topics/p", [], b"one") +
    http("GET", "/metrics") + http("GET", "/topics"),
    "pipelined_bytewise": b"\x01" + http("GET", "/healthz") + http("POST", "/topics/p", [], b"x"),
    "chunked": b"\0" + http("POST", "/topics/c", ["Transfer-Encoding: chunked"],
                            chunked(b"hel", b"lo ", b"world")),
    "expect_continue": b"\0" + http("POST", "/topics/c", ["Expect: 100-continue",
                                                          "Content-Length: 4"]) + op(0, SETTLE) +
    b"body",
    "sse_last_event_id": b"\0" + http("GET", "/topics/s", ["Accept: text/event-stream",
                                                            f"Last-Event-ID: {ID}"]) +
    to(1) + http("POST", "/topics/s", [], b"m1") + http("POST", "/topics/s", [], b"m2") +
    tick(3),
    "sse_multi": b"\0" + http("GET", "/sse?topic=a&topic=b&since=" + ID, ["Accept: text/event-stream"]) +
    to(1) + http("POST", "/topics/a", [], b"to a") + http("POST", "/topics/b", [], b"to b") +
    http("POST", "/topics/a", ["Content-Type: application/x-ndjson"], b"1\n2\n3\n4\n5\n6\n7\n8\n9\n"),
    "sse_lag_disconnect": b"\0" + http("GET", "/topics/d/x", ["Accept: text/event-stream"]) +
    to(1) + http("POST", "/topics/d/x", ["Content-Type: application/x-ndjson"],
                 b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n"),
    "ws_pub": b"\0" + ws_upgrade("/topics/w?mode=pub&ack=1") + text("hi") + frame(9, b"ping") +
    text("again") + close(),
    "ws_pubsub_json": b"\0" + ws_upgrade("/ws?topic=a&topic=b&mode=pubsub&format=json") +
    text('{"topic":"b","event":"e","data":"x"}') + frame(1, b"frag", fin=False) +
    frame(0, b"ment") + tick(2) + tick(2) + close(1001, b""),
    "ws_fragmented_bytewise": b"\x03" + ws_upgrade("/topics/w?mode=pubsub") +
    frame(1, b"part one ", fin=False) + frame(9, b"") + frame(0, b"part two") + close(),
    "ws_ping_timeout": b"\0" + ws_upgrade("/topics/w") + tick(2) + tick(2) + tick(2),
    "lossless_wait": b"\0" + http("GET", "/topics/ll/x?durable=c1", ["Accept: text/event-stream"]) +
    to(1) + b"".join(http("POST", "/topics/ll/x?wait=2000", ["Content-Type: application/x-ndjson"],
                          (b"%04d" % i + b"x" * 1000 + b"\n") * 3) for i in range(8)) +
    tick(3, 1) + tick(4, 1),
    "lossless_sync_ws": b"\0" + ws_upgrade("/topics/ll/sync/w?mode=pub&ack=1") +
    b"".join(text(b"y" * 900) for _ in range(24)) + tick(4),
    "lossless_ws_envelope": b"\0" + ws_upgrade("/topics/ll/e?mode=pubsub&format=json&durable=c2") +
    b"".join(text('{"topic":"ll/e","data":"%s"}' % ("z" * 800)) for _ in range(24)) +
    text('{"sluice":"ack","id":"%s"}' % ID) + tick(4),
    "cursor_ack": b"\0" + http("POST", "/topics/ll/c", [], b"one") +
    http("POST", f"/topics/ll/c/cursors/c1", [], ID.encode()) +
    http("POST", "/topics/ll/c/cursors/c1", [], ('{"id":"%s"}' % ID).encode()) +
    http("GET", "/topics/ll/c/cursors") + http("DELETE", "/topics/ll/c/cursors/c1"),
    "header_timeout": b"\0" + b"GET /topics/a HTTP/1.1\r\nHost: x\r\n" + tick(3) + b"X: y\r\n\r\n",
    "per_ip_limit": b"\0" + http("GET", "/healthz") + to(1) + http("GET", "/healthz") + to(2) +
    http("GET", "/healthz") + op(0, CLOSE) + to(2) + http("GET", "/healthz"),
    "half_close": b"\0" + http("POST", "/topics/h", [], b"x") + op(0, SHUT_WR) +
    to(1) + http("GET", "/topics/h", ["Accept: text/event-stream", f"Last-Event-ID: {ID}"]) + op(1, SHUT_WR),
    "options_errors": b"\0" + http("OPTIONS", "/topics/a", ["Origin: http://x"]) +
    http("PUT", "/topics/a") + http("GET", "/nope") + http("GET", "/topics/a") +
    http("GET", "/ws"),
    "sse_multi_long_rings": b"\0" + to(1) + b"".join(
        http("POST", f"/topics/m/{t}", ["Content-Type: application/x-ndjson"], b"1\n" * 250)
        for t in "abcd") + to(0) +
    http("GET", "/sse?topic=m/a&topic=m/b&topic=m/c&topic=m/d&from=oldest",
         ["Accept: text/event-stream"]) + tick(1),
    "ws_multi_json_long_rings": b"\0" + ws_upgrade("/ws?topic=m/a&topic=m/b&format=json&from=oldest") +
    to(1) + http("POST", "/topics/m/a", ["Content-Type: application/x-ndjson"], b"2\n" * 300) +
    http("POST", "/topics/m/b", ["Content-Type: application/x-ndjson"], b"3\n" * 300) + tick(2),
    "ws_pub_lossless_full": b"\0" + http("GET", "/topics/ll/f?durable=c1",
                                         ["Accept: text/event-stream"]) +
    to(1) + ws_upgrade("/topics/ll/f?mode=pub&ack=1") +
    b"".join(text(b"%03d" % i + b"w" * 1000) for i in range(20)) + tick(2, 1) + tick(4, 1),
    "sse_multi_reset_long_ring": b"\0" + to(1) +
    http("POST", "/topics/m/a", ["Content-Type: application/x-ndjson"], b"1\n" * 600) +
    http("POST", "/topics/m/b", [], b"b") + to(0) +
    http("GET", "/sse?topic=m/a&topic=m/b", ["Accept: text/event-stream",
                                              f"Last-Event-ID: {ID}"]) + tick(1),
    "stalled_subscriber": b"\0" + http("GET", "/topics/m/s", ["Accept: text/event-stream"]) +
    op(0, STOP_READING) + to(1) + b"".join(
        http("POST", "/topics/m/s", ["Content-Type: application/x-ndjson"], (b"s" * 60 + b"\n") * 60)
        for _ in range(4)) + tick(2, 1) + tick(2, 1) + op(0, READ) + tick(2, 1),
    "stalled_pipelined": b"\0" + op(0, STOP_READING) + to(0) +
    b"".join(b"GET /metrics HTTP/1.1\r\n\r\n" for _ in range(200)) + tick(4) +
    op(0, READ) + http("POST", "/topics/a", [], b"after"),
    "stalled_ll_parked": b"\0" + http("GET", "/topics/ll/p?durable=c1", ["Accept: text/event-stream"]) +
    to(1) + op(1, STOP_READING) + to(1) + b"".join(
        http("POST", "/topics/ll/p?wait=3000", ["Content-Type: application/x-ndjson"],
             (b"p" * 1000 + b"\n") * 4) for _ in range(6)) +
    b"".join(b"GET /metrics HTTP/1.1\r\n\r\n" for _ in range(60)) + tick(2, 1) +
    op(1, READ) + tick(2, 1),
    "long_topic_names": b"\0" + b"".join(
        http("POST", "/topics/" + "n" * k, [], b"x") for k in (255, 256, 257, 300, 301)) +
    ws_upgrade("/topics/ll/" + "n" * 250 + "?mode=pub&ack=1") +
    b"".join(text(('{"topic":"%s","data":"x"}' % ("ll/" + "n" * k))) for k in (253, 254, 297, 298)),
    "budget_fill": b"\0" + b"".join(
        http("POST", f"/topics/f{i % 5}", ["Content-Type: application/x-ndjson"],
             (b"q" * 1000 + b"\n") * 4) for i in range(14)),
}

# Inputs that crashed the server when they were written; they live in fuzz/crashes/conn/ (the
# seed corpus is kept free of crashes so that fuzzing can get past them).
REGRESSIONS = {
    # A WebSocket publish held by a full lossless topic whose name is max_topic_name long.
    "ws-held-publish-long-topic": b"\0" + http("GET", "/topics/ll/" + "f" * 1021 + "?durable=c1",
                                                  ["Accept: text/event-stream"]) +
    to(1) + ws_upgrade("/topics/ll/" + "f" * 1021 + "?mode=pub&ack=1") +
    b"".join(text(b"%03d" % i + b"w" * 1000) for i in range(20)) + tick(2, 1) + tick(4, 1),
    # A multi-topic stream resumed across an epoch change: the first topic owes more messages
    # than one write carries, and every topic has a reset marker.
    "multi-topic-markers-past-iov": b"\0" + to(1) +
    http("POST", "/topics/m/a", ["Content-Type: application/x-ndjson"], b"1\n" * 600) +
    b"".join(http("POST", f"/topics/m/{t}", [], b"b") for t in "bcd") + to(0) +
    http("GET", "/sse?topic=m/a&topic=m/b&topic=m/c&topic=m/d",
         ["Accept: text/event-stream", f"Last-Event-ID: {ID}"]) + tick(1),
    # Requests pipelined behind a publish parked on a full lossless topic, arriving later.
    "parked-publisher-read-again": SEEDS["lossless_wait"][:-2 * len(tick(3, 1))] +
    op(1, SETTLE) + http("GET", "/healthz") + op(1, SETTLE) +
    http("POST", "/topics/ll/x", [], b"late") + tick(3, 1) + tick(4, 1),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                             "corpus", "conn")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    crashes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crashes", "conn")
    os.makedirs(crashes, exist_ok=True)
    for name, data in REGRESSIONS.items():
        with open(os.path.join(crashes, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
