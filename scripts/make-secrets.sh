#!/usr/bin/env bash
# Makes the secret files docker-compose.yml reads, every secret random and the files that must
# agree agreeing (the Redis password and the broker URL, each Postgres role's password and its URL):
#   scripts/make-secrets.sh [DIR]      (default ops/secrets, git-ignored)
# A file that exists is kept as it is (never overwritten), and what depends on it is derived from
# it. Files of ops/secrets.example/ this script does not know are copied; those whose example is
# exactly CHANGE-ME get a random value; the rest (webhook URLs, ...) must be edited by hand: the
# script lists every file that still holds CHANGE-ME.
# Modes: the folder 0700 (only its owner reaches the files), each file 0644: compose mounts secret
# files as they are, and the services read them as their own non-root users (farm, postgres, redis).
# Generated passwords are letters and digits (hex): they go into URLs and redis.conf unquoted.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=ops/secrets.example
DIR=${1:-ops/secrets}

umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"

random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# put NAME VALUE: write DIR/NAME unless it exists; either way print its (stripped) value.
put() {
  local path="$DIR/$1"
  if [ ! -e "$path" ]; then
    printf '%s\n' "$2" > "$path"
    chmod 644 "$path"
    echo "wrote $path" >&2
  fi
  tr -d '\n' < "$path"
}

redis=$(put redis_password "$(random)")
put broker_url "redis://:$redis@redis:6379/0" >/dev/null
put postgres_password "$(random)" >/dev/null
owner=$(put pg_owner_password "$(random)")
put database_owner_url "postgresql+psycopg://farm_owner:$owner@postgres:5432/farm" >/dev/null
app=$(put pg_app_password "$(random)")
put database_url "postgresql+psycopg://farm_app:$app@postgres:5432/farm" >/dev/null
put api_token "$(random)" >/dev/null
put flower_basic_auth "ops:$(random)" >/dev/null
put minio.env "$(printf 'MINIO_ROOT_USER=farm-admin\nMINIO_ROOT_PASSWORD=%s' "$(random)")" >/dev/null
put s3.env "$(printf 'FARM_S3_ACCESS_KEY_ID=farm\nFARM_S3_SECRET_ACCESS_KEY=%s' "$(random)")" >/dev/null

for example in "$EXAMPLES"/*; do
  name=$(basename "$example")
  [ -e "$DIR/$name" ] && continue
  if [ "$(tr -d '\n' < "$example")" = "CHANGE-ME" ]; then
    put "$name" "$(random)" >/dev/null
  else
    cp "$example" "$DIR/$name"
    chmod 644 "$DIR/$name"
    echo "copied $example to $DIR/$name" >&2
  fi
done

if grep -l CHANGE-ME "$DIR"/* >/dev/null 2>&1; then
  echo "edit these before starting (they still hold CHANGE-ME):" >&2
  grep -l CHANGE-ME "$DIR"/* | sed 's/^/  /' >&2
fi
