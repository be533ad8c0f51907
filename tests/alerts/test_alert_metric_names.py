"""The mixins' first defect: alerts on metric names no exporter emits. Every
metric a rule reads is served by the real exporter (its live /metrics against
the demo database and a real Celery worker; for the PostgreSQL families the
shared server cannot have, test_catalogue.CONDITIONAL_POSTGRES, against the
throwaway cluster of postgres_depth_stack where they exist) or declared below
as external, with where it comes from. Every rule loads and evaluates cleanly
in a real Prometheus scraping that exporter, and every alert's selectors and
joins find the exporter's real series and labels."""
import re
import time

import pytest

from alert_support import RULE_FILES, comparisons_as_bool, rule_groups, rules, selectors
from test_catalogue import CONDITIONAL_POSTGRES

# Metrics the rules read that other software serves, and which.
EXTERNAL = {
    "up": "Prometheus itself: the health of each scrape of the exporter and of the edge",
    "kube_deployment_status_replicas_available": "kube-state-metrics (Deployment)",
    "kube_deployment_status_replicas_unavailable": "kube-state-metrics (Deployment)",
    "kube_deployment_spec_replicas": "kube-state-metrics (Deployment)",
    "kube_pod_status_phase": "kube-state-metrics (Pod)",
    "kube_pod_container_status_waiting_reason": "kube-state-metrics (Pod)",
    "kube_pod_container_resource_limits": "kube-state-metrics (Pod)",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics (HorizontalPodAutoscaler)",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics (HorizontalPodAutoscaler)",
    "kube_horizontalpodautoscaler_spec_min_replicas": "kube-state-metrics (HorizontalPodAutoscaler)",
    "kube_cronjob_status_last_successful_time": "kube-state-metrics (CronJob; absent until a first success)",
    "kube_cronjob_created": "kube-state-metrics (CronJob)",
    "kubelet_volume_stats_used_bytes": "kubelet /metrics (volume stats of mounted PVCs)",
    "kubelet_volume_stats_capacity_bytes": "kubelet /metrics (volume stats of mounted PVCs)",
    "container_memory_working_set_bytes": "kubelet /metrics/cadvisor (cAdvisor)",
    "envoy_cluster_upstream_rq": "Envoy Gateway's Envoy proxies (servicemonitors/edge, edge=\"envoy-gateway\")",
    "envoy_cluster_upstream_rq_time_bucket": "Envoy Gateway's Envoy proxies",
    "envoy_http_local_rate_limit_enforced": "Envoy Gateway's Envoy proxies (local rate limit filter)",
    "envoy_control_plane_connected_state": "Envoy Gateway's Envoy proxies (xDS connection)",
    "envoy_listener_manager_lds_update_rejected": "Envoy Gateway's Envoy proxies (xDS listener updates)",
    "envoy_cluster_manager_cds_update_rejected": "Envoy Gateway's Envoy proxies (xDS cluster updates)",
    "nginx_ingress_controller_requests": "ingress-nginx controller (scraped with honorLabels)",
    "nginx_ingress_controller_request_duration_seconds_bucket": "ingress-nginx controller (scraped with honorLabels)",
    "nginx_ingress_controller_config_last_reload_successful": "ingress-nginx controller",
    "certmanager_certificate_expiration_timestamp_seconds": "cert-manager's controller (its chart's ServiceMonitor)",
}

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.M)


def used_metrics():
    """{metric: [rule names]} for every raw metric the rules select."""
    used = {}
    for _, rule in rules():
        for metric, _ in selectors(rule["expr"]):
            if ":" not in metric:  # recording rules are ours
                used.setdefault(metric, []).append(rule.get("alert") or rule.get("record"))
    return used


def test_every_metric_is_served_by_the_exporter_or_declared_external(demo_stack, postgres_depth_stack):
    used = used_metrics()
    ours = set(used) - set(EXTERNAL)
    conditional = ours & set(CONDITIONAL_POSTGRES)
    deadline = time.monotonic() + 30
    while True:
        served = set(SAMPLE.findall(demo_stack.metrics()))
        served_depth = set(SAMPLE.findall(postgres_depth_stack.metrics()))
        missing = sorted((ours - conditional) - served) + sorted(conditional - served_depth)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, ("rules read metrics the exporter does not serve (the conditional PostgreSQL ones: "
                         "where their condition holds) and that are not declared external: "
                         + ", ".join(f"{m} ({', '.join(used[m])})" for m in missing))
    stale = sorted(set(EXTERNAL) - set(used))
    assert not stale, f"declared external but no rule reads them: {stale}"
    clash = sorted(set(EXTERNAL) & served - {"up"})
    assert not clash, f"declared external but served by the exporter: {clash}"


