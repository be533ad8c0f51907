//! Finding Celery's queues from kombu's bindings (`_kombu.binding.*` sets).
//!
//! Finding them means scanning the broker's keyspace, which holds every
//! result key when the result backend shares the database (millions, in a
//! busy shop). So discovery runs on a slow cadence of its own, publishes the
//! names it found for the queue collector, and says when it gave up before
//! the end of the keyspace instead of hiding it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::queues::{QueueConfig, QueueError};
use crate::redis_conn::{escape_glob, SharedConnection};
use crate::runner::Source;
use crate::snapshot::Family;

/// Keys SCAN is asked to look at per call: large enough that a million keys
/// take a thousand round trips, small enough that each call stays well
/// under a millisecond of Redis's time.
const SCAN_COUNT: usize = 1000;

/// The queue names the last discovery found, shared with the queue
/// collector.
pub type DiscoveredQueues = Arc<ArcSwap<Vec<String>>>;

/// What one scan of the keyspace found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiscoveryReading {
    pub queues: BTreeSet<String>,
    pub keys_scanned: u64,
    /// The scan stopped at its budget before the end of the keyspace.
    pub truncated: bool,
}

pub struct QueueDiscoverySource {
    config: QueueConfig,
    connection: Arc<SharedConnection>,
    found: DiscoveredQueues,
    /// Keys one discovery may scan before it stops.
    max_keys: u64,
    was_truncated: AtomicBool,
}

impl QueueDiscoverySource {
    pub fn new(
        config: QueueConfig,
        connection: Arc<SharedConnection>,
        found: DiscoveredQueues,
        max_keys: u64,
    ) -> Self {
        QueueDiscoverySource {
            config,
            connection,
            found,
            max_keys,
            was_truncated: AtomicBool::new(false),
        }
    }

    async fn read(
        &self,
        mut conn: redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<DiscoveryReading> {
        let c = &self.config;
        let pattern = format!("{}_kombu.binding.*", escape_glob(&c.key_prefix));
        let binding_prefix = format!("{}_kombu.binding.", c.key_prefix);
        let mut reading = DiscoveryReading::default();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        // SCAN, not KEYS: bounded steps that never block Redis.
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch.into_iter().filter(|k| {
                k.strip_prefix(&binding_prefix)
                    .is_some_and(|exchange| !c.is_system_exchange(exchange))
            }));
            reading.keys_scanned += SCAN_COUNT as u64;
            cursor = next;
            if cursor == 0 {
                break;
            }
            if reading.keys_scanned >= self.max_keys {
                reading.truncated = true;
                break;
            }
        }
        keys.sort();
        keys.dedup();
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("SMEMBERS").arg(k);
            }
            let members: Vec<Vec<Vec<u8>>> = pipe.query_async(&mut conn).await?;
            for set in &members {
                reading
                    .queues
                    .extend(c.queues_in_binding(set).into_iter().map(|(_, q)| q));
            }
        }
        Ok(reading)
    }

    fn note_truncation(&self, reading: &DiscoveryReading) {
        let before = self
            .was_truncated
            .swap(reading.truncated, Ordering::Relaxed);
        match (before, reading.truncated) {
            (false, true) => warn!(
                keys_scanned = reading.keys_scanned,
                "queue discovery stopped before the end of the keyspace: queues bound in \
                 the keys it did not reach are missing; list them in --celery.queues or \
                 raise --celery.discovery-max-keys"
            ),
            (true, false) => info!("queue discovery reaches the end of the keyspace again"),
            _ => {}
        }
    }
}

/// The families of one discovery.
pub fn families(reading: &DiscoveryReading) -> Vec<Family> {
    vec![
        Family::gauge(
            "celery_queue_discovery_truncated",
            "1 if the last queue discovery stopped at --celery.discovery-max-keys before the end of the keyspace (queues may be missing), else 0.",
        )
        .with_value(if reading.truncated { 1.0 } else { 0.0 }),
        Family::gauge(
            "celery_queues_discovered",
            "Queues the last discovery found in kombu's bindings.",
        )
        .with_value(reading.queues.len() as f64),
    ]
}

impl Source for QueueDiscoverySource {
    type Error = QueueError;

    async fn collect(&self) -> Result<Vec<Family>, QueueError> {
        let reading = self.connection.with(|conn| self.read(conn)).await?;
        self.note_truncation(&reading);
        self.found
            .store(Arc::new(reading.queues.iter().cloned().collect()));
        Ok(families(&reading))
    }
}
