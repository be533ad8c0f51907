"""Side by side: this exporter against the exporters users would otherwise
deploy, on the same machine, the same data and in the same run.

Peers: postgres_exporter (Debian) with its defaults and with BookedBarber's
business queries given through --extend.query-path, redis_exporter (Debian)
with the Celery queue keys given through --check-single-keys, and Flower's
/metrics. One throwaway PostgreSQL cluster (with pg_stat_statements, so that
each exporter's statements and server time can be told apart by its role)
holds the BookedBarber database; each PostgreSQL exporter reads its own
identical copy (CREATE DATABASE ... TEMPLATE), so that PostgreSQL's
per-database transaction counter is per exporter. One throwaway Redis holds
Celery queues at four priority levels, unacked messages, kombu bindings and
result keys.

Two phases:
- scrapes: each exporter alone, started fresh, scraped back to back and by
  wrk; repeated, figures are medians with min and max;
- Prometheus load: every exporter at once, scraped by one and then by two
  real Prometheus servers; PostgreSQL transactions, statements, server time
  and backend CPU per minute for each exporter."""
import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import events  # noqa: E402
from common import (ROOT, EventShape, Publisher, cpu_seconds, finish, http_get, log, percentile,  # noqa: E402
                    resp, rss_mib, samples, summary)
from support.prometheus import Prometheus, scrape_job  # noqa: E402
from support.services import Process, ThrowawayCluster, ThrowawayRedis  # noqa: E402
from support.tools import free_port, require  # noqa: E402

QUEUES = ["default", "notifications", "urgent_notifications", "marketing"]
PRIORITY_STEPS = [0, 3, 6, 9]
SEP = "\x06\x16"
PG_PEERS = ["ours", "pge_default", "pge_queries"]
LABELS = {
    "ours": "bookedbarber-exporter (all sources)",
    "pge_default": "postgres_exporter, defaults",
    "pge_queries": "postgres_exporter + business queries",
    "redis_exporter": "redis_exporter + queue keys",
    "flower": "Flower /metrics",
}
SHORT_LABELS = {
    "ours": "bookedbarber-\nexporter", "pge_default": "postgres_\nexporter", "pge_queries": "postgres_\nexporter\n+ queries",
    "redis_exporter": "redis_\nexporter\n+ keys", "flower": "Flower",
}


def sizes(quick):
    if quick:
        return {"users": 2000, "appointments": 20000, "payments": 16000, "messages": 200, "result_keys": 10000}
    return {"users": 20000, "appointments": 1_000_000, "payments": 800_000, "messages": 5000,
            "result_keys": 100_000}


# --- the data --------------------------------------------------------------

