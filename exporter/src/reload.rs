//! SIGHUP: re-read the configuration files, as Prometheus and Alertmanager
//! do, without ever ending the process.
//!
//! Each reloadable part registers a [`Reloader`]; on SIGHUP they run one after
//! another in the order they were added. A part that fails keeps its previous
//! configuration, logs why, and shows in
//! `bookedbarber_exporter_config_last_reload_successful{config="<name>"} 0`
//! and `bookedbarber_exporter_config_reload_failures_total`; the other parts
//! still reload.
//!
//! Adding a part (for instance the business query file):
//!
//! ```ignore
//! struct QueryFileReloader { /* what it needs to swap */ }
//! impl Reloader for QueryFileReloader {
//!     fn name(&self) -> &str { "business_queries" }
//!     fn reload(&self) -> BoxFuture<'_, Result<(), BoxError>> {
//!         Box::pin(async move { /* load, validate, then swap */ Ok(()) })
//!     }
//! }
//! reloaders.add(Arc::new(QueryFileReloader { .. }));
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use thiserror::Error;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info};

use crate::exposition::LiveFamilies;
use crate::runner::unix_now;
use crate::snapshot::Family;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A part of the configuration that can be re-read while running.
pub trait Reloader: Send + Sync + 'static {
    /// Short, stable name: the `config` label and the log key.
    fn name(&self) -> &str;
    /// Re-reads and applies the configuration. On error nothing may have
    /// changed: validate everything first, then swap.
    fn reload(&self) -> BoxFuture<'_, Result<(), BoxError>>;
}

#[derive(Debug, Error)]
#[error("cannot listen for SIGHUP: {0}")]
pub struct SignalError(#[from] std::io::Error);

/// SIGHUP, caught from the moment this exists: its default action would
/// end the process.
pub struct Hangups(Signal);

impl Hangups {
    pub fn install() -> Result<Hangups, SignalError> {
        Ok(Hangups(signal(SignalKind::hangup())?))
    }
}

#[derive(Debug, Clone)]
struct Status {
    successful: bool,
    last_success_unix_seconds: f64,
    failures_total: u64,
}

/// The registered parts and how their last reload went.
#[derive(Default)]
pub struct Reloaders {
    parts: Mutex<Vec<Arc<dyn Reloader>>>,
    status: Mutex<BTreeMap<String, Status>>,
    /// One reload at a time: two SIGHUPs in a row must not interleave.
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloaders").finish_non_exhaustive()
    }
}

impl Reloaders {
    pub fn new() -> Arc<Reloaders> {
        Arc::new(Reloaders::default())
    }

    /// Registers a part. Its configuration was loaded at start-up, which
    /// counts as a successful load.
    pub fn add(&self, part: Arc<dyn Reloader>) {
        self.record(part.name(), Ok(()));
        if let Ok(mut parts) = self.parts.lock() {
            parts.push(part);
        }
    }

    /// Records the outcome of a reload of `name`, also for reloads that
    /// happen on their own, such as certificate files rotated on disk.
    pub fn record(&self, name: &str, outcome: Result<(), String>) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        let entry = status.entry(name.to_owned()).or_insert(Status {
            successful: true,
            last_success_unix_seconds: unix_now(),
            failures_total: 0,
        });
        match outcome {
            Ok(()) => {
                entry.successful = true;
                entry.last_success_unix_seconds = unix_now();
            }
            Err(_) => {
                entry.successful = false;
                entry.failures_total += 1;
            }
        }
    }

    /// Reloads every part in order; true if all succeeded.
    pub async fn reload_all(&self) -> bool {
        let _one_at_a_time = self.running.lock().await;
        let parts: Vec<Arc<dyn Reloader>> =
            self.parts.lock().map(|p| p.clone()).unwrap_or_default();
        if parts.is_empty() {
            info!("SIGHUP: nothing to reload (no configuration file given)");
        }
        let mut all_ok = true;
        for part in parts {
            match part.reload().await {
                Ok(()) => {
                    info!(config = part.name(), "configuration reloaded");
                    self.record(part.name(), Ok(()));
                }
                Err(e) => {
                    all_ok = false;
                    error!(config = part.name(), error = %e, "configuration reload failed; keeping the previous configuration");
                    self.record(part.name(), Err(e.to_string()));
                }
            }
        }
        all_ok
    }

    /// Reloads on every SIGHUP for as long as the process runs.
    pub fn listen(self: &Arc<Self>, hangups: Hangups) {
        let reloaders = self.clone();
        let Hangups(mut signal) = hangups;
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                info!(signal = "SIGHUP", "reloading configuration");
                reloaders.reload_all().await;
            }
        });
    }
}

impl LiveFamilies for Reloaders {
    fn families(&self) -> Vec<Family> {
        let mut successful = Family::gauge(
            "bookedbarber_exporter_config_last_reload_successful",
            "1 if the last load of this configuration (at start-up, on SIGHUP or when its files changed) succeeded; 0 if the previous configuration was kept.",
        );
        let mut last_success = Family::gauge(
            "bookedbarber_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of this configuration.",
        );
        let mut failures = Family::counter(
            "bookedbarber_exporter_config_reload_failures_total",
            "Reloads of this configuration that failed and kept the previous one.",
        );
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        for (name, s) in &status {
            let label = [("config", name.as_str())];
            successful.push(label, if s.successful { 1.0 } else { 0.0 });
            last_success.push(label, s.last_success_unix_seconds);
            failures.push(label, s.failures_total as f64);
        }
        vec![successful, last_success, failures]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Flaky {
        name: &'static str,
        calls: AtomicUsize,
        fail: bool,
        order: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Reloader for Flaky {
        fn name(&self) -> &str {
            self.name
        }
        fn reload(&self) -> BoxFuture<'_, Result<(), BoxError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.order.lock().unwrap().push(self.name);
                if self.fail {
                    Err("broken".into())
                } else {
                    Ok(())
                }
            })
        }
    }

    fn value(families: &[Family], name: &str, config: &str) -> Option<f64> {
        crate::snapshot::find(families, name)?.value_of(&[("config", config)])
    }

    #[tokio::test]
    async fn parts_reload_in_order_and_a_failure_is_counted_without_stopping_the_rest() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let reloaders = Reloaders::new();
        for (name, fail) in [("web", true), ("business_queries", false)] {
            reloaders.add(Arc::new(Flaky {
                name,
                calls: AtomicUsize::new(0),
                fail,
                order: order.clone(),
            }));
        }
        let f = reloaders.families();
        let ok = "bookedbarber_exporter_config_last_reload_successful";
        let failures = "bookedbarber_exporter_config_reload_failures_total";
        assert_eq!(value(&f, ok, "web"), Some(1.0), "start-up load counts");
        assert_eq!(value(&f, failures, "web"), Some(0.0));
        assert!(!reloaders.reload_all().await);
        assert_eq!(*order.lock().unwrap(), ["web", "business_queries"]);
        let f = reloaders.families();
        assert_eq!(value(&f, ok, "web"), Some(0.0));
        assert_eq!(value(&f, failures, "web"), Some(1.0));
        assert_eq!(value(&f, ok, "business_queries"), Some(1.0));
        reloaders.record("web", Ok(()));
        let f = reloaders.families();
        assert_eq!(value(&f, ok, "web"), Some(1.0));
        assert_eq!(
            value(&f, failures, "web"),
            Some(1.0),
            "counters keep counting"
        );
    }
}
