"""The command line and the config file: --version, --help, --check-config, errors with
file:line, --listen, structured logs."""

import os
import re
import socket
import subprocess

import pytest

from conftest import SLUICE_BIN, free_port
from sluice_client import http

GOOD = """[server]
listen = 127.0.0.1:0
memory_limit = 64MiB
write_stall_timeout = 2s
header_timeout = 2s
[limits]
max_connections = 100
[topic "*"]
max_messages = 100
overflow = skip
[topic "strict/*"]
overflow = disconnect
lag_hard_messages = 50
"""

ALL_KEYS = """[server]
listen = 127.0.0.1:0
data_dir = ./data
memory_limit = 128MiB
shutdown_drain = 5s
header_timeout = 10s
idle_timeout = 60s
write_stall_timeout = 30s
sse_retry = 2000ms
topic_idle_ttl = 1m
log_level = info
[limits]
max_connections = 1000
max_connections_per_ip = 100
max_header_bytes = 16KiB
max_url_bytes = 8k
max_message_bytes = 1MiB
max_body_bytes = 8MiB
max_topics_per_connection = 64
max_topic_name = 256
max_topics = 100000
[topic "*"]
max_messages = 1024
max_bytes = 16MiB
max_age = 1h
overflow = skip
lag_hard_messages = 500
lag_hard_bytes = 4MiB
lag_soft_messages = 100
lag_soft_bytes = 1MiB
lag_soft = 10s
lag_max_age = 30s
heartbeat = 15s
heartbeat_event = false
"""

# (line number of each error) -> text; line numbers are 1-based
BAD = """[server]
listen = 127.0.0.1:0
bogus_key = 1
memory_limit = lots
write_stall_timeout = 2 fortnights
[limits]
max_connections = -5
[topic "*"]
overflow = sometimes
heartbeat_event = perhaps
[nope]
"""
BAD_LINES = [3, 4, 5, 7, 9, 10, 11]


def run(args, timeout=10):
    if not os.access(SLUICE_BIN, os.X_OK):
        pytest.skip(f"sluice binary not found at {SLUICE_BIN}")
    p = subprocess.run([SLUICE_BIN] + args, capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def test_version():
    rc, out, err = run(["--version"])
    assert rc == 0
    assert re.search(r"\b\d+\.\d+\.\d+\b", out), f"no version on stdout: {out!r} {err!r}"


def test_help():
    rc, out, err = run(["--help"])
    assert rc == 0
    for flag in ["--config", "--listen", "--check-config", "--version"]:
        assert flag in out + err


def test_unknown_option_fails():
    rc, out, err = run(["--frobnicate"])
    assert rc != 0


@pytest.mark.parametrize("text", [GOOD, ALL_KEYS], ids=["example", "all_keys"])
def test_check_config_good(tmp_path, text):
    p = tmp_path / "good.ini"
    p.write_text(text)
    rc, out, err = run(["--config", str(p), "--check-config"])
    assert rc == 0, f"a valid file was refused: {out}{err}"


def test_check_config_reports_every_error_with_file_and_line(tmp_path):
    p = tmp_path / "bad.ini"
    p.write_text(BAD)
    rc, out, err = run(["--config", str(p), "--check-config"])
    assert rc != 0
    text = out + err
    for n in BAD_LINES:
        assert f"{p}:{n}:" in text or f"bad.ini:{n}:" in text, \
            f"no error reported for line {n}:\n{text}"
    for n in [1, 2, 6, 8]:
        assert f"bad.ini:{n}:" not in text, f"a valid line {n} was reported:\n{text}"


@pytest.mark.parametrize("text,line", [
    ("[server]\nlisten = 127.0.0.1:0\nfrobnicate = yes\n", 3),
    ("[limits]\nmax_conections = 5\n", 2),
    ('[topic "*"]\nmax_mesages = 5\n', 2),
    ("[server]\n\n# comment\nlog_level = chatty\n", 4),
    ("[server]\nheader_timeout = -1s\n", 2),
    ("[limits]\nmax_message_bytes = 12qb\n", 2),
    ('[topic "*"]\nmax_messages = 0\n', 2),
    ("[server]\nlisten = nowhere\n", 2),
    ('[source "k"]\ntype = kafka\nbrokers = b:1\nkafka_topics = t\ntopic = t/{partition}\n'
     "kafka.group.id = mine\n", 6),
    ('[source "k"]\ntype = kafka\nbrokers = b:1\nkafka_topics = t\ntopic = t/{nope}\n', 5),
    # Only librdkafka knows its properties: reported at the section's line.
    ('\n[source "k"]\ntype = kafka\nbrokers = b:1\nkafka_topics = t\ntopic = t/{partition}\n'
     "kafka.no.such.property = 1\n", 2),
], ids=["unknown_server_key", "unknown_limits_key", "unknown_topic_key", "bad_log_level",
        "negative_duration", "bad_size", "zero_ring", "bad_listen", "kafka_managed_property",
        "kafka_bad_template", "kafka_unknown_property"])
def test_check_config_single_error(tmp_path, text, line):
    p = tmp_path / "one.ini"
    p.write_text(text)
    rc, out, err = run(["--config", str(p), "--check-config"])
    assert rc != 0, f"accepted:\n{text}"
    assert f"one.ini:{line}:" in out + err, out + err


def test_missing_config_file_fails(tmp_path):
    rc, out, err = run(["--config", str(tmp_path / "absent.ini"), "--check-config"])
    assert rc != 0
    assert "absent.ini" in out + err


def test_bad_config_refuses_to_serve(tmp_path):
    port = free_port()
    p = tmp_path / "bad.ini"
    p.write_text(f"[server]\nlisten = 127.0.0.1:{port}\nbogus = 1\n")
    rc, out, err = run(["--config", str(p)], timeout=10)
    assert rc != 0
    assert "bad.ini:3:" in out + err
    s = socket.socket()
    try:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        s.close()


def test_listen_port_zero_logged(sluice_factory):
    srv = sluice_factory(port=0, listen_arg=True)
    assert srv.port != 0
    assert http(srv.port, "GET", "/healthz").status == 200
    line = [ln for ln in srv.logs().splitlines() if "listening" in ln][0]
    assert f"addr=127.0.0.1:{srv.port}" in line


def test_listen_flag_overrides_config(sluice_factory):
    a, b = free_port(), free_port()
    text = f"[server]\nlisten = 127.0.0.1:{a}\nshutdown_drain = 1s\n"
    srv = sluice_factory(text=text, port=b, args=["--listen", f"127.0.0.1:{b}"])
    assert http(b, "GET", "/healthz").status == 200
    s = socket.socket()
    try:
        assert s.connect_ex(("127.0.0.1", a)) != 0, "--listen must replace the config's listen"
    finally:
        s.close()
    assert srv.alive()


def test_logs_are_structured(sluice):
    sluice.get("/healthz")
    sluice.get("/nope")
    lines = [ln for ln in sluice.logs().splitlines() if ln.strip()]
    assert lines, "no log lines at all"
    for ln in lines:
        assert re.match(r'^ts=\S+ level=(debug|info|warn|warning|error) msg=("[^"]*"|\S+)', ln), \
            f"unstructured log line: {ln!r}"
    assert any('msg="listening"' in ln for ln in lines)
