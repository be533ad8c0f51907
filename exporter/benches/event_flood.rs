//! Event-flood benchmark: publishes real-format Celery events (built from
//! the captured fixtures) to a throwaway redis-server at target rates and
//! reports how many the exporter counted, its CPU and its memory. Prints
//! figures; asserts nothing about speed.
//!
//!   cargo bench --bench event_flood
//!   FLOOD_RATES=10000,50000 FLOOD_SECONDS=5 cargo bench --bench event_flood
//!   FLOOD_POSTGRES_DSN=postgres://postgres@127.0.0.1:5432/bbx_bench_1000000 \
//!       cargo bench --bench event_flood      # every source on, default intervals
//!
//! Each message carries one event, the worst case for per-message cost
//! (prefork workers batch up to 24 events per message).

mod common;

use std::process::{Command, Stdio};

use common::{cpu_seconds, free_port, get_text, rss_mib, KillOnDrop};
use std::time::{Duration, Instant};

use base64::Engine;

fn fixture(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/tests/fixtures/celery/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// An envelope like `template`'s whose body is `event` (unbatched).
fn envelope(template: &serde_json::Value, event: &serde_json::Value) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut e = template.clone();
    e["body"] = b64.encode(serde_json::to_vec(event).unwrap()).into();
    serde_json::to_vec(&e).unwrap()
}

fn body(template: &serde_json::Value) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let v: serde_json::Value =
        serde_json::from_slice(&b64.decode(template["body"].as_str().unwrap()).unwrap()).unwrap();
    match v {
        serde_json::Value::Array(mut a) => a.remove(0),
        other => other,
    }
}

/// A cycle of messages: for each task, sent → received → started → succeeded.
fn messages(tasks: usize) -> Vec<(String, Vec<u8>)> {
    let sent = fixture("event-task-sent.json");
    let received = fixture("event-unbatched-task-received.json");
    let started = fixture("event-unbatched-task-started.json");
    let succeeded = fixture("event-unbatched-task-succeeded.json");
    let mut out = Vec::with_capacity(tasks * 4);
    for i in 0..tasks {
        let uuid = format!("00000000-0000-4000-8000-{i:012}");
        let name = format!("bookedbarber.task_{}", i % 50);
        for (template, channel) in [
            (&sent, "/0.celeryev/task.sent"),
            (&received, "/0.celeryev/task.received"),
            (&started, "/0.celeryev/task.started"),
            (&succeeded, "/0.celeryev/task.succeeded"),
        ] {
            let mut event = body(template);
            event["uuid"] = uuid.clone().into();
            if event.get("name").is_some() {
                event["name"] = name.clone().into();
            }
            out.push((channel.to_owned(), envelope(template, &event)));
        }
    }
    out
}

async fn counted(client: &reqwest::Client, base: &str) -> f64 {
    let text = get_text(client, &format!("{base}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with("celery_event_messages_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rates: Vec<u64> = std::env::var("FLOOD_RATES")
        .unwrap_or_else(|_| "10000,50000,100000".into())
        .split(',')
        .map(|r| r.trim().parse().unwrap())
        .collect();
    let seconds: u64 = std::env::var("FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);

    let redis_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let redis_server = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is needed");
    let redis_server = KillOnDrop(redis_server);
    while std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    let port = free_port();
    let mut exporter = Command::new(env!("CARGO_BIN_EXE_bookedbarber-exporter"));
    exporter
        .args([
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--log.level",
            "warn",
        ])
        .env("BOOKEDBARBER_REDIS_URL", &url)
        .env_remove("BOOKEDBARBER_POSTGRES_DSN");
    // With a database, every source runs at its default interval (the
    // PostgreSQL collectors and the business queries included), as in
    // production; without one, only the Redis side, its polling slowed down.
    match std::env::var("FLOOD_POSTGRES_DSN") {
        Ok(dsn) => {
            println!("every source on: PostgreSQL and business queries from FLOOD_POSTGRES_DSN");
            exporter.env("BOOKEDBARBER_POSTGRES_DSN", dsn);
        }
        Err(_) => {
            exporter.args(["--redis.interval", "60s", "--celery.interval", "60s"]);
        }
    }
    let exporter = exporter.spawn().unwrap();
    let pid = exporter.id();
    let exporter = KillOnDrop(exporter);
    // No kept-alive connections: the exporter closes one idle for 10 s, and
    // the flood leaves it idle longer than that.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    loop {
        if let Ok(r) = client.get(format!("{base}/metrics")).send().await {
            if r.text().await.unwrap().contains("celery_event_stream_up 1") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let cycle = messages(5_000);
    let message_bytes: usize = cycle.iter().map(|(_, m)| m.len()).sum::<usize>() / cycle.len();
    println!("event flood: one event per message, {message_bytes} bytes per message on average, {seconds} s per rate");
    println!(
        "  {:>10} {:>12} {:>12} {:>10} {:>12} {:>10}",
        "target/s", "published/s", "counted", "lost", "CPU cores", "RSS MiB"
    );

    let mut next = 0usize;
    let mut published_total = 0u64;
    for rate in rates {
        let before_cpu = cpu_seconds(pid);
        let started = Instant::now();
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1) as usize;
        let mut published = 0u64;
        let mut deadline = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            let mut pipe = redis::pipe();
            for _ in 0..per_tick {
                let (channel, payload) = &cycle[next % cycle.len()];
                pipe.publish(channel, payload).ignore();
                next += 1;
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
            published += per_tick as u64;
            deadline += tick;
            tokio::time::sleep_until(deadline.into()).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        published_total += published;
        // Let the exporter drain what is buffered, then read its count.
        let mut last = -1.0;
        let mut count = counted(&client, &base).await;
        while count != last {
            last = count;
            tokio::time::sleep(Duration::from_millis(500)).await;
            count = counted(&client, &base).await;
        }
        let cpu = (cpu_seconds(pid) - before_cpu) / elapsed;
        let lost = published_total as f64 - count;
        println!(
            "  {:>10} {:>12.0} {:>12.0} {:>10.0} {:>12.2} {:>10.1}",
            rate,
            published as f64 / elapsed,
            count,
            lost,
            cpu,
            rss_mib(pid)
        );
    }
    drop(exporter);
    drop(redis_server);
}
