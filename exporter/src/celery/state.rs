//! Everything learnt from the event stream, as plain data: no I/O, and time
//! comes in as arguments, so tests drive it directly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;

use super::decode::{DecodeError, Decoded, Event};
use super::{EventLimits, MAX_NAME_BYTES, MAX_TASK_ID_BYTES, OVERFLOW, UNKNOWN};
use crate::snapshot::{Family, Kind, Sample, Value};

/// Bucket bounds for task runtimes and waits: background jobs take from
/// milliseconds (a notification) to minutes (a report).
pub const BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskEvent {
    Sent,
    Received,
    Started,
    Succeeded,
    Failed,
    Retried,
    Revoked,
    Rejected,
    Cancelled,
}

const TASK_EVENTS: [(TaskEvent, &str, &str); 9] = [
    (
        TaskEvent::Sent,
        "celery_task_sent_total",
        "Tasks published by producers (task-sent events; needs task_send_sent_event).",
    ),
    (
        TaskEvent::Received,
        "celery_task_received_total",
        "Tasks received by a worker (task-received events).",
    ),
    (
        TaskEvent::Started,
        "celery_task_started_total",
        "Tasks a worker started executing (task-started events).",
    ),
    (
        TaskEvent::Succeeded,
        "celery_task_succeeded_total",
        "Tasks that finished successfully (task-succeeded events).",
    ),
    (
        TaskEvent::Failed,
        "celery_task_failed_total",
        "Tasks that raised an exception (task-failed events).",
    ),
    (
        TaskEvent::Retried,
        "celery_task_retried_total",
        "Task attempts that asked to be retried (task-retried events).",
    ),
    (
        TaskEvent::Revoked,
        "celery_task_revoked_total",
        "Tasks revoked, terminated or expired (task-revoked events).",
    ),
    (
        TaskEvent::Rejected,
        "celery_task_rejected_total",
        "Tasks a worker rejected (task-rejected events).",
    ),
    (
        TaskEvent::Cancelled,
        "celery_task_cancelled_total",
        "Running tasks cancelled by a cold shutdown or lost connection (task-cancelled events).",
    ),
];

