"""ServiceMonitors and PodMonitors: valid against the prometheus-operator
CRD schemas, labelled for kube-prometheus-stack, each selecting the Service
or pods (and port) it is meant to scrape, the environment's in the manifests
the bundle deploys, the edge's in what its controllers run; and two
environments in one cluster scrape every target once."""
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from support.tools import ROOT, require, run

SERVICEMONITORS = ROOT / "servicemonitors"
EDGE_MONITORS = SERVICEMONITORS / "edge"
PRODUCTION = ROOT / "k8s" / "overlays" / "production"
CLUSTER = ROOT / "k8s" / "cluster"
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "json"
HERE = Path(__file__).resolve().parent
# The edge controllers come from their Helm charts, not from k8s/.
CHART_OBJECTS = (HERE / "ingress-nginx-controller-metrics.yaml", HERE / "envoy-gateway-objects.yaml")
OWN_LABELS = {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "bookedbarber",
              "app.kubernetes.io/managed-by": "kustomize"}
# What each monitor scrapes: port name, path, and whether it keeps the
# scraped series' own labels (docs/conventions.md).
EXPECTED = {
    "bookedbarber-exporter": ("metrics", "/metrics", False),
    "bookedbarber-backend": ("http", "/metrics", False),
    "bookedbarber-frontend": ("http", "/api/metrics", False),
}
# The edge's, installed once per cluster (servicemonitors/edge), and the
# `edge` label each gives its targets, which the edge rules select on.
EDGE_EXPECTED = {
    "bookedbarber-envoy-gateway-proxy": ("metrics", "/stats/prometheus", False),
    "bookedbarber-envoy-gateway-controller": ("metrics", "/metrics", False),
    "bookedbarber-ingress-nginx": ("metrics", "/metrics", True),
}
EDGE_LABEL = {"bookedbarber-envoy-gateway-proxy": "envoy-gateway", "bookedbarber-envoy-gateway-controller":
              "envoy-gateway", "bookedbarber-ingress-nginx": "ingress-nginx"}
