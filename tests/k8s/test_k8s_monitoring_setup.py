"""`monitoring-setup`, the real binary driving the real kubectl: --dry-run
prints exactly the overlay's monitoring bundle for the namespace and touches
nothing; against a fake API server on loopback (fake_apiserver.py) it checks
its prerequisites, server-side applies every object and waits for the
exporter; every error a user can meet exits non-zero saying what to do."""
import os
import subprocess
import sys

import pytest
import yaml

from support.tools import ROOT, free_port

from .conftest import K8S, kustomize, parse, pod_spec
from .fake_apiserver import Cluster, FakeApiServer
from .netpol import Peer, allowed, pods

VALIDATOR = ROOT / "tests/schemas/validate_manifests.py"


@pytest.fixture
def kube_home(tmp_path):
    """A HOME of the test's own, so kubectl's discovery cache starts empty."""
    home = tmp_path / "home"
    home.mkdir()
    return home


def setup(binary, *args, home, kubeconfig=None, path=None):
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBECTL", "MONITORING_SETUP_BUNDLE_DIR")}
    env["HOME"] = str(home)
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def fake_cluster(tmp_path):
    servers = []

    def start(**cluster):
        server = FakeApiServer(Cluster(**cluster)).start()
        servers.append(server)
        return server, server.kubeconfig(tmp_path / f"kubeconfig-{len(servers)}")

    yield start
    for server in servers:
        server.stop()


def bundle(overlay="production"):
    return kustomize(K8S / "overlays" / overlay / "monitoring")


