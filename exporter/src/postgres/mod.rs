//! PostgreSQL infrastructure metrics (`pg_*`), readable with `pg_monitor`.
//!
//! This module's own collector (`postgres`) reads connections,
//! transactions, locks, sizes and replica state on a connection of its own,
//! so that `pg_up` answers whatever else is slow. The deeper collectors in
//! the submodules share one more connection, each its own collector so that
//! one failing (pg_stat_statements missing, say) hides none of the others.

pub mod checkpoints;
pub mod settings;
pub mod statements;
pub mod tables;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};
use sqlx::{ConnectOptions, Connection, Row};
use thiserror::Error;
use tracing::{info, warn};

use crate::pg_cancel::Backends;
use crate::runner::Source;
use crate::snapshot::Family;

#[derive(Debug, Error)]
pub enum PostgresError {
    #[error("the PostgreSQL URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("{0}")]
    Query(#[from] sqlx::Error),
}

/// A connection from `pool`. When none could be had because none could be
/// opened, the error is what a direct connection attempt says ("connection
/// refused", a TLS or authentication error) instead of sqlx's "pool timed
/// out", which hides it.
pub async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    match pool.acquire().await {
        Err(sqlx::Error::PoolTimedOut) => Err(why_no_connection(pool).await),
        other => other,
    }
}

/// Why `pool` has no connection to give: the reason it cannot open one, or
/// `PoolTimedOut` when connections exist and are all busy. Opens a
/// connection of its own only when the pool holds none, so it never adds to
/// the load of a busy pool.
pub async fn why_no_connection(pool: &PgPool) -> sqlx::Error {
    if pool.size() > 0 {
        return sqlx::Error::PoolTimedOut;
    }
    let options = pool.connect_options();
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options)).await {
        Ok(Err(e)) => e,
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            sqlx::Error::PoolTimedOut
        }
        Err(_) => sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connecting timed out after 5s",
        )),
    }
}

/// Settings of one connection pool (the PostgreSQL collector has one of its
/// own, the business collectors share another).
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub options: PgConnectOptions,
    pub max_connections: u32,
    /// Applied as `statement_timeout` on every connection (the business
    /// collectors lower it per query).
    pub statement_timeout: Duration,
    pub acquire_timeout: Duration,
    /// Applied as `lock_timeout` when set: a collector that could queue
    /// behind a lock gives up instead of holding its connection.
    pub lock_timeout: Option<Duration>,
    /// Where the pool's connections are remembered, to cancel their
    /// statements at shutdown.
    pub backends: Backends,
}

impl PostgresConfig {
    /// Parses a `postgres://` URL. The error never repeats the URL, which
    /// may hold a password.
    pub fn from_url(url: &str) -> Result<PgConnectOptions, PostgresError> {
        PgConnectOptions::from_str(url.trim()).map_err(|e| {
            let reason = match e {
                sqlx::Error::Configuration(inner) => inner.to_string(),
                other => other.to_string(),
            };
            PostgresError::InvalidUrl(reason)
        })
    }

    /// `host:port/database`, safe to log.
    pub fn describe(options: &PgConnectOptions) -> String {
        format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default)")
        )
    }

    /// A lazily connecting pool: the exporter starts and serves `pg_up 0`
    /// even while PostgreSQL is down.
    pub fn pool(&self) -> PgPool {
        let mut settings = vec![(
            "statement_timeout",
            self.statement_timeout.as_millis().to_string(),
        )];
        if let Some(lock_timeout) = self.lock_timeout {
            settings.push(("lock_timeout", lock_timeout.as_millis().to_string()));
        }
        let options = self
            .options
            .clone()
            .application_name("bookedbarber-exporter")
            .options(settings)
            // Slow collections show in collector_duration_seconds; sqlx's
            // own per-statement warnings would repeat the SQL in the logs.
            .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(1))
            .log_statements(log::LevelFilter::Trace);
        let backends = self.backends.clone();
        PgPoolOptions::new()
            .after_connect(move |conn, _| {
                let backends = backends.clone();
                Box::pin(async move { backends.register(conn).await })
            })
            .max_connections(self.max_connections)
            .min_connections(0)
            .acquire_timeout(self.acquire_timeout)
            // Collectors queue for the few connections by design.
            .acquire_slow_level(log::LevelFilter::Debug)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(options)
    }
}

