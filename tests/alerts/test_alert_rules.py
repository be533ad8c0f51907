"""The shipped alerting and recording rules: promtool accepts them, promtool's
unit tests cover every alert both firing and silent, the PrometheusRule
resources are exactly what promtool tests, selectors pick only BookedBarber's
series, and every alert is documented and has a runbook."""
import re

import pytest
import yaml

from alert_support import (ALERTS, AREAS, CLUSTER_AREAS, EXPORTER_JOB, GENERATOR, RULE_FILES, RUNBOOK_BASE_URL,
                           UNIT_TESTS, rule_groups, rules, selectors, unit_tests)
from support.tools import ROOT, VENV_BIN, require, run

SEVERITIES = {"critical", "warning", "info"}
# Labels an alert rule may set besides severity and area (the SLO burn windows).
EXTRA_LABELS = {"long_window", "short_window"}
RUNBOOK_SECTIONS = ["## Meaning", "## Confirm", "## Mitigate", "## Escalate"]


def test_generated_files_are_up_to_date():
    """Rule files (runbook links, job selector), PrometheusRules and the
    AlertmanagerConfig are what alerts/generate.py makes of their sources."""
    proc = run([VENV_BIN / "python", ALERTS / "generate.py", "--check"], check=False)
    assert proc.returncode == 0, f"run `.venv/bin/python alerts/generate.py`:\n{proc.stdout}{proc.stderr}"


def test_the_one_place_settings_match_the_conventions():
    conventions = (ROOT / "docs/conventions.md").read_text()
    assert RUNBOOK_BASE_URL in conventions.replace("\n  ", "")
    assert f"scrape job is `{EXPORTER_JOB}`" in conventions


@pytest.mark.parametrize("area", AREAS)
def test_rule_file_passes_promtool_check(area):
    proc = run([require("promtool"), "check", "rules", ALERTS / "rules" / f"{area}.yaml"])
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("area", AREAS)
def test_prometheusrule_is_exactly_the_tested_rule_file(area, tmp_path):
    """promtool reads only a file's first document and knows nothing of
    PrometheusRule, so each resource's spec is extracted and compared."""
    docs = list(yaml.safe_load_all(GENERATOR.resource_path(area).read_text()))
    assert len(docs) == 1, "one PrometheusRule per file"
    resource = docs[0]
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert resource["metadata"]["name"] == f"bookedbarber-{area}"
    assert resource["spec"]["groups"] == rule_groups(ALERTS / "rules" / f"{area}.yaml")
    extracted = tmp_path / f"{area}.rules.yaml"
    extracted.write_text(yaml.safe_dump(resource["spec"]))
    assert "SUCCESS" in run([require("promtool"), "check", "rules", extracted]).stdout


def test_every_rule_file_has_a_resource_and_unit_tests():
    """Each area's PrometheusRule is in the environments' bundle (alerts/) or,
    for the edge and the SLO, in the cluster-wide one (alerts/cluster/),
    never in both: two copies in a cluster would double every series."""
    namespaced = sorted(set(AREAS) - set(CLUSTER_AREAS))
    assert set(CLUSTER_AREAS) <= set(AREAS), "CLUSTER_AREAS names an area without a rule file"
    assert namespaced == sorted(p.stem for p in (ALERTS / "prometheusrules").glob("*.yaml"))
    assert sorted(CLUSTER_AREAS) == sorted(p.stem for p in (ALERTS / "cluster").glob("*.yaml")
                                           if p.name != "kustomization.yaml")
    assert sorted(AREAS) == sorted(p.name.removesuffix(".test.yaml") for p in UNIT_TESTS.glob("*.test.yaml"))
    for folder, areas, prefix in ((ALERTS, namespaced, "prometheusrules/"), (ALERTS / "cluster", CLUSTER_AREAS, "")):
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        listed = [r for r in kustomization["resources"] if r.startswith(prefix) and r.removeprefix(prefix) in
                  {f"{a}.yaml" for a in AREAS}]
        assert sorted(listed) == sorted(f"{prefix}{a}.yaml" for a in areas), folder


