//! Runs each source on its own interval and publishes what it collected.
//!
//! A source's `collect` does the I/O and returns metric families; the runner
//! adds the timeout, the self-metrics, failure handling and backoff, and
//! swaps the result into a [`CollectorSlot`] that `/metrics` reads without
//! waiting on anything.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::monotonic::{CounterPolicy, Decrease, MonotonicCounters};
use crate::snapshot::{Family, Kind, Name};

/// Something that can be collected on a schedule.
pub trait Source: Send + Sync + 'static {
    type Error: std::fmt::Display + Send + 'static;

    /// Reads the source and returns its metric families.
    fn collect(&self) -> impl Future<Output = Result<Vec<Family>, Self::Error>> + Send;

    /// What to serve while the source fails, such as `pg_up 0`.
    fn failure_families(&self) -> Vec<Family> {
        Vec::new()
    }

    /// How the runner keeps this source's counters from going down.
    fn counter_policy(&self) -> CounterPolicy {
        CounterPolicy::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Schedule {
    /// Delay before the next attempt after `failures` consecutive failures:
    /// doubling from the interval, capped at four intervals or one minute
    /// (whichever is smaller, but never below the interval), so a dead server
    /// sees less traffic while recovery is still noticed quickly.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.interval;
        }
        let cap = (self.interval * 4)
            .min(Duration::from_secs(60))
            .max(self.interval);
        let factor = 1u32 << (failures - 1).min(16);
        self.interval.saturating_mul(factor).min(cap)
    }
}

/// The latest state of one collector, replaced whole after each collection.
#[derive(Debug, Clone, Default)]
pub struct SlotState {
    pub families: Arc<Vec<Family>>,
    /// At least one collection finished (successfully or not).
    pub has_run: bool,
    pub up: bool,
    pub last_duration_seconds: f64,
    pub errors_total: u64,
    pub last_success_unix_seconds: Option<f64>,
    /// Per counter metric the source has served: drops of its source value
    /// that the runner absorbed.
    pub source_decreases: Arc<BTreeMap<Name, u64>>,
}

#[derive(Debug)]
pub struct CollectorSlot {
    pub name: String,
    state: ArcSwap<SlotState>,
    /// The task collecting into this slot, to stop it when its source is
    /// removed (a business query dropped from the file on reload).
    task: Mutex<Option<AbortHandle>>,
}

/// Every collector slot `/metrics` serves; replaced whole when a reload
/// adds or removes collectors.
pub type SlotList = Arc<ArcSwap<Vec<Arc<CollectorSlot>>>>;

impl CollectorSlot {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(CollectorSlot {
            name: name.into(),
            state: ArcSwap::from_pointee(SlotState::default()),
            task: Mutex::new(None),
        })
    }

    /// Stops the collector's task; its slot keeps its last state.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    pub fn state(&self) -> Arc<SlotState> {
        self.state.load_full()
    }

    fn publish(&self, state: SlotState) {
        self.state.store(Arc::new(state));
    }

    /// For a source that is not polled (the event stream): records that it
    /// works, or that it failed, as a polled collection would. It serves no
    /// families of its own.
    pub fn record(&self, ok: bool) {
        let previous = self.state();
        self.publish(SlotState {
            families: previous.families.clone(),
            has_run: true,
            up: ok,
            last_duration_seconds: 0.0,
            errors_total: previous.errors_total + u64::from(!ok),
            last_success_unix_seconds: if ok {
                Some(unix_now())
            } else {
                previous.last_success_unix_seconds
            },
            source_decreases: previous.source_decreases.clone(),
        });
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Starts collecting `source` in the background; returns the slot where its
/// results appear.
pub fn start<S: Source>(
    name: impl Into<String>,
    source: S,
    schedule: Schedule,
) -> Arc<CollectorSlot> {
    start_after(name, source, schedule, Duration::ZERO)
}

/// Like [`start`], with the first collection `delay` later: collectors
/// sharing a server are spread out rather than all starting at once.
pub fn start_after<S: Source>(
    name: impl Into<String>,
    source: S,
    schedule: Schedule,
    delay: Duration,
) -> Arc<CollectorSlot> {
    let slot = CollectorSlot::new(name);
    let running = slot.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        run(source, running, schedule).await
    });
    *slot.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    slot
}