/// The lock modes PostgreSQL uses for regular locks, reported as 0 when
/// unused so that alerts on one mode never see a missing series.
const LOCK_MODES: [&str; 8] = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// `pg_stat_activity.state` values, likewise reported as 0 when absent.
const CONNECTION_STATES: [&str; 6] = [
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
];

const DATABASES_SQL: &str = "\
SELECT d.datname,
       pg_database_size(d.oid)::float8 AS size_bytes,
       s.xact_commit::float8, s.xact_rollback::float8, s.deadlocks::float8,
       s.blks_hit::float8, s.blks_read::float8
FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
WHERE NOT d.datistemplate AND d.datallowconn";

const CONNECTIONS_SQL: &str = "\
SELECT datname, state, count(*)::float8 AS connections,
       max(CASE WHEN xact_start IS NOT NULL AND pid <> pg_backend_pid()
                THEN EXTRACT(EPOCH FROM clock_timestamp() - xact_start) END)::float8 AS longest_xact
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND datname IS NOT NULL
GROUP BY datname, state";

const LOCKS_SQL: &str = "\
SELECT d.datname, l.mode, count(*)::float8 AS locks
FROM pg_locks l JOIN pg_database d ON d.oid = l.database
GROUP BY d.datname, l.mode";

// pg_read_all_stats (part of pg_monitor; superusers have it too) is what
// lets pg_stat_activity show other roles' sessions.
const SERVER_SQL: &str = "\
SELECT current_setting('max_connections')::float8 AS max_connections,
       current_setting('superuser_reserved_connections')::float8 AS reserved_connections,
       pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery()
              OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8 AS replication_lag,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all_sessions";