def seed_postgres(cluster, size):
    cluster.psql("postgres", "CREATE DATABASE bbx_bench")
    env_psql = [require("psql"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                "-d", "bbx_bench", "-v", "ON_ERROR_STOP=1", "-qAtX"]
    subprocess.run([*env_psql, "-f", ROOT / "scripts/schema.sql", "-f", ROOT / "scripts/demo.sql"],
                   check=True, capture_output=True)
    start = time.monotonic()
    subprocess.run([*env_psql, "-c", f"SELECT demo_seed({size['users']}, {size['appointments']}, "
                    f"{size['payments']})", "-c", "ANALYZE"], check=True, capture_output=True)
    log(f"seeded {size['appointments']:,} appointments, {size['payments']:,} payments "
        f"in {time.monotonic() - start:.0f} s")
    cluster.psql("postgres", "CREATE EXTENSION pg_stat_statements")
    for peer in PG_PEERS:
        # Each exporter logs in as a role of its own (what pg_stat_statements
        # and pg_stat_activity tell apart) with what a monitoring role gets.
        cluster.psql("postgres", f"CREATE DATABASE bbx_{peer} TEMPLATE bbx_bench")
        cluster.psql("postgres", f"CREATE ROLE bench_{peer} LOGIN IN ROLE pg_monitor")
        cluster.psql(f"bbx_{peer}", f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench_{peer}")
    cluster.psql("postgres", "CHECKPOINT")


def seed_redis(redis, size):
    """Celery's layout (docs/celery-redis-protocol.md): a list per queue and
    priority step, the unacked hash, kombu's binding sets, result keys."""
    message = (ROOT / "exporter/tests/fixtures/celery/queue-message-notifications.json").read_bytes()
    commands = []
    for q in QUEUES:
        commands.append(resp(b"SADD", f"_kombu.binding.{q}", f"{q}{SEP}{SEP}{q}"))
        for step in PRIORITY_STEPS:
            key = q if step == 0 else f"{q}{SEP}{step}"
            for _ in range(size["messages"] // len(PRIORITY_STEPS)):
                commands.append(resp(b"LPUSH", key, message))
    for i in range(100):
        commands.append(resp(b"HSET", "unacked", f"tag-{i}", message))
        commands.append(resp(b"ZADD", "unacked_index", time.time(), f"tag-{i}"))
    commands.append(resp(b"DEBUG", b"POPULATE", size["result_keys"], b"celery-task-meta-"))
    with socket.create_connection(("127.0.0.1", redis.port)) as s:
        s.sendall(b"".join(commands))
        s.sendall(resp(b"PING"))
        buf = b""
        while not buf.endswith(b"+PONG\r\n"):
            buf += s.recv(1 << 20)
    log(f"Redis: {len(QUEUES)} queues × {len(PRIORITY_STEPS)} priority steps, "
        f"{size['messages']:,} messages per queue, {size['result_keys']:,} result keys")


def pge_queries_file(path: Path):
    """BookedBarber's business queries (config/business-queries.toml) in
    postgres_exporter's --extend.query-path format, each cached for its own
    interval as ours runs it (the fairest setup for postgres_exporter)."""
    config = tomllib.loads((ROOT / "config/business-queries.toml").read_text())
    default_interval = config["defaults"]["interval"]
    lines = []
    for q in config["query"]:
        interval = q.get("interval", default_interval)
        seconds = int(interval[:-1]) * (60 if interval.endswith("m") else 1)
        # One entry per query, as a user would write it: postgres_exporter
        # names each value column <entry>_<column> and labels it with every
        # LABEL column.
        lines += [f"bookedbarber_{q['name']}:", f"  query: {json.dumps(q['sql'].strip())}",
                  f"  cache_seconds: {seconds}", "  metrics:"]
        labels = dict.fromkeys(label for m in q["metric"] for label in m.get("labels", []))
        for label in labels:
            lines.append(f"    - {label}: {{usage: LABEL, description: {json.dumps(label)}}}")
        for m in q["metric"]:
            usage = "COUNTER" if m["type"] == "counter" else "GAUGE"
            lines.append(f"    - {m['value']}: {{usage: {usage}, description: {json.dumps(m['help'])}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the peers -------------------------------------------------------------

class Peer:
    """One exporter process on a free loopback port."""

    def __init__(self, name, argv, workdir, env=None, cwd=None, ready_path="/metrics"):
        self.name = name
        self.port = free_port()
        argv = [a.replace("PORT", str(self.port)) if isinstance(a, str) else a for a in argv]
        self.process = Process(name, argv, workdir, env=env, cwd=cwd)
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.ready_url = f"http://127.0.0.1:{self.port}{ready_path}"

    @property
    def pid(self):
        return self.process.proc.pid

    def start(self):
        self.process.start()
        self.process.wait_http(self.ready_url, timeout=600)
        return self

    def stop(self):
        self.process.stop()


def make_peers(args, cluster, redis, workdir):
    queries = pge_queries_file(workdir / "pge-business-queries.yaml")

    def dsn(peer):
        return f"postgresql://bench_{peer}@127.0.0.1:{cluster.port}/bbx_{peer}?sslmode=disable"

    keys = ",".join(f"db0={q if s == 0 else q + SEP + str(s)}" for q in QUEUES for s in PRIORITY_STEPS)
    pge = require("prometheus-postgres-exporter")
    return {
        "ours": lambda: Peer("ours", [args.binary, "--web.listen-address", "127.0.0.1:PORT",
                                      "--celery.queues", ",".join(QUEUES)], workdir,
                             env={"BOOKEDBARBER_POSTGRES_DSN": dsn("ours").replace("postgresql", "postgres"),
                                  "BOOKEDBARBER_REDIS_URL": redis.url(0)}, ready_path="/readyz"),
        "pge_default": lambda: Peer("pge_default", [pge, "--web.listen-address=127.0.0.1:PORT"], workdir,
                                    env={"DATA_SOURCE_NAME": dsn("pge_default")}),
        "pge_queries": lambda: Peer("pge_queries", [pge, "--web.listen-address=127.0.0.1:PORT",
                                                    f"--extend.query-path={queries}"], workdir,
                                    env={"DATA_SOURCE_NAME": dsn("pge_queries")}),
        "redis_exporter": lambda: Peer("redis_exporter", [require("prometheus-redis-exporter"),
                                                          "-redis.addr", f"redis://127.0.0.1:{redis.port}",
                                                          "-web.listen-address", "127.0.0.1:PORT",
                                                          "-check-single-keys", keys], workdir),
        "flower": lambda: Peer("flower", [require("celery"), "-A", "bbtasks", "flower", "--port=PORT",
                                          *events.FLOWER_OPTIONS], workdir,
                               cwd=ROOT / "scripts/celery",
                               env={"BBX_BROKER_URL": redis.url(0)}),
    }


# --- what the servers say --------------------------------------------------

class PgLoad:
    """PostgreSQL's view of one exporter: transactions in its database,
    statements and server time of its role (pg_stat_statements), CPU of its
    backends (/proc, followed while they come and go)."""

    def __init__(self, cluster, peer):
        self.cluster, self.peer = cluster, peer
        self.backend_cpu = {}

    def _backends(self):
        out = self.cluster.psql("postgres", f"SELECT pid FROM pg_stat_activity WHERE usename = 'bench_{self.peer}'")
        for pid in filter(None, out.split()):
            try:
                self.backend_cpu[pid] = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass

    def snapshot(self):
        row = self.cluster.psql("postgres", f"""
            SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'bbx_{self.peer}'),
                   coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0)
            FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
            WHERE r.rolname = 'bench_{self.peer}'""")
        xacts, calls, exec_ms = row.split("|")
        self._backends()
        return {"xacts": float(xacts), "statements": float(calls), "exec_ms": float(exec_ms),
                "cpu": sum(self.backend_cpu.values())}

    def poll(self):
        """Call now and then during a window, so short-lived backends count."""
        self._backends()

    @staticmethod
    def delta(before, after):
        return {k: after[k] - before[k] for k in before}


def redis_calls(port) -> int:
    out = subprocess.run([require("redis-cli"), "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(m) for m in re.findall(r"calls=(\d+)", out))


def wrk(url, seconds):
    """Requests/s that wrk gets from `url` with 2 threads and 8 connections."""
    out = subprocess.run([require("wrk"), "-t2", "-c8", f"-d{seconds}s", "--timeout", "30s", url],
                         capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    return float(m.group(1)) if m else None, errors.group(0) if errors else None


# --- phase 1: each exporter alone ------------------------------------------

def scrape_phase(args, peers, cluster, redis, shape):
    results = {name: [] for name in peers}
    for repeat in range(args.repeats):
        for name, make in peers.items():
            log(f"scrapes: {LABELS[name]}, run {repeat + 1}/{args.repeats}")
            peer = make().start()
            try:
                if name in ("ours", "flower"):
                    # Give the event consumers a realistic set of task and
                    # worker series before measuring.
                    time.sleep(1)
                    pub = Publisher(redis.port, shape)
                    pub.publish(5000, 2)
                    pub.close()
                for _ in range(3):
                    http_get(peer.url)
                time.sleep(args.settle)
                pg = PgLoad(cluster, name) if name in PG_PEERS else None
                pg_before = pg.snapshot() if pg else None
                calls_before = redis_calls(redis.port)
                cpu_before = cpu_seconds(peer.pid)
                latencies, body = [], b""
                for _ in range(args.scrapes):
                    t = time.perf_counter()
                    body = http_get(peer.url, timeout=120)
                    latencies.append((time.perf_counter() - t) * 1000)
                    if pg:
                        pg.poll()
                    time.sleep(args.scrape_gap)
                cpu = cpu_seconds(peer.pid) - cpu_before
                # The INFO that took the first reading is counted in the second.
                redis_commands = redis_calls(redis.port) - calls_before - 1
                run = {
                    "latency_p50_ms": percentile(latencies, 50), "latency_p99_ms": percentile(latencies, 99),
                    "series": sum(1 for _ in samples(body.decode())), "bytes": len(body),
                    "cpu_ms_per_scrape": cpu * 1000 / args.scrapes, "rss_mib": rss_mib(peer.pid),
                    "redis_commands_per_scrape": redis_commands / args.scrapes,
                }
                if pg:
                    d = PgLoad.delta(pg_before, pg.snapshot())
                    run.update({"sql_statements_per_scrape": d["statements"] / args.scrapes,
                                "pg_xacts_per_scrape": d["xacts"] / args.scrapes,
                                "pg_exec_ms_per_scrape": d["exec_ms"] / args.scrapes,
                                "pg_cpu_ms_per_scrape": d["cpu"] * 1000 / args.scrapes})
                run["wrk_rps"], run["wrk_errors"] = wrk(peer.url, args.wrk_seconds)
                run["rss_mib_after_wrk"] = rss_mib(peer.pid)
                results[name].append(run)
            finally:
                peer.stop()
    return {name: {k: summary([r[k] for r in runs]) for k in runs[0] if k != "wrk_errors"}
            | {"wrk_errors": [r["wrk_errors"] for r in runs if r["wrk_errors"]]}
            for name, runs in results.items()}


# --- phase 2: real Prometheus servers ---------------------------------------

def prometheus_phase(args, peers, cluster, workdir):
    running = {name: peers[name]().start() for name in PG_PEERS}
    servers = []
    out = {}
    try:
        # Past the first collections, whose burst is not the steady load.
        time.sleep(args.settle * 6)
        jobs = [scrape_job(name, f"127.0.0.1:{p.port}", interval=args.prom_interval)
                for name, p in running.items()]
        for n in (1, 2):
            servers.append(Prometheus(workdir / f"prometheus-{n}", jobs, scrape_interval=args.prom_interval,
                                      evaluation_interval="15s").start())
            log(f"Prometheus load: {n} server(s) scraping every {args.prom_interval} for {args.prom_seconds} s")
            time.sleep(5)
            loads = {name: PgLoad(cluster, name) for name in running}
            before = {name: pg.snapshot() for name, pg in loads.items()}
            cpu_before = {name: cpu_seconds(p.pid) for name, p in running.items()}
            deadline = time.monotonic() + args.prom_seconds
            while time.monotonic() < deadline:
                time.sleep(min(5, max(0, deadline - time.monotonic())))
                for pg in loads.values():
                    pg.poll()
            minutes = args.prom_seconds / 60
            out[f"{n}_prometheus"] = {}
            for name, pg in loads.items():
                d = PgLoad.delta(before[name], pg.snapshot())
                out[f"{n}_prometheus"][name] = {
                    "xacts_per_min": d["xacts"] / minutes, "statements_per_min": d["statements"] / minutes,
                    "exec_ms_per_min": d["exec_ms"] / minutes, "pg_cpu_ms_per_min": d["cpu"] * 1000 / minutes,
                    "exporter_cpu_ms_per_min": (cpu_seconds(running[name].pid) - cpu_before[name]) * 1000 / minutes,
                }
            for s in servers:
                up = s.query("min_over_time(up[1h])")
                out[f"{n}_prometheus"].setdefault("failed_targets", []).extend(
                    r["metric"]["job"] for r in up if float(r["value"][1]) < 1)
    finally:
        for s in servers:
            s.stop()
        for p in running.values():
            p.stop()
    return out


def run(args, workdir: Path) -> dict:
    size = sizes(args.quick)
    cluster = ThrowawayCluster(["shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=top",
                                "shared_buffers=256MB", "max_connections=200"], name="bench")
    redis = ThrowawayRedis(workdir / "redis", extra=["--enable-debug-command", "yes"])
    try:
        log("creating the throwaway PostgreSQL cluster and Redis")
        cluster.create()
        redis.start()
        seed_postgres(cluster, size)
        seed_redis(redis, size)
        peers = make_peers(args, cluster, redis, workdir)
        shape = EventShape()
        results = {"sizes": size, "versions": versions(cluster),
                   "settings": {k: getattr(args, k) for k in ("repeats", "scrapes", "scrape_gap", "settle",
                                                               "wrk_seconds", "prom_interval", "prom_seconds")}}
        results["scrapes"] = scrape_phase(args, peers, cluster, redis, shape)
        results["prometheus"] = prometheus_phase(args, peers, cluster, workdir)
        return results
    finally:
        redis.stop()
        cluster.stop()


def versions(cluster):
    def first_line(argv):
        p = subprocess.run(argv, capture_output=True, text=True)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    return {
        "postgresql": cluster.psql("postgres", "SHOW server_version"),
        "postgres_exporter": first_line([require("prometheus-postgres-exporter"), "--version"]),
        "redis_exporter": re.sub(r'.*msg="', "", first_line([require("prometheus-redis-exporter"), "--version"]))
        .rstrip('"'),
        "redis": first_line([require("redis-server"), "--version"]),
        "flower": first_line([str(ROOT / ".venv/bin/python"), "-c", "import flower; print(flower.__version__)"]),
    }


# --- the report ------------------------------------------------------------

def _fmt(s, digits=1):
    if not s or s.get("median") is None:
        return "–"
    f = f"{{:,.{digits}f}}"
    if s["runs"] == 1 or s["min"] == s["max"]:
        return f.format(s["median"])
    return f"{f.format(s['median'])} ({f.format(s['min'])}–{f.format(s['max'])})"


def table(results) -> str:
    rows = [("scrape latency p50 (ms)", "latency_p50_ms", 2), ("scrape latency p99 (ms)", "latency_p99_ms", 2),
            ("series per scrape", "series", 0), ("CPU per scrape (ms)", "cpu_ms_per_scrape", 2),
            ("resident memory (MiB)", "rss_mib", 1), ("resident memory after wrk (MiB)", "rss_mib_after_wrk", 1),
            ("SQL statements per scrape", "sql_statements_per_scrape", 1),
            ("PostgreSQL transactions per scrape", "pg_xacts_per_scrape", 1),
            ("PostgreSQL server time per scrape (ms)", "pg_exec_ms_per_scrape", 2),
            ("PostgreSQL backend CPU per scrape (ms)", "pg_cpu_ms_per_scrape", 1),
            ("Redis commands per scrape", "redis_commands_per_scrape", 1),
            ("wrk on /metrics (requests/s)", "wrk_rps", 0)]
    s = results["scrapes"]
    names = list(s)
    out = ["| | " + " | ".join(LABELS[n] for n in names) + " |", "| --- |" + " --- |" * len(names)]
    for label, key, digits in rows:
        out.append(f"| {label} | " + " | ".join(_fmt(s[n].get(key), digits) for n in names) + " |")
    out += ["", "Ratios, ours / theirs (medians of the same run):", ""]
    ours = s["ours"]
    for key, label in (("latency_p99_ms", "scrape latency p99"), ("cpu_ms_per_scrape", "CPU per scrape"),
                       ("rss_mib", "resident memory"), ("wrk_rps", "wrk requests/s")):
        parts = []
        for n in names[1:]:
            theirs = s[n].get(key, {}).get("median")
            if theirs:
                parts.append(f"{LABELS[n]} {ours[key]['median'] / theirs:.2f}")
        out.append(f"- {label}: " + ", ".join(parts))
    stack = ["pge_queries", "redis_exporter", "flower"]
    if all(n in s for n in stack):
        rss = sum(s[n]["rss_mib"]["median"] for n in stack)
        series = sum(s[n]["series"]["median"] for n in stack)
        out.append(f"- the usual stack ({', '.join(LABELS[n] for n in stack)}): {rss:.1f} MiB resident in all, "
                   f"{series:,.0f} series; ours {ours['rss_mib']['median']:.1f} MiB, "
                   f"{ours['series']['median']:,.0f} series")
    for phase, per in results.get("prometheus", {}).items():
        n = phase.split("_")[0]
        out += ["", f"PostgreSQL load per minute, {n} Prometheus server(s) scraping every "
                    f"{results['settings']['prom_interval']} for {results['settings']['prom_seconds']} s:", "",
                "| | transactions | statements | server time (ms) | backend CPU (ms) | exporter CPU (ms) |",
                "| --- | --- | --- | --- | --- | --- |"]
        for name in PG_PEERS:
            r = per[name]
            out.append(f"| {LABELS[name]} | {r['xacts_per_min']:,.0f} | {r['statements_per_min']:,.0f} | "
                       f"{r['exec_ms_per_min']:,.1f} | {r['pg_cpu_ms_per_min']:,.0f} | "
                       f"{r['exporter_cpu_ms_per_min']:,.0f} |")
    return "\n".join(out)


def checks(results) -> list:
    failed = []
    for name, s in results["scrapes"].items():
        if not s["series"]["median"]:
            failed.append(f"{LABELS[name]}: no series in its scrape (set-up broken)")
        if s["wrk_errors"]:
            failed.append(f"{LABELS[name]}: wrk saw errors: {s['wrk_errors']}")
    if results["scrapes"]["pge_queries"]["series"]["median"] <= results["scrapes"]["pge_default"]["series"]["median"]:
        failed.append("postgres_exporter with business queries has no more series than without: queries not loaded")
    for phase, per in results.get("prometheus", {}).items():
        if per.get("failed_targets"):
            failed.append(f"{phase}: failed scrapes of {sorted(set(per['failed_targets']))}")
        if not per["ours"]["statements_per_min"]:
            failed.append(f"{phase}: no statements seen for our exporter (measurement broken)")
    return failed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small data, short windows (a smoke run)")
    p.add_argument("--binary", type=Path, default=ROOT / "target/release/bookedbarber-exporter")
    args = p.parse_args()
    defaults(args)
    with tempfile.TemporaryDirectory(prefix="bbx-compare-") as d:
        results = run(args, Path(d))
    finish(table(results), checks(results))


def defaults(args):
    """The knobs of this part, full or quick, unless already set."""
    values = {"repeats": 1, "scrapes": 10, "scrape_gap": 0.2, "settle": 2, "wrk_seconds": 3,
              "prom_interval": "2s", "prom_seconds": 20} if args.quick else \
             {"repeats": 3, "scrapes": 60, "scrape_gap": 0.5, "settle": 5, "wrk_seconds": 10,
              "prom_interval": "15s", "prom_seconds": 180}
    for k, v in values.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


if __name__ == "__main__":
    main()
