"""Raw subscribers for scenarios that hold many connections in one selector loop: the request
that opens an SSE stream or a WebSocket, a blocking read of the response head or of one whole
response, a connect-and-subscribe, an incremental reader of server WebSocket frames, and a
close by reset. Handshake keys and frame parsing come from test/integ's ws_client; frames to
send are ws_client.encode_frame().

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import re
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "test" / "integ"))
from ws_client import handshake_headers, parse_frame  # noqa: E402


def sse_request(topic, host="127.0.0.1"):
    return (f"GET /topics/{topic} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n").encode()


def ws_request(path, host="127.0.0.1"):
    head = "".join(f"{k}: {v}\r\n" for k, v in handshake_headers())
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode()


class WsReader:
    """Incremental parser of server frames: feed(bytes) -> [(opcode, payload)]."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        pos = 0
        while True:
            f, pos = parse_frame(self.buf, pos)
            if f is None:
                break
            out.append((f.opcode, f.payload))
        del self.buf[:pos]
        return out


def read_head(sock, timeout=10.0):
    """Reads an HTTP response head from a blocking socket: (status, bytes after the head)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head: %r" % buf[:200])
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("response head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    return status, rest


def read_response(sock, timeout=10.0):
    """Reads one whole HTTP response with a Content-Length body from a blocking socket:
    (status, body). Whatever follows it is lost, so use it only without pipelining."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(body) < n:
        chunk = sock.recv(max(4096, n - len(body)))
        if not chunk:
            raise ConnectionError("closed in the response body")
        body += chunk
    return status, body[:n]


def open_client(port, kind, topic, rcvbuf=None, host="127.0.0.1", timeout=10.0, bind=None):
    """Connects and subscribes: kind "sse" (GET /topics/<topic> as an event stream) or "ws"
    (WebSocket on /topics/<topic>). Returns (socket, bytes already read after the head), or
    raises. `rcvbuf` sets SO_RCVBUF before connecting (1 gives the kernel's minimum)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if bind:
        s.bind((bind, 0))
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        if kind == "sse":
            s.sendall(sse_request(topic, host))
            want = 200
        else:
            s.sendall(ws_request(f"/topics/{topic}", host))
            want = 101
        status, rest = read_head(s, timeout)
        if status != want:
            raise ConnectionError(f"{kind} {topic}: status {status}")
    except BaseException:
        s.close()
        raise
    return s, rest


def hard_close(sock):
    """Closes with a reset (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