/// What one collection read, before it becomes metric families.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PostgresReading {
    pub databases: Vec<DatabaseStats>,
    pub connections: Vec<ConnectionGroup>,
    pub locks: Vec<(String, String, f64)>,
    pub max_connections: f64,
    pub reserved_connections: f64,
    pub in_recovery: bool,
    pub replication_lag_seconds: f64,
    /// False when the role lacks pg_monitor: pg_stat_activity then shows
    /// only the exporter's own sessions.
    pub sees_all_sessions: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseStats {
    pub datname: String,
    pub size_bytes: f64,
    pub xact_commit: f64,
    pub xact_rollback: f64,
    pub deadlocks: f64,
    pub blks_hit: f64,
    pub blks_read: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionGroup {
    pub datname: String,
    pub state: Option<String>,
    pub connections: f64,
    pub longest_transaction_seconds: Option<f64>,
}

pub struct PostgresSource {
    pool: PgPool,
    /// Whether the last collection saw every session, to log changes once.
    saw_all_sessions: AtomicU8,
}

const UNKNOWN: u8 = 0;
const SEES_ALL: u8 = 1;
const SEES_OWN: u8 = 2;

impl PostgresSource {
    /// `pool` should be the PostgreSQL collector's own, so that slow
    /// business queries never leave it without a connection.
    pub fn new(pool: PgPool) -> Self {
        PostgresSource {
            pool,
            saw_all_sessions: AtomicU8::new(UNKNOWN),
        }
    }

    fn note_visibility(&self, sees_all: bool) {
        let now = if sees_all { SEES_ALL } else { SEES_OWN };
        let before = self.saw_all_sessions.swap(now, Ordering::Relaxed);
        if before == now || (before == UNKNOWN && sees_all) {
            return;
        }
        if sees_all {
            info!("the exporter's PostgreSQL role can now see every session (pg_monitor)");
        } else {
            warn!(
                "the exporter's PostgreSQL role lacks pg_monitor: pg_connections and \
                 pg_longest_transaction_seconds count only its own sessions; \
                 run GRANT pg_monitor TO <role>"
            );
        }
    }

    async fn read(&self) -> Result<PostgresReading, sqlx::Error> {
        let mut conn = acquire(&self.pool).await?;
        let databases = sqlx::query(DATABASES_SQL)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                Ok(DatabaseStats {
                    datname: r.try_get(0)?,
                    size_bytes: r.try_get(1)?,
                    xact_commit: r.try_get(2)?,
                    xact_rollback: r.try_get(3)?,
                    deadlocks: r.try_get(4)?,
                    blks_hit: r.try_get(5)?,
                    blks_read: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let connections = sqlx::query(CONNECTIONS_SQL)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                Ok(ConnectionGroup {
                    datname: r.try_get(0)?,
                    state: r.try_get(1)?,
                    connections: r.try_get(2)?,
                    longest_transaction_seconds: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let locks = sqlx::query(LOCKS_SQL)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let server = sqlx::query(SERVER_SQL).fetch_one(&mut *conn).await?;
        Ok(PostgresReading {
            databases,
            connections,
            locks,
            max_connections: server.try_get(0)?,
            reserved_connections: server.try_get(1)?,
            in_recovery: server.try_get(2)?,
            replication_lag_seconds: server.try_get(3)?,
            sees_all_sessions: server.try_get(4)?,
        })
    }
}

impl Source for PostgresSource {
    type Error = PostgresError;

    async fn collect(&self) -> Result<Vec<Family>, PostgresError> {
        let reading = self.read().await?;
        self.note_visibility(reading.sees_all_sessions);
        Ok(families(&reading))
    }

    fn failure_families(&self) -> Vec<Family> {
        vec![up_family(false)]
    }
}

fn up_family(up: bool) -> Family {
    Family::gauge(
        "pg_up",
        "1 if the exporter's last attempt to read PostgreSQL succeeded, 0 if it failed.",
    )
    .with_value(if up { 1.0 } else { 0.0 })
}

/// Turns one reading into metric families.
pub fn families(reading: &PostgresReading) -> Vec<Family> {
    let mut size = Family::gauge(
        "pg_database_size_bytes",
        "Disk space used by the database, in bytes.",
    );
    let mut commits = Family::counter(
        "pg_stat_database_xact_commit_total",
        "Transactions committed in the database.",
    );
    let mut rollbacks = Family::counter(
        "pg_stat_database_xact_rollback_total",
        "Transactions rolled back in the database.",
    );
    let mut deadlocks = Family::counter(
        "pg_stat_database_deadlocks_total",
        "Deadlocks detected in the database.",
    );
    let mut blks_hit = Family::counter(
        "pg_stat_database_blks_hit_total",
        "Disk blocks found in PostgreSQL's buffer cache.",
    );
    let mut blks_read = Family::counter(
        "pg_stat_database_blks_read_total",
        "Disk blocks read from disk (or the OS cache) because they were not in the buffer cache.",
    );
    let mut database_names = BTreeSet::new();
    for db in &reading.databases {
        let l = [("datname", db.datname.as_str())];
        size.push(l, db.size_bytes);
        commits.push(l, db.xact_commit);
        rollbacks.push(l, db.xact_rollback);
        deadlocks.push(l, db.deadlocks);
        blks_hit.push(l, db.blks_hit);
        blks_read.push(l, db.blks_read);
        database_names.insert(db.datname.as_str());
    }

    // Every known state and every database appear, with 0 where nothing
    // matched; unexpected states (future PostgreSQL versions) are kept too.
    let mut by_state: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let mut longest: BTreeMap<&str, f64> = BTreeMap::new();
    for db in &database_names {
        for state in CONNECTION_STATES {
            by_state.insert((db, state), 0.0);
        }
        longest.insert(db, 0.0);
    }
    for group in &reading.connections {
        let state = group.state.as_deref().unwrap_or("unknown");
        *by_state.entry((group.datname.as_str(), state)).or_default() += group.connections;
        let entry = longest.entry(group.datname.as_str()).or_default();
        *entry = entry.max(group.longest_transaction_seconds.unwrap_or(0.0));
    }
    let mut connections = Family::gauge(
        "pg_connections",
        "Client connections by database and state (from pg_stat_activity).",
    );
    for ((db, state), n) in by_state {
        connections.push([("datname", db), ("state", state)], n);
    }
    let mut longest_transaction = Family::gauge(
        "pg_longest_transaction_seconds",
        "Age of the oldest open transaction in the database, in seconds; 0 when none is open.",
    );
    for (db, seconds) in longest {
        longest_transaction.push([("datname", db)], seconds);
    }

    let mut by_mode: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for db in &database_names {
        for mode in LOCK_MODES {
            by_mode.insert((db, mode), 0.0);
        }
    }
    for (db, mode, n) in &reading.locks {
        *by_mode.entry((db.as_str(), mode.as_str())).or_default() += n;
    }
    let mut locks = Family::gauge(
        "pg_locks",
        "Locks held or awaited, by database and lock mode (from pg_locks).",
    );
    for ((db, mode), n) in by_mode {
        locks.push([("datname", db), ("mode", mode)], n);
    }

    vec![
        up_family(true),
        Family::gauge(
            "pg_connections_max",
            "The server's max_connections setting.",
        )
        .with_value(reading.max_connections),
        Family::gauge(
            "pg_connections_reserved",
            "The server's superuser_reserved_connections setting: connections only superusers may use.",
        )
        .with_value(reading.reserved_connections),
        connections,
        size,
        commits,
        rollbacks,
        deadlocks,
        blks_hit,
        blks_read,
        locks,
        longest_transaction,
        Family::gauge(
            "pg_in_recovery",
            "1 if the server is a replica (in recovery), 0 if it is a primary.",
        )
        .with_value(if reading.in_recovery { 1.0 } else { 0.0 }),
        Family::gauge(
            "pg_replication_lag_seconds",
            "On a replica, seconds since the last replayed transaction when replay is behind; 0 on a primary or a caught-up replica.",
        )
        .with_value(reading.replication_lag_seconds),
        Family::gauge(
            "bookedbarber_exporter_postgres_pg_monitor",
            "1 if the exporter's PostgreSQL role can see every session (pg_monitor, or superuser); 0 if pg_connections and pg_longest_transaction_seconds count only its own sessions.",
        )
        .with_value(if reading.sees_all_sessions { 1.0 } else { 0.0 }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    fn reading() -> PostgresReading {
        PostgresReading {
            databases: vec![
                DatabaseStats {
                    datname: "app".into(),
                    size_bytes: 1000.0,
                    xact_commit: 10.0,
                    deadlocks: 1.0,
                    ..Default::default()
                },
                DatabaseStats {
                    datname: "postgres".into(),
                    ..Default::default()
                },
            ],
            connections: vec![
                ConnectionGroup {
                    datname: "app".into(),
                    state: Some("active".into()),
                    connections: 3.0,
                    longest_transaction_seconds: Some(12.5),
                },
                ConnectionGroup {
                    datname: "app".into(),
                    state: None,
                    connections: 1.0,
                    longest_transaction_seconds: None,
                },
            ],
            locks: vec![("app".into(), "RowExclusiveLock".into(), 4.0)],
            max_connections: 100.0,
            reserved_connections: 3.0,
            in_recovery: false,
            replication_lag_seconds: 0.0,
            sees_all_sessions: true,
        }
    }

    #[test]
    fn known_states_and_modes_are_zero_filled() {
        let f = families(&reading());
        let conns = find(&f, "pg_connections").unwrap();
        assert_eq!(
            conns.value_of(&[("datname", "app"), ("state", "active")]),
            Some(3.0)
        );
        assert_eq!(
            conns.value_of(&[("datname", "app"), ("state", "idle")]),
            Some(0.0)
        );
        assert_eq!(
            conns.value_of(&[("datname", "postgres"), ("state", "active")]),
            Some(0.0)
        );
        assert_eq!(
            conns.value_of(&[("datname", "app"), ("state", "unknown")]),
            Some(1.0)
        );
        let locks = find(&f, "pg_locks").unwrap();
        assert_eq!(
            locks.value_of(&[("datname", "app"), ("mode", "RowExclusiveLock")]),
            Some(4.0)
        );
        assert_eq!(
            locks.value_of(&[("datname", "postgres"), ("mode", "AccessExclusiveLock")]),
            Some(0.0)
        );
        assert_eq!(locks.samples.len(), 16);
    }

    #[test]
    fn per_database_counters_and_longest_transaction() {
        let f = families(&reading());
        assert_eq!(find(&f, "pg_up").unwrap().value_of(&[]), Some(1.0));
        assert_eq!(
            find(&f, "pg_stat_database_deadlocks_total")
                .unwrap()
                .value_of(&[("datname", "app")]),
            Some(1.0)
        );
        assert_eq!(
            find(&f, "pg_database_size_bytes")
                .unwrap()
                .value_of(&[("datname", "app")]),
            Some(1000.0)
        );
        let longest = find(&f, "pg_longest_transaction_seconds").unwrap();
        assert_eq!(longest.value_of(&[("datname", "app")]), Some(12.5));
        assert_eq!(longest.value_of(&[("datname", "postgres")]), Some(0.0));
        assert_eq!(
            find(&f, "pg_connections_max").unwrap().value_of(&[]),
            Some(100.0)
        );
    }

    #[test]
    fn invalid_url_error_hides_the_password() {
        let err = PostgresConfig::from_url("postgres://u:s3cret@host:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let ok = PostgresConfig::from_url("postgres://u:s3cret@db.example:5433/app").unwrap();
        assert_eq!(PostgresConfig::describe(&ok), "db.example:5433/app");
    }
}
