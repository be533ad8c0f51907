"""NetworkPolicy semantics, enough to compute who may talk to whom in a
rendered overlay: pod and namespace selectors, ipBlock with except, named
and numbered ports, and the rule that a connection needs both the source's
egress and the destination's ingress to allow it."""
import ipaddress
from dataclasses import dataclass, field

from .conftest import pod_labels, pod_spec
from .test_k8s_workloads import selects


@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    ports: dict = field(default_factory=dict, hash=False, compare=False)  # name -> number
    ip: str = ""  # for peers outside the cluster

    @property
    def namespace_labels(self):
        return {"kubernetes.io/metadata.name": self.namespace}


def pods(rendered):
    """One Peer per workload of the overlay, named after its app.kubernetes.io/name."""
    out = []
    for w in rendered.workloads():
        labels = pod_labels(w)
        ports = {p["name"]: p["containerPort"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
        out.append(Peer(labels["app.kubernetes.io/name"], w["metadata"]["namespace"], labels, ports))
    return out


def _peer_matches(peer_rule, peer, policy_namespace):
    if "ipBlock" in peer_rule:
        if not peer.ip:
            return False  # pods have cluster-private addresses, which the bundle's ipBlocks exclude
        block = peer_rule["ipBlock"]
        ip = ipaddress.ip_address(peer.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if peer.ip:
        return False
    ns_sel = peer_rule.get("namespaceSelector")
    pod_sel = peer_rule.get("podSelector")
    if ns_sel is None:
        ns_ok = peer.namespace == policy_namespace
    else:
        ns_ok = selects(ns_sel, peer.namespace_labels)
    return ns_ok and (pod_sel is None or selects(pod_sel, peer.labels))


def _port_matches(rule_ports, port, protocol, dst):
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        number = dst.ports.get(p["port"]) if isinstance(p["port"], str) else p["port"]
        if number is not None and number <= port <= p.get("endPort", number):
            return True
    return False


def _allowed_by(policies, direction, subject, other, port, protocol, dst):
    """None if no policy isolates `subject` in `direction`, else whether one allows it."""
    key = "ingress" if direction == "Ingress" else "egress"
    peers_key = "from" if direction == "Ingress" else "to"
    isolating = [p for p in policies
                 if p["metadata"]["namespace"] == subject.namespace
                 and direction in p["spec"].get("policyTypes", ["Ingress"])
                 and selects(p["spec"]["podSelector"], subject.labels)]
    if not isolating:
        return None
    for p in isolating:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(r, other, p["metadata"]["namespace"]) for r in peers)) \
                    and _port_matches(rule.get("ports"), port, protocol, dst):
                return True
    return False


def allowed(policies, src, dst, port, protocol="TCP"):
    """Whether src may open a connection to dst:port, both sides considered.
    Policies only isolate pods of their own namespace; peers outside the
    bundle's namespace (controllers, Prometheus, DNS) are not isolated here."""
    egress = _allowed_by(policies, "Egress", src, dst, port, protocol, dst) if not src.ip else None
    ingress = _allowed_by(policies, "Ingress", dst, src, port, protocol, dst) if not dst.ip else None
    return egress is not False and ingress is not False
