//! The business query file: TOML parsed and checked into [`QueryFile`], with
//! every error naming the file, the line and the key.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::cli::parse_duration;
use crate::runner::Schedule;
use crate::snapshot::Kind;

/// The BookedBarber queries shipped with the exporter.
pub const DEFAULT_QUERIES: &str = include_str!("../../../config/business-queries.toml");
pub const DEFAULT_QUERIES_NAME: &str = "config/business-queries.toml (built in)";

/// Prefixes of the built-in collectors' metrics, which a query may not use.
const RESERVED_PREFIXES: [&str; 5] = [
    "bookedbarber_exporter_",
    "process_",
    "pg_",
    "redis_",
    "celery_",
];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read query file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    query: Vec<RawQuery>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_series: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    name: Spanned<String>,
    sql: String,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_series: Option<Spanned<i64>>,
    metric: Vec<RawMetric>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: Spanned<String>,
    help: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    value: Spanned<String>,
    #[serde(default)]
    labels: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryFile {
    pub queries: Vec<QueryDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryDef {
    pub name: String,
    pub sql: String,
    pub schedule: Schedule,
    /// Rows of the result turned into series; the rest are counted and
    /// dropped. `None` takes `--business.max-series`.
    pub max_series: Option<usize>,
    pub metrics: Vec<MetricDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub value_column: String,
    pub label_columns: Vec<String>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl QueryFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    pub fn builtin() -> Self {
        Self::parse(DEFAULT_QUERIES, DEFAULT_QUERIES_NAME)
            .expect("the built-in query file is checked by unit tests")
    }

    /// Parses and validates a query file; every error names the file, the
    /// line and the key at fault.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let at = |span: std::ops::Range<usize>, key: &str, problem: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            invalid(format!("line {line}, key `{key}`: {problem}"))
        };
        let duration = |value: &Option<Spanned<String>>, key: &str, fallback: Duration| match value
        {
            None => Ok(fallback),
            Some(v) => parse_duration(v.get_ref()).map_err(|e| at(v.span(), key, e)),
        };
        let default_interval = duration(
            &raw.defaults.interval,
            "defaults.interval",
            DEFAULT_INTERVAL,
        )?;
        let default_timeout = duration(&raw.defaults.timeout, "defaults.timeout", DEFAULT_TIMEOUT)?;
        let count = |value: &Option<Spanned<i64>>, key: &str| match value {
            None => Ok(None),
            Some(v) if *v.get_ref() >= 1 => Ok(Some(*v.get_ref() as usize)),
            Some(v) => Err(at(
                v.span(),
                key,
                format!("{} is not a positive number", v.get_ref()),
            )),
        };
        let default_max_series = count(&raw.defaults.max_series, "defaults.max_series")?;

        let mut query_names = HashSet::new();
        let mut metric_names = HashSet::new();
        let mut queries = Vec::with_capacity(raw.query.len());
        for q in raw.query {
            let name = q.name.get_ref().clone();
            if !is_valid_query_name(&name) {
                return Err(at(q.name.span(), "query.name", format!(
                    "{name:?} is not a valid query name: use lower-case letters, digits and underscores"
                )));
            }
            if !query_names.insert(name.clone()) {
                return Err(at(
                    q.name.span(),
                    "query.name",
                    format!("duplicate query name {name:?}"),
                ));
            }
            let interval = duration(&q.interval, "query.interval", default_interval)?;
            let timeout = duration(&q.timeout, "query.timeout", default_timeout)?;
            let max_series = count(&q.max_series, "query.max_series")?.or(default_max_series);
            if q.sql.trim().is_empty() {
                return Err(at(
                    q.name.span(),
                    "query.sql",
                    format!("query {name:?} has an empty sql"),
                ));
            }
            if q.metric.is_empty() {
                return Err(at(
                    q.name.span(),
                    "query.metric",
                    format!("query {name:?} defines no [[query.metric]]"),
                ));
            }
            let mut metrics = Vec::with_capacity(q.metric.len());
            for m in q.metric {
                let metric_name = m.name.get_ref().clone();
                if !is_valid_metric_name(&metric_name) {
                    return Err(at(
                        m.name.span(),
                        "query.metric.name",
                        format!("{metric_name:?} is not a valid Prometheus metric name"),
                    ));
                }
                if let Some(prefix) = RESERVED_PREFIXES
                    .iter()
                    .find(|p| metric_name.starts_with(*p))
                {
                    return Err(at(m.name.span(), "query.metric.name", format!(
                        "{metric_name:?}: the prefix {prefix:?} belongs to the exporter's built-in metrics"
                    )));
                }
                if !metric_names.insert(metric_name.clone()) {
                    return Err(at(
                        m.name.span(),
                        "query.metric.name",
                        format!("duplicate metric name {metric_name:?}"),
                    ));
                }
                let kind = match m.kind.get_ref().as_str() {
                    "gauge" => Kind::Gauge,
                    "counter" => Kind::Counter,
                    other => {
                        return Err(at(
                            m.kind.span(),
                            "query.metric.type",
                            format!("unknown type {other:?}: expected \"gauge\" or \"counter\""),
                        ))
                    }
                };
                if kind == Kind::Counter && !metric_name.ends_with("_total") {
                    return Err(at(
                        m.name.span(),
                        "query.metric.name",
                        format!("counter {metric_name:?} must end in _total"),
                    ));
                }
                if kind == Kind::Gauge && metric_name.ends_with("_total") {
                    return Err(at(
                        m.name.span(),
                        "query.metric.name",
                        format!(
                            "gauge {metric_name:?} must not end in _total, which is for counters"
                        ),
                    ));
                }
                if m.help.get_ref().trim().is_empty() {
                    return Err(at(
                        m.help.span(),
                        "query.metric.help",
                        format!("metric {metric_name:?} needs a help text"),
                    ));
                }
                let mut seen_labels = BTreeSet::new();
                for label in &m.labels {
                    if !is_valid_label_name(label.get_ref()) {
                        return Err(at(
                            label.span(),
                            "query.metric.labels",
                            format!("{:?} is not a valid label name", label.get_ref()),
                        ));
                    }
                    if !seen_labels.insert(label.get_ref().clone()) {
                        return Err(at(
                            label.span(),
                            "query.metric.labels",
                            format!("label {:?} listed twice", label.get_ref()),
                        ));
                    }
                    if label.get_ref() == m.value.get_ref() {
                        return Err(at(
                            label.span(),
                            "query.metric.labels",
                            format!(
                                "column {:?} cannot be both the value and a label",
                                label.get_ref()
                            ),
                        ));
                    }
                }
                metrics.push(MetricDef {
                    name: metric_name,
                    help: m.help.into_inner(),
                    kind,
                    value_column: m.value.into_inner(),
                    label_columns: m.labels.into_iter().map(Spanned::into_inner).collect(),
                });
            }
            queries.push(QueryDef {
                name,
                sql: q.sql,
                schedule: Schedule { interval, timeout },
                max_series,
                metrics,
            });
        }
        Ok(QueryFile { queries })
    }

    /// The longest timeout of any query, so the connection's
    /// statement_timeout never cuts a query short before its own timeout.
    pub fn longest_timeout(&self) -> Duration {
        self.queries
            .iter()
            .map(|q| q.schedule.timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

fn is_valid_query_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn err(text: &str) -> String {
        QueryFile::parse(text, "q.toml").unwrap_err().to_string()
    }

    pub(crate) const ONE: &str = r#"
[[query]]
name = "a"
sql = "SELECT 1"
[[query.metric]]
name = "shop_things"
help = "Things."
type = "gauge"
value = "n"
labels = ["kind"]
"#;

    #[test]
    fn builtin_file_is_valid_and_covers_the_catalogue() {
        let file = QueryFile::builtin();
        let names: Vec<&str> = file
            .queries
            .iter()
            .flat_map(|q| q.metrics.iter().map(|m| m.name.as_str()))
            .collect();
        for expected in [
            "bookedbarber_appointments",
            "bookedbarber_appointments_created_total",
            "bookedbarber_appointments_recent",
            "bookedbarber_appointments_upcoming",
            "bookedbarber_appointment_pending_oldest_age_seconds",
            "bookedbarber_payments",
            "bookedbarber_payments_created_total",
            "bookedbarber_payments_recent",
            "bookedbarber_payments_captured_usd_total",
            "bookedbarber_refunds_usd_total",
            "bookedbarber_platform_fees_usd_total",
            "bookedbarber_payouts",
            "bookedbarber_payouts_pending_usd",
            "bookedbarber_users",
            "bookedbarber_users_created_total",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from the built-in queries"
            );
        }
    }

    #[test]
    fn parses_defaults_and_overrides() {
        let text = format!("[defaults]\ninterval = \"1m\"\n{ONE}\n[[query]]\nname = \"b\"\nsql = \"SELECT 2\"\ntimeout = \"3s\"\n[[query.metric]]\nname = \"shop_total\"\nhelp = \"h\"\ntype = \"counter\"\nvalue = \"n\"\n");
        let f = QueryFile::parse(&text, "q.toml").unwrap();
        assert_eq!(f.queries[0].schedule.interval, Duration::from_secs(60));
        assert_eq!(f.queries[0].schedule.timeout, DEFAULT_TIMEOUT);
        assert_eq!(f.queries[1].schedule.timeout, Duration::from_secs(3));
        assert_eq!(f.queries[1].metrics[0].kind, Kind::Counter);
        assert_eq!(f.longest_timeout(), DEFAULT_TIMEOUT);
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let e = err("[[query]]\nname = \"a\"\nsql = \"SELECT 1\n");
        assert!(e.starts_with("q.toml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err(&ONE.replace("value = \"n\"", "value = \"n\"\nunit = \"usd\""));
        assert!(e.starts_with("q.toml: "), "{e}");
        assert!(e.contains("line 10"), "{e}");
        assert!(e.contains("unit"), "{e}");
    }

    #[test]
    fn duplicate_metric_name_names_the_second_line() {
        let text = format!("{ONE}\n[[query]]\nname = \"b\"\nsql = \"SELECT 2\"\n[[query.metric]]\nname = \"shop_things\"\nhelp = \"h\"\ntype = \"gauge\"\nvalue = \"n\"\n");
        let e = err(&text);
        assert!(
            e.contains(
                "q.toml: line 16, key `query.metric.name`: duplicate metric name \"shop_things\""
            ),
            "{e}"
        );
    }

    #[test]
    fn other_validation_errors() {
        assert!(err(&ONE.replace("\"gauge\"", "\"summary\"")).contains("key `query.metric.type`"));
        assert!(err(&ONE.replace("shop_things", "pg_things")).contains("built-in"));
        assert!(err(&ONE.replace("shop_things", "shop things"))
            .contains("not a valid Prometheus metric name"));
        assert!(err(&ONE.replace("\"gauge\"", "\"counter\"")).contains("must end in _total"));
        assert!(err(&ONE.replace("[\"kind\"]", "[\"n\"]")).contains("both the value and a label"));
        assert!(
            err(&ONE.replace("name = \"a\"", "name = \"a\"\ninterval = \"soon\""))
                .contains("key `query.interval`")
        );
        assert!(
            err(&ONE.replace("help = \"Things.\"", "help = \" \"")).contains("needs a help text")
        );
    }
}