def test_dry_run_prints_the_production_monitoring_bundle(monitoring_setup_bin, kube_home):
    proc = setup(monitoring_setup_bin, "--dry-run", "bookedbarber", home=kube_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == bundle("production")
    assert "Dry run: nothing was sent to the cluster" in proc.stderr
    check = subprocess.run([sys.executable, VALIDATOR, "-k", "1.30", "-"], input=proc.stdout,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert check.stdout.strip().endswith(f"{len(parse(proc.stdout))} passed, 0 failed")


def test_dry_run_for_another_namespace_moves_everything_there(monitoring_setup_bin, kube_home):
    proc = setup(monitoring_setup_bin, "--dry-run", "shop-west", home=kube_home)
    assert proc.returncode == 0, proc.stderr
    expected = parse(bundle("production"))
    for doc in expected:
        doc["metadata"]["namespace"] = "shop-west"
    assert parse(proc.stdout) == expected


def test_dry_run_of_another_overlay(monitoring_setup_bin, kube_home):
    proc = setup(monitoring_setup_bin, "--dry-run", "--overlay", "staging", "bookedbarber-staging",
                 home=kube_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == bundle("staging")


def test_the_prometheus_namespace_is_one_setting(monitoring_setup_bin, kube_home, production):
    proc = setup(monitoring_setup_bin, "--dry-run", "--prometheus-namespace", "observability", "bookedbarber",
                 home=kube_home)
    assert proc.returncode == 0, proc.stderr
    policies = [d for d in parse(proc.stdout) if d["kind"] == "NetworkPolicy"]
    exporter = next(p for p in pods(production) if p.name == "bookedbarber-exporter")
    labels = {"app.kubernetes.io/name": "prometheus"}
    assert allowed(policies, Peer("prometheus", "observability", labels), exporter, 10188)
    assert not allowed(policies, Peer("prometheus", "monitoring", labels), exporter, 10188)
    # Nothing else changes.
    default = parse(bundle("production"))
    changed = [d["metadata"]["name"] for d in parse(proc.stdout) if d not in default]
    assert changed == ["bookedbarber-prometheus"]


def test_dry_run_touches_nothing(monitoring_setup_bin, kube_home, fake_cluster):
    server, kubeconfig = fake_cluster()
    proc = setup(monitoring_setup_bin, "--dry-run", "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert server.requests == []


def test_install_applies_every_object_server_side_and_waits(monitoring_setup_bin, kube_home, fake_cluster,
                                                            production):
    server, kubeconfig = fake_cluster(ready_after=1)
    proc = setup(monitoring_setup_bin, "--timeout", "60s", "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode == 0, proc.stderr
    rendered = parse(bundle("production"))
    patches = server.patches()
    assert len(patches) == len(rendered)
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query.get("fieldManager") == "monitoring-setup"
        assert request.query.get("force") == "true"
        assert "/namespaces/bookedbarber/" in request.path
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == \
        sorted((r.doc["kind"], r.doc["metadata"]["name"]) for r in patches)
    assert all(r.doc in rendered for r in patches), "an applied object differs from the rendered one"
    # It checked the Secret the Deployment mounts, and polled the Deployment.
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    [secret] = [v["secret"]["secretName"] for v in pod_spec(deployment)["volumes"] if "secret" in v]
    paths = [r.path for r in server.requests if r.method == "GET"]
    assert f"/api/v1/namespaces/bookedbarber/secrets/{secret}" in paths
    assert paths.count("/apis/apps/v1/namespaces/bookedbarber/deployments/bookedbarber-exporter") >= 2
    assert "/apis/monitoring.coreos.com/v1" in paths
    # Progress as it goes, then what to open next.
    steps = [line for line in proc.stderr.splitlines() if line.startswith("==> ")]
    assert [s.split()[1] for s in steps] == ["Rendering", "Checking", "Applying", "Waiting"], steps
    assert "deployment.apps/bookedbarber-exporter serverside-applied" in proc.stderr
    for hint in ('folder "BookedBarber"', "/targets?search=bookedbarber", "amtool", "alert add",
                 "port-forward svc/kube-prometheus-stack-prometheus"):
        assert hint in proc.stdout, hint


def test_the_context_flag_chooses_the_cluster(monitoring_setup_bin, kube_home, fake_cluster, tmp_path):
    server, _ = fake_cluster(ready_after=0)
    kubeconfig = tmp_path / "two-contexts"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}},
                     {"name": "closed", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}},
                     {"name": "elsewhere", "context": {"cluster": "closed", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}]}))
    proc = setup(monitoring_setup_bin, "--context", "fake", "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert server.patches()
    assert "kubectl --context fake -n monitoring port-forward" in proc.stdout


def test_no_kubectl_on_the_path(monitoring_setup_bin, kube_home, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    for args in (["bookedbarber"], ["--dry-run", "bookedbarber"]):
        proc = setup(monitoring_setup_bin, *args, home=kube_home, path=str(empty))
        assert proc.returncode != 0
        assert "`kubectl` not found: install kubectl" in proc.stderr, proc.stderr
        assert "https://kubernetes.io/docs/tasks/tools/" in proc.stderr


def test_an_unreachable_cluster(monitoring_setup_bin, kube_home, tmp_path):
    kubeconfig = tmp_path / "closed"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "closed",
        "clusters": [{"name": "closed", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}]}))
    proc = setup(monitoring_setup_bin, "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode != 0
    assert "cannot reach the Kubernetes API server" in proc.stderr, proc.stderr
    assert "127.0.0.1" in proc.stderr and "refused" in proc.stderr
    assert "kubectl config current-context" in proc.stderr


def test_missing_prometheus_operator_crds(monitoring_setup_bin, kube_home, fake_cluster):
    server, kubeconfig = fake_cluster(operator=False)
    proc = setup(monitoring_setup_bin, "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode != 0
    assert "Prometheus Operator's custom resources are not installed" in proc.stderr, proc.stderr
    assert "monitoring.coreos.com/v1 PrometheusRule, ServiceMonitor" in proc.stderr
    assert "helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack" in proc.stderr
    assert not server.patches(), "applied something although the CRDs are missing"


def test_missing_namespace(monitoring_setup_bin, kube_home, fake_cluster):
    server, kubeconfig = fake_cluster(namespaces=set())
    proc = setup(monitoring_setup_bin, "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode != 0
    assert 'namespace "bookedbarber" does not exist' in proc.stderr, proc.stderr
    assert not server.patches()


def test_missing_exporter_secret(monitoring_setup_bin, kube_home, fake_cluster):
    server, kubeconfig = fake_cluster(secrets=set())
    proc = setup(monitoring_setup_bin, "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode != 0
    assert 'the Secret "bookedbarber-exporter" is missing in namespace "bookedbarber"' in proc.stderr, proc.stderr
    assert "kubectl -n bookedbarber create secret generic bookedbarber-exporter" in proc.stderr
    assert not server.patches()


def test_an_exporter_that_never_becomes_ready(monitoring_setup_bin, kube_home, fake_cluster):
    server, kubeconfig = fake_cluster(ready_after=10**6)
    proc = setup(monitoring_setup_bin, "--timeout", "3s", "bookedbarber", home=kube_home, kubeconfig=kubeconfig)
    assert proc.returncode != 0
    assert "bookedbarber-exporter did not become ready within 3s" in proc.stderr, proc.stderr
    assert "kubectl -n bookedbarber logs deployment/bookedbarber-exporter" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["Book_Barber"], 'invalid namespace "Book_Barber"'),
    (["--overlay", "prod", "bookedbarber"], 'unknown overlay "prod"'),
    (["--bundle-dir", "/", "bookedbarber"], "/ is not a bundle directory"),
])
def test_bad_arguments(monitoring_setup_bin, kube_home, args, message):
    proc = setup(monitoring_setup_bin, "--dry-run", *args, home=kube_home)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_help_says_where_the_bundle_comes_from(monitoring_setup_bin, kube_home):
    proc = setup(monitoring_setup_bin, "--help", home=kube_home)
    assert proc.returncode == 0
    for text in ("--bundle-dir", "MONITORING_SETUP_BUNDLE_DIR", "--dry-run", "--overlay", "--context",
                 "k8s/overlays"):
        assert text in proc.stdout, text
