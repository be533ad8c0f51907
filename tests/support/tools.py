"""Finding the real tools the bundle tests drive, and failing loudly without them."""
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"

# How to get each tool: a missing one fails the test with this hint, never skips it.
HOW_TO_GET = {
    "promtool": "apt-get install prometheus (scripts/test installs it)",
    "prometheus": "apt-get install prometheus (scripts/test installs it)",
    "amtool": "apt-get install prometheus-alertmanager (scripts/test installs it)",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager (scripts/test installs it)",
    "kubectl": "install kubectl >= 1.27 (https://kubernetes.io/docs/tasks/tools/)",
    "redis-server": "apt-get install redis-server (scripts/test installs it)",
    "psql": "apt-get install postgresql-client (scripts/test installs it)",
    "celery": "scripts/test creates .venv with Celery (scripts/celery/requirements.txt)",
    "checkov": "pip install -r tests/requirements.txt into .venv (scripts/test does)",
    "yamllint": "pip install -r tests/requirements.txt into .venv (scripts/test does)",
    "hadolint": "pip install -r tests/requirements.txt into .venv (scripts/test does)",
    "jsonnet": "pip install -r tests/requirements.txt into .venv (scripts/test does)",
    "prometheus-postgres-exporter": "apt-get install prometheus-postgres-exporter (scripts/test installs it)",
    "prometheus-redis-exporter": "apt-get install prometheus-redis-exporter (scripts/test installs it)",
    "wrk": "apt-get install wrk (scripts/test installs it)",
    "redis-cli": "apt-get install redis-tools (scripts/test installs it)",
}


def require(command: str) -> str:
    """The path of `command` (PATH, then .venv/bin); fails the test with how to get it."""
    found = shutil.which(command) or shutil.which(command, path=str(VENV_BIN))
    if not found:
        pytest.fail(f"{command} not found: {HOW_TO_GET.get(command, 'install it')}", pytrace=False)
    return found


def run(argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command, capturing text output; on failure the message shows both streams."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    proc = subprocess.run([str(a) for a in argv], **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exporter_binary() -> Path:
    """The exporter built from this checkout (scripts/test builds it first)."""
    path = Path(os.environ.get("BOOKEDBARBER_EXPORTER_BIN", ROOT / "target/debug/bookedbarber-exporter"))
    if not path.is_file():
        pytest.fail(
            f"exporter binary {path} not found: run `cargo build --bins` first "
            "(scripts/test does), or set BOOKEDBARBER_EXPORTER_BIN",
            pytrace=False,
        )
    return path
