//! WAL and replication: the WAL position (how much WAL the server writes),
//! the size of `pg_wal`, replication slots with the WAL each one holds back,
//! and, on a primary, each standby's lag from `pg_stat_replication`.

use std::collections::BTreeMap;

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::PostgresError;
use crate::runner::Source;
use crate::snapshot::Family;

/// The WAL position a server knows: written on a primary, replayed on a
/// replica (where `pg_current_wal_lsn()` is an error).
const POSITION: &str =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END";

/// Where new WAL ends: on a replica, what it has received so far.
const NEWEST: &str = "CASE WHEN pg_is_in_recovery() \
     THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
     ELSE pg_current_wal_lsn() END";

fn wal_sql() -> String {
    // pg_ls_waldir() is granted to pg_monitor; segment files are the ones
    // with 24 hex digits (postgres_exporter counts the same).
    format!(
        "SELECT pg_is_in_recovery(),
                (({POSITION}) - '0/0'::pg_lsn)::float8,
                count(w.name)::float8, COALESCE(sum(w.size), 0)::float8
         FROM pg_ls_waldir() w WHERE w.name ~ '^[0-9A-F]{{24}}$'"
    )
}

/// `safe_wal_size` and `wal_status` exist from PostgreSQL 13 on.
fn slots_sql(server_version_num: u32) -> String {
    let newer = if server_version_num >= 130000 {
        "safe_wal_size::float8, wal_status"
    } else {
        "NULL::float8, NULL::text"
    };
    format!(
        "SELECT slot_name::text, slot_type, active,
                ((({NEWEST})) - restart_lsn)::float8, {newer}
         FROM pg_replication_slots"
    )
}

fn standbys_sql() -> String {
    format!(
        "SELECT COALESCE(application_name, ''), COALESCE(host(client_addr), 'local'),
                ((({NEWEST})) - replay_lsn)::float8,
                COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8
         FROM pg_stat_replication"
    )
}

/// What one collection read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalReading {
    pub in_recovery: bool,
    /// WAL position in bytes; `None` on a replica that has replayed nothing.
    pub position_bytes: Option<f64>,
    pub segments: f64,
    pub wal_size_bytes: f64,
    pub slots: Vec<Slot>,
    pub standbys: Vec<Standby>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    /// WAL kept for the slot: from its `restart_lsn` to the newest WAL;
    /// `None` while the slot reserves nothing.
    pub retained_bytes: Option<f64>,
    /// Bytes of WAL that can still be written before the slot is lost to
    /// `max_slot_wal_keep_size`; `None` when that is unlimited.
    pub safe_wal_size_bytes: Option<f64>,
    pub wal_status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standby {
    pub application_name: String,
    pub client_addr: String,
    /// `None` until the standby has reported a replay position.
    pub replay_lag_bytes: Option<f64>,
    pub replay_lag_seconds: f64,
}

/// `pg_replication_slots.wal_status` values, all listed so a state alert
/// never sees a missing series.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

pub struct WalSource {
    pool: PgPool,
}

impl WalSource {
    pub fn new(pool: PgPool) -> Self {
        WalSource { pool }
    }

