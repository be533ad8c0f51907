"""Every dashboard query returns data from a real Prometheus.

- Queries on the exporter's metrics and the recording rules built on them run
  against `demo_prometheus` (the real exporter on the demo database with a
  real Celery worker, alerts/rules/*.yaml loaded), with the dashboard's
  variables resolved by their own queries as Grafana does: once with the
  defaults (All), once with the first value of each multi-value variable.
- Queries on the PostgreSQL families the shared server (so the demo) cannot
  have (test_catalogue.CONDITIONAL_POSTGRES: pg_stat_statements, replication
  slots, standbys), and those showing a setting only where it is set
  (CONDITIONAL_VALUES), run the same way against `postgres_depth_prometheus`:
  the real exporter on a throwaway cluster where they exist.
- Queries with `offset 1w` cannot have data in a fresh Prometheus: each runs
  without the offset against the demo, and as written against a Prometheus of
  our own whose history is the demo's data moved back one week
  (promtool tsdb create-blocks-from openmetrics).
- Queries on metrics of other exporters (the edge, cert-manager,
  kube-state-metrics, the kubelet) and of Prometheus itself (up, ALERTS) run
  against a Prometheus of our own scraping synthetic series of those names
  from a loopback HTTP server, with alerts/rules/*.yaml loaded so the edge's
  normalised series and the SLO recording rules are computed from them. The
  edge's series are one known traffic mix (edge_traffic.py) in the shape of
  an Envoy proxy of Envoy Gateway for one namespace and of ingress-nginx for
  another; the overview's HTTP panels must show its figures, the same for
  both.
"""
import http.server
import math
import re
import threading
import time

import pytest
import yaml

import edge_traffic
from dashboard_support import (EXTERNAL, Sources, interpolate, label_values_query, load_dashboards, panels, queries,
                               rule_files, selectors, variables)
from support.prometheus import Prometheus, PrometheusError, scrape_job
from support.tools import free_port, require, run
from test_catalogue import CONDITIONAL_POSTGRES

DEMO_NAMESPACE = "bookedbarber"  # the demo_prometheus target labels
WEEK = 7 * 24 * 3600
OFFSET = re.compile(r"\s+offset\s+1w\b")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
WARM_UP = 150  # seconds for rates, histograms and recording rules to have data
HISTORY_SECONDS = 120
VALUES_WINDOW = 60  # seconds of series that a variable's values are taken from
PLACEHOLDERS = {"__overflow__", "unknown"}


class Query:
    def __init__(self, dashboard, panel, target, defined, sources):
        self.dashboard = dashboard
        self.where = f"{dashboard}: panel {panel['id']} {panel['title']!r} query {target['refId']}"
        self.expr = target["expr"]
        self.interval = panel.get("interval", "1m")
        self.variables = defined
        placeholder = {n: ("$__all" if v.get("includeAll") else "x") for n, v in defined.items()}
        found = selectors(interpolate(self.expr, placeholder, defined))
        self.metrics = {name for name, _ in found}
        # A name no source knows (test_dashboard_files reports it) is taken
        # for the exporter's: the demo then shows whether it is served.
        if any(m in EXTERNAL or (m in sources.rules and "external" in sources.of(m)) for m in self.metrics):
            self.kind = "external"
        elif set().union(*(raw_metrics(m, sources) for m in self.metrics)) & (set(CONDITIONAL_POSTGRES)
                                                                             | set(CONDITIONAL_VALUES)):
            self.kind = "conditional"  # served only where pg_stat_statements, slots or standbys exist
        else:
            self.kind = "exporter"
        self.offset = any(o is not None for _, o in found)
        # Labels the legend shows ({{label}}): at least one series must carry them.
        self.legend_labels = tuple(sorted(set(LEGEND_LABEL.findall(target.get("legendFormat", "")))))

    def promql(self, values, drop_offset=False):
        expr = OFFSET.sub("", self.expr) if drop_offset else self.expr
        return interpolate(expr, values, self.variables, interval=self.interval)


# Served everywhere, but read by a query that shows it only in a condition
# the demo lacks and the depth stack has: run with the conditional families.
CONDITIONAL_VALUES = {
    "pg_settings_max_slot_wal_keep_size_bytes": "a line only where max_slot_wal_keep_size is set (not -1)",
}


