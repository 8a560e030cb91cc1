"""``docker-compose config`` accepts docker-compose.yml, for every profile, with every secret file present.

There is no Docker engine here: Debian's ``docker-compose`` (Compose v1, 1.29; installed by
``scripts/os-tools.sh``) validates the file offline — the schema, ``${VAR}`` / ``$$``
interpolation, YAML merge keys, profiles, and that every ``env_file`` exists. The secret files come
from ``scripts/make-secrets.sh`` in a temporary copy (the real ``ops/secrets/`` is git-ignored and
may not exist). Compose v1 predates one compose-spec key the file uses, the top-level ``name:``
(Compose v2 reads it): the copy drops that line, and only that line. Compose v1 does not check that
a service's ``secrets:`` are declared at the top level: ``test_compose.py`` does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
MAKE_SECRETS = ROOT / "scripts" / "make-secrets.sh"
#: The one compose-spec key Compose v1 refuses (a top-level key): dropped from the copy.
V2_ONLY_LINE = re.compile(r"^name: [a-z0-9_-]+\n", re.MULTILINE)


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose (Compose v1) is not installed: run scripts/os-tools.sh", pytrace=False)
    return exe


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the compose project: the compose file (without ``name:``) and generated secrets."""
    root = tmp_path_factory.mktemp("compose")
    text = COMPOSE.read_text(encoding="utf-8")
    assert len(V2_ONLY_LINE.findall(text)) == 1
    (root / "docker-compose.yml").write_text(V2_ONLY_LINE.sub("", text), encoding="utf-8")
    made = subprocess.run([str(MAKE_SECRETS), str(root / "ops" / "secrets")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    return root


def config(project: Path, *args: str, compose_file: str = "docker-compose.yml") -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project)}  # no host variables interpolated
    return subprocess.run([docker_compose(), "-f", compose_file, *args, "config", "-q"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("profiles", [("gpu", "cpu"), ("gpu",), ("cpu",), ()], ids=["gpu+cpu", "gpu", "cpu", "none"])
def test_compose_accepts_the_file(project: Path, profiles: tuple[str, ...]) -> None:
    args = [word for profile in profiles for word in ("--profile", profile)]
    result = config(project, *args)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_a_broken_file(project: Path) -> None:
    """The validator is real: an unknown service key, an unescaped ``$(``, a missing env file are refused."""
    text = (project / "docker-compose.yml").read_text(encoding="utf-8")
    broken = {
        "unknown-key": text.replace("  redis:\n", "  redis:\n    no_such_key: 1\n", 1),
        "unescaped": text.replace("$$(cat /run/secrets/redis_password)", "$(cat /run/secrets/redis_password)", 1),
        "env-file": text.replace("ops/secrets/s3.env", "ops/secrets/missing.env", 1),
    }
    for name, variant in broken.items():
        assert variant != text, name
        (project / f"{name}.yml").write_text(variant, encoding="utf-8")
        result = config(project, "--profile", "gpu", "--profile", "cpu", compose_file=f"{name}.yml")
        assert result.returncode != 0, f"{name}: accepted"


def test_make_secrets_writes_agreeing_secrets_once(tmp_path: Path) -> None:
    """Every secret the compose file names, the pairs that must agree agreeing, nothing overwritten."""
    target = tmp_path / "secrets"
    first = subprocess.run([str(MAKE_SECRETS), str(target)], capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    read = {p.name: p.read_text().strip() for p in target.iterdir()}
    assert read["broker_url"] == f"redis://:{read['redis_password']}@redis:6379/0"
    assert read["database_url"] == f"postgresql+psycopg://farm_app:{read['pg_app_password']}@postgres:5432/farm"
    owner = f"postgresql+psycopg://farm_owner:{read['pg_owner_password']}@postgres:5432/farm"
    assert read["database_owner_url"] == owner
    assert len(read["api_token"]) >= 16 and read["flower_basic_auth"].startswith("ops:")
    assert len({read["redis_password"], read["pg_app_password"], read["pg_owner_password"]}) == 3
    assert (target.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in target.iterdir())
    for example in (ROOT / "ops" / "secrets.example").iterdir():  # one of each
        assert (target / example.name).is_file(), example.name
    (target / "broker_url").unlink()
    again = subprocess.run([str(MAKE_SECRETS), str(target)], capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text().strip() for p in target.iterdir()} == read  # kept, and re-derived
