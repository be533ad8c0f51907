"""bookedbarber-exporter itself: is it scraped, do its collectors succeed and stay fresh, what it costs."""
from .celery import event_stream_panels
from .common import (BAD, OK, WARN, Board, Q, agg, label_variable, rate, sel, standard_variables, stat_panel,
                     steps, table_panel, timeseries_panel, up_down, value_text)

COLLECTOR = 'collector=~"$collector"'
LAST_SUCCESS = agg("max", "bookedbarber_exporter_collector_last_success_timestamp_seconds", COLLECTOR, by="collector")


def board() -> Board:
    variables = standard_variables() + [
        label_variable("collector", "Collector", "bookedbarber_exporter_collector_up",
                       "The exporter's collectors: postgres, redis, celery_queues, and business_<query> for each "
                       "business query."),
    ]
    b = Board("bookedbarber-exporter", "BookedBarber exporter",
              "Health of bookedbarber-exporter itself: is Prometheus scraping it, does each collector succeed "
              "and stay fresh, are business numbers trustworthy, and what the process costs. Look here when "
              "another BookedBarber dashboard shows gaps or odd values.",
              variables=variables, tags=["exporter"])
    b.row(
        "Health",
        stat_panel(
            "Scraped",
            "Whether Prometheus' last scrape of the exporter succeeded. 'No data' means Prometheus has no "
            "target: check the ServiceMonitor and its release label.",
            [Q(agg("min", "up"))], "none", mappings=up_down(), thresholds=steps(BAD, (1, OK)),
            color_background=True, runbooks=["BookedBarberExporterDown", "BookedBarberExporterNotScraped"]),
        stat_panel(
            "Collectors failing",
            "Collectors whose last collection failed or timed out (the table below says which). 0 when all "
            "succeed.",
            [Q(f"sum(1 - {sel('bookedbarber_exporter_collector_up')})")], "short", decimals=0,
            thresholds=steps(OK, (1, BAD)), runbooks=["BookedBarberExporterCollectorFailing"]),
        stat_panel(
            "Version",
            "The exporter's version and the revision it was built from.",
            [Q(agg("max", "bookedbarber_exporter_build_info", by="version, revision"),
               "{{version}} ({{revision}})")], "none", names=True, mappings=value_text({1: ("running", OK)})),
        stat_panel(
            "Uptime",
            "Time since the exporter process started. Business counters restart from the database's state after "
            "a restart; frequent restarts show here.",
            [Q(f"time() - {agg('max', 'process_start_time_seconds')}")], "s", thresholds=steps(WARN, (600, OK))),
        stat_panel(
            "PostgreSQL sessions visible",
            "'all' when the exporter's database role has pg_monitor (or is superuser); 'own only' when "
            "connection counts and the longest transaction only cover its own sessions.",
            [Q(agg("min", "bookedbarber_exporter_postgres_pg_monitor"))], "none",
            mappings=value_text({0: ("own only", WARN), 1: ("all", OK)}),
            runbooks=["BookedBarberExporterPgMonitorMissing"]),
        stat_panel(
            "Business series dropped",
            "Rows business queries returned beyond the per-query series cap in their last collection, and "
            "which the exporter therefore did not serve. 0 normally: a label with too many values.",
            [Q(agg("sum", "bookedbarber_exporter_series_dropped"))], "short", decimals=0,
            thresholds=steps(OK, (1, BAD)), runbooks=["BookedBarberExporterSeriesDropped"]),
    )
    b.row(
        "Collectors",
        table_panel(
            "Collector status",
            "Each collector with the outcome of its last collection.",
            Q(agg("min", "bookedbarber_exporter_collector_up", COLLECTOR, by="collector"), table=True), "none",
            w=8, h=10, rename={"Value": "last collection"}, mappings=up_down("ok", "failing"),
            runbooks=["BookedBarberExporterCollectorFailing"]),
        timeseries_panel(
            "Collection duration, by collector",
            "How long each collector's last collection took. A collection that reaches its timeout fails; "
            "business queries slow down as tables grow.",
            [Q(agg("max", "bookedbarber_exporter_collector_duration_seconds", COLLECTOR, by="collector"),
               "{{collector}}")], "s", w=16, h=10, legend_table=True),
        timeseries_panel(
            "Time since last success, by collector",
            "How old the data each collector serves is. It grows when a collector keeps failing; an alert "
            "fires at 15 minutes.",
            [Q(f"time() - {LAST_SUCCESS}", "{{collector}}")], "s",
            thresholds=steps(OK, (300, WARN), (900, BAD)), threshold_lines=True,
            runbooks=["BookedBarberExporterCollectorStale"]),
        timeseries_panel(
            "Collection errors per 5 minutes, by collector",
            "Failed or timed-out collections per collector over the last 5 minutes. The exporter's log says why "
            "(logged once per change of state).",
            [Q(rate("bookedbarber_exporter_collector_errors_total", COLLECTOR, by="collector", window="5m",
                    fn="increase"), "{{collector}}")], "short", decimals=0,
            runbooks=["BookedBarberExporterCollectorFailing"]),
    )
    b.row(
        "Trustworthiness of business counters",
        timeseries_panel(
            "Counter sources that went down, per hour",
            "Times in the last hour a counter's source value went down and the exporter continued the counter "
            "from its previous value instead of letting it reset: business rows deleted or flagged as test data, "
            "PostgreSQL statistics reset, Redis restarted. Occasional ones are harmless; more than two an hour "
            "from a business collector (the alert) means rows are being deleted or rewritten and the business "
            "rates undercount.",
            [Q(rate("bookedbarber_exporter_source_decreases_total", by="collector, metric", window="1h",
                    fn="increase"), "{{collector}} {{metric}}")],
            "short", decimals=0, thresholds=steps(OK, (3, WARN)), threshold_lines=True,
            runbooks=["BookedBarberExporterCounterDecreasing"]),
        timeseries_panel(
            "Series dropped by the cap, by collector",
            "Rows beyond the per-query series cap in each business collector's last collection.",
            [Q(agg("sum", "bookedbarber_exporter_series_dropped", by="collector"), "{{collector}}")], "short",
            decimals=0, runbooks=["BookedBarberExporterSeriesDropped"]),
    )
    b.row(
        "Process",
        timeseries_panel(
            "Resident memory",
            "Memory the exporter process occupies in RAM. It is designed to stay under 20 MB in steady state "
            "and bounded under an event flood.",
            [Q(agg("sum", "process_resident_memory_bytes"), "resident")], "bytes", w=8,
            thresholds=steps(OK, (20e6, WARN), (100e6, BAD)), threshold_lines=True),
        timeseries_panel(
            "CPU",
            "CPU cores the exporter uses (1 = one core busy all the time). Event floods and slow business "
            "queries show here.",
            [Q(rate("process_cpu_seconds_total"), "cpu")], "short", w=8),
        timeseries_panel(
            "Open file descriptors",
            "File descriptors (connections, sockets) the exporter holds open, as a share of its limit.",
            [Q(f"{agg('sum', 'process_open_fds')} / {agg('sum', 'process_max_fds')}", "open fds")], "percentunit",
            w=8, thresholds=steps(OK, (0.8, WARN), (0.9, BAD))),
    )
    b.row("Celery event stream", *event_stream_panels())
    return b
