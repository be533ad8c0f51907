//! The HTTP side: TLS and basic auth from --web.config.file, gzip, the
//! health and readiness endpoints, and graceful shutdown.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn tls_and_basic_auth_protect_everything_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _cert, key) = certificates(dir.path());
    let hash = bcrypt::hash("scrape-pw", 6).unwrap();
    let web = dir.path().join("web.yml");
    // Relative file names: resolved against the config file's folder.
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: {}\nbasic_auth_users:\n  prometheus: {hash}\n", key.display()),
    )
    .unwrap();
    let exporter = Exporter::start(&["--web.config.file", web.to_str().unwrap()], &[]);
    assert!(
        exporter.base_url.starts_with("https://127.0.0.1:"),
        "{}",
        exporter.base_url
    );
    let client = http_client(Some(&std::fs::read(&ca).unwrap()));
    let url = |path: &str| format!("{}{path}", exporter.base_url);

    for path in ["/metrics", "/readyz", "/"] {
        let r = client.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert!(r.headers().contains_key("www-authenticate"));
        let r = client
            .get(url(path))
            .basic_auth("prometheus", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong password");
        let r = client
            .get(url(path))
            .basic_auth("intruder", Some("scrape-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with an unknown user");
    }
    let r = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let r = client
        .get(url("/metrics"))
        .basic_auth("prometheus", Some("scrape-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("bookedbarber_exporter_build_info{version=\""),
        "{body}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");

    // Plain HTTP to the TLS port gets no metrics.
    let plain = exporter.base_url.replace("https://", "http://");
    let over_http = http_client(None)
        .get(format!("{plain}/metrics"))
        .send()
        .await;
    assert!(!over_http.is_ok_and(|r| r.status() == 200));
}

#[tokio::test]
async fn gzip_readiness_landing_page_and_custom_path() {
    let exporter = Exporter::start(&["--web.telemetry-path", "/custom"], &[]);
    install_crypto_provider();
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = client
        .get(format!("{}/custom", exporter.base_url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let compressed = r.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("bookedbarber_exporter_build_info"), "{text}");

    let r = client
        .get(format!("{}/custom", exporter.base_url))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("content-encoding").is_none(),
        "gzip only when asked"
    );
    let r = client
        .get(format!("{}/metrics", exporter.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // No collector configured: nothing to wait for.
    assert_eq!(
        get_text(&format!("{}/readyz", exporter.base_url)).await,
        "ready\n"
    );
    let landing = get_text(&format!("{}/", exporter.base_url)).await;
    assert!(landing.contains("href=\"/custom\""), "{landing}");
    assert!(exporter
        .logs()
        .contains("PostgreSQL and business collectors are disabled"));
}

#[tokio::test]
async fn readyz_waits_for_the_first_collection() {
    // A server that accepts connections but never answers keeps the first
    // PostgreSQL collection from finishing until its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dsn = format!("postgres://u@127.0.0.1:{port}/db");
    let exporter = Exporter::start(
        &["--postgres.timeout", "3s", "--business.enabled=false"],
        &[("BOOKEDBARBER_POSTGRES_DSN", &dsn)],
    );
    let r = http_client(None)
        .get(format!("{}/readyz", exporter.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("postgres"));
    let m = exporter
        .wait_for(
            "the first collection to time out",
            Duration::from_secs(10),
            |m| m.get("pg_up", &[]).is_some(),
        )
        .await;
    assert_eq!(m.get("pg_up", &[]), Some(0.0));
    // The deeper PostgreSQL collectors start up to a second later (spread
    // over their shared connection) and time out the same way.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = http_client(None)
            .get(format!("{}/readyz", exporter.base_url))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            assert_eq!(r.text().await.unwrap(), "ready\n");
            break;
        }
        let pending = r.text().await.unwrap();
        let names: Vec<&str> = pending
            .trim()
            .rsplit(": ")
            .next()
            .unwrap()
            .split(", ")
            .collect();
        assert!(
            std::time::Instant::now() < deadline && !names.contains(&"postgres"),
            "still not ready: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut exporter = Exporter::start(&[], &[]);
    let status = Command::new("kill")
        .args(["-TERM", &exporter.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = exporter
        .wait_exit(Duration::from_secs(15))
        .expect("exporter still running 15s after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}\n{}", exporter.logs());
    assert!(
        exporter
            .logs()
            .contains("msg=\"shutting down\" signal=SIGTERM"),
        "{}",
        exporter.logs()
    );
}
