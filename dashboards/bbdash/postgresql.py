"""PostgreSQL: availability, connections, throughput, cache, locks and size; query performance, table
health and vacuum, checkpoints and WAL, replication slots, standbys and wraparound, as the exporter reads
them."""
from .common import (BAD, INFO, NAMESPACE, OK, WARN, Board, Q, agg, label_variable, rate, sel, standard_variables,
                     stat_panel, steps, table_panel, timeseries_panel, up_down, value_text)

DB = 'datname=~"$datname"'


CONNECTION_LIMIT = f"max({sel('pg_connections_max')} - {sel('pg_connections_reserved')})"

# pg_stat_statements: statements with series of their own (not the per-database
# rest, queryid="__other__"), by database, role and queryid.
STATEMENT = f'{DB}, queryid!="__other__"'
STATEMENT_KEY = "datname, user, queryid"
TOP_STATEMENTS = 10
STATEMENT_TIME = rate("pg_stat_statements_seconds_total", STATEMENT, by=STATEMENT_KEY)
TOP_BY_TIME = f"topk({TOP_STATEMENTS}, {STATEMENT_TIME})"
# queryid -> normalised text (absent when --postgres.statements.include-query=false
# or the text could not be read).
STATEMENT_TEXT = f"max by (queryid, query) ({sel('pg_stat_statements_query_id')})"


def with_text(expr: str, cut: int = 0) -> str:
    """`expr` (by datname, user, queryid) with the statement's text as label `query` where the
    exporter serves one, cut to `cut` characters for legends; statements without one keep their
    series."""
    joined = f"({expr}) * on (queryid) group_left (query) {STATEMENT_TEXT}"
    if cut:
        joined = f'label_replace({joined}, "query", "$1", "query", "(.{{0,{cut}}}).*")'
    return f"({joined}) or (({expr}) unless on (queryid) {STATEMENT_TEXT})"


# Recording rules of alerts/rules/postgres.yaml.
DEAD_PER_TRIGGER = "namespace_datname_schemaname_relname:pg_dead_tuples_per_autovacuum_trigger:ratio"
LAST_VACUUM = "namespace_datname_schemaname_relname:pg_last_vacuum_timestamp_seconds:max"
REQUESTED_PER_TIMEOUT = "namespace:pg_stat_bgwriter_checkpoints_req:per_checkpoint_timeout_rate30m"

TABLE = "schemaname, relname"
TABLES_NOTE = ("Tables of the database the exporter connects to: BookedBarber's business tables and the largest "
               "others (--postgres.tables, --postgres.tables.limit).")
MAX_WAL_SIZE = f"max({sel('pg_settings_max_wal_size_bytes')})"


