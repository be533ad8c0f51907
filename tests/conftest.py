"""Fixtures shared by the bundle tests.

`demo_stack` is the exporter as a user runs it: against a BookedBarber-shaped
database that keeps moving (scripts/demo-data --live), a throwaway Redis as the
Celery broker, a real Celery worker with events on and a producer sending the
demo's tasks. `demo_prometheus` is a real Prometheus scraping that exporter
every second with every rule file of alerts/rules/ loaded, its targets labelled
as the ServiceMonitor labels them in a cluster.

`postgres_depth_stack` is the exporter against a throwaway PostgreSQL cluster
where the families the shared server cannot have exist
(test_catalogue.CONDITIONAL_POSTGRES): pg_stat_statements preloaded and
installed, a streaming standby on a replication slot, a slot nobody uses,
and max_slot_wal_keep_size set.
`postgres_depth_prometheus` scrapes it the same way.
"""
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.prometheus import Prometheus, scrape_job
from support.services import (DEMO_QUEUES, DemoDatabase, Process, ThrowawayCluster, ThrowawayRedis,
                              celery_producer, celery_worker, exporter)
from support.tools import ROOT, exporter_binary

# The job and target labels a cluster's ServiceMonitor gives the exporter
# (servicemonitors/): the alerts select on the job, the dashboards on namespace.
EXPORTER_JOB = "bookedbarber-exporter"
DEMO_TARGET_LABELS = {"namespace": "bookedbarber", "service": "bookedbarber-exporter",
                      "pod": "bookedbarber-exporter-0", "container": "exporter"}


@pytest.fixture(scope="session")
def exporter_bin() -> Path:
    return exporter_binary()


@dataclass
class DemoStack:
    db: DemoDatabase
    redis: ThrowawayRedis
    exporter: Process
    worker: Process
    log_dir: Path

    @property
    def metrics_url(self) -> str:
        return f"{self.exporter.url}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory, exporter_bin):
    log_dir = tmp_path_factory.mktemp("demo-stack")
    db = DemoDatabase(f"bbx_bundle_{os.getpid()}").create()
    redis = ThrowawayRedis(log_dir / "redis").start()
    broker = redis.url(0)
    processes = []
    try:
        processes.append(Process("demo-data", [ROOT / "scripts/demo-data", "--db", db.name, "--live"],
                                 log_dir).start())
        worker = celery_worker("bundle-worker", broker, log_dir)
        processes.append(worker)
        processes.append(celery_producer(broker, log_dir))
        exp = exporter(exporter_bin, log_dir, postgres_url=db.url, redis_url=broker,
                       args=["--celery.queues", DEMO_QUEUES, "--postgres.interval", "5s",
                             "--redis.interval", "5s", "--celery.interval", "2s"])
        processes.append(exp)
        exp.wait_http(f"{exp.url}/readyz", timeout=90)
        # Let the worker come online and a few tasks finish, so that every
        # Celery family has series.
        deadline = time.monotonic() + 60
        stack = DemoStack(db, redis, exp, worker, log_dir)
        while 'celery_worker_up{worker="bundle-worker@' not in stack.metrics():
            if time.monotonic() > deadline:
                worker.fail("the worker's heartbeats never reached the exporter")
            time.sleep(0.5)
        yield stack
    finally:
        for p in reversed(processes):
            p.stop()
        redis.stop()
        db.drop()


@pytest.fixture(scope="session")
def demo_prometheus(tmp_path_factory, demo_stack):
    """Prometheus scraping the demo exporter every second, with alerts/rules/*.yaml loaded."""
    rules = sorted((ROOT / "alerts/rules").glob("*.yaml"))
    prom = Prometheus(
        tmp_path_factory.mktemp("demo-prometheus"),
        [scrape_job(EXPORTER_JOB, f"127.0.0.1:{demo_stack.exporter.port}",
                    static_configs=[{"targets": [f"127.0.0.1:{demo_stack.exporter.port}"],
                                     "labels": DEMO_TARGET_LABELS}])],
        rule_files=rules,
    ).start()
    try:
        prom.wait_for(f'up{{job="{EXPORTER_JOB}"}} == 1', what="the demo exporter scraped")
        yield prom
    finally:
        prom.stop()