@pytest.mark.parametrize("area", AREAS)
def test_promtool_unit_tests(area):
    tests = unit_tests(area)
    # The unit tests read the shipped file itself first, then only other
    # shipped files (an edge's rules feed the SLO's).
    files = [(UNIT_TESTS / f).resolve() for f in tests["rule_files"]]
    assert files[0] == ALERTS / "rules" / f"{area}.yaml"
    assert set(files[1:]) <= set(RULE_FILES), files
    proc = run([require("promtool"), "test", "rules", UNIT_TESTS / f"{area}.test.yaml"])
    assert "SUCCESS" in proc.stdout + proc.stderr


# The two edges' rule files, whose unit tests feed the same traffic in each
# edge's own shape (tests/alerts/units/edge-*.test.yaml).
EDGE_AREAS = ("edge-envoy-gateway", "edge-ingress-nginx")
EDGE_OWN = re.compile(r"\b(envoy|nginx)_")


def edge_expectations(area):
    """{test name: (inputs' metric names, normalised expectations, alert cases)} of an edge's unit tests:
    the expectations on edge-neutral series, `edge` taken out of their labels."""
    out = {}
    for group in unit_tests(area)["tests"]:
        inputs = {re.match(r"[^{]+", s["series"]).group(0) for s in group["input_series"]}
        samples = [(c["expr"], c["eval_time"],
                    sorted((re.sub(r',?\s*edge="[^"]*"', "", x["labels"]), x["value"]) for x in c["exp_samples"]))
                   for c in group.get("promql_expr_test", []) if not EDGE_OWN.search(c["expr"])]
        out[group["name"]] = (inputs, samples, group.get("alert_rule_test", []))
    return out


def test_both_edges_give_the_same_series_for_the_same_traffic():
    """What the SLO reads is the same whichever edge serves the traffic: the
    tests of the same name feed each edge's own metrics, and expect the same
    normalised samples (but for `edge`) and the same alerts."""
    envoy, nginx = (edge_expectations(a) for a in EDGE_AREAS)
    shared = set(envoy) & set(nginx)
    assert {"the same traffic as on the other edge", "a flood of 429s burns no error budget",
            "bookings while the edge sees only other apps' routes"} <= shared
    for name in sorted(shared):
        (envoy_in, envoy_samples, envoy_alerts), (nginx_in, nginx_samples, nginx_alerts) = envoy[name], nginx[name]
        assert {m for m in envoy_in if EDGE_OWN.match(m)} and {m for m in nginx_in if EDGE_OWN.match(m)}
        assert not {m for m in envoy_in if m.startswith("nginx_")} and not {m for m in nginx_in if m.startswith("envoy_")}, \
            f"{name}: each edge's test reads its own metrics only"
        assert envoy_samples == nginx_samples, f"{name}: the edges' normalised series differ"
        assert envoy_alerts == nginx_alerts, f"{name}: the edges' alerts differ"
    samples = envoy["the same traffic as on the other edge"][1]
    assert len(samples) >= 6 and sum(len(s) for _, _, s in samples) >= 20, "compare enough series to mean something"


def alert_cases():
    """{(alertname, severity): firing exp_alerts}, {alertname: silent cases}."""
    firing, silent = {}, {}
    for area in AREAS:
        for group in unit_tests(area)["tests"]:
            for case in group.get("alert_rule_test", []):
                name = case["alertname"]
                if not case.get("exp_alerts"):
                    silent[name] = silent.get(name, 0) + 1
                for exp in case.get("exp_alerts") or []:
                    firing.setdefault((name, exp["exp_labels"].get("severity")), []).append(exp)
    return firing, silent


