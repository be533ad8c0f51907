"""One known traffic mix at BookedBarber's edge, rendered as each edge's own
/metrics text: the Envoy proxy of a Gateway (Envoy Gateway) for one
namespace, the ingress-nginx controller for another. The real-Prometheus
test scrapes both, loads the shipped rules, and expects the overview's
HTTP panels to show the figures below for either namespace.

The names, labels and formats are the edges' own (the sources are cited in
tests/alerts/units/edge-envoy-gateway.test.yaml and
edge-ingress-nginx.test.yaml): Envoy's counters without a _total suffix,
its latency histogram in milliseconds with Envoy's default bounds, Envoy
Gateway's cluster names httproute/<namespace>/<route>/rule/<index> and
rate-limit stat prefix; ingress-nginx's requests by status and Ingress,
its histogram in seconds, Go's formatting of the bounds.
"""
import re

ENVOY_NAMESPACE = "bookedbarber"          # the Gateway edge serves this namespace
NGINX_NAMESPACE = "bookedbarber-legacy"   # the legacy edge this one

# (route, Envoy route rule, ingress-nginx path, status) -> requests per second
RESPONSES = {
    ("bookedbarber-frontend", 0, "/api/metrics", "404"): 1,
    ("bookedbarber-frontend", 1, "/", "200"): 38,
    ("bookedbarber-api", 0, "/api", "200"): 9,
    ("bookedbarber-api", 0, "/api", "500"): 1,
    ("bookedbarber-webhooks", 0, "/api/v2/webhooks", "200"): 1,
}
RATE_LIMITED = 7  # per second, answered 429 by the edge's limits on the API
# Share of every route's requests answered within each bound (seconds):
# the median is exactly 50 ms, the 95th percentile 0.5 s, the 99th 1 s.
WITHIN = {0.005: 0, 0.01: 0.1, 0.025: 0.3, 0.05: 0.5, 0.1: 0.7, 0.25: 0.9, 0.5: 0.95, 1: 0.99, 2.5: 1, 5: 1, 10: 1}
ENVOY_BOUNDS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                   1800000, 3600000)
CERTIFICATE_DAYS_LEFT = 20

# What the overview's panels must show for either namespace:
# {panel title: {legend: value}}.
EXPECTED = {
    "Requests per second, by HTTP status": {"200": 48, "404": 1, "500": 1, "429 rate-limited": RATE_LIMITED},
    "Server errors (5xx), share of requests": {"5xx share": 0.02},
    "Latency at the edge": {"p50": 0.05, "p95": 0.5, "p99": 1.0},
    "Requests and server errors, by route": {
        "bookedbarber-frontend": 39, "bookedbarber-api": 10, "bookedbarber-webhooks": 1,
        "bookedbarber-frontend 5xx": 0, "bookedbarber-api 5xx": 1, "bookedbarber-webhooks 5xx": 0},
    "Availability, last 30 days": {"": 0.98},
    "Error budget left, 30 days": {"": -19},
    "Error budget burn rate": {"1 hour": 20, "6 hours": 20, "1 day": 20, "3 days": 20},
    "Edge proxies answering": {"": 1},
    "Edge configuration": {"": 1},
    "Rate-limited requests": {"": RATE_LIMITED},
}
# Panels whose value moves with the clock: (title, expected, tolerance).
EXPECTED_ABOUT = {"TLS certificate expires in": (CERTIFICATE_DAYS_LEFT * 86400, 600)}


def _bound(x):
    """A bound written as Envoy and Go write it: 0.5, 1, 2.5, 3600000."""
    return f"{x:g}" if x < 1e6 else str(int(x))


def envoy_exposition(t):
    """The Envoy proxy's /stats/prometheus after `t` seconds of the traffic."""
    out = ["# TYPE envoy_cluster_upstream_rq counter"]
    clusters = {}
    for (route, rule, _, code), rate in RESPONSES.items():
        cluster = f"httproute/{ENVOY_NAMESPACE}/{route}/rule/{rule}"
        clusters[cluster] = clusters.get(cluster, 0) + rate
        out.append(f'envoy_cluster_upstream_rq{{envoy_response_code="{code}",envoy_cluster_name="{cluster}"}} '
                   f"{rate * t}")
    # Envoy's own cluster (Prometheus' scrapes of this page) and another app's route.
    out.append(f'envoy_cluster_upstream_rq{{envoy_response_code="200",envoy_cluster_name="prometheus_stats"}} {t}')
    out.append(f'envoy_cluster_upstream_rq{{envoy_response_code="502",'
               f'envoy_cluster_name="httproute/{ENVOY_NAMESPACE}/grafana/rule/0"}} {5 * t}')
    out.append("# TYPE envoy_http_local_rate_limit_enforced counter")
    out.append(f'envoy_http_local_rate_limit_enforced{{envoy_local_http_ratelimit_prefix="http_local_rate_limiter"}} '
               f"{RATE_LIMITED * t}")
    out.append("# TYPE envoy_control_plane_connected_state gauge")
    out.append("envoy_control_plane_connected_state{} 1")
    out.append("# TYPE envoy_cluster_upstream_rq_time histogram")
    for cluster, rate in clusters.items():
        count = rate * t
        for ms in ENVOY_BOUNDS_MS:
            share = next((w for b, w in sorted(WITHIN.items(), reverse=True) if b * 1000 <= ms), 0)
            share = 1 if ms > 10000 else share
            out.append(f'envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="{cluster}",le="{_bound(ms)}"}} '
                       f"{share * count}")
        out.append(f'envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="{cluster}",le="+Inf"}} {count}')
        out.append(f'envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name="{cluster}"}} {90 * count}')
        out.append(f'envoy_cluster_upstream_rq_time_count{{envoy_cluster_name="{cluster}"}} {count}')
    return out


