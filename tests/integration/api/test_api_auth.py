"""Auth on every route.

The bearer token (constant-time compare), the one public path, and the start-up policy (no
token -> refuse, unless loopback + --insecure-local).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from api_helpers import AUTH, TOKEN, PrivateRedis, count_rows
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from farm.api.app import create_app
from farm.api.auth import DOCS_PATHS, MIN_TOKEN_CHARS, ApiConfigError, bearer_token, startup_token, token_matches
from farm.settings import Settings

FARM = str(Path(sys.executable).with_name("farm"))
#: Routes the API must have (the enumeration below would pass vacuously without them).
EXPECTED = {
    ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"), ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/jobs/{job_id}/video"), ("GET", "/v1/jobs/{job_id}/poster"), ("POST", "/v1/batches"),
    ("GET", "/v1/batches/{batch_id}"), ("GET", "/v1/batches/{batch_id}/results"),
    ("POST", "/v1/batches/{batch_id}/cancel"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("GET", "/redoc"),
}
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer wrong-token-wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
    {"X-Api-Token": TOKEN},
]


def all_routes(app: object) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, routers included.

    FastAPI keeps an included router as one entry that holds the original router.
    """
    out = []
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute | Route):
            out.extend((m, route.path) for m in sorted(route.methods or ()) if m != "HEAD")
        elif (router := getattr(route, "original_router", None)) is not None:
            out.extend(all_routes(router))
    assert out, "no routes found: has FastAPI changed how it keeps included routers?"
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def test_every_route_but_the_probes_requires_the_token(anon: TestClient, redis_server: PrivateRedis,
                                                       pg_url: str) -> None:
    routes = all_routes(anon.app)
    assert set(routes) >= EXPECTED
    for method, path in routes:
        for headers in BAD_HEADERS:
            r = anon.request(method, concrete(path), headers=headers, json={"prompt": "a fox", "seed": 1},
                             follow_redirects=False)
            if path in ("/healthz", "/readyz"):  # the probes: no token, no details beyond ok/unavailable
                assert r.status_code == 200, (method, path)
                assert set(r.json()) <= {"status", "ledger", "broker"} and TOKEN not in r.text
                continue
            if path in DOCS_PATHS:  # a browser's page: sent to the login form, shown nothing of the docs
                assert r.status_code == 303, (method, path, headers, r.status_code)
                assert r.headers["location"] == f"/ui/login?next=%2F{path[1:]}" and "swagger" not in r.text.lower()
                continue
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"].startswith("Bearer")
            body = r.json()
            assert body["error"] == "Unauthorized"
            assert body["problems"][0]["field"] == "Authorization"
            assert TOKEN not in r.text
    # nothing was written or sent by any of those requests
    assert count_rows(pg_url, "jobs") == 0
    assert redis_server.client.dbsize() == 0


def test_the_right_token_opens_every_route(anon: TestClient) -> None:
    for method, path in all_routes(anon.app):
        r = anon.request(method, concrete(path), headers=AUTH, json={"prompt": "a fox", "seed": 1})
        assert r.status_code != 401, (method, path)
    # the scheme is case-insensitive, the token is not
    assert anon.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert anon.get("/metrics", headers={"Authorization": f"Bearer {TOKEN.upper()}"}).status_code == 401


def test_unknown_paths_need_the_token_too(anon: TestClient) -> None:
    assert anon.get("/no/such/route").status_code == 401  # no probing which routes exist
    r = anon.get("/no/such/route", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["problems"][0]["field"] == "path"


def test_healthz_is_public_and_says_nothing_more(anon: TestClient) -> None:
    r = anon.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_token_comparison() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN, TOKEN + "x")
    assert not token_matches("", TOKEN)
    assert not token_matches("é" * 20, "e" * 20)
    assert bearer_token(f"Bearer  {TOKEN} ") == TOKEN
    assert bearer_token(f"BEARER {TOKEN}") == TOKEN
    assert bearer_token(f"Basic {TOKEN}") is None
    assert bearer_token(None) is None
    assert bearer_token("Bearer") is None


def test_start_up_policy() -> None:
    with pytest.raises(ApiConfigError, match="FARM_API_TOKEN is not set"):
        startup_token(Settings(api_token=None), host="127.0.0.1", insecure_local=False)
    with pytest.raises(ApiConfigError, match="loopback"):
        startup_token(Settings(api_token=None), host="0.0.0.0", insecure_local=True)
    with pytest.raises(ApiConfigError, match="loopback"):
        startup_token(Settings(api_token=None), host="192.168.1.5", insecure_local=True)
    short = "s3cret-" + "x" * (MIN_TOKEN_CHARS - 8)
    with pytest.raises(ApiConfigError, match="too short") as err:
        startup_token(Settings(api_token=short), host="127.0.0.1", insecure_local=False)
    assert short not in str(err.value)
    assert startup_token(Settings(api_token=None), host="127.0.0.1", insecure_local=True) is None
    assert startup_token(Settings(api_token=None), host="::1", insecure_local=True) is None
    assert startup_token(Settings(api_token=TOKEN), host="0.0.0.0", insecure_local=False) == TOKEN
    with pytest.raises(ApiConfigError):
        create_app(Settings(api_token=None, api_host="0.0.0.0"), insecure_local=True)


def test_insecure_local_serves_without_a_token(api_settings: Settings) -> None:
    open_settings = api_settings.model_copy(update={"api_token": None, "api_host": "127.0.0.1"})
    with TestClient(create_app(open_settings, insecure_local=True)) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404


def _farm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return subprocess.run([FARM, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_farm_api_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    no_token = _farm("api", FARM_DATA_DIR=data)
    assert no_token.returncode == 2
    assert "FARM_API_TOKEN" in no_token.stderr
    public = _farm("api", "--insecure-local", "--host", "0.0.0.0", FARM_DATA_DIR=data)
    assert public.returncode == 2
    assert "loopback" in public.stderr
    # an environment variable cannot switch the insecure mode on
    by_env = _farm("api", FARM_DATA_DIR=data, FARM_API_INSECURE_LOCAL="1")
    assert by_env.returncode == 2
    short = "tiny-secret-42"
    too_short = _farm("api", FARM_DATA_DIR=data, FARM_API_TOKEN=short)
    assert too_short.returncode == 2
    assert short not in too_short.stderr + too_short.stdout