async fn run<S: Source>(source: S, slot: Arc<CollectorSlot>, schedule: Schedule) {
    let mut failures: u32 = 0;
    let mut last_error = String::new();
    let mut counters = MonotonicCounters::new(source.counter_policy());
    loop {
        let started = Instant::now();
        // A panic inside a collection is a failed collection: the collector
        // shows as down and tries again, instead of freezing on its last
        // values with its task gone.
        let collection = AssertUnwindSafe(source.collect()).catch_unwind();
        let outcome = tokio::time::timeout(schedule.timeout, collection).await;
        let duration = started.elapsed().as_secs_f64();
        let previous = slot.state();
        let result = match outcome {
            Ok(Ok(Ok(families))) => Ok(families),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(panic)) => Err(format!("panicked: {}", panic_message(&*panic))),
            Err(_) => Err(format!("timed out after {:?}", schedule.timeout)),
        };
        match result {
            Ok(mut families) => {
                if failures > 0 {
                    info!(collector = %slot.name, after_failures = failures, "collector recovered");
                }
                failures = 0;
                last_error.clear();
                let decreases = counters.apply(&mut families);
                let source_decreases = count_decreases(
                    &slot.name,
                    &previous.source_decreases,
                    &families,
                    &decreases,
                );
                slot.publish(SlotState {
                    families: Arc::new(families),
                    has_run: true,
                    up: true,
                    last_duration_seconds: duration,
                    errors_total: previous.errors_total,
                    last_success_unix_seconds: Some(unix_now()),
                    source_decreases,
                });
            }
            Err(error) => {
                // Log once per change of state or of error, not once per
                // attempt: a dead server must not flood the logs.
                if failures == 0 || error != last_error {
                    warn!(collector = %slot.name, %error, "collection failed");
                }
                failures = failures.saturating_add(1);
                last_error = error;
                slot.publish(SlotState {
                    families: Arc::new(source.failure_families()),
                    has_run: true,
                    up: false,
                    last_duration_seconds: duration,
                    errors_total: previous.errors_total + 1,
                    last_success_unix_seconds: previous.last_success_unix_seconds,
                    source_decreases: previous.source_decreases.clone(),
                });
            }
        }
        tokio::time::sleep_until((started + schedule.retry_delay(failures)).into()).await;
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The drop counts after one collection: every counter served so far, at 0
/// until its source first goes down. The first drop of each is logged.
fn count_decreases(
    collector: &str,
    before: &Arc<BTreeMap<Name, u64>>,
    families: &[Family],
    decreases: &[Decrease],
) -> Arc<BTreeMap<Name, u64>> {
    let new_counter = families
        .iter()
        .any(|f| f.kind == Kind::Counter && !before.contains_key(&f.name));
    if decreases.is_empty() && !new_counter {
        return before.clone();
    }
    let mut counts = (**before).clone();
    for family in families.iter().filter(|f| f.kind == Kind::Counter) {
        counts.entry(family.name.clone()).or_insert(0);
    }
    for d in decreases {
        let count = counts.entry(d.metric.clone().into()).or_insert(0);
        if *count == 0 {
            warn!(
                collector,
                metric = %d.metric,
                labels = ?d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                from = d.from,
                to = d.to,
                "a counter's source value went down (rows deleted, flagged or corrected; \
                 a server restart or statistics reset); it continues from its previous value \
                 and later growth still counts; further drops are only counted in \
                 bookedbarber_exporter_source_decreases_total"
            );
        }
        *count += 1;
    }
    Arc::new(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Panics on its first collection, then works.
    struct PanicsOnce(AtomicU32);

    impl Source for PanicsOnce {
        type Error = String;

        async fn collect(&self) -> Result<Vec<Family>, String> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom");
            }
            Ok(vec![Family::gauge("x", "h").with_value(1.0)])
        }
    }

    #[tokio::test]
    async fn a_panicking_collection_shows_as_down_and_the_collector_goes_on() {
        let schedule = Schedule {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
        };
        let slot = start("panicky", PanicsOnce(AtomicU32::new(0)), schedule);
        let mut seen_down = false;
        for _ in 0..200 {
            let state = slot.state();
            if state.has_run && !state.up {
                seen_down = true;
                assert_eq!(state.errors_total, 1);
            }
            if seen_down && state.up {
                assert_eq!(state.families.len(), 1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the collector did not fail then recover: seen_down={seen_down}");
    }

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let s = Schedule {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let delays: Vec<u64> = (0..6).map(|n| s.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 1, 2, 4, 4, 4]);

        let slow = Schedule {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(slow.retry_delay(1), Duration::from_secs(30));
        assert_eq!(slow.retry_delay(2), Duration::from_secs(60));
        assert_eq!(slow.retry_delay(9), Duration::from_secs(60));

        let rare = Schedule {
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(rare.retry_delay(5), Duration::from_secs(300));
    }
}
