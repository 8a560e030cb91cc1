"""``FARM_<NAME>_FILE``: a secret setting read from a file (a compose secret), only when ``FARM_<NAME>`` is unset.

farm/settings.py reads these files (it is the one module that reads the environment); a file that
cannot be read refuses the settings with an error naming the variable and the path, never the content.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.cli.common import settings_with
from farm.errors import InvalidInput
from farm.settings import FILE_SETTINGS, Settings, get_settings, reset_settings_cache

BROKER = "redis://:" + "broker-pw-0123456789" + "@redis:6379/0"
DATABASE = "postgresql+psycopg://farm_app:" + "db-pw-0123456789" + "@postgres:5432/farm"


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    (tmp_path / "broker_url").write_text(BROKER + "\n")  # as an editor or `echo` leaves it
    (tmp_path / "database_url").write_text(DATABASE)
    (tmp_path / "api_token").write_text("  token-" + "abcdefghijklmnop" + "\n\n")
    (tmp_path / "flower_basic_auth").write_text("ops:" + "flower-pw-123\n")
    return tmp_path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in FILE_SETTINGS:
        monkeypatch.delenv(f"FARM_{name.upper()}", raising=False)
        monkeypatch.delenv(f"FARM_{name.upper()}_FILE", raising=False)
    reset_settings_cache()
    yield monkeypatch
    reset_settings_cache()


def test_every_file_setting_is_a_setting() -> None:
    for name in FILE_SETTINGS:
        assert name in Settings.model_fields and f"{name}_file" in Settings.model_fields


def test_the_environment_names_files(clean_env: pytest.MonkeyPatch, secret_dir: Path, tmp_path: Path) -> None:
    for name in ("broker_url", "database_url", "api_token", "flower_basic_auth"):
        clean_env.setenv(f"FARM_{name.upper()}_FILE", str(secret_dir / name))
    clean_env.setenv("FARM_DATA_DIR", str(tmp_path))
    settings = get_settings()
    assert settings.broker_url == BROKER and settings.broker == BROKER  # newline stripped
    assert settings.database_url == DATABASE and not settings.embedded
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "token-abcdefghijklmnop"
    flower = settings.flower_basic_auth
    assert flower is not None and flower.get_secret_value() == "ops:flower-pw-123"
    assert "broker-pw" not in repr(settings.broker_url_file) and "token-abc" not in repr(settings)
    # the CLI's settings (options applied on top) keep them; an option still wins
    assert settings_with().broker_url == BROKER
    assert settings_with(broker_url="redis://other:6379/0").broker_url == "redis://other:6379/0"
    assert settings_with(broker_url="redis://other:6379/0").database_url == DATABASE


def test_a_value_given_directly_wins(clean_env: pytest.MonkeyPatch, secret_dir: Path) -> None:
    clean_env.setenv("FARM_BROKER_URL", "redis://direct:6379/0")
    clean_env.setenv("FARM_BROKER_URL_FILE", str(secret_dir / "broker_url"))
    assert Settings().broker_url == "redis://direct:6379/0"
    clean_env.setenv("FARM_BROKER_URL", "")  # blank is unset: the file is read
    assert Settings().broker_url == BROKER
    clean_env.setenv("FARM_BROKER_URL_FILE", str(secret_dir / "missing"))
    clean_env.setenv("FARM_BROKER_URL", "redis://direct:6379/0")
    assert Settings().broker_url == "redis://direct:6379/0"  # the file is not even opened


def test_a_bad_file_is_refused_by_name_never_by_content(secret_dir: Path) -> None:
    (secret_dir / "empty").write_text("\n")
    (secret_dir / "wrong").write_text("http://user:" + "leaked-pw-42" + "@host/0\n")
    cases = {
        "missing": ("FARM_BROKER_URL_FILE", "cannot read"),
        "empty": ("FARM_BROKER_URL_FILE", "is empty"),
        "wrong": ("FARM_BROKER_URL", "must start with"),  # read, then validated like FARM_BROKER_URL
    }
    for file, (variable, says) in cases.items():
        with pytest.raises(ValidationError) as info:
            Settings(broker_url_file=secret_dir / file)
        message = str(info.value)
        assert variable in message and says in message, message
        assert "leaked-pw-42" not in message
    (secret_dir / "big").write_bytes(b"x" * 100_000)
    with pytest.raises(ValidationError, match="larger than"):
        Settings(api_token_file=secret_dir / "big")


def test_the_cli_reports_a_bad_file_as_bad_input(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FARM_DATABASE_URL_FILE", str(tmp_path / "nope"))
    with pytest.raises(InvalidInput) as info:
        settings_with()
    assert "FARM_DATABASE_URL_FILE" in str(info.value) and str(tmp_path / "nope") in str(info.value)
