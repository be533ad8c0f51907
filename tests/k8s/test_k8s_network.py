"""Who may talk to whom in each rendered overlay, computed from its
NetworkPolicies: exactly the connections BookedBarber needs, nothing else."""
import pytest

from .conftest import OVERLAYS
from .netpol import Peer, allowed, pods

# The edge: the Envoy proxies Envoy Gateway runs for the namespace's Gateway
# (labels as it sets them), and the legacy ingress-nginx controller, which
# the default edge does not admit (test_k8s_edge.py checks the legacy one).
ENVOY = Peer("envoy", "envoy-gateway-system", {
    "app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
    "app.kubernetes.io/managed-by": "envoy-gateway", "gateway.envoyproxy.io/owning-gateway-name": "bookedbarber"})
INGRESS_NGINX = Peer("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = Peer("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
ELSEWHERE = Peer("other-app", "other", {"app.kubernetes.io/name": "backend"})
GRAFANA_IN_MONITORING = Peer("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"})
INTERNET = Peer("internet", "", ip="203.0.113.10", ports={"https": 443, "http": 80})
CLOUD_METADATA = Peer("metadata", "", ip="169.254.169.254", ports={"http": 80})

# (source, destination, port): every connection the bundle needs inside the cluster.
EXPECTED = {
    ("envoy", "frontend", 3000), ("envoy", "backend", 8000),
    ("frontend", "backend", 8000),
    ("backend", "postgres", 5432), ("backend", "redis", 6379),
    ("worker", "postgres", 5432), ("worker", "redis", 6379),
    ("postgres-backup", "postgres", 5432),
    ("bookedbarber-exporter", "postgres", 5432), ("bookedbarber-exporter", "redis", 6379),
    ("prometheus", "bookedbarber-exporter", 10188), ("prometheus", "backend", 8000),
    ("prometheus", "frontend", 3000),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_exactly_the_needed_connections_are_open(rendered, overlay):
    r = rendered[overlay]
    policies = r.of_kind("NetworkPolicy")
    ours = pods(r)
    sources = ours + [ENVOY, INGRESS_NGINX, PROMETHEUS, ELSEWHERE, GRAFANA_IN_MONITORING]
    # Every port any of our pods listens on, tried on every pod.
    ports = sorted({n for p in ours for n in p.ports.values()})
    found = {(s.name, d.name, port) for s in sources for d in ours for port in ports
             if s != d and allowed(policies, s, d, port)}
    assert found - EXPECTED == set(), f"{overlay}: connections open that nothing needs"
    assert EXPECTED - found == set(), f"{overlay}: needed connections blocked"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_resolves_names_and_only_some_reach_the_internet(rendered, overlay):
    r = rendered[overlay]
    policies = r.of_kind("NetworkPolicy")
    for pod in pods(r):
        assert allowed(policies, pod, KUBE_DNS, 53, "UDP"), f"{pod.name}: no DNS"
        assert allowed(policies, pod, KUBE_DNS, 53, "TCP"), f"{pod.name}: no DNS over TCP"
        https = allowed(policies, pod, INTERNET, 443)
        # Stripe, Google Calendar, SendGrid and Twilio are called from the API and the tasks.
        assert https == (pod.name in {"backend", "worker"}), f"{pod.name}: HTTPS out is {https}"
        assert not allowed(policies, pod, INTERNET, 80), f"{pod.name}: plain HTTP out"
        assert not allowed(policies, pod, CLOUD_METADATA, 80), f"{pod.name}: cloud metadata reachable"
