"""A real Prometheus server (Debian `prometheus`) for the bundle tests."""
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from support.services import Process
from support.tools import free_port, require


class PrometheusError(Exception):
    """The query API answered with an error (bad PromQL, …)."""


class Prometheus:
    """Starts `prometheus` on a free loopback port with the given scrape jobs
    and rule files; `query()` and `wait_for()` read its API."""

    def __init__(self, workdir: Path, scrape_configs, rule_files=(), alertmanagers=(),
                 scrape_interval="1s", evaluation_interval="1s", extra_args=()):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": evaluation_interval},
            "scrape_configs": list(scrape_configs),
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = Process(
            f"prometheus-{self.port}",
            [require("prometheus"), f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle", *extra_args],
            self.dir,
        )

    def start(self):
        self.process.start()
        self.process.wait_http(f"{self.url}/-/ready")
        return self

    def stop(self):
        self.process.stop()

    def api(self, path, **params):
        url = f"{self.url}/api/v1/{path}"
        data = urllib.parse.urlencode(params).encode() if params else None
        try:
            with urllib.request.urlopen(url, data=data, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr, time_=None):
        """The instant vector (list of {metric, value}) for `expr`; raises PrometheusError."""
        params = {"query": expr}
        if time_ is not None:
            params["time"] = str(time_)
        data = self.api("query", **params)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def wait_for(self, expr, predicate=bool, timeout=60.0, what=None):
        """Polls `expr` until predicate(result) holds; fails with the last result."""
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            try:
                result = self.query(expr)
                if predicate(result):
                    return result
            except PrometheusError as e:
                result = e
            time.sleep(0.5)
        pytest.fail(f"{what or expr}: not true after {timeout}s; last result: {result}", pytrace=False)

    def targets(self):
        return self.api("targets")["activeTargets"]

    def alerts(self):
        return self.api("alerts")["alerts"]

    def rule_groups(self):
        return self.api("rules")["groups"]


def scrape_job(name, target, interval=None, path="/metrics", **extra):
    """One static scrape job for `target` (host:port)."""
    job = {"job_name": name, "metrics_path": path, "static_configs": [{"targets": [target]}], **extra}
    if interval:
        job["scrape_interval"] = interval
        job["scrape_timeout"] = interval
    return job
