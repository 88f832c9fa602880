"""Housekeeping on a slow device (store/lossless.c, "the housekeeping lane"): cursor-file saves
end in fdatasync and segment deletes in a discard, each as long as the device takes. They
must not take every thread of the pool, or the log's writes (a publish's 202 waits for its
write), reads and the file sinks' jobs wait behind them. A segment is deleted only once the
cursor file holds a checkpoint past it, so a crash never brings back a cursor whose next
message is gone; and what a crash left undeleted goes at the next start.

test/tools/slowfs.c, preloaded into the server, makes the cursor files' fdatasync and the
segments' unlink sleep 5 s and notes when each slow call starts and ends; the checks compare
the order of events, not times.
"""

import os
import signal
from pathlib import Path

import pytest

from conftest import SLUICE_BIN
from lossless_util import (ack_ok, cursors, is_asan, restart, segment_files, start, stop,
                           topic_dir)
from sluice_client import parse_id, wait_until

SHIM = Path(os.environ.get("SLUICE_SLOWFS", Path(SLUICE_BIN).parent / "libsluice-slowfs.so"))
N = 8  # topics whose housekeeping is slow: twice the pool's 4 threads
SMALL_SEGMENTS = [("ll-*", {"durability": "lossless", "segment_bytes": "4KiB"})]


def lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def slowfs(sluice_factory, tmp_path):
    """(start(topics, only=None, fail=False, delay_ms=5000) -> server with the library
    preloaded, the notes directory). Touch <dir>/armed to make the calls slow; only: "cursors"
    or "seg"; fail: the slowed calls fail (EIO)."""
    if not SHIM.exists():
        pytest.skip(f"{SHIM} not built")
    if is_asan():
        pytest.skip("a preloaded library cannot come before the sanitizer's runtime")
    notes = tmp_path / "slowfs"
    notes.mkdir()

    def run(topics, only=None, fail=False, delay_ms=5000):
        env = {"LD_PRELOAD": str(SHIM), "SLOWFS_DIR": str(notes), "SLOWFS_DELAY_MS": str(delay_ms),
               "UV_THREADPOOL_SIZE": "4"}
        if only:
            env["SLOWFS_ONLY"] = only
        if fail:
            env["SLOWFS_FAIL"] = "1"
        return start(lambda **kw: sluice_factory(env=env, **kw), topics=topics)

    return run, notes


def durable_readers(srv, names):
    subs = []
    for t in names:
        sub = srv.sse(f"/topics/{t}?durable=c")  # makes the cursor
        assert sub.status == 200, f"GET {t}: {sub.response}"
        subs.append(sub)
    return subs


def segmented_log(srv, n):
    """A durable reader `c` on ll-0 and n messages of a 4 KiB segment each: (the reader, the
    ids, the log's directory, its segment files)."""
    (sub,) = durable_readers(srv, ["ll-0"])
    ids = [srv.publish("ll-0", b"x" * 3000) for _ in range(n)]
    d = topic_dir(srv, "ll-0")
    return sub, ids, d, segment_files(d)


def publish_during_slow_calls(srv, notes, what):
    """A publish made while slow calls run is answered before any of them ends."""
    wait_until(lambda: len(lines(notes / "started")) >= 1, timeout=10,
               msg=f"a slow {what} started")
    r = srv.post("/topics/ll-other", b"while they are slow", timeout=30)
    done = lines(notes / "done")
    assert r.status == 202, r
    assert done == [], (f"the publish was acknowledged only after {len(done)} slow {what}(s) "
                        f"ended: it waited for a pool thread they held")


def settle(srv, notes, subs):
    (notes / "armed").unlink()
    wait_until(lambda: len(lines(notes / "done")) == len(lines(notes / "started")), timeout=20,
               msg="the slow calls ended")
    for sub in subs:
        sub.close()
    stop(srv)


def test_slow_cursor_saves_do_not_hold_publishes(slowfs):
    run, notes = slowfs
    srv = run([("ll-*", {"durability": "lossless"})])
    names = [f"ll-{i}" for i in range(N)]
    subs = durable_readers(srv, names)
    for t in names:
        ack_ok(srv, t, "c", srv.publish(t, b"first"))
    wait_until(lambda: all(cursors(srv, t)["c"]["checkpoint"] for t in names),
               msg="first checkpoints")
    (notes / "armed").touch()
    for t in names:
        ack_ok(srv, t, "c", srv.publish(t, b"second"))
    publish_during_slow_calls(srv, notes, "cursor save")
    settle(srv, notes, subs)


def test_slow_segment_deletes_do_not_hold_publishes(slowfs):
    run, notes = slowfs
    srv = run(SMALL_SEGMENTS, only="seg")
    names = [f"ll-{i}" for i in range(N)]
    subs, last = durable_readers(srv, names), {}
    for t in names:
        for _ in range(3):  # a 4 KiB segment each
            last[t] = srv.publish(t, b"x" * 3000)
    (notes / "armed").touch()
    for t in names:  # every segment passed: deleted
        ack_ok(srv, t, "c", last[t])
    publish_during_slow_calls(srv, notes, "segment delete")
    settle(srv, notes, subs)


