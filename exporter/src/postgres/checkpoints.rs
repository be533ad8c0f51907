//! Checkpoints and the background writer: `pg_stat_bgwriter` up to
//! PostgreSQL 16; from 17 on the checkpoint columns moved to
//! `pg_stat_checkpointer` and backend writes to `pg_stat_io`, and the
//! collector reads them there under the same metric names, so alerts and
//! dashboards work on every version.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::PostgresError;
use crate::runner::Source;
use crate::snapshot::Family;

/// Up to 16 everything is in `pg_stat_bgwriter`.
const BGWRITER_SQL: &str = "\
SELECT checkpoints_timed::float8, checkpoints_req::float8,
       checkpoint_write_time::float8, checkpoint_sync_time::float8,
       buffers_checkpoint::float8, buffers_clean::float8, maxwritten_clean::float8,
       buffers_backend::float8, buffers_backend_fsync::float8, buffers_alloc::float8
FROM pg_stat_bgwriter";

/// 17: checkpoints in `pg_stat_checkpointer`; what backends wrote themselves
/// (the old `buffers_backend`) is the shared-buffer writes in `pg_stat_io`
/// of every process but the checkpointer and the background writer, one
/// block per write.
const CHECKPOINTER_17_SQL: &str = "\
SELECT c.num_timed::float8, c.num_requested::float8,
       c.write_time::float8, c.sync_time::float8,
       c.buffers_written::float8, b.buffers_clean::float8, b.maxwritten_clean::float8,
       COALESCE(io.writes, 0)::float8, COALESCE(io.fsyncs, 0)::float8, b.buffers_alloc::float8
FROM pg_stat_checkpointer c CROSS JOIN pg_stat_bgwriter b
CROSS JOIN (SELECT sum(writes) AS writes, sum(fsyncs) AS fsyncs FROM pg_stat_io
            WHERE object = 'relation'
              AND backend_type NOT IN ('checkpointer', 'background writer')) io";

/// 18 counts `pg_stat_io` writes in operations that may cover several
/// blocks; `write_bytes` divided by the block size gives blocks again.
const CHECKPOINTER_18_SQL: &str = "\
SELECT c.num_timed::float8, c.num_requested::float8,
       c.write_time::float8, c.sync_time::float8,
       c.buffers_written::float8, b.buffers_clean::float8, b.maxwritten_clean::float8,
       COALESCE(io.write_bytes / current_setting('block_size')::numeric, 0)::float8,
       COALESCE(io.fsyncs, 0)::float8, b.buffers_alloc::float8
FROM pg_stat_checkpointer c CROSS JOIN pg_stat_bgwriter b
CROSS JOIN (SELECT sum(write_bytes) AS write_bytes, sum(fsyncs) AS fsyncs FROM pg_stat_io
            WHERE object = 'relation'
              AND backend_type NOT IN ('checkpointer', 'background writer')) io";

/// The statement for a server version (`server_version_num`).
pub fn checkpoint_sql(server_version_num: u32) -> &'static str {
    match server_version_num {
        v if v >= 180000 => CHECKPOINTER_18_SQL,
        v if v >= 170000 => CHECKPOINTER_17_SQL,
        _ => BGWRITER_SQL,
    }
}

/// What one collection read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointReading {
    pub checkpoints_timed: f64,
    pub checkpoints_requested: f64,
    pub write_time_ms: f64,
    pub sync_time_ms: f64,
    pub buffers_checkpoint: f64,
    pub buffers_clean: f64,
    pub maxwritten_clean: f64,
    pub buffers_backend: f64,
    pub buffers_backend_fsync: f64,
    pub buffers_alloc: f64,
}

pub struct CheckpointSource {
    pool: PgPool,
}

impl CheckpointSource {
    pub fn new(pool: PgPool) -> Self {
        CheckpointSource { pool }
    }

    async fn read(&self) -> Result<CheckpointReading, sqlx::Error> {
        let mut conn = super::acquire(&self.pool).await?;
        // The version comes with the connection (ParameterStatus): no query.
        let version = conn.server_version_num().unwrap_or(0);
        let r = sqlx::query(checkpoint_sql(version))
            .fetch_one(&mut *conn)
            .await?;
        Ok(CheckpointReading {
            checkpoints_timed: r.try_get(0)?,
            checkpoints_requested: r.try_get(1)?,
            write_time_ms: r.try_get(2)?,
            sync_time_ms: r.try_get(3)?,
            buffers_checkpoint: r.try_get(4)?,
            buffers_clean: r.try_get(5)?,
            maxwritten_clean: r.try_get(6)?,
            buffers_backend: r.try_get(7)?,
            buffers_backend_fsync: r.try_get(8)?,
            buffers_alloc: r.try_get(9)?,
        })
    }
}

