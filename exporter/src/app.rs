//! Wires the configured sources, the collectors and the HTTP server together.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use sqlx::postgres::{PgConnectOptions, PgPool};
use tracing::{info, warn};

use crate::business::{BusinessCollectors, BusinessHealth, QueryFile, QueryFileReloader};
use crate::celery::{
    self, CeleryQueueSource, ConsumerConfig, DiscoveredQueues, EventHub, EventLimits, QueueConfig,
    QueueDiscoverySource, SentAt,
};
use crate::cli::Cli;
use crate::exposition::Exposition;
use crate::exposition::LiveFamilies;
use crate::pg_cancel::Backends;
use crate::postgres::checkpoints::CheckpointSource;
use crate::postgres::settings::SettingsSource;
use crate::postgres::statements::{StatementsConfig, StatementsSource};
use crate::postgres::tables::{TableConfig, TableSource};
use crate::postgres::wal::WalSource;
use crate::postgres::{PostgresConfig, PostgresSource};
use crate::redis_conn::{RedisTarget, SharedConnection};
use crate::redis_server::RedisServerSource;
use crate::reload::{Hangups, Reloaders};
use crate::runner::{self, CollectorSlot, Schedule, SlotList};
use crate::web::WebSetup;

pub const POSTGRES_DSN_ENV: &str = "BOOKEDBARBER_POSTGRES_DSN";
pub const REDIS_URL_ENV: &str = "BOOKEDBARBER_REDIS_URL";

