"""The review room (``/ui``) through FastAPI's TestClient: real Postgres, a private Redis, renders in-process.

Login and logout (a signed, HttpOnly, SameSite=Strict cookie), the redirect of every page to the
login form, wrong tokens and the per-address rate limit, the CSRF token on every state-changing
request, a cookie never being enough for a ``/v1`` write, untrusted prompts and tags escaped,
the grid's filters and pages, sweep / promote / cancel / star / labels from the pages, the live
progress JSON, the contact sheet and report links, and ``/docs`` from local files.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import AUTH, TOKEN, count_rows
from fastapi.testclient import TestClient

from farm.api.app import create_app
from farm.api.review.session import COOKIE_NAME, LOGIN_MAX_FAILURES
from farm.api.review.views import BATCHES_PER_PAGE, JOBS_PER_PAGE
from farm.ledger import JobStatus, Ledger
from farm.settings import Settings

SMALL = {"steps": 2, "width": 32, "height": 32, "num_frames": 9}
EVIL_PROMPT = '<script>alert("pwned")</script> a fox & <b>bold</b>'
EVIL_TAG = '<img src=x onerror="alert(1)">'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def http(api_settings: Settings) -> Iterator[TestClient]:
    """A bearer-token client (the API's own door), to submit what the pages show."""
    with TestClient(create_app(api_settings), headers=AUTH) as client:
        yield client


@pytest.fixture
def browser(api_settings: Settings) -> Iterator[TestClient]:
    """A browser-like client: no bearer token, keeps cookies, does not follow redirects."""
    with TestClient(create_app(api_settings), follow_redirects=False) as client:
        yield client


def render_jobs(ledger: Ledger, settings: Settings, engine: Any, job_ids: list[str]) -> None:
    """Run queued jobs through the real runner, as a worker does."""
    from farm.store.writer import OutputWriter
    from farm.worker.runner import JobRunner

    runner = JobRunner(ledger=ledger, engine=engine, store=OutputWriter(settings.outputs_path),
                       worker_host="test-cpu@here", worker_device="cpu", lease_s=60, heartbeat_s=5)
    outcomes = runner.run(job_ids)
    assert [o.outcome for o in outcomes] == ["succeeded"] * len(job_ids), outcomes


def submit_batch(http: TestClient, items: list[dict[str, Any]], name: str = "review-batch") -> str:
    manifest = {"name": name, "defaults": {"model": "tiny", "priority": "batch", **SMALL}, "items": items}
    r = http.post("/v1/batches", json=manifest)
    assert r.status_code in (201, 202), r.text
    return str(r.json()["batch_id"])


def login(browser: TestClient, token: str = TOKEN, next_url: str = "/ui/batches") -> Any:
    return browser.post("/ui/login", data={"token": token, "next": next_url})


def csrf_of(browser: TestClient, page: str = "/ui/batches") -> str:
    r = browser.get(page)
    assert r.status_code == 200, r.text
    found = CSRF_META.search(r.text)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def logged_in(browser: TestClient) -> str:
    assert login(browser).status_code == 303
    return csrf_of(browser)


def tile_ids(html: str) -> list[str]:
    return re.findall(r'<article class="tile" data-job-id="([0-9a-f-]{36})"', html)


def batch_jobs(ledger: Ledger, batch_id: str) -> list[Any]:
    return ledger.batch_jobs(batch_id)


# -- login, logout, redirects ----------------------------------------------------------------------


def test_every_ui_page_redirects_to_the_login_form_without_a_session(
    browser: TestClient, http: TestClient, ledger: Ledger
) -> None:
    batch_id = submit_batch(http, [{"prompt": "a red fox in snow", "seeds": [1]}])
    [job] = batch_jobs(ledger, batch_id)
    pages = ["/ui", "/ui/", "/ui/batches", f"/ui/batches/{batch_id}", f"/ui/batches/{batch_id}/progress",
             f"/ui/batches/{batch_id}/sheet.png", f"/ui/batches/{batch_id}/report.html", f"/ui/jobs/{job.id}",
             "/ui/library", f"/ui/compare?prompt_of={job.id}", "/ui/static/review.css", "/ui/static/review.js",
             "/ui/no/such/page"]
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Cookie": f"{COOKIE_NAME}=forged.x.y"}):
        for page in pages:
            r = browser.get(page, headers=headers)
            assert r.status_code == 303, (page, headers, r.status_code)
            assert r.headers["location"].startswith("/ui/login?next=%2Fui"), (page, r.headers["location"])
    # a form posted without a session changes nothing
    for action in (f"/ui/jobs/{job.id}/star", f"/ui/jobs/{job.id}/cancel", f"/ui/batches/{batch_id}/cancel"):
        r = browser.post(action, data={"starred": "1"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert ledger.get_job(job.id).status is JobStatus.QUEUED and not ledger.get_job(job.id).starred
    # the login page itself is open, and loads nothing that needs a session
    form = browser.get("/ui/login")
    assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
    assert "/ui/static/" not in form.text
    # the API docs send a browser without a session to the login form; the API itself answers 401
    for docs in ("/docs", "/redoc"):
        r = browser.get(docs)
        assert r.status_code == 303 and r.headers["location"] == f"/ui/login?next=%2F{docs[1:]}", docs
    assert browser.get(f"/v1/jobs/{job.id}").status_code == 401


def test_login_sets_a_signed_strict_http_only_cookie_and_logout_ends_it(browser: TestClient, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    r = login(browser, next_url="/ui/library?label=keeper")
    assert r.status_code == 303 and r.headers["location"] == "/ui/library?label=keeper"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes and "secure" not in attributes  # plain http here
    assert "samesite=strict" in cookie.lower() and "Max-Age=43200" in cookie and "Path=/" in cookie
    value = browser.cookies[COOKIE_NAME]
    assert TOKEN not in value and TOKEN not in r.text
    page = browser.get("/ui/batches")
    assert page.status_code == 200 and "Batches" in page.text
    assert page.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    # the login form again while logged in: straight on
    assert browser.get("/ui/login").status_code == 303
    # logout needs the CSRF token too
    assert browser.post("/ui/logout").status_code == 403
    csrf = csrf_of(browser)
    out = browser.post("/ui/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert COOKIE_NAME not in browser.cookies
    assert browser.get("/ui/batches").status_code == 303
    # the old cookie, replayed, is refused: the session was revoked
    browser.cookies.set(COOKIE_NAME, value)
    assert browser.get("/ui/batches").status_code == 303
    assert TOKEN not in caplog.text and value not in caplog.text


def test_a_wrong_token_shows_the_form_again_and_logins_are_rate_limited(browser: TestClient, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-token-" + "x" * 20
    r = login(browser, token=wrong)
    assert r.status_code == 403
    assert "That token is not valid." in r.text and 'name="token"' in r.text
    assert wrong not in r.text and TOKEN not in r.text
    assert "set-cookie" not in r.headers and COOKIE_NAME not in browser.cookies
    assert login(browser, token="").status_code == 403
    for _ in range(LOGIN_MAX_FAILURES - 2):
        assert login(browser, token=wrong).status_code == 403
    # the address is locked out now: even the right token is refused until the window passes
    locked = login(browser)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert "Too many failed attempts" in locked.text and COOKIE_NAME not in browser.cookies
    assert wrong not in caplog.text and TOKEN not in caplog.text
    assert "failed login from testclient" in caplog.text


def test_login_never_redirects_to_another_site(browser: TestClient) -> None:
    for target in ("https://evil.example/x", "//evil.example/x", "/\\evil.example", "javascript:alert(1)",
                   "http:/evil.example"):
        r = login(browser, next_url=target)
        assert r.status_code == 303 and r.headers["location"] == "/ui/batches", target
    r = browser.get("/ui/login?next=//evil.example")
    assert r.headers["location"] == "/ui/batches"


def test_the_cookie_is_secure_over_https_or_when_the_setting_says_so(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings), base_url="https://testserver", follow_redirects=False) as c:
        assert "secure" in login(c).headers["set-cookie"].lower()
    forced = api_settings.model_copy(update={"ui_cookie_secure": True, "ui_session_ttl_s": 600})
    with TestClient(create_app(forced), follow_redirects=False) as c:
        cookie = login(c).headers["set-cookie"]
        assert "secure" in cookie.lower() and "Max-Age=600" in cookie


def test_a_session_from_another_app_process_is_not_accepted(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings), follow_redirects=False) as first:
        login(first)
        value = first.cookies[COOKIE_NAME]
    with TestClient(create_app(api_settings), follow_redirects=False) as second:
        second.cookies.set(COOKIE_NAME, value)
        assert second.get("/ui/batches").status_code == 303  # another process: another key


# -- the cookie and the CSRF token -------------------------------------------------------------------


def test_the_cookie_opens_reads_but_never_a_v1_write(
    browser: TestClient, http: TestClient, ledger: Ledger, pg_url: str
) -> None:
    batch_id = submit_batch(http, [{"prompt": "a paper boat", "seeds": [3]}])
    [job] = batch_jobs(ledger, batch_id)
    logged_in(browser)
    assert browser.get(f"/v1/batches/{batch_id}").status_code == 200
    assert browser.get(f"/v1/jobs/{job.id}").status_code == 200
    assert browser.get("/openapi.json").status_code == 200
    jobs_before = count_rows(pg_url, "jobs")
    writes = [("POST", "/v1/jobs", {"prompt": "a cookie-made job", "seed": 1}),
              ("POST", f"/v1/jobs/{job.id}/cancel", None), ("POST", f"/v1/jobs/{job.id}/promote", None),
              ("POST", f"/v1/batches/{batch_id}/cancel", None),
              ("POST", "/v1/batches", {"items": [{"prompt": "x", "seed": 1}]}),
              ("POST", f"/v1/jobs/{job.id}/star", None), ("PUT", f"/v1/jobs/{job.id}/labels", {"labels": ["x"]}),
              ("DELETE", f"/v1/jobs/{job.id}/star", None), ("POST", "/metrics", None)]
    for method, path, body in writes:
        r = browser.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json()["problems"][0]["field"] == "Authorization"
    assert count_rows(pg_url, "jobs") == jobs_before
    unchanged = ledger.get_job(job.id)
    assert unchanged.status is JobStatus.QUEUED and not unchanged.starred and unchanged.labels == []


def test_state_changes_need_the_sessions_csrf_token(
    browser: TestClient, http: TestClient, ledger: Ledger, api_settings: Settings
) -> None:
    batch_id = submit_batch(http, [{"prompt": "a glass of lemonade", "seeds": [4]}])
    [job] = batch_jobs(ledger, batch_id)
    with TestClient(create_app(api_settings), follow_redirects=False) as other:
        other_csrf = logged_in(other)  # a valid token, of another session
    csrf = logged_in(browser)
    star = f"/ui/jobs/{job.id}/star"
    for data, headers in (({"starred": "1"}, {}), ({"starred": "1", "csrf_token": "nope"}, {}),
                          ({"starred": "1", "csrf_token": other_csrf}, {}), ({"starred": "1"}, {"X-CSRF-Token": ""})):
        r = browser.post(star, data=data, headers=headers)
        assert r.status_code == 403, (data, headers)
        assert "csrf_token" in r.text
    labels = browser.post(f"/ui/jobs/{job.id}/labels", data={"labels": "keeper"})
    cancel = browser.post(f"/ui/jobs/{job.id}/cancel", data={})
    cancel_batch = browser.post(f"/ui/batches/{batch_id}/cancel", data={"csrf_token": ""})
    assert (labels.status_code, cancel.status_code, cancel_batch.status_code) == (403, 403, 403)
    unchanged = ledger.get_job(job.id)
    assert not unchanged.starred and unchanged.labels == [] and unchanged.status is JobStatus.QUEUED
    # with the token (form field, then header) the same requests work
    here = f"/ui/batches/{batch_id}"
    r = browser.post(star, data={"starred": "1", "csrf_token": csrf, "next": here})
    assert r.status_code == 303 and r.headers["location"] == here
    assert ledger.get_job(job.id).starred
    assert browser.post(star, data={"starred": "0"}, headers={"X-CSRF-Token": csrf}).status_code == 303
    assert not ledger.get_job(job.id).starred
    r = browser.post(f"/ui/jobs/{job.id}/cancel", data={"csrf_token": csrf})
    assert r.status_code == 303 and ledger.get_job(job.id).status is JobStatus.CANCELLED
    again = browser.post(f"/ui/jobs/{job.id}/cancel", data={"csrf_token": csrf})
    assert again.status_code == 409 and "already cancelled" in again.text


def test_insecure_local_mode_opens_the_ui_but_still_checks_csrf(api_settings: Settings, ledger: Ledger) -> None:
    open_settings = api_settings.model_copy(update={"api_token": None, "api_host": "127.0.0.1"})
    with TestClient(create_app(open_settings, insecure_local=True), follow_redirects=False) as c:
        [job_id] = c.post("/v1/jobs", json={"prompt": "an open farm", "seed": 2, **SMALL}).json()["job_ids"]
        assert c.get("/ui/login").headers["location"] == "/ui/batches"
        page = c.get(f"/ui/jobs/{job_id}")
        assert page.status_code == 200 and COOKIE_NAME in c.cookies  # an anonymous session, for its CSRF token
        assert "Log out" not in page.text
        assert c.post(f"/ui/jobs/{job_id}/star", data={"starred": "1"}).status_code == 403
        csrf = CSRF_META.search(page.text)
        assert csrf is not None
        assert c.post(f"/ui/jobs/{job_id}/star", data={"starred": "1", "csrf_token": csrf.group(1)}).status_code == 303
        assert ledger.get_job(job_id).starred


# -- what the pages show ----------------------------------------------------------------------------


def test_untrusted_prompts_and_tags_show_as_text(browser: TestClient, http: TestClient, ledger: Ledger) -> None:
    batch_id = submit_batch(http, [{"prompt": EVIL_PROMPT, "seeds": [1, 2], "tags": {"note": EVIL_TAG}}],
                            name='<script>alert("batch")</script>')
    first, second = batch_jobs(ledger, batch_id)
    csrf = logged_in(browser)
    browser.post(f"/ui/jobs/{first.id}/star", data={"starred": "1", "csrf_token": csrf})
    pages = ["/ui/batches", f"/ui/batches/{batch_id}", f"/ui/jobs/{first.id}", "/ui/library",
             f"/ui/compare?job={first.id}&job={second.id}", f"/ui/compare?prompt_of={first.id}"]
    for page in pages:
        r = browser.get(page)
        assert r.status_code == 200, page
        assert "<script>alert" not in r.text and "<b>bold</b>" not in r.text and "<img src=x" not in r.text, page
        assert "onerror=\"alert" not in r.text, page
    grid = browser.get(f"/ui/batches/{batch_id}").text
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; a fox &amp; &lt;b&gt;bold&lt;/b&gt;" in grid
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in grid
    assert "&lt;script&gt;alert(&#34;batch&#34;)&lt;/script&gt;" in browser.get("/ui/batches").text
    # the only scripts of a page are the review room's own file
    assert re.findall(r"<script[^>]*>", grid) == ['<script src="/ui/static/review.js" defer>']
    progress = browser.get(f"/ui/batches/{batch_id}/progress").json()
    assert {j["prompt"] for j in progress["jobs"]} == {EVIL_PROMPT}  # JSON: text, for textContent


def test_the_grid_filters_by_status_prompt_tag_and_label(
    browser: TestClient, http: TestClient, ledger: Ledger, api_settings: Settings, engine: Any
) -> None:
    batch_id = submit_batch(http, [
        {"prompt": "A Red Fox in snow", "seeds": [1, 2], "tags": {"shot": "wide"}},
        {"prompt": "a paper boat in a gutter", "seeds": [1, 2], "tags": {"shot": "close"}},
    ])
    fox1, fox2, boat1, boat2 = batch_jobs(ledger, batch_id)
    render_jobs(ledger, api_settings, engine, [fox2.id])
    csrf = logged_in(browser)
    base = f"/ui/batches/{batch_id}"
    assert tile_ids(browser.get(base).text) == [fox1.id, fox2.id, boat1.id, boat2.id]  # manifest order
    assert tile_ids(browser.get(base + "?status=succeeded").text) == [fox2.id]
    assert tile_ids(browser.get(base + "?status=queued").text) == [fox1.id, boat1.id, boat2.id]
    assert tile_ids(browser.get(base + "?prompt=red+FOX").text) == [fox1.id, fox2.id]
    assert tile_ids(browser.get(base + "?tag=shot%3Dclose").text) == [boat1.id, boat2.id]
    assert tile_ids(browser.get(base + "?tag=shot").text) == [fox1.id, fox2.id, boat1.id, boat2.id]
    assert tile_ids(browser.get(base + "?prompt=fox&status=queued").text) == [fox1.id]
    assert tile_ids(browser.get(base + "?prompt=no+such+prompt").text) == []
    # a label set from the job page filters the grid and fills the seed library's label view
    r = browser.post(f"/ui/jobs/{boat2.id}/labels", data={"labels": "Keeper, hands-bad", "csrf_token": csrf})
    assert r.status_code == 303 and ledger.get_job(boat2.id).labels == ["hands-bad", "keeper"]
    assert tile_ids(browser.get(base + "?label=keeper").text) == [boat2.id]
    library = browser.get("/ui/library?label=keeper").text
    assert tile_ids(library) == [boat2.id] and ">keeper<" in library and ">hands-bad<" in library
    # a bad label is refused, naming the field and the rule; nothing changes
    bad = browser.post(f"/ui/jobs/{boat2.id}/labels", data={"labels": "no spaces allowed", "csrf_token": csrf})
    assert bad.status_code == 422 and "labels" in bad.text and "[label]" in bad.text
    assert ledger.get_job(boat2.id).labels == ["hands-bad", "keeper"]
    # bad filters name their field and rule
    r = browser.get(base + "?status=finished")
    assert r.status_code == 422 and "status" in r.text and "known_status" in r.text
    r = browser.get(base + "?page=0")
    assert r.status_code == 422 and "page" in r.text


def test_batches_and_jobs_are_paginated(browser: TestClient, http: TestClient, ledger: Ledger) -> None:
    big = submit_batch(http, [{"prompt": "a lighthouse at dusk", "seeds": list(range(JOBS_PER_PAGE + 2))}], "big")
    names = [f"small-{i:02d}" for i in range(BATCHES_PER_PAGE)]
    ids = [submit_batch(http, [{"prompt": f"a small batch {i}", "seeds": [i]}], name) for i, name in enumerate(names)]
    logged_in(browser)
    first = browser.get("/ui/batches").text
    rows = re.findall(r'<tr class="batch-row" data-batch-id="([0-9a-f-]{36})"', first)
    assert rows == ids[::-1]  # newest first, BATCHES_PER_PAGE of them
    assert 'rel="next" href="/ui/batches?page=2"' in first and 'rel="prev"' not in first
    second = browser.get("/ui/batches?page=2").text
    assert re.findall(r'<tr class="batch-row" data-batch-id="([0-9a-f-]{36})"', second) == [big]
    assert 'rel="prev"' in second and 'rel="next"' not in second
    assert f"0/{JOBS_PER_PAGE + 2}" in second  # done/total
    page1 = tile_ids(browser.get(f"/ui/batches/{big}").text)
    page2 = tile_ids(browser.get(f"/ui/batches/{big}?page=2").text)
    assert len(page1) == JOBS_PER_PAGE and len(page2) == 2
    assert set(page1) | set(page2) == {j.id for j in batch_jobs(ledger, big)}
    assert tile_ids(browser.get(f"/ui/batches/{big}?page=3").text) == []


def test_sweep_promote_and_the_seed_library_from_the_pages(
    browser: TestClient, http: TestClient, ledger: Ledger, api_settings: Settings, engine: Any
) -> None:
    batch_id = submit_batch(http, [{"prompt": "a kite over a beach", "seeds": [100], "preset": "draft"}])
    [draft] = batch_jobs(ledger, batch_id)
    render_jobs(ledger, api_settings, engine, [draft.id])
    csrf = logged_in(browser)
    page = browser.get(f"/ui/jobs/{draft.id}").text
    assert "Sweep around this seed" in page and "Promote to final" in page
    # a radius out of the form's range names the field and the rule; nothing is created
    jobs_before = len(ledger.list_jobs(limit=1000))
    for radius in ("0", "11", "two"):
        r = browser.post(f"/ui/jobs/{draft.id}/sweep", data={"radius": radius, "csrf_token": csrf})
        assert r.status_code == 422 and "radius" in r.text, radius
    assert len(ledger.list_jobs(limit=1000)) == jobs_before
    r = browser.post(f"/ui/jobs/{draft.id}/sweep", data={"radius": "2", "csrf_token": csrf})
    assert r.status_code == 303
    sweep_page = r.headers["location"]
    assert re.fullmatch(r"/ui/batches/[0-9a-f-]{36}", sweep_page)
    children = batch_jobs(ledger, sweep_page.rsplit("/", 1)[1])
    assert sorted(j.seed for j in children) == [98, 99, 101, 102]
    assert {j.parent_job_id for j in children} == {draft.id}
    shown = browser.get(sweep_page).text
    assert sorted(tile_ids(shown)) == sorted(j.id for j in children)
    # promote: a final render of the draft, shown on its own page (no promote button there)
    r = browser.post(f"/ui/jobs/{draft.id}/promote", data={"csrf_token": csrf})
    assert r.status_code == 303
    final_id = r.headers["location"].rsplit("/", 1)[1]
    final = ledger.get_job(final_id)
    assert final.parent_job_id == draft.id and final.params["preset"] == "final" and final.seed == 100
    final_page = browser.get(r.headers["location"]).text
    assert "preset final" in final_page and "Promote to final" not in final_page
    assert "Sweep around this seed" not in final_page  # not succeeded yet
    # star into the seed library
    assert "Nothing here yet" in browser.get("/ui/library").text
    browser.post(f"/ui/jobs/{draft.id}/star", data={"starred": "1", "csrf_token": csrf})
    assert tile_ids(browser.get("/ui/library").text) == [draft.id]
    # promoting a final render is refused with its rule
    r = browser.post(f"/ui/jobs/{final_id}/promote", data={"csrf_token": csrf})
    assert r.status_code == 422 and "not_a_draft" in r.text


def test_live_progress_json_and_media_urls(
    browser: TestClient, http: TestClient, ledger: Ledger, api_settings: Settings, engine: Any
) -> None:
    batch_id = submit_batch(http, [{"prompt": "a windmill in fog", "seeds": [1, 2, 3]}])
    jobs = batch_jobs(ledger, batch_id)
    logged_in(browser)
    page = browser.get(f"/ui/batches/{batch_id}").text
    assert f'data-progress-url="/ui/batches/{batch_id}/progress?page=1"' in page
    assert page.count('class="poster"') == 0
    before = browser.get(f"/ui/batches/{batch_id}/progress").json()
    assert before["counts"]["queued"] == 3 and before["finished"] == 0 and before["done"] is False
    assert all(j["poster_url"] is None for j in before["jobs"])
    render_jobs(ledger, api_settings, engine, [jobs[0].id])
    after = browser.get(f"/ui/batches/{batch_id}/progress").json()
    assert after["counts"]["succeeded"] == 1 and after["counts"]["queued"] == 2 and after["finished"] == 1
    ready = {j["id"]: j for j in after["jobs"]}[jobs[0].id]
    assert ready["status"] == "succeeded" and ready["poster_url"] == f"/v1/jobs/{jobs[0].id}/poster"
    # the media the page uses open with the session cookie alone
    poster = browser.get(ready["poster_url"])
    assert poster.status_code == 200 and poster.content.startswith(PNG_SIGNATURE)
    video = browser.get(ready["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert hashlib.sha256(video.content).hexdigest() == ledger.get_job(jobs[0].id).file_sha256
    grid = browser.get(f"/ui/batches/{batch_id}").text
    assert grid.count('class="poster"') == 1 and f'data-video="/v1/jobs/{jobs[0].id}/video"' in grid
    # compare: 2-4 jobs, or the seeds of one prompt
    assert browser.get(f"/ui/compare?job={jobs[0].id}").status_code == 422
    five = "&".join(f"job={uuid.uuid4()}" for _ in range(5))
    assert browser.get(f"/ui/compare?{five}").status_code == 422
    seeds = browser.get(f"/ui/compare?prompt_of={jobs[1].id}").text
    assert re.findall(r'seed <b class="seed">(\d+)</b>', seeds) == ["1", "2", "3"]
    assert seeds.count("<video") == 1  # only the succeeded one plays


def test_contact_sheet_and_report_are_linked_and_served(
    browser: TestClient, http: TestClient, ledger: Ledger, api_settings: Settings, engine: Any
) -> None:
    batch_id = submit_batch(http, [{"prompt": EVIL_PROMPT, "seeds": [5, 6]}])
    render_jobs(ledger, api_settings, engine, [batch_jobs(ledger, batch_id)[0].id])
    logged_in(browser)
    page = browser.get(f"/ui/batches/{batch_id}").text
    assert f'href="/ui/batches/{batch_id}/sheet.png">Contact sheet' in page
    assert f'href="/ui/batches/{batch_id}/report.html">Report' in page
    sheet = browser.get(f"/ui/batches/{batch_id}/sheet.png")
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"
    assert sheet.content.startswith(PNG_SIGNATURE)
    report = browser.get(f"/ui/batches/{batch_id}/report.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<script>alert" not in report.text and "script-src" not in report.headers["content-security-policy"]
    assert "sandbox" in report.headers["content-security-policy"]


def test_unknown_ids_are_404_pages(browser: TestClient) -> None:
    logged_in(browser)
    for page in (f"/ui/jobs/{uuid.uuid4()}", f"/ui/batches/{uuid.uuid4()}", "/ui/jobs/..%2F..%2Fetc%2Fpasswd",
                 "/ui/batches/not-a-batch/progress", "/ui/static/..%2F__init__.py", "/ui/static/nothing.js"):
        r = browser.get(page)
        assert r.status_code == 404, page
        assert r.headers["content-type"].startswith("text/html")


# -- /docs from local files ------------------------------------------------------------------------


def test_docs_are_served_from_local_assets(http: TestClient, browser: TestClient) -> None:
    for page, kind in (("/docs", "swagger"), ("/redoc", "redoc")):
        r = http.get(page)
        assert r.status_code == 200, page
        assert "http://" not in r.text and "https://" not in r.text, page  # no CDN, no fonts, no favicon elsewhere
        assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
        for asset in assets:
            got = http.get(asset)
            assert got.status_code == 200 and len(got.content) > 1000, asset
        assert kind in r.text.lower()
    assert "'/openapi.json'" in http.get("/docs").text or '"/openapi.json"' in http.get("/docs").text
    assert http.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/docs/assets/..%2F__init__.py").status_code == 404
    schema = http.get("/openapi.json").json()
    assert not [p for p in schema["paths"] if p.startswith(("/ui", "/docs", "/redoc"))]
    # a browser logged in at /ui opens them with its cookie
    assert browser.get("/docs/assets/swagger-ui.css").status_code == 401
    logged_in(browser)
    assert browser.get("/docs").status_code == 200
    assert browser.get("/docs/assets/swagger-ui.css").status_code == 200