def raw_metrics(expr, records, seen=()):
    """The exporter and external metrics `expr` reads, through recording rules; and whether it uses `offset`."""
    names, offset = set(), " offset " in expr
    for metric, _ in selectors(expr):
        if metric in records and metric not in seen:
            for inner in records[metric]:
                more, inner_offset = raw_metrics(inner, records, (*seen, metric))
                names |= more
                offset = offset or inner_offset
        else:
            names.add(metric)
    return names, offset


def join_checks():
    """(alert, severity, where, comparisons made bool) for every alert on the exporter's metrics alone."""
    records = {}
    for _, rule in rules("record"):
        records.setdefault(rule["record"], []).append(rule["expr"])
    checks, skipped = [], []
    for _, rule in rules("alert"):
        names, offset = raw_metrics(rule["expr"], records)
        name = f"{rule['alert']} ({rule['labels']['severity']})"
        if names & set(EXTERNAL) or offset:
            skipped.append(name)  # other exporters' series, or the past (offset): not in these Prometheus
            continue
        where = "depth" if names & set(CONDITIONAL_POSTGRES) else "demo"
        checks.append((name, where, comparisons_as_bool(rule["expr"])))
    return checks, skipped


def test_alert_selectors_and_joins_find_the_exporters_real_series(demo_prometheus, postgres_depth_prometheus,
                                                                  capsys):
    """promtool's unit tests feed series written by hand: a label the exporter
    does not serve, or a join on one, passes there and never fires in
    production. Every alert on the exporter's metrics, its thresholds turned
    into `bool` comparisons, returns series from a real Prometheus scraping
    the real exporter: the demo's, or the depth stack's for the conditional
    PostgreSQL families (slots, standbys, pg_stat_statements)."""
    checks, skipped = join_checks()
    assert any(where == "depth" for _, where, _ in checks), "no alert reads a conditional family any more?"
    proms = {"demo": demo_prometheus, "depth": postgres_depth_prometheus}
    deadline = time.monotonic() + 90  # rates and recording rules need a few evaluations
    while True:
        empty = []
        for name, where, expr in checks:
            if not proms[where].query(expr):
                empty.append(f"{name} on the {where} exporter: {expr}")
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    with capsys.disabled():
        print(f"\n[alerts] {len(checks)} alert conditions (thresholds as bool) found the exporter's series: "
              f"{sum(w == 'demo' for _, w, _ in checks)} on the demo, {sum(w == 'depth' for _, w, _ in checks)} "
              f"on the depth stack; {len(skipped)} read other exporters' series or an offset in the past, which "
              f"these Prometheus do not have (their promtool unit tests cover them)")
    assert not empty, "alert conditions that match no series of the real exporter:\n" + "\n".join(empty)


# Recording rules that must have data while the demo runs (the dashboards
# read them); the SLO ones need an edge, which the demo has not (the
# dashboards' test feeds them synthetic edge series).
DEMO_RECORDS = [
    "namespace:bookedbarber_appointments_created:rate5m",
    "namespace:bookedbarber_guest_bookings_created:rate5m",
    "namespace:bookedbarber_appointments_created:increase1h",
    "namespace:bookedbarber_booking_conversion:ratio",
    "namespace:bookedbarber_payment_success:ratio",
    "namespace:bookedbarber_payments_captured_usd:increase1h",
    "namespace_name:celery_task_succeeded:rate5m",
    "namespace_name:celery_task_failed:rate5m",
    "namespace_name:celery_task_failure:ratio_rate5m",
    "namespace_datname_schemaname_relname:pg_dead_tuples_per_autovacuum_trigger:ratio",
    "namespace_datname_schemaname_relname:pg_last_vacuum_timestamp_seconds:max",
    "namespace:pg_stat_bgwriter_checkpoints_req:per_checkpoint_timeout_rate30m",
]


@pytest.mark.parametrize("stack", ["demo", "depth"])
def test_rules_load_and_evaluate_against_the_demo(request, stack):
    prom = request.getfixturevalue("demo_prometheus" if stack == "demo" else "postgres_depth_prometheus")
    want = {g["name"] for path in RULE_FILES for g in rule_groups(path)}
    deadline = time.monotonic() + 30
    while True:
        groups = {g["name"]: g for g in prom.rule_groups()}
        unhealthy = {r["name"]: r.get("lastError") for g in groups.values() for r in g["rules"]
                     if r["health"] != "ok"}
        if (want <= set(groups) and not unhealthy) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert want <= set(groups), f"rule groups Prometheus did not load: {sorted(want - set(groups))}"
    assert not unhealthy, f"rules failing to evaluate: {unhealthy}"


@pytest.mark.parametrize("record", DEMO_RECORDS)
def test_dashboard_recording_rules_have_data(demo_prometheus, record):
    result = demo_prometheus.wait_for(record, timeout=90, what=f"{record} has data")
    assert all(r["metric"].get("namespace") == "bookedbarber" for r in result)
