"""BookedBarber overview: is the service up, are people booking and paying, is anything on fire."""
from .common import (BAD, ERROR_BUDGET, NAMESPACE, OK, PODS, SLO_TARGET, WARN, Board, Q, agg, bargauge_panel,
                     sel, stat_panel, steps, table_panel, timeseries_panel, up_down, value_text)

BURN = f"/ {ERROR_BUDGET}"
FAILED = agg("sum", "namespace_name:celery_task_failed:rate5m", base=NAMESPACE)
SUCCEEDED = agg("sum", "namespace_name:celery_task_succeeded:rate5m", base=NAMESPACE)
BOOKINGS_1H = sel("namespace:bookedbarber_appointments_created:increase1h", base=NAMESPACE)
CAPTURED_1H = sel("namespace:bookedbarber_payments_captured_usd:increase1h", base=NAMESPACE)
# The edge's normalised series (alerts/rules/edge-*.yaml), whichever edge
# serves the namespace: these panels read nothing of an edge's own metrics.
RESPONSES = sel("namespace_route_code:bookedbarber_http_responses:rate5m", base=NAMESPACE)
RATE_LIMITED = sel("namespace:bookedbarber_http_rate_limited:rate5m", base=NAMESPACE)
LATENCY = sel("namespace_le:bookedbarber_http_request_duration_seconds_bucket:rate5m", base=NAMESPACE)
# The edge's own health, from each edge's monitors (servicemonitors/edge):
# the Envoy proxies of the namespace's Gateway, or the ingress-nginx
# controller that serves every namespace.
ENVOY = 'edge="envoy-gateway", gateway_namespace="$namespace"'
ENVOY_UP = f'{ENVOY}, container="envoy"'
NGINX_UP = 'edge="ingress-nginx", container="controller"'


def _slo(window):
    return sel(f"namespace:bookedbarber_slo_errors_per_request:ratio_rate{window}", base=NAMESPACE)


def _latency(q):
    return Q(f"histogram_quantile({q}, sum by (le) ({LATENCY}))", f"p{round(q * 100)}")


def _up(job_label, legend):
    return Q(f'max(up{{namespace="$namespace", job="{job_label}"}})', legend)