impl Source for CheckpointSource {
    type Error = PostgresError;

    async fn collect(&self) -> Result<Vec<Family>, PostgresError> {
        Ok(families(&self.read().await?))
    }
}

/// Turns one reading into metric families. Names are postgres_exporter's
/// (`pg_stat_bgwriter_*`), except the two times, which are in seconds here
/// and say so in their names (postgres_exporter's are in milliseconds).
pub fn families(r: &CheckpointReading) -> Vec<Family> {
    let counter = |name: &'static str, help: &'static str, value: f64| {
        Family::counter(name, help).with_value(value)
    };
    vec![
        counter(
            "pg_stat_bgwriter_checkpoints_timed_total",
            "Checkpoints started because checkpoint_timeout elapsed (scheduled); from pg_stat_checkpointer.num_timed on PostgreSQL 17+.",
            r.checkpoints_timed,
        ),
        counter(
            "pg_stat_bgwriter_checkpoints_req_total",
            "Checkpoints requested before their time: WAL reached max_wal_size, or CHECKPOINT, a base backup or a shutdown asked for one. Many of these mean max_wal_size is too small for the write load.",
            r.checkpoints_requested,
        ),
        counter(
            "pg_stat_bgwriter_checkpoint_write_time_seconds_total",
            "Seconds checkpoints spent writing dirty buffers to the operating system.",
            r.write_time_ms / 1000.0,
        ),
        counter(
            "pg_stat_bgwriter_checkpoint_sync_time_seconds_total",
            "Seconds checkpoints spent waiting for fsync of the written files to finish.",
            r.sync_time_ms / 1000.0,
        ),
        counter(
            "pg_stat_bgwriter_buffers_checkpoint_total",
            "Buffers (blocks, usually 8 KiB) written by checkpoints.",
            r.buffers_checkpoint,
        ),
        counter(
            "pg_stat_bgwriter_buffers_clean_total",
            "Buffers written by the background writer ahead of need.",
            r.buffers_clean,
        ),
        counter(
            "pg_stat_bgwriter_maxwritten_clean_total",
            "Times the background writer stopped a round because it had written bgwriter_lru_maxpages buffers.",
            r.maxwritten_clean,
        ),
        counter(
            "pg_stat_bgwriter_buffers_backend_total",
            "Buffers that query processes had to write themselves because no clean buffer was free: a sign that checkpoints and the background writer fall behind. From pg_stat_io on PostgreSQL 17+.",
            r.buffers_backend,
        ),
        counter(
            "pg_stat_bgwriter_buffers_backend_fsync_total",
            "Times a query process had to call fsync itself (normally the checkpointer does); should stay 0.",
            r.buffers_backend_fsync,
        ),
        counter(
            "pg_stat_bgwriter_buffers_alloc_total",
            "Buffers allocated in shared buffers (blocks read in or created).",
            r.buffers_alloc,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    #[test]
    fn the_statement_follows_the_server_version() {
        assert_eq!(checkpoint_sql(130_012), BGWRITER_SQL);
        assert_eq!(checkpoint_sql(160_004), BGWRITER_SQL);
        assert_eq!(checkpoint_sql(170_000), CHECKPOINTER_17_SQL);
        assert_eq!(checkpoint_sql(180_001), CHECKPOINTER_18_SQL);
        assert!(!BGWRITER_SQL.contains("pg_stat_checkpointer"));
        assert!(CHECKPOINTER_17_SQL.contains("pg_stat_io"));
        assert!(CHECKPOINTER_18_SQL.contains("write_bytes"));
    }

    #[test]
    fn times_are_in_seconds() {
        let f = families(&CheckpointReading {
            checkpoints_requested: 3.0,
            write_time_ms: 1500.0,
            sync_time_ms: 20.0,
            ..Default::default()
        });
        assert_eq!(f.len(), 10);
        assert_eq!(
            find(&f, "pg_stat_bgwriter_checkpoint_write_time_seconds_total")
                .unwrap()
                .value_of(&[]),
            Some(1.5)
        );
        assert_eq!(
            find(&f, "pg_stat_bgwriter_checkpoints_req_total")
                .unwrap()
                .value_of(&[]),
            Some(3.0)
        );
    }
}
