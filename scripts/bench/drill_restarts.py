"""Drill 1 of drills.py: a throwaway PostgreSQL and a throwaway Redis are
killed and started again on the same ports while a real Prometheus scrapes
the exporter every second and a real Celery worker and producer keep
working. Every verdict is read from Prometheus's own data over the drill's
window: no failed scrape, each `up` gauge down within seconds of its
server's death and back after its restart (the time to recover is the
figure), the other sources untouched meanwhile, and no counter reset
(docs/metrics.md, rule 1: counters read from a source that restarted are
continued, never lowered)."""
import math
import os
import re
import shutil
import time

from common import ROOT, log, metric_sum
from drill_helpers import expect, metrics, panics, wait_until

from support.prometheus import Prometheus, scrape_job
from support.services import DEMO_QUEUES, ThrowawayCluster, ThrowawayRedis, celery_producer, celery_worker, exporter
from support.tools import run

# Which gauges a dead server must turn to 0, and no other.
GAUGES = {"postgres": ["pg_up"], "redis": ["redis_up", "celery_event_stream_up"]}
# Every counter series: *_total, and the Celery histograms' parts.
COUNTERS = '{job="exporter",__name__=~".+_total|.+_seconds_(bucket|count|sum)"}'
DETECT_LIMIT_S, RECOVER_LIMIT_S = 5.0, 10.0
# Collection intervals of 1 s (2 s for the deeper PostgreSQL collectors and
# the business queries), so that outages and recoveries show within seconds.
EXPORTER_ARGS = ["--celery.queues", DEMO_QUEUES,
                 "--postgres.interval", "1s", "--postgres.timeout", "1s",
                 "--postgres.statements.interval", "2s", "--postgres.tables.interval", "2s",
                 "--redis.interval", "1s", "--redis.timeout", "1s",
                 "--celery.interval", "1s", "--celery.timeout", "1s", "--celery.discovery-interval", "5s"]


def drill_restarts(args, workdir, out):
    down, gap, cycles = (3, 3, 1) if args.quick else (10, 10, 2)
    cluster = ThrowawayCluster(name="drill-restarts")
    redis = ThrowawayRedis(workdir / "redis")
    procs = {}
    prom = None
    try:
        cluster.create()
        run([ROOT / "scripts/demo-data", "--db", "bookedbarber", "--users", 200, "--appointments", 2000,
             "--payments", 1600], env={**os.environ, **cluster.env})
        redis.start()
        broker = redis.url(0)
        # The shipped business queries run every 30-60 s: every 2 s here, so
        # that they too live through the PostgreSQL restart.
        queries = workdir / "business-queries.toml"
        queries.write_text(re.sub(r'interval = "\d+s"', 'interval = "2s"',
                                  (ROOT / "config/business-queries.toml").read_text()))
        procs["exporter"] = exp = exporter(args.binary, workdir, postgres_url=cluster.url("bookedbarber"),
                                           redis_url=broker, args=[*EXPORTER_ARGS, "--business.queries", queries])
        procs["worker"] = celery_worker("drill", broker, workdir)
        procs["producer"] = celery_producer(broker, workdir)
        exp.wait_http(f"{exp.url}/readyz", timeout=60)
        # A fresh TSDB: series of an earlier run in the same folder would mix in.
        shutil.rmtree(workdir / "prometheus", ignore_errors=True)
        prom = Prometheus(workdir / "prometheus", [scrape_job("exporter", f"127.0.0.1:{exp.port}", interval="1s")])
        prom.start()
        prom.wait_for('up{job="exporter"} == 1', timeout=30, what="the exporter scraped")
        prom.wait_for('sum(celery_task_succeeded_total{job="exporter"}) > 0', timeout=60,
                      what="Celery tasks flowing")

        kill = {"postgres": cluster.crash, "redis": redis.kill}
        restart = {"postgres": cluster.start, "redis": redis.start}
        start = time.time()
        outages = []
        supervised = {"worker": lambda: celery_worker("drill", broker, workdir),
                      "producer": lambda: celery_producer(broker, workdir)}
        restarts = {name: 0 for name in supervised}
        for _ in range(cycles):
            for server in ("postgres", "redis"):
                time.sleep(gap)
                log(f"restarts: killing {server} for {down} s")
                killed = time.time()
                kill[server]()
                time.sleep(down)
                restart[server]()
                restarted = time.time()
                outage = {"server": server, "killed": killed, "restarted": restarted}
                outages.append(outage)
                if server == "redis":
                    succeeded = metric_sum(metrics(exp), "celery_task_succeeded_total")
                    # Restarted as their supervisor would restart them, should
                    # they die with Redis: a worker that loses the broker while
                    # it holds an unacknowledged message can exit
                    # ("Unrecoverable error: AttributeError: 'NoneType' object
                    # has no attribute 'hostname'", kombu 5.7 restoring it on
                    # a closed connection). The demo producer retries on its
                    # own; a restart of it would be a regression.
                    for name, start_again in supervised.items():
                        if not procs[name].alive():
                            procs[name] = start_again()
                            restarts[name] += 1
                    wait_until(lambda: metric_sum(metrics(exp), "celery_task_succeeded_total"),
                               lambda n: n > succeeded, 60, "Celery tasks counted after the Redis restart")
                    outage["tasks counted again"] = time.time() - restarted
                for gauge in GAUGES[server]:
                    prom.wait_for(f'{gauge}{{job="exporter"}} == 1', timeout=30, what=f"{gauge} back to 1")
        time.sleep(gap)
        end = time.time()
        time.sleep(2)  # the last scrapes land in the TSDB
        analyse(prom, start, end, outages, out)
        out["figures"]["Celery worker restarted after a Redis outage (kombu)"] = restarts["worker"]
        out["figures"]["demo producer restarted after a Redis outage"] = restarts["producer"]
        expect(out, restarts["producer"] == 0, "the demo producer died with Redis instead of retrying")
        expect(out, exp.alive() and not panics(exp), "the exporter died or panicked")
    finally:
        if prom:
            prom.stop()
        for p in reversed(list(procs.values())):
            p.stop()
        redis.stop()
        cluster.stop()


