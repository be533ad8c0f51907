"""Alertmanager routing for the on-call: amtool accepts the plain file and
routes each severity to the intended receiver, the AlertmanagerConfig says the
same as the plain file, Kustomize renders the resources, and a real
Alertmanager applies every inhibition."""
import copy
import json
import time
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest
import yaml

from alert_support import (ALERTS, PLAIN_ALERTMANAGER, Alertmanager, alertmanager_for_tests,
                           routing_without_timing)
from support.tools import ROOT, VENV_BIN, require, run

SCHEMAS = ROOT / "tests/schemas/json"
# AlertmanagerConfig: an excerpt of the v0.93.1 CRD (its header says what is
# kept), converted by the same crd2jsonschema.py as the other schemas.
AMC_CRD_EXCERPT = ROOT / "tests/schemas/crds/monitoring.coreos.com_alertmanagerconfigs.excerpt.yaml"
AMC_SCHEMA = "alertmanagerconfig-monitoring-v1alpha1.json"
SECRET = "bookedbarber-alertmanager"
SECRETS_DIR = f"/etc/alertmanager/secrets/{SECRET}/"


def plain():
    return yaml.safe_load(PLAIN_ALERTMANAGER.read_text())


def test_amtool_accepts_the_plain_configuration():
    out = run([require("amtool"), "check-config", PLAIN_ALERTMANAGER]).stdout
    assert "SUCCESS" in out and "3 receivers" in out


@pytest.mark.parametrize("labels,receiver", [
    ({"severity": "critical"}, "pager"),
    ({"severity": "warning"}, "chat"),
    ({"severity": "info"}, "null"),
    ({}, "chat"),  # no severity: still reaches a human
], ids=["critical-pages", "warning-chat", "info-nowhere", "unlabelled-chat"])
def test_each_severity_reaches_its_receiver(labels, receiver):
    labels = {"alertname": "BookedBarberRedisDown", "namespace": "bookedbarber", **labels}
    proc = run([require("amtool"), "config", "routes", "test", f"--config.file={PLAIN_ALERTMANAGER}",
                f"--verify.receivers={receiver}", *[f"{k}={v}" for k, v in labels.items()]], check=False)
    assert proc.returncode == 0, f"{labels} routed to {proc.stdout.strip()}, expected {receiver}\n{proc.stderr}"


def test_receivers_read_their_secrets_from_files():
    """No key or URL in the repository: every secret field is a *_file under
    the mounted Secret."""
    for receiver in plain()["receivers"]:
        for kind, configs in receiver.items():
            if kind == "name":
                continue
            for config in configs:
                secret_fields = {k: v for k, v in config.items() if k.endswith("_file")}
                assert secret_fields, f"{receiver['name']}.{kind} reads no secret file"
                assert all(v.startswith(SECRETS_DIR) for v in secret_fields.values())
                assert not {"routing_key", "service_key", "api_url", "url"} & set(config)


# The Prometheus Operator's translation, written independently of
# alerts/generate.py, to check that the generated resource says the same.
ROUTE_FIELDS = {"receiver": "receiver", "groupBy": "group_by", "groupWait": "group_wait",
                "groupInterval": "group_interval", "repeatInterval": "repeat_interval", "continue": "continue"}
CONFIG_FIELDS = {"sendResolved": "send_resolved", "title": "title", "text": "text", "channel": "channel",
                 "severity": "severity", "description": "description"}
SECRET_FIELDS = {"routingKey": "routing_key_file", "apiURL": "api_url_file"}
KINDS = {"pagerdutyConfigs": "pagerduty_configs", "slackConfigs": "slack_configs"}