def test_every_alert_fires_and_stays_silent_in_the_unit_tests():
    firing, silent = alert_cases()
    shipped = {(r["alert"], r["labels"]["severity"]) for _, r in rules("alert")}
    untested = sorted(shipped - set(firing))
    never_silent = sorted({name for name, _ in shipped} - set(silent))
    unknown = sorted(set(firing) - shipped)
    assert not untested, f"alerts (name, severity) with no unit test where they fire: {untested}"
    assert not never_silent, f"alerts with no unit test where they stay silent: {never_silent}"
    assert not unknown, f"unit tests expect alerts no rule defines: {unknown}"


def test_firing_cases_check_labels_and_annotations():
    """Each firing case pins the namespace (routing needs it), the area, and
    all three annotations as rendered."""
    firing, _ = alert_cases()
    for (name, severity), cases in firing.items():
        for exp in cases:
            labels, annotations = exp["exp_labels"], exp.get("exp_annotations") or {}
            assert labels.get("namespace"), f"{name}: firing case without a namespace label"
            assert labels.get("area"), f"{name}: firing case without an area label"
            assert set(annotations) == {"summary", "description", "runbook_url"}, \
                f"{name} ({severity}): firing case must check summary, description and runbook_url"
            assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}{name}.md"


def test_every_recording_rule_is_tested_or_used_by_a_tested_alert():
    tested = set()
    for area in AREAS:
        for group in unit_tests(area)["tests"]:
            tested.update(c["expr"] for c in group.get("promql_expr_test", []))
    used = " ".join(r["expr"] for _, r in rules("alert")) + " ".join(tested)
    unused = [r["record"] for _, r in rules("record") if r["record"] not in used]
    assert not unused, f"recording rules neither unit-tested nor used by an alert: {unused}"


@pytest.mark.parametrize("area,rule", rules("alert"), ids=lambda x: x if isinstance(x, str) else x["alert"])
def test_alert_has_severity_area_and_annotations_a_stranger_can_act_on(area, rule):
    name, labels, annotations = rule["alert"], rule["labels"], rule["annotations"]
    assert name.startswith("BookedBarber"), "alert names start with BookedBarber (routing matches on it)"
    assert labels["severity"] in SEVERITIES
    assert labels["area"] == area
    assert set(labels) - {"severity", "area"} <= EXTRA_LABELS
    assert set(annotations) == {"summary", "description", "runbook_url"}
    for key in ("summary", "description"):
        assert "$labels.namespace" in annotations[key], f"{name}: {key} must name the namespace"
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}{name}.md"
    assert (ALERTS / "runbooks" / f"{name}.md").is_file(), f"no runbook alerts/runbooks/{name}.md"


def runbook_severities(text):
    head = text.split("\n## ", 1)[0]
    return {s for s in SEVERITIES if re.search(rf"\b{s}\b", head)}


def test_runbooks_are_complete_and_match_the_alerts():
    alerts = {}
    for _, rule in rules("alert"):
        alerts.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    books = {p.stem: p.read_text() for p in (ALERTS / "runbooks").glob("*.md") if p.stem != "README"}
    assert set(books) == set(alerts), f"runbooks without alerts: {sorted(set(books) - set(alerts))}"
    for name, text in books.items():
        assert text.startswith(f"# {name}\n"), f"{name}.md: title"
        positions = [text.find(s) for s in RUNBOOK_SECTIONS]
        assert -1 not in positions and positions == sorted(positions), \
            f"{name}.md needs the sections {RUNBOOK_SECTIONS} in this order"
        confirm = text[positions[1]:positions[2]]
        assert "```promql" in confirm, f"{name}.md: Confirm needs the PromQL to run"
        assert re.search(r"```(sh|sql)", confirm), f"{name}.md: Confirm needs kubectl/psql/redis-cli/celery commands"
        assert runbook_severities(text) == alerts[name], f"{name}.md states severities other than the rules'"


# --- selectors -----------------------------------------------------------------

def exporter_metrics():
    """Sample names the exporter serves, from the catalogue of record."""
    names = set()
    for line in (ROOT / "docs/metrics.md").read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", line.split("|")[1]))
    return names