/// Reads a secret from its environment variable or from a file, never both.
fn read_secret(
    env_name: &str,
    file: Option<&Path>,
    file_flag: &str,
) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var(env_name)
        .ok()
        .filter(|v| !v.trim().is_empty());
    match (from_env, file) {
        (Some(_), Some(_)) => bail!("both {env_name} and {file_flag} are set; use one of them"),
        (Some(value), None) => Ok(Some(value.trim().to_owned())),
        (None, Some(path)) => {
            let value = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {file_flag} {}", path.display()))?;
            let value = value.trim();
            if value.is_empty() {
                bail!("{file_flag} {} is empty", path.display());
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // First: from now on SIGHUP is a reload request, never the end of the
    // process, even while the rest starts.
    let hangups = Hangups::install()?;
    // Loads the certificates too, so --check-config fails where start-up would.
    let web = WebSetup::load(cli.web_config_file.as_deref())?;
    let postgres_url = read_secret(
        POSTGRES_DSN_ENV,
        cli.postgres_dsn_file.as_deref(),
        "--postgres.dsn-file",
    )?;
    let postgres_options = postgres_url
        .as_deref()
        .map(PostgresConfig::from_url)
        .transpose()?;
    let redis_url = read_secret(
        REDIS_URL_ENV,
        cli.redis_url_file.as_deref(),
        "--redis.url-file",
    )?;
    let redis_target = redis_url
        .as_deref()
        .map(RedisTarget::from_url)
        .transpose()?;
    let queries = if cli.business_enabled {
        Some(match &cli.business_queries {
            Some(path) => QueryFile::load(path)?,
            None => QueryFile::builtin(),
        })
    } else {
        None
    };
    if cli.check_config {
        println!("configuration is valid");
        return Ok(());
    }

    let mut slots = Vec::new();
    let mut live: Vec<Arc<dyn LiveFamilies>> = Vec::new();
    let postgres = match postgres_options {
        Some(options) => Some(start_postgres(
            &cli, options, queries, &mut slots, &mut live,
        )),
        None => {
            warn!("{POSTGRES_DSN_ENV} and --postgres.dsn-file are unset: PostgreSQL and business collectors are disabled");
            None
        }
    };
    match redis_target {
        Some(target) => start_redis_and_celery(&cli, target, &mut slots, &mut live)
            .context("cannot start the Celery event consumer")?,
        None => warn!("{REDIS_URL_ENV} and --redis.url-file are unset: Redis and Celery collectors are disabled"),
    }

    let slots: SlotList = Arc::new(ArcSwap::from_pointee(slots));
    let reloaders = Reloaders::new();
    live.push(reloaders.clone());
    let business = postgres.as_ref().and_then(|p| p.business.clone());
    if let (Some(collectors), Some(path)) = (business, &cli.business_queries) {
        reloaders.add(Arc::new(QueryFileReloader {
            path: path.clone(),
            collectors,
            slots: slots.clone(),
        }));
    }
    let exposition = Arc::new(Exposition::new(slots, live));
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(exposition.clone()));
    if web.basic_auth_enabled() {
        info!("basic authentication required on every endpoint but /healthz and /readyz");
    }
    if web.client_certificates_required() {
        info!("TLS client certificates required");
    }
    let server = web.into_server(registry, exposition, cli.telemetry_path, &reloaders);
    // Reloadable parts are registered above; reloads may start now.
    reloaders.listen(hangups);
    let served = server.serve(&cli.listen_address).await;
    if let Some(postgres) = &postgres {
        // Statements still running on the server would outlive the process.
        postgres
            .backends
            .cancel_running(&postgres.infra_pool, Duration::from_secs(2))
            .await;
    }
    served
}

fn start_postgres(
    cli: &Cli,
    options: PgConnectOptions,
    queries: Option<QueryFile>,
    slots: &mut Vec<Arc<CollectorSlot>>,
    live: &mut Vec<Arc<dyn LiveFamilies>>,
) -> PostgresParts {
    let target = PostgresConfig::describe(&options);
    let backends = Backends::default();
    // A connection of its own for the PostgreSQL collector: business queries
    // that are slow or blocked by a lock must not turn pg_up to 0.
    let infra_pool = PostgresConfig {
        options: options.clone(),
        max_connections: 1,
        statement_timeout: cli.postgres_timeout,
        // Half the collection's limit: the other half is left to find out
        // why no connection could be opened (see postgres::acquire).
        acquire_timeout: cli.postgres_timeout / 2,
        lock_timeout: None,
        backends: backends.clone(),
    }
    .pool();
    let schedule = Schedule {
        interval: cli.postgres_interval,
        timeout: cli.postgres_timeout,
    };
    slots.push(runner::start(
        "postgres",
        PostgresSource::new(infra_pool.clone()),
        schedule,
    ));
    info!(server = %target, interval = ?cli.postgres_interval, "PostgreSQL collector enabled");
    start_postgres_depth(cli, options.clone(), &backends, slots);
    let mut parts = PostgresParts {
        infra_pool,
        backends: backends.clone(),
        business: None,
    };
    let Some(file) = queries else {
        return parts;
    };
    let longest_query = file.longest_timeout();
    let business_pool = PostgresConfig {
        options,
        max_connections: cli.postgres_max_connections - DEDICATED_CONNECTIONS,
        // Each query sets its own limit before it runs; this only covers a
        // connection's first statement.
        statement_timeout: longest_query,
        // Waiting for a pooled connection is part of a query's own time
        // limit, so it may wait as long as the longest one.
        acquire_timeout: longest_query,
        lock_timeout: None,
        backends: backends.clone(),
    }
    .pool();
    let health = Arc::new(BusinessHealth::default());
    live.push(health.clone());
    info!(server = %target, queries = file.queries.len(), connections = cli.postgres_max_connections - DEDICATED_CONNECTIONS,
          "business collectors enabled");
    let (collectors, started) =
        BusinessCollectors::start(file, business_pool, cli.business_max_series, health);
    slots.extend(started);
    parts.business = Some(collectors);
    parts
}

/// What the PostgreSQL side leaves running, for reloads and shutdown.
struct PostgresParts {
    infra_pool: PgPool,
    backends: Backends,
    business: Option<Arc<BusinessCollectors>>,
}

/// Connections not shared with the business queries: the PostgreSQL
/// collector's own and the one of the deeper PostgreSQL collectors.
const DEDICATED_CONNECTIONS: u32 = 2;

/// The statement, table, checkpoint, WAL and settings collectors: one
/// connection shared by all of them, so they add one connection whatever
/// their number and never take the one `pg_up` depends on. Each is its own
/// collector, so one failing hides none of the others.
fn start_postgres_depth(
    cli: &Cli,
    options: PgConnectOptions,
    backends: &Backends,
    slots: &mut Vec<Arc<CollectorSlot>>,
) {
    let pool = PostgresConfig {
        options,
        max_connections: 1,
        statement_timeout: cli.postgres_timeout,
        // Half the collection's limit: the other half is left to find out
        // why no connection could be opened (see postgres::acquire).
        acquire_timeout: cli.postgres_timeout / 2,
        // Nothing they read should wait on a lock (the table sizes skip
        // tables under an exclusive lock); should one anyway, it gives up
        // quickly rather than hold the connection the others need.
        lock_timeout: Some((cli.postgres_timeout / 4).max(Duration::from_millis(100))),
        backends: backends.clone(),
    }
    .pool();
    let every = |interval| Schedule {
        interval,
        timeout: cli.postgres_timeout,
    };
    // Spread over the first second, so they do not queue for the
    // connection at the same instant, nor stay aligned afterwards.
    let step = Duration::from_millis(150);
    slots.push(runner::start_after(
        "postgres_checkpoints",
        CheckpointSource::new(pool.clone()),
        every(cli.postgres_interval),
        step,
    ));
    slots.push(runner::start_after(
        "postgres_wal",
        WalSource::new(pool.clone()),
        every(cli.postgres_interval),
        step * 2,
    ));
    slots.push(runner::start_after(
        "postgres_settings",
        SettingsSource::new(pool.clone()),
        every(cli.postgres_interval),
        step * 3,
    ));
    if cli.postgres_tables_enabled {
        let config = TableConfig {
            tables: cli
                .postgres_tables
                .iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            limit: cli.postgres_tables_limit as usize,
        };
        slots.push(runner::start_after(
            "postgres_tables",
            TableSource::new(pool.clone(), config),
            every(cli.postgres_tables_interval),
            step * 4,
        ));
    }
    if cli.postgres_statements_enabled {
        let config = StatementsConfig {
            limit: cli.postgres_statements_limit as usize,
            include_query: cli.postgres_statements_include_query,
            query_length: cli.postgres_statements_query_length as usize,
        };
        slots.push(runner::start_after(
            "postgres_statements",
            StatementsSource::new(pool, config),
            every(cli.postgres_statements_interval),
            step * 5,
        ));
    }
    info!(
        statements = cli.postgres_statements_enabled,
        tables = cli.postgres_tables_enabled,
        "PostgreSQL statement, table, checkpoint, WAL and settings collectors enabled"
    );
}

fn start_redis_and_celery(
    cli: &Cli,
    target: RedisTarget,
    slots: &mut Vec<Arc<CollectorSlot>>,
    live: &mut Vec<Arc<dyn LiveFamilies>>,
) -> anyhow::Result<()> {
    let connection = Arc::new(SharedConnection::new(target.clone(), cli.redis_timeout));
    let schedule = Schedule {
        interval: cli.redis_interval,
        timeout: cli.redis_timeout,
    };
    slots.push(runner::start(
        "redis",
        RedisServerSource::new(connection.clone()),
        schedule,
    ));
    info!(server = %target.description, interval = ?cli.redis_interval, "Redis collector enabled");

    let hub = cli.celery_events_enabled.then(|| {
        EventHub::new(EventLimits {
            max_task_names: cli.celery_max_task_names,
            max_queues: cli.celery_max_queues,
            max_workers: cli.celery_max_workers,
            max_tracked_tasks: cli.celery_max_tracked_tasks,
            forget_workers_after: cli.celery_worker_forget_after,
            ..EventLimits::default()
        })
    });
    if let Some(hub) = &hub {
        let dbs = if cli.celery_event_dbs.is_empty() {
            vec![target.db]
        } else {
            cli.celery_event_dbs.clone()
        };
        let slot = CollectorSlot::new("celery_events");
        celery::start_on_own_thread(
            ConsumerConfig {
                target: target.clone(),
                patterns: celery::channel_patterns(&cli.celery_key_prefix, &dbs),
                timeout: cli.redis_timeout,
                idle_check: cli.celery_events_idle_check,
            },
            hub.clone(),
            slot.clone(),
        )?;
        slots.push(slot);
        live.push(hub.clone());
    }
    let queues = QueueConfig {
        key_prefix: cli.celery_key_prefix.clone(),
        separator: cli.celery_priority_separator.clone(),
        priority_steps: cli.celery_priority_steps.0.clone(),
        queues: cli
            .celery_queues
            .iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect(),
        max_queues: cli.celery_max_queues,
        event_exchange: cli.celery_event_exchange.clone(),
        control_exchange: cli.celery_control_exchange.clone(),
        ..QueueConfig::default()
    };
    let discovered = DiscoveredQueues::default();
    if cli.celery_discover_queues {
        slots.push(runner::start(
            "celery_queue_discovery",
            QueueDiscoverySource::new(
                queues.clone(),
                connection.clone(),
                discovered.clone(),
                cli.celery_discovery_max_keys,
            ),
            Schedule {
                interval: cli.celery_discovery_interval,
                // A scan of millions of keys takes seconds, not the
                // milliseconds of a queue collection.
                timeout: cli.celery_discovery_interval.min(Duration::from_secs(120)),
            },
        ));
    }
    slots.push(runner::start(
        "celery_queues",
        CeleryQueueSource::new(
            queues,
            connection,
            hub.map(|h| h as Arc<dyn SentAt>),
            discovered,
        ),
        Schedule {
            interval: cli.celery_interval,
            timeout: cli.celery_timeout,
        },
    ));
    info!(server = %target.description, events = cli.celery_events_enabled, "Celery collectors enabled");
    Ok(())
}