ALL_EXPECTED = {**EXPECTED, **EDGE_EXPECTED}
# Labels the Prometheus Operator sets on every target, which the dashboards
# and alerts select on: relabelings must not drop or overwrite them.
TARGET_LABELS = {"namespace", "pod", "service", "job", "container", "instance"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
TLS_AUTH_SECRET = "bookedbarber-exporter-scrape"


def kustomize(path):
    return [d for d in yaml.safe_load_all(run([require("kubectl"), "kustomize", path]).stdout) if d]


def monitors(docs):
    return [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]


def endpoints(monitor):
    return monitor["spec"].get("endpoints") or monitor["spec"].get("podMetricsEndpoints") or []


def schema_errors(doc):
    path = SCHEMAS / f"{doc['kind'].lower()}-monitoring-v1.json"
    v = jsonschema.Draft7Validator(json.loads(path.read_text()),
                                   format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{doc['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in v.iter_errors(doc)]


@pytest.fixture(scope="module")
def rendered():
    """The environment's monitors and the edge's, as their folders render them."""
    return monitors(kustomize(SERVICEMONITORS)) + monitors(kustomize(EDGE_MONITORS))


def test_monitors_validate_against_the_prometheus_operator_crds(rendered):
    assert sorted(m["metadata"]["name"] for m in rendered) == sorted(ALL_EXPECTED)
    assert sorted(m["metadata"]["name"] for m in monitors(kustomize(SERVICEMONITORS))) == sorted(EXPECTED), \
        "the edge's monitors belong to servicemonitors/edge (once per cluster), not to each environment"
    problems = [e for m in rendered for e in schema_errors(m)]
    assert not problems, "\n".join(problems)


def test_monitors_are_namespace_less_and_labelled_for_kube_prometheus_stack(rendered):
    for m in rendered:
        meta = m["metadata"]
        assert "namespace" not in meta, f"{meta['name']}: the overlay sets the namespace"
        assert OWN_LABELS.items() <= meta["labels"].items(), meta
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= set(meta["labels"]), meta


def test_endpoints_scrape_the_right_port_and_path_at_a_sane_interval(rendered):
    for m in rendered:
        port, path, honor = ALL_EXPECTED[m["metadata"]["name"]]
        eps = endpoints(m)
        assert len(eps) == 1, m["metadata"]["name"]
        ep = eps[0]
        assert (ep["port"], ep.get("path", "/metrics"), ep.get("honorLabels", False)) == (port, path, honor)
        interval, timeout = ep["interval"], ep["scrapeTimeout"]
        assert interval.endswith("s") and timeout.endswith("s")
        assert 15 <= int(interval[:-1]) <= 60 and int(timeout[:-1]) < int(interval[:-1]), ep


def test_relabelings_keep_the_target_labels(rendered):
    for m in rendered:
        for ep in endpoints(m):
            for r in ep.get("relabelings", []) + ep.get("metricRelabelings", []):
                action = r.get("action", "replace").lower()
                assert action not in ("labeldrop", "labelkeep", "labelmap"), (m["metadata"]["name"], r)
                assert r.get("targetLabel") not in TARGET_LABELS, (m["metadata"]["name"], r)


def test_edge_monitors_select_the_controllers_namespaces_and_label_their_edge(rendered):
    namespaces = {"bookedbarber-ingress-nginx": "ingress-nginx", "bookedbarber-envoy-gateway-proxy":
                  "envoy-gateway-system", "bookedbarber-envoy-gateway-controller": "envoy-gateway-system"}
    for m in rendered:
        name = m["metadata"]["name"]
        if name not in EDGE_EXPECTED:
            continue
        assert m["spec"]["namespaceSelector"] == {"matchNames": [namespaces[name]]}, name
        (ep,) = endpoints(m)
        edge = [r for r in ep["relabelings"] if r.get("targetLabel") == "edge"]
        assert edge == [{"action": "replace", "targetLabel": "edge", "replacement": EDGE_LABEL[name]}], name
    (proxy,) = [m for m in rendered if m["metadata"]["name"] == "bookedbarber-envoy-gateway-proxy"]
    # The Gateway's namespace, by which the 429s and the proxies' health are counted.
    (ep,) = endpoints(proxy)
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_gateway_envoyproxy_io_owning_gateway_namespace"],
            "targetLabel": "gateway_namespace", "action": "replace"} in ep["relabelings"]


def test_exporter_tls_and_basic_auth_component(tmp_path):
    """The optional component turns the exporter's endpoint to https with the
    credentials of one Secret, and the result is still a valid ServiceMonitor."""
    rel = os.path.relpath(SERVICEMONITORS, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [rel], "components": [f"{rel}/exporter-tls-auth"]}))
    docs = monitors(kustomize(tmp_path))
    assert not [e for m in docs for e in schema_errors(m)]
    (m,) = [m for m in docs if m["metadata"]["name"] == "bookedbarber-exporter"]
    (ep,) = endpoints(m)
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"]["ca"]["secret"] == {"name": TLS_AUTH_SECRET, "key": "ca.crt"}
    assert ep["basicAuth"] == {"username": {"name": TLS_AUTH_SECRET, "key": "username"},
                               "password": {"name": TLS_AUTH_SECRET, "key": "password"}}
    others = [m for m in docs if m["metadata"]["name"] != "bookedbarber-exporter"]
    assert all("scheme" not in e and "basicAuth" not in e for m in others for e in endpoints(m))


# ---- the monitors against the manifests they scrape -------------------------

def selects(selector, labels):
    """Kubernetes label selector semantics (matchLabels and matchExpressions)."""
    labels = labels or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def pod_templates(docs):
    """(namespace, labels, containers) of every pod the manifests would create."""
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in WORKLOADS:
            template = spec["template"]
        elif d["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Pod":
            template = d
        else:
            continue
        yield (d["metadata"].get("namespace"), template["metadata"].get("labels", {}),
               template["spec"].get("containers", []))


def scraped_namespaces(monitor):
    ns = monitor["spec"].get("namespaceSelector", {})
    if ns.get("any"):
        return None
    return set(ns.get("matchNames") or [monitor["metadata"].get("namespace")])


def check_service_monitor(m, services, pods):
    problems = []
    namespaces = scraped_namespaces(m)
    chosen = [s for s in services if (namespaces is None or s["metadata"].get("namespace") in namespaces)
              and selects(m["spec"]["selector"], s["metadata"].get("labels"))]
    if not chosen:
        return [f"selects no Service in namespace(s) {namespaces}"]
    for ep in endpoints(m):
        with_port = [s for s in chosen if ep["port"] in {p.get("name") for p in s["spec"]["ports"]}]
        if not with_port:
            problems.append(f"port {ep['port']!r} is not a port name of {[s['metadata']['name'] for s in chosen]}")
        for s in with_port:
            # The Service must reach pods that have the port, or the target has no endpoints.
            target = next(p.get("targetPort", p["port"]) for p in s["spec"]["ports"] if p.get("name") == ep["port"])
            backing = [c for ns, labels, cs in pods if ns == s["metadata"].get("namespace")
                       and s["spec"].get("selector") and selects({"matchLabels": s["spec"]["selector"]}, labels)
                       for c in cs]
            if not backing:
                problems.append(f"Service {s['metadata']['name']} selects no pod template")
            elif isinstance(target, str) and not any(target == p.get("name") for c in backing
                                                     for p in c.get("ports", [])):
                problems.append(f"Service {s['metadata']['name']} targets port {target!r}, which no container "
                                "of its pods names")
    return problems


def check_pod_monitor(m, pods):
    namespaces = scraped_namespaces(m)
    chosen = [cs for ns, labels, cs in pods if (namespaces is None or ns in namespaces)
              and selects(m["spec"]["selector"], labels)]
    if not chosen:
        return [f"selects no pod template in namespace(s) {namespaces}"]
    names = {p.get("name") for cs in chosen for c in cs for p in c.get("ports", [])}
    return [f"port {ep['port']!r} is not a container port name of the selected pods"
            for ep in endpoints(m) if ep.get("port") not in names]


def chart_objects(gateway_namespaces=("bookedbarber",)):
    """The edge controllers' objects, with one Envoy proxy Deployment per Gateway namespace."""
    docs = [d for f in CHART_OBJECTS for d in yaml.safe_load_all(f.read_text()) if d]
    (proxy,) = [d for d in docs if d["metadata"]["name"].startswith("envoy-bookedbarber-")]
    docs.remove(proxy)
    for ns in gateway_namespaces:
        copy = yaml.safe_load(yaml.safe_dump(proxy).replace(
            "owning-gateway-namespace: bookedbarber\n", f"owning-gateway-namespace: {ns}\n"))
        copy["metadata"]["name"] = f"envoy-{ns}-bookedbarber-4c8b2d1e"
        docs.append(copy)
    return docs


def test_every_monitor_selects_what_it_scrapes_in_the_production_overlay():
    if not PRODUCTION.is_dir():
        pytest.fail(f"{PRODUCTION.relative_to(ROOT)} is missing: the ServiceMonitors are matched against the "
                    "production overlay's Services (k8s branch)", pytrace=False)
    docs = kustomize(PRODUCTION)
    found = monitors(docs)
    assert sorted(m["metadata"]["name"] for m in found) == sorted(EXPECTED), \
        "the production overlay does not include servicemonitors/ (or includes other monitors)"
    cluster = kustomize(CLUSTER)
    found += monitors(cluster)
    docs += cluster + chart_objects()
    services = [d for d in docs if d["kind"] == "Service"]
    pods = list(pod_templates(docs))
    problems = []
    for m in found:
        assert m["metadata"].get("namespace"), f"{m['metadata']['name']} has no namespace in the overlay"
        check = check_service_monitor(m, services, pods) if m["kind"] == "ServiceMonitor" \
            else check_pod_monitor(m, pods)
        problems += [f"{m['kind']} {m['metadata']['name']}: {p}" for p in check]
    assert not problems, "\n".join(problems)


# ---- two environments in one cluster ----------------------------------------

def targets(m, services, pods):
    """(namespace, pod template, port) of every target a monitor gets."""
    namespaces = scraped_namespaces(m)
    out = set()
    for ep in endpoints(m):
        if m["kind"] == "PodMonitor":
            out |= {(ns, name, ep["port"]) for ns, name, labels, cs in pods
                    if (namespaces is None or ns in namespaces) and selects(m["spec"]["selector"], labels)
                    and ep["port"] in {p.get("name") for c in cs for p in c.get("ports", [])}}
            continue
        for svc in services:
            if (namespaces is not None and svc["metadata"].get("namespace") not in namespaces) \
                    or not selects(m["spec"]["selector"], svc["metadata"].get("labels")):
                continue
            port = next((p for p in svc["spec"]["ports"] if p.get("name") == ep["port"]), None)
            if port is None or not svc["spec"].get("selector"):
                continue
            out |= {(ns, name, port.get("targetPort", port["port"])) for ns, name, labels, _ in pods
                    if ns == svc["metadata"].get("namespace") and selects({"matchLabels": svc["spec"]["selector"]},
                                                                          labels)}
    return out


def named_pod_templates(docs):
    for d in docs:
        if d["kind"] in WORKLOADS:
            t = d["spec"]["template"]
            yield d["metadata"].get("namespace"), d["metadata"]["name"], t["metadata"].get("labels", {}), \
                t["spec"].get("containers", [])


def test_two_environments_in_one_cluster_scrape_every_target_once_and_rule_once():
    """Staging and production in one cluster, with the cluster-wide part once:
    no object is applied twice, no target (the edge controllers, shared by
    both, above all) is scraped by two monitors, and no edge or SLO rule
    group is loaded twice. Before, each environment shipped its own
    ingress-nginx monitor and SLO rules, doubling every edge series and alert."""
    environments = {o: kustomize(ROOT / "k8s" / "overlays" / o) for o in ("staging", "production")}
    cluster = kustomize(CLUSTER)
    docs = [d for env in environments.values() for d in env] + cluster
    keys = [(d["apiVersion"].split("/")[0], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
            for d in docs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicated, f"objects the two environments and the cluster part would apply twice: {duplicated}"

    # Envoy Gateway runs one proxy Deployment per Gateway, in its own namespace.
    gateways = [d["metadata"]["namespace"] for d in docs if d["kind"] == "Gateway"]
    assert len(gateways) == 2, gateways
    world = docs + chart_objects(gateway_namespaces=gateways)
    services = [d for d in world if d["kind"] == "Service"]
    pods = list(named_pod_templates(world))
    scraped = {}
    for m in monitors(docs):
        for target in targets(m, services, pods):
            scraped.setdefault(target, []).append(f"{m['metadata'].get('namespace')}/{m['metadata']['name']}")
    twice = {t: ms for t, ms in scraped.items() if len(ms) > 1}
    assert not twice, f"targets scraped by more than one monitor: {twice}"
    edge_targets = {t for t in scraped if t[0] in ("envoy-gateway-system", "ingress-nginx")}
    assert len(edge_targets) == 4, f"both environments' Envoy proxies, Envoy Gateway and ingress-nginx: {edge_targets}"

    groups = [g["name"] for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]
    edge_groups = [g for g in groups if g.startswith(("bookedbarber-edge", "bookedbarber-slo"))]
    assert sorted(edge_groups) == sorted(set(edge_groups)) and len(edge_groups) == 4, edge_groups
    assert all(d["metadata"]["namespace"] == "monitoring" for d in cluster if d["kind"] == "PrometheusRule")
