"""Small clients for the black-box tests: raw HTTP/1.1 over sockets (exact byte control) and an
SSE reader that parses the stream into blocks.

Everything here has a timeout; nothing blocks forever. The SSE parser follows the WHATWG
event-stream rules (lines end at CR, LF or CRLF; `field: value` with one optional space removed;
lines starting with ':' are comments), but it also reports blocks that carry no `data:` (a bare
`retry:` or a comment), because the protocol puts meaning in those.
"""

import collections
import json
import re
import select
import socket
import struct
import threading
import time

ID_RE = re.compile(r"^([0-9a-f]{16})-(\d+)$")
MULTI_ID_RE = re.compile(r"^([0-9a-f]{16})-(\d+):(.+)$")
LINE_SPLIT_RE = re.compile(rb"\r\n|\r|\n")


def split_lines(s):
    """How a payload's lines arrive: split at CR, LF or CRLF."""
    return re.split(r"\r\n|\r|\n", s)


def parse_id(i):
    m = ID_RE.match(i or "")
    assert m, f"bad message id {i!r}"
    return m.group(1), int(m.group(2))


def parse_multi_id(i):
    m = MULTI_ID_RE.match(i or "")
    assert m, f"bad multi-topic id {i!r}"
    return m.group(1), int(m.group(2)), m.group(3)


class Closed(Exception):
    pass


