//! Redis and Celery against real servers: a real Celery worker running a
//! scripted workload, queue depth over priority lists, worker liveness,
//! Redis restarts and label caps.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::celery::*;
use common::*;
use redis::AsyncCommands;

// Generous: eight tests run side by side, each with real Celery workers,
// on a machine that may be busy with a build.
const WAIT: Duration = Duration::from_secs(120);

fn celery_exporter(redis: &ThrowawayRedis, db: u32, extra: &[&str]) -> Exporter {
    let url = redis.url(db);
    let mut args = vec![
        "--redis.interval",
        "1s",
        "--celery.interval",
        "1s",
        "--celery.discovery-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    Exporter::start(&args, &[("BOOKEDBARBER_REDIS_URL", &url)])
}

/// celery_exporter once its event subscription is up.
async fn subscribed_exporter(redis: &ThrowawayRedis, db: u32, extra: &[&str]) -> Exporter {
    let exporter = celery_exporter(redis, db, extra);
    exporter
        .wait_for("the event stream", WAIT, |m| {
            m.get("celery_event_stream_up", &[]) == Some(1.0)
        })
        .await;
    exporter
}

fn histogram_count(m: &Metrics, metric: &str, name: &str) -> f64 {
    m.get(&format!("{metric}_count"), &[("name", name)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_workload_counters_equal_the_ground_truth() {
    let redis = ThrowawayRedis::start();
    let exporter = subscribed_exporter(&redis, 0, &[]).await;
    let _worker = CeleryWorker::start(
        &redis.url(0),
        "bbx1@testhost",
        "default,notifications,urgent_notifications,marketing",
    );
    exporter
        .wait_for("the worker to be up", WAIT, |m| {
            m.get("celery_worker_up", &[("worker", "bbx1@testhost")]) == Some(1.0)
        })
        .await;

    // A malformed message on the event channel is counted and skipped.
    let mut conn = redis.connection(0).await;
    let _: i64 = conn
        .publish("/0.celeryev/task.multi", "not a kombu envelope")
        .await
        .unwrap();

    let truth: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(&workload(&redis.url(0), &[], &["scripted"])).unwrap();
    assert_eq!(truth.len(), 5, "{truth:?}");
    let events = [
        "sent",
        "received",
        "started",
        "succeeded",
        "failed",
        "retried",
        "revoked",
        "rejected",
        "cancelled",
    ];
    // task-sent carries the queue; the worker's events only the task. Every
    // counter exists for every name, at 0 where nothing happened (the
    // workload never rejects or cancels).
    let matches = |m: &Metrics| {
        truth.iter().all(|(name, row)| {
            let queue = row["queue"].as_str().unwrap();
            events.iter().all(|e| {
                let want = row.get(*e).map_or(0.0, |v| v.as_f64().unwrap());
                let labels: &[(&str, &str)] = if *e == "sent" {
                    &[("name", name), ("queue", queue)]
                } else {
                    &[("name", name)]
                };
                m.get(&format!("celery_task_{e}_total"), labels) == Some(want)
            })
        })
    };
    let m = exporter
        .wait_for(
            "counters equal to the workload's ground truth",
            WAIT,
            matches,
        )
        .await;
    // Nothing more arrives later (no double counting).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m2 = exporter.metrics().await;
    assert!(matches(&m2), "counters moved after settling:\n{}", m2.text);

    for (name, row) in &truth {
        let succeeded = row["succeeded"].as_f64().unwrap();
        let failed = row["failed"].as_f64().unwrap();
        let started = row["started"].as_f64().unwrap();
        // Runtime: one observation per success (task-succeeded.runtime) and
        // per failure (task-failed − task-started).
        assert_eq!(
            histogram_count(&m, "celery_task_runtime_seconds", name),
            succeeded + failed,
            "{name}"
        );
        assert_eq!(
            histogram_count(&m, "celery_task_wait_seconds", name),
            started,
            "{name}"
        );
    }
    assert_eq!(
        m.get("celery_event_messages_total", &[("result", "malformed")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("celery_event_unknown_task_events_total", &[]),
        Some(0.0)
    );
    assert!(m
        .get("celery_worker_tasks_active", &[("worker", "bbx1@testhost")])
        .is_some());
    // Every queue the workload used was discovered from kombu's bindings.
    let lengths = m.by_label("celery_queue_length", "queue");
    for q in [
        "default",
        "notifications",
        "urgent_notifications",
        "marketing",
    ] {
        assert!(
            lengths.contains_key(q),
            "queue {q} not discovered: {lengths:?}"
        );
    }
    if let Err(findings) = promtool_check_metrics(&m.text) {
        panic!("promtool check metrics:\n{findings}\n{}", m.text);
    }

    // Tasks with an ETA wait in the worker, fetched but unacknowledged.
    workload(&redis.url(0), &[], &["eta", "notifications", "3", "120"]);
    let m = exporter
        .wait_for("ETA tasks to show as unacked", WAIT, |m| {
            m.get("celery_queue_unacked", &[("queue", "notifications")]) == Some(3.0)
        })
        .await;
    let in_hash: u64 = conn.hlen("unacked").await.unwrap();
    assert_eq!(in_hash, 3, "the unacked hash itself");
    assert_eq!(
        m.get("celery_queue_unacked", &[("queue", "default")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("celery_queue_length", &[("queue", "notifications")]),
        Some(0.0)
    );
}

async fn llen_sum(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> u64 {
    let mut sum = 0;
    for k in keys {
        let n: u64 = conn.llen(k).await.unwrap();
        sum += n;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_length_sums_every_priority_list() {
    let redis = ThrowawayRedis::start();
    let exporter = subscribed_exporter(
        &redis,
        0,
        &["--celery.queues", "notifications,urgent_notifications"],
    )
    .await;
    // No worker: the messages stay in the lists.
    workload(
        &redis.url(0),
        &[],
        &[
            "enqueue",
            "notifications",
            "0:4",
            "2:1",
            "5:3",
            "7:2",
            "9:1",
        ],
    );
    workload(&redis.url(0), &[], &["enqueue", "marketing", "0:2", "8:1"]);
    let keys = |q: &str| -> Vec<String> {
        vec![
            q.to_owned(),
            format!("{q}\x06\x163"),
            format!("{q}\x06\x166"),
            format!("{q}\x06\x169"),
        ]
    };
    let mut conn = redis.connection(0).await;
    assert_eq!(llen_sum(&mut conn, &keys("notifications")).await, 11);
    let step3: u64 = conn.llen("notifications\x06\x163").await.unwrap();
    assert_eq!(step3, 3, "priority 5 lives in step 3");

    let m = exporter
        .wait_for("queue lengths", WAIT, |m| {
            m.get("celery_queue_length", &[("queue", "notifications")]) == Some(11.0)
                && m.get("celery_queue_length", &[("queue", "marketing")]) == Some(3.0)
        })
        .await;
    assert_eq!(
        m.get("celery_queue_length", &[("queue", "urgent_notifications")]),
        Some(0.0),
        "configured, never declared"
    );
    assert_eq!(
        m.get("celery_queue_unacked", &[("queue", "notifications")]),
        Some(0.0)
    );

    // The oldest message's age comes from its task-sent event and grows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = exporter
        .wait_for("the head message's age", WAIT, |m| {
            m.get(
                "celery_queue_oldest_message_age_seconds",
                &[("queue", "notifications")],
            )
            .unwrap_or(0.0)
                >= 2.0
        })
        .await;
    assert!(
        m.get(
            "celery_queue_oldest_message_age_seconds",
            &[("queue", "notifications")]
        )
        .unwrap()
            < 60.0
    );

    // Emptied: 0, not gone.
    for k in keys("notifications") {
        let _: i64 = conn.del(&k).await.unwrap();
    }
    let m = exporter
        .wait_for("the emptied queue to read 0", WAIT, |m| {
            m.get("celery_queue_length", &[("queue", "notifications")]) == Some(0.0)
        })
        .await;
    assert_eq!(
        m.get(
            "celery_queue_oldest_message_age_seconds",
            &[("queue", "notifications")]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_separator_steps_and_key_prefix() {
    let redis = ThrowawayRedis::start();
    let options =
        r#"{"global_keyprefix": "pfx:", "sep": ":", "priority_steps": [0,1,2,3,4,5,6,7,8,9]}"#;
    let exporter = celery_exporter(
        &redis,
        5,
        &[
            "--celery.key-prefix",
            "pfx:",
            "--celery.priority-separator",
            ":",
            "--celery.priority-steps",
            "0,1,2,3,4,5,6,7,8,9",
        ],
    );
    workload(
        &redis.url(5),
        &[("BBX_TRANSPORT_OPTIONS", options)],
        &["enqueue", "notifications", "0:1", "1:1", "4:2", "9:3"],
    );
    let mut conn = redis.connection(5).await;
    let keys: Vec<String> = (0..10)
        .map(|s| {
            if s == 0 {
                "pfx:notifications".to_owned()
            } else {
                format!("pfx:notifications:{s}")
            }
        })
        .collect();
    assert_eq!(llen_sum(&mut conn, &keys).await, 7);
    let m = exporter
        .wait_for("the prefixed queue", WAIT, |m| {
            m.get("celery_queue_length", &[("queue", "notifications")]) == Some(7.0)
        })
        .await;
    assert!(m
        .get("celery_queue_length", &[("queue", "pfx:notifications")])
        .is_none());
    // Events of db 5 with the prefix reach the exporter too.
    assert!(
        m.get(
            "celery_task_sent_total",
            &[
                ("name", "maintenance.cleanup_expired_holds"),
                ("queue", "notifications")
            ]
        ) == Some(7.0),
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_is_down_within_ten_seconds() {
    let redis = ThrowawayRedis::start();
    let exporter = celery_exporter(&redis, 0, &[]);
    let mut worker = CeleryWorker::start(&redis.url(0), "doomed@testhost", "default");
    exporter
        .wait_for("the worker to be up", WAIT, |m| {
            m.get("celery_worker_up", &[("worker", "doomed@testhost")]) == Some(1.0)
        })
        .await;
    worker.kill_main();
    let killed = std::time::Instant::now();
    exporter
        .wait_for(
            "the killed worker to be down",
            Duration::from_secs(10),
            |m| m.get("celery_worker_up", &[("worker", "doomed@testhost")]) == Some(0.0),
        )
        .await;
    eprintln!(
        "worker reported down {:.1}s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
}

/// A real `task-sent` event (from the fixture) for another uuid and name.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_turns_up_off_and_on_and_events_flow_again() {
    let mut redis = ThrowawayRedis::start();
    let exporter = celery_exporter(&redis, 0, &[]);
    exporter
        .wait_for("redis_up 1 and the event stream", WAIT, |m| {
            m.get("redis_up", &[]) == Some(1.0) && m.get("celery_event_stream_up", &[]) == Some(1.0)
        })
        .await;
    // Enough commands that the restarted server's count starts far below.
    let mut conn = redis.connection(0).await;
    for _ in 0..2000 {
        let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    }
    let commands = |m: &Metrics| m.get("redis_commands_processed_total", &[]).unwrap();
    let before = exporter
        .wait_for("the commands to be counted", WAIT, |m| commands(m) > 2000.0)
        .await;

    redis.kill();
    let m = exporter
        .wait_for("redis_up 0 and the Celery collectors down", WAIT, |m| {
            m.get("redis_up", &[]) == Some(0.0)
                && m.get("celery_event_stream_up", &[]) == Some(0.0)
                && m.collector_up("celery_queues") == Some(0.0)
        })
        .await;
    assert_eq!(m.collector_up("redis"), Some(0.0));
    assert_eq!(m.collector_up("celery_events"), Some(0.0));

    redis.restart();
    let m = exporter
        .wait_for("redis_up 1 and re-subscribed", WAIT, |m| {
            m.get("redis_up", &[]) == Some(1.0) && m.get("celery_event_stream_up", &[]) == Some(1.0)
        })
        .await;
    assert!(m.get("celery_event_stream_reconnects_total", &[]).unwrap() >= 1.0);
    // The new server counts its commands from 0; the counter continues
    // from where it was instead of going down.
    assert!(
        commands(&m) >= commands(&before),
        "redis_commands_processed_total went down across the restart: {} -> {}",
        commands(&before),
        commands(&m)
    );
    assert!(
        m.get(
            "bookedbarber_exporter_source_decreases_total",
            &[
                ("collector", "redis"),
                ("metric", "redis_commands_processed_total")
            ]
        )
        .unwrap()
            >= 1.0
    );

    let mut conn = redis.connection(0).await;
    for i in 0..5 {
        let _: i64 = conn
            .publish(
                "/0.celeryev/task.sent",
                task_sent_event(&format!("after-restart-{i}"), "bb.after"),
            )
            .await
            .unwrap();
    }
    exporter
        .wait_for("events after the restart to be counted", WAIT, |m| {
            m.get(
                "celery_task_sent_total",
                &[("name", "bb.after"), ("queue", "notifications")],
            ) == Some(5.0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_noticed_and_replaced() {
    let redis = ThrowawayRedis::start();
    let proxy = common::proxy::SilentableProxy::start(redis.port).await;
    let url = format!("redis://127.0.0.1:{}/0", proxy.port);
    let exporter = Exporter::start(
        &[
            "--redis.interval",
            "1s",
            "--redis.timeout",
            "1s",
            "--celery.events.idle-check",
            "2s",
            "--celery.discover-queues",
            "false",
        ],
        &[("BOOKEDBARBER_REDIS_URL", &url)],
    );
    exporter
        .wait_for("the event stream", WAIT, |m| {
            m.get("celery_event_stream_up", &[]) == Some(1.0)
                && m.collector_up("celery_events") == Some(1.0)
        })
        .await;

    // The path goes silent: nothing is closed, nothing arrives.
    proxy.go_silent();
    let silent_at = std::time::Instant::now();
    let m = exporter
        .wait_for("the silent stream to be noticed", WAIT, |m| {
            m.get("celery_event_stream_up", &[]) == Some(0.0)
        })
        .await;
    let noticed = silent_at.elapsed();
    println!("silent subscription noticed after {noticed:?}");
    // idle check 2 s + PING timeout 1 s, with room for a loaded machine.
    assert!(
        noticed < Duration::from_secs(10),
        "noticed after {noticed:?}"
    );
    assert_eq!(m.collector_up("celery_events"), Some(0.0));
    assert!(m.collector_errors("celery_events").unwrap() >= 1.0);

    proxy.resume();
    let m = exporter
        .wait_for("the stream to come back", WAIT, |m| {
            m.get("celery_event_stream_up", &[]) == Some(1.0)
        })
        .await;
    assert!(m.get("celery_event_stream_reconnects_total", &[]).unwrap() >= 1.0);
    let mut conn = redis.connection(0).await;
    for i in 0..5 {
        let _: i64 = conn
            .publish(
                "/0.celeryev/task.sent",
                task_sent_event(&format!("after-silence-{i}"), "bb.after_silence"),
            )
            .await
            .unwrap();
    }
    exporter
        .wait_for("events after the silence to be counted", WAIT, |m| {
            m.get(
                "celery_task_sent_total",
                &[("name", "bb.after_silence"), ("queue", "notifications")],
            ) == Some(5.0)
        })
        .await;
    assert!(exporter
        .logs()
        .contains("Celery event stream silent and its PING unanswered"));
}

fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_faster_than_the_consumer_stays_out_of_its_memory() {
    let redis = ThrowawayRedis::start();
    let exporter = subscribed_exporter(&redis, 0, &[]).await;
    let baseline = rss_bytes(exporter.pid());
    // Redis itself publishes 3 × 100,000 events (about 70 MB) as fast as it
    // can: far faster than a debug build decodes them. The backlog must
    // wait in Redis, which drops the subscriber at its output-buffer limit,
    // not in the exporter.
    let mut conn = redis.connection(0).await;
    let payload = task_sent_event("burst", "bb.burst");
    let mut peak = baseline;
    for _ in 0..3 {
        let _: () = redis::cmd("EVAL")
            .arg("for i = 1, 100000 do redis.call('PUBLISH', KEYS[1], ARGV[1]) end")
            .arg(1)
            .arg("/0.celeryev/task.sent")
            .arg(&payload)
            .query_async(&mut conn)
            .await
            .unwrap();
        for _ in 0..10 {
            peak = peak.max(rss_bytes(exporter.pid()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let m = exporter
        .wait_for("the stream back after the burst", WAIT, |m| {
            m.get("celery_event_stream_up", &[]) == Some(1.0)
        })
        .await;
    peak = peak.max(rss_bytes(exporter.pid()));
    println!(
        "burst: resident {:.1} MiB before, {:.1} MiB at most",
        baseline / 1048576.0,
        peak / 1048576.0
    );
    assert!(
        peak < baseline + 30.0 * 1048576.0,
        "the burst took the exporter from {:.1} to {:.1} MiB",
        baseline / 1048576.0,
        peak / 1048576.0
    );
    // What was not counted is accounted for: the subscription was dropped.
    let counted = m
        .by_label("celery_event_messages_total", "result")
        .values()
        .sum::<f64>();
    if counted < 300_000.0 {
        assert!(
            m.get("celery_event_stream_reconnects_total", &[]).unwrap() >= 1.0,
            "{counted} of 300,000 counted and no reconnect"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_caps_bound_series_and_memory() {
    let redis = ThrowawayRedis::start();
    let exporter = subscribed_exporter(
        &redis,
        0,
        &[
            "--celery.max-task-names",
            "100",
            "--celery.max-tracked-tasks",
            "2000",
        ],
    )
    .await;
    let mut conn = redis.connection(0).await;
    // Long names, yet within the 256 bytes a name may have: were they kept
    // past the cap, each round would add more than 2 MiB of names alone.
    let long = "x".repeat(230);
    let mut rss = Vec::new();
    let rounds = 5;
    for round in 0..rounds {
        for chunk in 0..10 {
            let mut pipe = redis::pipe();
            for i in 0..1_000 {
                let n = chunk * 1_000 + i;
                pipe.publish(
                    "/0.celeryev/task.sent",
                    task_sent_event(&format!("r{round}-u{n}"), &format!("bb.{long}_{round}_{n}")),
                );
            }
            let _: Vec<i64> = pipe.query_async(&mut conn).await.unwrap();
        }
        let expected = 10_000.0 * (round + 1) as f64;
        let m = exporter
            .wait_for("all events counted", WAIT, |m| {
                m.get("celery_event_messages_total", &[("result", "decoded")]) == Some(expected)
            })
            .await;
        let sent = m.family("celery_task_sent_total");
        assert_eq!(sent.len(), 101, "100 names and the overflow");
        let total: f64 = sent.values().sum();
        assert_eq!(total, expected, "every event counted, capped or not");
        assert_eq!(m.get("celery_event_tracked_tasks", &[]), Some(2000.0));
        rss.push(rss_bytes(exporter.pid()));
    }
    let mib: Vec<f64> = rss
        .iter()
        .map(|b| (b / 1048576.0 * 10.0).round() / 10.0)
        .collect();
    eprintln!("RSS after each 10,000 distinct names: {mib:?} MiB");
    // Once the caps are full, more distinct names and uuids cost nothing
    // but allocator noise.
    let growth = rss[rounds - 1] - rss[1];
    assert!(
        growth < 3.0 * 1048576.0,
        "RSS grew {:.1} MiB over 30,000 more names: {mib:?}",
        growth / 1048576.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_password_and_disabled_config_like_managed_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let password = "Redis-Secret-7";
    let (cert, key, ca_path) = (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
        ca.to_str().unwrap().to_owned(),
    );
    let redis = ThrowawayRedis::start_with(&[
        "--tls-port",
        "PORT",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_path,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        password,
        "--rename-command",
        "CONFIG",
        "",
    ]);
    let url = format!("rediss://:{password}@127.0.0.1:{}/0", redis.port);
    // The exporter trusts our test CA through the usual SSL_CERT_FILE.
    let exporter = Exporter::start(
        &["--redis.interval", "1s", "--celery.interval", "1s"],
        &[
            ("BOOKEDBARBER_REDIS_URL", &url),
            ("SSL_CERT_FILE", &ca_path),
        ],
    );
    let m = exporter
        .wait_for("Redis over TLS with a password", WAIT, |m| {
            m.get("redis_up", &[]) == Some(1.0)
                && m.get("celery_event_stream_up", &[]) == Some(1.0)
                && m.collector_up("celery_queues") == Some(1.0)
        })
        .await;
    // CONFIG is disabled, as on managed Redis: the limits come from INFO.
    assert_eq!(m.get("redis_maxclients", &[]), Some(10000.0));
    assert!(m.get("redis_memory_max_bytes", &[]).is_some());
    let logs = exporter.logs();
    assert!(
        !logs.contains(password) && !m.text.contains(password),
        "password leaked:\n{logs}"
    );
    assert!(
        logs.contains(&format!("server=127.0.0.1:{}/0", redis.port)),
        "{logs}"
    );

    // A wrong password is an error, not a crash, and is not logged either.
    let wrong = format!("rediss://:Wrong-Pass-3@127.0.0.1:{}/0", redis.port);
    let exporter = Exporter::start(
        &["--redis.interval", "1s"],
        &[
            ("BOOKEDBARBER_REDIS_URL", &wrong),
            ("SSL_CERT_FILE", &ca_path),
        ],
    );
    let m = exporter
        .wait_for("redis_up 0", WAIT, |m| m.get("redis_up", &[]) == Some(0.0))
        .await;
    assert_eq!(m.get("celery_event_stream_up", &[]), Some(0.0));
    assert!(
        !exporter.logs().contains("Wrong-Pass-3"),
        "{}",
        exporter.logs()
    );
}
