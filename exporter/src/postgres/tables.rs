//! Table health from `pg_stat_user_tables` and `pg_statio_user_tables` of
//! the database the exporter connects to: the tables named in
//! `--postgres.tables` (the business tables) plus the N largest others, so
//! the series count stays bounded however many tables the database has.
//!
//! Names follow postgres_exporter's `stat_user_tables` and
//! `statio_user_tables` collectors, with `_total` on counters.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::PostgresError;
use crate::monotonic::CounterPolicy;
use crate::runner::Source;
use crate::snapshot::Family;

/// Named tables matched at most (a name may exist in many schemas).
pub const MAX_LISTED_TABLES: i64 = 100;

/// The tables are ranked from the catalog alone, by the pages it knows
/// (`relpages`, kept by VACUUM, ANALYZE and CREATE INDEX): no statistics
/// functions for every table, no file system call, no lock. The statistics
/// views are then read for the chosen tables only (LATERAL, so the relid
/// reaches inside the views). Exact sizes are then read for the chosen tables only, and skipped
/// for a table (or one of its indexes) on which an ACCESS EXCLUSIVE lock is
/// held or awaited: `pg_table_size` would queue behind a migration's lock
/// and stall the collection, and every collector sharing its connection.
const TABLES_SQL: &str = "\
WITH t AS (
  SELECT c.oid AS relid,
         (c.relname = ANY($1) OR n.nspname || '.' || c.relname = ANY($1)) AS listed,
         c.relpages::float8 + COALESCE(tc.relpages, 0)::float8 AS pages
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
  WHERE c.relkind IN ('r', 'p', 'm')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
), chosen AS (
  (SELECT relid FROM t WHERE listed ORDER BY pages DESC, relid LIMIT $2)
  UNION ALL
  (SELECT relid FROM t WHERE NOT listed ORDER BY pages DESC, relid LIMIT $3)
), exclusive AS (
  SELECT relation FROM pg_locks
  WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock'
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
), locked AS (
  SELECT ch.relid FROM chosen ch
  WHERE ch.relid IN (SELECT relation FROM exclusive)
     OR EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = ch.relid AND i.indexrelid IN (SELECT relation FROM exclusive))
)
SELECT current_database()::text, s.schemaname::text, s.relname::text,
       s.seq_scan::float8, s.seq_tup_read::float8,
       COALESCE(s.idx_scan, 0)::float8, COALESCE(s.idx_tup_fetch, 0)::float8,
       s.n_tup_ins::float8, s.n_tup_upd::float8, s.n_tup_del::float8, s.n_tup_hot_upd::float8,
       s.n_live_tup::float8, s.n_dead_tup::float8, s.n_mod_since_analyze::float8,
       COALESCE(EXTRACT(EPOCH FROM s.last_vacuum), 0)::float8,
       COALESCE(EXTRACT(EPOCH FROM s.last_autovacuum), 0)::float8,
       COALESCE(EXTRACT(EPOCH FROM s.last_analyze), 0)::float8,
       COALESCE(EXTRACT(EPOCH FROM s.last_autoanalyze), 0)::float8,
       s.vacuum_count::float8, s.autovacuum_count::float8,
       s.analyze_count::float8, s.autoanalyze_count::float8,
       COALESCE(io.heap_blks_read, 0)::float8, COALESCE(io.heap_blks_hit, 0)::float8,
       COALESCE(io.idx_blks_read, 0)::float8, COALESCE(io.idx_blks_hit, 0)::float8,
       CASE WHEN l.relid IS NULL THEN pg_table_size(s.relid)::float8 END,
       CASE WHEN l.relid IS NULL THEN pg_indexes_size(s.relid)::float8 END
FROM chosen ch
JOIN LATERAL (SELECT * FROM pg_stat_user_tables u WHERE u.relid = ch.relid) s ON true
LEFT JOIN LATERAL (SELECT * FROM pg_statio_user_tables i WHERE i.relid = ch.relid) io ON true
LEFT JOIN locked l ON l.relid = ch.relid
ORDER BY 2, 3";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// Table names (`name` in any schema, or `schema.name`) always reported.
    pub tables: Vec<String>,
    /// The largest other tables reported besides them.
    pub limit: usize,
}

/// One table's statistics (the columns of the query, in order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableStats {
    pub datname: String,
    pub schemaname: String,
    pub relname: String,
    /// The counters, in the order of `COUNTERS`.
    pub counters: [f64; 16],
    /// The gauges, in the order of `GAUGES`.
    pub gauges: [f64; 7],
    pub table_size_bytes: Option<f64>,
    pub index_size_bytes: Option<f64>,
}

