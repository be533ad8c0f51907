"""Reading the generated dashboards the way Grafana does: their panels,
Prometheus queries and template variables, and Grafana's interpolation of
variables into PromQL; plus where each metric a query reads comes from."""
import json
import re
from pathlib import Path

import promql_parser
import yaml

from support.tools import ROOT
from test_catalogue import catalogue

DASHBOARD_DIR = ROOT / "dashboards"
RULES_DIR = ROOT / "alerts" / "rules"
RUNBOOK_DIR = ROOT / "alerts" / "runbooks"
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

# Metrics the dashboards read that the bundle's exporter does not serve, by
# who serves them in a cluster. The end-to-end test proves their queries
# against synthetic series of exactly these names.
EXTERNAL = {
    # The edge, which panels read through the normalised recording rules
    # (alerts/rules/edge-*.yaml) but for its own health.
    "envoy_cluster_upstream_rq": "Envoy Gateway's proxies",
    "envoy_cluster_upstream_rq_time_bucket": "Envoy Gateway's proxies",
    "envoy_http_local_rate_limit_enforced": "Envoy Gateway's proxies",
    "envoy_control_plane_connected_state": "Envoy Gateway's proxies",
    "nginx_ingress_controller_requests": "ingress-nginx",
    "nginx_ingress_controller_request_duration_seconds_bucket": "ingress-nginx",
    "nginx_ingress_controller_config_last_reload_successful": "ingress-nginx",
    "certmanager_certificate_expiration_timestamp_seconds": "cert-manager",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_deployment_spec_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
    "kube_cronjob_status_last_successful_time": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "kubelet (cAdvisor)",
    "container_memory_working_set_bytes": "kubelet (cAdvisor)",
    "kubelet_volume_stats_used_bytes": "kubelet",
    "kubelet_volume_stats_capacity_bytes": "kubelet",
    "up": "Prometheus (scrape health)",
    "ALERTS": "Prometheus (alerting rules)",
}

# Grafana's variable syntaxes: $var, ${var}, ${var:format}, [[var]].
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]"
                      r"|\$([A-Za-z_][A-Za-z0-9_]*)")
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                     "__auto"}
LABEL_VALUES = re.compile(r"\s*label_values\((?:(.*),)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", re.S)


def load_dashboards() -> dict:
    """{file name: dashboard} of every JSON file in dashboards/."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dash):
    """Every panel, rows included, nested ones too."""
    def walk(items):
        for p in items or []:
            yield p
            yield from walk(p.get("panels"))
    return list(walk(dash.get("panels")))


def queries(dash):
    """(panel, target) for every Prometheus query of the dashboard."""
    return [(p, t) for p in panels(dash) for t in p.get("targets", []) if "expr" in t]


def variables(dash) -> dict:
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def used_variables(text: str) -> set:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}


def label_values_query(variable):
    """(series selector or None, label) of a label_values() variable query."""
    m = LABEL_VALUES.fullmatch(variable["query"])
    assert m, f"variable {variable['name']}: only label_values() queries are supported: {variable['query']!r}"
    return (m.group(1).strip() if m.group(1) else None), m.group(2)


def regex_escape(value: str) -> str:
    """Grafana's Prometheus datasource escaping of a multi-value variable's value."""
    value = value.replace("\\", "\\" * 4)
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(expr: str, values: dict, variables_: dict, interval="1m", rate_interval="1m",
                range_="21600s") -> str:
    """`expr` as Grafana sends it to Prometheus: values maps each variable to
    its selected value(s) ("$__all" for All); `range_` is the dashboard's
    time range ($__range, 6 hours by default)."""
    def replace(m):
        name = next(g for g in m.groups() if g)
        if name == "__rate_interval":
            return rate_interval
        if name == "__interval":
            return interval
        if name == "__range":
            return range_
        if name not in variables_:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        v = variables_[name]
        if v["type"] == "constant":
            return v["query"]
        if v["type"] == "datasource":
            raise KeyError(f"the datasource variable ${name} appears in a query: {expr!r}")
        selected = values[name]
        if not (v.get("multi") or v.get("includeAll")):
            return selected
        if selected == "$__all":
            return v["allValue"]
        selected = [selected] if isinstance(selected, str) else selected
        escaped = [regex_escape(s) for s in selected]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return VARIABLE.sub(replace, expr)


def selectors(expr: str):
    """(metric name, offset or None) of every vector selector in a PromQL expression."""
    found = []
    promql_parser.walk(promql_parser.parse(expr), lambda n: found.append((n.name, n.offset)) if isinstance(
        n, promql_parser.VectorSelector) else None)
    return found


def rule_files():
    return sorted(RULES_DIR.glob("*.yaml"))


def recording_rules() -> dict:
    """{recorded name: [its expressions]} from alerts/rules/*.yaml."""
    out = {}
    for f in rule_files():
        for group in yaml.safe_load(f.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    out.setdefault(rule["record"], []).append(rule["expr"])
    return out


def alert_names() -> set:
    return {rule["alert"] for f in rule_files() for group in yaml.safe_load(f.read_text()).get("groups", [])
            for rule in group.get("rules", []) if "alert" in rule}


class Sources:
    """Where a metric comes from: the exporter (docs/metrics.md), an external
    exporter (EXTERNAL), or a recording rule built on either."""

    def __init__(self):
        self.exporter = set(catalogue())
        for family in list(self.exporter):  # histograms are queried by their series
            self.exporter |= {family + s for s in ("_bucket", "_count", "_sum")}
        self.rules = recording_rules()

    def of(self, metric, seen=()) -> set:
        """{"exporter"} / {"external"} / both; KeyError for an unknown metric."""
        if metric in self.exporter:
            return {"exporter"}
        if metric in EXTERNAL:
            return {"external"}
        if metric in self.rules and metric not in seen:
            return set().union(*(self.of(name, (*seen, metric)) for expr in self.rules[metric]
                                 for name, _ in selectors(expr)))
        raise KeyError(metric)
