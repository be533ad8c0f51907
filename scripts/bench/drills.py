#!/usr/bin/env python3
"""Fault drills: the exporter against failures it must survive, on loopback
only and bounded in time.

1. restarts      PostgreSQL and Redis killed and restarted under a real
                 Prometheus scraping every second, with a real Celery worker
                 and producer running (drill_restarts.py);
2. pubsub_limit  Redis drops the event subscription at its output-buffer
                 limit while the exporter is frozen;
3. hostile_input malformed, huge, deeply nested and invalid UTF-8 messages,
                 100,000 task names and 10,000 workers on the event channels;
4. soak          a sustained event flood with a scrape every second: memory
                 and CPU per event must stay flat.

Every server is a throwaway one of the drill's own (never the shared
PostgreSQL at 5432 or Redis at 6379). `run()` returns the figures and the
expectations that failed; `table()` prints them, `checks()` lists failures.

  .venv/bin/python scripts/bench/drills.py [--quick] [--only NAME] [--soak-seconds N]
"""
import argparse
import base64
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ROOT, EventShape, Publisher, cpu_seconds, finish, http_get, log, metric_sum,  # noqa: E402
                    percentile, rss_mib, samples, task_events)
from drill_helpers import (RssSampler, expect, metrics, panics, publish_raw, settled,  # noqa: E402
                           wait_until)
from drill_restarts import drill_restarts  # noqa: E402

import pytest  # noqa: E402  (support.* report errors with pytest.fail)
from support.services import ThrowawayRedis, exporter  # noqa: E402

# Resident memory the exporter may reach under hostile input. Its own
# figures: ~15 MiB at rest; the largest message it accepts is 16 MiB (the
# frame buffer) and decoding one holds its base64-decoded body (≤ 12 MiB)
# next to it; the capped label sets (500 names, 500 workers, 20,000 uuids)
# add a few MiB. About 60 MiB in the worst case, so 128 MiB leaves 2× margin
# while still catching a per-message or per-name leak.
HOSTILE_RSS_LIMIT_MIB = 128
# Caps the drills rely on (the exporter's defaults, docs/celery.md).
MAX_TASK_NAMES, MAX_WORKERS, MAX_TRACKED_TASKS = 500, 500, 20_000

SENT, MULTI, HEARTBEAT = b"/0.celeryev/task.sent", b"/0.celeryev/task.multi", b"/0.celeryev/worker.heartbeat"


def envelope(body: bytes) -> bytes:
    """A kombu envelope as Celery publishes events: the body base64-encoded."""
    return json.dumps({"body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
                       "content-type": "application/json", "headers": {},
                       "properties": {"body_encoding": "base64", "delivery_mode": 1}}).encode()


def task_sent(uuid, name, **extra) -> bytes:
    return envelope(json.dumps({"type": "task-sent", "uuid": uuid, "name": name, "queue": "default",
                                "hostname": "producer@drill", "timestamp": time.time(), **extra}).encode())


def heartbeat(hostname) -> bytes:
    return envelope(json.dumps({"type": "worker-heartbeat", "hostname": hostname, "freq": 2.0,
                                "active": 0, "timestamp": time.time()}).encode())


# Messages the decoder must count as malformed and skip, one of each way a
# payload can be wrong.
DEEP = 100_000
MALFORMED = {
    "not JSON": b"this is not json {",
    "empty payload": b"",
    "JSON without body": b'{"content-type": "application/json", "properties": {}}',
    "body not base64": b'{"body": "!!not*base64!!", "properties": {"body_encoding": "base64"}}',
    "body base64 of non-JSON": envelope(b"\x00\x01binary"),
    "invalid UTF-8 in the envelope": b'{"body": "\xff\xfe\xfd", "properties": {}}',
    "invalid UTF-8 in the event": envelope(b'{"type": "task-sent", "uuid": "u", "name": "\xc3\x28"}'),
    "event of the wrong type": envelope(b'{"type": 42, "uuid": ["x"]}'),
    "truncated event": envelope(b'[{"type": "task-received", "uuid": "abc'),
    f"{DEEP:,} nested [ as envelope": b"[" * DEEP,
    f"{DEEP:,} nested [ as body": envelope(b"[" * DEEP + b"]" * DEEP),
    f"{DEEP:,} nested objects as body": envelope(b'{"a":' * DEEP + b"1" + b"}" * DEEP),
}


