//! The deeper PostgreSQL collectors against real servers: query performance
//! from pg_stat_statements (on a throwaway cluster that preloads it), table
//! health, replication slots and standbys, checkpoints and settings, each
//! compared with what PostgreSQL itself reports.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::ThrowawayCluster;
use common::watch::DecreaseWatch;
use common::*;
use sqlx::{PgPool, Row};

const WAIT: Duration = Duration::from_secs(30);
const PGSS: &str = "shared_preload_libraries=pg_stat_statements";

/// Exporter flags for quick collections, business queries off.
fn fast(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "--business.enabled=false",
        "--postgres.interval",
        "1s",
        "--postgres.statements.interval",
        "1s",
        "--postgres.tables.interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    args
}

/// The last success time of a collector, as served.
fn last_success(m: &Metrics, collector: &str) -> f64 {
    m.get(
        "bookedbarber_exporter_collector_last_success_timestamp_seconds",
        &[("collector", collector)],
    )
    .unwrap_or(0.0)
}

/// Waits until `collector` has finished `n` collections that started after
/// this call, and returns the scrape that shows the last of them.
async fn collections(exporter: &Exporter, collector: &str, n: usize) -> Metrics {
    let start = runner_now();
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen: Vec<f64> = Vec::new();
    loop {
        let m = exporter.metrics().await;
        let t = last_success(&m, collector);
        // Collections take milliseconds: one that ended 0.5 s after we
        // started also started after we started.
        if t > start + 0.5 && !seen.contains(&t) {
            seen.push(t);
            if seen.len() >= n {
                return m;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{collector} did not collect {n} times in {WAIT:?}\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runner_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn labels_of(labels: &[(String, String)], key: &str) -> String {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Per queryid of one database: the exporter's value of a family.
fn by_queryid(m: &Metrics, family: &str, datname: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, v) in m.family(family) {
        if labels_of(&labels, "datname") == datname {
            *out.entry(labels_of(&labels, "queryid")).or_default() += v;
        }
    }
    out
}

/// pg_stat_statements' own numbers for one database, by queryid, most
/// execution time first: (queryid, calls, seconds, rows, hit, read).
async fn truth(pool: &PgPool, datname: &str) -> Vec<(String, f64, f64, f64, f64, f64)> {
    sqlx::query(
        "SELECT queryid::text, sum(calls)::float8, (sum(total_exec_time) / 1000)::float8,
                sum(rows)::float8, sum(shared_blks_hit)::float8, sum(shared_blks_read)::float8
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = $1
         GROUP BY queryid, userid ORDER BY 3 DESC",
    )
    .bind(datname)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

async fn queryid_of(pool: &PgPool, text: &str) -> String {
    sqlx::query_scalar("SELECT queryid::text FROM pg_stat_statements WHERE query = $1 LIMIT 1")
        .bind(text)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{text:?} is not in pg_stat_statements: {e}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_statements_match_pg_stat_statements_and_survive_a_reset() {
    let cluster = ThrowawayCluster::create_with(&[PGSS]);
    cluster
        .exec("postgres", "CREATE EXTENSION pg_stat_statements")
        .await;
    let role = cluster.monitoring_role().await;
    cluster.exec("postgres", "CREATE DATABASE work").await;
    let admin = cluster.pool("postgres").await;
    let work = cluster.pool("work").await;

    // The known workload: one slow statement, one statement many times,
    // and 60 more distinct statements (more than the 20 of the top N).
    for _ in 0..3 {
        sqlx::query("SELECT pg_sleep(0.3)")
            .execute(&work)
            .await
            .unwrap();
    }
    for _ in 0..1000 {
        sqlx::query("SELECT count(*) FROM generate_series(1, 2000)")
            .execute(&work)
            .await
            .unwrap();
    }
    let mut many = String::new();
    for i in 0..30 {
        many.push_str(&format!(
            "CREATE TABLE t{i} (id int); INSERT INTO t{i} SELECT generate_series(1, {n}); SELECT count(*) FROM t{i};",
            n = 10 + i
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(many))
        .execute(&work)
        .await
        .unwrap();
    let slow = queryid_of(&admin, "SELECT pg_sleep($1)").await;
    let repeated = queryid_of(&admin, "SELECT count(*) FROM generate_series($1, $2)").await;
    let before_exporter = truth(&admin, "work").await;
    assert!(
        before_exporter.len() > 60,
        "only {} statements",
        before_exporter.len()
    );

    // The exporter starts after the workload: its first collection ranks
    // every statement by its whole execution time, as pg_stat_statements
    // does. (Later collections rank what runs meanwhile: the exporter's own
    // dozen statements and this test's; with the default top 20, the 2 x 20
    // series kept leave room for all of them without dropping the first
    // collection's series, which the sums below need.)
    let exporter = Exporter::start(
        &fast(&[]),
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &cluster.url_as(&role, "postgres"),
        )],
    );
    let m = exporter
        .wait_for("the statement series", WAIT, |m| {
            m.get("pg_stat_statements_available", &[]) == Some(1.0)
                && !by_queryid(m, "pg_stat_statements_calls_total", "work").is_empty()
        })
        .await;
    drop(m);
    let m = collections(&exporter, "postgres_statements", 2).await;
    let t = truth(&admin, "work").await;
    assert_eq!(t, before_exporter, "the work database stayed quiet");

    let calls = by_queryid(&m, "pg_stat_statements_calls_total", "work");
    let seconds = by_queryid(&m, "pg_stat_statements_seconds_total", "work");
    let rows = by_queryid(&m, "pg_stat_statements_rows_total", "work");
    let hit = by_queryid(&m, "pg_stat_statements_shared_blks_hit_total", "work");
    let read = by_queryid(&m, "pg_stat_statements_shared_blks_read_total", "work");
    let own: Vec<&String> = calls.keys().filter(|q| *q != "__other__").collect();
    // The statements with series of their own are pg_stat_statements' top
    // ones of the database, in its order.
    assert!(own.len() >= 2, "{calls:?}");
    let mut ranked: Vec<&String> = own.clone();
    ranked.sort_by(|a, b| seconds[*b].partial_cmp(&seconds[*a]).unwrap());
    let top: Vec<&String> = t.iter().take(own.len()).map(|r| &r.0).collect();
    assert_eq!(ranked, top, "exporter's ranking vs pg_stat_statements'");
    assert_eq!(ranked[0], &slow, "the slow statement ranks first");
    assert!(own.contains(&&repeated), "{own:?} lacks {repeated}");
    for (q, c, s, r, h, rd) in t.iter().filter(|r| own.contains(&&r.0)) {
        assert_eq!(calls[q], *c, "calls of {q}");
        assert!(
            close(seconds[q], *s),
            "seconds of {q}: {} vs {s}",
            seconds[q]
        );
        assert_eq!(
            (rows[q], hit[q], read[q]),
            (*r, *h, *rd),
            "rows/blocks of {q}"
        );
    }
    assert_eq!(calls[&repeated], 1000.0);
    assert_eq!(calls[&slow], 3.0);
    let mean = m
        .family("pg_stat_statements_mean_seconds")
        .into_iter()
        .find(|(l, _)| labels_of(l, "queryid") == slow)
        .unwrap()
        .1;
    assert!((mean - 0.3).abs() < 0.05, "mean of pg_sleep(0.3): {mean}");
    assert_eq!(
        m.get(
            "pg_stat_statements_query_id",
            &[("queryid", &slow), ("query", "SELECT pg_sleep($1)")]
        ),
        Some(1.0)
    );
    // More statements than N: the top N plus __other__ are the totals.
    let sum = |f: &BTreeMap<String, f64>| f.values().sum::<f64>();
    let truth_sum = |i: usize| t.iter().map(|r| [r.1, r.2, r.3, r.4, r.5][i]).sum::<f64>();
    assert!(calls.contains_key("__other__"));
    assert_eq!(sum(&calls), truth_sum(0));
    assert!(
        close(sum(&seconds), truth_sum(1)),
        "{} vs {}",
        sum(&seconds),
        truth_sum(1)
    );
    assert_eq!(sum(&rows), truth_sum(2));
    assert_eq!(sum(&hit), truth_sum(3));
    assert_eq!(sum(&read), truth_sum(4));

    // pg_stat_statements_reset(): every entry starts again from 0; no
    // counter may go down, and what comes after still counts in full.
    let watch = DecreaseWatch::start(format!("{}/metrics", exporter.base_url), |name| {
        name.starts_with("pg_stat_statements_")
    });
    let before = collections(&exporter, "postgres_statements", 1).await;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&admin)
        .await
        .unwrap();
    for _ in 0..300 {
        sqlx::query("SELECT count(*) FROM generate_series(1, 2000)")
            .execute(&work)
            .await
            .unwrap();
    }
    let after = collections(&exporter, "postgres_statements", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (decreases, scrapes) = watch.stop();
    assert!(scrapes >= 10, "too few scrapes");
    assert!(
        decreases.is_empty(),
        "counters went down:\n{}",
        decreases.join("\n")
    );
    let calls_before = by_queryid(&before, "pg_stat_statements_calls_total", "work");
    let calls_after = by_queryid(&after, "pg_stat_statements_calls_total", "work");
    assert_eq!(calls_after[&repeated], calls_before[&repeated] + 300.0);
    assert_eq!(sum(&calls_after), sum(&calls_before) + 300.0);
    // Nothing was mistaken for a drop of the source: the exporter handled
    // the reset itself.
    assert_eq!(
        after.get(
            "bookedbarber_exporter_source_decreases_total",
            &[
                ("collector", "postgres_statements"),
                ("metric", "pg_stat_statements_calls_total")
            ]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pg_stat_statements_it_says_so_once_and_the_rest_serves() {
    let mut db = TestDb::create("nopgss").await;
    let role = db.monitoring_role().await;
    let exporter = Exporter::start(
        &fast(&[]),
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("postgres://{role}@127.0.0.1:5432/{}", db.name),
        )],
    );
    let logged = |what: &str| exporter.logs().lines().filter(|l| l.contains(what)).count();
    let m = collections(&exporter, "postgres_statements", 3).await;
    assert_eq!(m.get("pg_stat_statements_available", &[]), Some(0.0));
    assert_eq!(
        logged("pg_stat_statements is not installed"),
        1,
        "{}",
        exporter.logs()
    );
    for collector in [
        "postgres",
        "postgres_statements",
        "postgres_tables",
        "postgres_checkpoints",
        "postgres_wal",
        "postgres_settings",
    ] {
        assert_eq!(m.collector_up(collector), Some(1.0), "{collector}");
        assert_eq!(m.collector_errors(collector), Some(0.0), "{collector}");
    }
    assert!(m.family("pg_stat_statements_calls_total").is_empty());
    assert!(!m.family("pg_stat_user_tables_n_live_tup").is_empty());
    assert!(m
        .get("pg_stat_bgwriter_checkpoints_req_total", &[])
        .is_some());
    assert!(m.get("pg_wal_bytes_total", &[]).is_some());
    assert!(m
        .get("pg_settings_autovacuum_freeze_max_age", &[])
        .is_some());

    // Installed but not loaded (this server does not preload it): a
    // different reason, said once too.
    db.exec("CREATE EXTENSION pg_stat_statements").await;
    let m = collections(&exporter, "postgres_statements", 3).await;
    assert_eq!(m.get("pg_stat_statements_available", &[]), Some(0.0));
    assert_eq!(m.collector_up("postgres_statements"), Some(1.0));
    assert_eq!(m.collector_errors("postgres_statements"), Some(0.0));
    assert_eq!(logged("installed but not loaded"), 1, "{}", exporter.logs());
    assert_eq!(logged("pg_stat_statements is not installed"), 1);
}

/// Table statistics as the exporter serves them, for one table.
fn table(m: &Metrics, family: &str, db: &str, relname: &str) -> Option<f64> {
    m.get(
        family,
        &[
            ("datname", db),
            ("schemaname", "public"),
            ("relname", relname),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_tuples_and_vacuum_follow_pg_stat_user_tables() {
    let mut db = TestDb::create("dead").await;
    let role = db.monitoring_role().await;
    db.exec(
        "CREATE TABLE bbx_dead (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
         GRANT SELECT ON bbx_dead TO PUBLIC;",
    )
    .await;
    let exporter = Exporter::start(
        &fast(&["--postgres.tables", "bbx_dead,appointments"]),
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("postgres://{role}@127.0.0.1:5432/{}", db.name),
        )],
    );
    // Statistics reach pg_stat_user_tables when the session flushes them.
    let flush = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
            sqlx::query("SELECT pg_stat_force_next_flush()")
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
        }
    };
    flush("INSERT INTO bbx_dead SELECT g, repeat('x', 50) FROM generate_series(1, 1000) g").await;
    flush("DELETE FROM bbx_dead WHERE id <= 400").await;
    let stats = |pool: PgPool| async move {
        let r = sqlx::query(
            "SELECT n_live_tup::float8, n_dead_tup::float8,
                    COALESCE(EXTRACT(EPOCH FROM last_vacuum), 0)::float8, vacuum_count::float8
             FROM pg_stat_user_tables WHERE relname = 'bbx_dead'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (
            r.get::<f64, _>(0),
            r.get::<f64, _>(1),
            r.get::<f64, _>(2),
            r.get::<f64, _>(3),
        )
    };
    let deadline = std::time::Instant::now() + WAIT;
    while stats(db.pool.clone()).await.0 != 600.0 || stats(db.pool.clone()).await.1 != 400.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deletes never reached pg_stat_user_tables"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (live, dead, last_vacuum, vacuums) = stats(db.pool.clone()).await;
    assert_eq!((live, dead, last_vacuum, vacuums), (600.0, 400.0, 0.0, 0.0));
    let m = collections(&exporter, "postgres_tables", 1).await;
    let name = db.name.clone();
    let get = |m: &Metrics, family: &str| table(m, family, &name, "bbx_dead");
    assert_eq!(get(&m, "pg_stat_user_tables_n_dead_tup"), Some(dead));
    assert_eq!(get(&m, "pg_stat_user_tables_n_live_tup"), Some(live));
    assert_eq!(get(&m, "pg_stat_user_tables_last_vacuum"), Some(0.0));
    assert_eq!(get(&m, "pg_stat_user_tables_vacuum_count_total"), Some(0.0));
    assert_eq!(get(&m, "pg_stat_user_tables_n_tup_del_total"), Some(400.0));
    assert!(get(&m, "pg_stat_user_tables_table_size_bytes").unwrap() > 50_000.0);
    // The business table named on the command line is there too.
    assert!(table(&m, "pg_stat_user_tables_n_live_tup", &name, "appointments").is_some());

    // A manual VACUUM: last-vacuum time moves, dead rows go.
    flush("VACUUM bbx_dead").await;
    while stats(db.pool.clone()).await.3 != 1.0 {
        assert!(
            std::time::Instant::now() < deadline + WAIT,
            "VACUUM never showed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, dead, last_vacuum, _) = stats(db.pool.clone()).await;
    assert!(last_vacuum > 0.0);
    let m = collections(&exporter, "postgres_tables", 1).await;
    assert_eq!(
        get(&m, "pg_stat_user_tables_last_vacuum"),
        Some(last_vacuum)
    );
    assert_eq!(get(&m, "pg_stat_user_tables_vacuum_count_total"), Some(1.0));
    assert_eq!(get(&m, "pg_stat_user_tables_n_dead_tup"), Some(dead));
    let age = runner_now() - get(&m, "pg_stat_user_tables_last_vacuum").unwrap();
    assert!((0.0..60.0).contains(&age), "last-vacuum age {age} s");

    // A migration's exclusive lock: the table's sizes are skipped, nothing
    // waits on the lock, every collector stays up.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE bbx_dead IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let m = collections(&exporter, "postgres_tables", 2).await;
    assert_eq!(get(&m, "pg_stat_user_tables_table_size_bytes"), None);
    assert_eq!(get(&m, "pg_stat_user_tables_n_live_tup"), Some(600.0));
    for collector in ["postgres_tables", "postgres_wal", "postgres_settings"] {
        assert_eq!(m.collector_up(collector), Some(1.0), "{collector}");
    }
    locker.rollback().await.unwrap();
    let m = collections(&exporter, "postgres_tables", 1).await;
    assert!(get(&m, "pg_stat_user_tables_table_size_bytes").is_some());
    assert_eq!(m.collector_errors("postgres_tables"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_slot_shows_growing_retained_wal_and_checkpoints_count() {
    let cluster = ThrowawayCluster::create();
    let role = cluster.monitoring_role().await;
    let admin = cluster.pool("postgres").await;
    sqlx::query("SELECT pg_create_physical_replication_slot('bbx_lagging', true)")
        .execute(&admin)
        .await
        .unwrap();
    let exporter = Exporter::start(
        &fast(&[]),
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &cluster.url_as(&role, "postgres"),
        )],
    );
    let slot = [("slot_name", "bbx_lagging"), ("slot_type", "physical")];
    let retained = |m: &Metrics| m.get("pg_replication_slot_retained_wal_bytes", &slot);
    let retained_truth = |pool: PgPool| async move {
        sqlx::query_scalar::<_, f64>(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::float8 FROM pg_replication_slots
             WHERE slot_name = 'bbx_lagging'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let m = exporter
        .wait_for("the slot", WAIT, |m| retained(m).is_some())
        .await;
    let first = retained(&m).unwrap();
    let wal_first = m.get("pg_wal_bytes_total", &[]).unwrap();
    assert_eq!(
        m.get("pg_replication_slot_slot_is_active", &slot),
        Some(0.0)
    );

    // About 20 MB of WAL while nobody consumes the slot.
    let mut growth = Vec::new();
    for i in 0..3 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE w{i} AS SELECT g, repeat('x', 200) AS v FROM generate_series(1, 25000) g"
        )))
        .execute(&admin)
        .await
        .unwrap();
        let low = retained_truth(admin.clone()).await;
        let m = collections(&exporter, "postgres_wal", 1).await;
        let high = retained_truth(admin.clone()).await;
        let served = retained(&m).unwrap();
        assert!(
            low <= served && served <= high,
            "retained {served} not within PostgreSQL's {low}..{high}"
        );
        growth.push(served);
    }
    assert!(
        growth.windows(2).all(|w| w[1] > w[0]) && growth[0] > first,
        "retained WAL did not grow: {first} then {growth:?}"
    );
    assert!(growth[2] - first > 10e6, "{first} -> {growth:?}");
    let m = exporter.metrics().await;
    assert!(m.get("pg_wal_bytes_total", &[]).unwrap() - wal_first >= growth[2] - first);
    assert!(m.get("pg_wal_size_bytes", &[]).unwrap() >= growth[2] - first);
    assert_eq!(
        m.get(
            "pg_replication_slot_wal_status",
            &[
                ("slot_name", "bbx_lagging"),
                ("slot_type", "physical"),
                ("wal_status", "reserved")
            ]
        ),
        Some(1.0)
    );

    // A CHECKPOINT is a requested one, as pg_stat_bgwriter counts it.
    let requested = |pool: PgPool| async move {
        sqlx::query_scalar::<_, f64>("SELECT checkpoints_req::float8 FROM pg_stat_bgwriter")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = requested(admin.clone()).await;
    sqlx::query("CHECKPOINT").execute(&admin).await.unwrap();
    // The checkpointer publishes its statistics just after it reports the
    // checkpoint done.
    let deadline = std::time::Instant::now() + WAIT;
    let truth = loop {
        let now = requested(admin.clone()).await;
        if now > before {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CHECKPOINT never counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = exporter
        .wait_for("the checkpoint", WAIT, |m| {
            m.get("pg_stat_bgwriter_checkpoints_req_total", &[]) == Some(truth)
        })
        .await;
    assert!(
        m.get("pg_stat_bgwriter_buffers_checkpoint_total", &[])
            .unwrap()
            > 0.0
    );

    // Settings the alerts compare against, in base units.
    assert_eq!(
        m.get("pg_settings_max_wal_size_bytes", &[]),
        Some(1024.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        m.get("pg_settings_checkpoint_timeout_seconds", &[]),
        Some(300.0)
    );
    assert_eq!(
        m.get("pg_settings_max_slot_wal_keep_size_bytes", &[]),
        Some(-1.0)
    );
    let age_truth: f64 = sqlx::query_scalar(
        "SELECT age(datfrozenxid)::float8 FROM pg_database WHERE datname = 'template0'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let m = collections(&exporter, "postgres_settings", 1).await;
    let age = m
        .get(
            "pg_database_wraparound_age_datfrozenxid",
            &[("datname", "template0")],
        )
        .unwrap();
    assert!(
        age >= age_truth && age < age_truth + 100.0,
        "{age} vs {age_truth}"
    );
    assert_eq!(
        m.get("pg_settings_autovacuum_freeze_max_age", &[]),
        Some(200_000_000.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_shows_its_lag_on_the_primary_and_serves_as_a_replica() {
    let primary = ThrowawayCluster::create();
    let role = primary.monitoring_role().await;
    let standby = primary.standby();
    let admin = primary.pool("postgres").await;
    let on_primary = Exporter::start(
        &fast(&[]),
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &primary.url_as(&role, "postgres"),
        )],
    );
    let on_standby = Exporter::start(
        &fast(&[]),
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &standby.url_as(&role, "postgres"),
        )],
    );
    let m = on_primary
        .wait_for("the standby on the primary", WAIT, |m| {
            !m.family("pg_stat_replication_pg_wal_lsn_diff").is_empty()
        })
        .await;
    let lag = m.family("pg_stat_replication_pg_wal_lsn_diff");
    assert_eq!(lag.len(), 1, "{lag:?}");
    let (labels, _) = lag.iter().next().unwrap();
    let name: String = sqlx::query_scalar("SELECT application_name FROM pg_stat_replication")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(labels_of(labels, "application_name"), name);
    assert_eq!(labels_of(labels, "client_addr"), "127.0.0.1");

    // WAL written on the primary is replayed: the lag comes back to 0.
    primary
        .exec(
            "postgres",
            "CREATE TABLE r AS SELECT g FROM generate_series(1, 100000) g",
        )
        .await;
    let m = on_primary
        .wait_for("the standby to catch up", WAIT, |m| {
            m.family("pg_stat_replication_pg_wal_lsn_diff")
                .values()
                .all(|v| *v == 0.0)
                && last_success(m, "postgres_wal") > 0.0
        })
        .await;
    assert!(m
        .family("pg_stat_replication_replay_lag_seconds")
        .values()
        .all(|v| (0.0..30.0).contains(v)));

    // On the standby every collector works (no pg_current_wal_lsn() there).
    let m = collections(&on_standby, "postgres_wal", 1).await;
    assert_eq!(m.get("pg_in_recovery", &[]), Some(1.0));
    for collector in [
        "postgres",
        "postgres_tables",
        "postgres_checkpoints",
        "postgres_wal",
        "postgres_settings",
        "postgres_statements",
    ] {
        assert_eq!(
            m.collector_up(collector),
            Some(1.0),
            "{collector}:\n{}",
            on_standby.logs()
        );
    }
    let replayed = m.get("pg_wal_bytes_total", &[]).unwrap();
    let primary_position: f64 =
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(replayed > 0.0 && replayed <= primary_position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_bounded_with_1000_tables_and_5000_statements() {
    let cluster = ThrowawayCluster::create_with(&[
        PGSS,
        "pg_stat_statements.max=10000",
        "max_locks_per_transaction=256",
    ]);
    cluster.exec("postgres", "CREATE DATABASE work").await;
    cluster
        .exec("work", "CREATE EXTENSION pg_stat_statements")
        .await;
    let role = cluster.monitoring_role().await;
    cluster
        .exec("work", &format!("GRANT CONNECT ON DATABASE work TO {role}"))
        .await;
    let mut ddl = String::new();
    for i in 0..1000 {
        ddl.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY); INSERT INTO t{i} SELECT generate_series(1, {n});",
            n = 1 + i % 50
        ));
    }
    cluster.exec("work", &ddl).await;
    // Five shapes per table: 5,000 distinct statements.
    let mut statements = String::new();
    for i in 0..1000 {
        statements.push_str(&format!(
            "SELECT count(*) FROM t{i}; SELECT max(id) FROM t{i}; SELECT min(id) FROM t{i};
             SELECT id FROM t{i} WHERE id = 1; SELECT sum(id) FROM t{i};"
        ));
    }
    cluster.exec("work", &statements).await;
    let admin = cluster.pool("work").await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_statements")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(distinct >= 5000, "only {distinct} statements");

    let exporter = Exporter::start(
        &fast(&["--postgres.tables", "t1,t2"]),
        &[("BOOKEDBARBER_POSTGRES_DSN", &cluster.url_as(&role, "work"))],
    );
    collections(&exporter, "postgres_statements", 1).await;
    // Churn: the same statements again, in two halves, while it collects.
    for _ in 0..2 {
        cluster.exec("work", &statements).await;
    }
    let m = collections(&exporter, "postgres_statements", 2).await;
    let databases: i64 = sqlx::query_scalar("SELECT count(DISTINCT dbid) FROM pg_stat_statements")
        .fetch_one(&admin)
        .await
        .unwrap();
    let limit = 20;
    for family in [
        "pg_stat_statements_calls_total",
        "pg_stat_statements_seconds_total",
        "pg_stat_statements_rows_total",
        "pg_stat_statements_shared_blks_hit_total",
        "pg_stat_statements_shared_blks_read_total",
    ] {
        let n = m.family(family).len();
        assert!(
            n > limit && n <= 2 * limit + databases as usize,
            "{family}: {n} series"
        );
    }
    assert!(m.family("pg_stat_statements_query_id").len() <= 2 * limit);
    // Two named tables and the ten largest others.
    for family in [
        "pg_stat_user_tables_n_live_tup",
        "pg_stat_user_tables_seq_scan_total",
    ] {
        assert_eq!(m.family(family).len(), 12, "{family}");
    }
    for t in ["t1", "t2"] {
        assert!(table(&m, "pg_stat_user_tables_n_live_tup", "work", t).is_some());
    }
    let series = m.series.len();
    assert!(series < 1000, "{series} series in one scrape");
    assert_eq!(m.collector_up("postgres_tables"), Some(1.0));
    assert_eq!(m.collector_up("postgres_statements"), Some(1.0));
}

/// Every family the deeper collectors can serve, conditional ones included
/// (slots, standbys, pg_stat_statements), is in docs/metrics.md with its
/// type: the bundle tests only see what the demo serves.
#[test]
fn every_depth_family_is_in_the_catalogue() {
    use bookedbarber_exporter::postgres::{checkpoints, settings, statements, tables, wal};
    use bookedbarber_exporter::snapshot::{Family, Kind};

    let catalogue = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let documented = |f: &Family| {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        catalogue.lines().any(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.len() > 3 && cells[1].contains(&format!("`{}`", f.name)) && cells[2] == kind
        })
    };
    let mut tracker = statements::StatementTracker::new(Default::default());
    tracker.update(&statements::StatementsReading {
        stats_reset: None,
        rows: vec![statements::StatementRow {
            queryid: Some(1),
            counts: statements::Counts {
                calls: 1.0,
                ..Default::default()
            },
            ..Default::default()
        }],
    });
    tracker.add_texts(&[1], [(1, "SELECT 1".to_owned())]);
    let all: Vec<Family> = [
        tracker.families(),
        tables::families(&[tables::TableStats {
            table_size_bytes: Some(1.0),
            index_size_bytes: Some(1.0),
            ..Default::default()
        }]),
        checkpoints::families(&Default::default()),
        wal::families(&wal::WalReading {
            position_bytes: Some(1.0),
            slots: vec![wal::Slot {
                retained_bytes: Some(1.0),
                safe_wal_size_bytes: Some(1.0),
                wal_status: Some("reserved".into()),
                ..Default::default()
            }],
            standbys: vec![wal::Standby {
                replay_lag_bytes: Some(1.0),
                ..Default::default()
            }],
            ..Default::default()
        }),
        settings::families(&settings::SettingsReading {
            settings: [
                "autovacuum",
                "autovacuum_freeze_max_age",
                "autovacuum_multixact_freeze_max_age",
                "autovacuum_vacuum_scale_factor",
                "autovacuum_vacuum_threshold",
                "checkpoint_timeout",
                "max_wal_size",
                "max_slot_wal_keep_size",
            ]
            .iter()
            .map(|n| settings::SettingRow {
                name: n.to_string(),
                setting: "1".into(),
                unit: if n.starts_with("max_") {
                    "MB"
                } else if *n == "checkpoint_timeout" {
                    "s"
                } else {
                    ""
                }
                .into(),
                vartype: "integer".into(),
            })
            .collect(),
            databases: vec![("db".into(), 1.0, 1.0)],
        }),
    ]
    .concat();
    let empty: Vec<&str> = all
        .iter()
        .filter(|f| f.samples.is_empty())
        .map(|f| f.name.as_ref())
        .collect();
    assert!(empty.is_empty(), "the synthetic readings miss {empty:?}");
    assert!(all.len() >= 60, "{} families", all.len());
    let missing: Vec<String> = all
        .iter()
        .filter(|f| !documented(f))
        .map(|f| format!("{} ({:?})", f.name, f.kind))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/metrics.md with this type: {missing:?}"
    );
    for f in &all {
        assert!(
            f.help.len() > 20,
            "{}: help too short for a stranger",
            f.name
        );
    }
}
