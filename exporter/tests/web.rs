//! The HTTP side: TLS, client certificates, headers and basic auth from
//! --web.config.file, its reloads, gzip, the health and readiness endpoints,
//! the listening socket, and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::celery::*;
use common::*;
use redis::AsyncCommands;

#[tokio::test]
async fn tls_and_basic_auth_protect_everything_but_healthz_and_readyz() {
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

    for path in ["/metrics", "/"] {
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
    // Kubelet probes carry no credentials: both probes answer without.
    let r = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/readyz without credentials");
    assert_eq!(r.text().await.unwrap(), "ready\n");

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
            .contains("message=\"shutting down\" signal=SIGTERM"),
        "{}",
        exporter.logs()
    );
}

fn write_web_config(dir: &Path, text: &str) -> String {
    let path = dir.join("web.yml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn signal(exporter: &Exporter, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &exporter.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn scrape_as(client: &reqwest::Client, url: &str, user: &str, password: &str) -> Metrics {
    let r = client
        .get(url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {url} as {user}");
    Metrics::parse(&r.text().await.unwrap())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Item 1: bcrypt runs off the async threads, one check at a time, and a
/// flood of wrong passwords is turned away; scrapes and the Celery event
/// stream carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_flood_stalls_neither_scrapes_nor_the_event_stream() {
    let redis = ThrowawayRedis::start();
    let dir = tempfile::tempdir().unwrap();
    // The tests run the debug build, where bcrypt is about 8 times slower
    // than in a release build: cost 7 here takes what cost 10 (what
    // `htpasswd -nBC 10` makes) takes in release, about 70 ms.
    let hash = bcrypt::hash("scrape-pw", 7).unwrap();
    let web = write_web_config(
        dir.path(),
        &format!("basic_auth_users:\n  prometheus: {hash}\n"),
    );
    let exporter = Exporter::start(
        &[
            "--web.config.file",
            &web,
            "--redis.interval",
            "1s",
            "--celery.interval",
            "1s",
        ],
        &[("BOOKEDBARBER_REDIS_URL", &redis.url(0))],
    );
    let metrics_url = format!("{}/metrics", exporter.base_url);
    let client = http_client(None);
    // The scraper's pair is checked (and remembered) before the flood.
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape_as(&client, &metrics_url, "prometheus", "scrape-pw")
        .await
        .get("celery_event_stream_up", &[])
        != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "no event stream\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // At least WRONG requests with distinct wrong passwords from 50
    // connections at once, and on until CHECKED of them have really been
    // through bcrypt: the checking thread is kept busy for seconds.
    const WRONG: usize = 300;
    const CHECKED: usize = 100;
    const EVENTS: usize = 2000;
    let flood = {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let (client, url) = (client.clone(), metrics_url.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let sent = Arc::new(AtomicUsize::new(0));
            let checked = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..50)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    let (sent, checked) = (sent.clone(), checked.clone());
                    tokio::spawn(async move {
                        let mut statuses = Vec::new();
                        while (sent.load(SeqCst) < WRONG || checked.load(SeqCst) < CHECKED)
                            && started.elapsed() < Duration::from_secs(60)
                        {
                            let i = sent.fetch_add(1, SeqCst);
                            let status = client
                                .get(&url)
                                .basic_auth("prometheus", Some(format!("guess-{i}")))
                                .send()
                                .await
                                .map(|r| r.status().as_u16())
                                // No answer within the client's 10 s.
                                .unwrap_or(0);
                            match status {
                                401 => {
                                    checked.fetch_add(1, SeqCst);
                                }
                                // Turned away: come back a little later.
                                429 => tokio::time::sleep(Duration::from_millis(20)).await,
                                _ => {}
                            }
                            statuses.push(status);
                        }
                        statuses
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for w in workers {
                statuses.extend(w.await.unwrap());
            }
            (statuses, started.elapsed())
        })
    };
    let events = {
        let redis_url = redis.url(0);
        tokio::spawn(async move {
            let mut conn = redis::Client::open(redis_url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for i in 0..EVENTS {
                let _: i64 = conn
                    .publish(
                        "/0.celeryev/task.sent",
                        task_sent_event(&format!("flood-{i}"), "bb.during_flood"),
                    )
                    .await
                    .unwrap();
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut latencies = Vec::new();
    while !flood.is_finished() || latencies.len() < 20 {
        let started = Instant::now();
        scrape_as(&client, &metrics_url, "prometheus", "scrape-pw").await;
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (statuses, flood_time) = flood.await.unwrap();
    events.await.unwrap();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        *latencies.last().unwrap(),
    );
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let busy = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "{} wrong passwords in {flood_time:?}: {refused} refused after bcrypt (401), {busy} turned away (429); \
         {} authenticated scrapes meanwhile: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        statuses.len(),
        latencies.len()
    );
    assert_eq!(
        refused + busy,
        statuses.len(),
        "never anything but 401 or 429: {statuses:?}"
    );
    assert!(
        statuses.len() >= WRONG && refused >= CHECKED,
        "the flood ran its course"
    );
    assert!(
        p99 < Duration::from_secs(1),
        "authenticated scrapes stalled by the flood: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    // Every event published during the flood is counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape_as(&client, &metrics_url, "prometheus", "scrape-pw").await;
        let sent: f64 = m
            .family("celery_task_sent_total")
            .iter()
            .filter(|(labels, _)| {
                labels
                    .iter()
                    .any(|(k, v)| k == "name" && v == "bb.during_flood")
            })
            .map(|(_, v)| v)
            .sum();
        if sent == EVENTS as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} of {EVENTS} events counted\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Item 3: mutual TLS, optional client certificates, response headers.
#[tokio::test]
async fn client_certificates_and_response_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _cert, _key) = certificates(dir.path());
    let (client_crt, client_key) = client_certificate(dir.path(), "prometheus");
    // A client certificate from a CA the exporter does not trust.
    let foreign = tempfile::tempdir().unwrap();
    certificates(foreign.path());
    let (foreign_crt, foreign_key) = client_certificate(foreign.path(), "intruder");
    let ca_pem = std::fs::read(&ca).unwrap();
    let client_with = |identity: Option<reqwest::Identity>| {
        install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap());
        if let Some(identity) = identity {
            b = b.identity(identity);
        }
        b.build().unwrap()
    };
    let trusted = || client_with(Some(identity(&client_crt, &client_key)));
    let untrusted = || client_with(Some(identity(&foreign_crt, &foreign_key)));

    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
         http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
         X-Content-Type-Options: nosniff\n    Strict-Transport-Security: max-age=31536000\n",
    );
    let exporter = Exporter::start(&["--web.config.file", &web], &[]);
    let url = format!("{}/metrics", exporter.base_url);
    let r = trusted().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "deny");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let r = trusted()
        .get(format!("{}/healthz", exporter.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-frame-options"], "deny", "on every response");
    assert!(
        client_with(None).get(&url).send().await.is_err(),
        "no client certificate: refused in the handshake"
    );
    assert!(
        untrusted().get(&url).send().await.is_err(),
        "a certificate from another CA: refused"
    );
    assert!(exporter.logs().contains("TLS client certificates required"));

    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
    );
    let exporter = Exporter::start(&["--web.config.file", &web], &[]);
    let url = format!("{}/metrics", exporter.base_url);
    assert_eq!(
        client_with(None).get(&url).send().await.unwrap().status(),
        200
    );
    assert_eq!(trusted().get(&url).send().await.unwrap().status(), 200);
    assert!(untrusted().get(&url).send().await.is_err());
}

/// A TLS handshake with rustls limited to `suites` and `versions`; returns
/// the negotiated suite and the server's certificate.
fn handshake(
    address: &str,
    ca: &Path,
    suites: Option<&[rustls::SupportedCipherSuite]>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(String, Vec<u8>), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites.to_vec();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(address).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    Ok((suite, cert))
}

/// Item 3: min_version, max_version and cipher_suites as Go names them.
#[test]
fn tls_versions_and_cipher_suites() {
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::version::{TLS12, TLS13};
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = certificates(dir.path());
    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n",
    );
    let exporter = Exporter::start(&["--web.config.file", &web], &[]);
    let address = exporter.base_url.trim_start_matches("https://");
    assert!(
        handshake(address, &ca, None, &[&TLS12]).is_err(),
        "TLS 1.2 refused"
    );
    let (suite, _) = handshake(address, &ca, None, &[&TLS13]).unwrap();
    assert!(suite.starts_with("TLS13_"), "{suite}");

    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS12\n  \
         cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n",
    );
    let exporter = Exporter::start(&["--web.config.file", &web], &[]);
    let address = exporter.base_url.trim_start_matches("https://");
    assert!(
        handshake(address, &ca, None, &[&TLS13]).is_err(),
        "TLS 1.3 refused"
    );
    assert!(
        handshake(
            address,
            &ca,
            Some(&[cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]),
            &[&TLS12]
        )
        .is_err(),
        "a suite not listed is refused"
    );
    let (suite, _) = handshake(address, &ca, None, &[&TLS12]).unwrap();
    assert_eq!(suite, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");

    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
    );
    let log = match Exporter::try_start(&["--web.config.file", &web], &[]) {
        Ok(_) => panic!("started with a CBC suite"),
        Err(log) => log,
    };
    assert!(
        log.contains("TLS_RSA_WITH_AES_128_CBC_SHA") && log.contains("not implemented by rustls"),
        "{log}"
    );
}

fn wait_until(what: &str, timeout: Duration, exporter: &Exporter, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            exporter.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Item 3: certificates rotated in place are picked up; broken files keep
/// the previous certificate in service, logged and counted.
#[tokio::test]
async fn rotated_certificates_are_served_and_broken_ones_are_not() {
    use rustls::version::TLS13;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let exporter = Exporter::start(&["--web.config.file", &web], &[]);
    let address = exporter.base_url.trim_start_matches("https://").to_owned();
    let served = || handshake(&address, &ca, None, &[&TLS13]).map(|(_, c)| c);
    let first = served().unwrap();

    // cert-manager's way: new files written over the old ones.
    let (new_cert, new_key) = server_certificate(dir.path(), "rotated");
    let new_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(&new_cert)
            .unwrap()
            .to_vec()
    };
    assert_ne!(first, new_der);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let started = Instant::now();
    wait_until(
        "the rotated certificate",
        Duration::from_secs(20),
        &exporter,
        || served().unwrap() == new_der,
    );
    println!("rotated certificate served after {:?}", started.elapsed());
    assert!(exporter
        .logs()
        .contains("TLS certificate files changed: reloaded"));

    // A broken rotation: the certificate being served stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    wait_until(
        "the broken file to be noticed",
        Duration::from_secs(20),
        &exporter,
        || exporter.logs().contains("holds no PEM certificate"),
    );
    assert!(exporter
        .logs()
        .contains("cannot be used; still serving the previous certificate"));
    assert_eq!(served().unwrap(), new_der);
    let client = http_client(Some(&std::fs::read(&ca).unwrap()));
    let m = Metrics::parse(
        &client
            .get(format!("{}/metrics", exporter.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let web_label = [("config", "web")];
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_last_reload_successful",
            &web_label
        ),
        Some(0.0)
    );
    // At least 1: the copy above may have been seen half done (new key,
    // old certificate), which is refused and counted too.
    assert!(
        m.get(
            "bookedbarber_exporter_config_reload_failures_total",
            &web_label
        ) >= Some(1.0),
        "{}",
        m.text
    );
}

/// Item 10: SIGHUP reloads the web config; an invalid one is refused, the
/// previous one stays, and the process lives on.
#[tokio::test]
async fn sighup_reloads_the_web_config_and_survives_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let users = |password: &str| {
        format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt::hash(password, 4).unwrap()
        )
    };
    let web = write_web_config(dir.path(), &users("first-pw"));
    let exporter = Exporter::start(&["--web.config.file", &web], &[]);
    let url = format!("{}/metrics", exporter.base_url);
    let client = http_client(None);
    let status = |password: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(&url)
                .basic_auth("prometheus", Some(password))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("first-pw").await, 200);
    let m = scrape_as(&client, &url, "prometheus", "first-pw").await;
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_last_reload_successful",
            &[("config", "web")]
        ),
        Some(1.0)
    );

    std::fs::write(&web, users("second-pw")).unwrap();
    signal(&exporter, "HUP");
    wait_until("the reload", Duration::from_secs(10), &exporter, || {
        exporter
            .logs()
            .contains("message=\"configuration reloaded\" config=web")
    });
    assert_eq!(status("second-pw").await, 200);
    assert_eq!(status("first-pw").await, 401);

    std::fs::write(&web, "basic_auth_users:\n  prometheus: plaintext-pw\n").unwrap();
    signal(&exporter, "HUP");
    wait_until(
        "the failed reload",
        Duration::from_secs(10),
        &exporter,
        || exporter.logs().contains("configuration reload failed"),
    );
    assert_eq!(status("second-pw").await, 200, "the previous config stays");
    let m = scrape_as(&client, &url, "prometheus", "second-pw").await;
    let web_label = [("config", "web")];
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_last_reload_successful",
            &web_label
        ),
        Some(0.0)
    );
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_reload_failures_total",
            &web_label
        ),
        Some(1.0)
    );
    let logs = exporter.logs();
    assert!(
        !logs.contains("plaintext-pw"),
        "a secret in the log:\n{logs}"
    );
    assert!(logs.contains("basic_auth_users.prometheus"), "{logs}");

    // Fixed again: the next SIGHUP recovers.
    std::fs::write(&web, users("third-pw")).unwrap();
    signal(&exporter, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("third-pw").await != 200 {
        assert!(Instant::now() < deadline, "{}", exporter.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = scrape_as(&client, &url, "prometheus", "third-pw").await;
    assert_eq!(
        m.get(
            "bookedbarber_exporter_config_last_reload_successful",
            &web_label
        ),
        Some(1.0)
    );
}

#[test]
fn sighup_without_a_web_config_does_not_kill() {
    let mut exporter = Exporter::start(&[], &[]);
    signal(&exporter, "HUP");
    wait_until(
        "the SIGHUP to be handled",
        Duration::from_secs(10),
        &exporter,
        || exporter.logs().contains("nothing to reload"),
    );
    assert!(
        exporter.wait_exit(Duration::from_millis(500)).is_none(),
        "{}",
        exporter.logs()
    );
}

/// Item 11: `:port` serves IPv6 and IPv4.
#[tokio::test]
async fn all_interfaces_means_ipv6_and_ipv4() {
    let exporter = Exporter::try_start_on(":0", &[], &[]).unwrap();
    let port = exporter.base_url.rsplit(':').next().unwrap().to_owned();
    for host in ["[::1]", "127.0.0.1"] {
        assert_eq!(
            get_text(&format!("http://{host}:{port}/healthz")).await,
            "ok\n",
            "{host}"
        );
    }
}

/// Item 11: a half-sent request is closed after the header timeout, and
/// SIGTERM still ends the process while one is open.
#[test]
fn half_sent_requests_are_closed_and_sigterm_still_works() {
    let mut exporter = Exporter::start(&[], &[]);
    let address = exporter.base_url.trim_start_matches("http://").to_owned();
    let half_sent = || {
        let mut s = TcpStream::connect(&address).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loca").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let mut s = half_sent();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    let closed_after = started.elapsed();
    println!("half-sent request closed after {closed_after:?}");
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(closed_after < Duration::from_secs(15), "{closed_after:?}");

    let _held = half_sent();
    std::thread::sleep(Duration::from_millis(200));
    signal(&exporter, "TERM");
    let exit = exporter
        .wait_exit(Duration::from_secs(15))
        .expect("exporter still running 15s after SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", exporter.logs());
}

/// Item 3/11: --check-config loads the certificate, key and CA.
#[test]
fn check_config_loads_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, _key) = certificates(dir.path());
    server_certificate(dir.path(), "other");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    let check = |tls: &str| {
        let web = write_web_config(dir.path(), &format!("tls_server_config:\n{tls}"));
        let out = Command::new(exporter_bin())
            .args(["--check-config", "--web.config.file", &web])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = check("  cert_file: server.crt\n  key_file: server.key\n");
    assert!(ok && text.contains("configuration is valid"), "{text}");
    let (ok, text) = check(&format!(
        "  cert_file: {}\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        cert.display(),
        ca.display()
    ));
    assert!(ok, "{text}");
    for (tls, expected) in [
        ("  cert_file: missing.crt\n  key_file: server.key\n", "missing.crt"),
        (
            "  cert_file: garbage.pem\n  key_file: server.key\n",
            "garbage.pem holds no PEM certificate",
        ),
        ("  cert_file: server.crt\n  key_file: garbage.pem\n", "garbage.pem holds no PEM private key"),
        ("  cert_file: server.crt\n  key_file: other.key\n", "other.key"),
        (
            "  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: garbage.pem\n",
            "client_ca_file",
        ),
    ] {
        let (ok, text) = check(tls);
        assert!(!ok, "accepted:\n{tls}\n{text}");
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        assert!(!text.contains("configuration is valid"), "{text}");
    }
}
