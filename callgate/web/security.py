"""The web's security parts, shared by the operator console and the customer portal.

- :class:`PasswordHasher`: argon2id hashes (argon2-cffi's defaults), verified off the event loop.
- :class:`SessionCookies` + :class:`SessionMiddleware`: a session is a dict kept in a cookie
  signed with itsdangerous (HttpOnly, SameSite=Strict, Secure unless served on loopback), with
  an expiry inside the signed value. Each use (console, portal) has its own cookie name, salt
  and path, so one session never opens the other.
- CSRF: every session holds a random token; :func:`check_csrf` refuses a POST whose form field
  ``csrf`` (or header ``X-CSRF-Token``) does not match it (403).
- :class:`LoginRateLimiter`: at most N failed logins per (address, login) within a window.
- :class:`SecurityHeadersMiddleware`: CSP, X-Frame-Options DENY, nosniff, Referrer-Policy.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import argon2
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
_SCOPE_KEY = "callgate.sessions"


class CsrfError(Exception):
    """A POST without the session's CSRF token (answered 403)."""


# --------------------------------------------------------------------------- passwords
class PasswordHasher:
    """argon2id hashing; ``verify`` runs in a thread (tens of milliseconds of CPU)."""

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or argon2.PasswordHasher()

    def hash(self, password: str) -> str:
        if not password:
            raise ValueError("a password cannot be empty")
        return self._hasher.hash(password)

    def verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def verify(self, password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self.verify_sync, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


# A hash to verify against when the login does not exist, so that an unknown login takes as
# long as a wrong password (no user enumeration by timing).
_DUMMY_HASH: str | None = None


def dummy_hash(hasher: PasswordHasher) -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


# --------------------------------------------------------------------------- sessions
def is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_cookies(mode: str, host: str) -> bool:
    """``[web] cookie_secure``: "auto" (Secure unless ``host`` is loopback), "always", "never"."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "auto":
        return not is_loopback(host)
    raise ValueError(f"setting web.cookie_secure: 'auto', 'always' or 'never', not {mode!r}")


@dataclass
class Session:
    """One request's session: a dict saved back to the cookie when changed."""

    data: dict[str, Any] = field(default_factory=dict)
    modified: bool = False
    cleared: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.modified = True

    def pop(self, key: str) -> Any:
        self.modified = True
        return self.data.pop(key, None)

    @property
    def csrf(self) -> str:
        """The session's CSRF token, created on first use."""
        token = self.data.get(CSRF_FIELD)
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            self[CSRF_FIELD] = token
        return token

    def renew(self, **values: Any) -> None:
        """Start a new session (at login or logout): a new CSRF token, only ``values`` kept."""
        self.data = {**values, CSRF_FIELD: secrets.token_urlsafe(32)}
        self.modified = True

    def clear(self) -> None:
        self.data = {}
        self.modified = True
        self.cleared = True


@dataclass(frozen=True, slots=True)
class SessionCookies:
    """How one kind of session is kept: cookie name, path, signing salt, lifetime, Secure."""

    secret: str
    cookie_name: str
    salt: str
    max_age_seconds: int
    secure: bool
    path: str = "/"

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret, salt=self.salt)

    def load(self, raw: str | None) -> Session:
        if not raw:
            return Session()
        try:
            data = self._serializer().loads(raw, max_age=self.max_age_seconds)
        except BadSignature:  # also SignatureExpired
            return Session(modified=True)  # a bad or old cookie is replaced
        return Session(data=data) if isinstance(data, dict) else Session(modified=True)

    def dump(self, session: Session) -> str:
        return self._serializer().dumps(session.data)

    def header(self, session: Session) -> str:
        """The Set-Cookie header value for ``session``."""
        cookie: SimpleCookie = SimpleCookie()
        name = self.cookie_name
        cookie[name] = "" if session.cleared else self.dump(session)
        morsel = cookie[name]
        morsel["path"] = self.path
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        morsel["max-age"] = 0 if session.cleared else self.max_age_seconds
        if self.secure:
            morsel["secure"] = True
        return morsel.OutputString()

    def of(self, conn: HTTPConnection) -> Session:
        """The session of a request that went through this kind's :class:`SessionMiddleware`."""
        sessions: dict[str, Session] = conn.scope[_SCOPE_KEY]
        return sessions[self.cookie_name]


class SessionMiddleware:
    """Loads one kind of session for every HTTP request and saves it when changed."""

    def __init__(self, app: ASGIApp, cookies: SessionCookies) -> None:
        self.app = app
        self.cookies = cookies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = HTTPConnection(scope).cookies.get(self.cookies.cookie_name)
        session = self.cookies.load(raw)
        scope.setdefault(_SCOPE_KEY, {})[self.cookies.cookie_name] = session

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and session.modified:
                headers = MutableHeaders(scope=message)
                headers.append("set-cookie", self.cookies.header(session))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


async def check_csrf(request: Request, session: Session) -> None:
    """Refuse a state-changing request whose CSRF token is missing or not the session's."""
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    expected = session.get(CSRF_FIELD)
    if not sent or not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise CsrfError("the form's CSRF token is missing or stale: reload the page and retry")


# --------------------------------------------------------------------------- login rate limit
class LoginRateLimiter:
    """At most ``max_failures`` failed logins per key (address + login) within ``window``.

    In memory, per process; keys with no recent failure are pruned so the table stays bounded.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        clock: Any = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._failures: MutableMapping[str, deque[float]] = {}

    @staticmethod
    def key(address: str, login: str) -> str:
        return f"{address}\0{login.strip().lower()}"

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: str) -> int:
        """0 when a login may be tried; else the seconds until one may."""
        now = self._clock()
        times = self._recent(key, now)
        if len(times) < self.max_failures:
            return 0
        return max(1, int(self.window - (now - times[0])) + 1)

    def failure(self, key: str) -> None:
        now = self._clock()
        if len(self._failures) >= self._max_keys:
            for old in list(self._failures):
                self._recent(old, now)
        times = self._failures.setdefault(key, deque())
        times.append(now)

    def success(self, key: str) -> None:
        self._failures.pop(key, None)


# --------------------------------------------------------------------------- headers
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response that does not set its own."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS if headers is None else headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"
