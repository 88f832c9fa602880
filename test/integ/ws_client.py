"""A raw WebSocket (RFC 6455) client for the black-box tests: every byte of the handshake and of
every frame is under the test's control, so it can send what a well-behaved library refuses to
(unmasked frames, reserved bits, unknown opcodes, oversized or fragmented control frames, bad
close codes, invalid UTF-8, lying lengths).

Frames the server sends are checked as they are read: a server frame must be unmasked and have
no reserved bit set, and a data message from sluice is always one frame (docs/protocol.md).

Everything has a timeout; nothing blocks forever.
"""

import base64
import hashlib
import json
import os
import select
import socket
import struct
import threading
import time

from sluice_client import Closed, RawConn

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RFC_SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL_PREFIX = b'{"sluice":"'


def accept_for(key):
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def handshake_headers(key=None, version="13", origin=None, upgrade="websocket",
                      connection="Upgrade", extra=()):
    """The request headers of a handshake as a list of (name, value); a header whose value is
    None is left out (to test a missing one)."""
    hdrs = [("Upgrade", upgrade), ("Connection", connection),
            ("Sec-WebSocket-Key", key if key is not None else new_key()),
            ("Sec-WebSocket-Version", version)]
    if origin is not None:
        hdrs.append(("Origin", origin))
    hdrs += list(extra)
    return [(k, v) for k, v in hdrs if v is not None]


def mask_bytes(data, key):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, mask_key=None, length=None):
    """One frame. `rsv` is the 3-bit RSV1..RSV3 field (4 = RSV1, 2 = RSV2, 1 = RSV3); `length`
    overrides the length written in the header (the payload is sent as given)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        head += key
        payload = mask_bytes(payload, key)
    return head + payload


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "masked", "payload")

    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload

    @property
    def close_code(self):
        assert self.opcode == OP_CLOSE
        if len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self):
        assert self.opcode == OP_CLOSE
        return self.payload[2:]

    def __repr__(self):
        p = self.payload if len(self.payload) <= 80 else self.payload[:80] + b"..."
        return f"<Frame op={self.opcode:#x} fin={int(self.fin)} rsv={self.rsv} len={len(self.payload)} {p!r}>"


def parse_frame(buf, pos=0):
    """The frame that starts at `pos` in `buf` (bytes or bytearray), unmasked if it was masked:
    (Frame, offset just after it), or (None, pos) when the frame is not complete yet. Nothing is
    checked here; read_frame() checks what a server frame must be."""
    b = buf
    if len(b) < pos + 2:
        return None, pos
    fin = bool(b[pos] & 0x80)
    rsv = (b[pos] >> 4) & 7
    opcode = b[pos] & 0xF
    masked = bool(b[pos + 1] & 0x80)
    n = b[pos + 1] & 0x7F
    at = pos + 2
    if n == 126:
        if len(b) < at + 2:
            return None, pos
        n = struct.unpack_from("!H", b, at)[0]
        at += 2
    elif n == 127:
        if len(b) < at + 8:
            return None, pos
        n = struct.unpack_from("!Q", b, at)[0]
        at += 8
    key = None
    if masked:
        if len(b) < at + 4:
            return None, pos
        key = bytes(b[at:at + 4])
        at += 4
    if len(b) < at + n:
        return None, pos
    payload = bytes(b[at:at + n])
    if masked:
        payload = mask_bytes(payload, key)
    return Frame(fin, rsv, opcode, masked, payload), at + n


class Message:
    """A complete data message (text or binary)."""
    __slots__ = ("opcode", "payload")

    def __init__(self, opcode, payload):
        self.opcode, self.payload = opcode, payload

    @property
    def is_text(self):
        return self.opcode == OP_TEXT

    @property
    def is_control(self):
        return self.opcode == OP_TEXT and self.payload.startswith(CONTROL_PREFIX)

    def text(self):
        return self.payload.decode("utf-8")

    def json(self):
        return json.loads(self.payload.decode("utf-8"))

    def __repr__(self):
        p = self.payload if len(self.payload) <= 120 else self.payload[:120] + b"..."
        kind = "text" if self.opcode == OP_TEXT else "binary"
        return f"<Message {kind} len={len(self.payload)} {p!r}>"


class ServerClosed(Exception):
    """A close frame arrived where a data message was expected."""

    def __init__(self, frame):
        super().__init__(f"server sent close {frame.close_code} {frame.close_reason!r}")
        self.frame = frame


class WSConn(RawConn):
    """Opens a TCP connection and sends a handshake for `path`.

    After construction `response` is the handshake Response (status, headers, body) and `ok` is
    true for a 101 whose Sec-WebSocket-Accept matches. `headers` replaces the default handshake
    headers entirely when given (a list of (k, v)); otherwise handshake_headers(**hs) is used.
    """

    def __init__(self, port, path, headers=None, rcvbuf=None, sndbuf=None, timeout=5.0,
                 method="GET", http_version="HTTP/1.1", **hs):
        super().__init__(port, rcvbuf=rcvbuf, timeout=timeout)
        if sndbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if headers is None:
            headers = handshake_headers(**hs)
        self.key = next((v for k, v in headers if k.lower() == "sec-websocket-key"), None)
        self.path = path
        self.request(method, path, headers, version=http_version)
        self.response = self.read_response(timeout)
        self.status = self.response.status
        self.headers = self.response.headers
        self.ok = (self.status == 101 and self.key is not None and
                   self.headers.get("sec-websocket-accept") == accept_for(self.key))
        self.pings = []   # payloads of pings the server sent (seen by read_message)
        self.pongs = []   # payloads of pongs the server sent

    # -- sending ---------------------------------------------------------------------------
    def send_frame(self, opcode, payload=b"", **kw):
        self.send(encode_frame(opcode, payload, **kw))

    def send_text(self, s, **kw):
        self.send_frame(OP_TEXT, s.encode() if isinstance(s, str) else s, **kw)

    def send_binary(self, b, **kw):
        self.send_frame(OP_BINARY, b, **kw)

    def send_ping(self, payload=b"", **kw):
        self.send_frame(OP_PING, payload, **kw)

    def send_pong(self, payload=b"", **kw):
        self.send_frame(OP_PONG, payload, **kw)

    def send_close(self, code=None, reason=b"", **kw):
        self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    def try_send(self, data):
        """Sends, ignoring a connection the server already closed."""
        try:
            self.send(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    # -- receiving -------------------------------------------------------------------------
    def parse_buffered_frame(self):
        """A whole frame from the front of buf (consumed), or None when it is incomplete."""
        f, end = parse_frame(self.buf)
        if f is not None:
            self.buf = self.buf[end:]
        return f

    def read_frame(self, timeout=5.0):
        """The next frame, checked as a server frame must be. Raises Closed at EOF,
        TimeoutError when no complete frame arrives in time (nothing is consumed then)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.parse_buffered_frame()
            if f is not None:
                break
            self._fill(deadline)
        assert not f.masked, "a server frame must not be masked (RFC 6455 5.1)"
        assert f.rsv == 0, f"server frame with reserved bits {f.rsv:#x}"
        assert f.opcode in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG), \
            f"server frame with opcode {f.opcode:#x}"
        if f.opcode >= 0x8:
            assert f.fin and len(f.payload) <= 125, \
                f"bad control frame from the server: fin={f.fin} len={len(f.payload)}"
        return f

    def read_message(self, timeout=5.0, auto_pong=True):
        """The next data message. Pings are recorded (and answered when auto_pong), pongs are
        recorded; a close frame raises ServerClosed. sluice never fragments a message."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.pings.append(f.payload)
                if auto_pong:
                    self.try_send(encode_frame(OP_PONG, f.payload))
                continue
            if f.opcode == OP_PONG:
                self.pongs.append(f.payload)
                continue
            if f.opcode == OP_CLOSE:
                raise ServerClosed(f)
            assert f.opcode in (OP_TEXT, OP_BINARY) and f.fin, \
                f"sluice sends every message as one unfragmented frame, got {f}"
            return Message(f.opcode, f.payload)

    def read_messages(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        return [self.read_message(max(0.001, deadline - time.monotonic())) for _ in range(n)]

    def read_json(self, timeout=5.0):
        m = self.read_message(timeout)
        assert m.is_text, f"expected a text message, got {m}"
        return m.json()

    def no_message_within(self, seconds):
        """True if no data message arrives within `seconds` (pings are answered)."""
        try:
            self.unexpected = self.read_message(seconds)
            return False
        except TimeoutError:
            return True

    def expect_close(self, timeout=5.0, auto_pong=True):
        """Reads until the server's close frame; returns (code, reason bytes, messages before
        it). Fails if the connection ends without a close frame."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            try:
                before.append(self.read_message(max(0.001, deadline - time.monotonic()),
                                                auto_pong))
            except ServerClosed as e:
                return e.frame.close_code, e.frame.close_reason, before
            except Closed:
                raise AssertionError(f"connection ended without a close frame "
                                     f"(after {len(before)} messages: {before[-3:]})")

    def closed_within(self, timeout):
        """True if the TCP connection ends (EOF or reset) within timeout. Frames arriving
        meanwhile are read and discarded."""
        return self.wait_closed(timeout)

    def fileno(self):
        return self.sock.fileno()