class Response:
    def __init__(self, status, reason, headers, body, raw_head=b""):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (last wins); see header_list
        self.header_list = []
        self.body = body
        self.raw_head = raw_head

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def _parse_head(head):
    lines = head.split(b"\r\n")
    m = re.match(rb"^HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
    assert m, f"bad status line {lines[0]!r}"
    headers = {}
    hlist = []
    for ln in lines[1:]:
        if not ln:
            continue
        k, _, v = ln.partition(b":")
        k = k.decode().strip().lower()
        v = v.decode().strip()
        headers[k] = v
        hlist.append((k, v))
    return int(m.group(1)), m.group(2).decode(), headers, hlist


class RawConn:
    """A raw TCP connection with a receive buffer and response framing."""

    def __init__(self, port, host="127.0.0.1", rcvbuf=None, timeout=5.0, source=None):
        v6 = ":" in host or (source is not None and ":" in source)
        self.sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False

    # -- sending ---------------------------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def request(self, method, path, headers=None, body=None, version="HTTP/1.1"):
        """Sends one request. `headers` is a list of (k, v) or a dict; Host is added."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in hdrs):
            hdrs.insert(0, ("Host", "127.0.0.1"))
        if body is not None:
            if isinstance(body, str):
                body = body.encode()
            if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
                hdrs.append(("Content-Length", str(len(body))))
        head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
        self.send(head.encode() + b"\r\n" + (body or b""))

    # -- receiving -------------------------------------------------------------------------
    def _fill(self, deadline):
        """Reads more bytes into buf; raises Closed on EOF/reset, TimeoutError at deadline."""
        if self.eof:
            raise Closed()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data")
        r, _, _ = select.select([self.sock], [], [], remaining)
        if not r:
            raise TimeoutError("timed out waiting for data")
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, ConnectionAbortedError):
            self.eof = True
            raise Closed()
        if not data:
            self.eof = True
            raise Closed()
        self.buf += data

    def read_exact(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, sep, timeout=5.0, limit=1 << 20):
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[: i + len(sep)], self.buf[i + len(sep):]
                return out
            assert len(self.buf) < limit, "no separator within limit"
            self._fill(deadline)

    def read_head(self, timeout=5.0):
        head = self.read_until(b"\r\n\r\n", timeout)
        status, reason, headers, hlist = _parse_head(head[:-4])
        return status, reason, headers, hlist, head

    def read_response(self, timeout=5.0, head_only=False):
        """Reads one response (skipping nothing: a 100 Continue is returned as such)."""
        deadline = time.monotonic() + timeout
        status, reason, headers, hlist, head = self.read_head(timeout)
        body = b""
        if head_only or status in (100, 101, 204, 304):
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self.read_until(b"\r\n", max(0.01, deadline - time.monotonic()))
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until an empty line
                    while self.read_until(b"\r\n", max(0.01, deadline - time.monotonic())) != b"\r\n":
                        pass
                    break
                body += self.read_exact(size, max(0.01, deadline - time.monotonic()))
                self.read_exact(2, max(0.01, deadline - time.monotonic()))
        elif "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]), max(0.01, deadline - time.monotonic()))
        else:
            # read to EOF
            try:
                while True:
                    self._fill(deadline)
            except Closed:
                pass
            body, self.buf = self.buf, b""
        r = Response(status, reason, headers, body, head)
        r.header_list = hlist
        return r

    def wait_closed(self, timeout=5.0):
        """True if the peer closes (EOF or reset) within timeout; discards data meanwhile."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
                self.buf = self.buf[-65536:]
        except Closed:
            return True
        except TimeoutError:
            return False

    def set_linger_rst(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def http(port, method, path, headers=None, body=None, timeout=5.0):
    """One request on a fresh connection with `Connection: close`; returns a Response."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if not any(k.lower() == "connection" for k, _ in hdrs):
        hdrs.append(("Connection", "close"))
    c = RawConn(port, timeout=timeout)
    try:
        c.request(method, path, hdrs, body)
        return c.read_response(timeout)
    finally:
        c.close()


class SSEClient(RawConn):
    """Subscribes with a raw GET and parses the event stream incrementally.

    After construction, `status`/`headers` hold the response head; for a non-200 answer
    `response` holds the whole Response and no stream is read.
    """

    def __init__(self, port, path, headers=None, rcvbuf=None, timeout=5.0, read_head=True,
                 keep_raw=False, source=None):
        super().__init__(port, rcvbuf=rcvbuf, timeout=timeout, source=source)
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if not any(k.lower() == "accept" for k, _ in hdrs):
            hdrs.append(("Accept", "text/event-stream"))
        self.path = path
        self.request("GET", path, hdrs)
        self.status = None
        self.headers = {}
        self.response = None
        self.keep_raw = keep_raw
        self.raw = b""
        self._chunked = False
        self._chunk_left = 0
        self._text = b""          # de-chunked stream bytes not yet split into lines
        self._lines = collections.deque()  # complete lines not yet consumed
        self._cur = self._new_block()
        self._pending_cr = False
        if read_head:
            self.read_stream_head(timeout)

    @staticmethod
    def _new_block():
        return {"id": None, "event": None, "data": None, "retry": None, "comments": [],
                "fields": []}

    def read_stream_head(self, timeout=5.0):
        status, reason, headers, hlist, head = self.read_head(timeout)
        self.status = status
        self.headers = headers
        if status != 200:
            # read its body the ordinary way
            body = b""
            if "content-length" in headers:
                body = self.read_exact(int(headers["content-length"]), timeout)
            self.response = Response(status, reason, headers, body, head)
            self.response.header_list = hlist
            return self.response
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        return None

    # -- byte layer --------------------------------------------------------------------------
    def _pump(self, deadline):
        """Moves bytes from the socket into complete lines; raises Closed/TimeoutError."""
        if not self.buf:  # bytes read along with the head come first
            self._fill(deadline)
        data, self.buf = self.buf, b""
        if self._chunked:
            data = self._dechunk(data)
        if self.keep_raw:
            self.raw += data
        self._text += data
        self._split()

    def _dechunk(self, data):
        out = b""
        self._chunkbuf = getattr(self, "_chunkbuf", b"") + data
        while self._chunkbuf:
            if self._chunk_left > 0:
                take = self._chunkbuf[: self._chunk_left]
                out += take
                self._chunk_left -= len(take)
                self._chunkbuf = self._chunkbuf[len(take):]
                if self._chunk_left == 0:
                    self._chunk_left = -2  # expect CRLF
                continue
            if self._chunk_left == -2:
                if len(self._chunkbuf) < 2:
                    break
                self._chunkbuf = self._chunkbuf[2:]
                self._chunk_left = 0
                continue
            i = self._chunkbuf.find(b"\r\n")
            if i < 0:
                break
            size = int(self._chunkbuf[:i].split(b";")[0], 16)
            self._chunkbuf = self._chunkbuf[i + 2:]
            if size == 0:
                self.eof = True
                break
            self._chunk_left = size
        return out

    def _split(self):
        t = self._text
        if not t:
            return
        hold = b""
        if t.endswith(b"\r"):
            # a CR at the very end may be the first half of a CRLF: keep it back
            t, hold = t[:-1], b"\r"
        parts = LINE_SPLIT_RE.split(t)
        self._lines.extend(parts[:-1])
        self._text = parts[-1] + hold

    # -- line layer --------------------------------------------------------------------------
    def read_block(self, timeout=5.0):
        """Returns the next block (up to a blank line) as a dict:
        id, event, data (str joined with \\n, or None), retry (str or None),
        comments (list of str, leading space stripped), fields (list of (name, value))."""
        deadline = time.monotonic() + timeout
        while True:
            while self._lines:
                line = self._lines.popleft().decode("utf-8", "replace")
                if line == "":
                    blk = self._cur
                    self._cur = self._new_block()
                    if blk["fields"] or blk["comments"]:
                        return blk
                    continue
                if line.startswith(":"):
                    c = line[1:]
                    self._cur["comments"].append(c[1:] if c.startswith(" ") else c)
                    continue
                name, sep, value = line.partition(":")
                if sep and value.startswith(" "):
                    value = value[1:]
                self._cur["fields"].append((name, value))
                if name == "data":
                    d = self._cur["data"]
                    self._cur["data"] = value if d is None else d + "\n" + value
                elif name == "event":
                    self._cur["event"] = value
                elif name == "id":
                    self._cur["id"] = value
                elif name == "retry":
                    self._cur["retry"] = value
            self._pump(deadline)

    def read_event(self, timeout=5.0, skip_heartbeats=True):
        """The next block that carries data (an event a browser would dispatch)."""
        deadline = time.monotonic() + timeout
        while True:
            blk = self.read_block(max(0.0, deadline - time.monotonic()) or 0.001)
            if blk["data"] is None:
                continue
            if skip_heartbeats and blk["event"] == "sluice.heartbeat":
                continue
            return blk

    def read_events(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        return [self.read_event(max(0.001, deadline - time.monotonic())) for _ in range(n)]

    def read_retry(self, timeout=5.0):
        """Reads the opening block and returns its retry value."""
        blk = self.read_block(timeout)
        assert blk["retry"] is not None, f"stream did not open with retry: {blk}"
        return blk["retry"]

    def no_event_within(self, seconds):
        """True if no data-carrying event arrives within `seconds` (comments are ignored)."""
        try:
            blk = self.read_event(seconds)
        except TimeoutError:
            return True
        except Closed:
            return True
        self.unexpected = blk
        return False

    def read_all_until_closed(self, timeout=10.0):
        """Reads blocks until the stream ends; returns the blocks. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            try:
                out.append(self.read_block(max(0.001, deadline - time.monotonic())))
            except Closed:
                # a final block without the blank line is not dispatched
                return out


def wait_until(pred, timeout=5.0, interval=0.05, msg="condition"):
    """Polls pred() until it returns something truthy; returns that. Fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{msg} not reached within {timeout}s")
        time.sleep(interval)


class Publisher:
    """Publishes over one keep-alive connection (fast, for volume)."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.c = RawConn(port, timeout=timeout)

    def post(self, path, body, headers=None):
        self.c.request("POST", path, headers or [], body)
        return self.c.read_response(self.timeout)

    def publish(self, topic, payload, event=None):
        path = f"/topics/{topic}" + (f"?event={event}" if event else "")
        r = self.post(path, payload)
        assert r.status == 202, f"publish to {topic}: {r.status} {r.body!r}"
        return r.json()["id"]

    def close(self):
        self.c.close()


class Collector(threading.Thread):
    """Reads blocks from an SSEClient in the background until `stop(block)` is true, the
    stream closes, or the timeout passes."""

    def __init__(self, sub, stop, timeout=30.0):
        super().__init__(daemon=True)
        self.sub = sub
        self.stop = stop
        self.timeout = timeout
        self.blocks = []
        self.closed = False
        self.error = None
        self.done = False
        self.nevents = 0  # data-carrying blocks so far

    def run(self):
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.error = "timeout"
                    return
                b = self.sub.read_block(left)
                self.blocks.append(b)
                if b["data"] is not None:
                    self.nevents += 1
                if self.stop(b):
                    self.done = True
                    return
        except Closed:
            self.closed = True
        except TimeoutError:
            self.error = "timeout"
        except Exception as e:  # reported by the test
            self.error = repr(e)

    def events(self):
        return [b for b in self.blocks if b["data"] is not None]
