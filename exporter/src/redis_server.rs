//! Redis infrastructure metrics (`redis_*`) from `INFO`, with `CONFIG GET`
//! as a fallback for limits that older servers leave out of `INFO`.

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::redis_conn::SharedConnection;
use crate::runner::Source;
use crate::snapshot::Family;

#[derive(Debug, Error)]
pub enum RedisError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

pub struct RedisServerSource {
    connection: Arc<SharedConnection>,
}

impl RedisServerSource {
    pub fn new(connection: Arc<SharedConnection>) -> Self {
        RedisServerSource { connection }
    }
}

impl Source for RedisServerSource {
    type Error = RedisError;

    async fn collect(&self) -> Result<Vec<Family>, RedisError> {
        let info: String = self
            .connection
            .with(|mut c| async move { redis::cmd("INFO").arg("all").query_async(&mut c).await })
            .await?;
        let mut fields = parse_info(&info);
        for setting in ["maxclients", "maxmemory"] {
            if !fields.contains_key(setting) {
                // Managed Redis often disables CONFIG; then the limit is
                // simply not reported.
                let reply: redis::RedisResult<Vec<String>> = self
                    .connection
                    .with(|mut c| async move {
                        redis::cmd("CONFIG")
                            .arg("GET")
                            .arg(setting)
                            .query_async(&mut c)
                            .await
                    })
                    .await;
                if let Ok([_, value]) = reply.as_deref() {
                    fields.insert(setting.to_owned(), value.clone());
                }
            }
        }
        Ok(families(&fields))
    }

    fn failure_families(&self) -> Vec<Family> {
        vec![up_family(false)]
    }
}

fn up_family(up: bool) -> Family {
    Family::gauge(
        "redis_up",
        "1 if the exporter's last attempt to read Redis succeeded, 0 if it failed.",
    )
    .with_value(if up { 1.0 } else { 0.0 })
}

/// `INFO` as field name to value; section headers and blanks dropped.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The metrics, from `INFO` fields (plus `maxclients`/`maxmemory` from
/// `CONFIG GET` when `INFO` lacks them).
pub fn families(fields: &HashMap<String, String>) -> Vec<Family> {
    let number = |key: &str| fields.get(key).and_then(|v| v.trim().parse::<f64>().ok());
    let mut out = vec![up_family(true)];
    let simple: [(&str, &str, &str, bool); 10] = [
        (
            "redis_connected_clients",
            "connected_clients",
            "Client connections, replicas excluded.",
            false,
        ),
        (
            "redis_blocked_clients",
            "blocked_clients",
            "Clients blocked in a blocking call (BRPOP, BLPOP, …), such as idle Celery workers.",
            false,
        ),
        (
            "redis_maxclients",
            "maxclients",
            "The maxclients setting: connections Redis accepts before refusing.",
            false,
        ),
        (
            "redis_memory_used_bytes",
            "used_memory",
            "Memory Redis has allocated, in bytes.",
            false,
        ),
        (
            "redis_memory_max_bytes",
            "maxmemory",
            "The maxmemory setting in bytes; 0 means no limit.",
            false,
        ),
        (
            "redis_commands_processed_total",
            "total_commands_processed",
            "Commands processed by the server.",
            true,
        ),
        (
            "redis_keyspace_hits_total",
            "keyspace_hits",
            "Successful lookups of keys.",
            true,
        ),
        (
            "redis_keyspace_misses_total",
            "keyspace_misses",
            "Failed lookups of keys.",
            true,
        ),
        (
            "redis_evicted_keys_total",
            "evicted_keys",
            "Keys evicted because of the maxmemory limit.",
            true,
        ),
        (
            "redis_rejected_connections_total",
            "rejected_connections",
            "Connections refused because of the maxclients limit.",
            true,
        ),
    ];
    for (name, field, help, counter) in simple {
        if let Some(value) = number(field) {
            let family = if counter {
                Family::counter(name, help)
            } else {
                Family::gauge(name, help)
            };
            out.push(family.with_value(value));
        }
    }
    let mut keys = Family::gauge("redis_db_keys", "Keys in each database that holds any.");
    let mut dbs: Vec<(u32, f64)> = fields
        .iter()
        .filter_map(|(k, v)| {
            let db = k.strip_prefix("db")?.parse::<u32>().ok()?;
            let count = v
                .split(',')
                .find_map(|part| part.strip_prefix("keys="))?
                .parse()
                .ok()?;
            Some((db, count))
        })
        .collect();
    dbs.sort_by_key(|(db, _)| *db);
    for (db, count) in dbs {
        keys.push([("db", db.to_string().as_str())], count);
    }
    out.push(keys);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\n\r\n# Clients\r\nconnected_clients:7\r\nmaxclients:10000\r\nblocked_clients:2\r\n\
# Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\n# Stats\r\ntotal_commands_processed:1234\r\nkeyspace_hits:10\r\nkeyspace_misses:3\r\n\
evicted_keys:0\r\nrejected_connections:1\r\n# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\ndb10:keys=3,expires=0,avg_ttl=0\r\n";

    #[test]
    fn info_becomes_metrics() {
        let f = families(&parse_info(INFO));
        let one = |name: &str| find(&f, name).and_then(|f| f.value_of(&[]));
        assert_eq!(one("redis_up"), Some(1.0));
        assert_eq!(one("redis_connected_clients"), Some(7.0));
        assert_eq!(one("redis_blocked_clients"), Some(2.0));
        assert_eq!(one("redis_maxclients"), Some(10000.0));
        assert_eq!(one("redis_memory_used_bytes"), Some(1048576.0));
        assert_eq!(one("redis_memory_max_bytes"), Some(0.0));
        assert_eq!(one("redis_commands_processed_total"), Some(1234.0));
        assert_eq!(one("redis_rejected_connections_total"), Some(1.0));
        let keys = find(&f, "redis_db_keys").unwrap();
        assert_eq!(keys.value_of(&[("db", "0")]), Some(12.0));
        assert_eq!(keys.value_of(&[("db", "10")]), Some(3.0));
        assert_eq!(keys.samples[0].labels[0].1, "0", "sorted by number");
    }

    #[test]
    fn missing_fields_are_left_out_not_zeroed() {
        let f = families(&parse_info("# Clients\r\nconnected_clients:1\r\n"));
        assert!(find(&f, "redis_maxclients").is_none());
        assert!(find(&f, "redis_connected_clients").is_some());
    }
}