/// Gauges: (name, help), in the order of `TableStats::gauges`.
const GAUGES: [(&str, &str); 7] = [
    (
        "pg_stat_user_tables_n_live_tup",
        "Estimated live rows in the table.",
    ),
    (
        "pg_stat_user_tables_n_dead_tup",
        "Estimated dead rows (deleted or updated away, not yet removed by VACUUM). A high share of dead rows means autovacuum is not keeping up.",
    ),
    (
        "pg_stat_user_tables_n_mod_since_analyze",
        "Estimated rows changed since the table was last analyzed.",
    ),
    (
        "pg_stat_user_tables_last_vacuum",
        "Unix time of the last manual VACUUM of the table (not VACUUM FULL); 0 if never. Its age is time() minus this.",
    ),
    (
        "pg_stat_user_tables_last_autovacuum",
        "Unix time of the last vacuum of the table by autovacuum; 0 if never.",
    ),
    (
        "pg_stat_user_tables_last_analyze",
        "Unix time of the last manual ANALYZE of the table; 0 if never.",
    ),
    (
        "pg_stat_user_tables_last_autoanalyze",
        "Unix time of the last analyze of the table by autovacuum; 0 if never.",
    ),
];

/// Counters: (name, help), in the order of `TableStats::counters`.
const COUNTERS: [(&str, &str); 16] = [
    (
        "pg_stat_user_tables_seq_scan_total",
        "Sequential scans started on the table. Growing fast on a large table usually means a missing index.",
    ),
    (
        "pg_stat_user_tables_seq_tup_read_total",
        "Live rows read by sequential scans of the table.",
    ),
    (
        "pg_stat_user_tables_idx_scan_total",
        "Index scans started on the table (all its indexes).",
    ),
    (
        "pg_stat_user_tables_idx_tup_fetch_total",
        "Live rows fetched by index scans of the table.",
    ),
    (
        "pg_stat_user_tables_n_tup_ins_total",
        "Rows inserted into the table.",
    ),
    (
        "pg_stat_user_tables_n_tup_upd_total",
        "Rows updated in the table (HOT updates included).",
    ),
    (
        "pg_stat_user_tables_n_tup_del_total",
        "Rows deleted from the table.",
    ),
    (
        "pg_stat_user_tables_n_tup_hot_upd_total",
        "Rows updated without touching any index (HOT updates).",
    ),
    (
        "pg_stat_user_tables_vacuum_count_total",
        "Manual VACUUMs of the table (not VACUUM FULL).",
    ),
    (
        "pg_stat_user_tables_autovacuum_count_total",
        "Vacuums of the table by autovacuum.",
    ),
    (
        "pg_stat_user_tables_analyze_count_total",
        "Manual ANALYZEs of the table.",
    ),
    (
        "pg_stat_user_tables_autoanalyze_count_total",
        "Analyzes of the table by autovacuum.",
    ),
    (
        "pg_statio_user_tables_heap_blocks_read_total",
        "Table blocks read from disk (or the OS cache) because they were not in shared buffers.",
    ),
    (
        "pg_statio_user_tables_heap_blocks_hit_total",
        "Table blocks found in shared buffers.",
    ),
    (
        "pg_statio_user_tables_idx_blocks_read_total",
        "Index blocks of the table read from disk (or the OS cache).",
    ),
    (
        "pg_statio_user_tables_idx_blocks_hit_total",
        "Index blocks of the table found in shared buffers.",
    ),
];

pub struct TableSource {
    pool: PgPool,
    config: TableConfig,
}

impl TableSource {
    pub fn new(pool: PgPool, config: TableConfig) -> Self {
        TableSource { pool, config }
    }

    async fn read(&self) -> Result<Vec<TableStats>, sqlx::Error> {
        let mut conn = super::acquire(&self.pool).await?;
        sqlx::query(TABLES_SQL)
            .bind(&self.config.tables)
            .bind(MAX_LISTED_TABLES)
            .bind(i64::try_from(self.config.limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                let mut t = TableStats {
                    datname: r.try_get(0)?,
                    schemaname: r.try_get(1)?,
                    relname: r.try_get(2)?,
                    ..TableStats::default()
                };
                // Columns 3..=10: scans and row changes; 11..=13 row
                // estimates; 14..=17 timestamps; 18..=21 (auto)vacuum and
                // (auto)analyze counts; 22..=25 block I/O; 26, 27 sizes.
                for (i, c) in (3..=10).chain(18..=25).enumerate() {
                    t.counters[i] = r.try_get(c)?;
                }
                for (i, c) in (11..=17).enumerate() {
                    t.gauges[i] = r.try_get(c)?;
                }
                t.table_size_bytes = r.try_get(26)?;
                t.index_size_bytes = r.try_get(27)?;
                Ok(t)
            })
            .collect()
    }
}

