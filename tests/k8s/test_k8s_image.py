"""The exporter's image. No Docker engine runs here, so the image itself is
not built; what can be checked is: the Dockerfile builds the right binary
into a shell-less static base as a numeric non-root user that matches the
Deployment, the build context keeps out what it should, and the binary
really runs as an unprivileged user from a read-only directory with every
mount read-only (what readOnlyRootFilesystem gives it) — the debug build,
to keep CI short; the release build differs only in optimisation."""
import fnmatch
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from support.services import Process, ThrowawayRedis
from support.tools import ROOT, free_port, require

from .conftest import pod_spec

DOCKERFILE = ROOT / "exporter/Dockerfile"


def instructions():
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def final_stage():
    steps = instructions()
    start = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[start:]


def test_the_final_image_is_static_non_root_and_shell_less(production):
    stage = final_stage()
    base = stage[0][1]
    assert re.match(r"gcr\.io/distroless/static-debian\d+(:nonroot)?$|scratch$", base), base
    [user] = [args for op, args in stage if op == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and (not gid or gid.isdigit()), f"USER {user}"
    [entrypoint] = [args for op, args in stage if op == "ENTRYPOINT"]
    assert entrypoint.startswith("["), "ENTRYPOINT must be the exec form: the image has no shell"
    assert [args for op, args in stage if op == "EXPOSE"] == ["10188"]
    # The Deployment runs the image as the image's user.
    ctx = pod_spec(production.get("Deployment", "bookedbarber-exporter"))["securityContext"]
    assert (str(ctx["runAsUser"]), str(ctx["runAsGroup"])) == (uid, gid or uid)


def test_the_build_stage_builds_the_exporter_from_the_lock_file():
    runs = " ".join(args for op, args in instructions() if op == "RUN")
    assert "cargo build --release --locked --bin bookedbarber-exporter" in runs
    assert "bookedbarber-exporter" in (ROOT / "exporter/Cargo.toml").read_text()


def dockerignore_excludes(path):
    """Whether .dockerignore keeps `path` (relative to the root) out of the
    build context: the last matching pattern wins; a directory pattern
    covers what is below it."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_the_build_context_holds_what_the_build_copies_and_nothing_big():
    copies = [args.split()[:-1] for op, args in instructions() if op == "COPY" and "--from" not in args]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
    for path in ("exporter/src/main.rs", "exporter/benches/scrape.rs", "config/business-queries.toml"):
        assert not dockerignore_excludes(path), path
    for path in ("target/debug/bookedbarber-exporter", ".venv/bin/python", "tests/conftest.py",
                 "exporter/target/x", ".git/HEAD", "k8s/base/kustomization.yaml"):
        assert dockerignore_excludes(path), path


@pytest.fixture
def read_only_copy(exporter_bin):
    """The exporter, its query file and its credentials in a root-owned
    read-only tree, as the image and the Secret/ConfigMap mounts give them.
    Under /tmp itself: pytest's own temporary directories are private to root."""
    root = Path(tempfile.mkdtemp(prefix="bbx-read-only-"))
    for sub in ("bin", "secret", "queries"):
        (root / sub).mkdir()
    shutil.copy2(exporter_bin, root / "bin/bookedbarber-exporter")
    shutil.copy2(ROOT / "config/business-queries.toml", root / "queries/business-queries.toml")
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(root)


def test_the_exporter_runs_unprivileged_with_everything_read_only(read_only_copy, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test switches to an unprivileged user and remounts read-only: run it as root "
                    "(scripts/test in CI does)", pytrace=False)
    root = read_only_copy
    redis = ThrowawayRedis(tmp_path / "redis").start()
    try:
        (root / "secret/postgres-dsn").write_text("postgres://postgres@127.0.0.1:5432/postgres\n")
        (root / "secret/redis-url").write_text(redis.url(0) + "\n")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() or path.parent.name == "bin" else 0o444)
        port = free_port()
        # A private mount namespace where every mount but /proc, /sys and /dev
        # is read-only, then the unprivileged user (nobody), no groups, no
        # capabilities, a read-only home and working directory.
        script = (
            "mount --make-rprivate / && "
            "for m in $(awk '{print $2}' /proc/self/mounts | grep -Ev '^/(proc|sys|dev)(/|$)'); do "
            "mount -o remount,bind,ro \"$m\" || exit 97; done && "
            "exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all "
            "--no-new-privs -- \"$@\""
        )
        argv = [require("unshare"), "--mount", "--", "sh", "-c", script, "sh",
                root / "bin/bookedbarber-exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--postgres.dsn-file={root}/secret/postgres-dsn",
                f"--redis.url-file={root}/secret/redis-url",
                f"--business.queries={root}/queries/business-queries.toml",
                "--postgres.interval=1s", "--redis.interval=1s", "--celery.interval=1s"]
        proc = Process("exporter-read-only", argv, tmp_path,
                       env={"HOME": str(root), "TMPDIR": str(root / "missing")}, cwd=root).start()
        try:
            proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
            deadline = time.monotonic() + 30
            while True:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    metrics = r.read().decode()
                if "\npg_up 1" in metrics and "\nredis_up 1" in metrics:
                    break
                if time.monotonic() > deadline:
                    proc.fail(f"pg_up and redis_up never reached 1:\n{metrics[:2000]}")
                time.sleep(0.5)
            pid = exporter_pid(root / "bin/bookedbarber-exporter")
            status = f"/proc/{pid}/status"
            uids = next(line for line in open(status) if line.startswith("Uid:")).split()[1:]
            assert set(uids) == {"65534"}, f"runs as {uids}"
            assert next(line for line in open(status) if line.startswith("CapEff:")).split()[1] == "0" * 16
            mounts = [line.split() for line in open(f"/proc/{pid}/mounts")]
            writable = [m[1] for m in mounts if "rw" in m[3].split(",")
                        and not re.match(r"/(proc|sys|dev)(/|$)", m[1])]
            assert not writable, f"writable mounts left: {writable}"
            assert not open_for_writing(pid), f"files open for writing: {open_for_writing(pid)}"
        finally:
            proc.stop()
    finally:
        redis.stop()


def exporter_pid(binary):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/exe") == str(binary):
                    return int(entry)
            except OSError:
                continue
    pytest.fail(f"no process runs {binary}")


def open_for_writing(pid):
    """Regular files the process opened with O_WRONLY or O_RDWR (stdout and
    stderr, which the test points at a log file, are not its own)."""
    out = []
    for fd in set(os.listdir(f"/proc/{pid}/fd")) - {"0", "1", "2"}:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            flags = int(next(line for line in open(f"/proc/{pid}/fdinfo/{fd}")
                             if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        if target.startswith("/") and stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode) and flags & 0o3:
            out.append(target)
    return out