def raw_metrics(metric, sources, seen=()):
    """The metrics `metric` is computed from: itself, or a recording rule's sources."""
    if metric not in sources.rules or metric in seen:
        return {metric}
    return set().union(*(raw_metrics(name, sources, (*seen, metric)) for expr in sources.rules[metric]
                         for name, _ in selectors(expr)))


def plan():
    sources = Sources()
    return [Query(name, p, t, variables(dash), sources)
            for name, dash in load_dashboards().items() for p, t in queries(dash)]


def series_count(prom, expr, labels=()):
    """(series, series with a number, series with all of `labels`) `expr`
    returns now; -1 series when Prometheus rejects it."""
    try:
        result = prom.query(expr)
    except PrometheusError:
        return -1, 0, 0
    numbers = [r for r in result if not math.isnan(float(r["value"][1]))]
    labelled = [r for r in result if all(label in r["metric"] for label in labels)]
    return len(result), len(numbers), len(labelled)


def check_until(prom, checks, deadline):
    """Polls until every (where, expr, legend labels) returns a series, one
    of them with the labels its legend shows, or the deadline passes;
    returns the failures and the exprs whose series are all NaN."""
    while True:
        failures, nan_only = [], []
        for where, expr, labels in checks:
            total, numbers, labelled = series_count(prom, expr, labels)
            if total <= 0:
                failures.append(f"{where}: {'rejected' if total < 0 else 'no series'}: {expr}")
            elif labelled == 0:
                failures.append(f"{where}: no series has the labels its legend shows {list(labels)}: {expr}")
            elif numbers == 0:
                nan_only.append(f"{where}: {expr}")
        if not failures or time.monotonic() > deadline:
            return failures, nan_only
        time.sleep(2)


def resolve_variables(prom, dashboards):
    """{dashboard: {variable: values}} from each variable's own label_values()
    query on the live Prometheus, in order, as Grafana resolves them (the
    variables before it at their defaults). Only series of the last minute
    count: other tests share the demo, and a value they made and dropped
    (a queue past the cap, say) has no data now."""
    resolved = {}
    for name, dash in dashboards.items():
        defined = variables(dash)
        values = {}
        for v in defined.values():
            if v["type"] != "query":
                continue
            selector, label = label_values_query(v)
            assert selector, f"{name}: variable {v['name']}: label_values() without a series selector"
            match = interpolate(selector, defaults(values, defined), defined)
            recent = prom.api("series", **{"match[]": match, "start": str(time.time() - VALUES_WINDOW)})
            found = sorted({s[label] for s in recent if label in s})
            assert found, f"{name}: variable {v['name']} ({match}) has no values in the live data"
            if v["name"] == "namespace":
                assert DEMO_NAMESPACE in found, found
                found = [DEMO_NAMESPACE]
            values[v["name"]] = found
        resolved[name] = values
    return resolved


def defaults(values, variables_):
    """What Grafana selects on a fresh load: All where offered, else the first value."""
    return {n: ("$__all" if variables_[n].get("includeAll") else vs[0]) for n, vs in values.items()}


def first_values(values):
    """The first real value of each variable: not the exporter's stand-ins for
    values past a cap or unknown (docs/metrics.md), which come and go."""
    return {n: next((v for v in vs if v not in PLACEHOLDERS), vs[0]) for n, vs in values.items()}


@pytest.fixture(scope="module")
def the_plan():
    p = plan()
    assert len(p) > 100, "fewer dashboard queries than expected: is dashboards/ empty?"
    return p


def live_checks(prom, the_plan, kind):
    """Every query of `kind`, with the variables resolved on `prom`, checked
    there after warm-up: (resolved values, checks, failures, NaN-only)."""
    dashboards = load_dashboards()
    resolved = resolve_variables(prom, {name: dashboards[name] for name in {q.dashboard for q in the_plan
                                                                            if q.kind == kind}})
    checks = []
    for q in the_plan:
        if q.kind != kind:
            continue
        values = resolved[q.dashboard]
        checks.append((q.where + (" (without offset 1w)" if q.offset else ""),
                       q.promql(defaults(values, q.variables), drop_offset=q.offset), q.legend_labels))
        if any(q.variables[n].get("multi") for n in values if n in re.findall(r"\$(\w+)", q.expr)):
            checks.append((q.where + " (one value per variable)",
                           q.promql(first_values(values), drop_offset=q.offset), q.legend_labels))
    failures, nan_only = check_until(prom, checks, time.monotonic() + WARM_UP)
    return resolved, checks, failures, nan_only


