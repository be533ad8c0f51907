"""The committed dashboards: generated from their code, valid against
Grafana's dashboard schema, PromQL that Prometheus parses, variables that
exist, runbook links that resolve, and ConfigMaps Kustomize makes from them."""
import json
import re

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from dashboard_support import (DASHBOARD_DIR, RUNBOOK_DIR, SCHEMAS, BUILTIN_VARIABLES, Sources, alert_names,
                               interpolate, label_values_query, load_dashboards, panels, queries, selectors,
                               used_variables, variables)
from support.tools import ROOT, require, run

# File name -> uid. Links and bookmarks point at uids: changing one breaks them.
UIDS = {
    "bookedbarber-overview.json": "bookedbarber-overview",
    "bookedbarber-business.json": "bookedbarber-business",
    "bookedbarber-postgresql.json": "bookedbarber-postgresql",
    "bookedbarber-redis.json": "bookedbarber-redis",
    "bookedbarber-celery.json": "bookedbarber-celery",
    "bookedbarber-exporter.json": "bookedbarber-exporter",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUNBOOK_BASE = "https://github.com/bookedbarber/bookedbarber-monitoring/blob/main/alerts/runbooks/"
# Panel types whose options schema tests/schemas/grafana/ holds.
PANEL_SCHEMAS = ("timeseries", "stat", "bargauge", "table", "heatmap")
GRID_WIDTH = 24

DASHBOARDS = load_dashboards()


def each_dashboard():
    return pytest.mark.parametrize("name", sorted(DASHBOARDS))


def schema(name):
    return json.loads((SCHEMAS / "grafana" / name).read_text())


def validator(schema_doc, definition=None):
    if definition:
        schema_doc = {**schema_doc, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema_doc)


def errors(v, doc, ignore_required=False):
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in v.iter_errors(doc)
            if not (ignore_required and e.validator == "required")]


def test_regenerating_gives_the_committed_files(tmp_path):
    run([ROOT / ".venv/bin/python", DASHBOARD_DIR / "generate.py", "--out", tmp_path])
    generated = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_bytes() for p in DASHBOARD_DIR.glob("*.json")}
    assert sorted(generated) == sorted(committed), "generate.py writes other files than dashboards/ holds"
    stale = sorted(n for n in generated if generated[n] != committed[n])
    assert not stale, (f"{stale} differ from what dashboards/generate.py makes: run "
                       "`.venv/bin/python dashboards/generate.py` and commit the result")


def test_one_file_per_dashboard_with_stable_uids():
    assert {n: d.get("uid") for n, d in DASHBOARDS.items()} == UIDS
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(titles)) == len(titles), f"duplicate titles: {titles}"


@each_dashboard()
def test_dashboard_validates_against_the_grafana_schema(name):
    dash = DASHBOARDS[name]
    dashboard_schema = schema("dashboard.jsonschema.json")
    # Panels are checked one by one against Panel or RowPanel: the schema's
    # oneOf over both reports a normal panel's errors against the row
    # schema (tests/schemas/README of the shared schemas).
    problems = errors(validator(dashboard_schema), {**dash, "panels": []})
    for p in panels(dash):
        kind = "RowPanel" if p["type"] == "row" else "Panel"
        problems += [f"panel {p.get('id')} {p.get('title')!r}: {e}"
                     for e in errors(validator(dashboard_schema, kind), p)]
    target_v = validator(schema("prometheus.jsonschema.json"))
    for p, t in queries(dash):
        problems += [f"panel {p['id']} target {t.get('refId')}: {e}" for e in errors(target_v, t)]
    assert not problems, "\n".join(problems)
    assert dash["schemaVersion"] >= 39


@each_dashboard()
def test_panel_options_use_only_known_keys(name):
    """Options and custom field config against the panel plugins' schemas. They
    require fields Grafana fills with defaults, so only misspelt or misplaced
    keys and wrong types count."""
    problems = []
    for p in panels(DASHBOARDS[name]):
        if p["type"] == "row":
            continue
        assert p["type"] in PANEL_SCHEMAS, f"no options schema for panel type {p['type']}"
        plugin = schema(f"{p['type']}.jsonschema.json")
        problems += [f"panel {p['id']} {p['title']!r} options: {e}"
                     for e in errors(validator(plugin, "Options"), p.get("options", {}), ignore_required=True)]
        custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            problems += [f"panel {p['id']} {p['title']!r} fieldConfig.defaults.custom: {e}"
                         for e in errors(validator(plugin, "FieldConfig"), custom, ignore_required=True)]
    assert not problems, "\n".join(problems)


