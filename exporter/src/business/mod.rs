//! BookedBarber business metrics: SQL queries from a TOML file, each run on
//! its own schedule and turned into metric families.
//!
//! The shipped queries live in `config/business-queries.toml`; operators can
//! point `--business.queries` at their own file to add or change metrics
//! without recompiling.

mod collectors;
mod config;
mod rows;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::PgPool;
use thiserror::Error;
use tracing::{info, warn};

pub use collectors::{BusinessCollectors, QueryFileReloader};
pub use config::{ConfigError, MetricDef, QueryDef, QueryFile, DEFAULT_QUERIES};

use rows::{families_from_rows, ResultRow};

use crate::exposition::LiveFamilies;
use crate::monotonic::CounterPolicy;
use crate::postgres::why_no_connection;
use crate::runner::Source;
use crate::snapshot::Family;

/// Rows of one query turned into series when neither the query file nor
/// `--business.max-series` says otherwise.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// Time a query must have left, once it holds a connection, to be worth
/// starting.
const MIN_SERVER_TIMEOUT: Duration = Duration::from_millis(100);

/// How much longer than a query's own limit the runner waits before it
/// abandons the collection: the server's cancellation (at the query's limit)
/// should always come first, so that connections go back to the pool clean.
pub const RUNNER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("timed out after {0:?} (cancelled on the server by statement_timeout)")]
    Timeout(Duration),
    #[error("timed out after {0:?} waiting for a free connection: the business queries share too few (raise --postgres.max-connections, or lengthen their intervals)")]
    NoConnection(Duration),
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Rows(String),
}

/// The collector name of a query, as in `bookedbarber_exporter_collector_up`.
pub fn collector_name(query: &QueryDef) -> String {
    format!("business_{}", query.name)
}

/// Series the business collectors dropped over their caps, shared by all of
/// them so that one family lists every collector.
#[derive(Debug, Default)]
pub struct BusinessHealth {
    /// Per collector: rows beyond the cap in its last collection.
    dropped: Mutex<BTreeMap<String, u64>>,
}

impl BusinessHealth {
    /// Lists exactly `collectors`: new ones at 0, removed ones gone.
    fn track(&self, collectors: impl Iterator<Item = String>) {
        let mut state = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::take(&mut *state);
        for name in collectors {
            let n = previous.get(&name).copied().unwrap_or(0);
            state.insert(name, n);
        }
    }

    /// Records the rows dropped over the cap; logs when that starts and stops.
    fn record_dropped(&self, collector: &str, dropped: u64, cap: usize) {
        // A panic elsewhere while holding the lock leaves plain numbers
        // behind, still fit to serve.
        let mut state = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let before = state.insert(collector.to_owned(), dropped);
        match (before.unwrap_or(0) > 0, dropped > 0) {
            (false, true) => warn!(
                collector,
                cap,
                dropped,
                "the query returned more rows than its series cap; serving the first {cap}: \
                 fix its GROUP BY, or raise max_series in the query file or --business.max-series"
            ),
            (true, false) => info!(collector, "the query's result fits its series cap again"),
            _ => {}
        }
    }
}

impl LiveFamilies for BusinessHealth {
    fn families(&self) -> Vec<Family> {
        let mut family = Family::gauge(
            "bookedbarber_exporter_series_dropped",
            "Rows a business query returned beyond its series cap in its last collection, and which were not served; 0 normally.",
        );
        for (collector, n) in self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            family.push([("collector", collector)], *n as f64);
        }
        vec![family]
    }
}

pub struct BusinessQuerySource {
    query: QueryDef,
    collector: String,
    max_series: usize,
    pool: PgPool,
    health: Arc<BusinessHealth>,
}

impl BusinessQuerySource {
    /// `default_max_series` applies when the query file sets no cap.
    pub fn new(
        query: QueryDef,
        pool: PgPool,
        default_max_series: usize,
        health: Arc<BusinessHealth>,
    ) -> Self {
        let max_series = query.max_series.unwrap_or(default_max_series);
        BusinessQuerySource {
            collector: collector_name(&query),
            query,
            max_series,
            pool,
            health,
        }
    }

    /// Rows read (at most the cap) and rows dropped beyond it.
    async fn read(&self, started: Instant) -> Result<(Vec<ResultRow>, u64), QueryError> {
        let timeout = self.query.schedule.timeout;
        let classify = |e: sqlx::Error| match &e {
            // 57014 query_canceled: our statement_timeout fired.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                QueryError::Timeout(timeout)
            }
            _ => QueryError::Database(e),
        };
        // Waiting for a connection is part of the query's time limit. Giving
        // up on the wait is clean; giving up on a running statement is not
        // (the connection would go back to the pool mid-statement), so the
        // statement itself is left to the server's limit below.
        let no_connection = || async {
            match why_no_connection(&self.pool).await {
                sqlx::Error::PoolTimedOut => QueryError::NoConnection(timeout),
                cannot_connect => QueryError::Database(cannot_connect),
            }
        };
        let mut conn = match tokio::time::timeout(timeout, self.pool.acquire()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => return Err(no_connection().await),
            Ok(Err(e)) => return Err(QueryError::Database(e)),
        };
        // The query's own time limit, enforced by the server: a query the
        // exporter gave up on must not keep running, holding its connection
        // and perhaps locks, until some longer limit ends it.
        let left = timeout.saturating_sub(started.elapsed());
        if left < MIN_SERVER_TIMEOUT {
            return Err(QueryError::NoConnection(timeout));
        }
        let server_timeout = left;
        sqlx::query("SELECT set_config('statement_timeout', $1, false)")
            .bind(format!("{}ms", server_timeout.as_millis()))
            .execute(&mut *conn)
            .await?;
        // The SQL comes from the operator's own query file, not from input
        // the exporter receives: there is nothing to inject into.
        let sql = sqlx::AssertSqlSafe(self.query.sql.as_str());
        let mut stream = sqlx::query(sql).fetch(&mut *conn);
        let mut rows = Vec::new();
        let mut dropped = 0u64;
        // Streamed, so that a result of millions of rows costs no memory
        // beyond the cap.
        while let Some(row) = stream.try_next().await.map_err(classify)? {
            if rows.len() < self.max_series {
                rows.push(rows::read_row(&row)?);
            } else {
                dropped += 1;
            }
        }
        Ok((rows, dropped))
    }
}

impl Source for BusinessQuerySource {
    type Error = QueryError;

    async fn collect(&self) -> Result<Vec<Family>, QueryError> {
        let (rows, dropped) = self.read(Instant::now()).await?;
        self.health
            .record_dropped(&self.collector, dropped, self.max_series);
        families_from_rows(&self.query, &rows).map_err(QueryError::Rows)
    }

    /// Business counters count table rows: a label value whose rows were
    /// all deleted stays served at its last value rather than vanishing and
    /// coming back lower.
    fn counter_policy(&self) -> CounterPolicy {
        CounterPolicy {
            max_series: self.max_series,
            keep_vanished: true,
        }
    }
}
