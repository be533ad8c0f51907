//! The server settings that alerts compare against, and the transaction ID
//! age of every database (wraparound).
//!
//! Names follow postgres_exporter's settings collector: `pg_settings_<name>`,
//! with `_seconds` or `_bytes` added when the setting has a time or size
//! unit, converted to that base unit (-1, "no limit", is left as is). Only
//! the few settings below are read, so the series count is fixed.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::PostgresError;
use crate::runner::Source;
use crate::snapshot::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    None,
    Seconds,
    Bytes,
}

/// (setting, unit of the metric, help).
const SETTINGS: [(&str, Unit, &str); 8] = [
    (
        "autovacuum",
        Unit::None,
        "1 if autovacuum is on (the autovacuum setting). With it off, dead rows pile up and only manual VACUUM or an anti-wraparound vacuum removes them.",
    ),
    (
        "autovacuum_freeze_max_age",
        Unit::None,
        "autovacuum_freeze_max_age: transaction ID age at which autovacuum forces a vacuum to prevent wraparound. Compare pg_database_wraparound_age_datfrozenxid against it.",
    ),
    (
        "autovacuum_multixact_freeze_max_age",
        Unit::None,
        "autovacuum_multixact_freeze_max_age: multixact ID age at which autovacuum forces a vacuum. Compare pg_database_wraparound_age_datminmxid against it.",
    ),
    (
        "autovacuum_vacuum_scale_factor",
        Unit::None,
        "autovacuum_vacuum_scale_factor: autovacuum vacuums a table once its dead rows exceed this fraction of its rows (plus autovacuum_vacuum_threshold).",
    ),
    (
        "autovacuum_vacuum_threshold",
        Unit::None,
        "autovacuum_vacuum_threshold: dead rows a table needs, on top of the scale factor, before autovacuum vacuums it.",
    ),
    (
        "checkpoint_timeout",
        Unit::Seconds,
        "checkpoint_timeout in seconds: the longest time between scheduled checkpoints.",
    ),
    (
        "max_wal_size",
        Unit::Bytes,
        "max_wal_size in bytes: WAL written between checkpoints beyond which a checkpoint is requested early.",
    ),
    (
        "max_slot_wal_keep_size",
        Unit::Bytes,
        "max_slot_wal_keep_size in bytes (PostgreSQL 13+): WAL a replication slot may hold back before it is invalidated; -1 means no limit, so a forgotten slot can fill the disk.",
    ),
];

const SETTINGS_SQL: &str = "\
SELECT name, setting, COALESCE(unit, ''), vartype FROM pg_settings WHERE name = ANY($1)";