impl Source for TableSource {
    type Error = PostgresError;

    async fn collect(&self) -> Result<Vec<Family>, PostgresError> {
        Ok(families(&self.read().await?))
    }

    /// The default: a table dropped and made again under the same name
    /// starts its counters at 0, and the runner continues them; a table
    /// that leaves the top N by size stops being served (it is not kept at
    /// its last value, which would keep every table ever ranked).
    fn counter_policy(&self) -> CounterPolicy {
        CounterPolicy::default()
    }
}

/// Turns one reading into metric families.
pub fn families(tables: &[TableStats]) -> Vec<Family> {
    let mut gauges: Vec<Family> = GAUGES
        .iter()
        .map(|(name, help)| Family::gauge(*name, *help))
        .collect();
    let mut counters: Vec<Family> = COUNTERS
        .iter()
        .map(|(name, help)| Family::counter(*name, *help))
        .collect();
    let mut table_size = Family::gauge(
        "pg_stat_user_tables_table_size_bytes",
        "Disk space of the table with its TOAST data, indexes excluded (pg_table_size); absent while an ACCESS EXCLUSIVE lock is held or awaited on it.",
    );
    let mut index_size = Family::gauge(
        "pg_stat_user_tables_index_size_bytes",
        "Disk space of all the table's indexes (pg_indexes_size); absent while an ACCESS EXCLUSIVE lock is held or awaited on it.",
    );
    for t in tables {
        let l = [
            ("datname", t.datname.as_str()),
            ("schemaname", t.schemaname.as_str()),
            ("relname", t.relname.as_str()),
        ];
        for (family, value) in gauges.iter_mut().zip(t.gauges) {
            family.push(l, value);
        }
        for (family, value) in counters.iter_mut().zip(t.counters) {
            family.push(l, value);
        }
        if let Some(bytes) = t.table_size_bytes {
            table_size.push(l, bytes);
        }
        if let Some(bytes) = t.index_size_bytes {
            index_size.push(l, bytes);
        }
    }
    let mut out = gauges;
    out.push(table_size);
    out.push(index_size);
    out.extend(counters);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    #[test]
    fn one_series_per_table_and_family() {
        let mut a = TableStats {
            datname: "app".into(),
            schemaname: "public".into(),
            relname: "payments".into(),
            table_size_bytes: Some(8192.0),
            index_size_bytes: None,
            ..Default::default()
        };
        a.gauges[1] = 40.0;
        a.counters[0] = 7.0;
        a.counters[15] = 3.0;
        let b = TableStats {
            relname: "users".into(),
            ..a.clone()
        };
        let f = families(&[a, b]);
        assert_eq!(f.len(), GAUGES.len() + COUNTERS.len() + 2);
        let l = [
            ("datname", "app"),
            ("schemaname", "public"),
            ("relname", "payments"),
        ];
        assert_eq!(
            find(&f, "pg_stat_user_tables_n_dead_tup")
                .unwrap()
                .value_of(&l),
            Some(40.0)
        );
        assert_eq!(
            find(&f, "pg_stat_user_tables_seq_scan_total")
                .unwrap()
                .value_of(&l),
            Some(7.0)
        );
        assert_eq!(
            find(&f, "pg_statio_user_tables_idx_blocks_hit_total")
                .unwrap()
                .value_of(&l),
            Some(3.0)
        );
        assert_eq!(
            find(&f, "pg_stat_user_tables_seq_scan_total")
                .unwrap()
                .samples
                .len(),
            2
        );
        // A locked table's index size is left out, not reported as 0.
        assert!(find(&f, "pg_stat_user_tables_index_size_bytes")
            .unwrap()
            .samples
            .is_empty());
    }

    #[test]
    fn counters_end_in_total_and_gauges_do_not() {
        assert!(COUNTERS.iter().all(|(n, _)| n.ends_with("_total")));
        assert!(GAUGES.iter().all(|(n, _)| !n.ends_with("_total")));
    }
}
