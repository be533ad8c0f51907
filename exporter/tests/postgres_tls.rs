//! PostgreSQL over TLS with a private CA: `sslmode=verify-full` with
//! `sslrootcert` connects when the server's certificate chains to that CA
//! and names the host, and refuses a server whose certificate does not.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::ThrowawayCluster;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A folder PostgreSQL (running as `postgres` when we are root) can read.
fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        assert!(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success());
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_a_private_ca() {
    let server_dir = readable_dir();
    let (ca, cert, key) = certificates(server_dir.path());
    for file in [&ca, &cert, &key] {
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(file)
            .status();
    }
    // PostgreSQL refuses a key others can read.
    assert!(Command::new("chmod")
        .arg("600")
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let cluster = ThrowawayCluster::create_with(&[
        "ssl=on",
        &format!("ssl_cert_file={}", cert.display()),
        &format!("ssl_key_file={}", key.display()),
    ]);
    // Another CA, which did not sign the server's certificate.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = certificates(other_dir.path());

    let url = |root: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            cluster.url("postgres"),
            root.display()
        )
    };
    let trusting = Exporter::start(
        &["--business.enabled", "false", "--postgres.interval", "1s"],
        &[("BOOKEDBARBER_POSTGRES_DSN", &url(&ca))],
    );
    trusting
        .wait_for("pg_up 1 over verified TLS", WAIT, |m| {
            m.get("pg_up", &[]) == Some(1.0)
        })
        .await;
    // The server confirms the session is encrypted.
    let ssl: bool = sqlx::query_scalar(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'bookedbarber-exporter'",
    )
    .fetch_one(
        &sqlx::postgres::PgPoolOptions::new()
            .connect(&format!("{}?sslmode=disable", cluster.url("postgres")))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(ssl, "the exporter's sessions are not encrypted");

    let distrusting = Exporter::start(
        &[
            "--business.enabled",
            "false",
            "--postgres.interval",
            "1s",
            "--postgres.timeout",
            "2s",
        ],
        &[("BOOKEDBARBER_POSTGRES_DSN", &url(&other_ca))],
    );
    distrusting
        .wait_for("pg_up 0 with the wrong CA", WAIT, |m| {
            m.get("pg_up", &[]) == Some(0.0)
        })
        .await;
    let logs = distrusting.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("collector=postgres ") && l.to_lowercase().contains("certificate")),
        "the failure does not say it is the certificate:\n{logs}"
    );
}
