//! Command-line flags and environment variables, named like the flags of
//! Prometheus' own exporters so that operators need no manual.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// 10188: the 9100–9999 range of the Prometheus port allocation list is
/// taken, and this one is clear of postgres_exporter (9187), redis_exporter
/// (9121), celery-exporter (9808) and node_exporter (9100).
pub const DEFAULT_PORT: u16 = 10188;

#[derive(Debug, Parser)]
#[command(
    name = "bookedbarber-exporter",
    version,
    about = "Prometheus exporter for BookedBarber V2: PostgreSQL, Redis, Celery and business metrics.",
    long_about = "Prometheus exporter for BookedBarber V2: PostgreSQL, Redis, Celery and business metrics.\n\n\
Each source is collected in the background on its own interval; /metrics serves the latest \
snapshot, so scrapes never reach the databases.\n\n\
Secrets are read from the environment or from files, never from flags:\n  \
BOOKEDBARBER_POSTGRES_DSN  PostgreSQL URL (postgres://user:password@host:5432/db) (or --postgres.dsn-file)\n  \
BOOKEDBARBER_REDIS_URL     Redis URL of the Celery broker (redis://host:6379/0) (or --redis.url-file)"
)]
pub struct Cli {
    /// Address to serve on: host:port, or :port for every interface (IPv6
    /// and IPv4).
    #[arg(long = "web.listen-address", env = "BOOKEDBARBER_EXPORTER_LISTEN_ADDRESS",
          default_value = ":10188", value_parser = parse_listen_address)]
    pub listen_address: ListenAddress,

    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", default_value = "/metrics", value_parser = parse_path)]
    pub telemetry_path: String,

    /// Web configuration file (TLS and basic auth), in the format of the
    /// Prometheus exporter-toolkit.
    #[arg(long = "web.config.file", env = "BOOKEDBARBER_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// File holding the PostgreSQL URL. The URL can also come from the
    /// BOOKEDBARBER_POSTGRES_DSN environment variable. With neither, the
    /// PostgreSQL and business collectors are disabled.
    #[arg(long = "postgres.dsn-file")]
    pub postgres_dsn_file: Option<PathBuf>,

    /// How often PostgreSQL infrastructure metrics are collected.
    #[arg(long = "postgres.interval", default_value = "15s", value_parser = parse_duration)]
    pub postgres_interval: Duration,

    /// Time limit of one PostgreSQL collection; also its statement_timeout.
    #[arg(long = "postgres.timeout", default_value = "5s", value_parser = parse_duration)]
    pub postgres_timeout: Duration,

    /// Connections the exporter may open to PostgreSQL in all: one is the
    /// PostgreSQL collector's own, one is shared by the statement, table,
    /// checkpoint, WAL and settings collectors, the others are shared by the
    /// business queries.
    #[arg(long = "postgres.max-connections", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(3..=20))]
    pub postgres_max_connections: u32,

    /// Collect query performance from pg_stat_statements (when the extension
    /// is installed in the exporter's database).
    #[arg(long = "postgres.statements.enabled", default_value_t = true, action = clap::ArgAction::Set)]
    pub postgres_statements_enabled: bool,

    /// How often pg_stat_statements is read; the top statements are ranked
    /// by execution time over this interval.
    #[arg(long = "postgres.statements.interval", default_value = "30s", value_parser = parse_duration)]
    pub postgres_statements_interval: Duration,

    /// Statements with series of their own (by execution time since the
    /// previous collection); the rest are summed per database as
    /// queryid="__other__".
    #[arg(long = "postgres.statements.limit", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=500))]
    pub postgres_statements_limit: u32,

    /// Serve pg_stat_statements_query_id, which maps each queryid to its
    /// normalised query text.
    #[arg(long = "postgres.statements.include-query", default_value_t = true, action = clap::ArgAction::Set)]
    pub postgres_statements_include_query: bool,

    /// Characters of query text kept in pg_stat_statements_query_id.
    #[arg(long = "postgres.statements.query-length", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(10..=2000))]
    pub postgres_statements_query_length: u32,

    /// Collect table health (pg_stat_user_tables, pg_statio_user_tables) of
    /// the exporter's database.
    #[arg(long = "postgres.tables.enabled", default_value_t = true, action = clap::ArgAction::Set)]
    pub postgres_tables_enabled: bool,

    /// How often table statistics are read.
    #[arg(long = "postgres.tables.interval", default_value = "30s", value_parser = parse_duration)]
    pub postgres_tables_interval: Duration,

    /// Tables always reported (comma-separated; `name` in any schema or
    /// `schema.name`): BookedBarber's business tables by default.
    #[arg(
        long = "postgres.tables",
        value_delimiter = ',',
        default_value = "users,appointments,payments,payouts,guest_bookings,refunds"
    )]
    pub postgres_tables: Vec<String>,

    /// The largest other tables reported besides those of --postgres.tables.
    #[arg(long = "postgres.tables.limit", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=500))]
    pub postgres_tables_limit: u32,

    /// Business query file (TOML). The shipped BookedBarber queries are used
    /// when unset.
    #[arg(long = "business.queries", env = "BOOKEDBARBER_BUSINESS_QUERIES")]
    pub business_queries: Option<PathBuf>,

    /// Rows of one business query turned into series; further rows are
    /// dropped and counted in bookedbarber_exporter_series_dropped. A query
    /// file's `max_series` overrides it.
    #[arg(long = "business.max-series", default_value_t = crate::business::DEFAULT_MAX_SERIES,
          value_parser = parse_positive)]
    pub business_max_series: usize,

    /// Collect the business metrics (bookings, payments, users).
    #[arg(long = "business.enabled", env = "BOOKEDBARBER_BUSINESS_ENABLED",
          default_value_t = true, action = clap::ArgAction::Set)]
    pub business_enabled: bool,

    /// File holding the Redis URL of the Celery broker (redis:// or
    /// rediss://, with the broker's database: redis://host:6379/0). The URL
    /// can also come from the BOOKEDBARBER_REDIS_URL environment variable.
    /// With neither, the Redis and Celery collectors are disabled.
    #[arg(long = "redis.url-file")]
    pub redis_url_file: Option<PathBuf>,

    /// How often Redis server metrics (INFO) are collected.
    #[arg(long = "redis.interval", default_value = "15s", value_parser = parse_duration)]
    pub redis_interval: Duration,

    /// Time limit of one Redis collection, and of connecting to Redis.
    #[arg(long = "redis.timeout", default_value = "5s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How often Celery queue depths are collected.
    #[arg(long = "celery.interval", default_value = "10s", value_parser = parse_duration)]
    pub celery_interval: Duration,

    /// Time limit of one Celery queue collection.
    #[arg(long = "celery.timeout", default_value = "5s", value_parser = parse_duration)]
    pub celery_timeout: Duration,

    /// Queues always reported (comma-separated), even while empty and
    /// undeclared; others are discovered from kombu's bindings.
    #[arg(
        long = "celery.queues",
        env = "BOOKEDBARBER_CELERY_QUEUES",
        value_delimiter = ',',
        default_value = "celery"
    )]
    pub celery_queues: Vec<String>,

    /// Discover queues from kombu's _kombu.binding.* sets.
    #[arg(long = "celery.discover-queues", default_value_t = true, action = clap::ArgAction::Set)]
    pub celery_discover_queues: bool,

    /// How often queue discovery scans the broker's keyspace. It is kept
    /// apart from --celery.interval because the keyspace can hold millions
    /// of result keys; the configured queues are read every interval.
    #[arg(long = "celery.discovery-interval", default_value = "5m", value_parser = parse_duration)]
    pub celery_discovery_interval: Duration,

    /// Keys one discovery may scan before it stops and reports
    /// celery_queue_discovery_truncated 1.
    #[arg(long = "celery.discovery-max-keys", default_value_t = 10_000_000)]
    pub celery_discovery_max_keys: u64,

    /// kombu's global_keyprefix transport option.
    #[arg(long = "celery.key-prefix", default_value = "")]
    pub celery_key_prefix: String,

    /// kombu's priority_steps transport option (comma-separated).
    #[arg(long = "celery.priority-steps", default_value = "0,3,6,9", value_parser = parse_steps)]
    pub celery_priority_steps: PrioritySteps,

    /// kombu's sep transport option; \xNN escapes allowed.
    #[arg(long = "celery.priority-separator", default_value = "\\x06\\x16", value_parser = parse_escaped)]
    pub celery_priority_separator: String,

    /// Celery's event_exchange setting.
    #[arg(long = "celery.event-exchange", default_value = "celeryev")]
    pub celery_event_exchange: String,

    /// Celery's control_exchange setting.
    #[arg(long = "celery.control-exchange", default_value = "celery")]
    pub celery_control_exchange: String,

    /// Subscribe to Celery's task and worker events.
    #[arg(long = "celery.events.enabled", default_value_t = true, action = clap::ArgAction::Set)]
    pub celery_events_enabled: bool,

    /// Redis databases whose events to follow (comma-separated); the
    /// broker URL's database when unset.
    #[arg(long = "celery.events.dbs", value_delimiter = ',')]
    pub celery_event_dbs: Vec<i64>,

    /// After this long without an event, the subscription is checked with a
    /// PING (answered within --redis.timeout, or the exporter reconnects):
    /// a connection whose network path went silent never closes by itself.
    #[arg(long = "celery.events.idle-check", default_value = "15s", value_parser = parse_duration)]
    pub celery_events_idle_check: Duration,

    /// Queues reported one by one; more are summed as queue="__overflow__".
    #[arg(long = "celery.max-queues", default_value_t = 100)]
    pub celery_max_queues: usize,

    /// Distinct task names reported; more are counted as name="__overflow__".
    #[arg(long = "celery.max-task-names", default_value_t = 500)]
    pub celery_max_task_names: usize,

    /// Workers tracked at once.
    #[arg(long = "celery.max-workers", default_value_t = 500)]
    pub celery_max_workers: usize,

    /// Tasks remembered by uuid (to name their later events); bounds memory.
    #[arg(long = "celery.max-tracked-tasks", default_value_t = 20_000)]
    pub celery_max_tracked_tasks: usize,

    /// Workers silent for this long leave /metrics.
    #[arg(long = "celery.worker-forget-after", default_value = "10m", value_parser = parse_duration)]
    pub celery_worker_forget_after: Duration,

    /// Check the configuration (flags, query file, web config) and exit.
    #[arg(long = "check-config")]
    pub check_config: bool,

    /// Minimum level of log messages: error, warn, info, debug or trace.
    #[arg(
        long = "log.level",
        env = "BOOKEDBARBER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: tracing::Level,

    /// Log line format.
    #[arg(
        long = "log.format",
        env = "BOOKEDBARBER_LOG_FORMAT",
        default_value = "logfmt"
    )]
    pub log_format: LogFormat,
}

