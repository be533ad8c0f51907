# Shared by scripts/run-demo and scripts/test: install and start what the
# exporter, its demo and its tests need on a Debian machine. Sourced, not run.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root for: $* (run as root or install sudo)"; fi
}

apt_updated=0
install_packages() {
    [ $# -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install them"
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        as_root apt-get update -qq >/dev/null
        apt_updated=1
    fi
    say "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_commands "cmd:package" ...: installs the Debian packages whose
# commands are missing.
ensure_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    install_packages "${missing[@]}"
}

pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# PostgreSQL on 127.0.0.1:5432 that lets user postgres in without a password
# (the tests create and drop databases of their own there).
ensure_postgres() {
    ensure_commands psql:postgresql-client pg_ctlcluster:postgresql
    # The tests' throwaway clusters need initdb and pg_ctl.
    [ -x "$(pg_bindir)/initdb" ] || install_packages postgresql
    if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
    local version cluster
    version=$(basename "$(dirname "$(pg_bindir)")")
    cluster=$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 {print $1" "$2; exit}')
    if [ -z "$cluster" ]; then
        say "creating PostgreSQL $version cluster 'main' on port 5432 (trust auth on loopback)"
        as_root pg_createcluster "$version" main --port 5432 -- --auth-host=trust --auth-local=peer >/dev/null
        cluster="$version main"
    fi
    say "starting PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086
    as_root pg_ctlcluster --skip-systemctl-redirect $cluster start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
    die "PostgreSQL did not start on 127.0.0.1:5432"
}

ensure_redis() {
    ensure_commands redis-server:redis-server redis-cli:redis-tools
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
    say "starting Redis on 127.0.0.1:6379"
    mkdir -p /tmp/redis-6379
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp/redis-6379 --logfile /tmp/redis-6379/redis.log
    for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "Redis did not start on 127.0.0.1:6379"
}

ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
    ensure_commands cc:gcc
}

# The Python virtual environment at the top of the repository (.venv): Celery
# for the demo worker and the Celery tests, the bundle tests' tools
# (tests/requirements.txt) and the benchmark suite's peers and plotting
# (scripts/bench/requirements.txt). Rebuilt when a requirements file changes.
ensure_venv() {
    local root=$1 venv=$1/.venv
    local reqs=("$root/scripts/celery/requirements.txt" "$root/tests/requirements.txt"
                "$root/scripts/bench/requirements.txt")
    ensure_commands python3:python3
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then install_packages python3-venv; fi
    if [ -x "$venv/bin/python" ] && cat "${reqs[@]}" | cmp -s - "$venv/.requirements" \
        && "$venv/bin/python" -c 'import celery, pytest' >/dev/null 2>&1; then
        return 0
    fi
    say "creating the Python virtual environment in $venv (Celery, test tools)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]/#/-r}"
    cat "${reqs[@]}" >"$venv/.requirements"
}

# kubectl with its built-in kustomize, for rendering the manifests. Debian has
# no package; fetched from dl.k8s.io when missing.
ensure_kubectl() {
    command -v kubectl >/dev/null 2>&1 && return 0
    local version=v1.32.4 arch
    arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
    say "installing kubectl $version"
    curl -fsSLo /tmp/kubectl "https://dl.k8s.io/release/$version/bin/linux/$arch/kubectl" \
        || die "cannot download kubectl: install it by hand (https://kubernetes.io/docs/tasks/tools/)"
    as_root install -m 0755 /tmp/kubectl /usr/local/bin/kubectl
}
