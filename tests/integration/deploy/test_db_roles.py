"""The least-privilege Postgres roles of ``ops/postgres/init-roles.sh``, made for real on the test server.

A fresh database and two roles of this test's own (random names, dropped at the end). The script
the postgres container runs makes them; the owner role migrates; the app role then submits and
records jobs through farm's producer client and Ledger, but cannot drop, alter or create a table.
A table a later migration creates (as the owner) is the app role's to use at once: default
privileges, nothing to re-grant. Running the script again changes nothing (idempotent), and it
hands the tables of a ledger made before the roles existed to the owner.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pg
import psycopg
import pytest
from psycopg import errors, sql
from sqlalchemy.engine import make_url

from farm.client import Client
from farm.ledger import JobStatus, Ledger
from farm.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
INIT_ROLES = ROOT / "ops" / "postgres" / "init-roles.sh"


class Roles:
    def __init__(self, database: str, tmp: Path) -> None:
        suffix = secrets.token_hex(4)
        self.database = database
        self.owner, self.app = f"farm_t_owner_{suffix}", f"farm_t_app_{suffix}"
        self.owner_file, self.app_file = tmp / "pg_owner_password", tmp / "pg_app_password"
        self.owner_file.write_text("owner-" + secrets.token_urlsafe(16) + "\n")
        self.app_file.write_text("app-" + secrets.token_urlsafe(16) + "\n")

    def run_init(self) -> subprocess.CompletedProcess[str]:
        admin = make_url(pg.admin_url())
        env = {**os.environ, "PGHOST": admin.host or "127.0.0.1", "PGPORT": str(admin.port or 5432),
               "POSTGRES_USER": admin.username or "postgres", "FARM_DB": self.database,
               "FARM_OWNER_ROLE": self.owner, "FARM_APP_ROLE": self.app,
               "FARM_OWNER_PASSWORD_FILE": str(self.owner_file), "FARM_APP_PASSWORD_FILE": str(self.app_file)}
        if admin.password:
            env["PGPASSWORD"] = admin.password
        result = subprocess.run(["sh", str(INIT_ROLES)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    def url(self, role: str, password_file: Path) -> str:
        return make_url(pg.database_url(self.database)).set(
            username=role, password=password_file.read_text().strip()).render_as_string(hide_password=False)

    @property
    def owner_url(self) -> str:
        return self.url(self.owner, self.owner_file)

    @property
    def app_url(self) -> str:
        return self.url(self.app, self.app_file)


@pytest.fixture
def roles(pg_admin: pg.PgAdmin, tmp_path: Path) -> Iterator[Roles]:
    name = pg_admin.create(pg.DATABASE_PREFIX)
    made = Roles(name, tmp_path)
    try:
        yield made
    finally:
        pg_admin.drop(name)  # first: the roles own it and what is in it
        with psycopg.connect(pg.libpq_url(pg.admin_url()), autocommit=True) as conn:
            for role in (made.app, made.owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(pg.libpq_url(url), autocommit=True)


def test_the_app_role_writes_jobs_but_cannot_change_the_schema(roles: Roles, tmp_path: Path) -> None:
    out = roles.run_init()
    assert roles.owner in out.stdout and roles.app in out.stdout
    with Ledger(roles.owner_url) as owner_ledger:
        before, after = owner_ledger.upgrade("head")  # what `farm db upgrade` (the migrate service) does
        assert before is None and after == owner_ledger.head_revision()

    # The producer side (API, CLI) as the app role: submit, and the job is recorded and sent.
    settings = Settings(database_url=roles.app_url, data_dir=tmp_path / "data")
    with Client(settings=settings) as client:
        [job_id] = client.submit("a red fox running through snow", seed=7, steps=4)
        [other_id] = client.submit("a paper boat", seed=3, priority="batch")
    # The worker side as the app role: presence, claim, heartbeat, success, failure.
    with Ledger.from_settings(settings) as ledger:  # refuses a ledger not at head: this one is
        ledger.worker_seen("farm-gpu0@test", host="test", device="cuda:0", pid=1, state="idle")
        ledger.register_model("tiny", "f" * 64, worker="farm-gpu0@test")
        job = ledger.claim(job_id, worker_host="farm-gpu0@test", worker_device="cuda:0", lease_s=60)
        assert job is not None and job.status is JobStatus.RUNNING
        assert ledger.heartbeat(job_id, worker_host="farm-gpu0@test", lease_s=60, progress=0.5)
        done = ledger.record_success(
            job_id, output_uri="s3://farm-outputs/renders/ab/x/video.mp4", file_sha256="a" * 64,
            frames_sha256="b" * 64, effective_params={"steps": 4}, weights_fingerprint="f" * 64,
            env_fingerprint={"torch": "test"}, timings={"render_s": 0.1}, worker_host="farm-gpu0@test")
        assert done.status is JobStatus.SUCCEEDED
        assert ledger.claim(other_id, worker_host="farm-gpu0@test", worker_device="cuda:0", lease_s=60)
        failed = ledger.record_failure(other_id, error_type="RenderError", error_message="boom", retry=False,
                                       worker_host="farm-gpu0@test")
        assert failed.status is JobStatus.FAILED
        assert [e.kind for e in ledger.events(job_id)][-1] == "succeeded"

    with connect(roles.app_url) as app:
        for statement in ("DROP TABLE jobs", "ALTER TABLE jobs ADD COLUMN sneaky text", "TRUNCATE events",
                          "CREATE TABLE sneaky (id int)", "DROP TABLE alembic_version"):
            with pytest.raises(errors.InsufficientPrivilege):
                app.execute(statement)
        assert app.execute("SELECT count(*) FROM jobs").fetchone() == (2,)

    # A later migration (as the owner) adds a table: the app role may use it at once.
    with connect(roles.owner_url) as owner:
        owner.execute("CREATE TABLE later (id bigserial PRIMARY KEY, note text)")
        owner.execute("ALTER TABLE jobs ADD COLUMN later_note text")  # the owner may change the schema
    with connect(roles.app_url) as app:
        app.execute("INSERT INTO later (note) VALUES ('from the app role')")
        assert app.execute("SELECT note FROM later").fetchone() == ("from the app role",)
        with pytest.raises(errors.InsufficientPrivilege):
            app.execute("DROP TABLE later")
    # The runbook's backup (ops/ledger/backup.sh) runs with the app role's URL: it may read everything.
    dump = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                           f"--file={tmp_path / 'ledger.dump'}", f"--dbname={pg.libpq_url(roles.app_url)}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert dump.returncode == 0, dump.stderr


def test_the_script_is_idempotent_and_takes_over_an_older_ledger(roles: Roles, pg_admin: pg.PgAdmin) -> None:
    # A ledger made before the roles existed: migrated by the admin (the old compose file's superuser).
    with Ledger(pg.database_url(roles.database)) as old:
        old.upgrade("head")
    roles.run_init()
    roles.run_init()  # again: nothing fails, nothing changes
    with connect(roles.owner_url) as owner:
        owners = {r[0] for r in owner.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'i')")}
        assert owners == {roles.owner}
    with Ledger.from_settings(Settings(database_url=roles.app_url)) as ledger:
        ledger.worker_seen("farm-cpu@test", host="test", device="cpu", pid=2, state="idle")
        assert [w.name for w in ledger.list_workers()] == ["farm-cpu@test"]
    with connect(roles.app_url) as app, pytest.raises(errors.InsufficientPrivilege):
        app.execute("ALTER TABLE workers DROP COLUMN host")
