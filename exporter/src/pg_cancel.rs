//! Cancelling the exporter's own running statements when it stops.
//!
//! A statement whose client went away keeps running on the server until it
//! next tries to send a row (or until its `statement_timeout`): a business
//! query blocked on a lock at SIGTERM would hold its backend, and perhaps
//! its place in the lock queue, for up to its whole time limit. So every
//! connection the exporter opens is remembered by backend PID and start
//! time (PIDs are reused; the pair is not), and at shutdown those still
//! running a statement are cancelled with `pg_cancel_backend()`, which a
//! role may do to its own sessions.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};
use tracing::{info, warn};

/// The exporter's backends: (PID, `backend_start` as text).
#[derive(Debug, Clone, Default)]
pub struct Backends(Arc<Mutex<HashSet<(i32, String)>>>);

impl Backends {
    /// Remembers the backend of a new connection; run as the pool's
    /// `after_connect` hook.
    pub async fn register(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let (pid, started): (i32, String) = sqlx::query_as(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(conn)
        .await?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pid, started));
        Ok(())
    }

    /// Cancels the statements still running on the exporter's connections,
    /// through a connection of `pool`; gives up after `limit`.
    pub async fn cancel_running(&self, pool: &PgPool, limit: Duration) {
        let (pids, starts): (Vec<i32>, Vec<String>) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .unzip();
        if pids.is_empty() {
            return;
        }
        let cancel = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(a.pid))
             FROM pg_stat_activity a
             JOIN unnest($1::int[], $2::timestamptz[]) AS mine(pid, started)
               ON a.pid = mine.pid AND a.backend_start = mine.started
             WHERE a.state = 'active' AND a.pid <> pg_backend_pid()",
        )
        .bind(&pids)
        .bind(&starts)
        .fetch_one(pool);
        match tokio::time::timeout(limit, cancel).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(cancelled = n, "cancelled statements of this exporter still running on the server"),
            Ok(Err(error)) => warn!(%error, "cannot cancel statements of this exporter still running on the server"),
            Err(_) => warn!(
                ?limit,
                "cannot cancel statements of this exporter still running on the server: no connection in time"
            ),
        }
    }
}
