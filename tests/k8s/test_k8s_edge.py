"""The public edge: the Gateway API edge every overlay renders by default,
the legacy ingress-nginx component an overlay can choose instead, and the
cluster-wide part (k8s/cluster). Each variant validates strictly against
the real CRD schemas and CEL rules (Gateway API v1.6.1 standard channel,
Envoy Gateway v1.9.0), passes checkov, serves exactly the hosts of the
app's own URLs, and opens exactly the flows it needs; the JSON Schemas are
what converting the copied CRDs gives."""
import filecmp
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from support.tools import ROOT, require, run

from .conftest import K8S, OVERLAYS, kustomize, parse
from .netpol import Peer, allowed, pods
from .test_k8s_network import ENVOY, INGRESS_NGINX, PROMETHEUS

SCHEMAS = ROOT / "tests/schemas"
CRD_FOLDERS = ("gateway-api-v1.6.1", "envoy-gateway-v1.9.0")
VALIDATOR = SCHEMAS / "validate_manifests.py"
LEGACY = "components/edge-ingress-nginx"
ROUTES = ("bookedbarber-frontend", "bookedbarber-api", "bookedbarber-webhooks")
# Folders an overlay reaches (the monitoring component includes these).
BUNDLE = ("k8s", "config", "alerts", "dashboards", "servicemonitors")