def board() -> Board:
    b = Board("bookedbarber-overview", "BookedBarber overview",
              "Is BookedBarber serving its users, are people booking and paying, and is anything on fire? "
              "One screen for everyone; the other BookedBarber dashboards have the detail.",
              tags=["overview"])
    b.row(
        "Service level: the requests BookedBarber answers at its edge",
        stat_panel(
            "Availability, last 30 days",
            f"Share of the requests BookedBarber answered at its public edge (the Gateway, or the legacy "
            f"Ingresses) without a server error (5xx) over the last 30 days; rate-limited requests (429) count "
            f"neither way. The objective (SLO) is {SLO_TARGET:.1%}: green at or above it, red below.",
            [Q(f"1 - {_slo('30d')}")], "percentunit", decimals=3,
            thresholds=steps(BAD, (SLO_TARGET, OK)), runbooks=["BookedBarberErrorBudgetBurn"]),
        stat_panel(
            "Error budget left, 30 days",
            f"The SLO allows {ERROR_BUDGET:.1%} of requests to fail over 30 days: that allowance is the error "
            "budget. 100 % means no 5xx at all, 0 % means the budget is spent and the SLO is missed; below 0 the "
            "SLO is broken by that much.",
            [Q(f"1 - {_slo('30d')} {BURN}")], "percentunit", decimals=1,
            thresholds=steps(BAD, (0, WARN), (0.25, OK)), runbooks=["BookedBarberErrorBudgetBurn"]),
        timeseries_panel(
            "Error budget burn rate",
            "How fast the error budget is being spent: 1 means at exactly the rate that uses it up in 30 days. "
            "The burn-rate alerts page at 14.4 over 1 hour (2 % of the budget gone in an hour) and 6 over 6 hours, "
            "and open a ticket at 3 over a day and 1 over three days.",
            [Q(f"{_slo('1h')} {BURN}", "1 hour"), Q(f"{_slo('6h')} {BURN}", "6 hours"),
             Q(f"{_slo('1d')} {BURN}", "1 day"), Q(f"{_slo('3d')} {BURN}", "3 days")],
            "suffix:×", w=16, h=4, thresholds=steps(OK, (6, WARN), (14.4, BAD)), threshold_lines=True,
            runbooks=["BookedBarberErrorBudgetBurn"]),
    )
    b.row(
        "Edge: golden signals",
        timeseries_panel(
            "Requests per second, by HTTP status",
            "Responses BookedBarber's edge gave (frontend, API and payment webhooks together), per second, by "
            "status code over the last 5 minutes, and apart from them the requests its rate limits turned away "
            "with 429 Too Many Requests (with the service's own 429s).",
            [Q(f"sum by (code) ({RESPONSES})", "{{code}}"), Q(f"sum({RATE_LIMITED})", "429 rate-limited")],
            "reqps", w=6, stack=True, runbooks=["BookedBarberSloSourceMissing"]),
        timeseries_panel(
            "Server errors (5xx), share of requests",
            "Share of the requests answered with a 5xx status, over the last 5 minutes (the SLO's recording "
            f"rule). Sustained above {ERROR_BUDGET:.1%} it eats into the error budget.",
            [Q(_slo("5m"), "5xx share")], "percentunit", w=6,
            thresholds=steps(OK, (ERROR_BUDGET, WARN), (0.05, BAD)), threshold_lines=True,
            runbooks=["BookedBarberHttpErrorsHigh"]),
        timeseries_panel(
            "Latency at the edge",
            "Time from a request reaching the edge to its response, over the last 5 minutes: median, 95th and "
            "99th percentile, interpolated within the histogram's bounds (5 ms to 10 s).",
            [_latency(0.5), _latency(0.95), _latency(0.99)], "s", w=6,
            thresholds=steps(OK, (1, WARN), (2.5, BAD)), runbooks=["BookedBarberHttpLatencyHigh"]),
        timeseries_panel(
            "Requests and server errors, by route",
            "Requests answered per second on each route of the edge (bookedbarber-frontend: the site; "
            "bookedbarber-api: the API and health check; bookedbarber-webhooks: the payment provider's "
            "webhooks), and their 5xx per second.",
            [Q(sel("namespace_route:bookedbarber_http_requests:rate5m", base=NAMESPACE), "{{route}}"),
             Q(sel("namespace_route:bookedbarber_http_errors:rate5m", base=NAMESPACE), "{{route}} 5xx")],
            "reqps", w=6),
    )
    b.row(
        "Edge: its own health",
        stat_panel(
            "Edge proxies answering",
            "Share of the edge's proxies that answer Prometheus: the Envoy proxies of this namespace's Gateway, "
            "or the ingress-nginx controller pods (shared by every namespace). 0 % means the site is down.",
            [Q(f"(sum(up{{{ENVOY_UP}}}) / count(up{{{ENVOY_UP}}})) or (sum(up{{{NGINX_UP}}}) / count(up{{{NGINX_UP}}}))")],
            "percentunit", w=6, decimals=0, thresholds=steps(BAD, (0.5, WARN), (1, OK)),
            runbooks=["BookedBarberEdgeDown"]),
        stat_panel(
            "Edge configuration",
            "Whether the edge runs its latest configuration: the Envoy proxies connected to Envoy Gateway's "
            "controller, or ingress-nginx's last reload successful. STALE: route, limit and certificate changes "
            "are not in effect.",
            [Q(f"min(envoy_control_plane_connected_state{{{ENVOY}}}) "
               'or min(nginx_ingress_controller_config_last_reload_successful{edge="ingress-nginx"})')],
            "none", w=6, mappings=value_text({0: ("STALE", BAD), 1: ("APPLIED", OK)}),
            thresholds=steps(BAD, (1, OK)),
            runbooks=["BookedBarberEdgeConfigFailing", "BookedBarberEdgeControllerDown"]),
        stat_panel(
            "TLS certificate expires in",
            "Time left before the edge's certificate (cert-manager's bookedbarber-tls for this namespace) expires. "
            "cert-manager renews it 30 days ahead: under 14 days renewal is failing.",
            [Q(f"min({sel('namespace_name:certmanager_certificate_expiration_timestamp_seconds:min', base=NAMESPACE)})"
               " - time()")],
            "s", w=6, thresholds=steps(BAD, (3 * 86400, WARN), (14 * 86400, OK)),
            runbooks=["BookedBarberEdgeCertificateExpiring"]),
        stat_panel(
            "Rate-limited requests",
            "Requests per second answered 429 Too Many Requests over the last 5 minutes, by the edge's per-client "
            "limits or the service itself. A client hitting the limits shows here, not as errors.",
            [Q(f"sum({RATE_LIMITED})")], "reqps", w=6, graph=True, thresholds=steps(OK, (10, WARN))),
    )
    b.row(
        "Business: now and the same time last week",
        stat_panel(
            "Bookings in the last hour",
            "Bookings created in the last hour (registered clients and guests), next to the same hour one week "
            "ago. An alert fires when bookings fall below half of last week's.",
            [Q(BOOKINGS_1H, "last hour"), Q(f"{BOOKINGS_1H} offset 1w", "same hour last week")],
            "short", w=6, decimals=0, graph=True, names=True,
            runbooks=["BookedBarberBookingsDrop"]),
        stat_panel(
            "Money captured in the last hour",
            "US dollars captured from card payments in the last hour (before refunds), next to the same hour one "
            "week ago.",
            [Q(CAPTURED_1H, "last hour"), Q(f"{CAPTURED_1H} offset 1w", "same hour last week")],
            "currencyUSD", w=6, decimals=0, graph=True, names=True),
        stat_panel(
            "Booking conversion",
            "Of the bookings created in the last hour, the share that is now confirmed, in progress or completed "
            "(the rest are still pending, scheduled, cancelled…).",
            [Q(sel("namespace:bookedbarber_booking_conversion:ratio", base=NAMESPACE))], "percentunit",
            decimals=0, thresholds=steps(WARN, (0.2, OK))),
        stat_panel(
            "Payment success",
            "Of the payments that completed or failed in the last 15 minutes, the share that completed. Card "
            "declines are normal; a sharp fall points at the payment provider or our integration.",
            [Q(sel("namespace:bookedbarber_payment_success:ratio", base=NAMESPACE))], "percentunit", decimals=0,
            thresholds=steps(BAD, (0.75, WARN), (0.9, OK)), runbooks=["BookedBarberPaymentFailureRatioHigh"]),
        stat_panel(
            "Upcoming bookings, next 24 h",
            "Bookings that start in the next 24 hours and are still active (not cancelled or finished).",
            [Q(agg("sum", "bookedbarber_appointments_upcoming"))], "short", decimals=0),
    )
    b.row(
        "Background work: Celery",
        stat_panel(
            "Messages waiting in queues",
            "Celery tasks waiting in the Redis broker for a worker, all queues together. A backlog that keeps "
            "growing means the workers cannot keep up (or none is consuming).",
            [Q(agg("sum", "celery_queue_length"))], "short", w=6, decimals=0, graph=True,
            thresholds=steps(OK, (50, WARN), (500, BAD)), runbooks=["BookedBarberCeleryQueueBacklog"]),
        stat_panel(
            "Oldest waiting message",
            "How long the oldest message in any queue has been waiting. Reminders and urgent notifications "
            "lose their point after a few minutes.",
            [Q(agg("max", "celery_queue_oldest_message_age_seconds"))], "s", w=6, graph=True,
            thresholds=steps(OK, (120, WARN), (1800, BAD)), runbooks=["BookedBarberCeleryQueueLatencyHigh"]),
        stat_panel(
            "Workers online",
            "Celery workers whose heartbeats arrive on time. 0 means nothing runs background tasks "
            "(notifications, payouts, reports).",
            [Q(agg("sum", "celery_worker_up"))], "short", w=6, decimals=0,
            thresholds=steps(BAD, (1, OK)), runbooks=["BookedBarberCeleryWorkerDown"]),
        stat_panel(
            "Task failure ratio, 5 min",
            "Share of finished Celery tasks that failed over the last 5 minutes, all task kinds together. The "
            "Celery dashboard breaks it down by task.",
            [Q(f"{FAILED} / ({SUCCEEDED} + {FAILED})")],
            "percentunit", w=6, decimals=1, graph=True, thresholds=steps(OK, (0.05, WARN), (0.1, BAD)),
            runbooks=["BookedBarberCeleryTaskFailureRatioHigh"]),
    )
    b.row(
        "Components",
        stat_panel(
            "Component health",
            "UP or DOWN for each part: backend, frontend and exporter as Prometheus scrapes them; PostgreSQL and "
            "Redis as the exporter reaches them; the Celery event stream the exporter follows; and whether every "
            "exporter collector (PostgreSQL, business queries, Redis, Celery queues) succeeded last time. "
            "'No data' for backend or frontend means Prometheus finds nothing to scrape.",
            [_up("bookedbarber-backend", "backend"), _up("bookedbarber-frontend", "frontend"),
             Q(agg("max", "up"), "exporter"), Q(agg("max", "pg_up"), "PostgreSQL"),
             Q(agg("max", "redis_up"), "Redis"), Q(agg("max", "celery_event_stream_up"), "Celery events"),
             Q(agg("min", "bookedbarber_exporter_collector_up"), "collectors")],
            "none", w=24, h=4, mappings=up_down(), thresholds=steps(BAD, (1, OK)), names=True,
            color_background=True,
            runbooks=["BookedBarberExporterDown", "BookedBarberPostgresDown", "BookedBarberRedisDown",
                      "BookedBarberCeleryEventStreamDown", "BookedBarberExporterCollectorFailing"]),
        table_panel(
            "Firing alerts",
            "Prometheus alerts firing now for this namespace, with their severity; each alert's runbook link is "
            "in its annotations (Alertmanager, or Prometheus' Alerts page).",
            Q('sum by (alertname, severity) (ALERTS{alertstate="firing", namespace="$namespace"})', table=True),
            w=24, h=6, hide=("Time", "Value")),
    )
    b.row(
        "Kubernetes: saturation of the bundle's pods",
        timeseries_panel(
            "CPU by pod",
            "CPU cores each BookedBarber pod uses (kubelet/cAdvisor).",
            [Q(f'sum by (pod) (rate(container_cpu_usage_seconds_total{{{PODS}, container!=""}}[$__rate_interval]))',
               "{{pod}}")], "short", w=8),
        timeseries_panel(
            "Memory against limit",
            "Working-set memory of each container as a share of its memory limit. At 100 % the kernel kills the "
            "container (OOMKilled).",
            [Q(f'max by (pod, container) (container_memory_working_set_bytes{{{PODS}, container!=""}}) '
               f'/ max by (pod, container) (kube_pod_container_resource_limits{{{PODS}, resource="memory"}})',
               "{{pod}} {{container}}")],
            "percentunit", w=8, max=1, thresholds=steps(OK, (0.8, WARN), (0.9, BAD)), threshold_lines=True,
            runbooks=["BookedBarberContainerMemoryNearLimit"]),
        bargauge_panel(
            "Container restarts, last hour",
            "Restarts of each BookedBarber pod's containers in the last hour. Repeated restarts are a crash loop.",
            [Q(f"sum by (pod) (increase(kube_pod_container_status_restarts_total{{{PODS}}}[1h]))", "{{pod}}")],
            "short", w=8, decimals=0, thresholds=steps(OK, (1, WARN), (3, BAD)),
            runbooks=["BookedBarberPodCrashLooping"]),
        bargauge_panel(
            "Available replicas",
            "Available replicas of each BookedBarber Deployment as a share of the replicas it asks for.",
            [Q(f'max by (deployment) (kube_deployment_status_replicas_available{{namespace="$namespace", '
               f'deployment=~"bookedbarber-.+"}}) / max by (deployment) (kube_deployment_spec_replicas'
               f'{{namespace="$namespace", deployment=~"bookedbarber-.+"}})', "{{deployment}}")],
            "percentunit", max=1, thresholds=steps(BAD, (0.5, WARN), (1, OK)),
            runbooks=["BookedBarberDeploymentReplicasUnavailable"]),
        bargauge_panel(
            "Autoscalers: replicas against maximum",
            "Current replicas of each HorizontalPodAutoscaler as a share of its maximum. At 100 % for long it "
            "cannot add capacity any more.",
            [Q(f'max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas'
               f'{{namespace="$namespace", horizontalpodautoscaler=~"bookedbarber-.+"}}) / max by '
               f'(horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_max_replicas{{namespace="$namespace",'
               f' horizontalpodautoscaler=~"bookedbarber-.+"}})', "{{horizontalpodautoscaler}}")],
            "percentunit", max=1, thresholds=steps(OK, (0.8, WARN), (1, BAD)), runbooks=["BookedBarberHpaMaxedOut"]),
        bargauge_panel(
            "Volumes used",
            "How full each BookedBarber PersistentVolumeClaim is (PostgreSQL and Redis data). PostgreSQL stops "
            "accepting writes on a full volume.",
            [Q('max by (persistentvolumeclaim) (kubelet_volume_stats_used_bytes{namespace="$namespace", '
               'persistentvolumeclaim=~"(.+-)?bookedbarber-.+"}) / max by (persistentvolumeclaim) '
               '(kubelet_volume_stats_capacity_bytes{namespace="$namespace", '
               'persistentvolumeclaim=~"(.+-)?bookedbarber-.+"})', "{{persistentvolumeclaim}}")],
            "percentunit", max=1, thresholds=steps(OK, (0.85, WARN), (0.95, BAD)),
            runbooks=["BookedBarberPvcFillingUp"]),
    )
    return b

