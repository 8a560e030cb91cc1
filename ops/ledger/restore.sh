#!/usr/bin/env bash
# Restore a farm ledger backup into an EMPTY database, then check its schema with farm.
#
#   ops/ledger/restore.sh FILE TARGET_URL     TARGET_URL: postgresql+psycopg://owner@host/farm_restored
#
# Stops at the first error (never a half-restored ledger that looks fine). Afterwards the ledger is
# at the backup's migration revision: run `farm db upgrade` if the code is newer, then point
# FARM_DATABASE_URL at it. Jobs that were queued or running at backup time are sent again by the
# reaper (their leases expire); outputs are content-addressed, so a job rendered after the backup
# is simply rendered again or answered from its stored output.
set -euo pipefail
file="${1:?usage: restore.sh FILE TARGET_URL}"
target="${2:?usage: restore.sh FILE TARGET_URL}"
libpq="${target/postgresql+psycopg:/postgresql:}"
tables="$(psql --no-psqlrc -tA --dbname="$libpq" -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")"
[[ "$tables" == "0" ]] || { echo "restore.sh: the target database is not empty ($tables tables): refusing" >&2; exit 2; }
pg_restore --exit-on-error --no-owner --no-privileges --single-transaction --dbname="$libpq" "$file"
farm db current --database-url "$target"
farm db check --database-url "$target"
echo "ledger restored from $file"
