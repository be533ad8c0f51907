//! Celery queue depth, unacknowledged messages and the age of the oldest
//! waiting message, read from the Redis broker the way kombu lays it out
//! (docs/celery.md): one list per queue and priority step, bindings in
//! `_kombu.binding.*`, in-flight messages in the `unacked` hash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::de::IgnoredAny;
use serde::Deserialize;
use thiserror::Error;

use super::discovery::DiscoveredQueues;
use super::{SentAt, MAX_NAME_BYTES, OVERFLOW};
use crate::redis_conn::SharedConnection;
use crate::runner::{unix_now, Source};
use crate::snapshot::Family;

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// kombu's transport options that decide key names, plus our bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// `global_keyprefix`, in front of every key.
    pub key_prefix: String,
    /// kombu's `sep` between a queue name and its priority step.
    pub separator: String,
    /// kombu's `priority_steps`; step 0 is the plain queue key.
    pub priority_steps: Vec<u8>,
    /// Queues always reported, even before anything declared them.
    pub queues: Vec<String>,
    /// Queues reported one by one; the rest are summed as `__overflow__`.
    pub max_queues: usize,
    /// Celery's `event_exchange` and `control_exchange`, whose bindings are
    /// not task queues.
    pub event_exchange: String,
    pub control_exchange: String,
    /// At most this many `unacked` entries are read per collection.
    pub unacked_scan_limit: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            key_prefix: String::new(),
            separator: "\x06\x16".into(),
            priority_steps: vec![0, 3, 6, 9],
            queues: Vec::new(),
            max_queues: 100,
            event_exchange: "celeryev".into(),
            control_exchange: "celery".into(),
            unacked_scan_limit: 10_000,
        }
    }
}

