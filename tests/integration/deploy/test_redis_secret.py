"""docker-compose.yml's Redis, run here: its own command and healthcheck, on a private port.

The compose ``command`` (a shell script) runs as written, but for three stand-ins: the secret
file's path (a file of this test's), the image's ``docker-entrypoint.sh`` (a shim that runs its
arguments) and a free loopback port. It starts a Redis that refuses clients without the password,
keeps AOF on with ``noeviction``, and has the password on no command line; the compose healthcheck
passes with the password file and fails with a wrong one; ``farm health`` reaches it with the
broker URL from a file, and prints no password.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from private_redis import free_port, stop_process
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parents[3]
FARM = str(Path(sys.executable).with_name("farm"))
SECRET_PATH = "/run/secrets/redis_password"


def compose_redis() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"])


def unescape(text: str) -> str:
    """What compose hands the container: ``$$`` is a literal ``$``."""
    return text.replace("$$", "$")


class ComposeRedis:
    def __init__(self, tmp: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed", pytrace=False)
        self.password = "pw" + secrets.token_hex(12)
        self.secret = tmp / "redis_password"
        self.secret.write_text(self.password + "\n")
        shim = tmp / "bin" / "docker-entrypoint.sh"
        shim.parent.mkdir()
        shim.write_text('#!/bin/sh\nexec "$@"\n')
        shim.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}
        self.port = free_port()
        service = compose_redis()
        command = service["command"]
        assert command[:2] == ["sh", "-c"]
        script = unescape(command[2]).replace(SECRET_PATH, str(self.secret))
        script = script.replace("redis-server ", f"redis-server --port {self.port} --bind 127.0.0.1 ", 1)
        check = unescape(service["healthcheck"]["test"][1])
        self.healthcheck = check.replace("redis-cli ", f"redis-cli -p {self.port} ")
        self.data = tmp / "data"
        self.data.mkdir()
        self.proc = subprocess.Popen(["sh", "-c", script], cwd=self.data, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("the compose redis command did not start", pytrace=False)
                time.sleep(0.05)

    def check(self, secret_path: Path) -> int:
        script = self.healthcheck.replace(SECRET_PATH, str(secret_path))
        return subprocess.run(["sh", "-c", script], env=self.env, capture_output=True, timeout=30,
                              check=False).returncode

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)


@pytest.fixture
def compose_redis_server(tmp_path: Path) -> Iterator[ComposeRedis]:
    server = ComposeRedis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_redis_requires_the_secret_password(compose_redis_server: ComposeRedis) -> None:
    server = compose_redis_server
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    wrong = redis.Redis(host="127.0.0.1", port=server.port, password="not-" + server.password,
                        retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()
    assert server.client.ping()
    config = server.client.config_get("*")
    assert config["appendonly"] == "yes" and config["maxmemory-policy"] == "noeviction"
    assert config["requirepass"] == server.password
    # the password is on no command line (what `ps` shows on the host)
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    assert b"redis-server" in cmdline and server.password.encode() not in cmdline
    assert list(server.data.glob("appendonlydir*")), "no AOF written in the data directory"


def test_the_compose_healthcheck(compose_redis_server: ComposeRedis, tmp_path: Path) -> None:
    assert compose_redis_server.check(compose_redis_server.secret) == 0
    wrong = tmp_path / "wrong_password"
    wrong.write_text("not-the-password\n")
    assert compose_redis_server.check(wrong) != 0


def test_farm_reaches_it_with_the_broker_url_from_a_file(compose_redis_server: ComposeRedis, pg_url: str,
                                                         tmp_path: Path) -> None:
    server = compose_redis_server
    url_file = tmp_path / "broker_url"
    url_file.write_text(f"redis://:{server.password}@127.0.0.1:{server.port}/0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATA_DIR=str(tmp_path / "farm"), FARM_BROKER_URL_FILE=str(url_file), FARM_DATABASE_URL=pg_url)
    result = subprocess.run([FARM, "health", "--timeout", "5"], env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.password not in result.stdout + result.stderr
    assert f"redis://:***@127.0.0.1:{server.port}/0 answered" in result.stdout