def nginx_exposition(t):
    """The ingress-nginx controller's /metrics after `t` seconds of the traffic."""
    const = ('controller_class="k8s.io/ingress-nginx",controller_namespace="ingress-nginx",'
             'controller_pod="ingress-nginx-controller-6d9f7c8b4-x2x5q"')

    def labels(route, path, status):
        host = "bookedbarber.example.com" if route == "bookedbarber-frontend" else "api.bookedbarber.example.com"
        service = "bookedbarber-frontend" if path == "/" else "bookedbarber-backend"
        return (f'{const},host="{host}",ingress="{route}",method="GET",namespace="{NGINX_NAMESPACE}",'
                f'path="{path}",service="{service}",status="{status}"')

    rows = dict(RESPONSES)
    rows[("bookedbarber-api", 0, "/api", "429")] = RATE_LIMITED
    out = ["# TYPE nginx_ingress_controller_requests counter"]
    for (route, _, path, status), rate in rows.items():
        out.append(f"nginx_ingress_controller_requests{{{labels(route, path, status)}}} {rate * t}")
    out.append("# TYPE nginx_ingress_controller_request_duration_seconds histogram")
    for (route, _, path, status), rate in rows.items():
        count = rate * t
        for bound, share in WITHIN.items():
            # The 429s are answered at once; the rules leave them out anyway.
            share = 1 if status == "429" else share
            out.append(f'nginx_ingress_controller_request_duration_seconds_bucket{{{labels(route, path, status)},'
                       f'le="{_bound(bound)}"}} {share * count}')
        out.append(f'nginx_ingress_controller_request_duration_seconds_bucket{{{labels(route, path, status)},'
                   f'le="+Inf"}} {count}')
        out.append(f"nginx_ingress_controller_request_duration_seconds_sum{{{labels(route, path, status)}}} "
                   f"{0.09 * count}")
        out.append(f"nginx_ingress_controller_request_duration_seconds_count{{{labels(route, path, status)}}} {count}")
    out.append("# TYPE nginx_ingress_controller_config_last_reload_successful gauge")
    out.append(f"nginx_ingress_controller_config_last_reload_successful{{{const}}} 1")
    return out


def cert_manager_exposition(now):
    """cert-manager's certificate metric for both namespaces' bookedbarber-tls."""
    out = ["# TYPE certmanager_certificate_expiration_timestamp_seconds gauge"]
    for namespace in (ENVOY_NAMESPACE, NGINX_NAMESPACE):
        out.append(f'certmanager_certificate_expiration_timestamp_seconds{{issuer_group="cert-manager.io",'
                   f'issuer_kind="ClusterIssuer",issuer_name="letsencrypt-prod",name="bookedbarber-tls",'
                   f'namespace="{namespace}"}} {now + CERTIFICATE_DAYS_LEFT * 86400:.0f}')
    return out


# The target labels each edge's monitor gives its scrapes (servicemonitors/edge).
ENVOY_TARGET = {"namespace": "envoy-gateway-system", "container": "envoy", "edge": "envoy-gateway",
                "gateway": "bookedbarber", "gateway_namespace": ENVOY_NAMESPACE,
                "pod": "envoy-bookedbarber-bookedbarber-4c8b2d1e-6f7d9b8c5-x2x5q"}
NGINX_TARGET = {"namespace": "ingress-nginx", "container": "controller", "edge": "ingress-nginx",
                "pod": "ingress-nginx-controller-6d9f7c8b4-x2x5q"}
CERT_MANAGER_TARGET = {"namespace": "cert-manager", "container": "cert-manager-controller"}

# Ten minutes of the traffic before Prometheus starts: the panels' rates are
# over 5 minutes, and rate() divides by its whole window, so a fresh
# Prometheus would show a fraction of every figure until it has 5 minutes.
HISTORY_SECONDS = 600
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


def scraped(lines, target_labels, honor):
    """(name, labels) -> value of an exposition as Prometheus stores it: the
    target's labels added, a series' own label winning (honor_labels) or
    renamed exported_<label> on a clash."""
    out = {}
    for line in lines:
        m = SAMPLE.match(line)
        if not m:
            continue
        own = dict(LABEL.findall(m.group(2) or ""))
        labels = dict(target_labels)
        for k, v in own.items():
            if k in labels and not honor:
                labels[f"exported_{k}"] = v
            else:
                labels[k] = v
        out[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(3))
    return out


def history_openmetrics(targets, start, end, step=5):
    """OpenMetrics text (for promtool tsdb create-blocks-from openmetrics) of the
    edges' series from `start` to `end` (Unix seconds, counters at 0 at
    `start`): targets is [(exposition function, target labels, honor_labels)]."""
    series = {}
    for ts in range(int(start) + step, int(end), step):
        for render, labels, honor in targets:
            for key, value in scraped(render(ts - start), labels, honor).items():
                series.setdefault(key, []).append((ts, value))
    lines = []
    for (name, labels), points in sorted(series.items()):
        text = ",".join(f'{k}="{v}"' for k, v in labels)
        lines += [f"{name}{{{text}}} {v} {ts}" for ts, v in points]
    return "\n".join(lines) + "\n# EOF\n"