impl TaskEvent {
    fn from_kind(kind: &str) -> Option<TaskEvent> {
        Some(match kind {
            "task-sent" => TaskEvent::Sent,
            "task-received" => TaskEvent::Received,
            "task-started" => TaskEvent::Started,
            "task-succeeded" => TaskEvent::Succeeded,
            "task-failed" => TaskEvent::Failed,
            "task-retried" => TaskEvent::Retried,
            "task-revoked" => TaskEvent::Revoked,
            "task-rejected" => TaskEvent::Rejected,
            "task-cancelled" => TaskEvent::Cancelled,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskEvent::Succeeded
                | TaskEvent::Failed
                | TaskEvent::Revoked
                | TaskEvent::Rejected
                | TaskEvent::Cancelled
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        if let Some(i) = BUCKETS.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn value(&self) -> Value {
        Value::Histogram {
            sum: self.sum,
            count: self.count,
            buckets: BUCKETS
                .iter()
                .copied()
                .zip(self.counts.iter().copied())
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct TrackedTask {
    name: Arc<str>,
    sent_at: Option<f64>,
    received_at: Option<f64>,
    started_at: Option<f64>,
    finished: bool,
}

#[derive(Debug, Clone)]
struct Worker {
    last_seen: Instant,
    /// Heartbeat interval of the last regular heartbeat.
    freq: f64,
    active: Option<f64>,
    offline: bool,
}

/// Capped set of interned label values.
#[derive(Debug, Default)]
struct Interner {
    values: HashSet<Arc<str>>,
    cap: usize,
}

impl Interner {
    fn new(cap: usize) -> Self {
        Interner {
            values: HashSet::new(),
            cap,
        }
    }

    fn get(&mut self, value: &str) -> Arc<str> {
        if let Some(v) = self.values.get(value) {
            return v.clone();
        }
        if self.values.len() >= self.cap || value.len() > MAX_NAME_BYTES {
            return Arc::from(OVERFLOW);
        }
        let v: Arc<str> = Arc::from(value);
        self.values.insert(v.clone());
        v
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageCounts {
    pub decoded: u64,
    pub malformed: u64,
    pub ignored: u64,
}

/// Everything learnt from the event stream. Pure: no I/O, and time comes in
/// as arguments, so tests drive it directly.
#[derive(Debug)]
pub struct EventState {
    limits: EventLimits,
    names: Interner,
    queues: Interner,
    /// Per task name, one count per kind of task event.
    counters: HashMap<Arc<str>, [u64; TASK_EVENTS.len()]>,
    /// `task-sent` by name and queue: only that event says which queue, and
    /// it may arrive after the worker's own events, so the other counters
    /// carry no queue label rather than one that changes mid-task.
    sent_by_queue: HashMap<(Arc<str>, Arc<str>), u64>,
    runtime: HashMap<Arc<str>, Histogram>,
    wait: HashMap<Arc<str>, Histogram>,
    tasks: LruCache<Box<str>, TrackedTask>,
    finished: VecDeque<(Box<str>, Instant)>,
    workers: HashMap<Box<str>, Worker>,
    workers_refused: u64,
    pub messages: MessageCounts,
    tracking_evictions: u64,
    unknown_task_events: u64,
    stream_up: bool,
    reconnects: u64,
}

impl EventState {
    pub fn new(limits: EventLimits) -> Self {
        let capacity =
            NonZeroUsize::new(limits.max_tracked_tasks.max(1)).unwrap_or(NonZeroUsize::MIN);
        EventState {
            names: Interner::new(limits.max_task_names),
            queues: Interner::new(limits.max_queues),
            limits,
            counters: HashMap::new(),
            sent_by_queue: HashMap::new(),
            runtime: HashMap::new(),
            wait: HashMap::new(),
            tasks: LruCache::new(capacity),
            finished: VecDeque::new(),
            workers: HashMap::new(),
            workers_refused: 0,
            messages: MessageCounts::default(),
            tracking_evictions: 0,
            unknown_task_events: 0,
            stream_up: false,
            reconnects: 0,
        }
    }

    /// Applies one decoded pub/sub message.
    pub fn apply_message(&mut self, decoded: Result<Decoded, DecodeError>, now: Instant) {
        match decoded {
            Err(_) => self.messages.malformed += 1,
            Ok(Decoded::Unsupported(_)) => self.messages.ignored += 1,
            Ok(Decoded::Events(events)) => {
                let mut used = false;
                for event in &events {
                    used |= self.apply(event, now);
                }
                if used {
                    self.messages.decoded += 1;
                } else {
                    self.messages.ignored += 1;
                }
            }
        }
    }

    /// Applies one event; false if it is of a kind the exporter ignores.
    pub fn apply(&mut self, event: &Event, now: Instant) -> bool {
        self.expire_finished(now);
        if let Some(kind) = TaskEvent::from_kind(&event.kind) {
            self.apply_task(kind, event, now);
            if let Some(host) = event.hostname.as_deref() {
                // As in Celery's own state: task events show the worker lives.
                if let Some(w) = self.workers.get_mut(host) {
                    if !w.offline {
                        w.last_seen = now;
                    }
                }
            }
            return true;
        }
        match event.kind.as_str() {
            "worker-online" | "worker-heartbeat" | "worker-offline" => {
                self.apply_worker(event, now);
                true
            }
            _ => false,
        }
    }

    fn apply_task(&mut self, kind: TaskEvent, event: &Event, now: Instant) {
        let ts = event.timestamp;
        let uuid = event
            .uuid
            .as_deref()
            .filter(|u| u.len() <= MAX_TASK_ID_BYTES);
        // The name comes only with task-sent and task-received; later events
        // find it through the uuid.
        let named = matches!(kind, TaskEvent::Sent | TaskEvent::Received);
        let tracked = match uuid {
            Some(uuid) if named => {
                let name = self.names.get(event.name.as_deref().unwrap_or(UNKNOWN));
                let entry = match self.tasks.get_mut(uuid) {
                    Some(t) => {
                        t.name = name;
                        // A retry comes back under the same uuid.
                        t.finished = false;
                        t
                    }
                    None => {
                        let task = TrackedTask {
                            name,
                            sent_at: None,
                            received_at: None,
                            started_at: None,
                            finished: false,
                        };
                        if let Some((evicted, old)) = self.tasks.push(uuid.into(), task) {
                            if &*evicted != uuid && !old.finished {
                                self.tracking_evictions += 1;
                            }
                        }
                        self.tasks.get_mut(uuid).expect("just inserted")
                    }
                };
                if kind == TaskEvent::Sent {
                    entry.sent_at = ts;
                } else {
                    entry.received_at = ts;
                    entry.started_at = None;
                }
                Some(entry.clone())
            }
            Some(uuid) => self.tasks.get_mut(uuid).map(|t| {
                match kind {
                    TaskEvent::Started => t.started_at = ts,
                    k if k.is_terminal() => t.finished = true,
                    _ => {}
                }
                t.clone()
            }),
            None => None,
        };
        let name = match (&tracked, event.name.as_deref()) {
            (Some(t), _) => t.name.clone(),
            // Named but not trackable (no task id, or an overlong one).
            (None, Some(name)) if named => self.names.get(name),
            (None, _) => {
                self.unknown_task_events += 1;
                Arc::from(UNKNOWN)
            }
        };
        match (kind, &tracked) {
            (TaskEvent::Started, Some(t)) => {
                if let (Some(start), Some(received)) = (ts, t.received_at) {
                    self.wait
                        .entry(name.clone())
                        .or_default()
                        .observe(start - received);
                }
            }
            (TaskEvent::Succeeded, _) => {
                if let Some(runtime) = event.runtime {
                    self.runtime
                        .entry(name.clone())
                        .or_default()
                        .observe(runtime);
                }
            }
            (TaskEvent::Failed, Some(t)) => {
                if let (Some(end), Some(start)) = (ts, t.started_at) {
                    self.runtime
                        .entry(name.clone())
                        .or_default()
                        .observe(end - start);
                }
            }
            _ => {}
        }
        if kind.is_terminal() {
            if let Some(uuid) = uuid {
                self.finished.push_back((uuid.into(), now));
            }
        }
        if kind == TaskEvent::Sent {
            let queue = self.queues.get(event.queue.as_deref().unwrap_or(UNKNOWN));
            *self.sent_by_queue.entry((name.clone(), queue)).or_default() += 1;
        }
        self.counters.entry(name).or_insert([0; TASK_EVENTS.len()])[kind.index()] += 1;
    }

    /// Forgets finished tasks after the grace period, keeping the map small
    /// in steady state.
    fn expire_finished(&mut self, now: Instant) {
        while let Some((_, at)) = self.finished.front() {
            let expired = now.saturating_duration_since(*at) > self.limits.finished_grace;
            let overfull = self.finished.len() > self.limits.max_tracked_tasks;
            if !expired && !overfull {
                break;
            }
            let (uuid, _) = self.finished.pop_front().expect("front exists");
            if self.tasks.peek(&uuid).is_some_and(|t| t.finished) {
                self.tasks.pop(&uuid);
            }
        }
    }

    fn apply_worker(&mut self, event: &Event, now: Instant) {
        let Some(host) = event.hostname.as_deref() else {
            return;
        };
        if !self.workers.contains_key(host) {
            if self.workers.len() >= self.limits.max_workers || host.len() > MAX_NAME_BYTES {
                self.workers_refused += 1;
                return;
            }
            self.workers.insert(
                host.into(),
                Worker {
                    last_seen: now,
                    freq: 2.0,
                    active: None,
                    offline: false,
                },
            );
        }
        let worker = self.workers.get_mut(host).expect("present");
        worker.last_seen = now;
        worker.offline = event.kind == "worker-offline";
        // The wake-up heartbeat Celery sends on request has no `active` and
        // freq=5; it must not change the worker's interval or activity.
        if event.active.is_some() {
            worker.active = event.active;
            if let Some(freq) = event.freq.filter(|f| *f > 0.0) {
                worker.freq = freq;
            }
        }
    }

    pub fn set_stream_up(&mut self, up: bool) {
        if self.stream_up && !up {
            self.reconnects += 1;
        }
        self.stream_up = up;
    }

    /// When `task-sent` saw this task published (sender's clock).
    pub fn sent_at(&self, uuid: &str) -> Option<f64> {
        self.tasks.peek(uuid).and_then(|t| t.sent_at)
    }

    pub fn tracked_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The metric families at `now`; drops workers silent for too long.
    pub fn families(&mut self, now: Instant) -> Vec<Family> {
        let forget = self.limits.forget_workers_after;
        self.workers
            .retain(|_, w| now.saturating_duration_since(w.last_seen) <= forget);

        let mut out = Vec::with_capacity(TASK_EVENTS.len() + 12);
        let mut sent: Vec<_> = self.sent_by_queue.iter().collect();
        sent.sort();
        let mut names: Vec<&Arc<str>> = self.counters.keys().collect();
        names.sort();
        for (event, metric, help) in TASK_EVENTS {
            let mut family = Family::counter(metric, help);
            if event == TaskEvent::Sent {
                for ((name, queue), n) in &sent {
                    family.push([("name", name), ("queue", queue)], **n as f64);
                }
            } else {
                // Every outcome is listed, at 0 until it happens, from a
                // name's first event: the first failure after a restart is
                // then an increase, not a new series that rate() ignores.
                for name in &names {
                    family.push([("name", name)], self.counters[*name][event.index()] as f64);
                }
            }
            out.push(family);
        }
        for (metric, help, histograms) in [
            (
                "celery_task_runtime_seconds",
                "Task execution time in seconds: task-succeeded runtime, or task-failed minus task-started.",
                &self.runtime,
            ),
            (
                "celery_task_wait_seconds",
                "Seconds a task waited inside the worker between task-received and task-started (prefetch, ETA, busy pool).",
                &self.wait,
            ),
        ] {
            // Like the counters, listed (empty) from a name's first event.
            let mut family = Family::new(metric, help, Kind::Histogram);
            for name in &names {
                family.samples.push(Sample {
                    labels: vec![("name".into(), name.to_string())],
                    value: histograms
                        .get(*name)
                        .map_or_else(|| Histogram::default().value(), Histogram::value),
                });
            }
            out.push(family);
        }

        let mut up = Family::gauge(
            "celery_worker_up",
            "1 while the worker's heartbeats arrive (within 2 heartbeat intervals), 0 once they stop or it went offline.",
        );
        let mut active = Family::gauge(
            "celery_worker_tasks_active",
            "Tasks the worker is executing, from its last heartbeat.",
        );
        let mut hosts: Vec<(&Box<str>, &Worker)> = self.workers.iter().collect();
        hosts.sort_by(|a, b| a.0.cmp(b.0));
        for (host, w) in hosts {
            let alive = !w.offline
                && now.saturating_duration_since(w.last_seen).as_secs_f64() < 2.0 * w.freq;
            up.push([("worker", host)], if alive { 1.0 } else { 0.0 });
            if let Some(a) = w.active {
                active.push([("worker", host)], if alive { a } else { 0.0 });
            }
        }
        out.push(up);
        out.push(active);

        out.push(
            Family::gauge(
                "celery_event_stream_up",
                "1 while the exporter is subscribed to Celery's event channels.",
            )
            .with_value(if self.stream_up { 1.0 } else { 0.0 }),
        );
        let mut messages = Family::counter(
            "celery_event_messages_total",
            "Event messages received, by result: decoded, malformed (counted and skipped) or ignored (no event the exporter uses, or not JSON).",
        );
        messages.push([("result", "decoded")], self.messages.decoded as f64);
        messages.push([("result", "malformed")], self.messages.malformed as f64);
        messages.push([("result", "ignored")], self.messages.ignored as f64);
        out.push(messages);
        out.push(
            Family::counter(
                "celery_event_stream_reconnects_total",
                "Times the event subscription was lost; events published meanwhile are lost for good.",
            )
            .with_value(self.reconnects as f64),
        );
        out.push(
            Family::gauge(
                "celery_event_tracked_tasks",
                "Tasks whose name the exporter currently remembers by uuid.",
            )
            .with_value(self.tasks.len() as f64),
        );
        out.push(
            Family::counter(
                "celery_event_tracking_evictions_total",
                "Unfinished tasks forgotten because the tracking map was full (raise --celery.max-tracked-tasks).",
            )
            .with_value(self.tracking_evictions as f64),
        );
        out.push(
            Family::counter(
                "celery_event_unknown_task_events_total",
                "Task events whose uuid was not known (task sent before the exporter started, or forgotten); counted as name=\"unknown\".",
            )
            .with_value(self.unknown_task_events as f64),
        );
        out.push(
            Family::counter(
                "celery_event_workers_refused_total",
                "Worker events ignored because --celery.max-workers workers are already tracked.",
            )
            .with_value(self.workers_refused as f64),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::decode::decode;
    use crate::celery::test_support::fixture;
    use crate::snapshot::find;
    use std::time::Duration;

    fn state() -> EventState {
        EventState::new(EventLimits::default())
    }

    fn feed(s: &mut EventState, files: &[&str], now: Instant) {
        for f in files {
            s.apply_message(decode(&fixture(f)), now);
        }
    }

    fn counter(f: &[Family], metric: &str, name: &str) -> f64 {
        find(f, metric)
            .and_then(|f| f.value_of(&[("name", name)]))
            .unwrap_or(0.0)
    }

    fn sent(f: &[Family], name: &str, queue: &str) -> f64 {
        find(f, "celery_task_sent_total")
            .and_then(|f| f.value_of(&[("name", name), ("queue", queue)]))
            .unwrap_or(0.0)
    }

    #[test]
    fn lifecycle_names_later_events_through_the_uuid() {
        let mut s = state();
        let now = Instant::now();
        feed(
            &mut s,
            &[
                "event-task-sent.json",
                "event-task-received.json",
                "event-task-started.json",
                "event-task-succeeded.json",
            ],
            now,
        );
        let f = s.families(now);
        assert_eq!(sent(&f, "tasks.notify", "notifications"), 1.0);
        for metric in [
            "celery_task_received_total",
            "celery_task_started_total",
            "celery_task_succeeded_total",
        ] {
            assert_eq!(counter(&f, metric, "tasks.notify"), 1.0, "{metric}");
        }
        let runtime = find(&f, "celery_task_runtime_seconds").unwrap();
        assert!(
            matches!(&runtime.samples[0].value, Value::Histogram { count: 1, sum, .. } if (*sum - 0.2005).abs() < 0.001)
        );
        let wait = find(&f, "celery_task_wait_seconds").unwrap();
        assert!(matches!(
            &wait.samples[0].value,
            Value::Histogram { count: 1, .. }
        ));
        assert_eq!(
            s.messages,
            MessageCounts {
                decoded: 4,
                malformed: 0,
                ignored: 0
            }
        );
    }

    #[test]
    fn every_outcome_exists_at_zero_from_a_names_first_event() {
        let mut s = state();
        let now = Instant::now();
        feed(&mut s, &["event-task-sent.json"], now);
        let f = s.families(now);
        for (_, metric, _) in TASK_EVENTS.iter().skip(1) {
            let value = find(&f, metric).and_then(|f| f.value_of(&[("name", "tasks.notify")]));
            assert_eq!(value, Some(0.0), "{metric}");
        }
        for metric in ["celery_task_runtime_seconds", "celery_task_wait_seconds"] {
            let h = find(&f, metric).unwrap();
            assert!(
                matches!(
                    &h.samples[..],
                    [Sample {
                        value: Value::Histogram { count: 0, .. },
                        ..
                    }]
                ),
                "{metric}: {:?}",
                h.samples
            );
        }
    }

    #[test]
    fn events_without_a_known_uuid_are_unknown() {
        let mut s = state();
        let now = Instant::now();
        feed(
            &mut s,
            &[
                "event-task-started.json",
                "event-unbatched-task-failed.json",
            ],
            now,
        );
        let f = s.families(now);
        assert_eq!(counter(&f, "celery_task_started_total", UNKNOWN), 1.0);
        assert_eq!(counter(&f, "celery_task_failed_total", UNKNOWN), 1.0);
    }

    fn ev(kind: &str, uuid: &str, name: Option<&str>, ts: f64) -> Event {
        Event {
            kind: kind.into(),
            hostname: Some("w1@vm".into()),
            uuid: Some(uuid.into()),
            name: name.map(Into::into),
            queue: name.map(|_| "q".into()).filter(|_| kind == "task-sent"),
            timestamp: Some(ts),
            ..Default::default()
        }
    }

    #[test]
    fn retries_keep_the_name_and_reject_follows_failure() {
        let mut s = state();
        let now = Instant::now();
        for (kind, name) in [
            ("task-sent", Some("bb.flaky")),
            ("task-received", Some("bb.flaky")),
            ("task-started", None),
            ("task-retried", None),
            ("task-sent", Some("bb.flaky")),
            ("task-received", Some("bb.flaky")),
            ("task-started", None),
            ("task-succeeded", None),
        ] {
            s.apply(&ev(kind, "u1", name, 1.0), now);
        }
        for kind in [
            "task-received",
            "task-started",
            "task-failed",
            "task-rejected",
        ] {
            s.apply(
                &ev(
                    kind,
                    "u2",
                    Some("bb.rejecter").filter(|_| kind == "task-received"),
                    2.0,
                ),
                now,
            );
        }
        let f = s.families(now);
        assert_eq!(sent(&f, "bb.flaky", "q"), 2.0);
        assert_eq!(counter(&f, "celery_task_retried_total", "bb.flaky"), 1.0);
        assert_eq!(counter(&f, "celery_task_succeeded_total", "bb.flaky"), 1.0);
        assert_eq!(counter(&f, "celery_task_failed_total", "bb.rejecter"), 1.0);
        assert_eq!(
            counter(&f, "celery_task_rejected_total", "bb.rejecter"),
            1.0
        );
    }

    #[test]
    fn finished_tasks_are_forgotten_after_the_grace_period() {
        let mut s = EventState::new(EventLimits {
            finished_grace: Duration::from_secs(10),
            ..Default::default()
        });
        let t0 = Instant::now();
        s.apply(&ev("task-received", "u1", Some("a"), 1.0), t0);
        s.apply(&ev("task-succeeded", "u1", None, 1.0), t0);
        s.apply(&ev("task-received", "u2", Some("a"), 1.0), t0);
        assert_eq!(s.tracked_tasks(), 2);
        s.apply(
            &ev("task-started", "u2", None, 1.0),
            t0 + Duration::from_secs(11),
        );
        assert_eq!(
            s.tracked_tasks(),
            1,
            "finished u1 forgotten, running u2 kept"
        );
    }

    #[test]
    fn overlong_names_and_task_ids_are_not_kept() {
        let mut s = EventState::new(EventLimits::default());
        let now = Instant::now();
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let long_id = "u".repeat(MAX_TASK_ID_BYTES + 1);
        s.apply(&ev("task-received", "u1", Some(&long), 1.0), now);
        s.apply(&ev("task-received", &long_id, Some("t"), 1.0), now);
        s.apply(&ev("task-started", &long_id, None, 2.0), now);
        s.apply(
            &Event {
                kind: "worker-heartbeat".into(),
                hostname: Some(long.clone()),
                freq: Some(2.0),
                active: Some(0.0),
                ..Default::default()
            },
            now,
        );
        let f = s.families(now);
        let received = find(&f, "celery_task_received_total").unwrap();
        assert_eq!(received.value_of(&[("name", OVERFLOW)]), Some(1.0));
        assert_eq!(received.value_of(&[("name", "t")]), Some(1.0));
        let started = find(&f, "celery_task_started_total").unwrap();
        assert_eq!(started.value_of(&[("name", UNKNOWN)]), Some(1.0));
        assert_eq!(
            find(&f, "celery_event_tracked_tasks")
                .unwrap()
                .value_of(&[]),
            Some(1.0)
        );
        assert!(find(&f, "celery_worker_up").unwrap().samples.is_empty());
        assert_eq!(
            find(&f, "celery_event_workers_refused_total")
                .unwrap()
                .value_of(&[]),
            Some(1.0)
        );
        let longest = f
            .iter()
            .flat_map(|f| &f.samples)
            .flat_map(|s| s.labels.iter().map(|(_, v)| v.len()))
            .max()
            .unwrap_or(0);
        assert!(
            longest <= MAX_NAME_BYTES,
            "a label value of {longest} bytes"
        );
    }

    #[test]
    fn caps_bound_names_tasks_and_workers() {
        let mut s = EventState::new(EventLimits {
            max_task_names: 10,
            max_tracked_tasks: 100,
            max_workers: 3,
            ..Default::default()
        });
        let now = Instant::now();
        for i in 0..1000 {
            s.apply(
                &ev(
                    "task-received",
                    &format!("u{i}"),
                    Some(&format!("t{i}")),
                    1.0,
                ),
                now,
            );
            s.apply(
                &Event {
                    kind: "worker-heartbeat".into(),
                    hostname: Some(format!("w{i}@h")),
                    freq: Some(2.0),
                    active: Some(0.0),
                    ..Default::default()
                },
                now,
            );
        }
        assert_eq!(s.tracked_tasks(), 100);
        let f = s.families(now);
        let received = find(&f, "celery_task_received_total").unwrap();
        assert_eq!(received.samples.len(), 11, "10 names and the overflow");
        assert_eq!(received.value_of(&[("name", OVERFLOW)]), Some(990.0));
        assert_eq!(find(&f, "celery_worker_up").unwrap().samples.len(), 3);
        assert_eq!(
            find(&f, "celery_event_workers_refused_total")
                .unwrap()
                .value_of(&[]),
            Some(997.0)
        );
        assert_eq!(
            find(&f, "celery_event_tracking_evictions_total")
                .unwrap()
                .value_of(&[]),
            Some(900.0)
        );
    }

    #[test]
    fn worker_liveness_follows_heartbeats_not_wakeups() {
        let mut s = state();
        let t0 = Instant::now();
        feed(
            &mut s,
            &["event-worker-online.json", "event-worker-heartbeat.json"],
            t0,
        );
        let up = |s: &mut EventState, at: Instant| {
            find(&s.families(at), "celery_worker_up")
                .unwrap()
                .value_of(&[("worker", "w1@vm")])
        };
        assert_eq!(up(&mut s, t0 + Duration::from_secs(3)), Some(1.0));
        assert_eq!(
            up(&mut s, t0 + Duration::from_secs(5)),
            Some(0.0),
            "down after 2 × freq (4 s)"
        );
        // A wake-up heartbeat (freq 5, no active) shows life but keeps freq 2.
        let t1 = t0 + Duration::from_secs(6);
        feed(&mut s, &["event-worker-heartbeat-wakeup.json"], t1);
        assert_eq!(up(&mut s, t1 + Duration::from_secs(3)), Some(1.0));
        assert_eq!(up(&mut s, t1 + Duration::from_secs(5)), Some(0.0));
        let active = find(&s.families(t1), "celery_worker_tasks_active")
            .unwrap()
            .value_of(&[("worker", "w1@vm")]);
        assert!(active.is_some(), "activity kept from the regular heartbeat");
        feed(
            &mut s,
            &["event-worker-heartbeat.json", "event-worker-offline.json"],
            t1,
        );
        assert_eq!(up(&mut s, t1), Some(0.0), "offline means down at once");
        // Forgotten after the configured silence.
        let later = t1 + EventLimits::default().forget_workers_after + Duration::from_secs(1);
        assert_eq!(up(&mut s, later), None);
    }

    #[test]
    fn stream_up_and_reconnects() {
        let mut s = state();
        s.set_stream_up(true);
        s.set_stream_up(false);
        s.set_stream_up(true);
        let f = s.families(Instant::now());
        assert_eq!(
            find(&f, "celery_event_stream_up").unwrap().value_of(&[]),
            Some(1.0)
        );
        assert_eq!(
            find(&f, "celery_event_stream_reconnects_total")
                .unwrap()
                .value_of(&[]),
            Some(1.0)
        );
    }

    mod fuzz {
        use super::*;
        use base64::Engine;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut s = state();
                let decoded = decode(&bytes);
                let ok = decoded.is_ok();
                s.apply_message(decoded, Instant::now());
                if !ok {
                    prop_assert_eq!(s.messages.malformed, 1);
                }
            }

            #[test]
            fn arbitrary_bodies_in_a_valid_envelope_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256), wrap in any::<bool>()) {
                let body = if wrap { [b"[".as_slice(), &body, b"]"].concat() } else { body };
                let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
                let payload = format!(r#"{{"body": "{b64}", "content-type": "application/json", "properties": {{"body_encoding": "base64"}}}}"#);
                let mut s = state();
                s.apply_message(decode(payload.as_bytes()), Instant::now());
                let m = s.messages;
                prop_assert_eq!(m.decoded + m.malformed + m.ignored, 1);
            }

            #[test]
            fn arbitrary_event_fields_never_panic(kind in "task-(sent|received|started|succeeded|failed|retried|revoked|rejected)|worker-(online|heartbeat|offline)|x",
                                                  uuid in proptest::option::of("[a-c]{1,2}"), ts in proptest::option::of(any::<f64>()),
                                                  runtime in proptest::option::of(any::<f64>()), freq in proptest::option::of(any::<f64>())) {
                let mut s = state();
                let e = Event { kind, hostname: Some("h".into()), uuid, name: Some("n".into()), timestamp: ts, runtime, freq, active: Some(1.0), ..Default::default() };
                s.apply(&e, Instant::now());
                s.families(Instant::now());
            }
        }
    }
}