@pytest.fixture(scope="module")
def demo_checks(the_plan, demo_prometheus):
    """The demo Prometheus after warm-up, and the variable values it resolves."""
    return (demo_prometheus, *live_checks(demo_prometheus, the_plan, "exporter"))


def test_every_exporter_query_returns_data_from_the_demo(demo_checks, capsys):
    prom, resolved, checks, failures, nan_only = demo_checks
    single = sum(1 for where, *_ in checks if where.endswith("(one value per variable)"))
    variable_queries = sum(len(values) for values in resolved.values())
    with capsys.disabled():
        print(f"\n[dashboards] {len(checks) - single} queries on exporter metrics and recording rules checked "
              f"against the demo exporter with the variables at their defaults, and {single} again with one value "
              f"per multi-value variable; {len(nan_only)} answered only NaN (0/0) at that moment; "
              f"{variable_queries} variable queries found values")
    assert not failures, f"{len(failures)} of {len(checks)} queries return nothing:\n" + "\n".join(failures)


def test_conditional_postgres_queries_return_data_from_the_depth_stack(the_plan, postgres_depth_prometheus, capsys):
    conditional = [q for q in the_plan if q.kind == "conditional"]
    assert conditional, "no dashboard query reads pg_stat_statements, slots or standbys any more: update this test"
    _, checks, failures, nan_only = live_checks(postgres_depth_prometheus, the_plan, "conditional")
    names = sorted(set().union(*(q.metrics for q in conditional)) & (set(CONDITIONAL_POSTGRES)
                                                                    | set(CONDITIONAL_VALUES)))
    with capsys.disabled():
        print(f"\n[dashboards] {len(checks)} queries on conditional PostgreSQL families checked against the exporter "
              f"on a throwaway cluster with pg_stat_statements, a standby and replication slots (variables at "
              f"their defaults and one value each); {len(nan_only)} answered only NaN at that moment: "
              + ", ".join(names))
    assert not failures, f"{len(failures)} of {len(checks)} queries return nothing:\n" + "\n".join(failures)


def openmetrics_history(prom, metrics, end, seconds, shift):
    """The demo's samples of `metrics` over the last `seconds`, `shift` seconds earlier, as OpenMetrics."""
    lines = []
    for metric in sorted(metrics):
        data = prom.api("query_range", query=metric, start=str(end - seconds), end=str(end), step="1")
        assert data["result"], f"no history of {metric} in the demo Prometheus to move back"
        for series in data["result"]:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(series["metric"].items()) if k != "__name__")
            for ts, value in series["values"]:
                lines.append(f"{metric}{{{labels}}} {value} {float(ts) - shift:.3f}")
    return "\n".join(lines) + "\n# EOF\n"


def test_offset_queries_return_data_from_last_weeks_history(the_plan, demo_checks, tmp_path, capsys):
    prom, resolved, *_ = demo_checks
    offset_queries = [q for q in the_plan if q.offset]
    assert offset_queries, "no dashboard query compares with last week any more: update this test"
    assert all(q.kind == "exporter" for q in offset_queries)
    metrics = set().union(*(q.metrics for q in offset_queries))
    end = time.time()
    history = tmp_path / "history.om"
    history.write_text(openmetrics_history(prom, metrics, end, HISTORY_SECONDS, WEEK))
    workdir = tmp_path / "history-prometheus"
    run([require("promtool"), "tsdb", "create-blocks-from", "openmetrics", history, workdir / "data"])
    old = Prometheus(workdir, []).start()
    try:
        checks = [(q.where, q.promql(defaults(resolved[q.dashboard], q.variables)), q.legend_labels)
                  for q in offset_queries]
        failures, _ = check_until(old, checks, time.monotonic() + 30)
        # The history is really a week old: without the offset there is nothing.
        recent = [(w, OFFSET.sub("", e)) for w, e, _ in checks if series_count(old, OFFSET.sub("", e))[0] > 0]
    finally:
        old.stop()
    with capsys.disabled():
        print(f"\n[dashboards] {len(checks)} 'offset 1w' queries checked against the demo's data moved back one "
              f"week (and without the offset against the demo): metrics {sorted(metrics)}")
    assert not failures, "\n".join(failures)
    assert not recent, f"the backfilled history is not a week old: {recent}"


# ---- external metrics, synthetic --------------------------------------------

