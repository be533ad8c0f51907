"""Real processes the bundle tests start on loopback: throwaway Redis servers,
demo databases on the local PostgreSQL, Celery workers, the exporter."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.tools import ROOT, free_port, require, run

POSTGRES_HOST = os.environ.get("PGHOST", "127.0.0.1")
POSTGRES_PORT = os.environ.get("PGPORT", "5432")


class Process:
    """A child process whose output goes to a log file; stopped (SIGTERM, then
    SIGKILL) by stop(). Its log is shown when waiting on it fails."""

    def __init__(self, name, argv, log_dir: Path, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        # A process group of its own, so that stop() also reaches children
        # (Celery's prefork pool).
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail=60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def fail(self, why):
        pytest.fail(f"{self.name}: {why}\n--- last lines of {self.log_path}\n{self.log()}", pytrace=False)

    def wait_http(self, url, timeout=60.0, ok=(200,)):
        """Waits until GET url answers one of `ok`; fails if the process exits."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail(f"exited with status {self.proc.returncode} while waiting for {url}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status in ok:
                        return
                    last = r.status
            except urllib.error.HTTPError as e:
                if e.code in ok:
                    return
                last = e.code
            except OSError as e:
                last = e
            time.sleep(0.2)
        self.fail(f"{url} not ready after {timeout}s (last: {last})")

    def kill(self):
        """SIGKILL to the whole group, as a crash or the OOM killer would: no
        chance to clean up."""
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(10)

    def stop(self, timeout=10.0):
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class ThrowawayRedis:
    """A redis-server of our own on a free loopback port, so a test may stop
    it or fill it without touching anyone's data."""

    def __init__(self, workdir: Path, extra=()):
        self.port = free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.process = None

    def url(self, db=0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self):
        self.process = Process(
            f"redis-{self.port}",
            [require("redis-server"), "--port", self.port, "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, *self.extra],
            self.dir,
        ).start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if run([require("redis-cli"), "-p", self.port, "ping"], check=False).stdout.strip() == "PONG":
                return self
            if not self.process.alive():
                break
            time.sleep(0.1)
        self.process.fail("did not answer PING")

    def kill(self):
        """SIGKILL: the server dies without a word; start() brings it back on
        the same port (empty, as nothing is saved)."""
        if self.process:
            self.process.kill()

    def stop(self):
        if self.process:
            self.process.stop()


def psql(db, sql, check=True):
    """Runs SQL as postgres on the local server; returns the unaligned output."""
    return run([require("psql"), "-h", POSTGRES_HOST, "-p", POSTGRES_PORT, "-U", "postgres",
                "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql], check=check).stdout.strip()


def require_postgres():
    proc = run([require("psql"), "-h", POSTGRES_HOST, "-p", POSTGRES_PORT, "-U", "postgres",
                "-d", "postgres", "-qAtX", "-c", "SELECT 1"], check=False)
    if proc.returncode != 0:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_HOST}:{POSTGRES_PORT} as postgres "
                    f"({proc.stderr.strip()}); scripts/test starts it", pytrace=False)


class DemoDatabase:
    """A BookedBarber-shaped database of our own (scripts/demo-data), dropped at the end."""

    def __init__(self, name, users=2000, appointments=20000, payments=16000):
        self.name = name
        self.sizes = ["--users", users, "--appointments", appointments, "--payments", payments]

    @property
    def url(self) -> str:
        return f"postgres://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{self.name}"

    def create(self):
        require_postgres()
        run([ROOT / "scripts/demo-data", "--db", self.name, "--reset", *self.sizes])
        return self

    def drop(self):
        psql("postgres", f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', check=False)


class ThrowawayCluster:
    """A PostgreSQL cluster of our own (initdb in a temporary folder, a free
    loopback port, settings of the test's choosing), for what would hurt
    others on the shared server: `shared_preload_libraries`, replication
    slots (they hold WAL for everyone), standbys. Trust authentication on
    loopback only; fsync off. stop() deletes it."""

    def __init__(self, settings=(), name="pg"):
        self.bin = self.bin_dir()
        self.settings = list(settings)
        self.name = name
        self.port = free_port()
        # PostgreSQL refuses to run as root: then it runs as `postgres`, in a
        # folder it owns outside pytest's private temporary tree.
        self.dir = Path(tempfile.mkdtemp(prefix=f"bbx-{name}-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"

    @staticmethod
    def bin_dir() -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if not found:
            pytest.fail("initdb not found under /usr/lib/postgresql/*/bin: apt-get install postgresql "
                        "(scripts/test installs it)", pytrace=False)
        return found[-1].parent

    def _run(self, tool, *args):
        argv = [self.bin / tool, *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return run(argv)

    def create(self):
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        return self.start()

    def standby(self, slot, name="standby"):
        """A streaming standby of this cluster (pg_basebackup -R) on its own
        port, fed through the physical replication slot `slot`, which
        pg_basebackup creates here. Its cluster_name is `slot`, so the
        primary's pg_stat_replication shows it as application_name `slot`."""
        other = ThrowawayCluster([*self.settings, f"cluster_name={slot}"], name)
        other._run("pg_basebackup", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-D", other.data,
                   "-R", "-X", "stream", "-C", "-S", slot, "--checkpoint=fast", "--no-sync")
        return other.start()

    def start(self):
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += "".join(f" -c {s}" for s in self.settings)
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.log_path, "-w", "start")
        return self

    def crash(self):
        """`pg_ctl stop -m immediate`: every backend quits at once, without a
        checkpoint (the statistics are lost); start() brings the cluster back on
        the same port through crash recovery."""
        if self.data.exists():
            argv = [self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0:
                argv = ["runuser", "-u", "postgres", "--", *argv]
            run(argv, check=False)

    def stop(self):
        self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def env(self) -> dict:
        """libpq's variables for this cluster, as the superuser postgres."""
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "postgres"}

    def url(self, db) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db, sql, check=True):
        return run([require("psql"), "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", db,
                    "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql], check=check).stdout.strip()


DEMO_QUEUES = "default,notifications,urgent_notifications,marketing"


def celery_worker(name, broker_url, log_dir, failure_rate="0.08", queues=DEMO_QUEUES) -> Process:
    """A real Celery worker with events on, running the demo's tasks."""
    return Process(
        f"celery-{name}",
        [require("celery"), "-A", "bbtasks", "worker", "-E", "-n", f"{name}@%h", "-c", "2",
         "-Q", queues, "--loglevel", "INFO"],
        log_dir, cwd=ROOT / "scripts/celery",
        env={"BBX_BROKER_URL": broker_url, "BBX_FAILURE_RATE": failure_rate},
    ).start()


def celery_producer(broker_url, log_dir, mode="demo") -> Process:
    """The demo's endless BookedBarber-like task traffic (scripts/celery/workload.py)."""
    return Process(
        f"celery-producer-{mode}",
        [ROOT / ".venv/bin/python", "workload.py", mode],
        log_dir, cwd=ROOT / "scripts/celery", env={"BBX_BROKER_URL": broker_url},
    ).start()


def exporter(binary, log_dir, postgres_url=None, redis_url=None, args=(), name="exporter") -> Process:
    """The real exporter on a free loopback port; `.url` is its base URL."""
    port = free_port()
    env = {"BOOKEDBARBER_POSTGRES_DSN": postgres_url or "", "BOOKEDBARBER_REDIS_URL": redis_url or ""}
    proc = Process(name, [binary, "--web.listen-address", f"127.0.0.1:{port}", *args], log_dir, env=env)
    proc.port = port
    proc.url = f"http://127.0.0.1:{port}"
    return proc.start()
