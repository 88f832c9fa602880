"""Housekeeping on a slow device (store/lossless.c, "the housekeeping lane"): cursor-file saves
end in fdatasync and segment deletes in a discard, each as long as the device takes. They
must not take every thread of the pool, or the log's writes (a publish's 202 waits for its
write), reads and the file sinks' jobs wait behind them.

test/tools/slowfs.c, preloaded into the server, makes the cursor files' fdatasync sleep 5 s
and notes when each slow call starts and ends; the checks compare the order of events, not
times.
"""

import os
from pathlib import Path

import pytest

from conftest import SLUICE_BIN
from lossless_util import ack_ok, cursors, is_asan, start, stop
from sluice_client import wait_until

SHIM = Path(os.environ.get("SLUICE_SLOWFS", Path(SLUICE_BIN).parent / "libsluice-slowfs.so"))
TOPICS = [("ll-*", {"durability": "lossless"})]
N = 8  # topics whose cursor saves are slow: twice the pool's 4 threads


def lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_slow_cursor_saves_do_not_hold_publishes(sluice_factory, tmp_path):
    if not SHIM.exists():
        pytest.skip(f"{SHIM} not built")
    if is_asan():
        pytest.skip("a preloaded library cannot come before the sanitizer's runtime")
    slow = tmp_path / "slowfs"
    slow.mkdir()
    env = {"LD_PRELOAD": str(SHIM), "SLOWFS_DIR": str(slow), "SLOWFS_DELAY_MS": "5000",
           "UV_THREADPOOL_SIZE": "4"}
    factory = lambda **kw: sluice_factory(env=env, **kw)  # noqa: E731
    srv = start(factory, topics=TOPICS)
    names = [f"ll-{i}" for i in range(N)]
    subs = []
    for t in names:
        sub = srv.sse(f"/topics/{t}?durable=c")  # makes the cursor
        assert sub.status == 200, f"GET {t}: {sub.response}"
        subs.append(sub)
        ack_ok(srv, t, "c", srv.publish(t, b"first"))
    wait_until(lambda: all(cursors(srv, t)["c"]["checkpoint"] for t in names),
               msg="first checkpoints")

    (slow / "armed").touch()
    for t in names:
        ack_ok(srv, t, "c", srv.publish(t, b"second"))
    # The saves are under way (each sleeping in fdatasync) before the publish below is made.
    wait_until(lambda: len(lines(slow / "started")) >= 1, timeout=10, msg="a slow save started")

    r = srv.post("/topics/ll-other", b"while the saves are slow", timeout=30)
    done = lines(slow / "done")
    assert r.status == 202, r
    assert done == [], (f"the publish was acknowledged only after {len(done)} slow cursor "
                        f"save(s) ended: it waited for a pool thread they held")
    # Every save still happens, in the end, with the newest checkpoint.
    (slow / "armed").unlink()
    wait_until(lambda: len(lines(slow / "done")) == len(lines(slow / "started")), timeout=20,
               msg="the slow saves ended")
    for sub in subs:
        sub.close()
    stop(srv)


def test_slow_segment_deletes_do_not_hold_publishes(sluice_factory, tmp_path):
    if not SHIM.exists():
        pytest.skip(f"{SHIM} not built")
    if is_asan():
        pytest.skip("a preloaded library cannot come before the sanitizer's runtime")
    slow = tmp_path / "slowfs"
    slow.mkdir()
    env = {"LD_PRELOAD": str(SHIM), "SLOWFS_DIR": str(slow), "SLOWFS_DELAY_MS": "5000",
           "UV_THREADPOOL_SIZE": "4"}
    factory = lambda **kw: sluice_factory(env=env, **kw)  # noqa: E731
    srv = start(factory, topics=[("ll-*", {"durability": "lossless", "segment_bytes": "4KiB"})])
    names = [f"ll-{i}" for i in range(N)]
    subs, last = [], {}
    for t in names:
        sub = srv.sse(f"/topics/{t}?durable=c")
        assert sub.status == 200, f"GET {t}: {sub.response}"
        subs.append(sub)
        for i in range(3):  # a 4 KiB segment each
            last[t] = srv.publish(t, b"x" * 3000)

    (slow / "armed").touch()
    for t in names:  # every segment passed: deleted
        ack_ok(srv, t, "c", last[t])
    wait_until(lambda: len(lines(slow / "started")) >= 1, timeout=10,
               msg="a slow delete started")

    r = srv.post("/topics/ll-other", b"while the deletes are slow", timeout=30)
    done = lines(slow / "done")
    assert r.status == 202, r
    assert done == [], (f"the publish was acknowledged only after {len(done)} slow segment "
                        f"delete(s) ended: it waited for a pool thread they held")
    (slow / "armed").unlink()
    wait_until(lambda: len(lines(slow / "done")) == len(lines(slow / "started")), timeout=20,
               msg="the slow deletes ended")
    for sub in subs:
        sub.close()
    stop(srv)