@each_dashboard()
def test_panel_ids_are_unique_and_panels_do_not_overlap(name):
    ps = panels(DASHBOARDS[name])
    ids = [p.get("id") for p in ps]
    assert all(isinstance(i, int) and i > 0 for i in ids), f"panels without a positive id: {ids}"
    assert len(set(ids)) == len(ids), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    cells = {}
    for p in ps:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= GRID_WIDTH, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r} at {g}"
                cells[(x, y)] = p["title"]


@each_dashboard()
def test_no_hard_coded_datasource(name):
    """Every panel and query reads the Prometheus of the `datasource` variable."""
    dash = DASHBOARDS[name]
    ds = variables(dash).get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"
    for p in panels(dash):
        if p["type"] != "row":
            assert p.get("datasource") == DATASOURCE, (p["title"], p.get("datasource"))
        for t in p.get("targets", []):
            assert t.get("datasource") == DATASOURCE, (p["title"], t)
    for v in variables(dash).values():
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE, v["name"]
    # Anywhere else: only Grafana's own built-in annotation datasource.
    uids = set(re.findall(r'"uid": "([^"]*)"', json.dumps(dash)))
    assert uids <= {"${datasource}", "-- Grafana --", dash["uid"]}, uids


@each_dashboard()
def test_every_variable_used_is_defined_and_every_defined_one_used(name):
    dash = DASHBOARDS[name]
    defined = variables(dash)
    assert {"datasource", "namespace", "job", "instance"} <= set(defined)
    texts = [t["expr"] for _, t in queries(dash)] + [v["query"] for v in defined.values() if v["type"] == "query"]
    texts += [p.get("title", "") for p in panels(dash)]
    used = set().union(*map(used_variables, texts))
    undefined = used - set(defined) - BUILTIN_VARIABLES
    assert not undefined, f"variables used but not defined: {sorted(undefined)}"
    unused = set(defined) - used - {"datasource"}
    assert not unused, f"variables defined but never used: {sorted(unused)}"
    # A variable's query may only use the variables defined before it,
    # which Grafana has resolved by then.
    order = list(defined)
    for v in defined.values():
        if v["type"] == "query":
            later = used_variables(v["query"]) - set(order[:order.index(v["name"])])
            assert not later, f"variable {v['name']} uses {later}, defined after it"


def all_exprs():
    """(where, interpolated expression) of every panel query and variable query."""
    out = []
    for name, dash in DASHBOARDS.items():
        defined = variables(dash)
        values = {n: ("$__all" if v.get("includeAll") else "x") for n, v in defined.items()}
        for p, t in queries(dash):
            out.append((f"{name} panel {p['id']} {p['title']!r} {t['refId']}",
                        interpolate(t["expr"], values, defined, interval=p.get("interval", "1m"))))
        for v in defined.values():
            if v["type"] == "query":
                selector, _ = label_values_query(v)
                if selector:
                    out.append((f"{name} variable {v['name']}", interpolate(selector, values, defined)))
    return out


def test_every_expression_parses():
    """PromQL with the variables filled in, parsed by promql-parser (the
    Prometheus 3 grammar) and by promtool (the Prometheus that runs them here)."""
    exprs = all_exprs()
    assert len(exprs) > 100
    problems = []
    for where, expr in exprs:
        try:
            promql_parser.parse(expr)
        except ValueError as e:
            problems.append(f"{where}: {e}: {expr}")
    assert not problems, "\n".join(problems)