class Render:
    def __init__(self, text):
        self.text, self.docs = text, parse(text)

    def of_kind(self, *kinds):
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind, name):
        (found,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return found

    def workloads(self):
        return self.of_kind("Deployment", "StatefulSet", "CronJob")


@pytest.fixture(scope="module")
def gateway(rendered):
    return {o: Render(rendered[o].text) for o in OVERLAYS}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """Every overlay with the legacy component added to its own kustomization,
    as docs/deploy.md says (in a copy of the bundle: nothing in the checkout changes)."""
    copy = tmp_path_factory.mktemp("legacy-edge")
    for folder in BUNDLE:
        shutil.copytree(ROOT / folder, copy / folder)
    out = {}
    for overlay in OVERLAYS:
        path = copy / "k8s/overlays" / overlay / "kustomization.yaml"
        path.write_text(path.read_text().replace("\nresources:\n", f"\ncomponents:\n  - ../../{LEGACY}\n\nresources:\n", 1))
        out[overlay] = Render(kustomize(path.parent))
    return out


@pytest.fixture(scope="module")
def cluster():
    return Render(kustomize(K8S / "cluster"))


def validate(text, version="1.30"):
    return subprocess.run([sys.executable, VALIDATOR, "-k", version, "-"], input=text, capture_output=True, text=True)


def hosts(render):
    """(frontend host, API host) from the app's FRONTEND_URL and BACKEND_URL."""
    (cm,) = [d for d in render.of_kind("ConfigMap") if d["metadata"]["name"].startswith("bookedbarber-app")]
    return cm["data"]["FRONTEND_URL"].split("/")[2], cm["data"]["BACKEND_URL"].split("/")[2]


# ---- schemas ---------------------------------------------------------------------

def test_the_json_schemas_are_the_conversion_of_the_copied_crds(tmp_path):
    crds = sorted(p for folder in CRD_FOLDERS for p in (SCHEMAS / "crds" / folder).glob("*.yaml"))
    assert len(crds) == 6
    run([sys.executable, SCHEMAS / "crd2jsonschema.py", tmp_path, *crds])
    made = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(made) == 9, made
    differ = [name for name in made if not filecmp.cmp(tmp_path / name, SCHEMAS / "json" / name, shallow=False)]
    assert not differ, f"regenerate with crd2jsonschema.py: {differ}"


def load(path):
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def test_the_crds_are_the_versions_their_folders_name():
    for path in (SCHEMAS / "crds/gateway-api-v1.6.1").glob("*.yaml"):
        annotations = load(path)["metadata"]["annotations"]
        assert annotations["gateway.networking.k8s.io/bundle-version"] == "v1.6.1", path
        assert annotations["gateway.networking.k8s.io/channel"] == "standard", path
    kinds = {load(p)["spec"]["names"]["kind"]
             for p in (SCHEMAS / "crds/envoy-gateway-v1.9.0").glob("*.yaml")}
    assert kinds == {"BackendTrafficPolicy", "ClientTrafficPolicy", "EnvoyProxy"}


def test_the_validator_runs_the_crds_cel_rules():
    """Schemas cannot say "targetRef or targetRefs, not both"; the CEL rules
    the API server runs do, and the validator runs them too."""
    bad = """\
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: both}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: on-a-route}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}]
"""
    proc = validate(bad)
    assert proc.returncode == 1
    assert "either targetRef or targetRefs must be used" in proc.stdout, proc.stdout
    assert "can only have a targetRefs[*].kind of Gateway" in proc.stdout, proc.stdout
    assert proc.stdout.strip().endswith("0 passed, 2 failed"), proc.stdout


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_the_legacy_edge_and_the_cluster_part_validate_strictly(legacy, cluster, version):
    """The overlays' default renders are validated with the rest of k8s/
    (test_k8s_render), and the legacy ones differ from them only by their
    edge objects (below): those of every overlay, and the cluster-wide part,
    on the oldest and the newest Kubernetes."""
    edge = [d for r in legacy.values() for d in r.docs
            if d["kind"] == "Ingress" or d["metadata"]["name"] == "bookedbarber-edge"]
    assert len(edge) == 4 * len(OVERLAYS)
    for text, count in ((yaml.safe_dump_all(edge), len(edge)), (cluster.text, len(cluster.docs))):
        proc = validate(text, version)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip().endswith(f"{count} passed, 0 failed"), proc.stdout


# ---- the Gateway edge --------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_serves_the_apps_hosts_over_tls(gateway, cluster, overlay):
    r = gateway[overlay]
    frontend, api = hosts(r)
    gw = r.get("Gateway", "bookedbarber")
    listeners = {listener["name"]: listener for listener in gw["spec"]["listeners"]}
    assert listeners["http"]["port"] == 80 and "hostname" not in listeners["http"]
    for name, host in (("https-frontend", frontend), ("https-api", api)):
        listener = listeners[name]
        assert (listener["protocol"], listener["port"], listener["hostname"]) == ("HTTPS", 443, host)
        assert listener["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "bookedbarber-tls"}]
    issuer = "letsencrypt-staging" if overlay == "development" else "letsencrypt-prod"
    assert gw["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == issuer
    # The class is the cluster part's, with the proxy settings of its EnvoyProxy.
    gatewayclass = cluster.get("GatewayClass", gw["spec"]["gatewayClassName"])
    ref = gatewayclass["spec"]["parametersRef"]
    assert cluster.get(ref["kind"], ref["name"])["metadata"]["namespace"] == ref["namespace"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_routes_reach_only_what_is_public_and_redirect_plain_http(gateway, overlay):
    r = gateway[overlay]
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in r.of_kind("Service")}
    routes = {h["metadata"]["name"]: h for h in r.of_kind("HTTPRoute")}
    assert set(routes) == {*ROUTES, "bookedbarber-redirect"}
    (redirect_rule,) = routes["bookedbarber-redirect"]["spec"]["rules"]
    assert routes["bookedbarber-redirect"]["spec"]["parentRefs"] == [{"name": "bookedbarber", "sectionName": "http"}]
    assert redirect_rule["filters"] == [{"type": "RequestRedirect",
                                         "requestRedirect": {"scheme": "https", "statusCode": 301}}]
    paths = {}
    for name in ROUTES:
        (parent,) = routes[name]["spec"]["parentRefs"]
        assert parent["sectionName"] in ("https-frontend", "https-api"), name
        assert "hostnames" not in routes[name]["spec"], f"{name}: hosts come from its listener alone"
        for rule in routes[name]["spec"]["rules"]:
            assert rule["timeouts"]["request"] in ("30s", "60s"), name
            for ref in rule["backendRefs"]:
                assert ref["port"] in services[ref["name"]], (name, ref)
            for match in rule["matches"]:
                paths[(parent["sectionName"], match["path"]["value"])] = rule["backendRefs"][0]["name"]
    assert paths == {
        ("https-frontend", "/api/metrics"): "bookedbarber-backend",  # which answers 404: metrics stay inside
        ("https-frontend", "/"): "bookedbarber-frontend",
        ("https-api", "/api"): "bookedbarber-backend", ("https-api", "/health"): "bookedbarber-backend",
        ("https-api", "/api/v2/webhooks"): "bookedbarber-backend",
    }
    headers = {h["name"] for rule in routes["bookedbarber-api"]["spec"]["rules"] for f in rule.get("filters", [])
               for h in f["responseHeaderModifier"]["set"]}
    assert {"Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
            "Content-Security-Policy"} <= headers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rate_limits_are_per_client_address_and_bodies_limited(gateway, overlay):
    r = gateway[overlay]
    policies = {p["spec"]["targetRefs"][0]["name"]: p for p in r.of_kind("BackendTrafficPolicy")}
    assert set(policies) == set(ROUTES)
    for route, per_client in (("bookedbarber-frontend", 100), ("bookedbarber-api", 20)):
        rules = policies[route]["spec"]["rateLimit"]["local"]["rules"]
        # Each address its own bucket, IPv4 and IPv6 alike: a limit on one
        # family only would let the other through.
        assert [(rule["clientSelectors"], rule["limit"]) for rule in rules] == [
            ([{"sourceCIDR": {"type": "Distinct", "value": cidr}}], {"requests": per_client, "unit": "Second"})
            for cidr in ("0.0.0.0/0", "::/0")], route
    (webhooks,) = policies["bookedbarber-webhooks"]["spec"]["rateLimit"]["local"]["rules"]
    assert "clientSelectors" not in webhooks, "the payment provider's few addresses share one limit"
    assert {route: p["spec"]["requestBuffer"]["limit"] for route, p in policies.items()} == {
        "bookedbarber-frontend": "1Mi", "bookedbarber-api": "10Mi", "bookedbarber-webhooks": "1Mi"}
    client = r.get("ClientTrafficPolicy", "bookedbarber")
    assert client["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                             "name": "bookedbarber"}]
    assert client["spec"]["timeout"]["http"]["requestHeadersReceivedTimeout"] == "10s"


def test_the_proxies_keep_the_client_address_and_the_routes_names(cluster):
    proxy = cluster.get("EnvoyProxy", "bookedbarber")["spec"]
    assert proxy["provider"]["kubernetes"]["envoyService"]["externalTrafficPolicy"] == "Local"
    assert "mergeBackends" not in proxy, "merged clusters lose the route the SLO is counted by"
    assert proxy["provider"]["kubernetes"]["envoyDeployment"]["replicas"] >= 2
    assert proxy["provider"]["kubernetes"]["envoyPDB"] == {"minAvailable": 1}
    assert proxy["telemetry"]["metrics"]["prometheus"] == {"disable": False}


def test_the_proxies_policy_admits_the_public_and_prometheus_only(cluster):
    policies = cluster.of_kind("NetworkPolicy")
    labels = {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
              "app.kubernetes.io/managed-by": "envoy-gateway", "gateway.envoyproxy.io/owning-gateway-name":
              "bookedbarber"}
    proxy = Peer("envoy", "envoy-gateway-system", labels, {"http": 10080, "https": 10443, "metrics": 19001})
    internet = Peer("client", "", ip="198.51.100.7")
    other_pod = Peer("other", "other", {"app.kubernetes.io/name": "other"})
    assert allowed(policies, internet, proxy, 10443) and allowed(policies, internet, proxy, 10080)
    assert allowed(policies, PROMETHEUS, proxy, 19001)
    assert not allowed(policies, other_pod, proxy, 19001), "the stats name every route: Prometheus only"
    assert not allowed(policies, internet, proxy, 19000)


# ---- the legacy ingress-nginx edge -----------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_legacy_component_replaces_the_gateway_with_ingresses(legacy, gateway, overlay):
    r = legacy[overlay]
    frontend, api = hosts(r)
    assert not [d for d in r.docs if d["apiVersion"].startswith(("gateway.networking.k8s.io",
                                                                 "gateway.envoyproxy.io"))]
    ingresses = {i["metadata"]["name"]: i for i in r.of_kind("Ingress")}
    assert set(ingresses) == set(ROUTES), "the Ingresses carry the HTTPRoutes' names: the SLO's route label"
    assert {n: [rule["host"] for rule in i["spec"]["rules"]] for n, i in ingresses.items()} == {
        "bookedbarber-frontend": [frontend], "bookedbarber-api": [api], "bookedbarber-webhooks": [api]}
    assert ingresses["bookedbarber-frontend"]["spec"]["tls"][0]["hosts"] == [frontend, api]
    issued = {n for n, i in ingresses.items() if "cert-manager.io/cluster-issuer" in i["metadata"]["annotations"]}
    assert issued == {"bookedbarber-frontend"}, "one Ingress asks for the certificate of both hosts"
    issuer = "letsencrypt-staging" if overlay == "development" else "letsencrypt-prod"
    assert ingresses["bookedbarber-frontend"]["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == issuer
    limits = {n: (a.get("nginx.ingress.kubernetes.io/limit-rps"), a.get("nginx.ingress.kubernetes.io/proxy-body-size"))
              for n, i in ingresses.items() for a in [i["metadata"]["annotations"]]}
    assert limits == {"bookedbarber-frontend": ("100", "1m"), "bookedbarber-api": ("20", "10m"),
                      "bookedbarber-webhooks": (None, "1m")}
    # Everything else is the default render's, but the edge's policy.
    others = [d for d in r.docs if d["kind"] != "Ingress" and d["metadata"]["name"] != "bookedbarber-edge"]
    default = [d for d in gateway[overlay].docs if not d["apiVersion"].startswith("gateway.")
               and d["metadata"]["name"] != "bookedbarber-edge"]
    assert others == default


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_edge_reaches_the_frontend_and_backend_and_nothing_else(gateway, legacy, overlay):
    for variant, edge, other in ((gateway, ENVOY, INGRESS_NGINX), (legacy, INGRESS_NGINX, ENVOY)):
        r = variant[overlay]
        policies = r.of_kind("NetworkPolicy")
        ours = pods(r)
        ports = sorted({n for p in ours for n in p.ports.values()})
        reached = {(d.name, port) for d in ours for port in ports if allowed(policies, edge, d, port)}
        assert reached == {("frontend", 3000), ("backend", 8000)}, edge.name
        assert not any(allowed(policies, other, d, port) for d in ours for port in ports), other.name


def test_the_legacy_controllers_values_answer_rate_limits_with_429():
    values = yaml.safe_load((K8S / "cluster/edge-ingress-nginx/values.yaml").read_text())["controller"]
    assert values["config"]["limit-req-status-code"] == "429"
    assert values["config"]["limit-conn-status-code"] == "429"
    assert values["service"]["externalTrafficPolicy"] == "Local"
    assert values["metrics"]["enabled"] is True
    note = (K8S / LEGACY / "kustomization.yaml").read_text()
    assert "2026-03-24" in note and "limit-req-status-code" in note


# ---- hardening ---------------------------------------------------------------------

def test_checkov_finds_nothing_in_the_legacy_edge_and_the_cluster_part(legacy, cluster, tmp_path):
    (tmp_path / "legacy.yaml").write_text(legacy["production"].text.replace("{{", "{ {"))
    (tmp_path / "cluster.yaml").write_text(cluster.text.replace("{{", "{ {"))
    report = json.loads(run([require("checkov"), "--directory", tmp_path, "--framework", "kubernetes",
                             "--output", "json", "--skip-download", "--soft-fail"]).stdout)
    assert "results" in report and report["summary"]["parsing_errors"] == 0, report
    checked = {c["resource"] for c in report["results"]["passed_checks"]}
    assert {f"Ingress.bookedbarber.{n}" for n in ROUTES} <= checked, checked
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
