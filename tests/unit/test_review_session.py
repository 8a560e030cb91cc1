"""The review room's session cookie, CSRF comparison, login rate limit and ``next`` check (no services)."""

from __future__ import annotations

import itsdangerous.timed
import pytest

from farm.api.review.session import LoginLimiter, Session, Sessions, csrf_matches
from farm.api.review.web import safe_next

TOKEN = "unit-token-" + "0123456789abcdef"


class FakeTime:
    """Stands in for the ``time`` module itsdangerous stamps and checks with."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_a_cookie_reads_back_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime(1_000_000.0)
    monkeypatch.setattr(itsdangerous.timed, "time", clock)
    sessions = Sessions(TOKEN, ttl_s=600, secure=False)
    issued = sessions.issue()
    value = sessions.cookie_value(issued)
    assert TOKEN not in value
    back = sessions.read(value)
    assert back == Session(sid=issued.sid, csrf=issued.csrf) and not back.fresh
    clock.now += 599
    assert sessions.read(value) is not None
    clock.now += 2
    assert sessions.read(value) is None  # past FARM_UI_SESSION_TTL_S: the signature's stamp is too old


def test_forged_tampered_and_foreign_cookies_are_refused() -> None:
    sessions = Sessions(TOKEN, ttl_s=600, secure=False)
    value = sessions.cookie_value(sessions.issue())
    payload, stamp, signature = value.split(".")
    assert sessions.read(f"{payload}x.{stamp}.{signature}") is None
    assert sessions.read(f"{payload}.{stamp}.{signature[:-2]}aa") is None
    assert sessions.read("") is None and sessions.read(None) is None and sessions.read("garbage") is None
    # the same token in another process (another random salt), or another token: another key
    assert Sessions(TOKEN, ttl_s=600, secure=False).read(value) is None
    other = Sessions("another-token-0123456789", ttl_s=600, secure=False)
    assert other.read(other.cookie_value(other.issue())) is not None


def test_a_revoked_session_is_refused() -> None:
    sessions = Sessions(TOKEN, ttl_s=600, secure=False)
    kept, ended = sessions.issue(), sessions.issue()
    kept_value, ended_value = sessions.cookie_value(kept), sessions.cookie_value(ended)
    sessions.revoke(ended)
    assert sessions.read(ended_value) is None
    assert sessions.read(kept_value) is not None


def test_csrf_comparison() -> None:
    session = Session(sid="s", csrf="the-csrf-token")
    assert csrf_matches(session, "the-csrf-token")
    assert not csrf_matches(session, "the-csrf-token ")
    assert not csrf_matches(session, "")
    assert not csrf_matches(session, None)
    assert not csrf_matches(None, "the-csrf-token")
    assert not csrf_matches(session, "é" * 14)


def test_secure_over_https_or_when_set() -> None:
    assert Sessions(TOKEN, ttl_s=60, secure=False).secure_for("https")
    assert not Sessions(TOKEN, ttl_s=60, secure=False).secure_for("http")
    assert Sessions(TOKEN, ttl_s=60, secure=True).secure_for("http")


def test_the_login_limiter_counts_failures_per_address_in_a_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after_s("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
        now[0] += 1
    assert limiter.retry_after_s("10.0.0.1") == 57  # failures at t=0,1,2, now t=3: the first leaves at t=60
    assert limiter.retry_after_s("10.0.0.2") == 0  # another address is not affected
    now[0] = 60.5
    assert limiter.retry_after_s("10.0.0.1") == 0  # the first failure aged out
    limiter.failed("10.0.0.1")
    assert limiter.retry_after_s("10.0.0.1") > 0
    limiter.succeeded("10.0.0.1")
    assert limiter.retry_after_s("10.0.0.1") == 0


@pytest.mark.parametrize(("value", "expected"), [
    ("/ui/batches/x?status=failed", "/ui/batches/x?status=failed"),
    ("/docs", "/docs"),
    ("https://evil.example/", "/ui/batches"),
    ("//evil.example/", "/ui/batches"),
    ("/\\evil.example", "/ui/batches"),
    ("javascript:alert(1)", "/ui/batches"),
    ("/ui/\r\nSet-Cookie: x=1", "/ui/batches"),
    ("", "/ui/batches"),
    (None, "/ui/batches"),
])
def test_next_is_a_local_path_only(value: object, expected: str) -> None:
    assert safe_next(value) == expected
