"""The review room's login session, its CSRF token, and the login rate limit.

* **Session**: a signed cookie (:data:`COOKIE_NAME`; itsdangerous, HMAC-SHA256) holding a random
  session id and a random CSRF token, stamped with its issue time. It is signed with a key derived
  from the API token and a per-process random salt: a restart, or a new token, logs everyone out,
  and nothing in the cookie reveals the token. ``HttpOnly``, ``SameSite=Strict``, ``Path=/`` (the
  pages show ``/v1`` posters and videos and open ``/docs``), ``Secure`` over https or when
  ``FARM_UI_COOKIE_SECURE`` says so; it expires after ``FARM_UI_SESSION_TTL_S`` seconds (the
  signature's timestamp is checked, not only the browser's ``Max-Age``). A logged-out session is
  refused until it would have expired anyway.
* **CSRF**: a synchronizer token. Every state-changing ``/ui`` request must carry the session's
  CSRF token in the ``X-CSRF-Token`` header or the ``csrf_token`` form field
  (:func:`csrf_matches`: constant-time). The cookie alone never changes anything: ``/v1`` writes
  keep requiring the bearer token (:mod:`farm.api.auth`).
* **Rate limit**: :class:`LoginLimiter` — at most :data:`LOGIN_MAX_FAILURES` failed logins per
  client address in :data:`LOGIN_WINDOW_S` seconds; further attempts are refused (429) before
  the token is even compared.

Nothing here logs a token, a cookie or a CSRF value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import cookie_parser
from starlette.types import Scope

#: The session cookie's name.
COOKIE_NAME = "farm_ui_session"
#: Where a page carries the CSRF token: a form field, or a header (for fetch()).
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Failed logins allowed per client address within the window; then 429 until the oldest ages out.
LOGIN_MAX_FAILURES = 5
LOGIN_WINDOW_S = 300.0
#: Client addresses the limiter remembers at most (the oldest are forgotten first).
LOGIN_MAX_ADDRESSES = 10_000
#: Logged-out session ids remembered at most (each until it would have expired).
MAX_REVOKED = 100_000
_SIGNING_SALT = "farm.ui.session"


@dataclass(frozen=True)
class Session:
    """One login: a random id (for logout) and the CSRF token its pages carry."""

    sid: str
    csrf: str
    #: True when issued by this request (its cookie must still be set on the response).
    fresh: bool = False


def csrf_matches(session: Session | None, presented: str | None) -> bool:
    """True when ``presented`` is ``session``'s CSRF token (constant-time)."""
    if session is None or not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), session.csrf.encode("utf-8"))


class Sessions:
    """Issues, reads and revokes review-room sessions (one per app; see the module docstring)."""

    def __init__(self, token: str | None, *, ttl_s: int, secure: bool,
                 clock: Callable[[], float] = time.time) -> None:
        salt = secrets.token_bytes(32)  # per process: a restart logs everyone out
        key = hmac.new(salt, b"farm-ui-session:" + (token or "").encode("utf-8"), hashlib.sha256).hexdigest()
        self._serializer = URLSafeTimedSerializer(key, salt=_SIGNING_SALT)
        self.ttl_s = ttl_s
        self.always_secure = secure
        self._clock = clock
        self._revoked: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> Session:
        """A new session (its cookie is set by :meth:`cookie_value`)."""
        return Session(sid=secrets.token_urlsafe(18), csrf=secrets.token_urlsafe(32), fresh=True)

    def cookie_value(self, session: Session) -> str:
        """The signed, timestamped cookie value of ``session``."""
        return str(self._serializer.dumps({"sid": session.sid, "csrf": session.csrf}))

    def read(self, value: str | None) -> Session | None:
        """The session of a cookie value; None when absent, forged, expired or logged out."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=self.ttl_s)
        except BadSignature:  # (SignatureExpired is a BadSignature)
            return None
        if not isinstance(data, dict):
            return None
        sid, csrf = data.get("sid"), data.get("csrf")
        if not isinstance(sid, str) or not isinstance(csrf, str) or not sid or not csrf:
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return Session(sid=sid, csrf=csrf)

    def from_scope(self, scope: Scope) -> Session | None:
        """The session of an ASGI request's cookie header, if valid."""
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                return self.read(cookie_parser(value.decode("latin-1")).get(COOKIE_NAME))
        return None

    def revoke(self, session: Session) -> None:
        """Log ``session`` out: its cookie is refused from now on, even if replayed."""
        now = self._clock()
        with self._lock:
            self._revoked[session.sid] = now + self.ttl_s
            while self._revoked:
                oldest_sid, until = next(iter(self._revoked.items()))
                if until > now and len(self._revoked) <= MAX_REVOKED:
                    break
                del self._revoked[oldest_sid]

    def secure_for(self, scheme: str) -> bool:
        """Whether the cookie gets ``Secure``: served over https, or the setting says so."""
        return self.always_secure or scheme == "https"


class LoginLimiter:
    """Failed logins per client address in a sliding window (see the module docstring)."""

    def __init__(self, *, max_failures: int = LOGIN_MAX_FAILURES, window_s: float = LOGIN_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def retry_after_s(self, address: str) -> int:
        """Seconds until ``address`` may try again (0: it may try now)."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.max_failures:
                return 0
            return max(1, int(times[0] + self.window_s - now + 0.999))

    def failed(self, address: str) -> None:
        """Record one failed login from ``address``."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > LOGIN_MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """Forget ``address``'s failures (it proved it has the token)."""
        with self._lock:
            self._failures.pop(address, None)
