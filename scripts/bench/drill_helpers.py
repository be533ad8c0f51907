"""What the fault drills share: waiting on the exporter's figures, recording
expectations, sampling memory, publishing raw messages to Redis."""
import socket
import threading
import time

from common import http_get, resp, rss_mib

class DrillError(Exception):
    """A drill could not go on (a server did not come up, a wait timed out)."""


def metrics(exp) -> str:
    return http_get(f"{exp.url}/metrics").decode()


def wait_until(read, done, timeout, what):
    """Polls read() until done(value); returns the value or raises DrillError."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.1)
    raise DrillError(f"{what}: not reached after {timeout:.0f}s (last: {value})")


def settled(read, timeout=15.0, quiet=1.0):
    """read() once it has stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def expect(out, ok, message):
    """Records a failed expectation (the drill goes on: the figures still count)."""
    if not ok:
        out["failures"].append(message)
    return ok


def panics(exp) -> list:
    return [line for line in exp.log(tail=100000).splitlines() if "panicked" in line]


class RssSampler:
    """Samples a process's resident memory every 20 ms in a thread: short
    peaks (a huge message being decoded) last milliseconds."""

    def __init__(self, pid):
        self.pid, self.max, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            try:
                self.max = max(self.max, rss_mib(self.pid))
            except OSError:
                return

    def __enter__(self):
        self.max = rss_mib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self.max = max(self.max, rss_mib(self.pid))


def publish_raw(port, messages):
    """PUBLISHes (channel, payload) pairs in one pipeline and waits for every
    reply: then Redis has handed each message to the subscribers' buffers."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"".join(resp(b"PUBLISH", c, p) for c, p in messages))
        pending = len(messages)
        while pending > 0:  # each reply is one integer line, ":1\r\n"
            data = s.recv(65536)
            if not data:
                raise DrillError("Redis closed the publishing connection")
            pending -= data.count(b"\r\n")
