"""End to end with real processes: a real Prometheus loads the rules and
scrapes the real exporter, whose Celery broker is a throwaway Redis; a real
Alertmanager routes to a webhook receiver run here. Stopping Redis must
deliver BookedBarberRedisDown to the pager receiver with its labels,
annotations and runbook link, and starting it again its resolution.

Waits are shortened by the documented override (docs/alerts.md, "Testing"):
copies of the rule files with every `for:` at 3s, a copy of the Alertmanager
configuration with webhook receivers and 1s group timings. The shipped files
are untouched, and the copies are checked to differ in nothing else."""
import yaml

from alert_support import (ALERTS, EXPORTER_JOB, RULE_FILES, RUNBOOK_BASE_URL, Alertmanager, WebhookReceiver,
                           alertmanager_for_tests, shortened_rules, without_for)
from support.prometheus import Prometheus, scrape_job
from support.services import ThrowawayRedis, exporter

NAMESPACE = "bookedbarber-e2e"
TARGET_LABELS = {"namespace": NAMESPACE, "service": "bookedbarber-exporter",
                 "pod": "bookedbarber-exporter-0", "container": "exporter"}


def shortened_copies(directory):
    directory.mkdir()
    copies = []
    for path in RULE_FILES:
        text = path.read_text()
        short = shortened_rules(text)
        assert without_for(short) == without_for(text), f"the override changed more than for: in {path.name}"
        assert short != text or "for:" not in text
        copy = directory / path.name
        copy.write_text(short)
        copies.append(copy)
    return copies


def is_redis_down(status):
    def check(payload):
        return (payload["status"] == status
                and payload["groupLabels"] == {"alertname": "BookedBarberRedisDown", "namespace": NAMESPACE})
    return check


def test_redis_down_reaches_the_pager_and_resolves(tmp_path, exporter_bin):
    redis = ThrowawayRedis(tmp_path / "redis").start()
    processes = [redis]
    try:
        exp = exporter(exporter_bin, tmp_path, redis_url=redis.url(0),
                       args=["--redis.interval", "1s", "--redis.timeout", "1s", "--celery.interval", "1s"])
        processes.append(exp)
        exp.wait_http(f"{exp.url}/readyz", timeout=60)
        with WebhookReceiver() as receiver:
            am = Alertmanager(tmp_path / "alertmanager", alertmanager_for_tests(receiver.url)).start()
            processes.append(am)
            prom = Prometheus(
                tmp_path / "prometheus",
                [scrape_job(EXPORTER_JOB, f"127.0.0.1:{exp.port}",
                            static_configs=[{"targets": [f"127.0.0.1:{exp.port}"], "labels": TARGET_LABELS}])],
                rule_files=shortened_copies(tmp_path / "rules"),
                alertmanagers=[f"127.0.0.1:{am.port}"],
                extra_args=["--rules.alert.resend-delay=1s"],
            ).start()
            processes.append(prom)
            prom.wait_for(f'redis_up{{job="{EXPORTER_JOB}"}} == 1', timeout=30, what="Redis seen up")

            redis.stop()
            firing = receiver.wait_for(is_redis_down("firing"), timeout=60,
                                       what="for BookedBarberRedisDown firing")
            assert firing["receiver"] == "pager"
            [alert] = firing["alerts"]
            labels, annotations = alert["labels"], alert["annotations"]
            assert labels == {"alertname": "BookedBarberRedisDown", "severity": "critical", "area": "redis",
                              "job": EXPORTER_JOB, "instance": f"127.0.0.1:{exp.port}", **TARGET_LABELS}
            assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}BookedBarberRedisDown.md"
            assert (ALERTS / "runbooks/BookedBarberRedisDown.md").is_file()
            assert NAMESPACE in annotations["summary"]
            assert f"127.0.0.1:{exp.port}" in annotations["description"]
            shipped = next(r for g in yaml.safe_load((ALERTS / "rules/redis.yaml").read_text())["groups"]
                           for r in g["rules"] if r.get("alert") == "BookedBarberRedisDown")
            assert set(annotations) == set(shipped["annotations"])

            redis.start()  # same port: the exporter reconnects
            resolved = receiver.wait_for(is_redis_down("resolved"), timeout=60,
                                         what="for BookedBarberRedisDown resolved")
            assert resolved["receiver"] == "pager"
            assert resolved["alerts"][0]["labels"]["alertname"] == "BookedBarberRedisDown"
            assert resolved["alerts"][0]["status"] == "resolved"
    finally:
        for p in reversed(processes):
            p.stop()
