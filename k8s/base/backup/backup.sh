#!/bin/bash
# Nightly logical backup of BookedBarber's database, run by the CronJob
# bookedbarber-postgres-backup (docs/deploy.md: run one by hand, restore).
#
# Writes `pg_dump -Fc` to $BACKUP_DIR/bookedbarber-<UTC YYYYmmddTHHMMSSZ>.dump,
# checks that pg_restore can read it, then deletes the dumps whose timestamp
# is more than $BACKUP_RETENTION_DAYS days old (default 7). Any failure exits
# non-zero, so the Job fails and the CronJob's last successful time (which
# the BookedBarberPostgresBackupTooOld alert watches) stays where it was.
#
# Connection: the libpq variables PGHOST, PGPORT, PGUSER, PGDATABASE; the
# password from the file $PGPASSWORD_FILE (a mounted Secret) when set.
set -euo pipefail
umask 077

dir=${BACKUP_DIR:-/backups}
days=${BACKUP_RETENTION_DAYS:-7}
if ! [[ $days =~ ^[1-9][0-9]*$ ]]; then
    echo "backup: BACKUP_RETENTION_DAYS must be a whole number of days (1 or more), not '$days'" >&2
    exit 2
fi
if [[ -n ${PGPASSWORD_FILE:-} ]]; then
    PGPASSWORD=$(<"$PGPASSWORD_FILE")
    export PGPASSWORD
fi

now=$(date -u +%s)
file="$dir/bookedbarber-$(date -u -d "@$now" +%Y%m%dT%H%M%SZ).dump"
partial="$file.partial"
trap 'rm -f "$partial"' EXIT

echo "backup: dumping ${PGDATABASE:-?} from ${PGHOST:-?}:${PGPORT:-5432} to $file"
pg_dump --format=custom --file="$partial"
pg_restore --list "$partial" >/dev/null
mv "$partial" "$file"
echo "backup: wrote $file ($(stat -c %s "$file") bytes)"

# The timestamps in the names have a fixed width, so comparing them as text
# compares them as times.
cutoff=$(date -u -d "@$((now - days * 86400))" +%Y%m%dT%H%M%SZ)
shopt -s nullglob
for old in "$dir"/bookedbarber-*.dump; do
    stamp=${old##*/bookedbarber-}
    stamp=${stamp%.dump}
    if [[ $stamp =~ ^[0-9]{8}T[0-9]{6}Z$ && $stamp < $cutoff ]]; then
        rm -f -- "$old"
        echo "backup: deleted $old (older than $days days)"
    fi
done
