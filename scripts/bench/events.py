"""Celery event flood: task events counted against task events published,
our exporter against Flower.

Each exporter in turn gets a fresh throwaway Redis (default configuration,
so the default pub/sub output-buffer limits apply: 32 MB at once, or 8 MB
for 60 s) and is flooded with real-format events (common.EventShape) at
each rate by a publisher in a process of its own, so that its CPU does not
compete for this process' GIL. After each flood we wait, bounded, until the
exporter's counter stops moving: Flower queues events in its IO loop and
may lag behind. An exporter stops climbing once it loses more than 5 % at
two consecutive rates.

Standalone: .venv/bin/python scripts/bench/events.py [--quick]"""
import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, EventShape, Publisher, cpu_seconds, finish, http_get, log, metric_sum,  # noqa: E402
                    resp, rss_mib, samples, summary, task_events)
from support.services import Process, ThrowawayRedis, exporter  # noqa: E402
from support.tools import free_port, require  # noqa: E402

FULL_RATES = [1000, 5000, 10000, 25000, 50000, 100000, 150000]
QUICK_RATES = [1000, 5000]
OURS, FLOWER = "bookedbarber-exporter", "flower"
# Flower's defaults, but without the control broadcast that re-enables
# events on every worker each 5 s (there are no real workers here). Flower
# 2.x has no periodic inspection (one inspect round at start-up only) and
# no auth unless asked; persistent mode stays off (it is off by default).
FLOWER_OPTIONS = ["--address=127.0.0.1", "--enable_events=False", "--persistent=False"]
# Redis' log line when it drops a client at its output-buffer limit (Redis
# 7.0 has no INFO counter for it).
REDIS_DROPPED = "overcoming of output buffer limits"
LOSS_LIMIT_PCT = 5.0
QUIET_S = 2.0  # a counter unchanged this long has stopped moving


def _metrics(url):
    # Flower answers between two batches of its queued events: give it time.
    return http_get(f"{url}/metrics", timeout=60).decode()