/// Every database, templates included: wraparound stops the whole server
/// whichever database reaches it, and autovacuum must freeze template0 too.
const WRAPAROUND_SQL: &str = "\
SELECT datname::text, age(datfrozenxid)::float8, mxid_age(datminmxid)::float8 FROM pg_database";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingRow {
    pub name: String,
    pub setting: String,
    pub unit: String,
    pub vartype: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsReading {
    pub settings: Vec<SettingRow>,
    /// (database, age(datfrozenxid), mxid_age(datminmxid)).
    pub databases: Vec<(String, f64, f64)>,
}

pub struct SettingsSource {
    pool: PgPool,
}

impl SettingsSource {
    pub fn new(pool: PgPool) -> Self {
        SettingsSource { pool }
    }

    async fn read(&self) -> Result<SettingsReading, sqlx::Error> {
        let mut conn = super::acquire(&self.pool).await?;
        let names: Vec<String> = SETTINGS.iter().map(|s| s.0.to_owned()).collect();
        let settings = sqlx::query(SETTINGS_SQL)
            .bind(names)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                Ok(SettingRow {
                    name: r.try_get(0)?,
                    setting: r.try_get(1)?,
                    unit: r.try_get(2)?,
                    vartype: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let databases = sqlx::query(WRAPAROUND_SQL)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(SettingsReading {
            settings,
            databases,
        })
    }
}

impl Source for SettingsSource {
    type Error = PostgresError;

    async fn collect(&self) -> Result<Vec<Family>, PostgresError> {
        Ok(families(&self.read().await?))
    }
}

/// A setting's value in the metric's unit, from `pg_settings`' text and
/// unit (`8kB`, `MB`, `ms`, `min`, …). `None` when it cannot be read.
fn value_of(row: &SettingRow, want: Unit) -> Option<f64> {
    if row.vartype == "bool" {
        return Some(if row.setting == "on" { 1.0 } else { 0.0 });
    }
    let value: f64 = row.setting.trim().parse().ok()?;
    if value == -1.0 {
        return Some(value);
    }
    let factor = match (want, row.unit.as_str()) {
        (_, "") => 1.0,
        (Unit::Seconds, "ms") => 0.001,
        (Unit::Seconds, "s") => 1.0,
        (Unit::Seconds, "min") => 60.0,
        (Unit::Seconds, "h") => 3600.0,
        (Unit::Seconds, "d") => 86400.0,
        (Unit::Bytes, unit) => {
            // "B", "kB", "MB", "GB", "TB", or a multiple such as "8kB".
            let digits = unit.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            let multiple: f64 = if digits == 0 {
                1.0
            } else {
                unit[..digits].parse().ok()?
            };
            let base = match &unit[digits..] {
                "B" => 1.0,
                "kB" => 1024.0,
                "MB" => 1024.0 * 1024.0,
                "GB" => 1024.0 * 1024.0 * 1024.0,
                "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            multiple * base
        }
        _ => return None,
    };
    Some(value * factor)
}

/// Turns one reading into metric families.
pub fn families(r: &SettingsReading) -> Vec<Family> {
    let mut out = Vec::new();
    for (name, unit, help) in SETTINGS {
        let Some(row) = r.settings.iter().find(|s| s.name == name) else {
            // Not on this version (max_slot_wal_keep_size before 13).
            continue;
        };
        let Some(value) = value_of(row, unit) else {
            continue;
        };
        let metric = match unit {
            Unit::None => format!("pg_settings_{name}"),
            Unit::Seconds => format!("pg_settings_{name}_seconds"),
            Unit::Bytes => format!("pg_settings_{name}_bytes"),
        };
        out.push(Family::gauge(metric, help).with_value(value));
    }
    let mut xid = Family::gauge(
        "pg_database_wraparound_age_datfrozenxid",
        "Age in transactions of the database's oldest unfrozen transaction ID (age(datfrozenxid)). Autovacuum forces a freeze at autovacuum_freeze_max_age; at about 2.1 billion the server stops accepting writes.",
    );
    let mut mxid = Family::gauge(
        "pg_database_wraparound_age_datminmxid",
        "Age of the database's oldest multixact ID (mxid_age(datminmxid)); the same wraparound limit applies, against autovacuum_multixact_freeze_max_age.",
    );
    for (db, xid_age, mxid_age) in &r.databases {
        xid.push([("datname", db.as_str())], *xid_age);
        mxid.push([("datname", db.as_str())], *mxid_age);
    }
    out.push(xid);
    out.push(mxid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    fn row(name: &str, setting: &str, unit: &str, vartype: &str) -> SettingRow {
        SettingRow {
            name: name.into(),
            setting: setting.into(),
            unit: unit.into(),
            vartype: vartype.into(),
        }
    }

    #[test]
    fn units_are_converted_to_base_units() {
        let f = families(&SettingsReading {
            settings: vec![
                row("autovacuum", "on", "", "bool"),
                row("autovacuum_freeze_max_age", "200000000", "", "integer"),
                row("autovacuum_vacuum_scale_factor", "0.2", "", "real"),
                row("checkpoint_timeout", "300", "s", "integer"),
                row("max_wal_size", "1024", "MB", "integer"),
                row("max_slot_wal_keep_size", "-1", "MB", "integer"),
            ],
            databases: vec![("app".into(), 1234.0, 5.0)],
        });
        let v = |name: &str| find(&f, name).map(|f| f.value_of(&[]).unwrap());
        assert_eq!(v("pg_settings_autovacuum"), Some(1.0));
        assert_eq!(v("pg_settings_autovacuum_freeze_max_age"), Some(2e8));
        assert_eq!(v("pg_settings_autovacuum_vacuum_scale_factor"), Some(0.2));
        assert_eq!(v("pg_settings_checkpoint_timeout_seconds"), Some(300.0));
        assert_eq!(
            v("pg_settings_max_wal_size_bytes"),
            Some(1024.0 * 1048576.0)
        );
        assert_eq!(v("pg_settings_max_slot_wal_keep_size_bytes"), Some(-1.0));
        // Absent from the server: absent from the metrics.
        assert_eq!(v("pg_settings_autovacuum_multixact_freeze_max_age"), None);
        assert_eq!(
            find(&f, "pg_database_wraparound_age_datfrozenxid")
                .unwrap()
                .value_of(&[("datname", "app")]),
            Some(1234.0)
        );
    }

    #[test]
    fn block_multiples_and_odd_units() {
        let bytes =
            |setting: &str, unit: &str| value_of(&row("x", setting, unit, "integer"), Unit::Bytes);
        assert_eq!(bytes("16", "8kB"), Some(16.0 * 8192.0));
        assert_eq!(bytes("2", "GB"), Some(2.0 * 1073741824.0));
        assert_eq!(bytes("2", "parsecs"), None);
        let secs = |setting: &str, unit: &str| {
            value_of(&row("x", setting, unit, "integer"), Unit::Seconds)
        };
        assert_eq!(secs("1500", "ms"), Some(1.5));
        assert_eq!(secs("5", "min"), Some(300.0));
        assert_eq!(secs("abc", "s"), None);
    }
}