def analyse(prom, start, end, outages, out):
    figures = out["figures"]
    window = f"{math.ceil(end - start)}s"

    def scalar(expr):
        result = prom.query(expr, time_=end)
        return float(result[0]["value"][1]) if result else None

    def raw(expr):
        result = prom.query(f"{expr}[{window}]", time_=end)
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    seconds = end - start
    scrapes = scalar(f'count_over_time(up{{job="exporter"}}[{window}])')
    up_min = scalar(f'min_over_time(up{{job="exporter"}}[{window}])')
    slowest = scalar(f'max_over_time(scrape_duration_seconds{{job="exporter"}}[{window}])')
    ups = raw('up{job="exporter"}')
    figures.update({"drill window (s)": round(seconds), "scrapes": int(scrapes or 0),
                    "failed scrapes": sum(1 for _, v in ups if v == 0),
                    "longest gap between scrapes (s)": round(max(b - a for (a, _), (b, _) in zip(ups, ups[1:])), 2),
                    "slowest scrape (ms)": round(1000 * (slowest or 0), 1)})
    expect(out, up_min == 1, "a scrape of /metrics failed (up == 0)")
    expect(out, scrapes is not None and scrapes >= seconds - 2,
           f"{scrapes} scrapes in {seconds:.0f} s at a 1 s interval")
    expect(out, slowest is not None and slowest < 0.5, f"slowest scrape {slowest} s")

    series = {g: raw(f'{g}{{job="exporter"}}') for gs in GAUGES.values() for g in gs}
    collectors = prom.api("query_range", query='min(bookedbarber_exporter_collector_up{job="exporter"})',
                          start=start, end=end, step="1")["result"]
    all_up = [(float(t), float(v)) for t, v in collectors[0]["values"]] if collectors else []
    recovered_until = {}
    for n, o in enumerate(outages, 1):
        label = f"{o['server']} outage {n}"
        for gauge in GAUGES[o["server"]]:
            down_at = _first(series[gauge], o["killed"], 0)
            up_at = _first(series[gauge], max(o["restarted"], down_at or 0), 1)
            recovered_until.setdefault(gauge, []).append((o["killed"], up_at or end))
            if not expect(out, down_at is not None and up_at is not None,
                          f"{label}: {gauge} never went to 0 and back to 1 (down {down_at}, up {up_at})"):
                continue
            figures[f"{label}: {gauge} 0 after kill (s)"] = round(down_at - o["killed"], 1)
            figures[f"{label}: {gauge} 1 after restart (s)"] = round(up_at - o["restarted"], 1)
            expect(out, down_at - o["killed"] <= DETECT_LIMIT_S,
                   f"{label}: {gauge} went to 0 {down_at - o['killed']:.1f} s after the kill")
            expect(out, up_at - o["restarted"] <= RECOVER_LIMIT_S,
                   f"{label}: {gauge} back to 1 {up_at - o['restarted']:.1f} s after the restart")
        every = _first(all_up, o["restarted"], 1)
        figures[f"{label}: every collector up after restart (s)"] = (
            round(every - o["restarted"], 1) if every else "never")
        if "tasks counted again" in o:
            figures[f"{label}: Celery tasks counted again after restart (s)"] = round(o["tasks counted again"], 1)
    # A dead server's gauge only: the others stay at 1 throughout.
    for gauge, values in series.items():
        stray = [t for t, v in values if v == 0
                 and not any(a <= t <= b for a, b in recovered_until.get(gauge, []))]
        expect(out, not stray, f"{gauge} was 0 at {len(stray)} scrapes outside its server's outages")

    # resets() drops the metric name, and Prometheus refuses a result with
    # two series of the same labels: one query per counter name.
    names = sorted(r["metric"]["__name__"] for r in prom.query(f"group by (__name__) ({COUNTERS})", time_=end))
    resets, checked = [], 0
    for name in names:
        selector = f'{name}{{job="exporter"}}[{window}]'
        checked += int(scalar(f"count(count_over_time({selector}))") or 0)
        resets += [_name({"__name__": name, **r["metric"]}) for r in prom.query(f"resets({selector}) > 0", time_=end)]
    figures["counter series checked for resets"] = checked
    figures["counter resets"] = len(resets)
    expect(out, not resets, f"{len(resets)} counters reset: " + ", ".join(resets[:10]))
    # Rule 1 at work: what dropped at the source and was continued.
    drops = prom.query("max_over_time(bookedbarber_exporter_source_decreases_total[{0}]) - "
                       "min_over_time(bookedbarber_exporter_source_decreases_total[{0}]) > 0".format(window),
                       time_=end)
    figures["source drops continued (metric: drops)"] = ", ".join(
        sorted(f"{r['metric'].get('metric')}: {float(r['value'][1]):.0f}" for r in drops)) or "none"
    reconnects = scalar(f'max_over_time(celery_event_stream_reconnects_total[{window}]) - '
                        f'min_over_time(celery_event_stream_reconnects_total[{window}])')
    redis_outages = sum(1 for o in outages if o["server"] == "redis")
    figures["event stream reconnects counted"] = int(reconnects or 0)
    expect(out, (reconnects or 0) >= redis_outages,
           f"{reconnects} event stream reconnects counted for {redis_outages} Redis outages")
    pg = [v for k, v in figures.items() if "pg_up 1 after" in k]
    rd = [v for k, v in figures.items() if "redis_up 1 after" in k]
    ev = [v for k, v in figures.items() if "celery_event_stream_up 1 after" in k]
    out["summary"] = (f"{figures['scrapes']} scrapes, {figures['failed scrapes']} failed; back after restart: "
                      f"pg_up {_list(pg)} s, redis_up {_list(rd)} s, event stream {_list(ev)} s; "
                      f"{figures['counter resets']} counter resets")


def _first(values, after, want):
    """Timestamp of the first sample at or after `after` whose value is `want`."""
    return next((t for t, v in values if t >= after and v == want), None)


def _name(metric):
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k not in ("__name__", "job", "instance"))
    return f"{metric.get('__name__')}{{{labels}}}"


def _list(values):
    return ", ".join(str(v) for v in values) or "n/a"
