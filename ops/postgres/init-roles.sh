#!/bin/sh
# The farm's Postgres roles (docker-compose.yml mounts this into the postgres container's
# /docker-entrypoint-initdb.d/, so it runs once, when the data volume is first initialised):
#
#   farm_owner  owns the database, its schema and every table: the only role that may change the
#               schema. Only `farm db upgrade` (the migrate service) connects as it.
#   farm_app    what every other farm process (api, workers) connects as: SELECT, INSERT, UPDATE,
#               DELETE on the tables and USAGE, SELECT on the sequences; no CREATE, ALTER or DROP.
#
# Tables that later migrations create are the owner's too, and ALTER DEFAULT PRIVILEGES below gives
# the app role the same rights on them: nothing to re-grant after an upgrade. Run it again (it is
# idempotent) to re-grant by hand, to change a password, or to bring in a ledger made before these
# roles existed: it hands the tables to the owner role and grants the app role on all of them.
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-init-roles.sh
#
# The passwords come from files (compose secrets), never from the command line:
#   FARM_OWNER_PASSWORD_FILE  default /run/secrets/pg_owner_password
#   FARM_APP_PASSWORD_FILE    default /run/secrets/pg_app_password
# Optional: FARM_DB (default $POSTGRES_DB, else farm), FARM_OWNER_ROLE (farm_owner), FARM_APP_ROLE
# (farm_app). psql connects as $POSTGRES_USER (default postgres), a superuser, through whatever
# libpq's PG* variables say (in the container during initialisation: its local socket).
# Works executed or sourced (the image's entrypoint sources a script that is not executable).

farm_init_roles() (
  set -eu
  db=${FARM_DB:-${POSTGRES_DB:-farm}}
  owner=${FARM_OWNER_ROLE:-farm_owner}
  app=${FARM_APP_ROLE:-farm_app}
  FARM_OWNER_PASSWORD=$(cat "${FARM_OWNER_PASSWORD_FILE:-/run/secrets/pg_owner_password}")
  FARM_APP_PASSWORD=$(cat "${FARM_APP_PASSWORD_FILE:-/run/secrets/pg_app_password}")
  if [ -z "$FARM_OWNER_PASSWORD" ] || [ -z "$FARM_APP_PASSWORD" ]; then
    echo "init-roles: a password file is empty" >&2
    exit 1
  fi
  # psql reads the passwords from its environment (\getenv): they are on no command line.
  export FARM_OWNER_PASSWORD FARM_APP_PASSWORD
  psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" --dbname "$db" \
    -v db="$db" -v owner="$owner" -v app="$app" <<'SQL'
\getenv owner_password FARM_OWNER_PASSWORD
\getenv app_password FARM_APP_PASSWORD
SELECT format('CREATE ROLE %I', :'owner') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I', :'app') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"owner" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'owner_password';
ALTER ROLE :"app" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';

-- Only the two roles (and superusers) connect; only the owner creates anything.
ALTER DATABASE :"db" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"app";
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";

-- A ledger made before: the owner takes over its tables and views (their indexes and the sequences
-- of their columns follow), then any other sequence.
SELECT format('ALTER TABLE %I.%I OWNER TO %I', n.nspname, c.relname, :'owner')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') AND pg_get_userbyid(c.relowner) <> :'owner' \gexec
SELECT format('ALTER SEQUENCE %I.%I OWNER TO %I', n.nspname, c.relname, :'owner')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'S' AND pg_get_userbyid(c.relowner) <> :'owner' \gexec

-- The app role: data, never schema. On what exists now, and on what the owner creates later.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"app";
SQL
  echo "init-roles: $owner owns database $db; $app may read and write its tables"
)

farm_init_roles
