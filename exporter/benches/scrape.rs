//! Scrape benchmark: seeds a large BookedBarber database, runs the release
//! exporter against it and prints scrape latency, series count, memory, CPU
//! per scrape and SQL statements per minute. Prints figures; asserts nothing
//! about speed.
//!
//!   cargo bench --bench scrape
//!   BENCH_APPOINTMENTS=20000 BENCH_PAYMENTS=16000 cargo bench --bench scrape
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (BBX_TEST_POSTGRES_URL to change it).
//! The database `bbx_bench_<appointments>` is kept between runs so that
//! re-running skips the seeding; drop it when done.

mod common;

use std::process::{Command, Stdio};

use common::{cpu_seconds, free_port, get_text, rss_mib, KillOnDrop};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::Row;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let appointments = env_number("BENCH_APPOINTMENTS", 1_000_000);
    let payments = env_number("BENCH_PAYMENTS", 800_000);
    let users = env_number("BENCH_USERS", 20_000);
    let scrapes = env_number("BENCH_SCRAPES", 200) as usize;
    let sql_warmup = env_number("BENCH_SQL_WARMUP_SECONDS", 60);
    let sql_window = env_number("BENCH_SQL_WINDOW_SECONDS", 120);
    let admin_url = std::env::var("BBX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("bbx_bench_{appointments}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();

    let admin = PgPoolOptions::new()
        .connect(&format!("{admin_url}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (or BBX_TEST_POSTGRES_URL) is needed");
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&db)
        .fetch_optional(&admin)
        .await
        .unwrap()
        .is_some();
    let pool = if exists {
        PgPoolOptions::new()
            .connect(&format!("{admin_url}/{db}"))
            .await
            .unwrap()
    } else {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
            .execute(&admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .connect(&format!("{admin_url}/{db}"))
            .await
            .unwrap();
        for file in ["schema.sql", "demo.sql"] {
            let sql = std::fs::read_to_string(root.join("scripts").join(file)).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        let started = Instant::now();
        eprintln!(
            "seeding {db}: {users} users, {appointments} appointments, {payments} payments ..."
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT demo_seed({users}, {appointments}, {payments}); ANALYZE"
        )))
        .execute(&pool)
        .await
        .unwrap();
        eprintln!("seeded in {:.0}s", started.elapsed().as_secs_f64());
        pool
    };
    let rows: i64 =
        sqlx::query("SELECT (SELECT count(*) FROM appointments) + (SELECT count(*) FROM payments)")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_bookedbarber-exporter"))
        .args([
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--log.level",
            "warn",
        ])
        .env("BOOKEDBARBER_POSTGRES_DSN", format!("{admin_url}/{db}"))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let child = KillOnDrop(child);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready_started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            ready_started.elapsed() < Duration::from_secs(120),
            "exporter not ready after 120s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_collection = ready_started.elapsed().as_secs_f64();

    // Warm-up, then the measured scrapes.
    for _ in 0..10 {
        get_text(&client, &format!("{base}/metrics")).await;
    }
    let cpu_before = cpu_seconds(pid);
    let mut latencies = Vec::with_capacity(scrapes);
    let mut body = String::new();
    for _ in 0..scrapes {
        let t = Instant::now();
        body = get_text(&client, &format!("{base}/metrics")).await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu_per_scrape_ms = (cpu_seconds(pid) - cpu_before) / scrapes as f64 * 1000.0;
    latencies.sort_by(f64::total_cmp);
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let rss_after_scrapes = rss_mib(pid);

    // SQL load: transactions in the bench database over a window; only the
    // exporter uses it, and each of its statements is its own transaction.
    let commits = |pool: sqlx::PgPool| async move {
        sqlx::query("SELECT pg_stat_force_next_flush(); ")
            .execute(&pool)
            .await
            .ok();
        let v: i64 = sqlx::query(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
        v
    };
    // Each statement is prepared once per pooled connection, and a prepare
    // counts as a transaction too: let those happen before measuring.
    tokio::time::sleep(Duration::from_secs(sql_warmup)).await;
    let before = commits(pool.clone()).await;
    tokio::time::sleep(Duration::from_secs(sql_window)).await;
    let after = commits(pool.clone()).await;
    // Our own two measurement transactions (flush + read) are subtracted.
    let statements = (after - before - 2).max(0) as f64 * 60.0 / sql_window as f64;
    // What the default intervals should give: every 15 s 4 statements of
    // the PostgreSQL collector, 1 checkpoint, 3 WAL and 2 settings
    // statements; every 30 s 1 table statement and 1 statement statement
    // (pg_stat_statements is not installed in the bench database: only the
    // check that it is); one per business query at its interval.
    let queries = bookedbarber_exporter::business::QueryFile::builtin();
    let expected: f64 = (4.0 + 1.0 + 3.0 + 2.0) * 60.0 / 15.0
        + (1.0 + 1.0) * 60.0 / 30.0
        + queries
            .queries
            .iter()
            .map(|q| 60.0 / q.schedule.interval.as_secs_f64())
            .sum::<f64>();
    let rss_steady = rss_mib(pid);

    drop(child);

    println!(
        "scrape benchmark: {appointments} appointments, {payments} payments ({rows} rows) in {db}"
    );
    println!("  first collection done (ready) after  {first_collection:.2} s");
    println!("  scrapes                              {scrapes}");
    println!(
        "  scrape latency p50                   {:.3} ms",
        percentile(&latencies, 0.50)
    );
    println!(
        "  scrape latency p99                   {:.3} ms",
        percentile(&latencies, 0.99)
    );
    println!(
        "  scrape latency max                   {:.3} ms",
        latencies[latencies.len() - 1]
    );
    println!("  series per scrape                    {series}");
    println!(
        "  response size                        {} bytes",
        body.len()
    );
    println!("  CPU per scrape                       {cpu_per_scrape_ms:.3} ms");
    println!("  resident memory after scrapes        {rss_after_scrapes:.1} MiB");
    println!(
        "  resident memory {:>4} s later           {rss_steady:.1} MiB",
        sql_warmup + sql_window
    );
    println!("  SQL transactions per minute          {statements:.0} measured (server side), {expected:.0} statements expected from the default intervals");
    println!(
        "  SQL statements per collection        4 (postgres), 1 (checkpoints), 3 (WAL), 2 (settings), 1 (tables), 1 (statements, extension absent), 1 per business query ({} queries)",
        queries.queries.len()
    );
}