POD = 'namespace="bookedbarber",pod="bookedbarber-backend-5c7d9-qw8zt",container="backend"'
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def synthetic_exposition(path, elapsed):
    """Series as the edges, cert-manager, kube-state-metrics and the kubelet
    expose them, counters growing with `elapsed` seconds."""
    t = max(elapsed, 1.0)
    if path == "/envoy":
        return edge_traffic.envoy_exposition(t)
    if path == "/ingress-nginx":
        return edge_traffic.nginx_exposition(t)
    if path == "/cert-manager":
        return edge_traffic.cert_manager_exposition(time.time())
    if path == "/kube-state-metrics":
        hpa = 'namespace="bookedbarber",horizontalpodautoscaler="bookedbarber-backend"'
        deploy = 'namespace="bookedbarber",deployment="bookedbarber-backend"'
        return [
            f"kube_pod_container_status_restarts_total{{{POD},uid=\"5d1c\"}} {int(t // 60)}",
            f'kube_pod_container_resource_limits{{{POD},node="node-1",resource="memory",unit="byte"}} 536870912',
            f"kube_deployment_status_replicas_available{{{deploy}}} 2",
            f"kube_deployment_spec_replicas{{{deploy}}} 2",
            f"kube_horizontalpodautoscaler_status_current_replicas{{{hpa}}} 2",
            f"kube_horizontalpodautoscaler_spec_max_replicas{{{hpa}}} 6",
            'kube_cronjob_status_last_successful_time{namespace="bookedbarber",'
            f'cronjob="bookedbarber-postgres-backup"}} {time.time() - 3600:.0f}',
        ]
    if path == "/kubelet":
        pvc = 'namespace="bookedbarber",persistentvolumeclaim="data-bookedbarber-postgres-0"'
        cadvisor = f'{POD},image="bookedbarber/backend:1.0",name="3b1f"'
        return [
            f"container_cpu_usage_seconds_total{{{cadvisor},cpu=\"total\"}} {0.25 * t}",
            f"container_memory_working_set_bytes{{{cadvisor}}} 241172480",
            f"kubelet_volume_stats_used_bytes{{{pvc}}} 2147483648",
            f"kubelet_volume_stats_capacity_bytes{{{pvc}}} 10737418240",
        ]
    return []  # the bundle's own targets: only Prometheus' `up` matters


class SyntheticTargets(http.server.ThreadingHTTPServer):
    """Serves the synthetic series; their counters started `history` seconds ago."""

    def __init__(self, history=0):
        self.started = time.time() - history

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805 - the server is `self` here
                body = ("\n".join(synthetic_exposition(handler.path, time.time() - self.started)) + "\n").encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "text/plain; version=0.0.4")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


@pytest.fixture(scope="module")
def synthetic_prometheus(tmp_path_factory):
    server = SyntheticTargets(history=edge_traffic.HISTORY_SECONDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_address[1]}"
    workdir = tmp_path_factory.mktemp("synthetic-prometheus")
    # The edges' last ten minutes, as Prometheus would have scraped them.
    history = workdir / "edge-history.om"
    edges = [(edge_traffic.envoy_exposition, {**edge_traffic.ENVOY_TARGET, "job": "envoy", "instance": target}, False),
             (edge_traffic.nginx_exposition, {**edge_traffic.NGINX_TARGET, "job": "ingress-nginx", "instance": target},
              True)]
    history.write_text(edge_traffic.history_openmetrics(edges, server.started, time.time() - 2))
    run([require("promtool"), "tsdb", "create-blocks-from", "openmetrics", history, workdir / "data"])
    always_firing = workdir / "always-firing.yaml"
    always_firing.write_text(yaml.safe_dump({"groups": [{"name": "dashboards-test", "rules": [{
        "alert": "DashboardsTestAlwaysFiring", "expr": "vector(1)",
        "labels": {"namespace": DEMO_NAMESPACE, "severity": "info"}}]}]}))
    jobs = [scrape_job(job, target, path=f"/{job}", honor_labels=True)
            for job in ("kube-state-metrics", "kubelet")]
    # The edges and cert-manager as their monitors scrape them
    # (servicemonitors/edge; cert-manager's chart without honorLabels).
    jobs += [scrape_job(job, target, path=f"/{job}", honor_labels=honor,
                        static_configs=[{"targets": [target], "labels": labels}])
             for job, honor, labels in (("envoy", False, edge_traffic.ENVOY_TARGET),
                                        ("ingress-nginx", True, edge_traffic.NGINX_TARGET),
                                        ("cert-manager", False, edge_traffic.CERT_MANAGER_TARGET))]
    jobs += [scrape_job(job, target, path="/empty",
                        static_configs=[{"targets": [target], "labels": {"namespace": DEMO_NAMESPACE}}])
             for job in ("bookedbarber-backend", "bookedbarber-frontend", "bookedbarber-exporter")]
    prom = Prometheus(workdir, jobs, rule_files=[*rule_files(), always_firing]).start()
    try:
        yield prom
    finally:
        prom.stop()
        server.shutdown()


