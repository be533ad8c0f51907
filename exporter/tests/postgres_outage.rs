//! PostgreSQL going away and coming back, on a throwaway cluster of our own
//! (initdb in a temporary folder, a free port), so nobody else is hurt.

mod common;

use std::time::Duration;

use common::cluster::ThrowawayCluster;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_up_follows_the_server_and_metrics_keep_serving() {
    let cluster = ThrowawayCluster::create();
    let password = "outage-Secret-9";
    let dsn = format!(
        "postgres://postgres:{password}@127.0.0.1:{}/postgres",
        cluster.port
    );
    let exporter = Exporter::start(
        &["--postgres.interval", "1s", "--postgres.timeout", "2s"],
        &[("BOOKEDBARBER_POSTGRES_DSN", &dsn)],
    );
    let long = Duration::from_secs(20);
    exporter
        .wait_for("pg_up 1", long, |m| m.get("pg_up", &[]) == Some(1.0))
        .await;

    cluster.stop();
    let m = exporter
        .wait_for("pg_up 0 after the server stopped", long, |m| {
            m.get("pg_up", &[]) == Some(0.0)
        })
        .await;
    assert_eq!(m.collector_up("postgres"), Some(0.0));
    assert!(m.collector_errors("postgres").unwrap() >= 1.0);
    // The rest of /metrics still serves: self-metrics, process metrics.
    assert!(m.get("process_resident_memory_bytes", &[]).is_some());
    assert!(
        m.family("pg_database_size_bytes").is_empty(),
        "stale PostgreSQL series are not served while it is down"
    );
    // The business queries fail too, each reported on its own.
    assert_eq!(m.collector_up("business_appointments_by_status"), Some(0.0));
    // So do the deeper collectors, serving nothing stale.
    let m = exporter
        .wait_for("the deeper collectors to fail", long, |m| {
            m.collector_up("postgres_wal") == Some(0.0)
                && m.collector_up("postgres_settings") == Some(0.0)
        })
        .await;
    assert!(m.get("pg_wal_bytes_total", &[]).is_none());

    cluster.start();
    let m = exporter
        .wait_for("pg_up 1 after the server came back", long, |m| {
            m.get("pg_up", &[]) == Some(1.0)
        })
        .await;
    assert_eq!(m.collector_up("postgres"), Some(1.0));
    assert!(!m.family("pg_database_size_bytes").is_empty());
    exporter
        .wait_for("the deeper collectors to recover", long, |m| {
            m.collector_up("postgres_wal") == Some(1.0)
                && m.get("pg_wal_bytes_total", &[]).is_some()
        })
        .await;
    let logs = exporter.logs();
    assert!(
        logs.contains("message=\"collector recovered\"") && logs.contains("collector=postgres"),
        "{logs}"
    );
    assert!(
        !logs.contains(password) && !m.text.contains(password),
        "password leaked:\n{logs}"
    );
}
