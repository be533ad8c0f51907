"""What the benchmark suite's parts share: process figures from /proc, the
Prometheus text format, and a Celery event flood in the real wire format.

The suite reuses the bundle tests' helpers (tests/support: throwaway Redis
and PostgreSQL servers, a real Prometheus, processes with logs), so this
module puts tests/ on the import path."""
import base64
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

FIXTURES = ROOT / "exporter/tests/fixtures/celery"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    """Progress on stderr, so that long steps show what they are doing."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------

def cpu_seconds(pid) -> float:
    """User plus system CPU seconds of a process (children not included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid) -> float:
    """Resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def summary(values):
    """Median, min and max of repeated measurements."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def finish(text, failed):
    """The end of a part run on its own: its table, its failed
    expectations, and exit status 1 if there are any."""
    print(text)
    for f in failed:
        print(f"FAILED: {f}")
    sys.exit(1 if failed else 0)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# --- Prometheus text format ------------------------------------------------

def http_get(url, timeout=30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def samples(text):
    """(name, labels text, value) of every sample line of an exposition."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, _, labels = head.partition("{")
            labels = labels.rstrip("}")
        else:
            name, labels = head, ""
        try:
            yield name, labels, float(value)
        except ValueError:
            continue


def metric_sum(text, name, labels_contain=None) -> float:
    """Sum of every sample of `name` (optionally whose labels contain a string)."""
    return sum(v for n, labels, v in samples(text)
               if n == name and (labels_contain is None or labels_contain in labels))


TASK_COUNTERS = {f"celery_task_{e}_total" for e in ("sent", "received", "started", "succeeded", "failed",
                                                   "retried", "revoked", "rejected", "cancelled")}


def task_events(text) -> float:
    """Task events this exporter counted: each adds 1 to one task counter."""
    return sum(v for n, _, v in samples(text) if n in TASK_COUNTERS)


# --- Celery events ---------------------------------------------------------

def _fixture(name):
    return json.loads((FIXTURES / name).read_bytes())


def _body(envelope):
    body = json.loads(base64.b64decode(envelope["body"]))
    return body[0] if isinstance(body, list) else body


def _envelope(template, body) -> bytes:
    e = dict(template)
    e["body"] = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    return json.dumps(e, separators=(",", ":")).encode()


def resp(*parts) -> bytes:
    """One Redis command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class EventShape:
    """A realistic cycle of Celery event messages, from the captured fixtures:
    producers publish one `task-sent` per message; prefork workers batch
    their task events (received, started, succeeded, some failed) up to
    `batch` per `task.multi` message; each worker sends a heartbeat every 2 s.

    `messages` is a list of (channel, payload, task events in it)."""

    def __init__(self, tasks=2000, task_names=40, workers=8, batch=6, db=0):
        sent_t = _fixture("event-task-sent.json")
        multi_t = _fixture("event-task-multi-batch.json")
        beat_t = _fixture("event-worker-heartbeat.json")
        received = _body(_fixture("event-task-received.json"))
        started = _body(_fixture("event-task-started.json"))
        succeeded = _body(_fixture("event-task-succeeded.json"))
        failed = _body(_fixture("event-task-failed.json"))
        self.workers = [f"celery{w}@bench" for w in range(workers)]
        self.heartbeats = []
        for w in self.workers:
            body = dict(_body(beat_t), hostname=w)
            self.heartbeats.append((f"/{db}.celeryev/worker.heartbeat".encode(), _envelope(beat_t, body)))
        self.messages = []
        pending = {w: [] for w in self.workers}
        for i in range(tasks):
            uuid = f"00000000-0000-4000-8000-{i:012d}"
            name = f"bookedbarber.task_{i % task_names}"
            worker = self.workers[i % workers]
            sent = dict(_body(sent_t), uuid=uuid, name=name, hostname=f"gen{i % 4}@bench")
            self.messages.append((f"/{db}.celeryev/task.sent".encode(), _envelope(sent_t, sent), 1))
            outcome = failed if i % 50 == 0 else succeeded
            for event in (received, started, outcome):
                body = dict(event, uuid=uuid, hostname=worker)
                if "name" in body:
                    body["name"] = name
                pending[worker].append(body)
                if len(pending[worker]) == batch:
                    self._flush(multi_t, worker, pending, db)
        for w in self.workers:
            if pending[w]:
                self._flush(multi_t, w, pending, db)

    def _flush(self, template, worker, pending, db):
        batch = pending[worker]
        e = dict(template, headers={"hostname": worker})
        e["body"] = base64.b64encode(json.dumps(batch, separators=(",", ":")).encode()).decode()
        payload = json.dumps(e, separators=(",", ":")).encode()
        self.messages.append((f"/{db}.celeryev/task.multi".encode(), payload, len(batch)))
        pending[worker] = []

    @property
    def events_per_cycle(self):
        return sum(n for _, _, n in self.messages)


class Publisher:
    """Publishes an EventShape to Redis at a target rate of task events per
    second, in 10 ms pipelined ticks over a raw socket (PUBLISH replies are
    read by a thread), so that Python is not the bottleneck. Heartbeats go
    out every 2 s per worker on top, not counted as task events."""

    def __init__(self, port, shape: EventShape, host="127.0.0.1"):
        self.shape = shape
        # Encoded once: building RESP per message would cost more CPU than
        # sending it, and cap the rate below 150,000 events/s.
        self._commands = [(resp(b"PUBLISH", channel, payload), n) for channel, payload, n in shape.messages]
        self._heartbeats = b"".join(resp(b"PUBLISH", c, p) for c, p in shape.heartbeats)
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent_commands = 0
        self.replies = 0
        self._cursor = 0
        self._stop = False
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _read_replies(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.replies += data.count(b"\r\n")

    def publish(self, rate, seconds):
        """Publishes for `seconds` at `rate` task events/s; returns
        (task events, messages) actually published."""
        tick = 0.01
        commands = self._commands
        events = sent_messages = 0
        next_beat = time.monotonic()
        start = time.monotonic()
        deadline = start + seconds
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            # What is owed follows the clock, not the tick count, so a tick
            # that overran (a busy machine) is caught up by the next one.
            owed = rate * (now - start + tick) - events
            chunk = []
            while owed >= 1:
                command, n = commands[self._cursor]
                self._cursor = (self._cursor + 1) % len(commands)
                chunk.append(command)
                owed -= n
                events += n
            count = len(chunk)
            if now >= next_beat:
                chunk.append(self._heartbeats)
                count += len(self.shape.heartbeats)
                next_beat += 2.0
            if chunk:
                self.sock.sendall(b"".join(chunk))
                self.sent_commands += count
                sent_messages += count
            sleep = start + tick * (1 + int((time.monotonic() - start) / tick)) - time.monotonic()
            if sleep > 0:
                time.sleep(sleep)
        # Wait (bounded) until Redis has answered everything: then every
        # message has been handed to the subscribers' output buffers.
        wait_until = time.monotonic() + 30
        while self.replies < self.sent_commands and time.monotonic() < wait_until:
            time.sleep(0.01)
        return events, sent_messages

    def heartbeat(self):
        """One heartbeat per worker now (keeps the workers alive for a scrape)."""
        self.sock.sendall(self._heartbeats)
        self.sent_commands += len(self.shape.heartbeats)

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