def test_promtool_parses_every_expression(tmp_path):
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": expr} for i, (_, expr) in enumerate(all_exprs())]
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, width=1000))
    out = run([require("promtool"), "check", "rules", path]).stdout
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_every_metric_comes_from_the_exporter_a_recording_rule_or_a_known_exporter():
    """Catches misspelt metric names and recording rules the alerts do not define."""
    sources = Sources()
    unknown = set()
    for where, expr in all_exprs():
        for metric, _ in selectors(expr):
            try:
                sources.of(metric)
            except KeyError:
                unknown.add((metric, where.split(" panel")[0]))
    assert not unknown, ("metrics neither in docs/metrics.md, nor recorded by alerts/rules/*.yaml, nor in "
                         f"EXTERNAL (dashboard_support.py): {sorted(unknown)}")


@each_dashboard()
def test_panels_explain_themselves(name):
    """Title, a description a stranger can read, a unit, thresholds (where a
    value can be good or bad: not tables and heatmaps), legends."""
    for p in panels(DASHBOARDS[name]):
        if p["type"] == "row":
            assert p.get("title")
            continue
        assert p.get("title") and len(p.get("description", "")) >= 40, p.get("title")
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit") or p.get("options", {}).get("yAxis", {}).get("unit")
        assert unit, f"panel {p['title']!r} has no unit"
        if p["type"] not in ("heatmap", "table"):
            assert defaults.get("thresholds", {}).get("steps"), f"panel {p['title']!r} has no thresholds"
        for t in p["targets"]:
            if len(p["targets"]) > 1 and p["type"] in ("timeseries", "stat"):
                assert t.get("legendFormat"), f"panel {p['title']!r} query {t['refId']} has no legend"


def runbook_links():
    return sorted({(name, p["title"], link["url"]) for name, dash in DASHBOARDS.items() for p in panels(dash)
                   for link in p.get("links", [])})


def test_runbook_links_point_at_existing_runbooks_of_existing_alerts():
    links = runbook_links()
    assert len(links) > 30
    alerts = alert_names()
    problems = []
    for name, title, url in links:
        assert url.startswith(RUNBOOK_BASE) and url.endswith(".md"), url
        alert = url[len(RUNBOOK_BASE):-3]
        if not (RUNBOOK_DIR / f"{alert}.md").is_file():
            problems.append(f"{name} {title!r}: alerts/runbooks/{alert}.md does not exist")
        if alert not in alerts:
            problems.append(f"{name} {title!r}: no alert {alert} in alerts/rules/*.yaml")
    assert not problems, "\n".join(problems)


def test_every_alert_has_a_panel_linking_its_runbook():
    """Whoever is paged finds the alert's signal on a dashboard."""
    linked = {url[len(RUNBOOK_BASE):-3] for _, _, url in runbook_links()}
    missing = sorted(alert_names() - linked)
    assert not missing, f"alerts of alerts/rules/ that no dashboard panel links to: {missing}"


def render_configmaps():
    docs = [d for d in yaml.safe_load_all(run([require("kubectl"), "kustomize", DASHBOARD_DIR]).stdout) if d]
    return {d["metadata"]["name"]: d for d in docs}


def test_configmaps_carry_the_committed_json_for_the_grafana_sidecar():
    configmaps = render_configmaps()
    assert sorted(configmaps) == sorted(f"bookedbarber-dashboard-{n[len('bookedbarber-'):-5]}" for n in UIDS)
    seen = set()
    for cm_name, cm in configmaps.items():
        assert cm["kind"] == "ConfigMap" and "namespace" not in cm["metadata"]
        labels, annotations = cm["metadata"]["labels"], cm["metadata"]["annotations"]
        assert labels["grafana_dashboard"] == "1"
        assert annotations["grafana_folder"] == "BookedBarber"
        assert labels["app.kubernetes.io/part-of"] == "bookedbarber"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        (file_name, text), = cm["data"].items()
        assert text == (DASHBOARD_DIR / file_name).read_text(), f"{cm_name} differs from {file_name}"
        # Client-side `kubectl apply` stores the whole object in an
        # annotation limited to 256 KiB.
        assert len(json.dumps(cm)) < 200 * 1024, f"{cm_name} is too large for kubectl apply"
        kubernetes_validate.validate(cm, "1.32", strict=True)  # raises on an invalid object
        seen.add(file_name)
    assert seen == set(UIDS)
