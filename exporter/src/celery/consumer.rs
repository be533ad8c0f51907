//! The subscription to Celery's event channels, and the hub that shares
//! the event state with `/metrics` and the queue collector.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tracing::{info, warn};

use super::decode::decode;
use super::state::EventState;
use super::{EventLimits, SentAt};
use crate::exposition::LiveFamilies;
use crate::redis_conn::{escape_glob, RedisTarget};
use crate::snapshot::Family;

/// The state behind a lock, shared by the consumer and `/metrics`.
#[derive(Debug)]
pub struct EventHub {
    state: Mutex<EventState>,
}

impl EventHub {
    pub fn new(limits: EventLimits) -> Arc<Self> {
        Arc::new(EventHub {
            state: Mutex::new(EventState::new(limits)),
        })
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut EventState) -> T) -> T {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Decodes outside the lock, applies inside it.
    pub fn handle(&self, payload: &[u8]) {
        let decoded = decode(payload);
        let now = Instant::now();
        self.with(|s| s.apply_message(decoded, now));
    }
}

impl SentAt for EventHub {
    fn sent_at(&self, uuid: &str) -> Option<f64> {
        self.with(|s| s.sent_at(uuid))
    }
}

impl LiveFamilies for EventHub {
    fn families(&self) -> Vec<Family> {
        let now = Instant::now();
        self.with(|s| s.families(now))
    }
}

/// The PSUBSCRIBE patterns for the event channels of `dbs`: both
/// `/{db}.celeryev/<kind>` and, with fanout_patterns off, `/{db}.celeryev`.
pub fn channel_patterns(key_prefix: &str, dbs: &[i64]) -> Vec<String> {
    let escaped = escape_glob(key_prefix);
    dbs.iter()
        .map(|db| format!("{escaped}/{db}.celeryev*"))
        .collect()
}

/// Subscribes and consumes events forever, reconnecting with capped
/// backoff after Redis goes away.
pub async fn consume(
    target: RedisTarget,
    patterns: Vec<String>,
    hub: Arc<EventHub>,
    connect_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(250);
    let mut failing = false;
    loop {
        let result = async {
            let mut pubsub = target.pubsub(connect_timeout).await?;
            for p in &patterns {
                pubsub.psubscribe(p).await?;
            }
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match result {
            Ok(mut pubsub) => {
                hub.with(|s| s.set_stream_up(true));
                info!(target = %target.description, patterns = ?patterns, "subscribed to Celery events");
                failing = false;
                backoff = Duration::from_millis(250);
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    hub.handle(message.get_payload_bytes());
                }
                hub.with(|s| s.set_stream_up(false));
                warn!(target = %target.description, "Celery event stream lost; reconnecting");
            }
            Err(error) => {
                if !failing {
                    warn!(target = %target.description, %error, "cannot subscribe to Celery events; retrying");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_the_prefix() {
        assert_eq!(channel_patterns("", &[0]), vec!["/0.celeryev*"]);
        assert_eq!(
            channel_patterns("pfx:", &[5, 6]),
            vec!["pfx:/5.celeryev*", "pfx:/6.celeryev*"]
        );
        assert_eq!(
            channel_patterns("a*[b]", &[1]),
            vec!["a\\*\\[b\\]/1.celeryev*"]
        );
    }
}
