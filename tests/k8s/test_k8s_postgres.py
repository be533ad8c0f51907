"""The PostgreSQL pieces, run for real against the local PostgreSQL: the
nightly backup script exactly as the CronJob mounts it (dump, name,
retention, failure, restore), the CronJob's wiring, and the exporter's
read-only role (exporter-role.sql) being all the real exporter needs."""
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from support.services import POSTGRES_HOST, POSTGRES_PORT, exporter, psql, require_postgres
from support.tools import ROOT, require, run

from .conftest import pod_spec
from .netpol import Peer, allowed, pods
from .test_k8s_workloads import check_hardened

ROLE_SQL = ROOT / "k8s/components/monitoring/exporter-role.sql"
BACKUP_SHELL = ROOT / "k8s/tools/backup-shell.yaml"
DUMP_NAME = re.compile(r"^bookedbarber-(\d{8}T\d{6}Z)\.dump$")


@pytest.fixture
def database():
    require_postgres()
    name = f"bbx_k8s_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    psql("postgres", f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)


def backup_script(production):
    cm = next(c for c in production.of_kind("ConfigMap")
              if c["metadata"]["name"].startswith("bookedbarber-postgres-backup"))
    return cm["data"]["backup.sh"]


def cronjob_env(production):
    [container] = pod_spec(production.get("CronJob", "bookedbarber-postgres-backup"))["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def stamp(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) - delta).strftime("%Y%m%dT%H%M%SZ")


def run_backup(production, tmp_path, database, backup_dir, **overrides):
    script = tmp_path / "backup.sh"
    script.write_text(backup_script(production))
    password = tmp_path / "password"
    password.write_text("trust-auth-ignores-it\n")
    env = {**os.environ, **cronjob_env(production), "PGHOST": POSTGRES_HOST, "PGPORT": POSTGRES_PORT,
           "PGUSER": "postgres", "PGDATABASE": database, "PGPASSWORD_FILE": str(password),
           "BACKUP_DIR": str(backup_dir), **overrides}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run([require("bash"), script], env=env, capture_output=True, text=True)


def test_the_backup_dumps_names_and_prunes_as_the_cronjob_says(production, tmp_path, database):
    psql(database, "CREATE TABLE bookings (id int PRIMARY KEY, who text);"
                   "INSERT INTO bookings SELECT g, 'client ' || g FROM generate_series(1, 500) g")
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / f"bookedbarber-{stamp(timedelta(days=8))}.dump"
    recent = backups / f"bookedbarber-{stamp(timedelta(days=6))}.dump"
    unrelated = [backups / "bookedbarber-manual.dump", backups / "notes.txt"]
    for f in [old, recent, *unrelated]:
        f.write_text("x")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    proc = run_backup(production, tmp_path, database, backups)
    after = datetime.now(timezone.utc)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert cronjob_env(production)["BACKUP_RETENTION_DAYS"] == "7"
    assert not old.exists(), "a dump older than the 7 days kept survived"
    assert recent.exists() and all(f.exists() for f in unrelated)
    new = [f for f in backups.iterdir() if DUMP_NAME.match(f.name) and f != recent]
    assert len(new) == 1, sorted(p.name for p in backups.iterdir())
    taken = datetime.strptime(DUMP_NAME.match(new[0].name).group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert before <= taken <= after, f"{new[0].name} is not the UTC time of the run"
    assert new[0].stat().st_mode & 0o077 == 0, "dumps must not be readable by others"
    listing = run([require("pg_restore"), "--list", new[0]]).stdout
    assert "TABLE public bookings" in listing
    assert not list(backups.glob("*.partial"))

    # The restore docs/deploy.md describes, into an empty database.
    target = f"{database}_restored"
    psql("postgres", f'CREATE DATABASE "{target}"')
    try:
        run([require("pg_restore"), "--no-owner", "--exit-on-error", "-h", POSTGRES_HOST, "-p", POSTGRES_PORT,
             "-U", "postgres", "-d", target, new[0]])
        assert psql(target, "SELECT count(*) FROM bookings") == "500"
    finally:
        psql("postgres", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', check=False)


def test_retention_follows_the_environment(production, tmp_path, database):
    backups = tmp_path / "backups"
    backups.mkdir()
    three_days = backups / f"bookedbarber-{stamp(timedelta(days=3))}.dump"
    one_day = backups / f"bookedbarber-{stamp(timedelta(days=1))}.dump"
    for f in (three_days, one_day):
        f.write_text("x")
    proc = run_backup(production, tmp_path, database, backups, BACKUP_RETENTION_DAYS="2")
    assert proc.returncode == 0, proc.stderr
    assert not three_days.exists() and one_day.exists()
    # Unset, it keeps 7 days.
    proc = run_backup(production, tmp_path, database, backups, BACKUP_RETENTION_DAYS=None)
    assert proc.returncode == 0, proc.stderr
    assert one_day.exists()


@pytest.mark.parametrize("days", ["0", "seven", "-1", "1.5"])
def test_a_bad_retention_fails_before_dumping(production, tmp_path, database, days):
    backups = tmp_path / "backups"
    backups.mkdir()
    proc = run_backup(production, tmp_path, database, backups, BACKUP_RETENTION_DAYS=days)
    assert proc.returncode == 2 and "BACKUP_RETENTION_DAYS" in proc.stderr, proc.stderr
    assert not list(backups.iterdir())


def test_a_failed_dump_fails_the_job_and_deletes_nothing(production, tmp_path):
    require_postgres()
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / f"bookedbarber-{stamp(timedelta(days=30))}.dump"
    old.write_text("x")
    proc = run_backup(production, tmp_path, "bbx_k8s_no_such_database", backups)
    assert proc.returncode != 0
    assert "bbx_k8s_no_such_database" in proc.stderr
    assert old.exists(), "retention ran after a failed dump"
    assert [p.name for p in backups.iterdir()] == [old.name], "a partial dump was left behind"


def test_the_cronjob_runs_daily_into_the_backup_volume(production):
    job = production.get("CronJob", "bookedbarber-postgres-backup")
    minute, hour, day, month, weekday = job["spec"]["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["spec"]["timeZone"] == "Etc/UTC"
    pod = pod_spec(job)
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [backups] = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[backups]["persistentVolumeClaim"]["claimName"] == "bookedbarber-postgres-backups"
    production.get("PersistentVolumeClaim", "bookedbarber-postgres-backups")
    env = cronjob_env(production)
    assert mounts[backups] == env["BACKUP_DIR"] == "/backups"
    assert env["PGHOST"] == "bookedbarber-postgres"
    secret_dirs = [mounts[n] for n, v in volumes.items() if "secret" in v]
    assert any(env["PGPASSWORD_FILE"].startswith(d + "/") for d in secret_dirs)
    [script_mount] = [mounts[n] for n, v in volumes.items() if "configMap" in v]
    assert container["command"] == ["bash", f"{script_mount}/backup.sh"]
    # pg_dump from the database's own image, so its major version matches the server's.
    [db] = pod_spec(production.get("StatefulSet", "bookedbarber-postgres"))["containers"]
    assert container["image"] == db["image"]


def test_the_backup_alert_watches_this_cronjob():
    """The alert is the alerts helper's (alerts/rules/); it must select this
    CronJob by name and fire after 26 hours without a successful run."""
    rules = [r for f in sorted((ROOT / "alerts/rules").glob("*.yaml"))
             for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]
             if "kube_cronjob_status_last_successful_time" in r.get("expr", "")]
    assert rules, "no alert on kube_cronjob_status_last_successful_time in alerts/rules/"
    name = "bookedbarber-postgres-backup"
    selecting = []
    for r in rules:
        for op, value in re.findall(r'cronjob\s*(=~|=)\s*"([^"]*)"', r["expr"]):
            if (op == "=" and value == name) or (op == "=~" and re.fullmatch(value, name)):
                selecting.append(r)
    assert selecting, f"no backup alert selects cronjob={name}: {[r['expr'] for r in rules]}"
    assert any(re.search(r"26\s*\*\s*3600|93600|26h", r["expr"]) for r in selecting), \
        [r["expr"] for r in selecting]


def test_the_backup_shell_can_reach_postgres_and_the_backups_only(production):
    """k8s/tools/backup-shell.yaml, the pod docs/deploy.md restores from: it
    validates, passes the namespace's Pod Security level, mounts the backup
    volume and the CronJob's password, and its labels let it reach
    PostgreSQL and nothing else."""
    proc = subprocess.run([sys.executable, ROOT / "tests/schemas/validate_manifests.py", "-k", "1.30", BACKUP_SHELL],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    shell = yaml.safe_load(BACKUP_SHELL.read_text())
    check_hardened("backup-shell", shell["spec"], probes=False)
    [c] = shell["spec"]["containers"]
    [db] = pod_spec(production.get("StatefulSet", "bookedbarber-postgres"))["containers"]
    assert c["image"] == db["image"]
    volumes = {v["name"]: v for v in shell["spec"]["volumes"]}
    job_volumes = {v["name"]: v for v in pod_spec(production.get("CronJob", "bookedbarber-postgres-backup"))["volumes"]}
    assert volumes["backups"] == job_volumes["backups"] and volumes["password"] == job_volumes["password"]
    env = {e["name"]: e["value"] for e in c["env"]}
    job_env = cronjob_env(production)
    assert all(env[k] == job_env[k] for k in ("PGHOST", "PGUSER", "PGDATABASE", "PGPASSWORD_FILE"))
    policies = production.of_kind("NetworkPolicy")
    me = Peer("backup-shell", "bookedbarber", shell["metadata"]["labels"])
    reachable = {(p.name, port) for p in pods(production) for port in p.ports.values()
                 if allowed(policies, me, p, port)}
    assert reachable == {("postgres", 5432)}


@pytest.fixture
def schema_database(database):
    run([require("psql"), "-h", POSTGRES_HOST, "-p", POSTGRES_PORT, "-U", "postgres", "-d", database,
         "-qX", "-v", "ON_ERROR_STOP=1", "-f", ROOT / "scripts/schema.sql"])
    return database


def create_role(database, role, password="not-a-real-secret"):
    args = [require("psql"), "-h", POSTGRES_HOST, "-p", POSTGRES_PORT, "-U", "postgres", "-d", database, "-qX"]
    if role:
        args += ["-v", f"exporter_role={role}"]
    if password:
        args += ["-v", f"exporter_password={password}"]
    return subprocess.run([*args, "-f", ROLE_SQL], capture_output=True, text=True)


@pytest.fixture
def exporter_role(schema_database):
    role = f"{schema_database}_exporter"
    try:
        for _ in range(2):  # re-running it is harmless
            proc = create_role(schema_database, role)
            assert proc.returncode == 0, proc.stderr
        yield role
    finally:
        psql("postgres", f'DROP DATABASE IF EXISTS "{schema_database}" WITH (FORCE)', check=False)
        psql("postgres", f'DROP ROLE IF EXISTS "{role}"', check=False)


def as_role(database, role, sql):
    return subprocess.run([require("psql"), "-h", POSTGRES_HOST, "-p", POSTGRES_PORT, "-U", role,
                           "-d", database, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          capture_output=True, text=True)


def test_the_exporter_role_reads_every_business_query_and_writes_nothing(schema_database, exporter_role):
    queries = tomllib.loads((ROOT / "config/business-queries.toml").read_text())["query"]
    assert queries
    for q in queries:
        proc = as_role(schema_database, exporter_role, q["sql"])
        assert proc.returncode == 0, f"query {q['name']} as {exporter_role}: {proc.stderr}"
    assert as_role(schema_database, exporter_role,
                   "SELECT pg_has_role(current_user, 'pg_monitor', 'MEMBER')").stdout.strip() == "t"
    proc = as_role(schema_database, exporter_role, "INSERT INTO users (email) VALUES ('x@example.com')")
    assert proc.returncode != 0 and "read-only transaction" in proc.stderr, proc.stderr
    proc = as_role(schema_database, exporter_role, "BEGIN READ WRITE; DELETE FROM payments; COMMIT")
    assert proc.returncode != 0 and "permission denied" in proc.stderr, proc.stderr


def test_the_role_script_wants_a_password(schema_database):
    proc = create_role(schema_database, f"{schema_database}_nopass", password=None)
    assert proc.returncode != 0 and "exporter_password" in proc.stderr, proc.stderr
    assert psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{schema_database}_nopass'") == "0"


def test_the_real_exporter_needs_nothing_more_than_the_role(schema_database, exporter_role, exporter_bin,
                                                            tmp_path):
    url = f"postgres://{exporter_role}@{POSTGRES_HOST}:{POSTGRES_PORT}/{schema_database}"
    proc = exporter(exporter_bin, tmp_path, postgres_url=url,
                    args=["--postgres.interval", "1s", "--business.queries", ROOT / "config/business-queries.toml"])
    try:
        proc.wait_http(f"{proc.url}/readyz", timeout=60)
        with urllib.request.urlopen(f"{proc.url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        proc.stop()
    up = dict(re.findall(r'^bookedbarber_exporter_collector_up\{collector="([^"]+)"\} (\S+)$', metrics, re.M))
    assert up and "postgres" in up and any(c.startswith("business_") for c in up), up
    down = [c for c, v in up.items() if float(v) != 1]
    assert not down, f"collectors failing with the role's grants: {down}\n{proc.log()}"
    monitor = re.search(r"^bookedbarber_exporter_postgres_pg_monitor (\S+)$", metrics, re.M)
    if monitor:  # the exporter reports whether its role sees every session
        assert float(monitor.group(1)) == 1
