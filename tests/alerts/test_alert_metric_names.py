"""The mixins' first defect: alerts on metric names no exporter emits. Every
metric a rule reads is served by the real exporter (its live /metrics against
the demo database and a real Celery worker) or declared below as external,
with where it comes from. And every rule loads and evaluates cleanly in a
real Prometheus scraping that exporter."""
import re
import time

import pytest

from alert_support import RULE_FILES, rule_groups, rules, selectors

# Metrics the rules read that other software serves, and which.
EXTERNAL = {
    "up": "Prometheus itself: the health of each scrape of the exporter",
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
    "nginx_ingress_controller_requests": "ingress-nginx controller (scraped with honorLabels)",
    "nginx_ingress_controller_request_duration_seconds_bucket": "ingress-nginx controller (scraped with honorLabels)",
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


def test_every_metric_is_served_by_the_exporter_or_declared_external(demo_stack):
    used = used_metrics()
    ours = set(used) - set(EXTERNAL)
    deadline = time.monotonic() + 30
    while True:
        served = set(SAMPLE.findall(demo_stack.metrics()))
        missing = sorted(ours - served)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, ("rules read metrics the exporter does not serve and that are not declared external: "
                         + ", ".join(f"{m} ({', '.join(used[m])})" for m in missing))
    stale = sorted(set(EXTERNAL) - set(used))
    assert not stale, f"declared external but no rule reads them: {stale}"
    clash = sorted(set(EXTERNAL) & served - {"up"})
    assert not clash, f"declared external but served by the exporter: {clash}"


# Recording rules that must have data while the demo runs (the dashboards
# read them); the SLO ones need ingress-nginx, which the demo has not.
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
]


def test_rules_load_and_evaluate_against_the_demo(demo_prometheus):
    want = {g["name"] for path in RULE_FILES for g in rule_groups(path)}
    deadline = time.monotonic() + 30
    while True:
        groups = {g["name"]: g for g in demo_prometheus.rule_groups()}
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