impl QueueConfig {
    /// The Redis key of `queue` at priority `step`, as kombu's `_q_for_pri`.
    pub fn key(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.key_prefix)
        } else {
            format!("{}{queue}{}{step}", self.key_prefix, self.separator)
        }
    }

    pub(super) fn is_system_exchange(&self, exchange: &str) -> bool {
        let control = &self.control_exchange;
        exchange == self.event_exchange
            || exchange == format!("{control}.pidbox")
            || exchange == format!("reply.{control}.pidbox")
    }

    /// Queue names bound in one binding set's members
    /// (`routing_key SEP pattern SEP queue`). A name longer than a label value
    /// may be is not a queue anyone declared through Celery: it is skipped.
    pub fn queues_in_binding(&self, members: &[Vec<u8>]) -> Vec<(String, String)> {
        let sep = self.separator.as_bytes();
        members
            .iter()
            .filter_map(|m| {
                let text = String::from_utf8_lossy(m);
                let parts: Vec<&str> = text.split(&*String::from_utf8_lossy(sep)).collect();
                match parts.as_slice() {
                    [routing_key, _pattern, queue]
                        if !queue.is_empty() && queue.len() <= MAX_NAME_BYTES =>
                    {
                        Some(((*routing_key).to_owned(), (*queue).to_owned()))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// What one collection read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueReading {
    /// Per queue: the length of each priority list and the identity of the
    /// message at each list's head (the next to be consumed).
    pub queues: Vec<QueueRead>,
    /// Queues past the cap, summed.
    pub overflow_length: u64,
    pub overflow_queues: usize,
    pub unacked_by_routing_key: BTreeMap<String, u64>,
    /// Entries of `unacked` not read because of the scan limit.
    pub unacked_unread: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueRead {
    pub name: String,
    pub lengths: Vec<u64>,
    pub heads: Vec<Option<HeadMessage>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadMessage {
    /// `headers.id` (the task uuid) or else kombu's delivery tag.
    pub id: String,
}

/// When each head message was first seen, by (queue, priority step).
pub type HeadsSeen = HashMap<(String, u8), (String, f64)>;

#[derive(Deserialize)]
struct MessageIds {
    #[serde(default)]
    headers: Option<Headers>,
    #[serde(default)]
    properties: Option<MessageProperties>,
}

#[derive(Deserialize)]
struct Headers {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct MessageProperties {
    #[serde(default)]
    delivery_tag: Option<String>,
}

/// Identifies a queued message; `None` for bytes kombu did not write.
pub fn head_message(raw: &[u8]) -> Option<HeadMessage> {
    let ids: MessageIds = serde_json::from_slice(raw).ok()?;
    let id = ids
        .headers
        .and_then(|h| h.id)
        .or_else(|| ids.properties.and_then(|p| p.delivery_tag))?;
    Some(HeadMessage { id })
}

/// The routing key of an `unacked` value `[message, exchange, routing_key]`.
pub fn unacked_routing_key(raw: &[u8]) -> Option<String> {
    serde_json::from_slice::<(IgnoredAny, String, String)>(raw)
        .ok()
        .map(|(_, _, rk)| rk)
}

/// Turns a reading into metric families. Ages come from `sent_at` (the
/// task-sent event's timestamp) when the events saw the task published,
/// else from when the message was first seen at the head of its list.
pub fn families(
    config: &QueueConfig,
    reading: &QueueReading,
    previous_heads: &HeadsSeen,
    now: f64,
    sent_at: &dyn Fn(&str) -> Option<f64>,
) -> (Vec<Family>, HeadsSeen) {
    let mut length = Family::gauge(
        "celery_queue_length",
        "Messages waiting in the queue, all priority lists summed; 0 when empty.",
    );
    let mut unacked = Family::gauge(
        "celery_queue_unacked",
        "Messages of the queue fetched by a worker but not yet acknowledged (prefetched, waiting for an ETA, or running with acks_late).",
    );
    let mut age = Family::gauge(
        "celery_queue_oldest_message_age_seconds",
        "Age of the oldest message waiting in the queue, in seconds; 0 when empty. From task-sent events when seen, else since the exporter first saw it at the head.",
    );
    let mut heads = HeadsSeen::new();
    let mut names = BTreeSet::new();
    for q in &reading.queues {
        let total: u64 = q.lengths.iter().sum();
        let label = [("queue", q.name.as_str())];
        length.push(label, total as f64);
        let mut oldest: f64 = 0.0;
        for (i, head) in q.heads.iter().enumerate() {
            let (Some(head), Some(step)) = (head, config.priority_steps.get(i)) else {
                continue;
            };
            let key = (q.name.clone(), *step);
            let first_seen = match previous_heads.get(&key) {
                Some((id, seen)) if *id == head.id => *seen,
                _ => now,
            };
            let since = sent_at(&head.id).unwrap_or(first_seen);
            oldest = oldest.max(now - since);
            heads.insert(key, (head.id.clone(), first_seen));
        }
        age.push(label, oldest.max(0.0));
        names.insert(q.name.as_str());
    }
    let mut unacked_by_queue: BTreeMap<&str, u64> = names.iter().map(|n| (*n, 0)).collect();
    let mut unacked_overflow = reading.unacked_unread;
    for (routing_key, n) in &reading.unacked_by_routing_key {
        match unacked_by_queue.get_mut(routing_key.as_str()) {
            Some(count) => *count += n,
            None => unacked_overflow += n,
        }
    }
    for (queue, n) in &unacked_by_queue {
        unacked.push([("queue", *queue)], *n as f64);
    }
    if reading.overflow_queues > 0 || unacked_overflow > 0 {
        length.push([("queue", OVERFLOW)], reading.overflow_length as f64);
        unacked.push([("queue", OVERFLOW)], unacked_overflow as f64);
    }
    let untracked = Family::gauge(
        "celery_queues_untracked",
        "Queues past --celery.max-queues, reported together as queue=\"__overflow__\".",
    )
    .with_value(reading.overflow_queues as f64);
    (vec![length, unacked, age, untracked], heads)
}

pub struct CeleryQueueSource {
    config: QueueConfig,
    connection: Arc<SharedConnection>,
    events: Option<Arc<dyn SentAt>>,
    discovered: DiscoveredQueues,
    heads: Mutex<HeadsSeen>,
}

impl CeleryQueueSource {
    /// `discovered` holds the queues the discovery collector found (empty
    /// when discovery is off).
    pub fn new(
        config: QueueConfig,
        connection: Arc<SharedConnection>,
        events: Option<Arc<dyn SentAt>>,
        discovered: DiscoveredQueues,
    ) -> Self {
        CeleryQueueSource {
            config,
            connection,
            events,
            discovered,
            heads: Mutex::new(HeadsSeen::new()),
        }
    }

    async fn read(
        &self,
        mut conn: redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<QueueReading> {
        let c = &self.config;
        // The configured queues first, then those discovery found.
        let mut names: Vec<String> = c.queues.clone();
        names.extend(self.discovered.load().iter().cloned());
        let mut seen = BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));

        let steps = c.priority_steps.len();
        let tracked = names.len().min(c.max_queues);
        let mut pipe = redis::pipe();
        for (i, q) in names.iter().enumerate() {
            for step in &c.priority_steps {
                pipe.cmd("LLEN").arg(c.key(q, *step));
                if i < tracked {
                    pipe.cmd("LINDEX").arg(c.key(q, *step)).arg(-1);
                }
            }
        }
        let unacked_key = format!("{}unacked", c.key_prefix);
        pipe.cmd("HLEN").arg(&unacked_key);
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        let mut reading = QueueReading::default();
        for (i, q) in names.iter().enumerate() {
            let mut read = QueueRead {
                name: q.clone(),
                ..Default::default()
            };
            for _ in 0..steps {
                let len: u64 = redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil))
                    .unwrap_or(0);
                if i < tracked {
                    let head: Option<Vec<u8>> =
                        redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil))
                            .unwrap_or(None);
                    read.heads.push(head.as_deref().and_then(head_message));
                }
                read.lengths.push(len);
            }
            if i < tracked {
                reading.queues.push(read);
            } else {
                reading.overflow_queues += 1;
                reading.overflow_length += read.lengths.iter().sum::<u64>();
            }
        }
        let unacked_total: u64 =
            redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil)).unwrap_or(0);

        // Per-queue in-flight counts need each entry's routing key.
        let mut cursor: u64 = 0;
        let mut read_entries: u64 = 0;
        while read_entries < c.unacked_scan_limit as u64 {
            let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&unacked_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            for value in flat.iter().skip(1).step_by(2) {
                let rk = unacked_routing_key(value).unwrap_or_else(|| OVERFLOW.to_owned());
                *reading.unacked_by_routing_key.entry(rk).or_default() += 1;
                read_entries += 1;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        reading.unacked_unread = unacked_total.saturating_sub(read_entries);
        Ok(reading)
    }
}

impl Source for CeleryQueueSource {
    type Error = QueueError;

    async fn collect(&self) -> Result<Vec<Family>, QueueError> {
        let reading = self.connection.with(|conn| self.read(conn)).await?;
        let lookup = |id: &str| self.events.as_ref().and_then(|events| events.sent_at(id));
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        let (families, next_heads) = families(&self.config, &reading, &heads, unix_now(), &lookup);
        *heads = next_heads;
        Ok(families)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::test_support::fixture;
    use crate::snapshot::find;

    #[test]
    fn keys_follow_kombu() {
        let c = QueueConfig::default();
        assert_eq!(c.key("notifications", 0), "notifications");
        assert_eq!(c.key("notifications", 3), "notifications\x06\x163");
        let custom = QueueConfig {
            key_prefix: "pfx:".into(),
            separator: ":".into(),
            priority_steps: (0..10).collect(),
            ..Default::default()
        };
        assert_eq!(custom.key("notifications", 7), "pfx:notifications:7");
    }

    #[test]
    fn bindings_name_queues() {
        let c = QueueConfig::default();
        let members = vec![
            b"notifications\x06\x16\x06\x16notifications".to_vec(),
            b"garbage".to_vec(),
            format!("q\x06\x16\x06\x16{}", "q".repeat(MAX_NAME_BYTES + 1)).into_bytes(),
        ];
        assert_eq!(
            c.queues_in_binding(&members),
            vec![("notifications".into(), "notifications".into())]
        );
        let colon = QueueConfig {
            separator: ":".into(),
            ..Default::default()
        };
        assert_eq!(
            colon.queues_in_binding(&[b"q::q".to_vec()]),
            vec![("q".into(), "q".into())]
        );
        assert!(
            c.is_system_exchange("celeryev")
                && c.is_system_exchange("celery.pidbox")
                && c.is_system_exchange("reply.celery.pidbox")
        );
        assert!(!c.is_system_exchange("celery"));
    }

    #[test]
    fn fixtures_identify_messages() {
        let head = head_message(&fixture("queue-message-notifications.json")).unwrap();
        assert_eq!(head.id, "90f155ec-a09b-4975-9739-ae15a9ef2d4d");
        assert!(head_message(&fixture("queue-message-notifications-priority5.json")).is_some());
        assert_eq!(
            unacked_routing_key(&fixture("unacked-hash-value.json")).as_deref(),
            Some("notifications")
        );
        assert_eq!(head_message(b"not json"), None);
        assert_eq!(unacked_routing_key(b"[1, 2]"), None);
    }

    fn reading() -> QueueReading {
        QueueReading {
            queues: vec![
                QueueRead {
                    name: "notifications".into(),
                    lengths: vec![4, 3, 2, 1],
                    heads: vec![
                        Some(HeadMessage { id: "a".into() }),
                        Some(HeadMessage { id: "b".into() }),
                        None,
                        None,
                    ],
                },
                QueueRead {
                    name: "marketing".into(),
                    lengths: vec![0, 0, 0, 0],
                    heads: vec![None; 4],
                },
            ],
            unacked_by_routing_key: BTreeMap::from([
                ("notifications".into(), 2),
                ("elsewhere".into(), 1),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn lengths_sum_priorities_and_empty_queues_report_zero() {
        let c = QueueConfig::default();
        let (f, _) = families(&c, &reading(), &HeadsSeen::new(), 1000.0, &|_| None);
        let length = find(&f, "celery_queue_length").unwrap();
        assert_eq!(length.value_of(&[("queue", "notifications")]), Some(10.0));
        assert_eq!(length.value_of(&[("queue", "marketing")]), Some(0.0));
        let unacked = find(&f, "celery_queue_unacked").unwrap();
        assert_eq!(unacked.value_of(&[("queue", "notifications")]), Some(2.0));
        assert_eq!(unacked.value_of(&[("queue", "marketing")]), Some(0.0));
        assert_eq!(unacked.value_of(&[("queue", OVERFLOW)]), Some(1.0));
    }

    #[test]
    fn head_age_tracks_first_sight_or_task_sent() {
        let c = QueueConfig::default();
        let (f, heads) = families(&c, &reading(), &HeadsSeen::new(), 1000.0, &|_| None);
        let age = |f: &[Family], q: &str| {
            find(f, "celery_queue_oldest_message_age_seconds")
                .unwrap()
                .value_of(&[("queue", q)])
        };
        assert_eq!(age(&f, "notifications"), Some(0.0));
        let (f, heads) = families(&c, &reading(), &heads, 1030.0, &|_| None);
        assert_eq!(age(&f, "notifications"), Some(30.0));
        assert_eq!(age(&f, "marketing"), Some(0.0));
        // The head moved on: the new head's age starts now.
        let mut moved = reading();
        moved.queues[0].heads = vec![Some(HeadMessage { id: "c".into() }), None, None, None];
        let (f, _) = families(&c, &moved, &heads, 1040.0, &|_| None);
        assert_eq!(age(&f, "notifications"), Some(0.0));
        // task-sent knows better.
        let (f, _) = families(&c, &moved, &heads, 1040.0, &|id| {
            (id == "c").then_some(940.0)
        });
        assert_eq!(age(&f, "notifications"), Some(100.0));
    }
}
