"""The durable cursors' file across kill -9 (store/lossless.c, "the cursor file").

A checkpoint overwrites one of the file's two slots in place; recovery takes the intact slot
with the highest generation. These tests read the file with their own parser of the format
(header fields and the SHA-256 sum), kill the server with SIGKILL, damage the newest slot as a
torn write would, and check that the restarted server resumes from the previous checkpoint;
and that a server killed while acknowledgements stream in restarts on one it was given.
"""

import hashlib
import re
import signal
import threading

from lossless_util import ack, ack_ok, cursors, restart, start, stop, topic_dir
from sluice_client import Closed, parse_id, wait_until

LOSSLESS = {"durability": "lossless"}
HDR = re.compile(rb"#sluice-cursors 2 size=([0-9a-f]{8}) gen=([0-9a-f]{16}) "
                 rb"len=([0-9a-f]{8}) sum=([0-9a-f]{16})\n")
HDR_LEN = 87


def slots(path):
    """The file's slots as (offset, generation, text) for the intact ones."""
    b = path.read_bytes()
    assert len(b) % 2 == 0 and len(b) >= 2 * 4096, f"cursor file of {len(b)} bytes"
    size = len(b) // 2
    out = []
    for off in (0, size):
        m = HDR.match(b, off)
        if m is None or int(m.group(1), 16) != size:
            continue
        n = int(m.group(3), 16)
        text = b[off + HDR_LEN:off + HDR_LEN + n]
        sum_ = hashlib.sha256(b[off:off + HDR_LEN - 17] + text).digest()[:8].hex()
        if sum_.encode() == m.group(4):
            out.append((off, int(m.group(2), 16), text.decode()))
    return out


def newest(path):
    s = slots(path)
    return max(s, key=lambda x: x[1]) if s else None


def on_disk(path, name, seq):
    """True when the newest intact slot holds `name seq`."""
    try:
        n = newest(path)
    except (FileNotFoundError, AssertionError):
        return False
    return n is not None and f"{name} {seq}\n" in n[2]


def make(sluice_factory, t, n):
    srv = start(sluice_factory, topics=[("ll-*", dict(LOSSLESS))])
    keep = srv.sse(f"/topics/{t}?durable=keep&from=oldest")
    assert keep.status == 200, keep.response
    keep.read_retry()
    ids = srv.publish_batch(t, [f"m{i}" for i in range(n)])
    keep.close()
    wait_until(lambda: cursors(srv, t)["keep"]["connected"] == 0, msg="cursor released")
    return srv, ids


def test_torn_slot_after_kill9_keeps_the_previous_checkpoint(sluice_factory):
    t = "ll-torn"
    srv, ids = make(sluice_factory, t, 20)
    f = topic_dir(srv, t) / "cursors"
    ino = None
    for i in (4, 9):
        ack_ok(srv, t, "keep", ids[i])
        wait_until(lambda: on_disk(f, "keep", i + 1), msg=f"checkpoint {i + 1} on disk")
        if ino is None:
            ino = f.stat().st_ino
    assert f.stat().st_ino == ino, "a checkpoint replaced the file instead of a slot"
    assert len(slots(f)) == 2, "both slots intact after two checkpoints"

    # Killed with both slots intact: the newest checkpoint.
    stop(srv, signal.SIGKILL)
    srv = restart(sluice_factory, srv)
    assert cursors(srv, t)["keep"]["checkpoint"] == ids[9]

    # The write of checkpoint 15 torn by a crash: its slot's text half old, half new.
    ack_ok(srv, t, "keep", ids[14])
    wait_until(lambda: on_disk(f, "keep", 15), msg="checkpoint 15 on disk")
    stop(srv, signal.SIGKILL)
    off, gen, _ = newest(f)
    with open(f, "r+b") as fh:
        fh.seek(off + HDR_LEN + 5)
        fh.write(b"\x00" * 100)
    assert newest(f)[1] == gen - 1, "the damaged slot still parses"
    srv = restart(sluice_factory, srv)
    assert cursors(srv, t)["keep"]["checkpoint"] == ids[9]
    # The server goes on writing the file: the next checkpoint takes the damaged slot.
    ack_ok(srv, t, "keep", ids[17])
    wait_until(lambda: on_disk(f, "keep", 18), msg="checkpoint 18 on disk")
    assert {s[0] for s in slots(f)} == {0, f.stat().st_size // 2}

    # Both slots damaged: the cursor is not restored, and the log says why.
    stop(srv, signal.SIGKILL)
    b = bytearray(f.read_bytes())
    for off in (0, len(b) // 2):
        b[off + HDR_LEN] ^= 0xff
    f.write_bytes(bytes(b))
    srv = restart(sluice_factory, srv)
    assert "keep" not in cursors(srv, t)
    assert "cursor file has no intact slot" in srv.logs()


def test_kill9_while_acknowledging_restarts_on_a_given_checkpoint(sluice_factory):
    t = "ll-acks"
    srv, ids = make(sluice_factory, t, 400)
    f = topic_dir(srv, t) / "cursors"
    acked = []
    done = threading.Event()

    def acker():
        for i in ids:
            if done.is_set():
                return
            try:
                r = ack(srv, t, "keep", i)
            except (OSError, Closed):  # the server was killed
                return
            if r.status != 204:
                return
            acked.append(i)

    th = threading.Thread(target=acker)
    th.start()
    try:
        # Several checkpoints written, then the kill lands among the next ones.
        first = wait_until(lambda: newest(f) if f.exists() else None, msg="a checkpoint")[1]
        wait_until(lambda: newest(f)[1] >= first + 3 or len(acked) == len(ids), timeout=20,
                   msg="checkpoints written")
        # What the file holds now stays on disk: a later write goes to the other slot.
        before = int(re.search(r"^keep (\d+)$", newest(f)[2], re.M).group(1))
        stop(srv, signal.SIGKILL)
    finally:
        done.set()
        th.join(10)
    assert acked, "no acknowledgement went through"
    srv = restart(sluice_factory, srv)
    ck = cursors(srv, t)["keep"]["checkpoint"]
    assert ck in acked, (ck, acked[-3:])
    assert parse_id(ck)[1] >= before, (ck, before)