# Series the depth stack must serve before tests read it: each conditional
# family's condition, and a standby that streams.
DEPTH_READY = ("pg_stat_statements_calls_total{", "pg_stat_statements_query_id{",
               'pg_replication_slot_safe_wal_size_bytes{slot_name="bbx_unused"',
               'pg_replication_slot_slot_is_active{slot_name="bbx_standby",slot_type="physical"} 1',
               'pg_replication_slot_slot_is_active{slot_name="bbx_unused",slot_type="physical"} 0',
               'pg_replication_slot_retained_wal_bytes{slot_name="bbx_unused"',
               'pg_stat_replication_replay_lag_seconds{application_name="bbx_standby"')


@dataclass
class PostgresDepthStack:
    primary: ThrowawayCluster
    standby: ThrowawayCluster
    exporter: Process
    log_dir: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.exporter.url}/metrics", timeout=10) as r:
            return r.read().decode()


@pytest.fixture(scope="session")
def postgres_depth_stack(tmp_path_factory, exporter_bin):
    """The exporter against a throwaway primary with pg_stat_statements, a
    standby streaming through slot bbx_standby, an inactive slot bbx_unused
    holding WAL, and a small BookedBarber database kept moving."""
    log_dir = tmp_path_factory.mktemp("postgres-depth")
    primary = ThrowawayCluster(["shared_preload_libraries=pg_stat_statements",
                                # slots get a safe_wal_size (10 GB: never reached here)
                                "max_slot_wal_keep_size=10GB"], "depth-primary")
    standby = None
    processes = []
    try:
        primary.create()
        db = "bookedbarber"
        demo = [ROOT / "scripts/demo-data", "--db", db, "--users", "200", "--appointments", "2000",
                "--payments", "1600"]
        Process("demo-data-seed", demo, log_dir, env=primary.env).start().proc.wait(180)
        primary.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        standby = primary.standby("bbx_standby", "depth-standby")
        primary.psql("postgres", "SELECT pg_create_physical_replication_slot('bbx_unused', true)")
        processes.append(Process("demo-data-depth", [*demo, "--live", "--tick", "2"], log_dir,
                                 env=primary.env).start())
        exp = exporter(exporter_bin, log_dir, postgres_url=primary.url(db), name="exporter-depth",
                       args=["--postgres.interval", "5s", "--postgres.statements.interval", "5s",
                             "--postgres.tables.interval", "5s"])
        processes.append(exp)
        exp.wait_http(f"{exp.url}/readyz", timeout=90)
        stack = PostgresDepthStack(primary, standby, exp, log_dir)
        deadline = time.monotonic() + 60
        while True:
            text = stack.metrics()
            missing = [s for s in DEPTH_READY if s not in text]
            if not missing:
                break
            if time.monotonic() > deadline:
                exp.fail(f"the depth stack does not serve {missing}")
            time.sleep(0.5)
        yield stack
    finally:
        for p in reversed(processes):
            p.stop()
        if standby:
            standby.stop()
        primary.stop()


@pytest.fixture(scope="session")
def postgres_depth_prometheus(tmp_path_factory, postgres_depth_stack):
    """Prometheus scraping the depth stack's exporter as demo_prometheus scrapes the demo's."""
    port = postgres_depth_stack.exporter.port
    prom = Prometheus(
        tmp_path_factory.mktemp("postgres-depth-prometheus"),
        [scrape_job(EXPORTER_JOB, f"127.0.0.1:{port}",
                    static_configs=[{"targets": [f"127.0.0.1:{port}"], "labels": DEMO_TARGET_LABELS}])],
        rule_files=sorted((ROOT / "alerts/rules").glob("*.yaml")),
    ).start()
    try:
        prom.wait_for(f'up{{job="{EXPORTER_JOB}"}} == 1', what="the depth exporter scraped")
        yield prom
    finally:
        prom.stop()
