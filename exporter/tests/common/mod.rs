//! Helpers shared by the integration tests: real PostgreSQL databases,
//! the real exporter binary, scraping and parsing `/metrics`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod celery;
pub mod cluster;
pub mod prometheus;
pub mod proxy;
pub mod watch;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub const EXPORTER: &str = env!("CARGO_BIN_EXE_bookedbarber-exporter");

/// The exporter binary the tests run: this build, or `BBX_EXPORTER_BIN`
/// (to show that a test fails against an older build).
pub fn exporter_bin() -> PathBuf {
    std::env::var_os("BBX_EXPORTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(EXPORTER))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The server the tests create their databases on. Never a database of
/// anyone else's: every test makes its own and drops it.
pub fn admin_url() -> String {
    std::env::var("BBX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique_name(prefix: &str) -> String {
    format!(
        "bbx_{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn admin_pool() -> PgPool {
    let url = format!("{}/postgres", admin_url());
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {url} ({e}). Start it (Debian: `pg_ctlcluster 15 main start`, \
                 or `scripts/services`), or point BBX_TEST_POSTGRES_URL at a server where the tests may create databases."
            )
        })
}

/// A database of our own, with the BookedBarber schema and demo functions,
/// dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
    /// Roles made for this database, dropped with it.
    roles: Vec<String>,
}

impl TestDb {
    pub async fn create(prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        let admin = admin_pool().await;
        // Separate statements: a multi-statement string is one transaction,
        // which CREATE DATABASE refuses.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .expect("create test database");
        }
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&format!("{}/{name}", admin_url()))
            .await
            .expect("connect to test database");
        for file in ["schema.sql", "demo.sql"] {
            let sql = std::fs::read_to_string(repo_root().join("scripts").join(file)).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect(file);
        }
        TestDb {
            name,
            pool,
            roles: Vec::new(),
        }
    }

    /// A login role with only what the docs ask for: pg_monitor and SELECT
    /// on the business tables. Dropped with the database, even if the test
    /// fails.
    pub async fn monitoring_role(&mut self) -> String {
        let role = unique_name("role");
        self.roles.push(role.clone());
        self.exec(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'not-used-with-trust';
             GRANT pg_monitor TO {role};
             GRANT CONNECT ON DATABASE \"{db}\" TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON users, appointments, payments, payouts, guest_bookings TO {role};",
            db = self.name
        ))
        .await;
        role
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let roles = std::mem::take(&mut self.roles);
        // Drop runs outside async context; a small runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = PgPoolOptions::new()
                    .connect(&format!("{}/postgres", admin_url()))
                    .await
                {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    // The database held the roles' grants; now they can go.
                    for role in roles {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP ROLE IF EXISTS {role}"
                        )))
                        .execute(&admin)
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

/// The exporter binary, running on a free loopback port.
pub struct Exporter {
    child: Child,
    pub base_url: String,
    pub log: Arc<Mutex<String>>,
}

impl Exporter {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Exporter {
        Self::try_start(args, env).unwrap_or_else(|log| panic!("exporter did not start:\n{log}"))
    }

    /// Starts the exporter; on failure returns what it logged.
    pub fn try_start(args: &[&str], env: &[(&str, &str)]) -> Result<Exporter, String> {
        Self::try_start_on("127.0.0.1:0", args, env)
    }

    /// Starts the exporter on `listen` (`--web.listen-address`).
    pub fn try_start_on(
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Exporter, String> {
        let mut cmd = Command::new(exporter_bin());
        cmd.args(["--web.listen-address", listen, "--log.level", "debug"])
            .args(args)
            .env_remove("BOOKEDBARBER_POSTGRES_DSN")
            .env_remove("BOOKEDBARBER_REDIS_URL")
            .env_remove("BOOKEDBARBER_BUSINESS_QUERIES")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn exporter");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = log.lock().unwrap().clone();
            if let Some(address) = text
                .lines()
                .find(|l| l.contains("message=listening"))
                .and_then(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                })
            {
                let scheme = if text.contains("scheme=https") {
                    "https"
                } else {
                    "http"
                };
                return Ok(Exporter {
                    child,
                    base_url: format!("{scheme}://{address}"),
                    log,
                });
            }
            if let Ok(Some(_)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(log.lock().unwrap().clone());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("no 'listening' line within 20s:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn scrape(&self) -> String {
        get_text(&format!("{}/metrics", self.base_url)).await
    }

    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&self.scrape().await)
    }

    /// Scrapes until `check` accepts the metrics, or panics after `timeout`
    /// with the last scrape and the exporter's log.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics().await;
            if check(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}\n--- metrics ---\n{}\n--- log ---\n{}", m.text, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client; `extra_root` trusts one more CA (for the TLS tests).
pub fn http_client(extra_root: Option<&[u8]>) -> reqwest::Client {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(pem) = extra_root {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap());
    }
    builder.build().unwrap()
}

