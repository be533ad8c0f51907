//! SQL cost of the PostgreSQL collectors, measured by PostgreSQL itself:
//! a throwaway cluster with pg_stat_statements holds a BookedBarber database
//! plus 1,000 extra tables and 5,000 distinct statements (pg_stat_statements'
//! default capacity), the release exporter collects every second for a
//! while, and pg_stat_statements then tells what each of the exporter's
//! statements cost per call. Prints figures; asserts nothing about speed.
//!
//!   cargo bench --bench sql_cost
//!   SQL_COST_SECONDS=60 SQL_COST_TABLES=1000 cargo bench --bench sql_cost
//!
//! Needs the Debian package postgresql (initdb, pg_ctl).

#[path = "../tests/common/cluster.rs"]
#[allow(dead_code)]
mod cluster;
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cluster::ThrowawayCluster;
use common::{free_port, KillOnDrop};
use sqlx::Row;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which collector runs a statement, from its text.
fn collector_of(query: &str) -> &'static str {
    let q = query.to_lowercase();
    if q.contains("pg_stat_statements") || q.contains("pg_extension") {
        "postgres_statements"
    } else if q.contains("pg_stat_user_tables") {
        "postgres_tables"
    } else if q.contains("pg_stat_bgwriter") || q.contains("pg_stat_checkpointer") {
        "postgres_checkpoints"
    } else if q.contains("pg_ls_waldir")
        || q.contains("pg_replication_slots")
        || q.contains("pg_stat_replication")
    {
        "postgres_wal"
    } else if q.contains("pg_settings") || q.contains("datfrozenxid") {
        "postgres_settings"
    } else {
        "postgres"
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds = env_number("SQL_COST_SECONDS", 60);
    let tables = env_number("SQL_COST_TABLES", 1000);
    let cluster = ThrowawayCluster::create_with(&[
        "shared_preload_libraries=pg_stat_statements",
        "pg_stat_statements.max=10000",
        "max_locks_per_transaction=256",
    ]);
    cluster
        .exec("postgres", "CREATE DATABASE bookedbarber")
        .await;
    cluster
        .exec("bookedbarber", "CREATE EXTENSION pg_stat_statements")
        .await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    for file in ["schema.sql", "demo.sql"] {
        let sql = std::fs::read_to_string(root.join("scripts").join(file)).unwrap();
        cluster.exec("bookedbarber", &sql).await;
    }
    eprintln!("seeding: demo data, {tables} extra tables, 5 statements per table ...");
    cluster
        .exec(
            "bookedbarber",
            "SELECT demo_seed(2000, 20000, 16000); ANALYZE",
        )
        .await;
    let mut ddl = String::new();
    let mut statements = String::new();
    for i in 0..tables {
        ddl.push_str(&format!(
            "CREATE TABLE extra{i} (id int PRIMARY KEY); INSERT INTO extra{i} SELECT generate_series(1, {n});",
            n = 1 + i % 100
        ));
        statements.push_str(&format!(
            "SELECT count(*) FROM extra{i}; SELECT max(id) FROM extra{i}; SELECT min(id) FROM extra{i};
             SELECT id FROM extra{i} WHERE id = 1; SELECT sum(id) FROM extra{i};"
        ));
    }
    cluster.exec("bookedbarber", &ddl).await;
    cluster.exec("bookedbarber", &statements).await;
    cluster
        .exec(
            "bookedbarber",
            "CREATE ROLE bbx_cost LOGIN; GRANT pg_monitor TO bbx_cost;",
        )
        .await;
    let pool = cluster.pool("bookedbarber").await;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_statements")
        .fetch_one(&pool)
        .await
        .unwrap();

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_bookedbarber-exporter"))
        .args([
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--log.level",
            "warn",
            "--business.enabled=false",
            "--postgres.interval",
            "1s",
            "--postgres.statements.interval",
            "1s",
            "--postgres.tables.interval",
            "1s",
        ])
        .env(
            "BOOKEDBARBER_POSTGRES_DSN",
            cluster.url_as("bbx_cost", "bookedbarber"),
        )
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    eprintln!("collecting every second for {seconds} s ...");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    drop(child);

    let rows = sqlx::query(
        "SELECT query, sum(calls)::float8, (sum(total_exec_time) / sum(calls))::float8,
                (sum(rows) / sum(calls))::float8,
                ((sum(shared_blks_hit) + sum(shared_blks_read)) / sum(calls))::float8
         FROM pg_stat_statements
         WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = 'bbx_cost')
         GROUP BY query ORDER BY 3 DESC",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    println!(
        "SQL cost per statement: {entries} pg_stat_statements entries, {tables} extra tables, PostgreSQL {}",
        sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&pool)
            .await
            .unwrap()
    );
    println!(
        "  {:<22} {:>6} {:>9} {:>9} {:>10}  statement",
        "collector", "calls", "mean ms", "rows", "blocks"
    );
    let mut per_collection: std::collections::BTreeMap<&str, (f64, f64)> = Default::default();
    for r in &rows {
        let query: String = r.get(0);
        let calls: f64 = r.get(1);
        let mean: f64 = r.get(2);
        let collector = collector_of(&query);
        let one_line = query.split_whitespace().collect::<Vec<_>>().join(" ");
        println!(
            "  {:<22} {:>6} {:>9.3} {:>9.1} {:>10.1}  {}",
            collector,
            calls,
            mean,
            r.get::<f64, _>(3),
            r.get::<f64, _>(4),
            one_line.chars().take(70).collect::<String>()
        );
        // Statements run every collection count fully; the query-text one
        // runs only when new statements enter the top N.
        let entry = per_collection.entry(collector).or_default();
        if calls >= seconds as f64 / 4.0 {
            entry.0 += 1.0;
            entry.1 += mean;
        }
    }
    println!("  per collection (statements run every time):");
    for (collector, (n, ms)) in per_collection {
        println!("    {collector:<22} {n:.0} statements, {ms:.2} ms");
    }
}