/// Priority steps, sorted, starting with 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrioritySteps(pub Vec<u8>);

fn parse_steps(text: &str) -> Result<PrioritySteps, String> {
    let mut steps = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u8>()
                .map_err(|_| format!("{s:?} is not a priority step (0 to 255)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    steps.sort_unstable();
    steps.dedup();
    if steps.first() != Some(&0) {
        return Err("priority steps must include 0 (the plain queue key)".into());
    }
    Ok(PrioritySteps(steps))
}

/// Reads `\xNN` escapes, so that control characters can be given.
fn parse_escaped(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("\\x") {
        out.push_str(&rest[..i]);
        let hex = rest.get(i + 2..i + 4).ok_or("\\x needs two hex digits")?;
        let byte =
            u8::from_str_radix(hex, 16).map_err(|_| format!("\\x{hex} is not a hex byte"))?;
        out.push(char::from(byte));
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Where to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    /// `:port`: every interface, IPv6 and IPv4 alike.
    AllInterfaces(u16),
    Socket(SocketAddr),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::AllInterfaces(port) => write!(f, ":{port}"),
            ListenAddress::Socket(address) => write!(f, "{address}"),
        }
    }
}

fn parse_listen_address(text: &str) -> Result<ListenAddress, String> {
    let err = || {
        format!("expected host:port or :port, such as 127.0.0.1:{DEFAULT_PORT} or :{DEFAULT_PORT}")
    };
    match text.strip_prefix(':') {
        Some(port) => port
            .parse()
            .map(ListenAddress::AllInterfaces)
            .map_err(|_| err()),
        None => text.parse().map(ListenAddress::Socket).map_err(|_| err()),
    }
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

fn parse_path(text: &str) -> Result<String, String> {
    if text.starts_with('/') && text.len() > 1 {
        Ok(text.to_owned())
    } else {
        Err("must start with / and name a path, such as /metrics".to_owned())
    }
}

/// Parses durations written the Prometheus way: `500ms`, `15s`, `2m`, `1h`,
/// or combinations such as `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration {text:?}: use a number and a unit (ms, s, m, h), such as 15s or 1m30s")
    };
    if text.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            _ => return Err(err()),
        };
        total += part;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(format!("invalid duration {text:?}: must be more than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "15", "s", "1.5s", "10x", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address(":10188"),
            Ok(ListenAddress::AllInterfaces(10188))
        );
        assert!(parse_listen_address(":http").is_err());
        assert_eq!(
            parse_listen_address("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(
            parse_listen_address("[::1]:9").unwrap().to_string(),
            "[::1]:9"
        );
        assert!(parse_listen_address("localhost").is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(
            cli.listen_address,
            ListenAddress::AllInterfaces(DEFAULT_PORT)
        );
        assert_eq!(cli.telemetry_path, "/metrics");
        assert!(cli.business_enabled);
        assert_eq!(cli.postgres_max_connections, 4);
        assert_eq!(cli.postgres_statements_limit, 20);
        assert_eq!(cli.postgres_tables.len(), 6);
        assert!(Cli::try_parse_from(["x", "--postgres.max-connections", "2"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--postgres.tables",
            "public.payments,users",
            "--postgres.statements.enabled=false",
        ])
        .unwrap();
        assert_eq!(cli.postgres_tables, vec!["public.payments", "users"]);
        assert!(!cli.postgres_statements_enabled);
        let cli =
            Cli::try_parse_from(["x", "--business.enabled=false", "--log.format=json"]).unwrap();
        assert!(!cli.business_enabled);
        assert_eq!(cli.log_format, LogFormat::Json);
    }

    #[test]
    fn celery_options() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.celery_priority_separator, "\x06\x16");
        assert_eq!(cli.celery_priority_steps, PrioritySteps(vec![0, 3, 6, 9]));
        let cli = Cli::try_parse_from([
            "x",
            "--celery.priority-steps",
            "9,0,1",
            "--celery.priority-separator",
            ":",
            "--celery.queues",
            "a,b",
        ])
        .unwrap();
        assert_eq!(cli.celery_priority_steps, PrioritySteps(vec![0, 1, 9]));
        assert_eq!(cli.celery_priority_separator, ":");
        assert_eq!(cli.celery_queues, vec!["a", "b"]);
        assert!(Cli::try_parse_from(["x", "--celery.priority-steps", "3,6"]).is_err());
        assert_eq!(parse_escaped("a\\x41b"), Ok("aAb".into()));
        assert!(parse_escaped("\\xZZ").is_err());
    }
}
