"""Fixtures shared by the bundle tests.

`demo_stack` is the exporter as a user runs it: against a BookedBarber-shaped
database that keeps moving (scripts/demo-data --live), a throwaway Redis as the
Celery broker, a real Celery worker with events on and a producer sending the
demo's tasks. `demo_prometheus` is a real Prometheus scraping that exporter
every second with every rule file of alerts/rules/ loaded, its targets labelled
as the ServiceMonitor labels them in a cluster.
"""
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.prometheus import Prometheus, scrape_job
from support.services import (DEMO_QUEUES, DemoDatabase, Process, ThrowawayRedis, celery_producer,
                              celery_worker, exporter)
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
