"""Every overlay builds with the real `kubectl kustomize`, every rendered
object validates strictly against a schema (no kind without one), and the
names, labels and ports are those of docs/conventions.md."""
import subprocess
import sys

import kubernetes_validate.utils
import pytest

from support.tools import ROOT

from .conftest import K8S, OVERLAYS, kustomize, parse, pod_labels, pod_spec

VALIDATOR = ROOT / "tests/schemas/validate_manifests.py"
# The oldest Kubernetes the manifests support (sleep preStop hooks, pod
# topology spread matchLabelKeys) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
NAMESPACES = {"development": "bookedbarber-dev", "staging": "bookedbarber-staging",
              "production": "bookedbarber"}

# docs/conventions.md: kind, name -> (app.kubernetes.io/name, component, {port name: number}).
CONVENTIONS = {
    ("Deployment", "bookedbarber-backend"): ("backend", "api", {"http": 8000}),
    ("Deployment", "bookedbarber-frontend"): ("frontend", "web", {"http": 3000}),
    ("Deployment", "bookedbarber-worker"): ("worker", "worker", {}),
    ("StatefulSet", "bookedbarber-postgres"): ("postgres", "database", {"postgres": 5432}),
    ("StatefulSet", "bookedbarber-redis"): ("redis", "cache", {"redis": 6379}),
    ("Deployment", "bookedbarber-exporter"): ("bookedbarber-exporter", "monitoring", {"metrics": 10188}),
    ("CronJob", "bookedbarber-postgres-backup"): ("postgres-backup", "backup", {}),
    ("Service", "bookedbarber-backend"): ("backend", "api", {"http": 8000}),
    ("Service", "bookedbarber-frontend"): ("frontend", "web", {"http": 3000}),
    ("Service", "bookedbarber-postgres"): ("postgres", "database", {"postgres": 5432}),
    ("Service", "bookedbarber-redis"): ("redis", "cache", {"redis": 6379}),
    ("Service", "bookedbarber-exporter"): ("bookedbarber-exporter", "monitoring", {"metrics": 10188}),
}


def validate(text, version):
    return subprocess.run([sys.executable, VALIDATOR, "-k", version, "-"], input=text,
                          capture_output=True, text=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(rendered, overlay, version):
    r = rendered[overlay]
    proc = validate(r.text, version)
    assert proc.returncode == 0, f"{overlay} on Kubernetes {version}:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.strip().endswith(f"{len(r.docs)} passed, 0 failed"), proc.stdout


def test_the_validator_rejects_unknown_fields_and_kinds_without_schema():
    """The check above can fail: a misspelt field and a kind nobody has a schema for."""
    bad = """\
apiVersion: v1
kind: Service
metadata:
  name: a
spec:
  selectr: {a: b}
  ports: [{port: 80}]
---
apiVersion: example.com/v1
kind: Gadget
metadata:
  name: b
"""
    proc = validate(bad, KUBERNETES_VERSIONS[-1])
    assert proc.returncode == 1
    assert "selectr" in proc.stdout and "no schema for example.com/v1 Gadget" in proc.stdout, proc.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_the_overlay_namespace(rendered, overlay):
    r = rendered[overlay]
    namespace = NAMESPACES[overlay]
    assert [d["metadata"]["name"] for d in r.of_kind("Namespace")] == [namespace]
    elsewhere = [f"{d['kind']}/{d['metadata']['name']} in {d['metadata'].get('namespace')}"
                 for d in r.docs if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespace]
    assert not elsewhere, f"{overlay}: objects outside {namespace}: {elsewhere}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_holds_its_monitoring_bundle_unchanged(rendered, overlay):
    """The overlay's monitoring/ folder, which monitoring-setup applies, is
    exactly the monitoring part of the overlay: same namespace, same objects."""
    bundle = parse(kustomize(K8S / "overlays" / overlay / "monitoring"))
    full = rendered[overlay].docs
    missing = [f"{d['kind']}/{d['metadata']['name']}" for d in bundle if d not in full]
    assert not missing, f"{overlay}: monitoring objects that differ in the full overlay: {missing}"
    kinds = {d["kind"] for d in bundle}
    assert {"Deployment", "Service", "ServiceAccount", "NetworkPolicy", "PodDisruptionBudget",
            "ConfigMap", "PrometheusRule", "ServiceMonitor"} <= kinds, kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_labels_and_ports_follow_the_conventions(rendered, overlay):
    r = rendered[overlay]
    for (kind, name), (app, component, ports) in CONVENTIONS.items():
        obj = r.get(kind, name)
        labels = obj["metadata"]["labels"]
        expect = {"app.kubernetes.io/name": app, "app.kubernetes.io/component": component,
                  "app.kubernetes.io/part-of": "bookedbarber", "app.kubernetes.io/managed-by": "kustomize"}
        assert {k: labels.get(k) for k in expect} == expect, f"{kind}/{name} labels"
        if kind == "Service":
            found = {p["name"]: p["port"] for p in obj["spec"]["ports"]}
        else:
            assert {k: pod_labels(obj).get(k) for k in expect} == expect, f"{kind}/{name} pod labels"
            found = {p["name"]: p["containerPort"]
                     for c in pod_spec(obj)["containers"] for p in c.get("ports", [])}
        assert found == ports, f"{kind}/{name} ports"
    gateway = r.get("Gateway", "bookedbarber")
    assert gateway["spec"]["gatewayClassName"] == "bookedbarber"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_shipped_or_passed_in_the_environment(rendered, overlay):
    r = rendered[overlay]
    assert not r.of_kind("Secret"), "Secrets are created by the operator (docs/deploy.md), never shipped"
    for w in r.workloads():
        for c in pod_spec(w)["containers"]:
            for env in c.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), f"{w['metadata']['name']}: {env['name']}"
            for source in c.get("envFrom", []):
                assert "secretRef" not in source, f"{w['metadata']['name']}: secrets are mounted as files"
