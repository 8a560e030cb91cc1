"""``farm flower``'s options reach Flower: basic auth, persistent state in FARM_FLOWER_DB, purging offline workers.

A real Flower application is built (not started: no broker, no port), its state saved and loaded
by a second one, as a restart would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from farm.cli.flower import FLOWER_STATE_SAVE_INTERVAL_S, make_flower
from farm.queue.app import make_app
from farm.settings import DEFAULT_FLOWER_PURGE_OFFLINE_S, Settings

CREDENTIALS = "ops:" + "flower-pw-" + "0123456789"


def build(settings: Settings) -> Any:  # a flower.app.Flower (untyped)
    return make_flower(make_app(settings), settings, port=5555, address="127.0.0.1", credentials=CREDENTIALS)


def test_the_options_reach_flower(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", flower_db=tmp_path / "state" / "flower.db",
                        flower_purge_offline_s=600)
    flower = build(settings)
    options = flower.options
    assert (options.port, options.address, options.basic_auth, options.auth) == (5555, "127.0.0.1", [CREDENTIALS], "")
    assert options.persistent is True and options.db == str(tmp_path / "state" / "flower.db")
    assert options.state_save_interval == FLOWER_STATE_SAVE_INTERVAL_S * 1000
    assert options.purge_offline_workers == 600
    # and Flower's event keeper uses them
    assert flower.events.persistent and flower.events.db == options.db and flower.events.state_save_timer is not None


def test_the_defaults(tmp_path: Path) -> None:
    flower = build(Settings(data_dir=tmp_path))
    assert flower.options.db == str(tmp_path / "flower.db")
    assert flower.options.purge_offline_workers == DEFAULT_FLOWER_PURGE_OFFLINE_S
    assert build(Settings(data_dir=tmp_path, flower_purge_offline_s=0)).options.purge_offline_workers is None


def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, flower_db=tmp_path / "volume" / "flower.db")
    first = build(settings)
    now = time.time()
    first.events.state.event({"type": "worker-online", "hostname": "farm-gpu0@node1", "timestamp": now,
                              "local_received": now, "clock": 1, "freq": 2.0})
    first.events.save_state()  # what Flower does every interval and at shutdown
    assert list((tmp_path / "volume").glob("flower.db*"))
    second = build(settings)
    assert "farm-gpu0@node1" in second.events.state.workers
