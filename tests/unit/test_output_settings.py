"""``FARM_OUTPUT_URL`` and the ``FARM_S3_*`` settings: the two output store forms, checked at startup.

No server here: opening an s3 store neither connects nor imports the S3 client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.settings import DEFAULT_S3_PRESIGN_EXPIRY_S, MAX_S3_PRESIGN_EXPIRY_S, Settings
from farm.store import OutputStore, S3OutputStore, open_store
from farm.store.s3 import S3Location


def test_the_file_forms(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path)
    assert default.output_store_kind == "file" and default.outputs_path == tmp_path / "outputs"
    assert default.output_store_url == (tmp_path / "outputs").as_uri()
    by_dir = Settings(data_dir=tmp_path, output_dir=tmp_path / "elsewhere")  # FARM_OUTPUT_DIR as today
    assert by_dir.output_store_url == (tmp_path / "elsewhere").as_uri()
    by_url = Settings(data_dir=tmp_path, output_url=(tmp_path / "by url").as_uri())
    assert by_url.output_store_kind == "file" and by_url.outputs_path == tmp_path / "by url"
    store = open_store(by_url)
    assert isinstance(store, OutputStore) and store.root == tmp_path / "by url"


def test_the_s3_form(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, output_url="s3://bucket/a/prefix/", s3_endpoint_url="http://minio:9000",
                        s3_access_key_id="key", s3_secret_access_key="very-secret-value")
    assert settings.output_store_kind == "s3" and settings.output_store_url == "s3://bucket/a/prefix/"
    assert settings.outputs_path == tmp_path / "staging"  # the local staging of renders before upload
    assert settings.s3_presign_expiry_s == DEFAULT_S3_PRESIGN_EXPIRY_S
    assert "very-secret-value" not in repr(settings) and "very-secret-value" not in str(settings.model_dump())
    store = open_store(settings)
    assert isinstance(store, S3OutputStore)
    assert store.location == "s3://bucket/a/prefix" and "very-secret-value" not in repr(store)
    staged = Settings(data_dir=tmp_path, output_url="s3://bucket", output_dir=tmp_path / "stage")
    assert staged.outputs_path == tmp_path / "stage"
    assert S3Location.parse("s3://bucket") == S3Location("bucket", "")


@pytest.mark.parametrize("url", [
    "http://bucket/prefix", "s3://", "s3:///prefix", "s3://key:secret@bucket/p", "file://host/srv/out", "bucket/p",
])
def test_bad_output_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(output_url=url)
    assert "FARM_OUTPUT_URL" in str(info.value)


def test_a_refused_url_is_not_repeated_in_the_error() -> None:
    """Credentials put in FARM_OUTPUT_URL by mistake never reach a log through the validation error."""
    with pytest.raises(ValidationError) as info:
        Settings(output_url="s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@bucket/p")
    assert "wJalrXUtnFEMIsecret" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)


@pytest.mark.parametrize("seconds", [0, MAX_S3_PRESIGN_EXPIRY_S + 1])
def test_presign_expiry_bounds(seconds: int) -> None:
    with pytest.raises(ValidationError):
        Settings(s3_presign_expiry_s=seconds)


def test_opening_an_s3_store_loads_no_s3_client() -> None:
    code = ("import json, sys; from farm.settings import Settings; from farm.client import Client; "
            "from farm.store import open_store; "
            "s = open_store(Settings(output_url='s3://b/p', s3_endpoint_url='http://127.0.0.1:9')); "
            "print(json.dumps({'obstore': 'obstore' in sys.modules, 'where': s.where('s3://x/y/ab/' + 'ab' * 32 + "
            "'/video.mp4')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"obstore": False, "where": "s3://b/p/ab/" + "ab" * 32 + "/video.mp4"}
