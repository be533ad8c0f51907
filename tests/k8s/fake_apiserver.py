"""A small fake Kubernetes API server on loopback, for monitoring-setup's
tests: it answers what kubectl asks while monitoring-setup runs (version,
discovery, GETs of a namespace, a Secret and a Deployment, server-side
apply PATCHes) from a fixed picture of a cluster, and records every request.
It is no Kubernetes: it keeps what is applied only to answer later GETs."""
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

# Discovery of the group/versions the bundle uses: {group/version: {resource: (kind, namespaced)}}.
CORE = {
    "namespaces": ("Namespace", False),
    "configmaps": ("ConfigMap", True),
    "secrets": ("Secret", True),
    "services": ("Service", True),
    "serviceaccounts": ("ServiceAccount", True),
    "pods": ("Pod", True),
    "persistentvolumeclaims": ("PersistentVolumeClaim", True),
}
GROUPS = {
    "apps/v1": {"deployments": ("Deployment", True), "statefulsets": ("StatefulSet", True)},
    "policy/v1": {"poddisruptionbudgets": ("PodDisruptionBudget", True)},
    "networking.k8s.io/v1": {"networkpolicies": ("NetworkPolicy", True), "ingresses": ("Ingress", True)},
    "autoscaling/v2": {"horizontalpodautoscalers": ("HorizontalPodAutoscaler", True)},
    "batch/v1": {"cronjobs": ("CronJob", True), "jobs": ("Job", True)},
}
OPERATOR = {
    "monitoring.coreos.com/v1": {
        "servicemonitors": ("ServiceMonitor", True),
        "podmonitors": ("PodMonitor", True),
        "prometheusrules": ("PrometheusRule", True),
        "prometheuses": ("Prometheus", True),
        "alertmanagers": ("Alertmanager", True),
    },
    "monitoring.coreos.com/v1alpha1": {"alertmanagerconfigs": ("AlertmanagerConfig", True)},
}


@dataclass
class Request:
    method: str
    path: str
    query: dict
    content_type: str
    body: bytes

    @property
    def doc(self):
        return yaml.safe_load(self.body) if self.body else None


@dataclass
class Cluster:
    """What the fake cluster holds. `operator`: the Prometheus Operator's
    CRDs are installed; `namespaces`, `secrets` ({(namespace, name)}) exist;
    the exporter's Deployment becomes ready after `ready_after` GETs."""
    operator: bool = True
    namespaces: set = field(default_factory=lambda: {"bookedbarber"})
    secrets: set = field(default_factory=lambda: {("bookedbarber", "bookedbarber-exporter")})
    ready_after: int = 2


class FakeApiServer:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.requests: list[Request] = []
        self.applied = {}
        self._deployment_gets = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path, context="fake"):
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
            "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
        }))
        return path

    def patches(self):
        return [r for r in self.requests if r.method == "PATCH"]

    # --- answers

    def group_versions(self):
        return {**GROUPS, **(OPERATOR if self.cluster.operator else {})}

    def answer(self, req: Request):
        p = req.path.rstrip("/")
        if p == "/version":
            return 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.4-fake", "platform": "linux/amd64"}
        if p == "/openapi/v3":
            return 200, {"paths": {_openapi_key(gv): {"serverRelativeURL": f"/openapi/v3/{_openapi_key(gv)}?hash=fake"}
                                   for gv in ["v1", *self.group_versions()]}}
        if p.startswith("/openapi/v3/"):
            key = p[len("/openapi/v3/"):]
            for gv, resources in [("v1", CORE), *self.group_versions().items()]:
                if key == _openapi_key(gv):
                    return 200, _openapi_v3(gv, resources)
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        if p == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if p == "/api/v1":
            return 200, _resource_list("v1", CORE)
        if p == "/apis":
            groups = {}
            for gv in self.group_versions():
                g, v = gv.split("/")
                groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in groups.items()]}
        if p.startswith("/apis/") and p.count("/") == 3:
            gv = p[len("/apis/"):]
            if gv in self.group_versions():
                return 200, _resource_list(gv, self.group_versions()[gv])
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        return self.object_request(req, p)

    def object_request(self, req, p):
        parts = p.split("/")
        # /api/v1/namespaces/NS[/RES/NAME] or /apis/G/V/namespaces/NS/RES/NAME
        base = 3 if parts[1] == "api" else 4
        gv = "v1" if parts[1] == "api" else f"{parts[2]}/{parts[3]}"
        rest = parts[base:]
        if rest[:1] == ["namespaces"] and len(rest) == 2:
            ns = rest[1]
            if req.method == "GET" and ns in self.cluster.namespaces:
                return 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                             "status": {"phase": "Active"}}
            return 404, _status(404, "NotFound", f'namespaces "{ns}" not found')
        if len(rest) != 4 or rest[0] != "namespaces":
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        ns, resource, name = rest[1], rest[2], rest[3]
        if ns not in self.cluster.namespaces:
            return 404, _status(404, "NotFound", f'namespaces "{ns}" not found')
        if req.method == "PATCH":
            doc = req.doc
            doc.setdefault("metadata", {}).update({"namespace": ns, "generation": 1, "uid": f"uid-{name}"})
            self.applied[(gv, resource, ns, name)] = doc
            return 200, doc
        if req.method == "GET" and resource == "secrets":
            if (ns, name) in self.cluster.secrets:
                return 200, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}}
            return 404, _status(404, "NotFound", f'secrets "{name}" not found')
        if req.method == "GET" and (gv, resource, ns, name) in self.applied:
            doc = json.loads(json.dumps(self.applied[(gv, resource, ns, name)]))
            if resource == "deployments":
                doc["status"] = self.deployment_status(doc)
            return 200, doc
        return 404, _status(404, "NotFound", f'{resource} "{name}" not found')

    def deployment_status(self, doc):
        with self._lock:
            self._deployment_gets += 1
            ready = self._deployment_gets > self.cluster.ready_after
        replicas = doc.get("spec", {}).get("replicas", 1)
        return {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas if ready else 0, "availableReplicas": replicas if ready else 0}


def _resource_list(gv, resources):
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
        {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
        for name, (kind, namespaced) in resources.items()]}


def _openapi_key(gv):
    return "api/v1" if gv == "v1" else f"apis/{gv}"


def _openapi_v3(gv, resources):
    """Just enough OpenAPI for kubectl to see that PATCH takes the
    fieldValidation parameter, so that it leaves validation to the server."""
    group, _, version = gv.rpartition("/")
    paths = {}
    for name, (kind, namespaced) in resources.items():
        prefix = f"/{_openapi_key(gv)}" + ("/namespaces/{namespace}" if namespaced else "")
        paths[f"{prefix}/{name}/{{name}}"] = {"patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}},
        }}
    return {"openapi": "3.0.0", "info": {"title": "fake", "version": version}, "paths": paths}


def _status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: FakeApiServer

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        req = Request(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                      self.headers.get("Content-Type", ""), body)
        self.server_state.requests.append(req)
        try:
            code, payload = self.server_state.answer(req)
        except Exception as e:  # an answer the fake cannot give shows in the test's failure
            code, payload = 500, _status(500, "InternalError", f"fake API server: {e!r}")
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def log_message(self, *args):
        pass
