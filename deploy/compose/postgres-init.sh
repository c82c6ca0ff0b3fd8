#!/bin/sh
# Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
# Creates the catalog database, a sample "school" database, a read-only backup role and
# a drill role. Passwords come from deploy/compose/backup-tasks.env and travel on stdin,
# never on a command line.
set -eu

# The catalog password is the one inside BACKUP_CATALOG_URL (user:password@host).
catalog_password=$(printf '%s' "$BACKUP_CATALOG_URL" | sed -E 's#^[^:]+://[^:]+:([^@]*)@.*$#\1#')
case "$catalog_password" in
  ""|"$BACKUP_CATALOG_URL") echo "postgres-init: BACKUP_CATALOG_URL has no password" >&2; exit 1 ;;
esac

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE backup_catalog LOGIN PASSWORD '$catalog_password';
CREATE DATABASE backup_catalog OWNER backup_catalog;
-- pg_dump reads everything; it writes nothing
CREATE ROLE backup LOGIN PASSWORD '$SCHOOL_DB_PASSWORD';
GRANT pg_read_all_data TO backup;
-- restore drills create and drop scratch databases
CREATE ROLE backup_drill LOGIN CREATEDB PASSWORD '$DRILL_DB_PASSWORD';
CREATE DATABASE school;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname school <<'SQL'
CREATE TABLE students (id serial PRIMARY KEY, name text NOT NULL, enrolled date NOT NULL DEFAULT current_date);
INSERT INTO students (name) SELECT 'student ' || n FROM generate_series(1, 100) AS n;
SQL
