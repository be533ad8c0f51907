//! The subscription to Celery's event channels, and the hub that shares
//! the event state with `/metrics` and the queue collector.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::decode::decode;
use super::state::EventState;
use super::subscription::{subscribe, Frame, Reader, SubscribeError, Writer};
use super::{EventLimits, SentAt};
use crate::exposition::LiveFamilies;
use crate::redis_conn::{escape_glob, RedisTarget};
use crate::runner::{panic_message, CollectorSlot};
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

/// How the subscription is run and watched.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub target: RedisTarget,
    pub patterns: Vec<String>,
    /// Time limit of connecting, subscribing and of a PING's reply.
    pub timeout: Duration,
    /// After this long without a message, the subscription is checked with
    /// a PING: a connection whose path went silent (a NAT or conntrack entry
    /// dropped, a failover) never closes by itself.
    pub idle_check: Duration,
}

/// Starts [`supervise`] on a thread of its own, with a single-threaded
/// runtime: the event stream is the exporter's hot path (up to a hundred
/// thousand messages a second), so it gets a core rather than competing with
/// scrapes and collectors for the shared workers. With the socket reader and
/// the decoder on one thread, the reader only runs when the decoder has
/// caught up: a backlog waits in the kernel's socket buffer and in Redis's
/// client output buffer (which drops a subscriber that falls too far
/// behind, counted as a reconnect), not in the exporter's memory.
pub fn start_on_own_thread(
    config: ConsumerConfig,
    hub: Arc<EventHub>,
    slot: Arc<CollectorSlot>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("celery-events".into())
        .spawn(move || runtime.block_on(supervise(config, hub, slot)))?;
    Ok(())
}

/// Runs the consumer for as long as the exporter lives, under the same
/// watch as a polled collector: `slot` shows it up while subscribed, counts
/// each lost or failed subscription as an error, and a consumer task that
/// ends or panics is reported and started again.
pub async fn supervise(config: ConsumerConfig, hub: Arc<EventHub>, slot: Arc<CollectorSlot>) {
    loop {
        let task = tokio::spawn(consume(config.clone(), hub.clone(), slot.clone()));
        let why = match task.await {
            Ok(()) => "ended".to_owned(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
            Err(e) => e.to_string(),
        };
        warn!(collector = %slot.name, why, "the Celery event consumer stopped; starting it again");
        hub.with(|s| s.set_stream_up(false));
        slot.record(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Why a subscription ended.
enum Lost {
    Closed(SubscribeError),
    NoPong(String),
}

/// Subscribes and consumes events, reconnecting with capped backoff after
/// the subscription is lost or silent.
async fn consume(config: ConsumerConfig, hub: Arc<EventHub>, slot: Arc<CollectorSlot>) {
    let target = &config.target;
    let mut backoff = Duration::from_millis(250);
    let mut failing = false;
    loop {
        let subscribed =
            tokio::time::timeout(config.timeout, subscribe(target, &config.patterns)).await;
        let subscribed = match subscribed {
            Ok(Ok(halves)) => Ok(halves),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "connecting and subscribing timed out after {:?}",
                config.timeout
            )),
        };
        match subscribed {
            Ok((reader, writer)) => {
                hub.with(|s| s.set_stream_up(true));
                slot.record(true);
                info!(server = %target.description, patterns = ?config.patterns, "subscribed to Celery events");
                failing = false;
                backoff = Duration::from_millis(250);
                let lost = listen(&config, reader, writer, &hub, &slot).await;
                hub.with(|s| s.set_stream_up(false));
                slot.record(false);
                match lost {
                    Lost::Closed(error) => {
                        warn!(server = %target.description, %error, "Celery event stream lost; reconnecting")
                    }
                    Lost::NoPong(error) => warn!(
                        server = %target.description, %error, idle = ?config.idle_check,
                        "Celery event stream silent and its PING unanswered; reconnecting"
                    ),
                }
            }
            Err(error) => {
                if !failing {
                    let error = if target.tls {
                        format!("{error}; the URL is rediss:// (TLS): check that the server's port speaks TLS")
                    } else {
                        error
                    };
                    warn!(server = %target.description, %error, "cannot subscribe to Celery events; retrying");
                    failing = true;
                }
                slot.record(false);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Hands messages to the hub until the subscription closes, or stays silent
/// and does not answer a PING.
async fn listen(
    config: &ConsumerConfig,
    mut reader: Reader,
    mut writer: Writer,
    hub: &EventHub,
    slot: &CollectorSlot,
) -> Lost {
    // How often a flowing stream refreshes the collector's last success.
    let report_every = config.idle_check.min(Duration::from_secs(5));
    let mut last_heard = Instant::now();
    let mut last_report = last_heard;
    let mut ping_sent: Option<Instant> = None;
    loop {
        // Silent for idle_check: PING, and allow --redis.timeout for the
        // answer (any frame counts: the connection is alive).
        let wake = match ping_sent {
            Some(at) => at + config.timeout,
            None => last_heard + config.idle_check,
        };
        tokio::select! {
            frame = reader.next() => {
                match frame {
                    Ok(Frame::Message(payload)) => hub.handle(reader.payload(payload)),
                    Ok(Frame::Pong | Frame::Other) => {}
                    Err(e) => return Lost::Closed(e),
                }
                last_heard = Instant::now();
                ping_sent = None;
                if last_heard - last_report >= report_every {
                    slot.record(true);
                    last_report = last_heard;
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if ping_sent.is_some() {
                    return Lost::NoPong(format!("no reply within {:?}", config.timeout));
                }
                if let Err(e) = tokio::time::timeout(config.timeout, writer.ping()).await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                {
                    return Lost::NoPong(e.to_string());
                }
                ping_sent = Some(Instant::now());
            }
        }
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
