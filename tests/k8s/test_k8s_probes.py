"""The commands the manifests run, run here for real: Redis with the shipped
redis.conf and its probes, the PostgreSQL probes, the Celery worker's probe
against a real worker, and the exporter's arguments checked by the exporter
itself (--check-config)."""
import os
import socket
import subprocess
import time

import pytest

from support.services import POSTGRES_PORT, ThrowawayRedis, celery_worker, require_postgres
from support.tools import ROOT, VENV_BIN, free_port, require, run

from .conftest import OVERLAYS, pod_spec
from .quantities import redis_size

# DESIGN §5: BookedBarber's Celery queues.
QUEUES = ["default", "notifications", "urgent_notifications", "bulk_notifications", "marketing",
          "maintenance", "data_processing", "high_priority", "agents", "metrics", "health", "cleanup"]


def container(rendered, kind, name):
    [c] = pod_spec(rendered.get(kind, name))["containers"]
    return c


def shell(probe):
    """The shell text of an exec probe (`sh -c TEXT`), or the argv joined."""
    command = probe["exec"]["command"]
    return command[2] if command[:2] == ["sh", "-c"] else " ".join(command)


def sh(text, env=None, timeout=60):
    return subprocess.run(["sh", "-c", text], env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def redis_server(rendered, tmp_path):
    """redis-server with the shipped redis.conf (paths and port moved into the test's directory)."""
    conf = next(next(iter(cm["data"].values())) for cm in rendered["production"].of_kind("ConfigMap")
                if cm["metadata"]["name"].startswith("bookedbarber-redis"))
    port = free_port()
    auth = tmp_path / "auth.conf"
    auth.write_text("requirepass probe-test-password\n")
    (tmp_path / "data").mkdir()
    local = (conf.replace("include /run/secrets/redis/auth.conf", f"include {auth}")
             .replace("dir /data", f"dir {tmp_path / 'data'}").replace("port 6379", f"port {port}")
             .replace("bind * -::*", "bind 127.0.0.1"))
    assert local.count(str(tmp_path)) == 2 and f"port {port}" in local, "redis.conf changed shape"
    (tmp_path / "redis.conf").write_text(local)

    def start(*args):
        proc = subprocess.Popen([require("redis-server"), tmp_path / "redis.conf", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "NOAUTH" not in run([require("redis-cli"), "-p", port, "ping"], check=False).stdout:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        return proc, port, auth

    yield start


def redis_probe(probe, port, auth):
    return shell(probe).replace("-p 6379", f"-p {port}").replace("/run/secrets/redis/auth.conf", str(auth))


def test_redis_runs_with_the_shipped_config_and_its_probes_pass(rendered, redis_server):
    proc, port, auth = redis_server()
    try:
        c = container(rendered["production"], "StatefulSet", "bookedbarber-redis")
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            result = sh(redis_probe(c[kind], port, auth))
            assert result.returncode == 0, f"{kind}: {result.stdout}{result.stderr}"
        cli = [require("redis-cli"), "-p", port, "--no-auth-warning", "-a", "probe-test-password"]
        assert run([*cli, "config", "get", "maxmemory-policy"]).stdout.split() == ["maxmemory-policy", "noeviction"]
        assert run([*cli, "config", "get", "appendonly"]).stdout.split() == ["appendonly", "yes"]
        assert "NOAUTH" in run([require("redis-cli"), "-p", port, "set", "k", "v"], check=False).stdout
        # Readiness needs the password; liveness is satisfied by any answer.
        auth.write_text("requirepass wrong\n")
        assert sh(redis_probe(c["readinessProbe"], port, auth)).returncode != 0
        assert sh(redis_probe(c["livenessProbe"], port, auth)).returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)
    assert sh(redis_probe(c["livenessProbe"], port, auth)).returncode != 0, "liveness passes with Redis gone"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_accepts_each_overlays_command(rendered, redis_server, overlay):
    command = container(rendered[overlay], "StatefulSet", "bookedbarber-redis")["command"]
    assert command[:2] == ["redis-server", "/etc/redis/redis.conf"]
    proc, port, _ = redis_server(*command[2:])
    try:
        got = run([require("redis-cli"), "-p", port, "--no-auth-warning", "-a", "probe-test-password",
                   "config", "get", "maxmemory"]).stdout.split()[1]
        expect = command[command.index("--maxmemory") + 1] if "--maxmemory" in command else "384mb"
        assert int(got) == redis_size(expect)
    finally:
        proc.terminate()
        proc.wait(10)


def test_postgres_probes(production):
    require_postgres()
    c = container(production, "StatefulSet", "bookedbarber-postgres")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        result = sh(shell(c[kind]), {"PGPORT": POSTGRES_PORT})
        assert result.returncode == 0, f"{kind} against a running server: {result.stdout}{result.stderr}"
    nobody = str(free_port())
    for kind in ("livenessProbe", "readinessProbe"):
        assert sh(shell(c[kind]), {"PGPORT": nobody}).returncode != 0, f"{kind} passes with no server"


def test_the_worker_consumes_every_queue_with_events_on(production):
    c = container(production, "Deployment", "bookedbarber-worker")
    command = c["command"]
    assert command[:3] == ["celery", "--app=services.celery_app", "worker"] and "-E" in command
    [queues] = [a.split("=", 1)[1] for a in command if a.startswith("--queues=")]
    assert queues.split(",") == QUEUES
    config = next(cm for cm in production.of_kind("ConfigMap") if cm["metadata"]["name"].startswith("bookedbarber-app"))
    assert config["data"]["CELERY_TASK_SEND_SENT_EVENT"] == "true"
    assert config["data"]["CELERY_WORKER_SEND_TASK_EVENTS"] == "true"
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in c["envFrom"]


def test_the_worker_probe_pings_this_pods_worker(production, tmp_path):
    """The probe runs celery without the application and gets the broker URL
    from the secret file: against a real worker it passes, without one it fails."""
    redis = ThrowawayRedis(tmp_path / "redis").start()
    worker = None
    try:
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "redis_url").write_text(redis.url(0))
        c = container(production, "Deployment", "bookedbarber-worker")
        probe = shell(c["livenessProbe"]).replace("/run/secrets/bookedbarber/", f"{secrets}/")
        assert "--app" not in probe and "CELERY_BROKER_URL" in probe
        env = {"HOSTNAME": socket.gethostname(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        worker = celery_worker("celery", redis.url(0), tmp_path)
        deadline = time.monotonic() + 60
        while (result := sh(probe, env)).returncode != 0:
            if not worker.alive() or time.monotonic() > deadline:
                worker.fail(f"the probe never passed: {result.stdout}{result.stderr}")
            time.sleep(1)
        assert "pong" in result.stdout
        # Another pod's worker does not answer for this one.
        other = sh(probe.replace("--timeout 10", "--timeout 2"), {**env, "HOSTNAME": "another-pod"})
        assert other.returncode != 0
        worker.stop()
        worker = None
        gone = sh(probe.replace("--timeout 10", "--timeout 2"), env)
        assert gone.returncode != 0, "the probe passes with no worker"
    finally:
        if worker:
            worker.stop()
        redis.stop()


def test_the_exporter_accepts_its_manifest_arguments(rendered, exporter_bin, tmp_path):
    for overlay, r in rendered.items():
        deployment = r.get("Deployment", "bookedbarber-exporter")
        [c] = pod_spec(deployment)["containers"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        local = tmp_path / overlay
        args = []
        for arg in c["args"]:
            for name, path in mounts.items():
                arg = arg.replace(path + "/", f"{local}/{name}/")
            args.append(arg)
        (local / "secret").mkdir(parents=True)
        (local / "secret/postgres-dsn").write_text(
            "postgres://bookedbarber_exporter:pw@bookedbarber-postgres:5432/bookedbarber\n")
        (local / "secret/redis-url").write_text("redis://:pw@bookedbarber-redis:6379/0\n")
        (local / "queries").mkdir()
        queries = next(cm for cm in r.of_kind("ConfigMap")
                       if cm["metadata"]["name"] == volumes["queries"]["configMap"]["name"])
        for key, text in queries["data"].items():
            (local / "queries" / key).write_text(text)
        assert queries["data"]["business-queries.toml"] == (ROOT / "config/business-queries.toml").read_text()
        assert volumes["secret"]["secret"]["secretName"] == "bookedbarber-exporter"
        [celery_queues] = [a.split("=", 1)[1] for a in args if a.startswith("--celery.queues=")]
        assert celery_queues.split(",") == QUEUES
        result = run([exporter_bin, *args, "--check-config"], check=False,
                     env={k: v for k, v in os.environ.items() if not k.startswith("BOOKEDBARBER_")})
        assert result.returncode == 0, f"{overlay}: {result.stdout}{result.stderr}"
        assert "configuration is valid" in result.stdout