def test_segments_are_deleted_only_after_the_cursor_file_holds_the_ack(slowfs):
    run, notes = slowfs
    srv = run(SMALL_SEGMENTS, only="cursors")
    t = "ll-0"
    sub, ids, d, before = segmented_log(srv, 3)
    assert len(before) >= 3, before
    (notes / "armed").touch()
    ack_ok(srv, t, "c", ids[-1])
    wait_until(lambda: lines(notes / "started"), timeout=10, msg="the slow cursor save started")
    # While the save is under way a crash would bring back the old checkpoint (none), whose
    # reader needs every segment: none may be gone yet.
    still = [p for p in before if p.exists()]
    assert lines(notes / "done") == [] and still == before, (
        "segments deleted before the cursor file held the acknowledgement: "
        f"{[p.name for p in before]} -> {[p.name for p in still]}")
    (notes / "armed").unlink()
    wait_until(lambda: lines(notes / "done"), timeout=20, msg="the save ended")
    wait_until(lambda: len(segment_files(d)) < len(before), timeout=10,
               msg="the passed segments deleted after the save")
    sub.close()
    stop(srv)


def deletes_under_way(slowfs, n):
    """A server whose ll-0 has n passed segments, acked by its cursor c with deletes slow, once
    the first delete started: (server, notes, ids, topic dir, the segment files before)."""
    run, notes = slowfs
    srv = run(SMALL_SEGMENTS, only="seg")
    sub, ids, d, before = segmented_log(srv, n)
    (notes / "armed").touch()
    ack_ok(srv, "ll-0", "c", ids[-1])
    wait_until(lambda: lines(notes / "started"), timeout=10, msg="a slow delete started")
    sub.close()
    return srv, notes, ids, d, before


def test_segments_a_crash_left_behind_are_deleted_at_start(slowfs, sluice_factory):
    t = "ll-0"
    srv, notes, ids, d, before = deletes_under_way(slowfs, 3)
    srv.signal(signal.SIGKILL)  # the deletes had not happened
    srv.wait_exit(10)
    assert [p for p in before if p.exists()] == before
    (notes / "armed").unlink()
    new = restart(sluice_factory, srv, sig=signal.SIGKILL)
    assert cursors(new, t)["c"]["checkpoint"] == ids[-1]
    wait_until(lambda: len(segment_files(d)) < len(before), timeout=10,
               msg="the segments the cursor had passed deleted at start, with no new ack")
    stop(new)


def test_shutdown_leaves_queued_deletes_to_the_next_start(slowfs, sluice_factory):
    t = "ll-0"
    # more passed segments than the lane runs at once
    srv, notes, ids, d, before = deletes_under_way(slowfs, 6)
    stop(srv)  # SIGTERM: exit 0, within stop()'s 15 s
    started = lines(notes / "started")
    assert len(started) < len(before) - 1, (
        f"the shutdown ran every queued delete ({len(started)} of {len(before)} segments) "
        "instead of leaving them to the next start")
    left = segment_files(d)
    assert len(left) > 1, left
    (notes / "armed").unlink()
    new = restart(sluice_factory, srv)
    assert cursors(new, t)["c"]["checkpoint"] == ids[-1]
    wait_until(lambda: len(segment_files(d)) == 1, timeout=10,
               msg="the passed segments deleted at start")
    # The files the shutdown left do not cost the next start its clean-shutdown record.
    assert "start=clean" in new.logs(), new.logs()[-2000:]
    stop(new)


def test_a_new_cursors_first_save_is_not_overtaken_by_deletes(slowfs):
    run, notes = slowfs
    srv = run(SMALL_SEGMENTS, only="cursors")
    t = "ll-0"
    ids = [srv.publish(t, b"x" * 3000) for _ in range(3)]
    d = topic_dir(srv, t)
    before = segment_files(d)
    (notes / "armed").touch()
    sub = srv.sse(f"/topics/{t}?durable=c&since={ids[0]}")  # made now: its first save is slow
    assert sub.status == 200, sub.response
    wait_until(lambda: lines(notes / "started"), timeout=10, msg="the first save started")
    ack_ok(srv, t, "c", ids[-1])
    # A crash once that save ends brings the cursor back at ids[0]: what follows must stay.
    after_first = [p for p in before if int(p.stem) > parse_id(ids[0])[1]]
    still = [p for p in after_first if p.exists()]
    assert after_first and lines(notes / "done") == [] and still == after_first, (
        "segments past the first save's checkpoint deleted while it was under way: "
        f"{[p.name for p in after_first]} -> {[p.name for p in still]}")
    (notes / "armed").unlink()
    wait_until(lambda: len(segment_files(d)) < len(before), timeout=20,
               msg="the passed segments deleted after the saves")
    sub.close()
    stop(srv)


def test_a_failed_cursor_save_is_tried_again(slowfs):
    run, notes = slowfs
    srv = run([("ll-*", {"durability": "lossless"})], only="cursors", fail=True, delay_ms=0)
    t = "ll-0"
    (sub,) = durable_readers(srv, [t])
    ack_ok(srv, t, "c", srv.publish(t, b"first"))
    (notes / "armed").touch()
    ack_ok(srv, t, "c", srv.publish(t, b"second"))
    # Failing saves are retried with no new acknowledgement (about once a second), and logged
    # once, not at every try.
    wait_until(lambda: len(lines(notes / "started")) >= 3, timeout=15,
               msg="the failed save tried again")
    assert srv.logs().count("cursor file write failed") == 1, srv.logs()[-2000:]
    (notes / "armed").unlink()
    wait_until(lambda: "cursor file written again" in srv.logs(), timeout=10,
               msg="a retry succeeded")
    sub.close()
    stop(srv)