def board() -> Board:
    variables = standard_variables() + [
        label_variable("datname", "Database", "pg_database_size_bytes",
                       "Databases of the PostgreSQL server (templates and databases that refuse connections "
                       "are not listed)."),
    ]
    b = Board("bookedbarber-postgresql", "BookedBarber PostgreSQL",
              "The PostgreSQL server behind BookedBarber, read by bookedbarber-exporter from pg_stat_activity, "
              "pg_stat_database, pg_locks, pg_stat_statements, pg_stat_user_tables, the checkpointer's and WAL "
              "statistics, replication slots and pg_stat_replication: is it up, how close to its connection limit, "
              "how busy, which statements cost the most, is vacuum keeping up, are checkpoints and WAL under "
              "control, are standbys and slots keeping up, how far from wraparound.",
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
    b.row(
        "Query performance (pg_stat_statements)",
        stat_panel(
            "pg_stat_statements",
            "Whether the pg_stat_statements extension is installed in the exporter's database and loaded "
            "(shared_preload_libraries). Without it the panels of this row stay empty: CREATE EXTENSION "
            "pg_stat_statements, with the library in shared_preload_libraries (a restart).",
            [Q(agg("max", "pg_stat_statements_available"))], "none", w=4, h=8,
            mappings=value_text({0: ("not installed", WARN), 1: ("on", OK)}), thresholds=steps(WARN, (1, OK))),
        table_panel(
            "Top statements by execution time",
            f"The {TOP_STATEMENTS} statements that spent the most time executing over the dashboard's time range, "
            "with their normalised text (constants replaced by $1, $2…). The exporter follows the top "
            "--postgres.statements.limit statements of each interval; the rest of each database is in the "
            "'Query time per database' panel.",
            Q(with_text(f"topk({TOP_STATEMENTS}, "
                        + rate("pg_stat_statements_seconds_total", STATEMENT, by=STATEMENT_KEY, window="$__range",
                               fn="increase") + ")"), table=True),
            "s", w=20, h=8, rename={"Value": "execution time", "user": "role", "query": "statement"},
            sort_desc="execution time"),
        timeseries_panel(
            "Query time per database",
            "Execution time of all statements per second of wall-clock time, by database: 1 s/s means on "
            "average one statement running at every moment. Exact: statements outside the top ones are "
            "counted too.",
            [Q(rate("pg_stat_statements_seconds_total", DB, by="datname"), "{{datname}}")], "s", w=8),
        timeseries_panel(
            "Mean time of the top statements",
            f"Mean execution time per call of the {TOP_STATEMENTS} statements with the most execution time, over "
            "the last few minutes. A statement whose mean jumps is the one to EXPLAIN.",
            [Q(with_text(f"({STATEMENT_TIME} / {rate('pg_stat_statements_calls_total', STATEMENT, by=STATEMENT_KEY)})"
                         f" and on ({STATEMENT_KEY}) {TOP_BY_TIME}", cut=60), "{{query}} ({{queryid}})")],
            "s", w=8, legend_table=True),
        timeseries_panel(
            "Calls of the top statements",
            f"Executions per second of the {TOP_STATEMENTS} statements with the most execution time. A statement "
            "called far more often than before is an N+1 query or a retry loop.",
            [Q(with_text(f"{rate('pg_stat_statements_calls_total', STATEMENT, by=STATEMENT_KEY)}"
                         f" and on ({STATEMENT_KEY}) {TOP_BY_TIME}", cut=60), "{{query}} ({{queryid}})")],
            "ops", w=8, legend_table=True),
        timeseries_panel(
            "Statement buffer hit ratio, by database",
            "Share of the blocks statements read that were in shared buffers, by database. Low while the "
            "database-wide ratio is fine: a few statements scan more than fits in memory.",
            [Q(f"{rate('pg_stat_statements_shared_blks_hit_total', DB, by='datname')} / "
               f"({rate('pg_stat_statements_shared_blks_hit_total', DB, by='datname')} + "
               f"{rate('pg_stat_statements_shared_blks_read_total', DB, by='datname')})", "{{datname}}")],
            "percentunit", w=24, h=6, min=None, max=1, thresholds=steps(BAD, (0.9, WARN), (0.99, OK))),
    )
    b.row(
        "Tables and vacuum",
        timeseries_panel(
            "Dead rows against autovacuum's trigger",
            "Dead rows of each table over the count at which autovacuum vacuums it (autovacuum_vacuum_threshold + "
            "autovacuum_vacuum_scale_factor × rows): at 1 autovacuum should start; above 2 for half an hour "
            f"it is not keeping up and an alert fires. The 10 highest. {TABLES_NOTE}",
            [Q(f"topk(10, {sel(DEAD_PER_TRIGGER, base=NAMESPACE)})", "{{schemaname}}.{{relname}}")], "none",
            decimals=2, thresholds=steps(OK, (1, WARN), (2, BAD)), threshold_lines=True,
            runbooks=["BookedBarberPostgresDeadTuplesHigh"]),
        table_panel(
            "Last vacuum, by table",
            "When each table was last vacuumed, by autovacuum or by hand, whichever was later; 'never' since "
            f"the statistics began. An alert fires for a table past autovacuum's trigger not vacuumed for 3 days. "
            f"{TABLES_NOTE}",
            Q(f"1000 * {sel(LAST_VACUUM, base=NAMESPACE)}", table=True), "dateTimeFromNow",
            hide=("Time", "namespace"), rename={"Value": "last vacuum"},
            mappings=value_text({0: ("never", BAD)}), runbooks=["BookedBarberPostgresVacuumStale"]),
        timeseries_panel(
            "Dead rows, share of each table",
            f"Dead rows as a share of all rows (live and dead) of each table. Above 20 % the table is bloating. "
            f"{TABLES_NOTE}",
            [Q(f"{agg('max', 'pg_stat_user_tables_n_dead_tup', by=TABLE)} / ({agg('max', 'pg_stat_user_tables_n_live_tup', by=TABLE)}"
               f" + {agg('max', 'pg_stat_user_tables_n_dead_tup', by=TABLE)})", "{{schemaname}}.{{relname}}")],
            "percentunit", w=8, max=1, thresholds=steps(OK, (0.1, WARN), (0.2, BAD))),
        timeseries_panel(
            "Sequential scans' share, by table",
            "Share of each table's scans that read it whole (sequential) rather than through an index. On a "
            f"large table a high share means a missing index. {TABLES_NOTE}",
            [Q(f"{rate('pg_stat_user_tables_seq_scan_total', by=TABLE)} / ({rate('pg_stat_user_tables_seq_scan_total', by=TABLE)}"
               f" + {rate('pg_stat_user_tables_idx_scan_total', by=TABLE)})", "{{schemaname}}.{{relname}}")],
            "percentunit", w=8, max=1, thresholds=steps(OK, (0.5, WARN))),
        timeseries_panel(
            "Rows read by sequential scans",
            "Rows per second that sequential scans read from each table, the 10 highest: the cost of the "
            f"scans in the panel beside. {TABLES_NOTE}",
            [Q(f"topk(10, {rate('pg_stat_user_tables_seq_tup_read_total', by=TABLE)})", "{{schemaname}}.{{relname}}")],
            "short", w=8),
        timeseries_panel(
            "Table and index size",
            f"Size on disk of the 10 largest tables (with TOAST) and of all indexes of each. {TABLES_NOTE}",
            [Q(f"topk(10, {agg('max', 'pg_stat_user_tables_table_size_bytes', by=TABLE)})",
               "{{schemaname}}.{{relname}} table"),
             Q(f"topk(10, {agg('max', 'pg_stat_user_tables_index_size_bytes', by=TABLE)})",
               "{{schemaname}}.{{relname}} indexes")],
            "bytes", w=24, legend_table=True),
    )
    b.row(
        "Checkpoints and WAL",
        timeseries_panel(
            "Checkpoints per minute",
            "Checkpoints started on schedule (checkpoint_timeout) and requested early (WAL reached max_wal_size, "
            "or CHECKPOINT, a base backup). Requested ones should be rare.",
            [Q(f"60 * {rate('pg_stat_bgwriter_checkpoints_timed_total')}", "timed"),
             Q(f"60 * {rate('pg_stat_bgwriter_checkpoints_req_total')}", "requested")],
            "short", w=8, decimals=2, runbooks=["BookedBarberPostgresCheckpointStorm"]),
        stat_panel(
            "Requested checkpoints per checkpoint_timeout",
            "Checkpoints requested early per checkpoint_timeout, averaged over 30 minutes. 0 is ideal; above 2 "
            "for half an hour an alert fires: raise max_wal_size.",
            [Q(f"max({sel(REQUESTED_PER_TIMEOUT, base=NAMESPACE)})")], "none", w=4, h=8, decimals=1, graph=True,
            thresholds=steps(OK, (1, WARN), (2, BAD)), runbooks=["BookedBarberPostgresCheckpointStorm"]),
        timeseries_panel(
            "Checkpoint write and sync time",
            "Share of wall-clock time the checkpointer spent writing dirty buffers (spread over the interval on "
            "purpose by checkpoint_completion_target, so a high share is normal) and waiting on fsync (should "
            "stay near 0: the storage is slow to persist).",
            [Q(rate("pg_stat_bgwriter_checkpoint_write_time_seconds_total"), "writing"),
             Q(rate("pg_stat_bgwriter_checkpoint_sync_time_seconds_total"), "fsync")],
            "percentunit", w=6),
        timeseries_panel(
            "Buffers written, by who",
            "Shared buffers (8 KiB pages) written to disk per second by the checkpointer, the background writer "
            "and query processes themselves. Query processes writing a large share means shared_buffers or the "
            "background writer cannot keep up, and queries wait on writes.",
            [Q(rate("pg_stat_bgwriter_buffers_checkpoint_total"), "checkpointer"),
             Q(rate("pg_stat_bgwriter_buffers_clean_total"), "background writer"),
             Q(rate("pg_stat_bgwriter_buffers_backend_total"), "query processes")],
            "short", w=6, stack=True),
        timeseries_panel(
            "WAL written per second",
            "Write-ahead log generated per second: every change, plus full page images after each checkpoint. "
            "It is what standbys must replay and what fills max_wal_size between checkpoints.",
            [Q(rate("pg_wal_bytes_total"), "WAL")], "Bps", w=12),
        timeseries_panel(
            "pg_wal size and its limits",
            "Size of the WAL files in pg_wal, against max_wal_size (a checkpoint is requested when the WAL since "
            "the last one reaches it) and, when set, max_slot_wal_keep_size (a replication slot holding more is "
            "invalidated). Far above max_wal_size: a replication slot or failing archiving holds WAL.",
            [Q(agg("max", "pg_wal_size_bytes"), "pg_wal"), Q(MAX_WAL_SIZE, "max_wal_size"),
             Q(f"max({sel('pg_settings_max_slot_wal_keep_size_bytes')}) >= 0", "max_slot_wal_keep_size")],
            "bytes", w=12, runbooks=["BookedBarberPostgresReplicationSlotRetainingWal"]),
    )
    b.row(
        "Replication slots, standbys and wraparound",
        timeseries_panel(
            "WAL held by replication slots",
            "WAL each replication slot keeps on the primary's disk for its consumer (a standby, a logical "
            "subscriber). It grows while the consumer is behind or gone; above 2 × max_wal_size an alert fires, "
            "and pages when the slot is unused and above 8 ×. Empty when no slot exists.",
            [Q(agg("max", "pg_replication_slot_retained_wal_bytes", by="slot_name"), "{{slot_name}}"),
             Q(f"2 * {MAX_WAL_SIZE}", "2 × max_wal_size (warning)"),
             Q(f"8 * {MAX_WAL_SIZE}", "8 × max_wal_size (critical if unused)")],
            "bytes", w=12, runbooks=["BookedBarberPostgresReplicationSlotRetainingWal",
                                     "BookedBarberPostgresReplicationSlotLost"]),
        table_panel(
            "Replication slots",
            "Each replication slot: whether a consumer is connected, and its wal_status: reserved (within "
            "max_wal_size), extended (beyond it), unreserved (about to lose WAL it needs), lost (its consumer can "
            "never continue: rebuild it). Empty when no slot exists.",
            Q(f"max by (slot_name, slot_type, wal_status) ({sel('pg_replication_slot_wal_status')} == 1) "
              f"* on (slot_name, slot_type) group_left () "
              f"max by (slot_name, slot_type) ({sel('pg_replication_slot_slot_is_active')})", table=True),
            "none", rename={"Value": "consumer", "slot_name": "slot", "slot_type": "type", "wal_status": "WAL"},
            mappings=value_text({0: ("not connected", WARN), 1: ("connected", OK)}),
            runbooks=["BookedBarberPostgresReplicationSlotLost"]),
        timeseries_panel(
            "Standby replay lag",
            "How long ago the WAL each standby has just replayed was written on the primary (pg_stat_replication "
            "on the primary); 0 once caught up. An alert fires above 5 minutes for 10. Empty without standbys.",
            [Q(agg("max", "pg_stat_replication_replay_lag_seconds", by="application_name, client_addr"),
               "{{application_name}} ({{client_addr}})")],
            "s", thresholds=steps(OK, (60, WARN), (300, BAD)), threshold_lines=True,
            runbooks=["BookedBarberPostgresStandbyLagging"]),
        timeseries_panel(
            "Standby WAL not yet replayed",
            "Bytes of WAL each standby has not replayed yet, whether it has received them or not. An alert "
            "fires above 1 GiB for 10 minutes. Empty without standbys.",
            [Q(agg("max", "pg_stat_replication_pg_wal_lsn_diff", by="application_name, client_addr"),
               "{{application_name}} ({{client_addr}})")],
            "bytes", thresholds=steps(OK, (256 * 2**20, WARN), (2**30, BAD)), threshold_lines=True,
            runbooks=["BookedBarberPostgresStandbyLagging"]),
        timeseries_panel(
            "Transaction ID age, and the freeze limits",
            "Age of each database's oldest unfrozen transaction ID (templates included: the server stops for "
            "whichever reaches the limit first). Autovacuum forces a freezing vacuum at autovacuum_freeze_max_age; "
            "above twice that an alert fires, above 1.2 billion it pages; writes stop at about 2.1 billion.",
            [Q(agg("max", "pg_database_wraparound_age_datfrozenxid", by="datname"), "{{datname}}"),
             Q(f"max({sel('pg_settings_autovacuum_freeze_max_age')})", "autovacuum_freeze_max_age"),
             Q(f"2 * max({sel('pg_settings_autovacuum_freeze_max_age')})", "2 × (warning)")],
            "short", thresholds=steps(OK, (1.2e9, BAD)), threshold_lines=True,
            runbooks=["BookedBarberPostgresWraparoundApproaching", "BookedBarberPostgresVacuumStale"]),
        timeseries_panel(
            "Multixact ID age, and the freeze limits",
            "The same for multixact IDs (row locks shared by several transactions), against "
            "autovacuum_multixact_freeze_max_age.",
            [Q(agg("max", "pg_database_wraparound_age_datminmxid", by="datname"), "{{datname}}"),
             Q(f"max({sel('pg_settings_autovacuum_multixact_freeze_max_age')})",
               "autovacuum_multixact_freeze_max_age"),
             Q(f"2 * max({sel('pg_settings_autovacuum_multixact_freeze_max_age')})", "2 × (warning)")],
            "short", thresholds=steps(OK, (1.2e9, BAD)), threshold_lines=True,
            runbooks=["BookedBarberPostgresWraparoundApproaching"]),
    )
    return b