# --- drill 2: pub/sub output-buffer limit -----------------------------------

def drill_pubsub_limit(args, workdir, out):
    """Redis drops a subscriber whose output buffer passes its limit; here a
    small one (1 MiB at once, or 256 KiB for 2 s), and the exporter frozen
    (SIGSTOP) while events flood in, as a starved or paused process would be."""
    frozen_s, flood_rate = (4 if args.quick else 8), 30_000
    redis = ThrowawayRedis(workdir / "redis", extra=["--client-output-buffer-limit", "pubsub 1mb 256kb 2"])
    exp = pub = None
    try:
        redis.start()
        exp = exporter(args.binary, workdir, redis_url=redis.url(0), name="exporter-pubsub")
        exp.wait_http(f"{exp.url}/readyz", timeout=30)
        pub = Publisher(redis.port, EventShape())
        base = task_events(metrics(exp))

        published, _ = pub.publish(5_000, 2)
        before = wait_until(lambda: task_events(metrics(exp)) - base, lambda n: n >= published, 15,
                            "events before the stall counted")
        expect(out, before == published, f"before the stall {before:.0f} of {published} events were counted")
        reconnects = metric_sum(metrics(exp), "celery_event_stream_reconnects_total")

        os.kill(exp.proc.pid, signal.SIGSTOP)
        try:
            flooded, _ = pub.publish(flood_rate, frozen_s)
        finally:
            os.kill(exp.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        published += flooded
        text = wait_until(lambda: metrics(exp),
                          lambda t: metric_sum(t, "celery_event_stream_reconnects_total") > reconnects
                          and metric_sum(t, "celery_event_stream_up") == 1, 30,
                          "subscription dropped by Redis and subscribed again")
        out["figures"]["stream up again after SIGCONT (s)"] = round(time.monotonic() - resumed, 2)
        out["figures"]["reconnects counted"] = metric_sum(text, "celery_event_stream_reconnects_total") - reconnects
        expect(out, "Celery event stream lost" in exp.log(tail=100000),
               "no 'Celery event stream lost' line in the exporter's log")

        counted = settled(lambda: task_events(metrics(exp)) - base)
        after, _ = pub.publish(5_000, 3)
        published += after
        wait_until(lambda: task_events(metrics(exp)) - base, lambda n: n >= counted + after, 20,
                   "events published after the reconnect counted")
        final = settled(lambda: task_events(metrics(exp)) - base, quiet=0.5)
        expect(out, final - counted == after,
               f"after the reconnect {final - counted:.0f} of {after} events were counted")
        out["figures"].update({
            "events published": published, "events published while frozen": flooded,
            "frozen (s)": frozen_s, "events counted": int(final), "events lost": int(published - final),
            "events lost (%)": round(100 * (published - final) / published, 1),
        })
        expect(out, published - final > 0, "nothing was lost: the stall did not reach Redis's limit")
        out["summary"] = (f"dropped by Redis, subscribed again {out['figures']['stream up again after SIGCONT (s)']} s "
                          f"after SIGCONT; {published - final:,.0f} of {published:,} events lost; "
                          "every event after the reconnect counted")
    finally:
        if pub:
            pub.close()
        if exp:
            if exp.alive():
                os.kill(exp.proc.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
            exp.stop()
        redis.stop()


# --- drill 3: hostile input -------------------------------------------------

def drill_hostile_input(args, workdir, out):
    redis = ThrowawayRedis(workdir / "redis")
    exp = None
    figures = out["figures"]
    try:
        redis.start()
        exp = exporter(args.binary, workdir, redis_url=redis.url(0), name="exporter-hostile")
        exp.wait_http(f"{exp.url}/readyz", timeout=30)
        value = lambda name, labels=None: metric_sum(metrics(exp), name, labels)  # noqa: E731
        with RssSampler(exp.proc.pid) as rss:
            # 100,000 distinct task names and uuids (task-sent: names are
            # interned, uuids tracked as unfinished), 10,000 at a time so
            # that nothing is lost to Redis's own output-buffer limit.
            names = 100_000
            for chunk in range(0, names, 10_000):
                publish_raw(redis.port, [(SENT, task_sent(f"hostile-{i}", f"hostile.task_{i}"))
                                         for i in range(chunk, chunk + 10_000)])
                wait_until(lambda: value("celery_event_messages_total", "decoded"),
                           lambda n: n >= chunk + 10_000, 60, "task names counted")
            text = metrics(exp)
            series = sum(1 for n, labels, _ in samples(text) if n == "celery_task_received_total")
            overflow = metric_sum(text, "celery_task_sent_total", 'name="__overflow__"')
            evictions = metric_sum(text, "celery_event_tracking_evictions_total")
            tracked = metric_sum(text, "celery_event_tracked_tasks")
            figures.update({"task names sent": names, "name series": series,
                            "events counted as __overflow__": int(overflow),
                            "tracked uuids": int(tracked), "tracking evictions": int(evictions)})
            expect(out, series == MAX_TASK_NAMES + 1, f"{series} name series, expected {MAX_TASK_NAMES} + __overflow__")
            expect(out, overflow == names - MAX_TASK_NAMES, f"__overflow__ counted {overflow:.0f} task-sent events, "
                   f"expected {names - MAX_TASK_NAMES}")
            expect(out, tracked == MAX_TRACKED_TASKS and evictions == names - MAX_TRACKED_TASKS,
                   f"{tracked:.0f} tracked uuids and {evictions:.0f} evictions, expected "
                   f"{MAX_TRACKED_TASKS} and {names - MAX_TRACKED_TASKS}")

            workers = 10_000
            publish_raw(redis.port, [(HEARTBEAT, heartbeat(f"hostile{i}@drill")) for i in range(workers)])
            refused = wait_until(lambda: value("celery_event_workers_refused_total"),
                                 lambda n: n >= workers - MAX_WORKERS, 30, "heartbeats of 10,000 workers")
            text = metrics(exp)
            worker_series = sum(1 for n, _, _ in samples(text) if n == "celery_worker_up")
            figures.update({"workers sending heartbeats": workers, "worker series": worker_series,
                            "workers refused": int(refused)})
            expect(out, worker_series == MAX_WORKERS and refused == workers - MAX_WORKERS,
                   f"{worker_series} worker series and {refused:.0f} refused, expected {MAX_WORKERS} and "
                   f"{workers - MAX_WORKERS}")

            # Each malformed kind 20 times: the count must be exact.
            repeat = 20
            publish_raw(redis.port, [(MULTI, payload) for payload in MALFORMED.values()] * repeat)
            malformed = settled(lambda: value("celery_event_messages_total", "malformed"))
            figures["malformed messages sent"] = len(MALFORMED) * repeat
            figures["counted as malformed"] = int(malformed)
            expect(out, malformed == len(MALFORMED) * repeat,
                   f"{malformed:.0f} messages counted as malformed, expected {len(MALFORMED) * repeat} "
                   f"({len(MALFORMED)} kinds: {', '.join(MALFORMED)})")

            # Huge but valid: a task-sent carrying 8 MiB of kwargs (Celery
            # would truncate them; a hostile producer need not), 3 times.
            decoded = value("celery_event_messages_total", "decoded")
            huge = task_sent("huge-uuid", "hostile.huge", kwargs="x" * (8 << 20))
            publish_raw(redis.port, [(SENT, huge)] * 3)
            wait_until(lambda: value("celery_event_messages_total", "decoded"), lambda n: n >= decoded + 3, 30,
                       "three 8 MiB events decoded")
            figures["8 MiB events decoded"] = 3
            # Larger than a subscriber may take: 24 MiB passes Redis (its
            # pub/sub hard limit is 32 MiB) but not the exporter's 16 MiB
            # frame limit; 64 MiB passes neither. Either way the
            # subscription is dropped, and must come back.
            for mib in (24, 64):
                reconnects = value("celery_event_stream_reconnects_total")
                sent_at = time.monotonic()
                publish_raw(redis.port, [(MULTI, b"x" * (mib << 20))])
                wait_until(lambda: metrics(exp), lambda t: metric_sum(t, "celery_event_stream_reconnects_total")
                           > reconnects and metric_sum(t, "celery_event_stream_up") == 1, 30,
                           f"subscription back after a {mib} MiB message")
                back = time.monotonic() - sent_at
                decoded = value("celery_event_messages_total", "decoded")
                publish_raw(redis.port, [(SENT, task_sent(f"after-{mib}", "hostile.after"))])
                wait_until(lambda: value("celery_event_messages_total", "decoded"), lambda n: n > decoded, 15,
                           f"an event after the {mib} MiB message counted")
                lost = [line for line in exp.log(tail=20).splitlines() if "Celery event stream lost" in line]
                why = lost[-1].partition("error=")[2] if lost else "no log line"
                figures[f"{mib} MiB message"] = f"subscription dropped ({why}), back after {back:.1f} s"
                if mib == 24:
                    expect(out, "larger than 16 MiB" in why, f"24 MiB message: the exporter logged {why}")

            start = time.monotonic()
            text = metrics(exp)
            figures["scrape after the drill (ms)"] = round(1000 * (time.monotonic() - start), 1)
            figures["series after the drill"] = sum(1 for _ in samples(text))
            figures["/metrics size (KiB)"] = len(text) >> 10
        figures["max RSS (MiB)"] = round(rss.max, 1)
        figures["RSS at the end (MiB)"] = round(rss_mib(exp.proc.pid), 1)
        expect(out, rss.max <= HOSTILE_RSS_LIMIT_MIB, f"max RSS {rss.max:.1f} MiB > {HOSTILE_RSS_LIMIT_MIB} MiB")
        # 501 names x 45 series (8 counters, sent x queue, 2 histograms of 18)
        # plus 2 x 500 worker series and the rest: about 24,000.
        expect(out, figures["series after the drill"] <= 30_000,
               f"{figures['series after the drill']} series after the drill (> 30,000)")
        expect(out, exp.alive(), "the exporter died")
        http_get(f"{exp.url}/healthz")
        expect(out, not panics(exp), f"panic in the exporter's log: {panics(exp)[:3]}")
        exp.stop()
        exp = None
        long_strings(args, workdir, redis, out)
        out["summary"] = (f"malformed {figures['counted as malformed']}/{figures['malformed messages sent']} "
                          f"counted; names and workers capped, overlong ones too; "
                          f"max RSS {figures['max RSS (MiB)']} MiB")
    finally:
        if exp:
            exp.stop()
        redis.stop()


def long_strings(args, workdir, redis, out):
    """The caps bound how many task names, workers and task ids the exporter
    keeps; the length limits (256 bytes a name, 128 a task id) bound how big
    each is. With a fresh exporter (empty caps): 32 task ids of 1 MiB, then
    16 task names and 16 worker host names of 64 KiB."""
    exp = exporter(args.binary, workdir, redis_url=redis.url(0), name="exporter-long-strings")
    figures = out["figures"]
    decoded = lambda: metric_sum(metrics(exp), "celery_event_messages_total", "decoded")  # noqa: E731
    try:
        exp.wait_http(f"{exp.url}/readyz", timeout=30)
        # One 1 MiB message first, so that the read buffer has grown already.
        publish_raw(redis.port, [(SENT, task_sent("warm-up", "hostile.long", kwargs="k" * (1 << 20)))])
        wait_until(decoded, lambda n: n >= 1, 30, "a 1 MiB event decoded")
        before = rss_mib(exp.proc.pid)
        # Four at a time: 32 at once (43 MB with base64) would pass Redis's
        # 32 MB pub/sub limit unless the reader kept up all along, and a
        # dropped subscription is drill 2's subject, not this one's.
        for batch in range(8):
            publish_raw(redis.port, [(SENT, task_sent(f"{batch}-{i}" + "u" * (1 << 20), "hostile.long"))
                                     for i in range(4)])
            wait_until(decoded, lambda n: n >= 1 + 4 * (batch + 1), 30, "events with 1 MiB uuids decoded")
        growth = rss_mib(exp.proc.pid) - before
        figures["long strings: RSS growth after 32 uuids of 1 MiB (MiB)"] = round(growth, 1)
        expect(out, growth <= 8, f"32 task ids of 1 MiB grew RSS by {growth:.0f} MiB: overlong ids must not "
               f"be remembered (else up to --celery.max-tracked-tasks = {MAX_TRACKED_TASKS:,} of them, each up "
               "to the 16 MiB frame limit)")

        size_before = len(metrics(exp))
        publish_raw(redis.port, [(SENT, task_sent(f"long-{i}", f"{i}" + "n" * (64 << 10))) for i in range(16)]
                    + [(HEARTBEAT, heartbeat(f"{i}" + "w" * (64 << 10))) for i in range(16)])
        wait_until(decoded, lambda n: n >= 33 + 32, 30, "long names decoded")
        with RssSampler(exp.proc.pid) as rss:
            start = time.monotonic()
            size = len(metrics(exp))
            took = time.monotonic() - start
        figures.update({
            "long strings: /metrics before (KiB)": size_before >> 10,
            "long strings: /metrics after 32 names of 64 KiB (KiB)": size >> 10,
            "long strings: scrape of it (ms)": round(1000 * took, 1),
            "long strings: max RSS during that scrape (MiB)": round(rss.max, 1),
        })
        # Each task name is copied into ~45 series (8 counters, sent x queue,
        # 2 histograms of 18). 4 MiB for 32 values would still allow 2 KiB
        # each; a Celery task name is a dotted Python path, < 200 bytes.
        expect(out, size <= 4 << 20,
               f"16 task names and 16 worker host names of 64 KiB (1 MiB published) make /metrics "
               f"{size / (1 << 20):.0f} MiB, on every scrape: overlong names must become __overflow__ "
               "(else each is repeated in about 45 series)")
        expect(out, exp.alive() and not panics(exp), "the exporter died or panicked on long strings")
    finally:
        exp.stop()


# --- drill 4: compressed soak -----------------------------------------------

def drill_soak(args, workdir, out):
    """A sustained flood with a scrape every second; memory and CPU per event
    compared between the first and the last window of the run."""
    # The quick run is the test run's smoke check, with the debug build:
    # a rate it keeps up with on a busy machine.
    rate, seconds = (5_000 if args.quick else 20_000), args.soak_seconds
    warmup = 4 if args.quick else 30
    # Full runs compare the first and last minute; quick runs the first and
    # last 20 %, with a looser CPU bound: a few seconds of CPU on a shared
    # 2-core machine are noise-dominated.
    window = seconds * 0.2 if args.quick else 60
    cpu_bound = 0.5 if args.quick else 0.10
    redis = ThrowawayRedis(workdir / "redis")
    exp = pub = None
    try:
        redis.start()
        exp = exporter(args.binary, workdir, redis_url=redis.url(0), name="exporter-soak")
        exp.wait_http(f"{exp.url}/readyz", timeout=30)
        pub = Publisher(redis.port, EventShape())
        published = {}
        flood = threading.Thread(target=lambda: published.update(events=pub.publish(rate, warmup + seconds)[0]),
                                 daemon=True)
        flood.start()
        time.sleep(warmup)
        points, scrape_ms = [], []   # (t, CPU seconds, RSS MiB, events counted)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            t0 = time.monotonic()
            text = metrics(exp)
            scrape_ms.append(1000 * (time.monotonic() - t0))
            points.append((t0 - start, cpu_seconds(exp.proc.pid), rss_mib(exp.proc.pid), task_events(text)))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        flood.join()
        counted = settled(lambda: task_events(metrics(exp)))

        def figures_of(part):
            (t_a, cpu_a, _, n_a), (t_b, cpu_b, _, n_b) = part[0], part[-1]
            return {"rss": sum(p[2] for p in part) / len(part), "cores": (cpu_b - cpu_a) / (t_b - t_a),
                    "cpu_per_1k": 1000 * 1000 * (cpu_b - cpu_a) / max(1.0, n_b - n_a),
                    "events_per_s": (n_b - n_a) / (t_b - t_a)}
        first = figures_of([p for p in points if p[0] <= window])
        last = figures_of([p for p in points if p[0] >= points[-1][0] - window])
        rss_growth = last["rss"] / first["rss"] - 1
        cpu_change = last["cpu_per_1k"] / first["cpu_per_1k"] - 1
        out["figures"].update({
            "target events/s": rate, "soak (s)": seconds, "warm-up (s)": warmup, "window (s)": round(window),
            "events published": published.get("events"), "events counted": int(counted),
            "events lost": published.get("events", 0) - int(counted),
            "RSS first window (MiB)": round(first["rss"], 1), "RSS last window (MiB)": round(last["rss"], 1),
            "RSS change (%)": round(100 * rss_growth, 1),
            "CPU first window (cores)": round(first["cores"], 3), "CPU last window (cores)": round(last["cores"], 3),
            "CPU per 1,000 events first (ms)": round(first["cpu_per_1k"], 3),
            "CPU per 1,000 events last (ms)": round(last["cpu_per_1k"], 3),
            "CPU per event change (%)": round(100 * cpu_change, 1),
            "CPU bound (%)": round(100 * cpu_bound),
            "scrape p50 / p99 / max (ms)": " / ".join(f"{v:.1f}" for v in (
                percentile(scrape_ms, 50), percentile(scrape_ms, 99), max(scrape_ms))),
        })
        if args.quick:
            out["figures"]["note"] = "quick run: windows of a few seconds, CPU bound loosened to 50 %"
        expect(out, rss_growth <= 0.10, f"RSS grew {100 * rss_growth:.1f} % from the first to the last window")
        expect(out, abs(cpu_change) <= cpu_bound,
               f"CPU per event changed {100 * cpu_change:+.1f} % (bound ±{100 * cpu_bound:.0f} %)")
        expect(out, out["figures"]["events lost"] == 0, f"{out['figures']['events lost']} events lost")
        expect(out, exp.alive() and not panics(exp), "the exporter died or panicked")
        out["summary"] = (f"{seconds} s at {rate:,}/s: RSS {first['rss']:.1f} → {last['rss']:.1f} MiB, "
                          f"CPU/event {100 * cpu_change:+.1f} %, {out['figures']['events lost']} lost")
    finally:
        if pub:
            pub.close()
        if exp:
            exp.stop()
        redis.stop()


# --- the suite's interface --------------------------------------------------

DRILLS = [
    ("restarts", "PostgreSQL and Redis restarts under Prometheus", drill_restarts),
    ("pubsub_limit", "Redis pub/sub output-buffer limit", drill_pubsub_limit),
    ("hostile_input", "hostile input on the event channels", drill_hostile_input),
    ("soak", "compressed soak", drill_soak),
]


def defaults(args):
    """The soak's length, full or quick, unless given."""
    if getattr(args, "soak_seconds", None) is None:
        args.soak_seconds = 20 if args.quick else 600


def run(args, workdir: Path, only=None) -> dict:
    """Runs every drill (or those named in `only`); never raises for a failed drill."""
    results = {"quick": bool(args.quick), "drills": {}}
    for key, title, drill in DRILLS:
        if only and key not in only:
            continue
        out = {"title": title, "figures": {}, "failures": [], "summary": "", "error": None}
        results["drills"][key] = out
        log(f"drill {key}: {title}")
        start = time.monotonic()
        folder = Path(workdir) / f"drill-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            drill(args, folder, out)
        except (Exception, pytest.fail.Exception) as e:  # pytest.fail raises a BaseException
            out["error"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"drill {key} did not complete: {out['error']}")
        out["seconds"] = round(time.monotonic() - start, 1)
        out["logs"] = str(folder)
        log(f"drill {key}: {'pass' if not out['failures'] and not out['error'] else 'FAIL'} "
            f"in {out['seconds']} s")
    return results


def checks(results: dict) -> list:
    failed = []
    for key, out in results["drills"].items():
        failed += [f"{key}: {f}" for f in out["failures"]]
        if out["error"]:
            failed.append(f"{key}: did not complete: {out['error']}")
    return failed


def _cell(value) -> str:
    if isinstance(value, float):
        value = f"{value:,.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, int):
        value = f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(results: dict) -> str:
    lines = ["| drill | result | time | figures |", "| --- | --- | --- | --- |"]
    for key, out in results["drills"].items():
        failed = len(out["failures"]) + bool(out["error"])
        verdict = f"**fail** ({failed})" if failed else "pass"
        lines.append(f"| {out['title']} | {verdict} | {out.get('seconds', 0):.0f} s | "
                     f"{_cell(out['summary'] or out['error'] or '')} |")
    for key, out in results["drills"].items():
        lines += ["", f"**{out['title']}** (`{key}`)", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in out["figures"].items()]
        lines += [f"| failed | {_cell(f)} |" for f in out["failures"]]
        if out["error"]:
            lines.append(f"| did not complete | {_cell(out['error'])} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke version (about 90 s)")
    parser.add_argument("--binary", type=Path, default=ROOT / "target/release/bookedbarber-exporter")
    parser.add_argument("--soak-seconds", type=int, help="soak length (default 600, or 20 with --quick)")
    parser.add_argument("--workdir", type=Path, help="logs and servers' files (default: a temporary folder)")
    parser.add_argument("--only", action="append", help="run only this drill (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    defaults(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bbx-drills-"))
    log(f"logs in {workdir}")
    results = run(args, workdir, only=args.only)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    finish(table(results), checks(results))


if __name__ == "__main__":
    main()
