//! Business metrics against a real PostgreSQL: the numbers equal the truth
//! computed here from the raw rows, follow changes, and leave test data out.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(15);

/// What the business metrics should say, computed in Rust from raw rows
/// rather than with the exporter's SQL.
#[derive(Debug, Default, PartialEq)]
struct Truth {
    appointments: BTreeMap<String, f64>,
    appointments_created: f64,
    guest_bookings_created: f64,
    payments: BTreeMap<String, f64>,
    payments_created: f64,
    captured_usd: f64,
    refunded_usd: f64,
    fees_usd: f64,
    users: BTreeMap<String, f64>,
    users_created: f64,
    payouts: BTreeMap<String, f64>,
    payouts_pending_usd: f64,
}

async fn truth(db: &TestDb) -> Truth {
    let mut t = Truth::default();
    let users = sqlx::query("SELECT id, unified_role, is_active, is_test_data FROM users")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut test_users = std::collections::HashSet::new();
    for u in &users {
        let id: i32 = u.get(0);
        let test: bool = u.get(3);
        if test {
            test_users.insert(id);
            continue;
        }
        t.users_created += 1.0;
        if u.get::<bool, _>(2) {
            *t.users
                .entry(u.get::<Option<String>, _>(1).unwrap_or_default())
                .or_default() += 1.0;
        }
    }
    let appts = sqlx::query("SELECT id, status, is_test_data FROM appointments")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut test_appts = std::collections::HashSet::new();
    for a in &appts {
        if a.get::<bool, _>(2) {
            test_appts.insert(a.get::<i32, _>(0));
            continue;
        }
        *t.appointments.entry(a.get(1)).or_default() += 1.0;
        t.appointments_created += 1.0;
    }
    t.guest_bookings_created = sqlx::query("SELECT id FROM guest_bookings")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .len() as f64;
    let payments = sqlx::query(
        "SELECT status, amount, refund_amount, platform_fee, appointment_id, user_id FROM payments",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for p in &payments {
        let appt: Option<i32> = p.get(4);
        let user: Option<i32> = p.get(5);
        if appt.is_some_and(|a| test_appts.contains(&a))
            || user.is_some_and(|u| test_users.contains(&u))
        {
            continue;
        }
        let status: String = p.get(0);
        t.payments_created += 1.0;
        if ["completed", "refunded", "partially_refunded", "disputed"].contains(&status.as_str()) {
            t.captured_usd += p.get::<f64, _>(1);
            t.fees_usd += p.get::<f64, _>(3);
        }
        t.refunded_usd += p.get::<f64, _>(2);
        *t.payments.entry(status).or_default() += 1.0;
    }
    for p in sqlx::query("SELECT status, amount FROM payouts")
        .fetch_all(&db.pool)
        .await
        .unwrap()
    {
        let status: String = p.get(0);
        if status == "pending" || status == "processing" {
            t.payouts_pending_usd += p.get::<f64, _>(1);
        }
        *t.payouts.entry(status).or_default() += 1.0;
    }
    t
}

fn observed(m: &Metrics) -> Truth {
    let one = |name: &str| m.get(name, &[]).unwrap_or(f64::NAN);
    Truth {
        appointments: m.by_label("bookedbarber_appointments", "status"),
        appointments_created: one("bookedbarber_appointments_created_total"),
        guest_bookings_created: one("bookedbarber_guest_bookings_created_total"),
        payments: m.by_label("bookedbarber_payments", "status"),
        payments_created: one("bookedbarber_payments_created_total"),
        captured_usd: one("bookedbarber_payments_captured_usd_total"),
        refunded_usd: one("bookedbarber_refunds_usd_total"),
        fees_usd: one("bookedbarber_platform_fees_usd_total"),
        users: m.by_label("bookedbarber_users", "role"),
        users_created: one("bookedbarber_users_created_total"),
        payouts: m.by_label("bookedbarber_payouts", "status"),
        payouts_pending_usd: one("bookedbarber_payouts_pending_usd"),
    }
}

/// Money sums differ from Rust's sums only by floating-point rounding.
fn same(a: &Truth, b: &Truth) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * x.abs().max(1.0);
    a.appointments == b.appointments
        && a.appointments_created == b.appointments_created
        && a.guest_bookings_created == b.guest_bookings_created
        && a.payments == b.payments
        && a.users == b.users
        && a.payouts == b.payouts
        && a.payments_created == b.payments_created
        && a.users_created == b.users_created
        && close(a.captured_usd, b.captured_usd)
        && close(a.refunded_usd, b.refunded_usd)
        && close(a.fees_usd, b.fees_usd)
        && close(a.payouts_pending_usd, b.payouts_pending_usd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_metrics_equal_the_truth_and_follow_changes() {
    let mut db = TestDb::create("business").await;
    db.exec("SELECT demo_seed(400, 4000, 3000)").await;
    // Test rows that would change every figure if they were counted.
    db.exec(
        "INSERT INTO users (email, unified_role, is_test_data) SELECT 'qa' || g || '@test', 'super_admin', true FROM generate_series(1, 25) g;
         INSERT INTO appointments (user_id, barber_id, start_time, price, status, is_test_data)
           SELECT NULL, (SELECT min(id) FROM users), now(), 99, 'in_progress', true FROM generate_series(1, 30);
         INSERT INTO payments (appointment_id, amount, status, platform_fee)
           SELECT id, 1000, 'completed', 100 FROM appointments WHERE is_test_data;",
    )
    .await;
    let role = db.monitoring_role().await;
    let password = "Sup3r-S3cret-pw";
    let dsn = format!("postgres://{role}:{password}@127.0.0.1:5432/{}", db.name);
    let dir = tempfile::tempdir().unwrap();
    let queries = fast_builtin_queries(dir.path(), "10s");
    let exporter = Exporter::start(
        &[
            "--business.queries",
            queries.to_str().unwrap(),
            "--postgres.interval",
            "1s",
        ],
        &[("BOOKEDBARBER_POSTGRES_DSN", &dsn)],
    );

    let expected = truth(&db).await;
    assert!(
        !expected.appointments.contains_key("in_progress"),
        "seed makes no in_progress rows"
    );
    assert!(!expected.users.contains_key("super_admin"));
    let m = exporter
        .wait_for("business metrics equal to the truth", WAIT, |m| {
            same(&observed(m), &expected)
        })
        .await;
    assert!(m.get("bookedbarber_appointments_upcoming", &[]).is_some());
    assert!(m
        .get("bookedbarber_appointment_pending_oldest_age_seconds", &[])
        .is_some());
    assert_eq!(m.get("pg_up", &[]), Some(1.0));
    assert_eq!(
        m.get("bookedbarber_exporter_postgres_pg_monitor", &[]),
        Some(1.0),
        "the documented role has pg_monitor"
    );
    // Money is summed as numeric and rounded to cents.
    for name in [
        "bookedbarber_payments_captured_usd_total",
        "bookedbarber_refunds_usd_total",
        "bookedbarber_platform_fees_usd_total",
    ] {
        let cents = m.get(name, &[]).unwrap() * 100.0;
        assert!(
            (cents - cents.round()).abs() < 1e-6,
            "{name} = {cents} cents"
        );
    }
    for (labels, up) in m.family("bookedbarber_exporter_collector_up") {
        assert_eq!(
            up,
            1.0,
            "collector {labels:?} is down with only the documented grants:\n{}",
            exporter.logs()
        );
    }

    // Changes: new real rows in a status the seed never uses, new payments.
    db.exec(
        "INSERT INTO appointments (user_id, barber_id, start_time, price, status)
           SELECT NULL, (SELECT min(id) FROM users), now() AT TIME ZONE 'UTC', 40, 'in_progress' FROM generate_series(1, 7);
         INSERT INTO payments (appointment_id, amount, status, platform_fee)
           SELECT id, 40, 'completed', 4 FROM appointments WHERE status = 'in_progress' AND NOT is_test_data;",
    )
    .await;
    let expected = truth(&db).await;
    assert_eq!(expected.appointments.get("in_progress"), Some(&7.0));
    let m = exporter
        .wait_for("metrics to follow inserted rows", WAIT, |m| {
            same(&observed(m), &expected)
        })
        .await;
    assert_eq!(
        m.by_label("bookedbarber_appointments_recent", "status")
            .get("in_progress"),
        Some(&7.0)
    );

    // A status that no longer has rows disappears.
    db.exec("UPDATE appointments SET status = 'completed' WHERE status = 'in_progress' AND NOT is_test_data").await;
    let expected = truth(&db).await;
    exporter
        .wait_for("in_progress to disappear", WAIT, |m| {
            same(&observed(m), &expected)
                && !m
                    .by_label("bookedbarber_appointments", "status")
                    .contains_key("in_progress")
        })
        .await;

    // The scrape is lint-clean and never shows the password.
    let text = exporter.scrape().await;
    if let Err(findings) = promtool_check_metrics(&text) {
        panic!("promtool check metrics found problems:\n{findings}\n--- scrape ---\n{text}");
    }
    assert!(!text.contains(password), "password in /metrics");
    assert!(
        !exporter.logs().contains(password),
        "password in logs:\n{}",
        exporter.logs()
    );
    assert!(exporter
        .logs()
        .contains(&format!("target=127.0.0.1:5432/{}", db.name)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_query_is_isolated() {
    let db = TestDb::create("failing").await;
    db.exec("SELECT demo_seed(50, 200, 100)").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
interval = "1s"

[[query]]
name = "missing_table"
sql = "SELECT count(*)::float8 AS n FROM no_such_table"
[[query.metric]]
name = "shop_missing"
help = "Never works."
type = "gauge"
value = "n"

[[query]]
name = "missing_column"
sql = "SELECT count(*)::float8 AS n FROM appointments WHERE no_such_column"
[[query.metric]]
name = "shop_missing_column"
help = "Never works either."
type = "gauge"
value = "n"

[[query]]
name = "slow"
timeout = "1s"
sql = "SELECT pg_sleep(3)::text AS s, 1::float8 AS n"
[[query.metric]]
name = "shop_slow"
help = "Times out."
type = "gauge"
value = "n"

[[query]]
name = "working"
sql = "SELECT status, count(*) AS n FROM appointments GROUP BY status"
[[query.metric]]
name = "shop_appointments"
help = "Works, with a bigint value column."
type = "gauge"
value = "n"
labels = ["status"]
"#,
    )
    .unwrap();
    let dsn = format!("{}/{}", admin_url(), db.name);
    let exporter = Exporter::start(
        &["--business.queries", file.to_str().unwrap()],
        &[("BOOKEDBARBER_POSTGRES_DSN", &dsn)],
    );
    let m = exporter
        .wait_for("the failing queries to be counted", WAIT, |m| {
            [
                "business_missing_table",
                "business_missing_column",
                "business_slow",
            ]
            .iter()
            .all(|c| m.collector_errors(c).unwrap_or(0.0) >= 1.0)
        })
        .await;
    for c in [
        "business_missing_table",
        "business_missing_column",
        "business_slow",
    ] {
        assert_eq!(m.collector_up(c), Some(0.0), "{c}");
    }
    assert_eq!(m.collector_up("business_working"), Some(1.0));
    assert_eq!(m.get("pg_up", &[]), Some(1.0));
    assert!(m.get("shop_missing", &[]).is_none());
    let total: f64 = m.by_label("shop_appointments", "status").values().sum();
    assert_eq!(total, 200.0);
    let logs = exporter.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("collector=business_missing_table") && l.contains("no_such_table")),
        "no log line names the failing query and table:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("collector=business_slow") && l.contains("timed out")),
        "{logs}"
    );
    // Logged once per state change, not on every attempt.
    let repeats = logs
        .lines()
        .filter(|l| l.contains("collector=business_missing_table"))
        .count();
    assert_eq!(repeats, 1, "{logs}");
}
