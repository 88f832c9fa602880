"""Drives build/sluice-kafka-mock (test/tools/kafka-mock.c): a librdkafka mock cluster in a
child process, commanded line by line over stdin. Binary: $SLUICE_KAFKA_MOCK, else
sluice-kafka-mock beside $SLUICE_BIN."""

import os
import subprocess
import threading
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mock_bin():
    if os.environ.get("SLUICE_KAFKA_MOCK"):
        return os.environ["SLUICE_KAFKA_MOCK"]
    sluice = os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice"))
    return str(Path(sluice).parent / "sluice-kafka-mock")


# Kafka protocol API keys and error codes used by the tests.
API_FETCH = 1
API_OFFSET_COMMIT = 8
ERR_UNKNOWN_TOPIC = 3
ERR_NOT_LEADER = 6
ERR_COORDINATOR_NOT_AVAILABLE = 15


class KafkaMock:
    def __init__(self, brokers=1):
        self.proc = subprocess.Popen([mock_bin(), str(brokers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "bootstrap", f"mock cluster did not start: {line!r}"
        self.bootstrap = line[1]
        self.lock = threading.Lock()  # one command at a time, from any thread

    def cmd(self, text):
        with self.lock:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline().strip()
        assert reply.startswith("ok"), f"mock: {text!r} -> {reply!r}"
        return reply

    def topic(self, name, partitions=1):
        self.cmd(f"topic {name} {partitions}")

    def produce(self, topic, partition, count, prefix="m", size=0, key=None, header=None):
        line = f"produce {topic} {partition} {count} {prefix} {size} {key or '-'}"
        if header:
            line += f" {header}"
        self.cmd(line)

    def broker_down(self, broker=1):
        self.cmd(f"down {broker}")

    def broker_up(self, broker=1):
        self.cmd(f"up {broker}")

    def push_errors(self, api_key, count, code):
        self.cmd(f"error {api_key} {count} {code}")

    def topic_error(self, name, code):
        """Metadata answers `code` for topic `name` (ERR_UNKNOWN_TOPIC: deleted; 0 clears)."""
        self.cmd(f"topic-error {name} {code}")

    def flood(self, topic, partition=-1, rate=0, size=100):
        """A background producer: `rate` records a second (0: flat out) of `size` bytes, each
        starting with t<realtime ns>:. One at a time."""
        self.cmd(f"flood {topic} {partition} {rate} {size}")

    def flood_stop(self):
        """Stops the background producer; returns how many records it produced."""
        return int(self.cmd("flood-stop").split()[1])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def unique_group(prefix="g"):
    """A consumer group no other test uses (the mock keeps group state)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def source_section(name, brokers, group, **kv):
    """The INI text of a [source "NAME"] section with test-friendly consumer timings."""
    out = [f'[source "{name}"]', "type = kafka", f"brokers = {brokers}", f"group = {group}"]
    out += [f"{k} = {v}" for k, v in kv.items()]
    out += ["kafka.session.timeout.ms = 6000", "kafka.heartbeat.interval.ms = 1000"]
    return "\n".join(out) + "\n"