def test_external_metric_queries_return_data_from_synthetic_series(the_plan, synthetic_prometheus, capsys):
    external = [q for q in the_plan if q.kind == "external"]
    names = sorted(set().union(*(q.metrics for q in external)) & set(EXTERNAL))
    values = {"namespace": DEMO_NAMESPACE, "instance": "$__all"}
    checks = [(q.where, q.promql({**values, **{n: "$__all" for n, v in q.variables.items()
                                              if v.get("includeAll")}}), q.legend_labels) for q in external]
    failures, nan_only = check_until(synthetic_prometheus, checks, time.monotonic() + 60)
    with capsys.disabled():
        print(f"\n[dashboards] {len(checks)} queries on external metrics checked against synthetic series: "
              + ", ".join(f"{n} ({EXTERNAL[n]})" for n in names))
    assert not failures, "\n".join(failures)
    assert not nan_only, "queries answering only NaN from the synthetic series:\n" + "\n".join(nan_only)
    sources = Sources()
    read = set().union(*(raw_metrics(m, sources) for q in external for m in q.metrics))
    unused = set(EXTERNAL) - read
    assert not unused, f"EXTERNAL lists metrics no dashboard reads any more: {sorted(unused)}"


def overview_panel_values(prom, namespace):
    """{panel title: {legend: value}} of the overview's panels on the edge, as
    Grafana would show their latest values for `namespace`."""
    dash = load_dashboards()["bookedbarber-overview.json"]
    defined = variables(dash)
    wanted = set(edge_traffic.EXPECTED) | set(edge_traffic.EXPECTED_ABOUT)
    out = {}
    for p in panels(dash):
        if p.get("title") not in wanted:
            continue
        shown = {}
        for t in p["targets"]:
            expr = interpolate(t["expr"], {"namespace": namespace, "instance": "$__all"}, defined)
            for r in prom.query(expr):
                legend = LEGEND_LABEL.sub(lambda m: r["metric"].get(m.group(1), ""), t.get("legendFormat", ""))
                shown[legend] = float(r["value"][1])
        out[p["title"]] = shown
    return out


def close(a, b, tolerance=1e-3):
    """Same legends, same values within 0.1 % (a counter is read a few
    milliseconds off the scrape's timestamp)."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=tolerance, abs_tol=tolerance) for k in a)


def wrong_panel_values(prom):
    """What the overview's edge panels show otherwise than edge_traffic expects, for either namespace."""
    wrong = []
    for ns in (edge_traffic.ENVOY_NAMESPACE, edge_traffic.NGINX_NAMESPACE):
        values = overview_panel_values(prom, ns)
        for title, expected in edge_traffic.EXPECTED.items():
            if not close(values.get(title, {}), expected):
                wrong.append(f"{ns}: {title!r} shows {values.get(title)}, expected {expected}")
        for title, (expected, tolerance) in edge_traffic.EXPECTED_ABOUT.items():
            got = list(values.get(title, {}).values())
            if len(got) != 1 or abs(got[0] - expected) > tolerance:
                wrong.append(f"{ns}: {title!r} shows {got}, expected {expected} ± {tolerance}")
    return wrong


def test_the_overview_shows_the_same_edge_traffic_from_either_edge(synthetic_prometheus, capsys):
    """The overview's SLO, golden-signal and edge-health panels read only the
    normalised series: the same traffic, through an Envoy Gateway proxy or
    through ingress-nginx, shows the same figures, and the right ones (the
    429s apart, not as errors; the latency's percentiles; the 2% of 5xx)."""
    deadline = time.monotonic() + 90  # the recording rules' chain needs a few evaluations
    while (wrong := wrong_panel_values(synthetic_prometheus)) and time.monotonic() < deadline:
        time.sleep(2)
    with capsys.disabled():
        print(f"\n[dashboards] {len(edge_traffic.EXPECTED) + len(edge_traffic.EXPECTED_ABOUT)} overview panels show "
              "the same known edge traffic from an Envoy Gateway proxy and from ingress-nginx")
    assert not wrong, "\n".join(wrong)