class WSCollector(threading.Thread):
    """Reads messages from a WSConn in the background (answering pings) until `stop(msg)` is
    true, the server closes, or the timeout passes."""

    def __init__(self, conn, stop, timeout=30.0):
        super().__init__(daemon=True)
        self.conn = conn
        self.stop = stop
        self.timeout = timeout
        self.msgs = []
        self.count = 0
        self.close_frame = None
        self.closed = False
        self.error = None
        self.done = False

    def run(self):
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.error = "timeout"
                    return
                m = self.conn.read_message(left)
                self.msgs.append(m)
                self.count += 1
                if self.stop(m):
                    self.done = True
                    return
        except ServerClosed as e:
            self.close_frame = e.frame
        except Closed:
            self.closed = True
        except TimeoutError:
            self.error = "timeout"
        except Exception as e:  # reported by the test
            self.error = repr(e)


def ws_url(srv, path):
    return f"ws://127.0.0.1:{srv.port}{path}"


def wait_readable(conns, timeout):
    """The subset of conns with bytes to read (buffered or on the socket) within timeout."""
    ready = [c for c in conns if c.buf]
    if ready:
        return ready
    r, _, _ = select.select([c.sock for c in conns], [], [], timeout)
    return [c for c in conns if c.sock in r]



# -- the websockets library (python3-websockets 10.x, asyncio API) for well-behaved clients ----

def lib_connect(srv, path, **kw):
    """websockets.connect() with test defaults: no size limit, no client pings (the library
    still answers the server's), short timeouts."""
    import websockets
    kw.setdefault("max_size", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", 5)
    kw.setdefault("close_timeout", 2)
    return websockets.connect(ws_url(srv, path), **kw)


def run(coro, timeout=30.0):
    """Runs a coroutine to completion with an overall timeout."""
    import asyncio
    return asyncio.run(asyncio.wait_for(coro, timeout))
