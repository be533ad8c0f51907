//! Encodes the latest snapshots in the Prometheus text format.
//!
//! Encoding only reads what the collectors already published, so a scrape
//! costs the same whatever the size of the database behind them.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::runner::SlotList;
use crate::snapshot::{Family, Kind, Value};
use crate::{logging, process};

/// Families computed when scraped rather than on a schedule, such as worker
/// liveness, which depends on the current time.
pub trait LiveFamilies: std::fmt::Debug + Send + Sync + 'static {
    fn families(&self) -> Vec<Family>;
}

#[derive(Debug)]
pub struct Exposition {
    slots: SlotList,
    live: Vec<Arc<dyn LiveFamilies>>,
    build_info: Family,
}

impl Exposition {
    pub fn new(slots: SlotList, live: Vec<Arc<dyn LiveFamilies>>) -> Self {
        let mut build_info = Family::gauge(
            "bookedbarber_exporter_build_info",
            "Always 1; the labels give the exporter's version and source revision.",
        );
        build_info.push(
            [
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "revision",
                    option_env!("BOOKEDBARBER_BUILD_REVISION").unwrap_or("unknown"),
                ),
            ],
            1.0,
        );
        Exposition {
            slots,
            live,
            build_info,
        }
    }

    /// Collectors that have not finished a first collection yet.
    pub fn pending(&self) -> Vec<String> {
        self.slots
            .load()
            .iter()
            .filter(|s| !s.state().has_run)
            .map(|s| s.name.clone())
            .collect()
    }

    fn self_metrics(&self) -> [Family; 5] {
        let mut up = Family::gauge(
            "bookedbarber_exporter_collector_up",
            "1 if the collector's last collection succeeded, 0 if it failed.",
        );
        let mut duration = Family::gauge(
            "bookedbarber_exporter_collector_duration_seconds",
            "How long the collector's last collection took, in seconds.",
        );
        let mut errors = Family::counter(
            "bookedbarber_exporter_collector_errors_total",
            "Collections that failed (error or timeout) since the exporter started.",
        );
        let mut last_success = Family::gauge(
            "bookedbarber_exporter_collector_last_success_timestamp_seconds",
            "Unix time of the collector's last successful collection.",
        );
        let mut decreases = Family::counter(
            "bookedbarber_exporter_source_decreases_total",
            "Times a counter's source value went down (business rows deleted, flagged as test data or corrected; a server restart or statistics reset) and the exporter continued it from its previous value instead.",
        );
        for slot in self.slots.load().iter() {
            let state = slot.state();
            let label = [("collector", slot.name.as_str())];
            // The error counter exists at 0 from the start, so the first
            // failure is an increase; the gauges wait for a first result.
            errors.push(label, state.errors_total as f64);
            if !state.has_run {
                continue;
            }
            up.push(label, if state.up { 1.0 } else { 0.0 });
            duration.push(label, state.last_duration_seconds);
            if let Some(ts) = state.last_success_unix_seconds {
                last_success.push(label, ts);
            }
            for (metric, n) in state.source_decreases.iter() {
                decreases.push(
                    [("collector", slot.name.as_str()), ("metric", metric)],
                    *n as f64,
                );
            }
        }
        [up, duration, errors, last_success, decreases]
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_family(&mut encoder, &self.build_info)?;
        let logging = Family::counter(
            "bookedbarber_exporter_log_lines_dropped_total",
            "Log lines dropped because standard error could not be written (a closed log pipe, a full disk) or its queue was full.",
        )
        .with_value(logging::dropped_lines() as f64);
        for family in self
            .self_metrics()
            .iter()
            .chain(process::families().iter())
            .chain(std::iter::once(&logging))
        {
            encode_family(&mut encoder, family)?;
        }
        for slot in self.slots.load().iter() {
            for family in slot.state().families.iter() {
                encode_family(&mut encoder, family)?;
            }
        }
        for live in &self.live {
            for family in live.families() {
                encode_family(&mut encoder, &family)?;
            }
        }
        Ok(())
    }
}

pub fn encode_family(
    encoder: &mut DescriptorEncoder,
    family: &Family,
) -> Result<(), std::fmt::Error> {
    if family.samples.is_empty() {
        return Ok(());
    }
    // prometheus-client appends `_total` to counters itself.
    let (name, metric_type) = match family.kind {
        Kind::Counter => (
            family.name.strip_suffix("_total").unwrap_or(&family.name),
            MetricType::Counter,
        ),
        Kind::Gauge => (family.name.as_ref(), MetricType::Gauge),
        Kind::Histogram => (family.name.as_ref(), MetricType::Histogram),
    };
    let mut metric = encoder.encode_descriptor(name, &family.help, None, metric_type)?;
    for sample in &family.samples {
        let mut series = metric.encode_family(&sample.labels)?;
        match (&sample.value, family.kind) {
            (Value::Number(v), Kind::Counter) => {
                series.encode_counter::<NoLabelSet, f64, f64>(v, None)?
            }
            (Value::Number(v), _) => series.encode_gauge(v)?,
            (
                Value::Histogram {
                    sum,
                    count,
                    buckets,
                },
                _,
            ) => series.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?,
        }
    }
    Ok(())
}

/// Renders a registry in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Sample;

    fn render_families(families: Vec<Family>) -> String {
        #[derive(Debug)]
        struct Fixed(Vec<Family>);
        impl Collector for Fixed {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                for f in &self.0 {
                    encode_family(&mut encoder, f)?;
                }
                Ok(())
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(families)));
        render(&registry)
    }

    #[test]
    fn counters_keep_their_catalogue_name() {
        let mut c = Family::counter("pg_stat_database_deadlocks_total", "Deadlocks.");
        c.push([("datname", "app")], 3.0);
        let text = render_families(vec![c]);
        assert!(
            text.contains("# TYPE pg_stat_database_deadlocks_total counter"),
            "{text}"
        );
        assert!(
            text.contains("pg_stat_database_deadlocks_total{datname=\"app\"} 3"),
            "{text}"
        );
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn empty_families_are_left_out_and_labels_escaped() {
        let mut g = Family::gauge("x_gauge", "A gauge.");
        g.push([("name", "a\"b\\c\nd")], 1.5);
        let text = render_families(vec![Family::gauge("empty", "Nothing."), g]);
        assert!(!text.contains("empty"), "{text}");
        assert!(text.contains(r#"x_gauge{name="a\"b\\c\nd"} 1.5"#), "{text}");
    }

    #[test]
    fn histograms_are_cumulative_with_inf_bucket() {
        let mut h = Family::new("job_seconds", "Job time.", Kind::Histogram);
        h.samples.push(Sample {
            labels: vec![("name".into(), "t".into())],
            value: Value::Histogram {
                sum: 7.0,
                count: 4,
                buckets: vec![(1.0, 1), (5.0, 2)],
            },
        });
        let text = render_families(vec![h]);
        assert!(
            text.contains(r#"job_seconds_bucket{name="t",le="1.0"} 1"#)
                || text.contains(r#"job_seconds_bucket{name="t",le="1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"le="5"} 3"#) || text.contains(r#"le="5.0"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"job_seconds_bucket{name="t",le="+Inf"} 4"#),
            "{text}"
        );
        assert!(text.contains(r#"job_seconds_count{name="t"} 4"#), "{text}");
    }
}
