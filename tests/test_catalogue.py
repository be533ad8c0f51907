"""docs/metrics.md is the catalogue of record: what the real exporter serves,
against the demo database and a real Celery worker, must be exactly what it
lists (types included), so alerts and dashboards can trust it."""
import re
import time

from support.tools import ROOT

# PostgreSQL families that exist only in conditions the shared server (and
# so the demo) cannot have, each with the condition. The postgres_depth_stack
# fixture (tests/conftest.py) creates them all on a throwaway cluster; the
# alerts and dashboards that read them are checked against it.
CONDITIONAL_POSTGRES = {
    **{name: "only with pg_stat_statements installed and preloaded" for name in (
        "pg_stat_statements_calls_total", "pg_stat_statements_seconds_total", "pg_stat_statements_rows_total",
        "pg_stat_statements_shared_blks_hit_total", "pg_stat_statements_shared_blks_read_total",
        "pg_stat_statements_mean_seconds", "pg_stat_statements_query_id")},
    **{name: "only while replication slots exist" for name in (
        "pg_replication_slot_slot_is_active", "pg_replication_slot_retained_wal_bytes",
        "pg_replication_slot_wal_status")},
    "pg_replication_slot_safe_wal_size_bytes": "only for slots under a max_slot_wal_keep_size limit",
    **{name: "only on a primary with standbys connected" for name in (
        "pg_stat_replication_pg_wal_lsn_diff", "pg_stat_replication_replay_lag_seconds")},
}

# Families the catalogue lists that exist only in conditions the demo does
# not create, each with the condition.
CONDITIONAL = {
    "celery_queues_untracked": "only when more queues than --celery.max-queues exist",
    "bookedbarber_exporter_config_last_reload_successful": "only for configuration files given (--web.config.file, --business.queries)",
    "bookedbarber_exporter_config_last_reload_success_timestamp_seconds": "only for configuration files given (--web.config.file, --business.queries)",
    "bookedbarber_exporter_config_reload_failures_total": "only for configuration files given (--web.config.file, --business.queries)",
    **CONDITIONAL_POSTGRES,
}

ROW = re.compile(r"^\|\s*(`[^|]+)\|\s*([a-z]*)\s*\|")


def catalogue():
    """{family: type} from the tables of docs/metrics.md (type may be '')."""
    families = {}
    for line in (ROOT / "docs/metrics.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            for name in re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", m.group(1)):
                families[name] = m.group(2)
    return families


def served(text):
    """{family: type} from the # TYPE lines of an exposition; counters by their _total name."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out[name + "_total" if kind == "counter" and not name.endswith("_total") else name] = kind
    return out


def test_catalogue_parses():
    fams = catalogue()
    assert len(fams) > 60, f"only {len(fams)} families found in docs/metrics.md: did the table format change?"
    assert fams.get("pg_up") == "gauge"


def test_demo_exporter_serves_exactly_the_catalogue(demo_stack):
    documented = catalogue()
    # Collectors run on their own intervals: give each a few rounds with
    # the worker busy before calling a family missing.
    deadline = time.monotonic() + 20
    while True:
        have = served(demo_stack.metrics())
        missing = sorted(set(documented) - set(have) - set(CONDITIONAL))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    undocumented = sorted(set(have) - set(documented))
    assert not missing, f"in docs/metrics.md but not served by the demo exporter: {missing}"
    assert not undocumented, f"served but not in docs/metrics.md: {undocumented}"
    wrong_type = {n: (documented[n], have[n]) for n in have
                  if documented.get(n) and documented[n] != have[n]}
    assert not wrong_type, f"documented type differs from the served one (docs, served): {wrong_type}"


def test_conditional_postgres_families_are_served_where_their_condition_holds(postgres_depth_stack):
    """The families the demo cannot serve are served, with the catalogue's
    types, by the exporter on a cluster with pg_stat_statements, a standby
    on a slot, an unused slot and max_slot_wal_keep_size set."""
    documented = catalogue()
    assert set(CONDITIONAL_POSTGRES) <= set(documented), \
        f"conditional families not in docs/metrics.md: {sorted(set(CONDITIONAL_POSTGRES) - set(documented))}"
    have = served(postgres_depth_stack.metrics())
    want = set(CONDITIONAL_POSTGRES)
    missing = sorted(want - set(have))
    assert not missing, f"not served by the exporter where their condition holds: {missing}"
    wrong_type = {n: (documented[n], have[n]) for n in want if documented[n] != have[n]}
    assert not wrong_type, f"documented type differs from the served one (docs, served): {wrong_type}"
    undocumented = sorted(set(have) - set(documented))
    assert not undocumented, f"served but not in docs/metrics.md: {undocumented}"