def matcher_strings(matchers):
    return [f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"' for m in matchers]


def as_plain_route(route):
    out = {ROUTE_FIELDS[k]: v for k, v in route.items() if k in ROUTE_FIELDS}
    if route.get("matchers"):
        out["matchers"] = matcher_strings(route["matchers"])
    if route.get("routes"):
        out["routes"] = [as_plain_route(r) for r in route["routes"]]
    return out


def as_plain_receiver(receiver):
    out = {"name": receiver["name"]}
    for kind, configs in receiver.items():
        if kind == "name":
            continue
        out[KINDS[kind]] = [
            {**{SECRET_FIELDS[k]: f"/etc/alertmanager/secrets/{v['name']}/{v['key']}"
                for k, v in c.items() if k in SECRET_FIELDS},
             **{CONFIG_FIELDS[k]: v for k, v in c.items() if k in CONFIG_FIELDS}}
            for c in configs]
    return out


def test_alertmanagerconfig_says_what_the_plain_file_says():
    resource = yaml.safe_load((ALERTS / "alertmanager/alertmanagerconfig.yaml").read_text())
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig")
    assert "namespace" not in resource["metadata"], "the overlay sets the namespace"
    spec = resource["spec"]
    route = as_plain_route(spec["route"])
    # Its one addition: only BookedBarber's alerts take this route.
    assert route.pop("matchers") == ['alertname=~"BookedBarber.+"']
    expected = plain()
    assert route == expected["route"]
    assert [{"source_matchers": matcher_strings(r["sourceMatch"]),
             "target_matchers": matcher_strings(r["targetMatch"]), "equal": r["equal"]}
            for r in spec["inhibitRules"]] == expected["inhibit_rules"]
    assert [as_plain_receiver(r) for r in spec["receivers"]] == expected["receivers"]
    names = {r["name"] for r in spec["receivers"]}

    def receivers_of(r):
        yield r["receiver"]
        for child in r.get("routes", []):
            yield from receivers_of(child)
    assert set(receivers_of(spec["route"])) <= names


def test_kustomize_renders_labelled_valid_resources():
    """alerts/ (each environment's) and alerts/cluster/ (once per cluster) render
    every area's PrometheusRule once between them, and the AlertmanagerConfig."""
    rendered = [d for folder in (ALERTS, ALERTS / "cluster")
                for d in yaml.safe_load_all(run([require("kubectl"), "kustomize", folder]).stdout)]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    areas = sorted(p.stem for p in (ALERTS / "rules").glob("*.yaml"))
    assert kinds == sorted([("AlertmanagerConfig", "bookedbarber")]
                           + [("PrometheusRule", f"bookedbarber-{a}") for a in areas])
    validators = {"PrometheusRule": validator("prometheusrule-monitoring-v1.json"),
                  "AlertmanagerConfig": validator(AMC_SCHEMA)}
    for doc in rendered:
        labels = doc["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack"
        assert labels["app.kubernetes.io/part-of"] == "bookedbarber"
        assert "namespace" not in doc["metadata"]
        errors = schema_errors(validators[doc["kind"]], doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"


def validator(name):
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def schema_errors(v, doc):
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(doc)]


def test_alertmanagerconfig_schema_is_the_converted_crd_excerpt(tmp_path):
    run([VENV_BIN / "python", ROOT / "tests/schemas/crd2jsonschema.py", tmp_path, AMC_CRD_EXCERPT])
    assert (tmp_path / AMC_SCHEMA).read_bytes() == (SCHEMAS / AMC_SCHEMA).read_bytes()


def test_alertmanagerconfig_schema_catches_a_misspelt_field():
    """The strict schema is not a rubber stamp."""
    doc = yaml.safe_load((ALERTS / "alertmanager/alertmanagerconfig.yaml").read_text())
    v = validator(AMC_SCHEMA)
    assert not schema_errors(v, doc)
    broken = copy.deepcopy(doc)
    pager = next(r for r in broken["spec"]["receivers"] if r["name"] == "pager")
    pager["pagerdutyConfigs"][0]["routingkey"] = pager["pagerdutyConfigs"][0].pop("routingKey")
    assert any("routingkey" in e for e in schema_errors(v, broken))


def test_test_override_keeps_routing_and_inhibitions():
    shipped = plain()
    override = alertmanager_for_tests("http://127.0.0.1:1/alerts", shipped)
    assert routing_without_timing(override) == routing_without_timing(shipped)
    assert [r["name"] for r in override["receivers"]] == [r["name"] for r in shipped["receivers"]]


# --- inhibitions in a real Alertmanager ---------------------------------------

def alert(name, severity, namespace, **labels):
    area = {"Postgres": "postgres", "Redis": "redis", "Celery": "celery", "Exporter": "exporter",
            "Bookings": "business", "Http": "slo", "ErrorBudget": "slo"}
    kind = next(v for k, v in area.items() if name.startswith(f"BookedBarber{k}"))
    now = datetime.now(timezone.utc)
    return {"labels": {"alertname": name, "severity": severity, "namespace": namespace, "area": kind, **labels},
            "annotations": {"summary": name},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}


# (alert, inhibited?) per namespace: each namespace is one scenario.
SCENARIOS = {
    "pg-down": [
        (alert("BookedBarberPostgresDown", "critical", "pg-down", instance="e:10188"), False),
        (alert("BookedBarberPostgresConnectionsNearLimit", "warning", "pg-down", instance="e:10188"), True),
        (alert("BookedBarberBookingsDrop", "critical", "pg-down"), True),
        (alert("BookedBarberExporterCollectorFailing", "warning", "pg-down", collector="business_payments_recent"),
         True),
        (alert("BookedBarberExporterCollectorFailing", "warning", "pg-down", collector="postgres_statements"),
         True),
        (alert("BookedBarberExporterCollectorFailing", "warning", "pg-down", collector="postgres_wal"), True),
        (alert("BookedBarberPostgresReplicationSlotRetainingWal", "critical", "pg-down", slot_name="standby1"), True),
        (alert("BookedBarberExporterCollectorFailing", "warning", "pg-down", collector="redis"), False),
        (alert("BookedBarberRedisRejectedConnections", "warning", "pg-down"), False),
    ],
    "pg-fine": [  # PostgreSQL down elsewhere does not mute this namespace
        (alert("BookedBarberPostgresDeadlocks", "warning", "pg-fine", datname="bookedbarber"), False),
    ],
    "redis-down": [
        (alert("BookedBarberRedisDown", "critical", "redis-down"), False),
        (alert("BookedBarberCeleryQueueBacklog", "warning", "redis-down", queue="default"), True),
        (alert("BookedBarberCeleryQueueNoWorker", "critical", "redis-down", queue="default"), True),
        (alert("BookedBarberExporterCollectorFailing", "warning", "redis-down", collector="celery_queues"), True),
        (alert("BookedBarberPostgresDeadlocks", "warning", "redis-down", datname="bookedbarber"), False),
    ],
    "exporter-down": [
        (alert("BookedBarberExporterDown", "critical", "exporter-down", instance="e:10188"), False),
        (alert("BookedBarberCeleryEventStreamDown", "warning", "exporter-down", instance="e:10188"), True),
        (alert("BookedBarberHttpLatencyHigh", "warning", "exporter-down"), False),
    ],
    "critical-over-warning": [
        (alert("BookedBarberPostgresConnectionsNearLimit", "critical", "critical-over-warning", instance="a"), False),
        (alert("BookedBarberPostgresConnectionsNearLimit", "warning", "critical-over-warning", instance="a"), True),
        # The same alert on another object, and another alert: not muted.
        (alert("BookedBarberPostgresConnectionsNearLimit", "warning", "critical-over-warning", instance="b"), False),
        (alert("BookedBarberPostgresDeadlocks", "warning", "critical-over-warning", instance="a"), False),
        # Per replication slot: an abandoned slot's page does not mute another slot's warning.
        (alert("BookedBarberPostgresReplicationSlotRetainingWal", "critical", "critical-over-warning",
               slot_name="old_backup", slot_type="physical"), False),
        (alert("BookedBarberPostgresReplicationSlotRetainingWal", "warning", "critical-over-warning",
               slot_name="old_backup", slot_type="physical"), True),
        (alert("BookedBarberPostgresReplicationSlotRetainingWal", "warning", "critical-over-warning",
               slot_name="standby1", slot_type="physical"), False),
    ],
    "errors-over-budget": [
        (alert("BookedBarberHttpErrorsHigh", "critical", "errors-over-budget"), False),
        (alert("BookedBarberErrorBudgetBurn", "critical", "errors-over-budget", long_window="1h",
               short_window="5m"), True),
        (alert("BookedBarberErrorBudgetBurn", "warning", "errors-over-budget", long_window="1d",
               short_window="2h"), True),
    ],
}


def test_inhibitions_hold_in_a_real_alertmanager(tmp_path):
    config = alertmanager_for_tests("http://127.0.0.1:9/unused")
    am = Alertmanager(tmp_path / "alertmanager", config).start()
    try:
        posted = [a for scenario in SCENARIOS.values() for a, _ in scenario]
        am.post_alerts(posted)
        want = {json.dumps(a["labels"], sort_keys=True): inhibited
                for scenario in SCENARIOS.values() for a, inhibited in scenario}
        deadline = time.monotonic() + 20
        while True:
            got = {json.dumps(a["labels"], sort_keys=True): bool(a["status"]["inhibitedBy"]) for a in am.alerts()}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        wrong = {k: f"inhibited={got.get(k)}, expected {v}" for k, v in want.items() if got.get(k) != v}
        assert not wrong, json.dumps(wrong, indent=1)
    finally:
        am.stop()
