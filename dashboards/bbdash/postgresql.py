"""PostgreSQL: availability, connections, throughput, cache, locks and size, as the exporter reads them."""
from .common import (BAD, INFO, NAMESPACE, OK, WARN, Board, Q, agg, label_variable, rate, sel, standard_variables, stat_panel,
                     steps, timeseries_panel, up_down, value_text)

DB = 'datname=~"$datname"'


CONNECTION_LIMIT = f"max({sel('pg_connections_max')} - {sel('pg_connections_reserved')})"


def board() -> Board:
    variables = standard_variables() + [
        label_variable("datname", "Database", "pg_database_size_bytes",
                       "Databases of the PostgreSQL server (templates and databases that refuse connections "
                       "are not listed)."),
    ]
    b = Board("bookedbarber-postgresql", "BookedBarber PostgreSQL",
              "The PostgreSQL server behind BookedBarber, read by bookedbarber-exporter from pg_stat_activity, "
              "pg_stat_database, pg_locks and the replication functions: is it up, how close to its connection "
              "limit, how busy, how healthy its cache, who holds locks, how big it grows.",
              variables=variables, tags=["postgresql"])
    commits = rate("pg_stat_database_xact_commit_total", DB, by="datname")
    rollbacks = rate("pg_stat_database_xact_rollback_total", DB, by="datname")
    hits = rate("pg_stat_database_blks_hit_total", DB, by="datname")
    reads = rate("pg_stat_database_blks_read_total", DB, by="datname")
    b.row(
        "Availability and saturation",
        stat_panel(
            "PostgreSQL",
            "Whether the exporter's last read of PostgreSQL succeeded. The exporter uses its own connection for "
            "this, so slow business queries do not turn it DOWN.",
            [Q(agg("max", "pg_up"))], "none", w=3, mappings=up_down(), thresholds=steps(BAD, (1, OK)),
            color_background=True, runbooks=["BookedBarberPostgresDown"]),
        stat_panel(
            "Role",
            "Primary (accepts writes) or replica (in recovery, read-only).",
            [Q(agg("max", "pg_in_recovery"))], "none", w=3,
            mappings=value_text({0: ("primary", INFO), 1: ("replica", INFO)})),
        stat_panel(
            "Connections used",
            "Client connections to all databases as a share of what ordinary roles may open "
            "(max_connections minus superuser_reserved_connections). At 100 % new connections are refused.",
            [Q(f"sum({sel('pg_connections')}) / {CONNECTION_LIMIT}")], "percentunit", decimals=0, graph=True,
            thresholds=steps(OK, (0.8, WARN), (0.9, BAD)), runbooks=["BookedBarberPostgresConnectionsNearLimit"]),
        stat_panel(
            "Longest open transaction",
            "Age of the oldest open transaction in the selected databases. Long transactions hold locks and stop "
            "VACUUM from cleaning up.",
            [Q(agg("max", "pg_longest_transaction_seconds", DB))], "s", graph=True,
            thresholds=steps(OK, (300, WARN), (900, BAD)), runbooks=["BookedBarberPostgresLongRunningTransaction"]),
        stat_panel(
            "Replication lag",
            "On a replica, how far replay is behind the primary; 0 on a primary or a replica that is caught up.",
            [Q(agg("max", "pg_replication_lag_seconds"))], "s", graph=True,
            thresholds=steps(OK, (30, WARN), (60, BAD)), runbooks=["BookedBarberPostgresReplicationLag"]),
        stat_panel(
            "Sessions visible to the exporter",
            "'all' when the exporter's role has pg_monitor (or is superuser) and so sees every session; "
            "'own only' when connection counts and the longest transaction only cover its own sessions.",
            [Q(agg("min", "bookedbarber_exporter_postgres_pg_monitor"))], "none", w=3,
            mappings=value_text({0: ("own only", WARN), 1: ("all", OK)}),
            runbooks=["BookedBarberExporterPgMonitorMissing"]),
        stat_panel(
            "Last successful backup",
            "Time since the backup CronJob bookedbarber-postgres-backup last completed (kube-state-metrics). "
            "It runs daily; an alert fires after 26 hours.",
            [Q(f"time() - max(kube_cronjob_status_last_successful_time{{{NAMESPACE}, "
               'cronjob="bookedbarber-postgres-backup"})')], "s", w=3,
            thresholds=steps(OK, (26 * 3600, BAD)), runbooks=["BookedBarberPostgresBackupTooOld"]),
    )
    b.row(
        "Connections",
        timeseries_panel(
            "Connections by state",
            "Client connections by state: active (running a query), idle, idle in transaction (holding a "
            "transaction open between queries: often an application bug), and so on.",
            [Q(agg("sum", "pg_connections", DB, by="state"), "{{state}}")], "short", stack=True, decimals=0),
        timeseries_panel(
            "Connections by database, and the limit",
            "Client connections per database, with the server's limit for ordinary roles.",
            [Q(agg("sum", "pg_connections", DB, by="datname"), "{{datname}}"), Q(CONNECTION_LIMIT, "limit")],
            "short", decimals=0, runbooks=["BookedBarberPostgresConnectionsNearLimit"]),
    )
    b.row(
        "Throughput and errors",
        timeseries_panel(
            "Transactions per second",
            "Committed and rolled-back transactions per second, by database.",
            [Q(commits, "{{datname}} commits"), Q(rollbacks, "{{datname}} rollbacks")], "ops", w=8),
        timeseries_panel(
            "Rollback share",
            "Share of transactions rolled back, by database. Applications roll back on errors: a rise means "
            "failing requests or conflicts.",
            [Q(f"{rollbacks} / ({commits} + {rollbacks})", "{{datname}}")], "percentunit", w=8,
            thresholds=steps(OK, (0.05, WARN), (0.2, BAD))),
        timeseries_panel(
            "Deadlocks in 15 minutes",
            "Deadlocks PostgreSQL detected and resolved by cancelling a transaction, over the last 15 minutes, by "
            "database. An alert fires above 2.",
            [Q(rate("pg_stat_database_deadlocks_total", DB, by="datname", window="15m", fn="increase"),
               "{{datname}}")],
            "short", w=8, decimals=0, thresholds=steps(OK, (1, WARN), (3, BAD)),
            runbooks=["BookedBarberPostgresDeadlocks"]),
    )
    b.row(
        "Cache, locks and size",
        timeseries_panel(
            "Buffer cache hit ratio",
            "Share of block reads served from PostgreSQL's shared buffers rather than from disk (or the OS "
            "cache), by database. An OLTP database like BookedBarber's should stay above 99 %.",
            [Q(f"{hits} / ({hits} + {reads})", "{{datname}}")], "percentunit", w=6, min=None, max=1,
            thresholds=steps(BAD, (0.9, WARN), (0.99, OK)), runbooks=["BookedBarberPostgresCacheHitRatioLow"]),
        timeseries_panel(
            "Locks by mode",
            "Locks held or awaited in the selected databases, by lock mode. Exclusive modes block other "
            "sessions.",
            [Q(agg("sum", "pg_locks", DB, by="mode"), "{{mode}}")], "short", w=6, stack=True, decimals=0),
        timeseries_panel(
            "Database size",
            "Size on disk of each database, indexes and TOAST included.",
            [Q(agg("sum", "pg_database_size_bytes", DB, by="datname"), "{{datname}}")], "bytes", w=6),
        timeseries_panel(
            "Longest open transaction, by database",
            "Age of the oldest open transaction in each database (the exporter's own excluded).",
            [Q(agg("max", "pg_longest_transaction_seconds", DB, by="datname"), "{{datname}}")], "s", w=6,
            thresholds=steps(OK, (300, WARN), (900, BAD)), threshold_lines=True,
            runbooks=["BookedBarberPostgresLongRunningTransaction"]),
    )
    return b
