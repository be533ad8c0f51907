//! Celery on Redis: queue depth from the broker's lists, and task counters,
//! runtimes and worker liveness from Celery's event stream.
//!
//! Workers and producers `PUBLISH` events on `{prefix}/{db}.celeryev/<kind>`
//! (see docs/celery.md). The consumer ([`consumer`]) receives them, [`decode`]
//! turns each message into events, and [`state`] applies them to an
//! [`EventState`] that `/metrics` reads at scrape time, so worker liveness is
//! computed against the current clock. The queue collector ([`queues`]) polls
//! the broker's lists; it sees the event state only through [`SentAt`].

pub mod consumer;
pub mod decode;
pub mod discovery;
pub mod queues;
pub mod state;
pub mod subscription;

use std::time::Duration;

pub use consumer::{channel_patterns, start_on_own_thread, supervise, ConsumerConfig, EventHub};
pub use decode::{decode, DecodeError, Decoded, Event};
pub use discovery::{DiscoveredQueues, QueueDiscoverySource};
pub use queues::{CeleryQueueSource, QueueConfig};
pub use state::{EventState, MessageCounts};

/// Label value standing for everything past a cap.
pub const OVERFLOW: &str = "__overflow__";
/// Label value when a task's name is not known.
pub const UNKNOWN: &str = "unknown";
/// Longest task name, queue or worker name kept as a label value. Anyone who
/// can PUBLISH on the broker chooses these strings, and each name is repeated
/// in some 45 series on every scrape until the exporter restarts: the caps
/// on how many names are kept bound nothing if one name may be megabytes.
/// Real names are module paths and host names, far below this.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest task id remembered. Celery's are 36-character uuids; an
/// application may choose its own (`task_id=`), rarely longer than a few
/// dozen characters. A longer one is not tracked, so its later events count
/// as `name="unknown"`, rather than let the 20,000 remembered tasks hold
/// megabytes each.
pub const MAX_TASK_ID_BYTES: usize = 128;

/// When a task was published, by its uuid: what the queue collector needs
/// from the event stream to date the message at the head of a queue.
pub trait SentAt: Send + Sync {
    /// The `task-sent` timestamp (sender's clock) of the task, if seen.
    fn sent_at(&self, uuid: &str) -> Option<f64>;
}

#[derive(Debug, Clone)]
pub struct EventLimits {
    pub max_task_names: usize,
    pub max_queues: usize,
    pub max_workers: usize,
    pub max_tracked_tasks: usize,
    /// How long a finished task stays known, for the events that can follow
    /// a terminal one (task-rejected after task-failed, …).
    pub finished_grace: Duration,
    /// Workers silent for longer than this leave `/metrics`.
    pub forget_workers_after: Duration,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_task_names: 500,
            max_queues: 100,
            max_workers: 500,
            max_tracked_tasks: 20_000,
            finished_grace: Duration::from_secs(60),
            forget_workers_after: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::decode::{decode, Decoded, Event};

    pub fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/celery/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn events(name: &str) -> Vec<Event> {
        match decode(&fixture(name)).unwrap() {
            Decoded::Events(e) => e,
            other => panic!("{name}: {other:?}"),
        }
    }
}