class Ours:
    name = OURS

    def __init__(self, binary, redis, workdir):
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        self.version = version.split()[-1] if version else "unknown"
        self.options = ["BOOKEDBARBER_REDIS_URL=redis://127.0.0.1:PORT/0 (no PostgreSQL)", "defaults otherwise"]
        self.process = exporter(binary, workdir, redis_url=redis.url())
        self.process.wait_http(f"{self.process.url}/healthz", timeout=30)

    def counted(self):
        return task_events(_metrics(self.process.url))

    def ready(self, publish_probe, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _metrics(self.process.url)
            if any(n == "celery_event_stream_up" and v == 1 for n, _, v in samples(text)):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: celery_event_stream_up not 1 after {timeout}s")

    def reconnects(self):
        return metric_sum(_metrics(self.process.url), "celery_event_stream_reconnects_total")


class Flower:
    name = FLOWER

    def __init__(self, redis, workdir):
        python = ROOT / ".venv/bin/python"
        self.version = subprocess.run([python, "-c", "import flower; print(flower.__version__)"],
                                      capture_output=True, text=True).stdout.strip() or "unknown"
        port = free_port()
        self.options = ["-A bbtasks (scripts/celery)", *FLOWER_OPTIONS, "--port=PORT"]
        self.url = f"http://127.0.0.1:{port}"
        self.process = Process(
            "flower", [require("celery"), "-A", "bbtasks", "--broker", redis.url(), "flower",
                       *FLOWER_OPTIONS, f"--port={port}"],
            workdir, cwd=ROOT / "scripts/celery", env={"BBX_BROKER_URL": redis.url()}).start()
        self.process.wait_http(f"{self.url}/metrics", timeout=60)

    def counted(self):
        return metric_sum(_metrics(self.url), "flower_events_total", labels_contain='type="task-')

    def ready(self, publish_probe, timeout=60.0):
        """Flower shows no subscription state: it is listening once an event
        published now gets counted."""
        deadline = time.monotonic() + timeout
        before = self.counted()
        while time.monotonic() < deadline:
            publish_probe()
            for _ in range(5):
                time.sleep(0.2)
                if self.counted() > before:
                    return
        raise RuntimeError(f"{self.name}: a probe event was not counted within {timeout}s")

    def reconnects(self):
        # Flower's event thread logs each lost connection before reconnecting.
        return self.process.log(tail=10**9).count("Failed to capture events")


def _serve_publisher(port):
    """The publisher's own process (a plain child, whatever imported this
    module): reads "rate seconds" lines, answers "events messages" lines."""
    publisher = Publisher(port, EventShape())
    try:
        for line in sys.stdin:
            rate, seconds = line.split()
            print(*publisher.publish(int(rate), float(seconds)), flush=True)
    finally:
        publisher.close()


class PublisherProcess:
    def __init__(self, port):
        self.port = port
        self.process = subprocess.Popen([sys.executable, __file__, "--publisher-for", str(port)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        probe_channel, probe_payload, _ = EventShape(tasks=1, workers=1).messages[0]
        self.probe_command = resp(b"PUBLISH", probe_channel, probe_payload)

    def publish(self, rate, seconds):
        """(task events, messages) published at `rate` for `seconds`."""
        self.process.stdin.write(f"{rate} {seconds}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        if len(answer) != 2:
            raise RuntimeError(f"the publisher exited with status {self.process.poll()}")
        return tuple(map(int, answer))

    def probe(self):
        """One task-sent event, on a connection of its own."""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(self.probe_command)
            s.recv(64)

    def close(self):
        try:
            self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def _watch(peer, limit, target=None):
    """Polls the counter until it reaches `target`, stays still for QUIET_S,
    or `limit` seconds pass. Returns (value, when it last moved, CPU seconds
    then, whether it stopped in time)."""
    pid = peer.process.proc.pid
    start = time.monotonic()
    value = moved_at = cpu_at = None
    while True:
        now_value = peer.counted()
        now, cpu = time.monotonic(), cpu_seconds(pid)
        if now_value != value:
            value, moved_at, cpu_at = now_value, now, cpu
        if (target is not None and value >= target) or now - moved_at >= QUIET_S:
            return value, moved_at, cpu_at, True
        if now - start >= limit:
            return value, moved_at, cpu_at, False
        time.sleep(0.25)


def _dropped(redis):
    return redis.process.log(tail=10**9).count(REDIS_DROPPED)


def _measure(peer, publisher, redis, rate, seconds, drain_limit):
    peer.ready(publisher.probe)
    # A backlog left by the previous rate would be counted as this rate's.
    base, _, _, settled = _watch(peer, limit=120)
    if not settled:
        raise RuntimeError(f"{peer.name}: counter still moving 120 s after the previous rate")
    pid = peer.process.proc.pid
    reconnects0, dropped0 = peer.reconnects(), _dropped(redis)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    published, messages = publisher.publish(rate, seconds)
    published_at = time.monotonic()  # Redis has answered every PUBLISH
    final, moved_at, cpu_at, drained = _watch(peer, drain_limit, target=base + published)
    counted = final - base
    wall = moved_at - t0  # publishing and draining
    return {
        # Per second of flood: the publisher sends for exactly `seconds`
        # (then waits, a few varying milliseconds, for Redis' replies).
        "published": published, "messages": messages, "publish_s": published_at - t0,
        "published_per_s": published / seconds, "counted": counted, "counted_per_s": counted / seconds,
        "lost_pct": 100.0 * (published - counted) / published,
        "drain_s": moved_at - published_at, "drained": drained,
        "cpu_s": cpu_at - cpu0, "cpu_cores": (cpu_at - cpu0) / wall,
        "rss_mib": rss_mib(pid),
        "reconnects": peer.reconnects() - reconnects0, "redis_dropped": _dropped(redis) - dropped0,
    }


def _run_peer(kind, args, knobs, workdir):
    rates, seconds, repeats, drain_limit = knobs
    out = {"steps": [], "loss_free_max": None, "stopped_after": None, "error": None}
    redis = ThrowawayRedis(workdir / f"redis-{kind}")
    peer = publisher = None
    try:
        redis.start()
        peer = Ours(args.binary, redis, workdir) if kind == OURS else Flower(redis, workdir)
        out["version"], out["options"] = peer.version, peer.options
        publisher = PublisherProcess(redis.port)
        losing = 0
        for rate in rates:
            runs = []
            for i in range(repeats):
                log(f"events: {kind} at {rate}/s, run {i + 1}/{repeats}")
                runs.append(_measure(peer, publisher, redis, rate, seconds, drain_limit))
                log(f"events: {kind} published {runs[-1]['published']}, counted {runs[-1]['counted']:.0f}, "
                    f"drain {runs[-1]['drain_s']:.1f}s")
            step = {"rate": rate, "runs": runs}
            for key in ("published_per_s", "counted_per_s", "lost_pct", "drain_s", "cpu_cores", "rss_mib"):
                step[key] = summary([r[key] for r in runs])
            out["steps"].append(step)
            if _loss_free(step):
                out["loss_free_max"] = rate
            losing = losing + 1 if step["lost_pct"]["median"] > LOSS_LIMIT_PCT else 0
            if losing == 2:
                out["stopped_after"] = rate
                break
    except (Exception, pytest.fail.Exception) as e:  # support.services fails the pytest way
        out["error"] = f"{type(e).__name__}: {e}"
        if peer is not None:
            out["error"] += "\n" + peer.process.log(tail=20)
    finally:
        if publisher:
            publisher.close()
        if peer:
            peer.process.stop()
        redis.stop()
    return out


def _loss_free(step):
    return all(r["counted"] >= r["published"] for r in step["runs"])


def _knobs(args):
    quick = bool(getattr(args, "quick", False))
    rates = getattr(args, "rates", None) or (QUICK_RATES if quick else FULL_RATES)
    seconds = getattr(args, "seconds_per_rate", None) or (4 if quick else 10)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    return sorted(rates), seconds, repeats, 10 if quick else 30


def run(args, workdir: Path) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    knobs = _knobs(args)
    rates, seconds, repeats, drain_limit = knobs
    results = {"rates": rates, "seconds_per_rate": seconds, "repeats": repeats, "drain_limit_s": drain_limit,
               "loss_limit_pct": LOSS_LIMIT_PCT, "peers": {}}
    for kind in (OURS, FLOWER):
        results["peers"][kind] = _run_peer(kind, args, knobs, workdir)
    return results


def _fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def _cpu_per_event(step):
    runs = [r for r in step["runs"] if r["counted"] > 0]
    return summary([r["cpu_s"] / r["counted"] for r in runs])["median"]


def _comparable_rate(results):
    """The highest rate both exporters handled without loss."""
    ours, theirs = ({s["rate"] for s in results["peers"][k]["steps"] if _loss_free(s)} for k in (OURS, FLOWER))
    return max(ours & theirs, default=None)


def _row(kind, step):
    c, runs = step["counted_per_s"], step["runs"]
    undrained = "" if all(r["drained"] for r in runs) else "*"
    return (f"| {kind} | {step['rate']:,} | {_fmt(step['published_per_s']['median'])} "
            f"| {_fmt(c['median'])} ({_fmt(c['min'])}–{_fmt(c['max'])}) | {_fmt(step['lost_pct']['median'], 1)} "
            f"| {_fmt(step['drain_s']['median'], 1)}{undrained} | {_fmt(step['cpu_cores']['median'], 2)} "
            f"| {_fmt(step['rss_mib']['median'], 1)} | {sum(r['reconnects'] for r in runs):.0f} "
            f"| {sum(r['redis_dropped'] for r in runs)} |")


def table(results) -> str:
    lines = [f"{results['seconds_per_rate']} s per rate, {results['repeats']} run(s) each; drain wait up to "
             f"{results['drain_limit_s']} s; medians (min–max).", "",
             "| exporter | target/s | published/s | counted/s | lost % | drain s | CPU cores | RSS MiB "
             "| reconnects | dropped by Redis |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, peer in results["peers"].items():
        lines += [_row(kind, step) for step in peer["steps"]]
    if any(not r["drained"] for peer in results["peers"].values() for s in peer["steps"] for r in s["runs"]):
        lines += ["", "\\* still counting when the wait ended: the rest is counted as lost."]
    lines.append("")
    for kind, peer in results["peers"].items():
        free = peer["loss_free_max"]
        stop = f", stopped after {peer['stopped_after']:,}/s (> {LOSS_LIMIT_PCT:g} % lost twice)" \
            if peer["stopped_after"] else ""
        lines.append(f"- {kind} {peer.get('version', '')}: highest loss-free rate "
                     f"{f'{free:,}/s' if free else 'none'}{stop}; options: {'; '.join(peer.get('options', []))}")
        if peer["error"]:
            lines.append(f"  - error: {peer['error'].splitlines()[0]}")
    rate = _comparable_rate(results)
    if rate:
        ours, theirs = (_cpu_per_event(next(s for s in results["peers"][k]["steps"] if s["rate"] == rate))
                        for k in (OURS, FLOWER))
        if ours and theirs:
            lines.append(f"- CPU per event at {rate:,}/s: ours {ours * 1e6:.2f} µs, Flower {theirs * 1e6:.2f} µs; "
                         f"ours/theirs = {ours / theirs:.3f} (Flower {theirs / ours:.0f}× ours)")
    return "\n".join(lines)


def checks(results) -> list[str]:
    failed = []
    for kind, peer in results["peers"].items():
        if peer["error"]:
            failed.append(f"{kind}: {peer['error'].splitlines()[0]}")
        if not peer["steps"]:
            failed.append(f"{kind}: no rate measured")
            continue
        if sum(r["counted"] for s in peer["steps"] for r in s["runs"]) <= 0:
            failed.append(f"{kind} counted no event at all: the setup is broken")
        for s in peer["steps"]:
            for r in s["runs"]:
                missing = [k for k, v in r.items() if v is None]
                if missing:
                    failed.append(f"{kind} at {s['rate']}/s: missing {', '.join(missing)}")
                if r["published_per_s"] < 0.95 * s["rate"]:
                    failed.append(f"{kind} at {s['rate']}/s: the publisher reached only "
                                  f"{r['published_per_s']:,.0f}/s")
                if r["counted"] > r["published"]:
                    failed.append(f"{kind} at {s['rate']}/s: counted {r['counted']:.0f} > published "
                                  f"{r['published']} (a backlog leaked between rates?)")
                if kind == OURS and s["rate"] <= 10000 and r["counted"] < r["published"]:
                    failed.append(f"ours lost {r['published'] - r['counted']:.0f} of {r['published']} events "
                                  f"at {s['rate']}/s")
    return failed


def plot(results, ax):
    low, top = float("inf"), 1
    for (kind, peer), marker in zip(results["peers"].items(), "os"):
        steps = [s for s in peer["steps"] if s["counted_per_s"]["median"]]
        x = [s["published_per_s"]["median"] for s in steps]
        y = [s["counted_per_s"]["median"] for s in steps]
        err = [[yy - s["counted_per_s"]["min"] for yy, s in zip(y, steps)],
               [s["counted_per_s"]["max"] - yy for yy, s in zip(y, steps)]]
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=kind, alpha=0.8)
        low, top = min([low, *x]), max([top, *x, *y])
    ax.plot([low / 1.5, top * 1.5], [low / 1.5, top * 1.5], "k--", linewidth=0.8, label="counted = published")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("task events published / s")
    ax.set_ylabel("task events counted / s")
    ax.set_title("Celery event flood: counted vs published")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version, about a minute")
    parser.add_argument("--binary", type=Path, default=ROOT / "target/release/bookedbarber-exporter")
    parser.add_argument("--rates", type=lambda s: [int(r) for r in s.split(",")], help="e.g. 1000,5000")
    parser.add_argument("--seconds-per-rate", type=float)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run/bench-events")
    parser.add_argument("--plot", type=Path, help="also draw plot() into this PNG")
    parser.add_argument("--publisher-for", type=int, help=argparse.SUPPRESS)  # PublisherProcess' child
    args = parser.parse_args()
    if args.publisher_for:
        return _serve_publisher(args.publisher_for)
    results = run(args, args.workdir)
    (args.workdir / "events.json").write_text(json.dumps(results, indent=1))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 5))
        plot(results, ax)
        fig.savefig(args.plot, dpi=100, bbox_inches="tight")
    finish(table(results), checks(results))


if __name__ == "__main__":
    main()
