#!/usr/bin/env bash
# Back up the farm ledger: one consistent pg_dump (custom format) of FARM_DATABASE_URL.
#
#   ops/ledger/backup.sh FILE          e.g. ops/ledger/backup.sh /backups/farm-$(date -u +%F).dump
#
# The URL is read from FARM_DATABASE_URL (SQLAlchemy form, postgresql+psycopg://...) or from the
# file FARM_DATABASE_URL_FILE names; it is never printed. pg_dump takes a snapshot: workers and
# producers keep running during the backup. Use a pg_dump of the server's major version or newer.
set -euo pipefail
out="${1:?usage: backup.sh FILE}"
url="${FARM_DATABASE_URL:-}"
if [[ -z "$url" && -n "${FARM_DATABASE_URL_FILE:-}" ]]; then url="$(<"$FARM_DATABASE_URL_FILE")"; fi
[[ -n "$url" ]] || { echo "backup.sh: set FARM_DATABASE_URL (or FARM_DATABASE_URL_FILE)" >&2; exit 2; }
url="${url/postgresql+psycopg:/postgresql:}"
umask 077  # the dump holds every prompt: readable by its owner only
pg_dump --format=custom --no-owner --no-privileges --file="$out.partial" --dbname="$url"
mv "$out.partial" "$out"
echo "ledger backed up to $out ($(stat -c %s "$out") bytes)"