# External metrics: the label that names the object, and the value pattern
# that limits it to the bundle's objects (docs/conventions.md).
NAME_PREFIX = re.compile(r"^(\(\.\+-\)\?)?bookedbarber-")
OBJECT_LABEL = {"kube_deployment": "deployment", "kube_horizontalpodautoscaler": "horizontalpodautoscaler",
                "kube_cronjob": "cronjob", "kube_pod": "pod", "kubelet_volume_stats": "persistentvolumeclaim",
                "container_": "pod"}


# The edges our monitors label (servicemonitors/edge), and the label naming
# the route of each edge's request metrics.
EDGES = {"envoy-gateway", "ingress-nginx"}
ROUTE_LABEL = {"envoy_cluster_upstream_rq": "envoy_cluster_name", "envoy_cluster_upstream_rq_time_bucket": "envoy_cluster_name",
               "nginx_ingress_controller_requests": "ingress",
               "nginx_ingress_controller_request_duration_seconds_bucket": "ingress"}


def test_selectors_pick_only_bookedbarbers_series():
    """The mixins' defect: rules matching every job, so that a
    postgres_exporter beside ours doubles every page."""
    ours = exporter_metrics()
    problems = []
    for area, rule in rules():
        name = rule.get("alert") or rule.get("record")
        for metric, matchers in selectors(rule["expr"]):
            family = re.sub(r"_(bucket|count|sum)$", "", metric)
            if ":" in metric:
                continue  # a recording rule of ours, built on selected series
            if metric in ours or family in ours:
                if matchers.get("job") != ("Equal", EXPORTER_JOB):
                    problems.append(f"{name}: {metric} without job=\"{EXPORTER_JOB}\"")
            elif metric.startswith(("envoy_", "nginx_ingress_controller_")) or metric == "up" and "edge" in matchers:
                # The edge's series: those our cluster's monitors scrape
                # (servicemonitors/edge), and of requests only BookedBarber's routes.
                if matchers.get("edge", ("", ""))[0] != "Equal" or matchers["edge"][1] not in EDGES:
                    problems.append(f"{name}: {metric} without edge=\"<one of {sorted(EDGES)}>\"")
                route = matchers.get(ROUTE_LABEL.get(metric, ""), ("", ""))
                if metric in ROUTE_LABEL and not (route[0] == "Re" and "bookedbarber-" in route[1]):
                    problems.append(f"{name}: {metric} not limited to the bookedbarber-* routes by {ROUTE_LABEL[metric]}")
            elif metric.startswith("certmanager_"):
                if not NAME_PREFIX.match(matchers.get("name", ("", ""))[1]):
                    problems.append(f"{name}: {metric} not limited to bookedbarber-* certificates by name")
            elif metric == "up":
                if matchers.get("job") != ("Equal", EXPORTER_JOB):
                    problems.append(f"{name}: up without job=\"{EXPORTER_JOB}\"")
            else:
                label = next((v for k, v in OBJECT_LABEL.items() if metric.startswith(k)), None)
                value = matchers.get(label, ("", ""))[1]
                if label is None or not NAME_PREFIX.match(value):
                    problems.append(f"{name}: {metric} not limited to bookedbarber-* objects by {label}")
    assert not problems, "\n".join(problems)


# --- docs --------------------------------------------------------------------------

def test_docs_list_every_alert_and_recording_rule():
    docs = (ROOT / "docs/alerts.md").read_text()
    rows = set(re.findall(r"^\| \[(BookedBarber\w+)\]\([^)]*\) \| (critical|warning|info) \|", docs, re.M))
    shipped = {(r["alert"], r["labels"]["severity"]) for _, r in rules("alert")}
    assert rows == shipped, (f"docs/alerts.md table: missing {sorted(shipped - rows)}, "
                             f"not in the rules {sorted(rows - shipped)}")
    missing = [r["record"] for _, r in rules("record") if f"`{r['record']}`" not in docs]
    assert not missing, f"recording rules not described in docs/alerts.md: {missing}"
    for path in RULE_FILES:
        assert f"alerts/rules/{path.name}" in docs