    async fn read(&self) -> Result<WalReading, sqlx::Error> {
        let mut conn = super::acquire(&self.pool).await?;
        let version = conn.server_version_num().unwrap_or(0);
        let wal = sqlx::query(sqlx::AssertSqlSafe(wal_sql()))
            .fetch_one(&mut *conn)
            .await?;
        let slots = sqlx::query(sqlx::AssertSqlSafe(slots_sql(version)))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                Ok(Slot {
                    name: r.try_get(0)?,
                    slot_type: r.try_get(1)?,
                    active: r.try_get(2)?,
                    retained_bytes: r.try_get(3)?,
                    safe_wal_size_bytes: r.try_get(4)?,
                    wal_status: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let standbys = sqlx::query(sqlx::AssertSqlSafe(standbys_sql()))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                Ok(Standby {
                    application_name: r.try_get(0)?,
                    client_addr: r.try_get(1)?,
                    replay_lag_bytes: r.try_get(2)?,
                    replay_lag_seconds: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(WalReading {
            in_recovery: wal.try_get(0)?,
            position_bytes: wal.try_get(1)?,
            segments: wal.try_get(2)?,
            wal_size_bytes: wal.try_get(3)?,
            slots,
            standbys,
        })
    }
}

impl Source for WalSource {
    type Error = PostgresError;

    async fn collect(&self) -> Result<Vec<Family>, PostgresError> {
        Ok(families(&self.read().await?))
    }
}

/// Turns one reading into metric families.
pub fn families(r: &WalReading) -> Vec<Family> {
    let mut position = Family::counter(
        "pg_wal_bytes_total",
        "WAL position in bytes (pg_current_wal_lsn() on a primary, the replayed position on a replica): its rate is how fast the server writes WAL.",
    );
    if let Some(bytes) = r.position_bytes {
        position.push([], bytes);
    }

    let mut active = Family::gauge(
        "pg_replication_slot_slot_is_active",
        "1 if a consumer is connected to the replication slot, 0 if not (an inactive slot keeps WAL until it is used or dropped).",
    );
    let mut retained = Family::gauge(
        "pg_replication_slot_retained_wal_bytes",
        "WAL kept on disk for the replication slot: from the oldest WAL its consumer still needs (restart_lsn) to the newest WAL. Grows without bound while the consumer is away.",
    );
    let mut safe = Family::gauge(
        "pg_replication_slot_safe_wal_size_bytes",
        "WAL that can still be written before the slot loses the WAL it needs (max_slot_wal_keep_size); absent when that limit is -1 (unlimited).",
    );
    let mut status = Family::gauge(
        "pg_replication_slot_wal_status",
        "1 for the slot's current wal_status: reserved (within max_wal_size), extended (kept beyond it), unreserved (about to be removed) or lost (removed: the consumer cannot continue).",
    );
    for s in &r.slots {
        let l = [
            ("slot_name", s.name.as_str()),
            ("slot_type", s.slot_type.as_str()),
        ];
        active.push(l, if s.active { 1.0 } else { 0.0 });
        if let Some(bytes) = s.retained_bytes {
            retained.push(l, bytes);
        }
        if let Some(bytes) = s.safe_wal_size_bytes {
            safe.push(l, bytes);
        }
        if let Some(current) = &s.wal_status {
            for st in WAL_STATUSES {
                status.push(
                    [
                        ("slot_name", s.name.as_str()),
                        ("slot_type", s.slot_type.as_str()),
                        ("wal_status", st),
                    ],
                    if current == st { 1.0 } else { 0.0 },
                );
            }
        }
    }

    // Two standbys with the same name from the same address would give one
    // series twice: keep the one further behind.
    let mut standbys: BTreeMap<(&str, &str), (Option<f64>, f64)> = BTreeMap::new();
    for s in &r.standbys {
        let entry = standbys
            .entry((s.application_name.as_str(), s.client_addr.as_str()))
            .or_insert((None, 0.0));
        entry.0 = match (entry.0, s.replay_lag_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        entry.1 = entry.1.max(s.replay_lag_seconds);
    }
    let mut lag_bytes = Family::gauge(
        "pg_stat_replication_pg_wal_lsn_diff",
        "Bytes of WAL a standby has not replayed yet, from pg_stat_replication on the primary (its current WAL position minus the standby's replay_lsn).",
    );
    let mut lag_seconds = Family::gauge(
        "pg_stat_replication_replay_lag_seconds",
        "Seconds between the primary writing recent WAL and the standby replaying it (pg_stat_replication.replay_lag); 0 once the standby has caught up and nothing new is written.",
    );
    for ((name, addr), (bytes, seconds)) in standbys {
        let l = [("application_name", name), ("client_addr", addr)];
        if let Some(b) = bytes {
            lag_bytes.push(l, b);
        }
        lag_seconds.push(l, seconds);
    }

    vec![
        position,
        Family::gauge(
            "pg_wal_segments",
            "WAL segment files in pg_wal (pg_ls_waldir()).",
        )
        .with_value(r.segments),
        Family::gauge(
            "pg_wal_size_bytes",
            "Disk space used by the WAL segment files in pg_wal.",
        )
        .with_value(r.wal_size_bytes),
        active,
        retained,
        safe,
        status,
        lag_bytes,
        lag_seconds,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    #[test]
    fn slots_and_standbys() {
        let f = families(&WalReading {
            position_bytes: Some(1e6),
            segments: 3.0,
            wal_size_bytes: 3.0 * 16.0 * 1024.0 * 1024.0,
            slots: vec![
                Slot {
                    name: "standby1".into(),
                    slot_type: "physical".into(),
                    active: false,
                    retained_bytes: Some(5000.0),
                    safe_wal_size_bytes: None,
                    wal_status: Some("extended".into()),
                },
                Slot {
                    name: "fresh".into(),
                    slot_type: "physical".into(),
                    active: false,
                    retained_bytes: None,
                    safe_wal_size_bytes: Some(10.0),
                    wal_status: None,
                },
            ],
            standbys: vec![
                Standby {
                    application_name: "walreceiver".into(),
                    client_addr: "10.0.0.2".into(),
                    replay_lag_bytes: Some(100.0),
                    replay_lag_seconds: 0.5,
                },
                Standby {
                    application_name: "walreceiver".into(),
                    client_addr: "10.0.0.2".into(),
                    replay_lag_bytes: Some(300.0),
                    replay_lag_seconds: 0.1,
                },
            ],
            ..Default::default()
        });
        assert_eq!(
            find(&f, "pg_wal_bytes_total").unwrap().value_of(&[]),
            Some(1e6)
        );
        let slot = [("slot_name", "standby1"), ("slot_type", "physical")];
        assert_eq!(
            find(&f, "pg_replication_slot_retained_wal_bytes")
                .unwrap()
                .value_of(&slot),
            Some(5000.0)
        );
        assert_eq!(
            find(&f, "pg_replication_slot_retained_wal_bytes")
                .unwrap()
                .samples
                .len(),
            1,
            "a slot that reserves nothing has no retained bytes"
        );
        let status = find(&f, "pg_replication_slot_wal_status").unwrap();
        assert_eq!(status.samples.len(), 4);
        assert_eq!(
            status.value_of(&[
                ("slot_name", "standby1"),
                ("slot_type", "physical"),
                ("wal_status", "extended")
            ]),
            Some(1.0)
        );
        let standby = [
            ("application_name", "walreceiver"),
            ("client_addr", "10.0.0.2"),
        ];
        assert_eq!(
            find(&f, "pg_stat_replication_pg_wal_lsn_diff")
                .unwrap()
                .value_of(&standby),
            Some(300.0)
        );
        assert_eq!(
            find(&f, "pg_stat_replication_replay_lag_seconds")
                .unwrap()
                .value_of(&standby),
            Some(0.5)
        );
    }

    #[test]
    fn version_aware_slot_columns() {
        assert!(slots_sql(150_000).contains("safe_wal_size"));
        assert!(!slots_sql(120_000).contains("safe_wal_size"));
    }
}
