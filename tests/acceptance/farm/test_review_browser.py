"""The review room in a real browser: Debian's Chromium driven by Playwright.

A real ``farm worker`` (the ``farm_env`` harness) renders tiny jobs; a real ``farm api`` (uvicorn on a
free loopback port, ``FARM_API_TOKEN`` set) serves the pages. The test asserts what a person sees:
the login form; the batch grid with exactly one loaded poster per job; a clip playing in place; a
star that survives a reload; a label that shows in the seed library; "sweep around this seed"
creating child jobs that then appear, their counts and posters updating live (no reload) while the
worker renders them; ``/docs`` opening after the login with no request leaving 127.0.0.1; a CSRF-less
POST from the page refused, and the cookie alone never enough for a ``/v1`` write.

Screenshots go to ``artifacts/screenshots/`` (a CI artifact folder). Chromium is never downloaded:
without ``/usr/bin/chromium`` the test fails and says to run ``scripts/os-tools.sh``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from api_helpers import AUTH, TOKEN
from farm_harness import FARM, SMALL, FarmEnv, free_port, wait_until
from private_redis import stop_process

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
EVIL_PROMPT = "<script>alert('pwned')</script> a red fox in snow"
PROMPTS = [EVIL_PROMPT, "a paper boat in a gutter"]
SEEDS = [11, 14]  # (not neighbours: a sweep of radius 1 around 11 makes two new renders)
#: Seconds for the grid to show what the worker renders (a worker start included).
LIVE_TIMEOUT_S = 150
VIEWPORT = {"width": 1280, "height": 800}


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if found is None:
        pytest.fail("Chromium is not installed (/usr/bin/chromium): run scripts/os-tools.sh")
    return found


class ApiServer:
    """``farm api`` as a subprocess on the farm_env's ledger, broker and output dir."""

    def __init__(self, env: FarmEnv, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [FARM, "api", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env.env(FARM_API_TOKEN=TOKEN, FARM_LOG_LEVEL="WARNING"), stdout=self._out, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"farm api exited {self.proc.returncode}: {self.output()}")
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=20)  # SIGTERM, then SIGKILL
        self._out.close()


