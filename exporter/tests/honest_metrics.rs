//! Metrics that never lie, against a real PostgreSQL (and a real Prometheus
//! reading them): business counters that never go down under ordinary row
//! changes, stuck bookings measured on pending ones only, `pg_up` that stays
//! true while business queries are blocked, a series cap on business
//! queries, and a role without `pg_monitor` detected.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::watch::DecreaseWatch;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Every business `_total` series of a scrape.
fn business_counters(m: &Metrics) -> BTreeMap<String, f64> {
    m.series
        .iter()
        .filter(|((name, _), _)| name.starts_with("bookedbarber_") && name.ends_with("_total"))
        .filter(|((name, _), _)| !name.starts_with("bookedbarber_exporter_"))
        .map(|((name, labels), v)| (format!("{name}{labels:?}"), *v))
        .collect()
}

/// Waits long enough for every 1 s business query to have run twice.
async fn two_collections() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_counters_never_decrease_under_ordinary_row_changes() {
    let db = TestDb::create("monotonic").await;
    db.exec("SELECT demo_seed(300, 2000, 1500)").await;
    let exporter = fast_business_exporter(&db.name, "5s", &[]);
    let before = exporter
        .wait_for("the business counters", WAIT, |m| {
            m.get("bookedbarber_payments_created_total", &[]).is_some()
                && m.get("bookedbarber_users_created_total", &[]).is_some()
        })
        .await;
    let address = exporter.base_url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::scraping(&address);
    let watch = DecreaseWatch::start(format!("{}/metrics", exporter.base_url), |name| {
        name.starts_with("bookedbarber_") && !name.starts_with("bookedbarber_exporter_")
    });
    two_collections().await;

    // A guest booking gets an account, rows are flagged as test data, a
    // payment is deleted and amounts are corrected downwards: each lowers a
    // count or a sum recomputed from the tables.
    for change in [
        "UPDATE appointments SET user_id = (SELECT min(id) FROM users)
           WHERE id IN (SELECT id FROM appointments WHERE user_id IS NULL LIMIT 5)",
        "UPDATE appointments SET is_test_data = true
           WHERE id IN (SELECT id FROM appointments WHERE NOT is_test_data ORDER BY id LIMIT 20)",
        "UPDATE users SET is_test_data = true
           WHERE id IN (SELECT id FROM users WHERE NOT is_test_data ORDER BY id DESC LIMIT 10)",
        "DELETE FROM refunds WHERE payment_id = (SELECT max(id) FROM payments WHERE status = 'completed');
         DELETE FROM payments WHERE id = (SELECT max(id) FROM payments WHERE status = 'completed')",
        "UPDATE payments SET amount = amount - 10, platform_fee = platform_fee - 1
           WHERE id IN (SELECT id FROM payments WHERE status = 'completed' ORDER BY id LIMIT 3)",
        "DELETE FROM guest_bookings WHERE id = (SELECT max(id) FROM guest_bookings)",
    ] {
        db.exec(change).await;
        two_collections().await;
    }
    let held = exporter.metrics().await;

    // Growth after the drops still counts in full.
    db.exec(
        "INSERT INTO appointments (user_id, barber_id, start_time, price, status)
           SELECT NULL, (SELECT min(id) FROM users), now() AT TIME ZONE 'UTC', 40, 'pending'
           FROM generate_series(1, 7)",
    )
    .await;
    let created = |m: &Metrics| {
        m.get("bookedbarber_appointments_created_total", &[])
            .unwrap()
    };
    let grown = exporter
        .wait_for("seven new bookings to count", WAIT, |m| {
            created(m) >= created(&held) + 7.0
        })
        .await;
    assert_eq!(created(&grown), created(&held) + 7.0);
    two_collections().await;
    let (decreases, scrapes) = watch.stop();
    assert!(scrapes > 50, "the watch scraped too rarely to tell");
    assert!(
        decreases.is_empty(),
        "business counters went down:\n{}",
        decreases.join("\n")
    );
    for (collector, metric) in [
        (
            "business_appointments_created",
            "bookedbarber_appointments_created_total",
        ),
        (
            "business_payments_totals",
            "bookedbarber_payments_created_total",
        ),
        (
            "business_payments_totals",
            "bookedbarber_payments_captured_usd_total",
        ),
        (
            "business_payments_totals",
            "bookedbarber_platform_fees_usd_total",
        ),
        ("business_users_created", "bookedbarber_users_created_total"),
        (
            "business_guest_bookings_created",
            "bookedbarber_guest_bookings_created_total",
        ),
    ] {
        let absorbed = grown
            .get(
                "bookedbarber_exporter_source_decreases_total",
                &[("collector", collector), ("metric", metric)],
            )
            .unwrap_or(0.0);
        assert!(absorbed >= 1.0, "{metric}: no drop counted");
        let logged = exporter
            .logs()
            .lines()
            .filter(|l| l.contains("went down") && l.contains(&format!("metric={metric}")))
            .count();
        assert_eq!(
            logged,
            1,
            "{metric} logged {logged} times:\n{}",
            exporter.logs()
        );
    }
    // What Prometheus makes of it: no reset, and no spike of the size of
    // the lifetime totals.
    for metric in business_counters(&grown)
        .keys()
        .map(|series| series.split('[').next().unwrap().to_owned())
    {
        let resets = prometheus.query(&format!("resets({metric}[10m])")).await;
        assert!(
            !resets.is_empty() && resets.iter().all(|(_, v)| *v == 0.0),
            "Prometheus saw {metric} reset: {resets:?}"
        );
    }
    let increase = prometheus
        .query("increase(bookedbarber_payments_created_total[10m])")
        .await;
    let total = before
        .get("bookedbarber_payments_created_total", &[])
        .unwrap();
    assert!(
        increase.len() == 1 && increase[0].1 < total / 10.0,
        "increase() shows a spike: {increase:?} with {total} payments in all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_bookings_are_pending_ones_and_past_due_ones_are_counted_apart() {
    let db = TestDb::create("stuck").await;
    db.exec(
        "INSERT INTO appointments (start_time, price, status, created_at) VALUES
           -- pending for three days: the oldest stuck booking
           (now() AT TIME ZONE 'UTC' + interval '1 day', 30, 'pending', now() AT TIME ZONE 'UTC' - interval '3 days'),
           (now() AT TIME ZONE 'UTC' + interval '1 day', 30, 'pending', now() AT TIME ZONE 'UTC' - interval '1 hour'),
           -- never closed: past due if the start passed 2 h to 7 days ago
           (now() AT TIME ZONE 'UTC' - interval '10 days', 30, 'scheduled', now() AT TIME ZONE 'UTC' - interval '12 days'),
           (now() AT TIME ZONE 'UTC' - interval '3 days', 30, 'scheduled', now() AT TIME ZONE 'UTC' - interval '4 days'),
           (now() AT TIME ZONE 'UTC' - interval '5 hours', 30, 'confirmed', now() AT TIME ZONE 'UTC' - interval '2 days'),
           (now() AT TIME ZONE 'UTC' - interval '1 hour', 30, 'scheduled', now() AT TIME ZONE 'UTC' - interval '2 days'),
           (now() AT TIME ZONE 'UTC' - interval '3 days', 30, 'completed', now() AT TIME ZONE 'UTC' - interval '4 days');
         -- a test booking older than all of them is left out
         INSERT INTO appointments (start_time, price, status, created_at, is_test_data) VALUES
           (now() AT TIME ZONE 'UTC', 1, 'pending', now() AT TIME ZONE 'UTC' - interval '30 days', true);",
    )
    .await;
    let exporter = fast_business_exporter(&db.name, "5s", &[]);
    let m = exporter
        .wait_for("the stuck-booking metrics", WAIT, |m| {
            m.get("bookedbarber_appointments_past_due", &[]).is_some()
                && m.get("bookedbarber_appointment_pending_oldest_age_seconds", &[])
                    .is_some()
                && m.collector_up("business_payments_totals") == Some(1.0)
        })
        .await;
    let age = m
        .get("bookedbarber_appointment_pending_oldest_age_seconds", &[])
        .unwrap();
    let three_days = 3.0 * 86400.0;
    assert!(
        (age - three_days).abs() < 120.0,
        "oldest pending booking is 3 days old, the gauge says {age} s"
    );
    assert_eq!(m.get("bookedbarber_appointments_past_due", &[]), Some(2.0));
    // Nothing went down here: every business counter's drop count is listed
    // at 0 all the same.
    assert_eq!(
        m.get(
            "bookedbarber_exporter_source_decreases_total",
            &[
                ("collector", "business_payments_totals"),
                ("metric", "bookedbarber_refunds_usd_total")
            ]
        ),
        Some(0.0)
    );

    // Once nothing is pending, the age is 0 (an alert on it clears).
    db.exec("UPDATE appointments SET status = 'confirmed' WHERE status = 'pending'")
        .await;
    exporter
        .wait_for("the age to drop to 0", WAIT, |m| {
            m.get("bookedbarber_appointment_pending_oldest_age_seconds", &[]) == Some(0.0)
        })
        .await;
}

/// Connections the exporter holds to the test's database.
async fn exporter_connections(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'bookedbarber-exporter' AND datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_the_business_tables_leaves_pg_up_alone() {
    let db = TestDb::create("locked").await;
    db.exec("SELECT demo_seed(100, 1000, 800)").await;
    let exporter = fast_business_exporter(
        &db.name,
        "2s",
        &[
            "--postgres.interval",
            "1s",
            // One for pg_up, one for the deeper PostgreSQL collectors, one
            // for all the business queries: the hardest case for starvation.
            "--postgres.max-connections",
            "3",
        ],
    );
    exporter
        .wait_for("every collector up", WAIT, |m| {
            m.collector_up("postgres") == Some(1.0)
                && m.collector_up("business_payments_totals") == Some(1.0)
        })
        .await;

    // Hold an exclusive lock on the business tables for 12 s: every business
    // query blocks behind it.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE appointments, payments, users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let locked_at = Instant::now();
    let mut samples = 0;
    let mut most_connections = 0;
    let mut waited_too_long = Vec::new();
    while locked_at.elapsed() < Duration::from_secs(12) {
        let m = exporter.metrics().await;
        assert_eq!(
            (m.get("pg_up", &[]), m.collector_up("postgres")),
            (Some(1.0), Some(1.0)),
            "PostgreSQL read as down while only a lock blocked the business queries:\n{}",
            exporter.logs()
        );
        most_connections = most_connections.max(exporter_connections(&db).await);
        // A blocked query is cancelled by the server at its own 2 s limit,
        // not left waiting on the lock.
        let stuck: Vec<String> = sqlx::query_scalar(
            "SELECT query FROM pg_stat_activity
             WHERE application_name = 'bookedbarber-exporter' AND state = 'active'
               AND datname = current_database() AND now() - query_start > interval '3 seconds'",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        waited_too_long.extend(stuck);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let during = exporter.metrics().await;
    locker.rollback().await.unwrap();

    assert!(samples >= 20, "only {samples} samples");
    assert!(
        most_connections <= 4,
        "the exporter held {most_connections} connections, more than --postgres.max-connections 4"
    );
    assert!(
        waited_too_long.is_empty(),
        "queries kept running past their time limit: {waited_too_long:?}"
    );
    for collector in [
        "business_payments_totals",
        "business_appointments_by_status",
    ] {
        assert_eq!(during.collector_up(collector), Some(0.0), "{collector}");
        assert!(
            during.collector_errors(collector).unwrap() >= 1.0,
            "{collector}"
        );
    }
    assert!(
        exporter
            .logs()
            .lines()
            .any(|l| l.contains("collector=business_payments_totals") && l.contains("timed out")),
        "{}",
        exporter.logs()
    );
    exporter
        .wait_for("the business collectors to recover", WAIT, |m| {
            m.collector_up("business_payments_totals") == Some(1.0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_returning_a_million_rows_is_capped() {
    let db = TestDb::create("huge").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.toml");
    std::fs::write(
        &file,
        r#"
[[query]]
name = "huge"
interval = "3s"
timeout = "30s"
sql = "SELECT g::text AS id, 1::float8 AS n FROM generate_series(1, 1000000) g"
[[query.metric]]
name = "shop_rows"
help = "One series per row: a GROUP BY gone wrong."
type = "gauge"
value = "n"
labels = ["id"]

[[query]]
name = "small"
interval = "3s"
max_series = 5
sql = "SELECT g::text AS id, g::float8 AS n FROM generate_series(1, 3) g"
[[query.metric]]
name = "shop_small"
help = "Fits its cap."
type = "gauge"
value = "n"
labels = ["id"]
"#,
    )
    .unwrap();
    let exporter = Exporter::start(
        &["--business.queries", file.to_str().unwrap()],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("{}/{}", admin_url(), db.name),
        )],
    );
    let m = exporter
        .wait_for("both queries collected", Duration::from_secs(60), |m| {
            m.collector_up("business_huge") == Some(1.0)
                && m.collector_up("business_small") == Some(1.0)
        })
        .await;
    assert_eq!(m.family("shop_rows").len(), 1000, "default cap");
    assert_eq!(m.family("shop_small").len(), 3);
    assert_eq!(
        m.get(
            "bookedbarber_exporter_series_dropped",
            &[("collector", "business_huge")]
        ),
        Some(999_000.0)
    );
    assert_eq!(
        m.get(
            "bookedbarber_exporter_series_dropped",
            &[("collector", "business_small")]
        ),
        Some(0.0)
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let m = exporter.metrics().await;
    let rss = m.get("process_resident_memory_bytes", &[]).unwrap();
    assert!(
        rss < 80e6,
        "{} MB resident after streaming a million rows several times",
        rss / 1e6
    );
    assert!(m.text.len() < 200_000, "/metrics is {} bytes", m.text.len());
    let logged = exporter
        .logs()
        .lines()
        .filter(|l| l.contains("series cap") && l.contains("collector=business_huge"))
        .count();
    assert_eq!(logged, 1, "{}", exporter.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_pg_monitor_is_reported() {
    let mut db = TestDb::create("nomonitor").await;
    let role = db.monitoring_role().await;
    db.exec(&format!("REVOKE pg_monitor FROM {role}")).await;
    // A session of another role, which this one cannot see.
    let _other = sqlx::query("SELECT 1").execute(&db.pool).await.unwrap();
    let exporter = Exporter::start(
        &["--business.enabled", "false", "--postgres.interval", "1s"],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("postgres://{role}@127.0.0.1:5432/{}", db.name),
        )],
    );
    let m = exporter
        .wait_for("PostgreSQL read", WAIT, |m| {
            m.get("pg_up", &[]) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.get("bookedbarber_exporter_postgres_pg_monitor", &[]),
        Some(0.0)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings: Vec<String> = exporter
        .logs()
        .lines()
        .filter(|l| l.contains("lacks pg_monitor"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{}", exporter.logs());
    assert!(warnings[0].contains("GRANT pg_monitor"), "{}", warnings[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statistics_reset_does_not_lower_postgres_counters() {
    let db = TestDb::create("statreset").await;
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await;
    let exporter = Exporter::start(
        &["--business.enabled", "false", "--postgres.interval", "1s"],
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("{}/{}", admin_url(), db.name),
        )],
    );
    let commits = |m: &Metrics| {
        m.get(
            "pg_stat_database_xact_commit_total",
            &[("datname", db.name.as_str())],
        )
    };
    let before = exporter
        .wait_for("the database's commit counter", WAIT, |m| {
            commits(m).is_some_and(|c| c > 10.0)
        })
        .await;
    // pg_stat_reset() zeroes the statistics of the current database.
    db.exec("SELECT pg_stat_reset()").await;
    let after = exporter
        .wait_for("the reset to be absorbed", WAIT, |m| {
            m.get(
                "bookedbarber_exporter_source_decreases_total",
                &[
                    ("collector", "postgres"),
                    ("metric", "pg_stat_database_xact_commit_total"),
                ],
            )
            .unwrap_or(0.0)
                >= 1.0
        })
        .await;
    assert!(
        commits(&after) >= commits(&before),
        "{:?} -> {:?}",
        commits(&before),
        commits(&after)
    );
}
