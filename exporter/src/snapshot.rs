//! The immutable data a collector publishes and `/metrics` encodes.
//!
//! Collectors never touch the encoder: they build a `Vec<Family>` from what
//! they read, and the exposition layer turns the latest one into text. That
//! keeps I/O and rendering apart and makes every collector's pure part
//! testable without a server.

use std::borrow::Cow;

pub type Name = Cow<'static, str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Histogram {
        sum: f64,
        count: u64,
        /// Observations per bucket (not cumulative), by upper bound, `+Inf`
        /// excluded: the encoder accumulates them.
        buckets: Vec<(f64, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(Name, String)>,
    pub value: Value,
}

/// One metric family. `name` is the name as exposed, so counters end in
/// `_total` here exactly as in the metric catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: Name,
    pub help: Name,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: impl Into<Name>, help: impl Into<Name>, kind: Kind) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    pub fn gauge(name: impl Into<Name>, help: impl Into<Name>) -> Self {
        Self::new(name, help, Kind::Gauge)
    }

    pub fn counter(name: impl Into<Name>, help: impl Into<Name>) -> Self {
        Self::new(name, help, Kind::Counter)
    }

    /// Adds a sample; label pairs are `(name, value)`.
    pub fn push<const N: usize>(&mut self, labels: [(&'static str, &str); N], value: f64) {
        self.samples.push(Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), (*v).to_owned()))
                .collect(),
            value: Value::Number(value),
        });
    }

    /// A family with one unlabelled sample.
    pub fn with_value(mut self, value: f64) -> Self {
        self.push([], value);
        self
    }

    /// The value of the sample whose labels equal `labels` (in any order).
    pub fn value_of(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.iter().find_map(|s| {
            let same = s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v));
            match (&s.value, same) {
                (Value::Number(n), true) => Some(*n),
                _ => None,
            }
        })
    }
}

/// Finds a family by exposed name; used by tests of the pure parts.
pub fn find<'a>(families: &'a [Family], name: &str) -> Option<&'a Family> {
    families.iter().find(|f| f.name == name)
}
