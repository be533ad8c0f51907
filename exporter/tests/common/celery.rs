//! Real Redis servers and real Celery workers for the Celery tests.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::repo_root;

/// A redis-server of our own on a free loopback port; killed when dropped.
pub struct ThrowawayRedis {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Arguments beyond port, address and persistence.
    extra: Vec<String>,
}

impl ThrowawayRedis {
    pub fn start() -> ThrowawayRedis {
        Self::start_with(&[])
    }

    /// `PORT` among `extra` stands for the port; with `--tls-port PORT`
    /// the port serves TLS only.
    pub fn start_with(extra: &[&str]) -> ThrowawayRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let extra = extra
            .iter()
            .map(|a| {
                if *a == "PORT" {
                    port.to_string()
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let mut redis = ThrowawayRedis {
            port,
            child: None,
            _dir: tempfile::tempdir().unwrap(),
            extra,
        };
        redis.restart();
        redis
    }

    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) on the same port.
    pub fn restart(&mut self) {
        let tls = self.extra.iter().any(|a| a == "--tls-port");
        let plain_port = if tls {
            "0".to_owned()
        } else {
            self.port.to_string()
        };
        let child = Command::new("redis-server")
            .args(["--port", &plain_port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install the Debian package redis-server (scripts/test does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn connection(&self, db: u32) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url(db))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn celery_dir() -> PathBuf {
    repo_root().join("scripts/celery")
}

/// The Python of the virtual environment with Celery (made by scripts/test).
pub fn python() -> PathBuf {
    let python = std::env::var_os("BBX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import celery"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no Python with Celery at {}: run scripts/test, or `python3 -m venv .venv && .venv/bin/pip install -r scripts/celery/requirements.txt`",
        python.display()
    );
    python
}

/// Runs `workload.py` with the given arguments; returns its stdout.
pub fn workload(broker: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(python())
        .current_dir(celery_dir())
        .arg("workload.py")
        .args(args)
        .env("BBX_BROKER_URL", broker)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "workload.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A real Celery worker (prefork, events on) in its own process group.
pub struct CeleryWorker {
    child: Child,
    pub node: String,
}

impl CeleryWorker {
    pub fn start(broker: &str, node: &str, queues: &str) -> CeleryWorker {
        let log =
            std::env::temp_dir().join(format!("bbx-celery-{node}-{}.log", std::process::id()));
        let child = Command::new(python())
            .current_dir(celery_dir())
            .args([
                "-m",
                "celery",
                "-A",
                "bbtasks",
                "worker",
                "-E",
                "-c",
                "2",
                "--loglevel",
                "INFO",
                "-n",
                node,
                "-Q",
                queues,
            ])
            .arg("--logfile")
            .arg(&log)
            .env("BBX_BROKER_URL", broker)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        CeleryWorker {
            child,
            node: node.to_owned(),
        }
    }

    /// SIGKILL to the main process only: no worker-offline, heartbeats stop.
    pub fn kill_main(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn kill_group(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
    }
}

/// The captured task-sent event, with another uuid and task name: what
/// `PUBLISH /0.celeryev/task.sent <payload>` carries.
pub fn task_sent_event(uuid: &str, name: &str) -> Vec<u8> {
    use base64::Engine;
    let envelope: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("exporter/tests/fixtures/celery/event-task-sent.json"))
            .unwrap(),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut body: serde_json::Value =
        serde_json::from_slice(&b64.decode(envelope["body"].as_str().unwrap()).unwrap()).unwrap();
    body["uuid"] = uuid.into();
    body["name"] = name.into();
    let mut envelope = envelope;
    envelope["body"] = b64.encode(serde_json::to_vec(&body).unwrap()).into();
    serde_json::to_vec(&envelope).unwrap()
}
