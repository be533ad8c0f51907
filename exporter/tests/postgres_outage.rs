//! PostgreSQL going away and coming back, on a throwaway cluster of our own
//! (initdb in a temporary folder, a free port), so nobody else is hurt.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A PostgreSQL cluster made with initdb; stopped when dropped.
struct ThrowawayCluster {
    bin: PathBuf,
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
}

fn postgres_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|p| p.join("initdb").exists())
        .expect("initdb not found under /usr/lib/postgresql/*/bin: install the Debian package postgresql (scripts/test does)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl ThrowawayCluster {
    fn run(&self, tool: &str, args: &[&str]) {
        // PostgreSQL refuses to run as root; as root, run it as `postgres`.
        let program = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn create() -> ThrowawayCluster {
        let dir = tempfile::Builder::new()
            .prefix("bbx-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        if is_root() {
            assert!(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = ThrowawayCluster {
            bin: postgres_bin_dir(),
            _dir: dir,
            data,
            port,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster.start();
        cluster
    }

    fn data(&self) -> &str {
        self.data.to_str().unwrap()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data()
        );
        let log = Path::new(self.data()).join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

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

    cluster.start();
    let m = exporter
        .wait_for("pg_up 1 after the server came back", long, |m| {
            m.get("pg_up", &[]) == Some(1.0)
        })
        .await;
    assert_eq!(m.collector_up("postgres"), Some(1.0));
    assert!(!m.family("pg_database_size_bytes").is_empty());
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
