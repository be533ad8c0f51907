//! Keeps every counter the exporter serves non-decreasing while it runs.
//!
//! A counter read from a source can go down under the exporter: a business
//! counter is recomputed from table state (`count(*)`, `sum()`), so deleting
//! a row, flagging it as test data or correcting an amount lowers it; a
//! PostgreSQL or Redis counter restarts after a server restart or a
//! statistics reset. Prometheus reads a decrease as a counter reset, and for
//! a business total `increase()` then jumps by the whole lifetime total.
//! Instead each series remembers how much its source went down (`held`) and
//! serves `source + held`: the drop is absorbed, and later growth of the
//! source still counts in full.

use std::collections::HashMap;

use crate::snapshot::{Family, Kind, Name, Sample, Value};

type Labels = Vec<(Name, String)>;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Tracked {
    /// The value the query returned last time.
    source: f64,
    /// Sum of every drop of the source so far.
    held: f64,
}

impl Tracked {
    fn served(&self) -> f64 {
        self.source + self.held
    }
}

/// A drop of a counter's source value, which was absorbed.
#[derive(Debug, Clone, PartialEq)]
pub struct Decrease {
    pub metric: String,
    pub labels: Labels,
    pub from: f64,
    pub to: f64,
}

/// How a source's counters are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterPolicy {
    /// Series remembered per metric; label sets past it are served as the
    /// source gives them, without memory.
    pub max_series: usize,
    /// Serve a series the source no longer returns at its last value. Right
    /// for counts over table rows, whose label values vanish when rows are
    /// deleted and may come back lower; wrong for a server's per-database
    /// statistics, which go with the database.
    pub keep_vanished: bool,
}

impl Default for CounterPolicy {
    fn default() -> Self {
        CounterPolicy {
            max_series: 10_000,
            keep_vanished: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct MonotonicCounters {
    series: HashMap<(Name, Labels), Tracked>,
    policy: CounterPolicy,
}

impl MonotonicCounters {
    pub fn new(policy: CounterPolicy) -> Self {
        MonotonicCounters {
            series: HashMap::new(),
            policy,
        }
    }

    /// Rewrites the counter samples of `families` so that no series goes
    /// down (and, with `keep_vanished`, serves again at their last value the
    /// series the source no longer returns). Returns the drops it absorbed.
    pub fn apply(&mut self, families: &mut [Family]) -> Vec<Decrease> {
        let mut decreases = Vec::new();
        for family in families.iter_mut().filter(|f| f.kind == Kind::Counter) {
            let mut returned = std::collections::HashSet::new();
            let mut remembered = self
                .series
                .keys()
                .filter(|(name, _)| *name == family.name)
                .count();
            for sample in &mut family.samples {
                let Value::Number(value) = sample.value else {
                    continue;
                };
                let key = (family.name.clone(), sample.labels.clone());
                let served = match self.series.get_mut(&key) {
                    Some(t) => {
                        if value < t.source {
                            decreases.push(Decrease {
                                metric: family.name.to_string(),
                                labels: sample.labels.clone(),
                                from: t.source,
                                to: value,
                            });
                            t.held += t.source - value;
                        }
                        t.source = value;
                        t.served()
                    }
                    None if remembered < self.policy.max_series => {
                        remembered += 1;
                        self.series.insert(
                            key.clone(),
                            Tracked {
                                source: value,
                                held: 0.0,
                            },
                        );
                        value
                    }
                    None => value,
                };
                sample.value = Value::Number(served);
                returned.insert(key.1);
            }
            if !self.policy.keep_vanished {
                continue;
            }
            let mut vanished: Vec<(&Labels, f64)> = self
                .series
                .iter()
                .filter(|((name, labels), _)| *name == family.name && !returned.contains(labels))
                .map(|((_, labels), t)| (labels, t.served()))
                .collect();
            vanished.sort_by(|a, b| a.0.cmp(b.0));
            family
                .samples
                .extend(vanished.into_iter().map(|(labels, served)| Sample {
                    labels: labels.clone(),
                    value: Value::Number(served),
                }));
        }
        decreases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(samples: &[(&str, f64)]) -> Vec<Family> {
        let mut f = Family::counter("shop_things_total", "h");
        for (label, v) in samples {
            f.push([("kind", label)], *v);
        }
        vec![f, Family::gauge("shop_level", "h").with_value(5.0)]
    }

    fn values(f: &[Family]) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = f[0]
            .samples
            .iter()
            .map(|s| match s.value {
                Value::Number(n) => (s.labels[0].1.clone(), n),
                _ => unreachable!(),
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn keeping(max_series: usize) -> MonotonicCounters {
        MonotonicCounters::new(CounterPolicy {
            max_series,
            keep_vanished: true,
        })
    }

    #[test]
    fn a_drop_is_absorbed_and_later_growth_counts() {
        let mut m = keeping(10);
        let mut f = counter(&[("a", 10.0)]);
        assert!(m.apply(&mut f).is_empty());
        assert_eq!(values(&f), vec![("a".into(), 10.0)]);

        // Three rows deleted.
        let mut f = counter(&[("a", 7.0)]);
        let d = m.apply(&mut f);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].from, d[0].to), (10.0, 7.0));
        assert_eq!(values(&f), vec![("a".into(), 10.0)]);

        // Two new rows: the counter grows by two, not by nothing.
        let mut f = counter(&[("a", 9.0)]);
        assert!(m.apply(&mut f).is_empty());
        assert_eq!(values(&f), vec![("a".into(), 12.0)]);
        // Gauges are left alone.
        assert_eq!(f[1].value_of(&[]), Some(5.0));
    }

    #[test]
    fn a_vanished_series_stays_at_its_last_value() {
        let mut m = keeping(10);
        m.apply(&mut counter(&[("a", 3.0), ("b", 4.0)]));
        let mut f = counter(&[("a", 5.0)]);
        assert!(m.apply(&mut f).is_empty());
        assert_eq!(values(&f), vec![("a".into(), 5.0), ("b".into(), 4.0)]);
        // It comes back lower: absorbed like any drop.
        let mut f = counter(&[("a", 5.0), ("b", 1.0)]);
        assert_eq!(m.apply(&mut f).len(), 1);
        assert_eq!(values(&f), vec![("a".into(), 5.0), ("b".into(), 4.0)]);
    }

    #[test]
    fn a_vanished_series_goes_unless_kept() {
        let mut m = MonotonicCounters::new(CounterPolicy::default());
        m.apply(&mut counter(&[("a", 3.0), ("b", 4.0)]));
        let mut f = counter(&[("a", 5.0)]);
        m.apply(&mut f);
        assert_eq!(values(&f), vec![("a".into(), 5.0)]);
        // A server restart: its counters start again from 0, and continue
        // from where they were.
        let mut f = counter(&[("a", 1.0), ("b", 1.0)]);
        assert_eq!(m.apply(&mut f).len(), 2);
        assert_eq!(values(&f), vec![("a".into(), 5.0), ("b".into(), 4.0)]);
    }

    #[test]
    fn memory_is_bounded_per_metric() {
        let mut m = keeping(2);
        m.apply(&mut counter(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]));
        assert_eq!(m.series.len(), 2);
        // The untracked series is served as returned, even when it drops.
        let mut f = counter(&[("a", 1.0), ("b", 1.0), ("c", 0.0)]);
        m.apply(&mut f);
        assert!(values(&f).contains(&("c".into(), 0.0)));
    }
}