pub async fn get_text(url: &str) -> String {
    let response = http_client(None)
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.text().await.unwrap()
}

/// A parsed scrape: series (name plus sorted labels) to value.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub series: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match key.split_once('{') {
                None => (key.to_owned(), Vec::new()),
                Some((name, rest)) => (
                    name.to_owned(),
                    parse_labels(rest.strip_suffix('}').unwrap()),
                ),
            };
            series.insert((name, labels), value);
        }
        Metrics {
            text: text.to_owned(),
            series,
        }
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.series.get(&(name.to_owned(), l)).copied()
    }

    /// `bookedbarber_exporter_collector_up` of one collector.
    pub fn collector_up(&self, collector: &str) -> Option<f64> {
        self.get(
            "bookedbarber_exporter_collector_up",
            &[("collector", collector)],
        )
    }

    /// `bookedbarber_exporter_collector_errors_total` of one collector.
    pub fn collector_errors(&self, collector: &str) -> Option<f64> {
        self.get(
            "bookedbarber_exporter_collector_errors_total",
            &[("collector", collector)],
        )
    }

    /// Every series of a family, as label set to value.
    pub fn family(&self, name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
        self.series
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }

    /// A family with one label, as label value to sample value.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.family(name)
            .into_iter()
            .filter_map(|(labels, v)| {
                labels
                    .into_iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, lv)| (lv, v))
            })
            .collect()
    }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out.sort();
    out
}

/// Runs `promtool check metrics` on a scrape; returns its findings.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool not found ({e}): install the Debian package `prometheus` (scripts/test does)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && findings.trim().is_empty() {
        Ok(())
    } else {
        Err(findings)
    }
}

/// The exporter on database `db` with the built-in business queries at a
/// 1 s interval and the time limit `timeout`, plus `args`.
pub fn fast_business_exporter(db: &str, timeout: &str, args: &[&str]) -> Exporter {
    let dir = tempfile::tempdir().unwrap();
    let queries = fast_builtin_queries(dir.path(), timeout);
    // The file is read at start-up; the folder may go after that.
    let mut all = vec!["--business.queries", queries.to_str().unwrap()];
    all.extend_from_slice(args);
    Exporter::start(
        &all,
        &[(
            "BOOKEDBARBER_POSTGRES_DSN",
            &format!("{}/{db}", admin_url()),
        )],
    )
}

/// The built-in query file with every interval shortened, so tests see
/// changes within a second or two, and every query's time limit `timeout`.
pub fn fast_builtin_queries(dir: &Path, timeout: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("config/business-queries.toml")).unwrap();
    let fast: String = text
        .lines()
        .filter(|l| !l.starts_with("interval = ") && !l.starts_with("timeout = "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(
            "[defaults]\n",
            &format!("[defaults]\ninterval = \"1s\"\ntimeout = \"{timeout}\"\n"),
        );
    let path = dir.join("fast-queries.toml");
    std::fs::write(&path, fast).unwrap();
    path
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian package openssl) is needed to make test certificates");
    assert!(status.success(), "openssl {args:?}");
}

/// A new 2048-bit key and a certificate valid for a day.
const NEW_CERT: [&str; 7] = [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
];

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it;
/// returns (CA certificate, server certificate, server key).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            &NEW_CERT[..],
            &[
                "-subj",
                "/CN=test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    let (cert, key) = server_certificate(dir, "server");
    (dir.join("ca.crt"), cert, key)
}

/// Another server certificate for 127.0.0.1 from the CA in `dir` (made by
/// `certificates`): `<name>.crt` and `<name>.key`.
pub fn server_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    signed_certificate(
        dir,
        name,
        "/CN=localhost",
        &[
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
            "extendedKeyUsage=serverAuth",
        ],
    )
}

/// A client certificate from the CA in `dir` (made by `certificates`):
/// `<name>.crt` and `<name>.key`.
pub fn client_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    signed_certificate(
        dir,
        name,
        &format!("/CN={name}"),
        &["extendedKeyUsage=clientAuth"],
    )
}

fn signed_certificate(dir: &Path, name: &str, subject: &str, ext: &[&str]) -> (PathBuf, PathBuf) {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let mut args: Vec<&str> = NEW_CERT.to_vec();
    args.extend(["-subj", subject, "-CA", "ca.crt", "-CAkey", "ca.key"]);
    args.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
    for e in ext {
        args.extend(["-addext", e]);
    }
    args.extend(["-keyout", &key, "-out", &crt]);
    openssl(dir, &args);
    (dir.join(crt), dir.join(key))
}

/// A reqwest identity (certificate and key) for mutual TLS.
pub fn identity(cert: &Path, key: &Path) -> reqwest::Identity {
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    reqwest::Identity::from_pem(&pem).unwrap()
}
