//! The exporter over a long life: a log pipe that closes under it, the
//! business query file reloaded on SIGHUP, and statements cancelled on the
//! server at SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::celery::ThrowawayRedis;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_neither_kills_nor_freezes_the_exporter() {
    let mut redis = ThrowawayRedis::start();
    let mut child = Command::new(exporter_bin())
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "debug",
            "--redis.interval",
            "1s",
            "--redis.timeout",
            "1s",
        ])
        .env_remove("BOOKEDBARBER_POSTGRES_DSN")
        .env("BOOKEDBARBER_REDIS_URL", redis.url(0))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the address, then close the reading end of the pipe: every
    // later log line fails to write (EPIPE).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no 'listening' line"
        );
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .filter(|_| line.contains("message=listening"))
        {
            break a.to_owned();
        }
    };
    drop(stderr);
    let url = format!("http://{address}/metrics");
    let wait = |what: &'static str, check: fn(&Metrics) -> bool| {
        let url = url.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let m = Metrics::parse(&get_text(&url).await);
                if check(&m) {
                    return m;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}:\n{}",
                    m.text
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait("redis_up 1", |m| m.get("redis_up", &[]) == Some(1.0)).await;

    // Redis goes away and comes back: each change is logged (into the
    // closed pipe) and the collector must keep following the truth.
    redis.kill();
    wait("redis_up 0", |m| m.get("redis_up", &[]) == Some(0.0)).await;
    redis.restart();
    let m = wait("redis_up 1 again", |m| m.get("redis_up", &[]) == Some(1.0)).await;
    assert!(
        m.get("bookedbarber_exporter_log_lines_dropped_total", &[])
            .unwrap()
            >= 1.0,
        "no log line counted as dropped"
    );
    assert!(child.try_wait().unwrap().is_none(), "the exporter exited");

    // SIGTERM still stops it cleanly.
    signal(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

fn write_queries(path: &std::path::Path, body: &str) {
    std::fs::write(path, format!("[defaults]\ninterval = \"1s\"\n{body}")).unwrap();
}

const COUNTED: &str = r#"
[[query]]
name = "counted"
sql = "SELECT count(*) AS n FROM t"
[[query.metric]]
name = "shop_rows_total"
help = "Rows of t ever seen."
type = "counter"
value = "n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_business_queries_and_keeps_the_old_ones_when_broken() {
    let db = TestDb::create("reload").await;
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.toml");
    write_queries(
        &file,
        &format!(
            "{COUNTED}
[[query]]
name = \"old\"
sql = \"SELECT 1 AS n\"
[[query.metric]]
name = \"shop_old\"
help = \"Removed by the reload.\"
type = \"gauge\"
value = \"n\"
"
        ),
    );
    let exporter = Exporter::start(
        &["--business.queries", file.to_str().unwrap()],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("{}/{}", admin_url(), db.name),
        )],
    );
    exporter
        .wait_for("both queries", WAIT, |m| {
            m.get("shop_rows_total", &[]) == Some(10.0) && m.get("shop_old", &[]) == Some(1.0)
        })
        .await;
    // The unchanged counter keeps its collector across reloads: rows deleted
    // now must not show as a reset after the reload.
    db.exec("DELETE FROM t WHERE g > 5").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    write_queries(
        &file,
        &format!(
            "{COUNTED}
[[query]]
name = \"new\"
sql = \"SELECT 2 AS n\"
[[query.metric]]
name = \"shop_new\"
help = \"Added by the reload.\"
type = \"gauge\"
value = \"n\"
"
        ),
    );
    signal(exporter.pid(), "HUP");
    let m = exporter
        .wait_for("the reloaded queries", WAIT, |m| {
            m.get("shop_new", &[]) == Some(2.0) && m.get("shop_old", &[]).is_none()
        })
        .await;
    assert_eq!(m.get("shop_rows_total", &[]), Some(10.0));
    assert!(m.collector_up("business_old").is_none(), "{}", m.text);
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_last_reload_successful",
            &[("config", "business_queries")]
        ),
        Some(1.0)
    );

    // A broken file changes nothing, and says so.
    std::fs::write(&file, "[[query]]\nname = \"broken\"\n").unwrap();
    signal(exporter.pid(), "HUP");
    let m = exporter
        .wait_for("the failed reload", WAIT, |m| {
            m.get(
                "bookedbarber_exporter_config_reload_failures_total",
                &[("config", "business_queries")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_last_reload_successful",
            &[("config", "business_queries")]
        ),
        Some(0.0)
    );
    assert_eq!(m.get("shop_new", &[]), Some(2.0));
    assert_eq!(m.get("shop_rows_total", &[]), Some(10.0));
    assert!(
        exporter
            .logs()
            .lines()
            .any(|l| l.contains("config=business_queries") && l.contains("q.toml")),
        "{}",
        exporter.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_the_statements_still_running() {
    let db = TestDb::create("sigterm").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.toml");
    write_queries(
        &file,
        r#"
[[query]]
name = "slow"
timeout = "60s"
sql = "SELECT pg_sleep(60)::text AS s, 1::float8 AS n"
[[query.metric]]
name = "shop_slow"
help = "Runs for a minute."
type = "gauge"
value = "n"
"#,
    );
    let mut exporter = Exporter::start(
        &["--business.queries", file.to_str().unwrap()],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("{}/{}", admin_url(), db.name),
        )],
    );
    let running = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active'
               AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + WAIT;
    while running().await == 0 {
        assert!(Instant::now() < deadline, "the slow query never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(exporter.pid(), "TERM");
    assert!(
        exporter
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        exporter.logs()
    );
    // The server cancelled it: nothing of ours is left running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the statement outlived the exporter:\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exporter
            .logs()
            .contains("cancelled statements of this exporter still running on the server"),
        "{}",
        exporter.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_name_their_real_cause() {
    // A closed PostgreSQL port: "connection refused", not "pool timed out".
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A plain-text Redis behind a rediss:// URL: say so, not only "timed out".
    let redis = ThrowawayRedis::start();
    let exporter = Exporter::start(
        &[
            "--postgres.timeout",
            "2s",
            "--redis.timeout",
            "1s",
            "--business.enabled",
            "false",
        ],
        &[
            (
                "BOOKEDBARBER_POSTGRES_DSN",
                &format!("postgres://postgres@127.0.0.1:{closed}/x"),
            ),
            (
                "BOOKEDBARBER_REDIS_URL",
                &format!("rediss://127.0.0.1:{}/0", redis.port),
            ),
        ],
    );
    exporter
        .wait_for("both failures", WAIT, |m| {
            m.collector_up("postgres") == Some(0.0) && m.collector_up("redis") == Some(0.0)
        })
        .await;
    let logs = exporter.logs();
    let postgres = logs
        .lines()
        .find(|l| l.contains("collector=postgres ") && l.contains("collection failed"))
        .unwrap_or_else(|| panic!("no PostgreSQL failure logged:\n{logs}"));
    assert!(
        postgres.to_lowercase().contains("connection refused"),
        "{postgres}"
    );
    let redis_line = logs
        .lines()
        .find(|l| l.contains("collector=redis ") && l.contains("collection failed"))
        .unwrap_or_else(|| panic!("no Redis failure logged:\n{logs}"));
    assert!(redis_line.contains("speaks TLS"), "{redis_line}");
}
