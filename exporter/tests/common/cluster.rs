//! Throwaway PostgreSQL clusters: initdb in a temporary folder, a free
//! port, settings of the test's choosing; stopped and deleted when dropped.
//! For tests that stop the server, need special settings
//! (`shared_preload_libraries`), or do what would hurt others on a shared
//! server (replication slots hold WAL for everyone).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub struct ThrowawayCluster {
    bin: PathBuf,
    _dir: tempfile::TempDir,
    data: PathBuf,
    pub port: u16,
    settings: Vec<String>,
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary folder PostgreSQL may write to (it refuses to run as root,
/// so as root it runs as `postgres`).
fn temp_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("bbx-pg-")
        .tempdir()
        .unwrap();
    if is_root() {
        assert!(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success());
    }
    dir
}

impl ThrowawayCluster {
    fn run(&self, tool: &str, args: &[&str]) {
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

    /// A new cluster with default settings, started.
    pub fn create() -> ThrowawayCluster {
        Self::create_with(&[])
    }

    /// A new cluster started with these settings (`name=value`, as for
    /// `postgres -c`), such as `shared_preload_libraries=pg_stat_statements`.
    pub fn create_with(settings: &[&str]) -> ThrowawayCluster {
        let dir = temp_dir();
        let cluster = ThrowawayCluster {
            bin: postgres_bin_dir(),
            data: dir.path().join("data"),
            _dir: dir,
            port: free_port(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
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

    /// A streaming standby of this cluster (pg_basebackup -R), started on a
    /// port of its own.
    pub fn standby(&self) -> ThrowawayCluster {
        let dir = temp_dir();
        let standby = ThrowawayCluster {
            bin: self.bin.clone(),
            data: dir.path().join("data"),
            _dir: dir,
            port: free_port(),
            settings: self.settings.clone(),
        };
        let port = self.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                standby.data(),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        standby.start();
        standby
    }

    pub fn data(&self) -> &str {
        self.data.to_str().unwrap()
    }

    pub fn start(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data()
        );
        for s in &self.settings {
            options.push_str(&format!(" -c {s}"));
        }
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

    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// URL of a database of this cluster, as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", db)
    }

    pub fn url_as(&self, role: &str, db: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn pool(&self, db: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url(db))
            .await
            .unwrap_or_else(|e| panic!("connect to the throwaway cluster's {db}: {e}"))
    }

    /// Runs SQL (several statements allowed) in a database of the cluster.
    pub async fn exec(&self, db: &str, sql: &str) {
        let pool = self.pool(db).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }

    /// A login role with `pg_monitor` only, what the docs ask of the
    /// exporter's role.
    pub async fn monitoring_role(&self) -> String {
        let role = "bbx_monitor";
        self.exec(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role};"),
        )
        .await;
        role.to_owned()
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = cmd
            .args(["-D", self.data(), "-m", "immediate", "stop"])
            .output();
    }
}