@pytest.fixture
def api(farm_env: FarmEnv, tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(farm_env, tmp_path / "api.log")
    try:
        wait_until(server.ready, 60, what="farm api")
        yield server
    finally:
        server.stop()
        assert TOKEN not in server.output()


@pytest.fixture
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def submit_batch(api: ApiServer, name: str, prompts: list[str], seeds: list[int]) -> str:
    manifest = {"name": name, "defaults": {"model": "tiny", "priority": "interactive", **SMALL},
                "items": [{"prompt": p, "seeds": seeds} for p in prompts]}
    r = httpx.post(f"{api.base}/v1/batches", json=manifest, headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["batch_id"])


def shoot(page: Any, test_name: str, what: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{test_name}-{what}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


#: How many poster <img> elements of the page actually loaded (a decoded image, not a broken icon).
LOADED_POSTERS = ("() => Array.from(document.querySelectorAll('img.poster'))"
                  ".filter(i => i.complete && i.naturalWidth > 0).length")


def test_review_room_in_a_real_browser(
    farm_env: FarmEnv, api: ApiServer, chromium: Any, request: pytest.FixtureRequest
) -> None:
    name = request.node.name
    batch_id = submit_batch(api, "browser-review", PROMPTS, SEEDS)
    jobs = farm_env.ledger.batch_jobs(batch_id)
    farm_env.start_worker()
    farm_env.wait_terminal([j.id for j in jobs], timeout=180)
    assert {j.status.value for j in farm_env.jobs([j.id for j in jobs])} == {"succeeded"}

    context = chromium.new_context(viewport=VIEWPORT)
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    dialogs: list[str] = []
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # -- the login form: a page without a session goes there, then back ------------------------------
    page.goto(f"{api.base}/ui/batches/{batch_id}")
    assert urlsplit(page.url).path == "/ui/login"
    assert page.locator("input[name=token][type=password]").is_visible()
    shoot(page, name, "login")
    page.fill("input[name=token]", "not-the-token-at-all-0000")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "That token is not valid."
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api.base}/ui/batches/{batch_id}")
    cookie = next(c for c in context.cookies() if c["name"] == "farm_ui_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # -- the grid: one loaded poster per job, the untrusted prompt as text -------------------------------
    tiles = page.locator("article.tile")
    assert tiles.count() == len(jobs)
    page.wait_for_function(f"() => ({LOADED_POSTERS})() === {len(jobs)}", timeout=30_000)
    assert page.locator("img.poster").count() == len(jobs)
    assert page.evaluate(LOADED_POSTERS) == len(jobs)
    assert page.locator("article.tile .prompt").first.inner_text() == EVIL_PROMPT
    assert page.locator("text=live progress stopped").count() == 0
    shoot(page, name, "batch-grid")

    # -- click a tile: its clip plays in place ---------------------------------------------------------
    first = tiles.nth(0)
    first.locator("a.play").click()
    video = first.locator("video")
    video.wait_for(timeout=10_000)
    page.wait_for_function(
        "() => { const v = document.querySelector('article.tile video');"
        " return v && v.readyState >= 2 && v.currentTime > 0 && v.played.length > 0; }", timeout=20_000)
    state = video.evaluate("v => ({error: v.error && v.error.code, duration: v.duration, w: v.videoWidth})")
    assert state["error"] is None and state["duration"] > 0 and state["w"] == SMALL["width"], state

    # -- a star persists after a reload ------------------------------------------------------------------
    second_id = tiles.nth(1).get_attribute("data-job-id")
    with page.expect_navigation():
        tiles.nth(1).locator("button.star").click()
    page.reload()
    starred = page.locator(f'article.tile[data-job-id="{second_id}"] button.star')
    assert starred.inner_text() == "★ starred" and starred.get_attribute("aria-pressed") == "true"
    assert farm_env.ledger.get_job(str(second_id)).starred

    # -- compare two seeds side by side -------------------------------------------------------------------
    page.locator("article.tile").nth(2).locator("input[name=job]").check()
    page.locator("article.tile").nth(3).locator("input[name=job]").check()
    page.click("#compare-form button[type=submit]")
    page.wait_for_url("**/ui/compare?**")
    assert page.locator("#compare video").count() == 2
    page.click("#play-all")
    page.wait_for_function("() => Array.from(document.querySelectorAll('#compare video'))"
                           ".every(v => v.readyState >= 2 && v.currentTime > 0 && !v.paused)", timeout=20_000)
    shoot(page, name, "compare")

    # -- a label set on the job page shows in the seed library ----------------------------------------------
    third_id = str(page.locator("#compare figure").nth(0).get_attribute("data-job-id"))
    page.goto(f"{api.base}/ui/jobs/{third_id}")
    page.fill("input[name=labels]", "Keeper, hero-shot")
    with page.expect_navigation():
        page.click(".labels-form button[type=submit]")
    page.click("header nav >> text=Seed library")
    assert [t.get_attribute("data-job-id") for t in page.locator("article.tile").all()] == [second_id]
    page.goto(f"{api.base}/ui/library?label=keeper")
    labelled = page.locator("article.tile")
    assert labelled.count() == 1 and labelled.get_attribute("data-job-id") == third_id
    assert labelled.locator(".label").all_inner_texts() == ["hero-shot", "keeper"]
    shoot(page, name, "seed-library")

    # -- sweep around a seed: the child jobs appear, and the grid follows them live -----------------------
    farm_env.stop_all()  # no worker: the children wait, so the page sees them queued first
    first_id = str(jobs[0].id)
    page.goto(f"{api.base}/ui/jobs/{first_id}")
    page.fill("input[name=radius]", "1")
    page.click(".sweep-form button[type=submit]")
    page.wait_for_url("**/ui/batches/**")
    sweep_batch = urlsplit(page.url).path.rsplit("/", 1)[1]
    children = farm_env.ledger.batch_jobs(sweep_batch)
    assert sorted(c.seed for c in children) == [SEEDS[0] - 1, SEEDS[0] + 1]
    assert {c.parent_job_id for c in children} == {first_id}
    assert sorted(t.get_attribute("data-job-id") for t in page.locator("article.tile").all()) == sorted(
        c.id for c in children)
    assert page.locator('[data-count="queued"]').inner_text() == "2"
    assert page.locator("img.poster").count() == 0
    page.evaluate("() => { window.__sameDocument = true; }")
    farm_env.start_worker()
    page.wait_for_function("() => document.querySelector('[data-count=\"succeeded\"]').textContent === '2'",
                           timeout=LIVE_TIMEOUT_S * 1000)
    page.wait_for_function(f"() => ({LOADED_POSTERS})() === 2", timeout=30_000)
    assert page.evaluate("() => window.__sameDocument === true")  # updated in place, never reloaded
    assert page.locator('[data-count="queued"]').inner_text() == "0"
    assert page.locator("#finished").inner_text() == "2"
    assert int(page.locator("#batch").get_attribute("data-polls") or 0) >= 2
    assert page.locator("#batch").get_attribute("data-done") == "true"

    # -- CSRF: a POST from the page without the token is refused; the cookie alone never writes /v1 --------
    child_id = children[0].id
    refused = page.evaluate(
        "async (id) => (await fetch(`/ui/jobs/${id}/star`, {method: 'POST', body: new URLSearchParams({starred: '1'}),"
        " redirect: 'manual'})).status", child_id)
    assert refused == 403
    v1 = page.evaluate(
        "async () => (await fetch('/v1/jobs', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({prompt: 'made by a cookie', seed: 1})})).status")
    assert v1 == 401
    assert not farm_env.ledger.get_job(child_id).starred
    accepted = page.evaluate(
        "async (id) => { const t = document.querySelector('meta[name=csrf-token]').content;"
        " return (await fetch(`/ui/jobs/${id}/star`, {method: 'POST', headers: {'X-CSRF-Token': t},"
        " body: new URLSearchParams({starred: '1'}), redirect: 'manual'})).type; }", child_id)
    assert accepted == "opaqueredirect"  # the 303 back to the page: it went through
    assert farm_env.ledger.get_job(child_id).starred

    # -- /docs after the login: the API's title, every request to 127.0.0.1 ------------------------------
    page.goto(f"{api.base}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("farm")
    page.locator(".opblock-summary-path", has_text="/v1/batches").first.wait_for(timeout=10_000)
    shoot(page, name, "docs")

    assert not dialogs, dialogs  # the <script> prompt never ran
    web = [u for u in requests if u.startswith(("http:", "https:", "ws:", "wss:"))]
    assert web and all(urlsplit(u).hostname == "127.0.0.1" for u in web), sorted(set(web))
    assert any(urlsplit(u).path == "/docs/assets/swagger-ui-bundle.js" for u in web)
    context.close()
