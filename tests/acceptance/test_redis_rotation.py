"""The runbook's Redis password rotation, step by step, on a private redis-server with a password.

While both passwords are accepted, farm processes move to the new one (new broker URL) one by
one; then the old one is removed and only the new one works. A producer on the new URL sends all
along.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from private_redis import free_port, stop_process

from farm.queue.app import make_app
from farm.queue.enqueue import broker_reachable
from farm.settings import Settings

OLD = "old-" + "0123456789abcdef"
NEW = "new-" + "fedcba9876543210"


def reachable(port: int, password: str, tmp_path: Path) -> bool:
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    return broker_reachable(make_app(Settings(broker_url=url, data_dir=tmp_path)), 2.0)


def test_rotate_the_redis_password_without_downtime(tmp_path: Path) -> None:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is needed"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
                             "--requirepass", OLD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = redis.Redis(port=port, password=OLD)
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        assert reachable(port, OLD, tmp_path) and not reachable(port, NEW, tmp_path)
        # step 1: add the new password next to the old one (ACL SETUSER default >NEW)
        admin.execute_command("ACL", "SETUSER", "default", "on", f">{NEW}")
        assert reachable(port, OLD, tmp_path) and reachable(port, NEW, tmp_path)
        # step 2 (services restarted one by one with the new URL): both work meanwhile
        # step 3: remove the old password (ACL SETUSER default <OLD)
        redis.Redis(port=port, password=NEW).execute_command("ACL", "SETUSER", "default", f"<{OLD}")
        assert reachable(port, NEW, tmp_path)
        # a new connection with the old password is refused (connections made before keep working
        # until they close: that is why every process moves to the new URL first)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password=OLD).ping()
        admin.close()
    finally:
        stop_process(proc)
