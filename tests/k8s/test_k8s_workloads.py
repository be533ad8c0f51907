"""The workloads as the issue asks for them: production's resource table
and HPA bounds exactly, probes, limits and the hardened security context
on every container, a PDB and a NetworkPolicy for every workload, Service
selectors that select pods, and quotas that admit it all at full scale."""
import pytest

from .conftest import OVERLAYS, pod_labels, pod_spec
from .quantities import cpu, redis_size, size, surge

# The table: CPU request, CPU limit, memory request, memory limit, replicas.
PRODUCTION = {
    ("Deployment", "bookedbarber-frontend", "frontend"): ("200m", "500m", "256Mi", "512Mi", (3, 15)),
    ("Deployment", "bookedbarber-backend", "backend"): ("250m", "1000m", "512Mi", "1Gi", (3, 20)),
    ("Deployment", "bookedbarber-worker", "worker"): ("200m", "500m", "256Mi", "512Mi", (2, 10)),
    ("StatefulSet", "bookedbarber-postgres", "postgres"): ("250m", "1000m", "512Mi", "2Gi", (1, 1)),
    ("StatefulSet", "bookedbarber-redis", "redis"): ("100m", "500m", "256Mi", "512Mi", (1, 1)),
}


def selects(selector, labels):
    """A LabelSelector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def hpa_for(r, workload):
    hpas = [h for h in r.of_kind("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["kind"] == workload["kind"]
            and h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]]
    assert len(hpas) <= 1
    return hpas[0] if hpas else None


def replica_range(r, workload):
    hpa = hpa_for(r, workload)
    if hpa:
        return hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
    n = workload["spec"].get("replicas", 1)
    return n, n


def test_production_resources_and_replicas_are_the_table(production):
    for (kind, name, container), (cpu_req, cpu_lim, mem_req, mem_lim, replicas) in PRODUCTION.items():
        w = production.get(kind, name)
        [c] = [c for c in pod_spec(w)["containers"] if c["name"] == container]
        res = c["resources"]
        assert cpu(res["requests"]["cpu"]) == cpu(cpu_req), f"{name} CPU request"
        assert cpu(res["limits"]["cpu"]) == cpu(cpu_lim), f"{name} CPU limit"
        assert size(res["requests"]["memory"]) == size(mem_req), f"{name} memory request"
        assert size(res["limits"]["memory"]) == size(mem_lim), f"{name} memory limit"
        assert replica_range(production, w) == replicas, f"{name} replicas"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_on_cpu_and_memory(rendered, overlay):
    r = rendered[overlay]
    for name in ("bookedbarber-frontend", "bookedbarber-backend", "bookedbarber-worker"):
        w = r.get("Deployment", name)
        hpa = hpa_for(r, w)
        assert hpa and hpa["apiVersion"] == "autoscaling/v2", f"{name} has no autoscaling/v2 HPA"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        metrics = {m["resource"]["name"]: m["resource"]["target"]["type"] for m in hpa["spec"]["metrics"]}
        assert metrics == {"cpu": "Utilization", "memory": "Utilization"}, name
        # The HPA owns the replica count: a re-apply must not reset it.
        assert "replicas" not in w["spec"], f"{name} sets replicas beside its HPA"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_development_is_smallest_and_staging_in_between(rendered, overlay):
    if overlay == "production":
        return
    smaller = {"development": ("staging", "production"), "staging": ("production",)}[overlay]
    r = rendered[overlay]
    def size_of(rr, kind, name, container):
        """CPU request, memory request, most replicas."""
        workload = rr.get(kind, name)
        [c] = [c for c in pod_spec(workload)["containers"] if c["name"] == container]
        requests = c["resources"]["requests"]
        return cpu(requests["cpu"]), size(requests["memory"]), replica_range(rr, workload)[1]

    for key in PRODUCTION:
        for bigger in smaller:
            mine, theirs = size_of(r, *key), size_of(rendered[bigger], *key)
            assert all(a <= b for a, b in zip(mine, theirs)), f"{overlay} {key[1]} {mine} vs {bigger} {theirs}"


def check_hardened(name, pod, probes=True):
    """Pod Security "restricted" and more: non-root (UID 10000 or above), no
    privilege escalation, read-only root, no capabilities, seccomp, no
    service-account token, requests and limits, and (unless a Job) probes."""
    ctx = pod["securityContext"]
    assert ctx.get("runAsNonRoot") is True, name
    assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
    assert pod.get("automountServiceAccountToken") is False, f"{name} mounts a service-account token"
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, name
    for c in pod.get("initContainers", []) + pod["containers"]:
        where = f"{name}/{c['name']}"
        sc = c["securityContext"]
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities") == {"drop": ["ALL"]}, where
        assert sc.get("privileged") is not True, where
        assert sc.get("runAsUser", ctx.get("runAsUser", 0)) >= 10000, f"{where}: UID below 10000"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"].get(kind, {})), f"{where} {kind}"
        if probes:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{where} has no {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_limits_and_a_hardened_security_context(rendered, overlay):
    for w in rendered[overlay].workloads():
        # A Job's pod runs to completion: no traffic to be ready for, and a
        # liveness probe could only kill a long dump half-way.
        check_hardened(w["metadata"]["name"], pod_spec(w), probes=w["kind"] != "CronJob")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_accounts_exist_and_mount_no_token(rendered, overlay):
    r = rendered[overlay]
    accounts = {sa["metadata"]["name"]: sa for sa in r.of_kind("ServiceAccount")}
    for w in r.workloads():
        sa = pod_spec(w).get("serviceAccountName")
        assert sa in accounts, f"{w['metadata']['name']} runs as {sa!r}, which the bundle does not create"
        assert accounts[sa].get("automountServiceAccountToken") is False, sa


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_roll_with_zero_unavailable_and_spread(rendered, overlay):
    for d in rendered[overlay].of_kind("Deployment"):
        name = d["metadata"]["name"]
        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        if name == "bookedbarber-exporter":
            continue
        spread = pod_spec(d)["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in spread}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        for c in spread:
            assert selects(c["labelSelector"], pod_labels(d)), f"{name}: spread selector misses its pods"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_and_statefulset_has_a_pdb(rendered, overlay):
    r = rendered[overlay]
    pdbs = r.of_kind("PodDisruptionBudget")
    for w in r.of_kind("Deployment", "StatefulSet"):
        matching = [p["metadata"]["name"] for p in pdbs if selects(p["spec"]["selector"], pod_labels(w))]
        assert len(matching) == 1, f"{w['metadata']['name']}: PDBs {matching}"
    for p in pdbs:
        assert any(selects(p["spec"]["selector"], pod_labels(w)) for w in r.workloads()), \
            f"PDB {p['metadata']['name']} selects no pod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_network_policy_of_its_own(rendered, overlay):
    """Beyond the namespace-wide default deny and DNS, each workload's pods are
    selected by a policy that names them."""
    r = rendered[overlay]
    policies = r.of_kind("NetworkPolicy")
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {}
                    and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                    and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert default_deny, "no default-deny NetworkPolicy"
    for w in r.workloads():
        own = [p["metadata"]["name"] for p in policies
               if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod_labels(w))]
        assert own, f"{w['metadata']['name']} has no NetworkPolicy of its own"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_selects_pods_and_their_ports(rendered, overlay):
    r = rendered[overlay]
    for s in r.of_kind("Service"):
        name = s["metadata"]["name"]
        pods = [w for w in r.workloads() if selects({"matchLabels": s["spec"]["selector"]}, pod_labels(w))]
        assert len(pods) == 1, f"Service {name} selects {[w['metadata']['name'] for w in pods]}"
        ports = {p["name"]: p["containerPort"] for c in pod_spec(pods[0])["containers"] for p in c.get("ports", [])}
        for port in s["spec"]["ports"]:
            assert port["targetPort"] in ports or port["targetPort"] in ports.values(), f"{name}: {port}"
    for st in r.of_kind("StatefulSet"):
        service = r.get("Service", st["spec"]["serviceName"])
        assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(st))


def full_scale(r):
    """Pods, CPU and memory requests and limits with every workload at its
    maximum, a rolling update in flight, and a backup run by hand beside the
    nightly one."""
    totals = {"pods": 0, "requests.cpu": 0, "limits.cpu": 0, "requests.memory": 0, "limits.memory": 0}
    for w in r.workloads():
        if w["kind"] == "CronJob":
            pods = 2
        else:
            top = replica_range(r, w)[1]
            pods = top
            if w["kind"] == "Deployment":
                pods += surge(w["spec"]["strategy"]["rollingUpdate"]["maxSurge"], top)
        totals["pods"] += pods
        for c in pod_spec(w)["containers"]:
            for kind in ("requests", "limits"):
                totals[f"{kind}.cpu"] += pods * cpu(c["resources"][kind]["cpu"])
                totals[f"{kind}.memory"] += pods * size(c["resources"][kind]["memory"])
    return totals


def claims(r):
    sizes = [size(t["spec"]["resources"]["requests"]["storage"])
             for st in r.of_kind("StatefulSet") for t in st["spec"].get("volumeClaimTemplates", [])]
    sizes += [size(p["spec"]["resources"]["requests"]["storage"]) for p in r.of_kind("PersistentVolumeClaim")]
    return sizes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_quota_admits_every_workload_at_full_scale(rendered, overlay):
    r = rendered[overlay]
    [quota] = r.of_kind("ResourceQuota")
    hard = quota["spec"]["hard"]
    need = full_scale(r)
    assert need["pods"] <= int(hard["pods"]), (need, hard)
    for key in ("requests.cpu", "limits.cpu"):
        assert need[key] <= cpu(hard[key]), f"{overlay}: {key} needs {need[key]}m, quota {hard[key]}"
    for key in ("requests.memory", "limits.memory"):
        assert need[key] <= size(hard[key]), f"{overlay}: {key} needs {need[key] / 2**30:.1f}Gi, quota {hard[key]}"
    volumes = claims(r)
    assert len(volumes) <= int(hard["persistentvolumeclaims"])
    assert sum(volumes) <= size(hard["requests.storage"]), f"{overlay}: storage"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_limit_range_admits_every_container_and_volume(rendered, overlay):
    r = rendered[overlay]
    [limit_range] = r.of_kind("LimitRange")
    by_type = {item["type"]: item for item in limit_range["spec"]["limits"]}
    container = by_type["Container"]
    for w in r.workloads():
        for c in pod_spec(w)["containers"]:
            res = c["resources"]
            where = f"{w['metadata']['name']}/{c['name']}"
            assert cpu(res["limits"]["cpu"]) <= cpu(container["max"]["cpu"]), where
            assert size(res["limits"]["memory"]) <= size(container["max"]["memory"]), where
            assert cpu(res["requests"]["cpu"]) >= cpu(container["min"]["cpu"]), where
            assert size(res["requests"]["memory"]) >= size(container["min"]["memory"]), where
    pvc = by_type["PersistentVolumeClaim"]
    for volume in claims(r):
        assert size(pvc["min"]["storage"]) <= volume <= size(pvc["max"]["storage"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volume_claims_keep_their_access_mode_and_labels(rendered, overlay):
    """Overlays change claim sizes with JSON patches: a strategic merge patch
    would replace the whole volumeClaimTemplates list."""
    for st in rendered[overlay].of_kind("StatefulSet"):
        for t in st["spec"]["volumeClaimTemplates"]:
            assert t["spec"]["accessModes"] == ["ReadWriteOnce"], st["metadata"]["name"]
            assert t["metadata"]["labels"]["app.kubernetes.io/part-of"] == "bookedbarber"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_maxmemory_stays_below_its_memory_limit(rendered, overlay):
    """Redis refuses writes at maxmemory (noeviction) instead of being OOM-killed
    with the queued tasks in it: maxmemory must sit below the container limit."""
    r = rendered[overlay]
    conf = next(iter(next(cm for cm in r.of_kind("ConfigMap")
                          if cm["metadata"]["name"].startswith("bookedbarber-redis"))["data"].values()))
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings["maxmemory-policy"] == "noeviction"
    [c] = pod_spec(r.get("StatefulSet", "bookedbarber-redis"))["containers"]
    args = c["command"]
    maxmemory = args[args.index("--maxmemory") + 1] if "--maxmemory" in args else settings["maxmemory"]
    limit = size(c["resources"]["limits"]["memory"])
    assert redis_size(maxmemory) <= 0.8 * limit, f"{overlay}: maxmemory {maxmemory} vs limit {limit}"
